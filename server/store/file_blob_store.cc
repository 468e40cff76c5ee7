#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/store/blob_store.h"

namespace sslbench::server {
namespace {

namespace fs = std::filesystem;

bool ValidKey(const std::string& key) {
  if (key.empty() || key.size() > 512 || key[0] == '/' || key.find("..") != std::string::npos) {
    return false;
  }
  for (char c : key) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
          c == '/')) {
      return false;
    }
  }
  return true;
}

absl::Status Errno(const std::string& what, const std::string& path, int err) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

class FileBlobStore final : public BlobStore {
 public:
  explicit FileBlobStore(std::string root) : root_(std::move(root)) {}

  absl::Status PutParts(const std::string& key,
                        absl::Span<const std::string_view> parts) override {
    if (!ValidKey(key)) return absl::InvalidArgumentError(absl::StrCat("bad blob key \"", key, "\""));
    const std::string path = Path(key);
    const std::string dir = fs::path(path).parent_path().string();
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
    // A unique temporary name in the same folder, then rename: readers see
    // the old blob or the new one, never a part.
    const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter_++);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Errno("cannot create", tmp, errno);
    // The parts straight from the caller's buffers (writev), resuming after
    // short writes.
    std::vector<iovec> iov;
    for (std::string_view part : parts) {
      if (!part.empty()) iov.push_back({const_cast<char*>(part.data()), part.size()});
    }
    size_t first = 0;
    while (first < iov.size()) {
      const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
      const ssize_t n = ::writev(fd, iov.data() + first, count);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return Errno("cannot write", tmp, err);
      }
      size_t left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (left > 0) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    if (::fdatasync(fd) != 0 || ::close(fd) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return Errno("cannot flush", tmp, err);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return Errno("cannot rename to", path, err);
    }
    // The rename itself is durable once the folder is flushed.
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Get(const std::string& key) override {
    if (!ValidKey(key)) return absl::InvalidArgumentError(absl::StrCat("bad blob key \"", key, "\""));
    const std::string path = Path(key);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) {
        return absl::NotFoundError(absl::StrCat("blob ", key, " not found in ", Describe()));
      }
      return Errno("cannot open", path, errno);
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return Errno("cannot stat", path, err);
    }
    std::string out(static_cast<size_t>(st.st_size), '\0');
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::read(fd, out.data() + done, out.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = n < 0 ? errno : EIO;
        ::close(fd);
        return Errno("cannot read", path, err);
      }
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    return out;
  }

  absl::Status Delete(const std::string& key) override {
    if (!ValidKey(key)) return absl::InvalidArgumentError(absl::StrCat("bad blob key \"", key, "\""));
    const std::string path = Path(key);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno("cannot remove", path, errno);
    return absl::OkStatus();
  }

  std::string Describe() const override { return absl::StrCat("file://", root_); }

 private:
  std::string Path(const std::string& key) const { return absl::StrCat(root_, "/", key); }

  const std::string root_;
  std::atomic<uint64_t> counter_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<BlobStore>> NewFileBlobStore(const std::string& root) {
  if (root.empty() || root[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("blob store folder \"", root, "\" must be an absolute path"));
  }
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec || ::access(root.c_str(), W_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob store folder ", root, " cannot be created or written",
        ec ? absl::StrCat(": ", ec.message()) : std::string()));
  }
  return std::unique_ptr<BlobStore>(new FileBlobStore(root));
}

}  // namespace sslbench::server
