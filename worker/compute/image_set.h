#pragma once
// Images decoded to uint8 and held in memory, for the tasks that need a split
// at once (fine-tuning, the developer tools). No LibTorch here. Extraction
// streams instead (worker/image/batch_loader.h).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/image.h"

namespace sslbench::compute {

// A set of equally sized images with integer labels, stored row-major as
// [count, channels, height, width] uint8.
struct ImageSet {
  int64_t count = 0;
  int channels = 1;
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // count * channels * height * width
  std::vector<int32_t> labels;  // count
  int num_classes = 0;          // max(label) + 1
  int64_t skipped = 0;          // undecodable images left out (on_bad_image: skip)

  int64_t image_bytes() const {
    return int64_t{channels} * height * width;
  }
};

// Reads `split` of a dataset through its reader, at most `limit` images when
// limit > 0. Raw records (IDX) are kept as they are. Encoded images are
// decoded and, with `geometry`, resized and centre-cropped by it (its mean,
// std and channels are ignored; grey stays grey unless every image is RGB);
// without it they must all have one size. An undecodable image fails with
// its name, or is left out and counted under BadImagePolicy::kSkip.
// Errors as DatasetReader's and image::DecodeImage's; INVALID_ARGUMENT when
// sizes differ.
absl::StatusOr<ImageSet> LoadImageSet(const datasets::DatasetConfig& config,
                                      const std::string& split, int64_t limit,
                                      const image::PreprocessOptions* geometry = nullptr);

// LoadImageSet of an MNIST-style IDX dataset at `root` (the tools' input).
absl::StatusOr<ImageSet> ReadIdxSplit(const std::string& root,
                                      std::string_view split,
                                      int64_t limit = 0);

}  // namespace sslbench::compute
