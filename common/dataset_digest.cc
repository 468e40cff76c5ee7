#include "common/dataset_digest.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace sslbench {

absl::StatusOr<std::string> DatasetDigest(const v1::DatasetSpec& dataset) {
  const std::string format = dataset.format().empty() ? "idx" : dataset.format();
  if (format != "idx") {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset format \"", format, "\" is not supported (supported: idx)"));
  }
  namespace fs = std::filesystem;
  const fs::path root(dataset.root());
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    return absl::NotFoundError(
        absl::StrCat("dataset folder ", dataset.root(), " does not exist"));
  }
  std::string lines;
  for (const char* base : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
    // Plain first, as the IDX reader does, so both hash the same bytes.
    std::string name = base;
    if (!fs::is_regular_file(root / name, ec)) {
      name = absl::StrCat(base, ".gz");
      if (!fs::is_regular_file(root / name, ec)) {
        return absl::NotFoundError(
            absl::StrCat(dataset.root(), " has no ", base, "[.gz]"));
      }
    }
    ASSIGN_OR_RETURN(std::string sha, Sha256File((root / name).string()));
    absl::StrAppend(&lines, name, "=", sha, "\n");
  }
  return Sha256Hex(lines);
}

}  // namespace sslbench
