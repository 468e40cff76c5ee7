// CSV or TSV manifests of image files: rows "path,label[,split]", paths
// relative to ROOT (or absolute). The files, by split:
//   train: ROOT/train.csv or ROOT/train.tsv
//   test:  ROOT/val.{csv,tsv}, else ROOT/test.{csv,tsv}
// or one ROOT/manifest.{csv,tsv} whose third column names the split
// ("train"; "val" or "test"). A first row "path,label..." is a header. Fields
// may be double-quoted (RFC 4180, one row per line).
//
// Labels are class names: sorted as strings, like ImageFolder's folders,
// unless every label of the train split is a non-negative integer, which
// then is the class index itself. The test split must use train's classes.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/datasets/files.h"
#include "worker/datasets/readers.h"

namespace sslbench::datasets {
namespace {

namespace fs = std::filesystem;

struct Row {
  std::string path;
  std::string label;
};

// Splits one line; double quotes group a field and "" is a quote.
absl::StatusOr<std::vector<std::string>> Fields(const std::string& line, char sep) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == sep) {
      fields.emplace_back();
    } else if (c != '\r') {
      fields.back() += c;
    }
  }
  if (quoted) return absl::InvalidArgumentError("unterminated quote");
  for (std::string& f : fields) f = std::string(absl::StripAsciiWhitespace(f));
  return fields;
}

class CsvManifestReader final : public DatasetReader {
 public:
  explicit CsvManifestReader(DatasetConfig config) : config_(std::move(config)) {}

