// MNIST-style IDX files: ROOT/{train,t10k}-images-idx3-ubyte[.gz] with the
// matching -labels-idx1-ubyte[.gz]. Records are raw grey pixels, keyed
// "SPLIT/INDEX"; a split is read into memory once, on first use.

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/datasets/files.h"
#include "worker/datasets/readers.h"

namespace sslbench::datasets {
namespace {

// IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte)
// and the number of dimensions.
constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

// zlib's gzread reads plain files as they are, so one reader serves both the
// compressed and the uncompressed layout.
class GzFile {
 public:
  explicit GzFile(const std::string& path)
      : path_(path), file_(gzopen(path.c_str(), "rb")) {}
  ~GzFile() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  absl::Status Open() const {
    if (file_ == nullptr) {
      return absl::NotFoundError(absl::StrCat("cannot open '", path_, "'"));
    }
    return absl::OkStatus();
  }

  // Appends exactly `size` bytes to `out`, growing it as data arrives (a
  // header that claims more than the file holds fails with DATA_LOSS instead
  // of allocating what it claims).
  absl::Status ReadInto(std::vector<uint8_t>& out, int64_t size,
                        std::string_view what) {
    int64_t done = 0;
    while (done < size) {
      const int64_t chunk = std::min<int64_t>(size - done, 1 << 24);
      const size_t offset = out.size();
      out.resize(offset + static_cast<size_t>(chunk));
      const int got = gzread(file_, out.data() + offset, static_cast<unsigned>(chunk));
      if (got < 0) {
        int errnum = 0;
        const char* message = gzerror(file_, &errnum);
        return absl::DataLossError(absl::StrCat(
            "'", path_, "': corrupt data while reading ", std::string(what),
            ": ", message != nullptr ? message : "unknown zlib error"));
      }
      out.resize(offset + static_cast<size_t>(got));
      if (got == 0) {
        return absl::DataLossError(
            absl::StrCat("'", path_, "' is truncated: expected ", size,
                         " bytes of ", std::string(what), ", got ", done));
      }
      done += got;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint32_t> ReadBigEndian(std::string_view what) {
    std::vector<uint8_t> b;
    if (absl::Status s = ReadInto(b, 4, what); !s.ok()) return s;
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) |
           (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

 private:
  std::string path_;
  gzFile file_;
};

absl::StatusOr<std::string> SplitPrefix(std::string_view split) {
  if (split == "train") return std::string("train");
  if (split == "test" || split == "t10k") return std::string("t10k");
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split '", std::string(split),
                   "': expected 'train' or 'test'"));
}

// The plain file if present, else the .gz one.
absl::StatusOr<std::string> FindFile(const std::string& root,
                                     const std::string& name) {
  const std::filesystem::path base = std::filesystem::path(root) / name;
  std::error_code ec;
  if (std::filesystem::is_regular_file(base, ec)) return base.string();
  const std::string gz = base.string() + ".gz";
  if (std::filesystem::is_regular_file(gz, ec)) return gz;
  return absl::NotFoundError(
      absl::StrCat("IDX file ", base.string(), "[.gz] not found"));
}

struct LoadedSplit {
  int64_t count = 0;  // images read (after the limit)
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;
  std::vector<uint8_t> labels;
};

absl::StatusOr<std::vector<std::string>> Files(const std::string& root,
                                               std::string_view split) {
  absl::StatusOr<std::string> prefix = SplitPrefix(split);
  if (!prefix.ok()) return prefix.status();
  absl::StatusOr<std::string> images =
      FindFile(root, *prefix + "-images-idx3-ubyte");
  if (!images.ok()) return images.status();
  absl::StatusOr<std::string> labels =
      FindFile(root, *prefix + "-labels-idx1-ubyte");
  if (!labels.ok()) return labels.status();
  return std::vector<std::string>{*images, *labels};
}

absl::StatusOr<LoadedSplit> Load(const std::string& root,
                                 std::string_view split, int64_t limit) {
  absl::StatusOr<std::vector<std::string>> files = Files(root, split);
  if (!files.ok()) return files.status();
  const std::string& images_path = (*files)[0];
  const std::string& labels_path = (*files)[1];

  GzFile images(images_path);
  if (absl::Status s = images.Open(); !s.ok()) return s;
  absl::StatusOr<uint32_t> magic = images.ReadBigEndian("the header");
  if (!magic.ok()) return magic.status();
  if (*magic != kImagesMagic) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", images_path, "' is not an IDX image file (magic 0x",
        absl::Hex(*magic, absl::kZeroPad8), ", expected 0x00000803)"));
  }
  uint32_t dims[3];
  for (uint32_t& d : dims) {
    absl::StatusOr<uint32_t> v = images.ReadBigEndian("the header");
    if (!v.ok()) return v.status();
    d = *v;
  }
  if (dims[1] == 0 || dims[2] == 0 || dims[1] > 65536 || dims[2] > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", images_path, "' has invalid image size ", dims[1], "x", dims[2]));
  }

