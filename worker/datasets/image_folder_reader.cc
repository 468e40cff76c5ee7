// torchvision's ImageFolder: ROOT/train/CLASS/**/IMAGE and ROOT/val (or
// ROOT/test)/CLASS/**/IMAGE. Classes are the sorted subfolder names of the
// split; images are the files with one of torchvision's extensions, in its
// order. Record keys are paths relative to ROOT.

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/datasets/files.h"
#include "worker/datasets/readers.h"

namespace sslbench::datasets {
namespace {

namespace fs = std::filesystem;

class ImageFolderReader final : public DatasetReader {
 public:
  explicit ImageFolderReader(DatasetConfig config) : config_(std::move(config)) {}

  absl::StatusOr<SplitListing> List(const std::string& split, int64_t limit) override {
    if (limit < 0) {
      return absl::InvalidArgumentError(absl::StrCat("limit must be >= 0, got ", limit));
    }
    absl::StatusOr<std::string> folder = SplitFolder(split);
    if (!folder.ok()) return folder.status();
    absl::StatusOr<std::vector<std::string>> classes = Classes(*folder);
    if (!classes.ok()) return classes.status();
    if (split != "train") {
      // Labels are indexes into the sorted class names: a split with other
      // classes would silently mislabel every image.
      absl::StatusOr<std::string> train = SplitFolder("train");
      if (!train.ok()) return train.status();
      absl::StatusOr<std::vector<std::string>> train_classes = Classes(*train);
      if (!train_classes.ok()) return train_classes.status();
      if (*train_classes != *classes) return ClassMismatch(*train, *train_classes, *folder, *classes);
    }
    SplitListing listing;
    listing.class_names = *classes;
    const std::string prefix = absl::StrCat(config_.root, "/");
    for (size_t c = 0; c < classes->size(); ++c) {
      const std::string dir = absl::StrCat(*folder, "/", (*classes)[c]);
      absl::StatusOr<std::vector<std::string>> files = ImageFilesUnder(dir);
      if (!files.ok()) return files.status();
      if (files->empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "dataset folder ", dir, " has no image files (extensions: .jpg .jpeg .png "
            ".ppm .bmp .pgm .tif .tiff .webp); remove the folder or add images"));
      }
      for (std::string& path : *files) {
        listing.records.push_back({path.substr(prefix.size()), static_cast<int32_t>(c)});
      }
    }
    if (limit > 0 && static_cast<int64_t>(listing.records.size()) > limit) {
      listing.records.resize(static_cast<size_t>(limit));
    }
    return listing;
  }

  absl::StatusOr<RecordBytes> ReadRecord(const Record& record) override {
    absl::StatusOr<std::string> bytes = ReadWholeFile(absl::StrCat(config_.root, "/", record.key));
    if (!bytes.ok()) return bytes.status();
    RecordBytes out;
    out.bytes = *std::move(bytes);
    return out;
  }

  absl::StatusOr<std::vector<SplitFile>> SplitFiles(const std::string& split) override {
    absl::StatusOr<SplitListing> listing = List(split, 0);
    if (!listing.ok()) return listing.status();
    std::vector<SplitFile> out;
    out.reserve(listing->records.size());
    for (const Record& r : listing->records) {
      absl::StatusOr<SplitFile> f = StatFile(absl::StrCat(config_.root, "/", r.key));
      if (!f.ok()) return f.status();
      out.push_back(*std::move(f));
    }
    return out;
  }

 private:
  // train -> ROOT/train; test -> ROOT/val, else ROOT/test.
  absl::StatusOr<std::string> SplitFolder(const std::string& split) const {
    std::vector<std::string> candidates;
    if (split == "train") {
      candidates = {"train"};
    } else if (split == "test") {
      candidates = {"val", "test"};
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown split '", split, "': expected 'train' or 'test'"));
    }
    for (const std::string& name : candidates) {
      const std::string path = absl::StrCat(config_.root, "/", name);
      std::error_code ec;
      if (fs::is_directory(path, ec)) return path;
    }
    return absl::NotFoundError(absl::StrCat(
        "dataset folder ", config_.root, " has no ", absl::StrJoin(candidates, " or "),
        " subfolder for the ", split, " split (imagefolder layout: ROOT/train/CLASS/IMAGE, "
        "ROOT/val/CLASS/IMAGE)"));
  }

  static absl::StatusOr<std::vector<std::string>> Classes(const std::string& folder) {
    std::error_code ec;
    fs::directory_iterator it(folder, fs::directory_options::follow_directory_symlink, ec);
    if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", folder, ": ", ec.message()));
    std::vector<std::string> classes;
    for (const fs::directory_entry& entry : it) {
      std::error_code type_ec;
      if (entry.is_directory(type_ec)) classes.push_back(entry.path().filename().string());
    }
    std::sort(classes.begin(), classes.end());
    if (classes.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset folder ", folder, " has no class subfolders (imagefolder layout: ",
          folder, "/CLASS/IMAGE)"));
    }
    return classes;
  }

  static absl::Status ClassMismatch(const std::string& train_folder,
                                    const std::vector<std::string>& train,
                                    const std::string& folder,
                                    const std::vector<std::string>& other) {
    std::vector<std::string> only_train, only_other;
    std::set_difference(train.begin(), train.end(), other.begin(), other.end(),
                        std::back_inserter(only_train));
    std::set_difference(other.begin(), other.end(), train.begin(), train.end(),
                        std::back_inserter(only_other));
    auto some = [](const std::vector<std::string>& v) {
      std::vector<std::string> head(v.begin(), v.begin() + std::min<size_t>(v.size(), 5));
      return absl::StrCat(absl::StrJoin(head, ", "), v.size() > 5 ? ", ..." : "");
    };
    return absl::InvalidArgumentError(absl::StrCat(
        "the class folders of ", folder, " (", other.size(), ") differ from those of ",
        train_folder, " (", train.size(), "): only in ", train_folder, ": [", some(only_train),
        "]; only in ", folder, ": [", some(only_other),
        "]; labels are indexes into the sorted class names, so both splits need the same classes"));
  }

  const DatasetConfig config_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DatasetReader>> NewImageFolderReader(const DatasetConfig& config) {
  return std::unique_ptr<DatasetReader>(new ImageFolderReader(config));
}

}  // namespace sslbench::datasets
