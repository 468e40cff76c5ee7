// sslbench-preprocess: reads a split through the dataset readers, decodes and
// preprocesses every image as extraction does, and writes the result (for the
// parity check against torchvision) or times it (bench/).
//
//   sslbench-preprocess --format=imagefolder --root=DIR --split=train \
//       --resize=256 --crop=224 [--channels=3] [--mean=..] [--std=..] \
//       [--keys_out=F] [--uint8_out=F] [--float_out=F] [--time]
//
// --uint8_out: [N, crop, crop, C] uint8 before normalisation; --float_out:
// [N, C, crop, crop] float32 after it; --keys_out: one record key per line.
// --time: decode + preprocess to float on this thread only, reading each file
// from disk as a data loader does; prints one JSON line.

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/image.h"
#include "worker/tools/tool_util.h"

ABSL_FLAG(std::string, format, "imagefolder", "dataset format");
ABSL_FLAG(std::string, root, "", "dataset root");
ABSL_FLAG(std::string, split, "train", "train or test");
ABSL_FLAG(int64_t, limit, 0, "first N records only");
ABSL_FLAG(int, resize, 256, "shorter side after resizing; 0 = none");
ABSL_FLAG(int, crop, 224, "centre crop; 0 = none");
ABSL_FLAG(int, channels, 3, "1 or 3");
ABSL_FLAG(std::string, mean, "0.485,0.456,0.406", "per channel");
ABSL_FLAG(std::string, std, "0.229,0.224,0.225", "per channel");
ABSL_FLAG(std::string, keys_out, "", "write record keys here");
ABSL_FLAG(std::string, uint8_out, "", "write uint8 HWC crops here");
ABSL_FLAG(std::string, float_out, "", "write normalised float CHW here");
ABSL_FLAG(bool, time, false, "time decode + preprocess, print JSON");
ABSL_FLAG(int, repeat, 1, "with --time: passes over the split");
ABSL_FLAG(bool, decode_only, false, "with --time: stop after decoding");

namespace {

[[noreturn]] void Die(const absl::Status& s) { sslbench::tools::Die("sslbench-preprocess", s); }

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using namespace sslbench;
  tools::OpenedSplit split =
      tools::OpenSplitOrDie("sslbench-preprocess", absl::GetFlag(FLAGS_format), absl::GetFlag(FLAGS_root),
                            absl::GetFlag(FLAGS_split), absl::GetFlag(FLAGS_limit));
  image::PreprocessOptions options;
  options.resize = absl::GetFlag(FLAGS_resize);
  options.crop = absl::GetFlag(FLAGS_crop);
  options.channels = absl::GetFlag(FLAGS_channels);
  options.mean = sslbench::tools::ParseFloats(absl::GetFlag(FLAGS_mean));
  options.std = sslbench::tools::ParseFloats(absl::GetFlag(FLAGS_std));
  const auto& records = split.listing.records;

  if (absl::GetFlag(FLAGS_time)) {
    const int repeat = absl::GetFlag(FLAGS_repeat);
    std::vector<float> out;
    image::Image decoded;
    double checksum = 0;
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < repeat; ++r) {
      for (const auto& record : records) {
        auto bytes = split.reader->ReadRecord(record);
        if (!bytes.ok()) Die(bytes.status());
        absl::Status s = image::DecodeImageInto(bytes->bytes, record.key, &options, &decoded);
        if (!s.ok()) Die(s);
        const image::Image* img = &decoded;
        if (absl::GetFlag(FLAGS_decode_only)) {
          checksum += img->pixels[img->pixels.size() / 2];
          continue;
        }
        int h = 0, w = 0;
        image::OutputSize(options, img->height, img->width, &h, &w);
        out.resize(static_cast<size_t>(options.channels) * h * w);
        image::Preprocess(*img, options, out.data());
        checksum += out[out.size() / 2];
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double n = static_cast<double>(records.size()) * repeat;
    std::printf("{\"images\":%.0f,\"seconds\":%s,\"images_per_second\":%s,\"checksum\":%s}\n", n,
                tools::JsonNumber(seconds, 6).c_str(), tools::JsonNumber(n / seconds, 6).c_str(),
                tools::JsonNumber(checksum, 8).c_str());
    return 0;
  }

  auto open = [](const std::string& path) {
    if (path.empty()) return static_cast<FILE*>(nullptr);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) {
      std::perror(path.c_str());
      std::exit(1);
    }
    return f;
  };
  FILE* keys = open(absl::GetFlag(FLAGS_keys_out));
  FILE* u8 = open(absl::GetFlag(FLAGS_uint8_out));
  FILE* f32 = open(absl::GetFlag(FLAGS_float_out));
  std::vector<float> out;
  for (const auto& record : records) {
    auto bytes = split.reader->ReadRecord(record);
    if (!bytes.ok()) Die(bytes.status());
    auto img = image::DecodeImage(bytes->bytes, record.key, &options);
    if (!img.ok()) Die(img.status());
    if (keys != nullptr) std::fprintf(keys, "%s\t%d\n", record.key.c_str(), record.label);
    if (u8 != nullptr) {
      image::Image window = image::ResizeAndCrop(*img, options);
      // Grey windows are written as the model sees them: replicated.
      for (size_t i = 0; i < window.pixels.size() / window.channels; ++i) {
        for (int c = 0; c < options.channels; ++c) {
          std::fputc(window.pixels[i * window.channels + (window.channels == 1 ? 0 : c)], u8);
        }
      }
    }
    if (f32 != nullptr) {
      int h = 0, w = 0;
      image::OutputSize(options, img->height, img->width, &h, &w);
      out.resize(static_cast<size_t>(options.channels) * h * w);
      image::Preprocess(*img, options, out.data());
      std::fwrite(out.data(), sizeof(float), out.size(), f32);
    }
  }
  for (FILE* f : {keys, u8, f32}) {
    if (f != nullptr && std::fclose(f) != 0) {
      std::perror("write");
      return 1;
    }
  }
  std::printf("{\"images\":%zu,\"classes\":%zu}\n", records.size(), split.listing.class_names.size());
  return 0;
}
