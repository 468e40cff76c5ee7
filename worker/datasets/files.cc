#include "worker/datasets/files.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace sslbench::datasets {

namespace fs = std::filesystem;

absl::StatusOr<SplitFile> StatFile(const std::string& path) {
  std::error_code ec;
  SplitFile f;
  f.path = path;
  const auto size = fs::file_size(path, ec);
  if (ec) {
    return absl::NotFoundError(absl::StrCat("cannot stat ", path, ": ", ec.message()));
  }
  f.size = static_cast<int64_t>(size);
  const auto mtime = fs::last_write_time(path, ec);
  if (ec) {
    return absl::NotFoundError(absl::StrCat("cannot stat ", path, ": ", ec.message()));
  }
  f.mtime_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(mtime.time_since_epoch()).count();
  return f;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) {
    const int err = errno;
    std::string message = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    return absl::InternalError(message);
  }
  std::string out;
  char buffer[1 << 16];
  for (;;) {
    const size_t got = std::fread(buffer, 1, sizeof(buffer), file.get());
    out.append(buffer, got);
    if (got < sizeof(buffer)) break;
  }
  if (std::ferror(file.get())) {
    return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  return out;
}

bool HasImageExtension(const std::string& name) {
  static constexpr const char* kExtensions[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                                ".pgm", ".tif",  ".tiff", ".webp"};
  const std::string lower = absl::AsciiStrToLower(name);
  for (const char* ext : kExtensions) {
    if (absl::EndsWith(lower, ext)) return true;
  }
  return false;
}

absl::StatusOr<std::vector<std::string>> ImageFilesUnder(const std::string& dir) {
  // os.walk yields (dirpath, dirnames, filenames); sorted() orders the tuples
  // by dirpath as a string, then files are sorted within each.
  std::vector<std::pair<std::string, std::vector<std::string>>> walk;
  std::vector<std::string> pending = {dir};
  while (!pending.empty()) {
    std::string current = std::move(pending.back());
    pending.pop_back();
    std::error_code ec;
    fs::directory_iterator it(current, fs::directory_options::follow_directory_symlink, ec);
    if (ec) {
      return absl::NotFoundError(absl::StrCat("cannot list ", current, ": ", ec.message()));
    }
    std::vector<std::string> files;
    for (const fs::directory_entry& entry : it) {
      const std::string name = entry.path().filename().string();
      std::error_code type_ec;
      if (entry.is_directory(type_ec)) {
        pending.push_back(absl::StrCat(current, "/", name));
      } else if (HasImageExtension(name)) {
        files.push_back(name);
      }
    }
    std::sort(files.begin(), files.end());
    walk.emplace_back(std::move(current), std::move(files));
  }
  std::sort(walk.begin(), walk.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> out;
  for (const auto& [path, files] : walk) {
    for (const std::string& f : files) out.push_back(absl::StrCat(path, "/", f));
  }
  return out;
}

}  // namespace sslbench::datasets
