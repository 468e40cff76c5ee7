#pragma once
// Images decoded to uint8, as dataset readers deliver them. No LibTorch here.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

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

  int64_t image_bytes() const {
    return int64_t{channels} * height * width;
  }
};

// Reads one split ("train" or "test") of a dataset in the IDX format of
// MNIST-style data: ROOT/{train,t10k}-images-idx3-ubyte[.gz] and the matching
// -labels-idx1-ubyte[.gz]. Gzip-compressed and plain files are both accepted.
// If `limit` > 0 only the first `limit` images are returned.
// Errors: NOT_FOUND when a file is missing (message names the path),
// INVALID_ARGUMENT / DATA_LOSS for a malformed or truncated file, or when
// image and label counts disagree.
absl::StatusOr<ImageSet> ReadIdxSplit(const std::string& root,
                                      std::string_view split,
                                      int64_t limit = 0);

// The files ReadIdxSplit reads for `split`, as found on disk (for hashing
// the dataset's content). NOT_FOUND when missing.
absl::StatusOr<std::vector<std::string>> IdxSplitFiles(
    const std::string& root, std::string_view split);

}  // namespace sslbench::compute