  GzFile labels(labels_path);
  if (absl::Status s = labels.Open(); !s.ok()) return s;
  magic = labels.ReadBigEndian("the header");
  if (!magic.ok()) return magic.status();
  if (*magic != kLabelsMagic) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", labels_path, "' is not an IDX label file (magic 0x",
        absl::Hex(*magic, absl::kZeroPad8), ", expected 0x00000801)"));
  }
  absl::StatusOr<uint32_t> label_count = labels.ReadBigEndian("the header");
  if (!label_count.ok()) return label_count.status();
  if (*label_count != dims[0]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IDX split '", std::string(split), "': ", images_path, " has ", dims[0],
        " images but ", labels_path, " has ", *label_count, " labels"));
  }

  LoadedSplit set;
  set.count = limit > 0 ? std::min<int64_t>(limit, dims[0]) : int64_t{dims[0]};
  set.height = static_cast<int>(dims[1]);
  set.width = static_cast<int>(dims[2]);
  const int64_t image_bytes = int64_t{set.height} * set.width;
  // What the header claims must fit in the file before anything is read: a
  // plain file holds it byte for byte, and deflate expands at most 1032:1.
  for (const auto& [path, claimed] :
       {std::pair<const std::string&, int64_t>{images_path, set.count * image_bytes},
        std::pair<const std::string&, int64_t>{labels_path, set.count}}) {
    std::error_code ec;
    const int64_t size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
    if (ec) return absl::NotFoundError(absl::StrCat("cannot stat '", path, "': ", ec.message()));
    const bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
    const int64_t most = gz ? size * 1032 : size;
    if (claimed > most) {
      return absl::DataLossError(absl::StrCat(
          "'", path, "' is truncated or its header is corrupt: it claims ", dims[0],
          " images (", claimed, " bytes to read) but the file has ", size, " bytes",
          gz ? " compressed" : ""));
    }
  }
  if (absl::Status s = images.ReadInto(set.pixels, set.count * image_bytes, "pixels");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = labels.ReadInto(set.labels, set.count, "labels"); !s.ok()) {
    return s;
  }
  return set;
}

class IdxReader final : public DatasetReader {
 public:
  explicit IdxReader(DatasetConfig config) : config_(std::move(config)) {}

  absl::StatusOr<SplitListing> List(const std::string& split,
                                    int64_t limit) override {
    if (limit < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("limit must be >= 0, got ", limit));
    }
    absl::StatusOr<std::string> prefix = SplitPrefix(split);
    if (!prefix.ok()) return prefix.status();
    absl::StatusOr<LoadedSplit> loaded = Load(config_.root, split, limit);
    if (!loaded.ok()) return loaded.status();
    SplitListing listing;
    listing.records.reserve(static_cast<size_t>(loaded->count));
    int max_label = -1;
    for (int64_t i = 0; i < loaded->count; ++i) {
      const int label = loaded->labels[static_cast<size_t>(i)];
      listing.records.push_back({absl::StrCat(*prefix, "/", i), label});
      max_label = std::max(max_label, label);
    }
    for (int c = 0; c <= max_label; ++c) {
      listing.class_names.push_back(absl::StrCat(c));
    }
    absl::MutexLock lock(&mu_);
    auto& slot = splits_[*prefix];
    if (slot == nullptr || slot->count < loaded->count) {
      slot = std::make_shared<const LoadedSplit>(*std::move(loaded));
    }
    return listing;
  }

  absl::StatusOr<RecordBytes> ReadRecord(const Record& record) override {
    const size_t slash = record.key.find('/');
    int64_t index = -1;
    if (slash == std::string::npos ||
        !absl::SimpleAtoi(record.key.substr(slash + 1), &index) || index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("IDX record key \"", record.key, "\" is malformed"));
    }
    std::shared_ptr<const LoadedSplit> split;
    {
      absl::MutexLock lock(&mu_);
      auto it = splits_.find(record.key.substr(0, slash));
      if (it != splits_.end()) split = it->second;
    }
    if (split == nullptr || index >= split->count) {
      return absl::NotFoundError(absl::StrCat(
          "IDX record ", record.key, " in ", config_.root,
          " was not listed (call List first)"));
    }
    const int64_t bytes = int64_t{split->height} * split->width;
    RecordBytes out;
    out.bytes.assign(reinterpret_cast<const char*>(split->pixels.data()) + index * bytes,
                     static_cast<size_t>(bytes));
    out.raw_height = split->height;
    out.raw_width = split->width;
    out.raw_channels = 1;
    return out;
  }

  absl::StatusOr<std::vector<SplitFile>> SplitFiles(
      const std::string& split) override {
    absl::StatusOr<std::vector<std::string>> files = Files(config_.root, split);
    if (!files.ok()) return files.status();
    std::vector<SplitFile> out;
    for (const std::string& path : *files) {
      absl::StatusOr<SplitFile> f = StatFile(path);
      if (!f.ok()) return f.status();
      out.push_back(*std::move(f));
    }
    return out;
  }

 private:
  const DatasetConfig config_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const LoadedSplit>> splits_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<DatasetReader>> NewIdxReader(
    const DatasetConfig& config) {
  return std::unique_ptr<DatasetReader>(new IdxReader(config));
}

}  // namespace sslbench::datasets
