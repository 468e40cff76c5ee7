#pragma once
// Where a worker may read: model files and dataset folders named by a study
// must resolve (symbolic links and `..` followed) under the roots the worker
// was started with, so a study cannot make workers read /etc, /dev or another
// user's files.

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"

namespace sslbench {

// OK when `path` resolves to `roots[i]` or a path below it for some i, or when
// `roots` is empty (no confinement). PERMISSION_DENIED naming `what`, the path,
// where it resolves and the roots; NOT_FOUND when it does not exist.
absl::Status CheckUnderRoots(const std::string& path, const std::vector<std::string>& roots,
                             absl::string_view what);

// "a,b,c" -> {"a", "b", "c"}; empty entries dropped. INVALID_ARGUMENT for a
// root that is not an absolute, existing folder.
absl::Status ParseRoots(const std::string& list, std::vector<std::string>* roots);

}  // namespace sslbench
