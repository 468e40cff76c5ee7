// WebDataset-style tar shards: ROOT/train/*.tar and ROOT/val/*.tar (or
// ROOT/test/*.tar). In each shard, the files of one sample share a key (the
// name up to its first dot after the last slash); the member whose name ends
// in .jpg, .jpeg or .png holds the image, the one ending in .cls its class
// index as decimal text. Shards
// are read in sorted order and samples in the order they appear. Record keys
// are "SHARD/KEY" relative to ROOT; listing reads the tar headers and the
// small .cls members, and remembers where each image lies.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/datasets/files.h"
#include "worker/datasets/readers.h"

namespace sslbench::datasets {
namespace {

namespace fs = std::filesystem;

struct Location {
  std::string shard;  // absolute path
  int64_t offset = 0;
  int64_t size = 0;
};

class Fd {
 public:
  explicit Fd(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status ReadAt(int fd, const std::string& path, int64_t offset, int64_t size, char* out) {
  int64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, out + done, static_cast<size_t>(size - done), offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(absl::StrCat(path, ": truncated at byte ", offset + done,
                                              " (expected ", size - done, " more)"));
    }
    done += n;
  }
  return absl::OkStatus();
}

int64_t Octal(const char* field, int length) {
  int64_t v = 0;
  for (int i = 0; i < length && field[i] != '\0' && field[i] != ' '; ++i) {
    if (field[i] < '0' || field[i] > '7') return -1;
    v = v * 8 + (field[i] - '0');
  }
  return v;
}

struct Member {
  std::string name;
  int64_t offset;
  int64_t size;
};

// The regular files of a tar archive (ustar, GNU long names; pax headers
// are skipped).
absl::StatusOr<std::vector<Member>> Members(const std::string& path) {
  Fd fd(path);
  if (fd.get() < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::error_code ec;
  const int64_t file_size = static_cast<int64_t>(fs::file_size(path, ec));
  std::vector<Member> members;
  std::string long_name;
  char header[512];
  for (int64_t offset = 0; offset + 512 <= file_size;) {
    if (absl::Status s = ReadAt(fd.get(), path, offset, 512, header); !s.ok()) return s;
    if (std::all_of(header, header + 512, [](char c) { return c == 0; })) break;  // end
    const int64_t size = Octal(header + 124, 12);
    if (size < 0 || std::memcmp(header + 257, "ustar", 5) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a tar archive (bad header at byte ", offset, ")"));
    }
    const char type = header[156];
    const int64_t data = offset + 512;
    if (data + size > file_size) {
      return absl::DataLossError(absl::StrCat(path, ": truncated inside member at byte ", offset));
    }
    if (type == 'L') {  // GNU long name for the next member
      long_name.assign(static_cast<size_t>(size), '\0');
      if (absl::Status s = ReadAt(fd.get(), path, data, size, long_name.data()); !s.ok()) return s;
      long_name = long_name.c_str();
    } else if (type == '0' || type == '\0') {
      std::string name = long_name;
      if (name.empty()) {
        const std::string prefix(header + 345, strnlen(header + 345, 155));
        const std::string base(header, strnlen(header, 100));
        name = prefix.empty() ? base : absl::StrCat(prefix, "/", base);
      }
      long_name.clear();
      members.push_back({std::move(name), data, size});
    } else {
      long_name.clear();  // directories, links, pax headers
    }
    offset = data + (size + 511) / 512 * 512;
  }
  return members;
}

class TarShardReader final : public DatasetReader {
 public:
  explicit TarShardReader(DatasetConfig config) : config_(std::move(config)) {}

  absl::StatusOr<SplitListing> List(const std::string& split, int64_t limit) override {
    if (limit < 0) return absl::InvalidArgumentError(absl::StrCat("limit must be >= 0, got ", limit));
    absl::StatusOr<std::vector<std::string>> shards = Shards(split);
    if (!shards.ok()) return shards.status();
    SplitListing listing;
    std::map<std::string, Location> where;
    int32_t max_label = -1;
    const std::string prefix = absl::StrCat(config_.root, "/");
    for (const std::string& shard : *shards) {
      absl::StatusOr<std::vector<Member>> members = Members(shard);
      if (!members.ok()) return members.status();
      // Group by sample key, keeping the order of first appearance.
      std::vector<std::string> order;
      std::map<std::string, Location> images;
      std::map<std::string, Location> classes;
      for (const Member& m : *members) {
        const size_t slash = m.name.rfind('/');
        const size_t dot = m.name.find('.', slash == std::string::npos ? 0 : slash + 1);
        if (dot == std::string::npos) continue;
        const std::string key = m.name.substr(0, dot);
        // The suffix's last part names the kind ("x.y.png": key "x", png).
        const std::string ext = absl::AsciiStrToLower(m.name.substr(m.name.rfind('.') + 1));
        if (ext == "jpg" || ext == "jpeg" || ext == "png") {
          if (images.emplace(key, Location{shard, m.offset, m.size}).second) order.push_back(key);
        } else if (ext == "cls") {
          classes.emplace(key, Location{shard, m.offset, m.size});
        }
      }
      Fd fd(shard);
      for (const std::string& key : order) {
        auto cls = classes.find(key);
        if (cls == classes.end()) {
          return absl::InvalidArgumentError(absl::StrCat(
              shard, ": sample \"", key, "\" has an image but no ", key,
              ".cls member (its class index)"));
        }
        std::string text(static_cast<size_t>(std::min<int64_t>(cls->second.size, 32)), '\0');
        if (absl::Status s = ReadAt(fd.get(), shard, cls->second.offset,
                                    static_cast<int64_t>(text.size()), text.data());
            !s.ok()) {
          return s;
        }
        int32_t label = -1;
        if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &label) || label < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              shard, ": ", key, ".cls holds \"", absl::StripAsciiWhitespace(text),
              "\", not a class index >= 0"));
        }
        const std::string record_key = absl::StrCat(shard.substr(prefix.size()), "/", key);
        where[record_key] = images[key];
        listing.records.push_back({record_key, label});
        max_label = std::max(max_label, label);
      }
    }
    if (listing.records.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", split, " shards of ", config_.root,
          " hold no samples (expected KEY.jpg/.png with KEY.cls in each shard)"));
    }
    if (limit > 0 && static_cast<int64_t>(listing.records.size()) > limit) {
      listing.records.resize(static_cast<size_t>(limit));
    }
    for (int32_t c = 0; c <= max_label; ++c) listing.class_names.push_back(absl::StrCat(c));
    absl::MutexLock lock(&mu_);
    for (auto& [key, location] : where) locations_[key] = std::move(location);
    return listing;
  }

  absl::StatusOr<RecordBytes> ReadRecord(const Record& record) override {
    Location location;
    {
      absl::MutexLock lock(&mu_);
      auto it = locations_.find(record.key);
      if (it == locations_.end()) {
        return absl::NotFoundError(
            absl::StrCat("sample ", record.key, " in ", config_.root, " was not listed"));
      }
      location = it->second;
    }
    Fd fd(location.shard);
    if (fd.get() < 0) {
      return absl::NotFoundError(
          absl::StrCat("cannot open ", location.shard, ": ", std::strerror(errno)));
    }
    RecordBytes out;
    out.bytes.resize(static_cast<size_t>(location.size));
    if (absl::Status s =
            ReadAt(fd.get(), location.shard, location.offset, location.size, out.bytes.data());
        !s.ok()) {
      return s;
    }
    return out;
  }

  absl::StatusOr<std::vector<SplitFile>> SplitFiles(const std::string& split) override {
    absl::StatusOr<std::vector<std::string>> shards = Shards(split);
    if (!shards.ok()) return shards.status();
    std::vector<SplitFile> out;
    for (const std::string& shard : *shards) {
      absl::StatusOr<SplitFile> f = StatFile(shard);
      if (!f.ok()) return f.status();
      out.push_back(*std::move(f));
    }
    return out;
  }

 private:
  absl::StatusOr<std::vector<std::string>> Shards(const std::string& split) const {
    std::vector<std::string> folders;
    if (split == "train") {
      folders = {"train"};
    } else if (split == "test") {
      folders = {"val", "test"};
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown split '", split, "': expected 'train' or 'test'"));
    }
    for (const std::string& name : folders) {
      const std::string dir = absl::StrCat(config_.root, "/", name);
      std::error_code ec;
      if (!fs::is_directory(dir, ec)) continue;
      std::vector<std::string> shards;
      for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
        if (absl::EndsWith(e.path().filename().string(), ".tar")) {
          shards.push_back(e.path().string());
        }
      }
      std::sort(shards.begin(), shards.end());
      if (shards.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("dataset folder ", dir, " has no .tar shards"));
      }
      return shards;
    }
    return absl::NotFoundError(absl::StrCat(
        "dataset folder ", config_.root, " has no ", absl::StrJoin(folders, " or "),
        " folder of .tar shards for the ", split, " split"));
  }

  const DatasetConfig config_;
  absl::Mutex mu_;
  std::map<std::string, Location> locations_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<DatasetReader>> NewTarShardReader(const DatasetConfig& config) {
  return std::unique_ptr<DatasetReader>(new TarShardReader(config));
}

}  // namespace sslbench::datasets
