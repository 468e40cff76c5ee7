// sslbench-extract: features of one split, computed as a worker's extract
// task does (the dataset reader, decode threads filling batches, the model's
// forward on LibTorch), without the coordinator; for benchmarks and checks.
//
//   sslbench-extract --format=imagefolder --root=DIR --split=train \
//       --model=resnet18.pt --input_size=224 --resize_size=256 --channels=3 \
//       --mean=0.485,0.456,0.406 --std=0.229,0.224,0.225 \
//       --threads=2 --decode_threads=2 --batch=64 [--features_out=F]
//
// Prints one JSON line: images, dim, seconds, images_per_second.
// --features_out: float32 [images, dim], row-major.

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "worker/compute/feature_extractor.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/batch_loader.h"
#include "worker/tools/tool_util.h"

ABSL_FLAG(std::string, format, "imagefolder", "dataset format");
ABSL_FLAG(std::string, root, "", "dataset root");
ABSL_FLAG(std::string, split, "train", "train or test");
ABSL_FLAG(int64_t, limit, 0, "first N records only");
ABSL_FLAG(std::string, model, "", "TorchScript file");
ABSL_FLAG(int, input_size, 224, "centre crop");
ABSL_FLAG(int, resize_size, 256, "shorter side before the crop");
ABSL_FLAG(int, channels, 3, "1 or 3");
ABSL_FLAG(std::string, mean, "0.485,0.456,0.406", "per channel");
ABSL_FLAG(std::string, std, "0.229,0.224,0.225", "per channel");
ABSL_FLAG(int, threads, 1, "LibTorch intra-op threads");
ABSL_FLAG(int, decode_threads, 1, "decode threads");
ABSL_FLAG(int, batch, 64, "batch size");
ABSL_FLAG(bool, optimize, true, "freeze and optimise the model for inference");
ABSL_FLAG(std::string, features_out, "", "write float32 features here");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda, cuda:N or auto");
ABSL_FLAG(std::string, precision, "auto", "auto, fp32, bf16 or fp16 (autocast)");
ABSL_FLAG(std::string, channels_last, "auto", "auto, on or off");
ABSL_FLAG(int, forward_only, 0,
          "instead of the dataset, time this many forward passes of one "
          "preprocessed batch (host to device copy included)");

namespace {

[[noreturn]] void Die(const absl::Status& s) { sslbench::tools::Die("sslbench-extract", s); }

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using namespace sslbench;
  compute::SetComputeThreads(absl::GetFlag(FLAGS_threads));

