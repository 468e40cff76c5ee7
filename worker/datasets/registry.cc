// The one place that maps format names to readers.

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/datasets/readers.h"

namespace sslbench::datasets {
namespace {

using Factory = absl::StatusOr<std::unique_ptr<DatasetReader>> (*)(
    const DatasetConfig&);

struct Format {
  const char* name;
  Factory factory;
};

// Sorted by name.
constexpr Format kFormats[] = {
    {"csv", &NewCsvManifestReader},
    {"idx", &NewIdxReader},
    {"imagefolder", &NewImageFolderReader},
    {"webdataset", &NewTarShardReader},
};

}  // namespace

std::vector<std::string> KnownFormats() {
  std::vector<std::string> names;
  for (const Format& f : kFormats) names.emplace_back(f.name);
  std::sort(names.begin(), names.end());
  return names;
}

bool IsKnownFormat(const std::string& format) {
  for (const Format& f : kFormats) {
    if (format == f.name) return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<DatasetReader>> OpenDatasetReader(
    const DatasetConfig& config) {
  for (const Format& f : kFormats) {
    if (config.format != f.name) continue;
    std::error_code ec;
    if (!std::filesystem::is_directory(config.root, ec)) {
      return absl::NotFoundError(absl::StrCat(
          "dataset folder ", config.root, " does not exist"));
    }
    return f.factory(config);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dataset format \"", config.format,
                   "\" is not supported (supported: ",
                   absl::StrJoin(KnownFormats(), ", "), ")"));
}

absl::StatusOr<BadImagePolicy> ParseBadImagePolicy(const std::string& name) {
  if (name.empty() || name == "fail") return BadImagePolicy::kFail;
  if (name == "skip") return BadImagePolicy::kSkip;
  return absl::InvalidArgumentError(absl::StrCat(
      "on_bad_image \"", name, "\" is not fail or skip"));
}

}  // namespace sslbench::datasets