  absl::StatusOr<SplitListing> List(const std::string& split, int64_t limit) override {
    if (limit < 0) {
      return absl::InvalidArgumentError(absl::StrCat("limit must be >= 0, got ", limit));
    }
    absl::StatusOr<std::vector<Row>> rows = Rows(split);
    if (!rows.ok()) return rows.status();
    absl::StatusOr<std::vector<Row>> train = split == "train" ? rows : Rows("train");
    if (!train.ok()) return train.status();
    // Classes come from train, so both splits index them alike.
    bool numeric = true;
    int64_t max_label = -1;
    std::set<std::string> names;
    for (const Row& r : *train) {
      int64_t v = 0;
      if (!absl::SimpleAtoi(r.label, &v) || v < 0 || v > (1 << 24)) numeric = false;
      max_label = std::max(max_label, v);
      names.insert(r.label);
    }
    SplitListing listing;
    std::map<std::string, int32_t> index;
    if (numeric) {
      for (int64_t c = 0; c <= max_label; ++c) listing.class_names.push_back(absl::StrCat(c));
    } else {
      listing.class_names.assign(names.begin(), names.end());
    }
    for (size_t c = 0; c < listing.class_names.size(); ++c) {
      index[listing.class_names[c]] = static_cast<int32_t>(c);
    }
    std::set<std::string> unknown;
    for (const Row& r : *rows) {
      int32_t label = -1;
      if (numeric) {
        int64_t v = -1;
        if (absl::SimpleAtoi(r.label, &v) && v >= 0 && v <= max_label) label = static_cast<int32_t>(v);
      } else if (auto it = index.find(r.label); it != index.end()) {
        label = it->second;
      }
      if (label < 0) {
        unknown.insert(r.label);
        continue;
      }
      listing.records.push_back({r.path, label});
    }
    if (!unknown.empty()) {
      std::vector<std::string> some(unknown.begin(), unknown.end());
      if (some.size() > 5) some.resize(5);
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", split, " manifest of ", config_.root, " (", *ManifestPath(split),
          ") has labels that the train manifest (", *ManifestPath("train"), ") lacks: [",
          absl::StrJoin(some, ", "), unknown.size() > 5 ? ", ..." : "",
          "]; both splits need the same classes"));
    }
    if (listing.records.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", split, " manifest ", *ManifestPath(split), " lists no images"));
    }
    if (limit > 0 && static_cast<int64_t>(listing.records.size()) > limit) {
      listing.records.resize(static_cast<size_t>(limit));
    }
    return listing;
  }

  absl::StatusOr<RecordBytes> ReadRecord(const Record& record) override {
    absl::StatusOr<std::string> bytes = ReadWholeFile(Absolute(record.key));
    if (!bytes.ok()) return bytes.status();
    RecordBytes out;
    out.bytes = *std::move(bytes);
    return out;
  }

  absl::StatusOr<std::vector<SplitFile>> SplitFiles(const std::string& split) override {
    absl::StatusOr<std::string> manifest = ManifestPath(split);
    if (!manifest.ok()) return manifest.status();
    absl::StatusOr<std::vector<Row>> rows = Rows(split);
    if (!rows.ok()) return rows.status();
    std::vector<SplitFile> out;
    absl::StatusOr<SplitFile> m = StatFile(*manifest);
    if (!m.ok()) return m.status();
    out.push_back(*std::move(m));
    for (const Row& r : *rows) {
      absl::StatusOr<SplitFile> f = StatFile(Absolute(r.path));
      if (!f.ok()) return f.status();
      out.push_back(*std::move(f));
    }
    return out;
  }

 private:
  std::string Absolute(const std::string& path) const {
    return path.empty() || path[0] == '/' ? path : absl::StrCat(config_.root, "/", path);
  }

  // The manifest that holds `split`: its own file, else the shared one.
  absl::StatusOr<std::string> ManifestPath(const std::string& split) const {
    std::vector<std::string> names;
    if (split == "train") {
      names = {"train"};
    } else if (split == "test") {
      names = {"val", "test"};
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown split '", split, "': expected 'train' or 'test'"));
    }
    names.push_back("manifest");
    for (const std::string& name : names) {
      for (const char* ext : {".csv", ".tsv"}) {
        const std::string path = absl::StrCat(config_.root, "/", name, ext);
        std::error_code ec;
        if (fs::is_regular_file(path, ec)) return path;
      }
    }
    return absl::NotFoundError(absl::StrCat(
        "dataset folder ", config_.root, " has no manifest for the ", split, " split (expected ",
        split == "train" ? "train.csv" : "val.csv or test.csv",
        ", or manifest.csv with a split column; .tsv also works)"));
  }

  absl::StatusOr<std::vector<Row>> Rows(const std::string& split) const {
    absl::StatusOr<std::string> path = ManifestPath(split);
    if (!path.ok()) return path.status();
    const bool shared = absl::EndsWith(*path, "/manifest.csv") || absl::EndsWith(*path, "/manifest.tsv");
    const char sep = absl::EndsWith(*path, ".tsv") ? '\t' : ',';
    std::ifstream in(*path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", *path));
    std::vector<Row> rows;
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (absl::StripAsciiWhitespace(line).empty()) continue;
      auto where = [&] { return absl::StrCat(*path, ":", number, ": "); };
      absl::StatusOr<std::vector<std::string>> fields = Fields(line, sep);
      if (!fields.ok()) return absl::InvalidArgumentError(where() + std::string(fields.status().message()));
      if (number == 1 && absl::AsciiStrToLower((*fields)[0]) == "path") continue;  // header
      if (fields->size() < 2 || fields->size() > 3 || (shared && fields->size() != 3)) {
        return absl::InvalidArgumentError(absl::StrCat(
            where(), "expected ", shared ? "3 fields (path, label, split)" : "2 or 3 fields (path, label[, split])",
            ", got ", fields->size(), sep == '\t' ? " (tab-separated)" : " (comma-separated)"));
      }
      if ((*fields)[0].empty() || (*fields)[1].empty()) {
        return absl::InvalidArgumentError(where() + "empty path or label");
      }
      if (fields->size() == 3) {
        const std::string& s = (*fields)[2];
        const bool in_split = split == "train" ? s == "train" : (s == "val" || s == "test");
        if (s != "train" && s != "val" && s != "test") {
          return absl::InvalidArgumentError(
              absl::StrCat(where(), "split \"", s, "\" is not train, val or test"));
        }
        if (!in_split) continue;
      }
      rows.push_back({(*fields)[0], (*fields)[1]});
    }
    return rows;
  }

  const DatasetConfig config_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DatasetReader>> NewCsvManifestReader(const DatasetConfig& config) {
  return std::unique_ptr<DatasetReader>(new CsvManifestReader(config));
}

}  // namespace sslbench::datasets
