#include "common/dataset_digest.h"

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench {
namespace {

// The bytes of a file up to 64 MiB; of a larger one (a tar shard), 16 blocks
// of 64 KiB spread evenly over it, so that hashing stays cheap.
absl::StatusOr<std::string> SampledSha256(const datasets::SplitFile& file) {
  constexpr int64_t kWhole = int64_t{64} << 20;
  constexpr int64_t kBlock = 64 << 10;
  constexpr int kBlocks = 16;
  if (file.size <= kWhole) return Sha256File(file.path);
  std::ifstream in(file.path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", file.path));
  std::string sampled;
  std::string block(kBlock, '\0');
  for (int i = 0; i < kBlocks; ++i) {
    const int64_t offset = (file.size - kBlock) * i / (kBlocks - 1);
    in.seekg(offset);
    in.read(block.data(), kBlock);
    if (in.gcount() != kBlock) {
      return absl::InternalError(absl::StrCat("cannot read ", file.path, " at byte ", offset));
    }
    sampled += block;
  }
  return Sha256Hex(sampled);
}

}  // namespace

datasets::DatasetConfig ToDatasetConfig(const v1::DatasetSpec& dataset) {
  datasets::DatasetConfig config;
  config.format = dataset.format().empty() ? datasets::kDefaultFormat : dataset.format();
  config.root = dataset.root();
  config.on_bad_image = dataset.on_bad_image() == "skip" ? datasets::BadImagePolicy::kSkip
                                                         : datasets::BadImagePolicy::kFail;
  return config;
}

absl::StatusOr<std::string> DatasetDigest(const v1::DatasetSpec& dataset) {
  const datasets::DatasetConfig config = ToDatasetConfig(dataset);
  ASSIGN_OR_RETURN(std::unique_ptr<datasets::DatasetReader> reader,
                   datasets::OpenDatasetReader(config));
  std::string lines = absl::StrCat("format=", config.format, "\n");
  const std::string prefix = config.root + "/";
  for (const char* split : {"train", "test"}) {
    ASSIGN_OR_RETURN(std::vector<datasets::SplitFile> files, reader->SplitFiles(split));
    absl::StrAppend(&lines, "split=", split, " files=", files.size(), "\n");
    for (const datasets::SplitFile& f : files) {
      const std::string name =
          f.path.compare(0, prefix.size(), prefix) == 0 ? f.path.substr(prefix.size()) : f.path;
      absl::StrAppend(&lines, name, "\t", f.size, "\t", f.mtime_ns, "\n");
    }
    // Contents of an evenly spaced sample, so an edit that keeps sizes and
    // times (a restored backup, a copy with preserved times) still shows.
    const size_t step = std::max<size_t>(1, files.size() / kDigestSampledFiles);
    for (size_t i = 0; i < files.size(); i += step) {
      ASSIGN_OR_RETURN(std::string sha, SampledSha256(files[i]));
      absl::StrAppend(&lines, "sha256 ", i, "=", sha, "\n");
    }
  }
  return Sha256Hex(lines);
}

}  // namespace sslbench
