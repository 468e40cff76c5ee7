#include "worker/compute/image_set.h"

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace sslbench::compute {
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

  // Reads exactly `size` bytes; DATA_LOSS when the file ends early or the
  // compressed stream is damaged.
  absl::Status Read(void* out, int64_t size, std::string_view what) {
    auto* bytes = static_cast<uint8_t*>(out);
    int64_t done = 0;
    while (done < size) {
      const unsigned chunk =
          static_cast<unsigned>(std::min<int64_t>(size - done, 1 << 26));
      const int got = gzread(file_, bytes + done, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* message = gzerror(file_, &errnum);
        return absl::DataLossError(absl::StrCat(
            "'", path_, "': corrupt data while reading ", std::string(what),
            ": ", message != nullptr ? message : "unknown zlib error"));
      }
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
    uint8_t b[4];
    if (absl::Status s = Read(b, 4, what); !s.ok()) return s;
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
      absl::StrCat("unknown IDX split '", std::string(split),
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

}  // namespace

absl::StatusOr<std::vector<std::string>> IdxSplitFiles(const std::string& root,
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

absl::StatusOr<ImageSet> ReadIdxSplit(const std::string& root,
                                      std::string_view split, int64_t limit) {
  if (limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("IDX limit must be >= 0, got ", limit));
  }
  absl::StatusOr<std::vector<std::string>> files = IdxSplitFiles(root, split);
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
  const int64_t count = dims[0];
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
  if (int64_t{*label_count} != count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IDX split '", std::string(split), "': ", images_path, " has ", count,
        " images but ", labels_path, " has ", *label_count, " labels"));
  }

  ImageSet set;
  set.count = limit > 0 ? std::min(limit, count) : count;
  set.channels = 1;
  set.height = static_cast<int>(dims[1]);
  set.width = static_cast<int>(dims[2]);
  set.pixels.resize(set.count * set.image_bytes());
  if (absl::Status s = images.Read(
          set.pixels.data(), static_cast<int64_t>(set.pixels.size()), "pixels");
      !s.ok()) {
    return s;
  }
  std::vector<uint8_t> raw(set.count);
  if (absl::Status s = labels.Read(raw.data(), set.count, "labels"); !s.ok()) {
    return s;
  }
  set.labels.assign(raw.begin(), raw.end());
  int32_t max_label = -1;
  for (int32_t l : set.labels) max_label = std::max(max_label, l);
  set.num_classes = max_label + 1;
  return set;
}

}  // namespace sslbench::compute