  compute::ModelOptions model;
  model.path = absl::GetFlag(FLAGS_model);
  model.input_size = absl::GetFlag(FLAGS_input_size);
  model.resize_size = absl::GetFlag(FLAGS_resize_size);
  model.channels = absl::GetFlag(FLAGS_channels);
  model.mean = sslbench::tools::ParseFloats(absl::GetFlag(FLAGS_mean));
  model.std = sslbench::tools::ParseFloats(absl::GetFlag(FLAGS_std));
  model.optimize = absl::GetFlag(FLAGS_optimize);
  model.device = absl::GetFlag(FLAGS_device);
  model.precision = absl::GetFlag(FLAGS_precision);
  model.channels_last = absl::GetFlag(FLAGS_channels_last);
  auto extractor = compute::FeatureExtractor::Load(model);
  if (!extractor.ok()) Die(extractor.status());
  if (absl::GetFlag(FLAGS_forward_only) > 0 && model.input_size <= 0) {
    Die(absl::InvalidArgumentError("--forward_only needs --input_size (the batch's side)"));
  }
  const bool warm = (*extractor)->device() != "cpu" && model.input_size > 0;
  if (warm || absl::GetFlag(FLAGS_forward_only) > 0) {
    // One batch before the clock starts (kernel selection, allocator), the
    // way a long extraction amortises it.
    const int side = model.input_size;
    std::vector<float> zeros(static_cast<size_t>(absl::GetFlag(FLAGS_batch)) * model.channels *
                             side * side, 0.5f);
    int64_t dim = 0;
    const int reps = std::max(1, absl::GetFlag(FLAGS_forward_only));
    auto first = (*extractor)->Forward(zeros.data(), absl::GetFlag(FLAGS_batch), side, side, &dim);
    if (!first.ok()) Die(first.status());
    if (absl::GetFlag(FLAGS_forward_only) > 0) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) {
        auto rows = (*extractor)->Forward(zeros.data(), absl::GetFlag(FLAGS_batch), side, side, &dim);
        if (!rows.ok()) Die(rows.status());
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double images = static_cast<double>(reps) * absl::GetFlag(FLAGS_batch);
      std::printf("{\"forward_images\":%lld,\"dim\":%lld,\"seconds\":%s,"
                  "\"images_per_second\":%s,\"device\":\"%s\",\"precision\":\"%s\"}\n",
                  static_cast<long long>(images), static_cast<long long>(dim),
                  tools::JsonNumber(s, 6).c_str(), tools::JsonNumber(images / s, 6).c_str(),
                  (*extractor)->device().c_str(), (*extractor)->precision().c_str());
      return 0;
    }
  }

  tools::OpenedSplit split =
      tools::OpenSplitOrDie("sslbench-extract", absl::GetFlag(FLAGS_format), absl::GetFlag(FLAGS_root),
                            absl::GetFlag(FLAGS_split), absl::GetFlag(FLAGS_limit));
  const int64_t n = static_cast<int64_t>(split.listing.records.size());
  const int64_t batch_size = absl::GetFlag(FLAGS_batch);
  std::vector<image::BatchJob> jobs;
  for (int64_t b = 0; b < n; b += batch_size) jobs.push_back({b, std::min(batch_size, n - b)});
  const int decode_threads = absl::GetFlag(FLAGS_decode_threads);
  const auto start = std::chrono::steady_clock::now();
  image::BatchLoader loader(split.reader.get(), &split.listing.records, std::move(jobs),
                            compute::PreprocessOptionsFor(model), datasets::BadImagePolicy::kFail,
                            decode_threads, std::max(2, 2 * decode_threads));
  std::vector<float> features;
  int64_t dim = 0;
  // One batch in flight while the next is taken from the loader and
  // started, as the worker's extraction does.
  auto collect = [&] {
    auto rows = (*extractor)->Collect(&dim);
    if (!rows.ok()) Die(rows.status());
    features.insert(features.end(), rows->begin(), rows->end());
  };
  image::Batch batch;
  bool in_flight = false;
  for (;;) {
    auto got = loader.Next(&batch);
    if (!got.ok()) Die(got.status());
    if (!*got) break;
    if (auto s = (*extractor)->Start(batch.data.data(), batch.n, batch.height, batch.width);
        !s.ok()) {
      Die(s);
    }
    if (in_flight) collect();
    in_flight = true;
  }
  if (in_flight) collect();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string out = absl::GetFlag(FLAGS_features_out);
  if (!out.empty()) {
    FILE* f = std::fopen(out.c_str(), "wb");
    if (f == nullptr || std::fwrite(features.data(), sizeof(float), features.size(), f) !=
                            features.size() ||
        std::fclose(f) != 0) {
      std::perror(out.c_str());
      return 1;
    }
  }
  std::printf("{\"images\":%lld,\"dim\":%lld,\"seconds\":%s,\"images_per_second\":%s,"
              "\"device\":\"%s\",\"precision\":\"%s\",\"decode_threads\":%d}\n",
              static_cast<long long>(n), static_cast<long long>(dim),
              tools::JsonNumber(seconds, 6).c_str(), tools::JsonNumber(n / seconds, 6).c_str(),
              (*extractor)->device().c_str(), (*extractor)->precision().c_str(), decode_threads);
  return 0;
}
