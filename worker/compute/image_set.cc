#include "worker/compute/image_set.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sslbench::compute {
namespace {

// A decoded (or raw) record as HWC uint8, resized and cropped by `geometry`.
absl::StatusOr<image::Image> ToImage(const datasets::RecordBytes& record, const std::string& key,
                                     const image::PreprocessOptions* geometry) {
  image::Image img;
  if (record.raw()) {
    img.height = record.raw_height;
    img.width = record.raw_width;
    img.channels = record.raw_channels;
    img.pixels.assign(record.bytes.begin(), record.bytes.end());
  } else {
    absl::StatusOr<image::Image> decoded = image::DecodeImage(record.bytes, key, geometry);
    if (!decoded.ok()) return decoded.status();
    img = *std::move(decoded);
  }
  if (geometry == nullptr) return img;
  image::PreprocessOptions g = *geometry;
  g.channels = img.channels;
  return image::ResizeAndCrop(img, g);
}

}  // namespace

absl::StatusOr<ImageSet> LoadImageSet(const datasets::DatasetConfig& config,
                                      const std::string& split, int64_t limit,
                                      const image::PreprocessOptions* geometry) {
  absl::StatusOr<std::unique_ptr<datasets::DatasetReader>> reader =
      datasets::OpenDatasetReader(config);
  if (!reader.ok()) return reader.status();
  absl::StatusOr<datasets::SplitListing> listing = (*reader)->List(split, limit);
  if (!listing.ok()) return listing.status();
  std::vector<image::Image> images;
  std::vector<int32_t> labels;
  int64_t skipped = 0;
  int channels = 1;
  for (const datasets::Record& record : listing->records) {
    absl::StatusOr<datasets::RecordBytes> bytes = (*reader)->ReadRecord(record);
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<image::Image> img = ToImage(*bytes, record.key, geometry);
    if (!img.ok()) {
      const bool bad_image = absl::IsDataLoss(img.status()) || absl::IsInvalidArgument(img.status());
      if (bad_image && config.on_bad_image == datasets::BadImagePolicy::kSkip) {
        ++skipped;
        continue;
      }
      return img.status();
    }
    if (!images.empty() && (img->height != images[0].height || img->width != images[0].width)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset ", config.root, ": image ", record.key, " is ", img->width, "x", img->height,
          " but earlier images are ", images[0].width, "x", images[0].height,
          "; give the model an input_size so images are resized and cropped to one size"));
    }
    channels = std::max(channels, img->channels);
    images.push_back(*std::move(img));
    labels.push_back(record.label);
  }
  ImageSet set;
  set.count = static_cast<int64_t>(images.size());
  set.channels = channels;
  set.height = images.empty() ? 0 : images[0].height;
  set.width = images.empty() ? 0 : images[0].width;
  set.pixels.resize(static_cast<size_t>(set.count * set.image_bytes()));
  const int64_t plane = int64_t{set.height} * set.width;
  for (int64_t i = 0; i < set.count; ++i) {
    const image::Image& img = images[static_cast<size_t>(i)];
    uint8_t* chw = set.pixels.data() + i * set.image_bytes();
    for (int c = 0; c < channels; ++c) {
      const int source = img.channels == 1 ? 0 : c;  // grey among RGB: replicated
      for (int64_t p = 0; p < plane; ++p) chw[c * plane + p] = img.pixels[p * img.channels + source];
    }
  }
  set.labels = std::move(labels);
  set.num_classes = static_cast<int>(listing->class_names.size());
  set.skipped = skipped;
  return set;
}

absl::StatusOr<ImageSet> ReadIdxSplit(const std::string& root, std::string_view split,
                                      int64_t limit) {
  datasets::DatasetConfig config;
  config.format = "idx";
  config.root = root;
  return LoadImageSet(config, std::string(split), limit);
}

}  // namespace sslbench::compute
