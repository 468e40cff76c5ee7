#include "common/path_guard.h"

#include <limits.h>
#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace sslbench {
namespace {

// realpath(3): every link and `..` resolved.
bool Resolve(const std::string& path, std::string* out, int* err) {
  char buffer[PATH_MAX];
  if (realpath(path.c_str(), buffer) == nullptr) {
    *err = errno;
    return false;
  }
  *out = buffer;
  return true;
}

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

}  // namespace

absl::Status CheckUnderRoots(const std::string& path, const std::vector<std::string>& roots,
                             absl::string_view what) {
  if (roots.empty()) return absl::OkStatus();
  std::string resolved;
  int err = 0;
  if (!Resolve(path, &resolved, &err)) {
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat(what, " ", path, " does not exist"));
    }
    return absl::PermissionDeniedError(
        absl::StrCat(what, " ", path, " cannot be resolved: ", std::strerror(err)));
  }
  for (const std::string& root : roots) {
    std::string resolved_root;
    if (Resolve(root, &resolved_root, &err) && IsUnder(resolved, resolved_root)) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(absl::StrCat(
      what, " ", path, (resolved != path ? absl::StrCat(" (resolves to ", resolved, ")") : ""),
      " is outside the folders this worker may read (", absl::StrJoin(roots, ", "),
      "); place it there or start the worker with that folder in its roots"));
}

absl::Status ParseRoots(const std::string& list, std::vector<std::string>* roots) {
  roots->clear();
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    const std::string root(part);
    std::error_code ec;
    if (root[0] != '/' || !std::filesystem::is_directory(root, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("root ", root, " is not an absolute path to an existing folder"));
    }
    roots->push_back(root);
  }
  return absl::OkStatus();
}

}  // namespace sslbench
