#pragma once
// The dataset seam. A DatasetReader lists one split of a dataset as records
// (key, label), reads a record's bytes, and names the files that define the
// split (for the content digest). One implementation per format lives in this
// folder, found by format name through OpenDatasetReader(); nothing outside
// this folder names a format. No LibTorch, no RPC: the client (digest), the
// coordinator (validation) and the worker (extraction) all link it.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sslbench::datasets {

// What to do with an image that cannot be decoded (truncated, corrupt,
// zero bytes, an unsupported format).
enum class BadImagePolicy {
  kFail,  // fail the task, naming the file
  kSkip,  // leave the image out and count it in the result
};

struct DatasetConfig {
  std::string format;  // a name from KnownFormats()
  std::string root;    // absolute folder
  BadImagePolicy on_bad_image = BadImagePolicy::kFail;
};

struct Record {
  std::string key;    // stable within the split, e.g. "train/dog/1.jpg"
  int32_t label = 0;  // index into SplitListing::class_names
};

struct SplitListing {
  std::vector<Record> records;
  // Label i is class_names[i]; for formats without names, "0", "1", ...
  std::vector<std::string> class_names;
};

// A record's contents: an encoded image file (JPEG, PNG) or, for formats that
// store raw pixels, uint8 pixels of the given shape (HWC, channels 1 or 3).
struct RecordBytes {
  std::string bytes;
  int raw_height = 0;  // > 0: `bytes` are raw pixels
  int raw_width = 0;
  int raw_channels = 0;
  bool raw() const { return raw_height > 0; }
};

// A file that defines a split, for the content digest.
struct SplitFile {
  std::string path;  // absolute
  int64_t size = 0;
  int64_t mtime_ns = 0;
};

// Thread-safe after construction: ReadRecord may be called from several
// decode threads at once.
class DatasetReader {
 public:
  virtual ~DatasetReader() = default;

  // The records of `split` ("train" or "test") in a stable order, with at
  // most `limit` records when limit > 0. NOT_FOUND naming the missing folder
  // or file; INVALID_ARGUMENT for a malformed dataset (message names the
  // file and the fix), including a test split whose class set differs from
  // train's.
  virtual absl::StatusOr<SplitListing> List(const std::string& split,
                                            int64_t limit) = 0;

  // The bytes of one record listed by List(). NOT_FOUND / DATA_LOSS naming
  // the file.
  virtual absl::StatusOr<RecordBytes> ReadRecord(const Record& record) = 0;

  // The files whose contents define `split`, in a stable order, with their
  // sizes and modification times.
  virtual absl::StatusOr<std::vector<SplitFile>> SplitFiles(
      const std::string& split) = 0;
};

// The format a study file means when it names none.
inline constexpr char kDefaultFormat[] = "idx";

// The registered format names, sorted.
std::vector<std::string> KnownFormats();
bool IsKnownFormat(const std::string& format);

// A reader for `config.format`. INVALID_ARGUMENT for an unknown format (the
// message lists the known ones); NOT_FOUND when the root folder is missing.
absl::StatusOr<std::unique_ptr<DatasetReader>> OpenDatasetReader(
    const DatasetConfig& config);

// "fail" / "skip"; INVALID_ARGUMENT otherwise. Empty means kFail.
absl::StatusOr<BadImagePolicy> ParseBadImagePolicy(const std::string& name);

}  // namespace sslbench::datasets
