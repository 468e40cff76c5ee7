#pragma once
// File helpers shared by the readers of this folder.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench::datasets {

// Size and modification time. NOT_FOUND naming the path.
absl::StatusOr<SplitFile> StatFile(const std::string& path);

// The whole file. NOT_FOUND / INTERNAL naming the path.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

// torchvision's IMG_EXTENSIONS, compared case-insensitively.
bool HasImageExtension(const std::string& name);

// Files with an image extension under `dir`, recursively (following links),
// in torchvision's order: sorted(os.walk(dir)), then sorted file names.
// Paths are `dir` + "/" + relative path.
absl::StatusOr<std::vector<std::string>> ImageFilesUnder(const std::string& dir);

}  // namespace sslbench::datasets
