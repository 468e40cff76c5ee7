#include "client/study_file.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dataset_digest.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/study_spec.h"
#include "yaml-cpp/yaml.h"

namespace sslbench::client {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

std::string Where(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return absl::StrCat(" (line ", mark.line + 1, ")");
}

absl::Status Invalid(const std::string& field, const YAML::Node& node,
                     const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what, Where(node)));
}

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return absl::StrCat("\"", node.Scalar(), "\"");
    default:
      return "an undefined value";
  }
}

// One mapping of the file, with its field path ("models[0]") and the keys it
// may hold. Absent and null values read as "not given".
class Map {
 public:
  static absl::StatusOr<Map> Of(const YAML::Node& node, std::string path,
                                std::vector<std::string> known) {
    if (!node.IsMap()) {
      return Invalid(path.empty() ? "study" : path, node,
                     absl::StrCat("expected a mapping with keys ",
                                  absl::StrJoin(known, ", "), ", got ",
                                  Describe(node)));
    }
    Map map(node, std::move(path));
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (!it->first.IsScalar()) {
        return Invalid(map.path_.empty() ? "study" : map.path_, it->first,
                       "keys must be plain names");
      }
      const std::string key = it->first.Scalar();
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        return Invalid(map.Field(key), it->first,
                       absl::StrCat("unknown key (known: ", absl::StrJoin(known, ", "),
                                    ")"));
      }
      if (!seen.insert(key).second) {
        return Invalid(map.Field(key), it->first, "given twice");
      }
      map.values_[key] = it->second;
    }
    return map;
  }

  std::string Field(const std::string& key) const {
    return path_.empty() ? key : absl::StrCat(path_, ".", key);
  }
  const YAML::Node& node() const { return node_; }

  // The value of `key`, or an undefined node when absent or null.
  YAML::Node Get(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end() || it->second.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
    return it->second;
  }
  bool Has(const std::string& key) const { return Get(key).IsDefined(); }

  absl::Status Required(const std::string& key) const {
    if (Has(key)) return absl::OkStatus();
    return Invalid(Field(key), node_, "is required");
  }

  absl::Status String(const std::string& key, bool required, std::string* out) const {
    if (required) RETURN_IF_ERROR(Required(key));
    const YAML::Node value = Get(key);
    if (!value.IsDefined()) return absl::OkStatus();
    if (!value.IsScalar()) {
      return Invalid(Field(key), value,
                     absl::StrCat("expected a string, got ", Describe(value)));
    }
    *out = value.Scalar();
    if (required && out->empty()) return Invalid(Field(key), value, "must not be empty");
    return absl::OkStatus();
  }

  absl::Status Int(const std::string& key, int64_t min, int64_t max,
                   int64_t* out) const {
    const YAML::Node value = Get(key);
    if (!value.IsDefined()) return absl::OkStatus();
    return ParseInt(Field(key), value, min, max, out);
  }

  absl::Status Double(const std::string& key, double* out) const {
    const YAML::Node value = Get(key);
    if (!value.IsDefined()) return absl::OkStatus();
    return ParseDouble(Field(key), value, out);
  }

  // A list of numbers; a single number reads as a list of one.
  absl::Status IntList(const std::string& key, std::vector<int64_t>* out) const {
    return List(key, [&](const std::string& field, const YAML::Node& item) {
      int64_t v = 0;
      RETURN_IF_ERROR(ParseInt(field, item, kInt32Min, kInt32Max, &v));
      out->push_back(v);
      return absl::OkStatus();
    });
  }
  absl::Status DoubleList(const std::string& key, std::vector<double>* out) const {
    return List(key, [&](const std::string& field, const YAML::Node& item) {
      double v = 0;
      RETURN_IF_ERROR(ParseDouble(field, item, &v));
      out->push_back(v);
      return absl::OkStatus();
    });
  }

  static absl::Status ParseInt(const std::string& field, const YAML::Node& value,
                               int64_t min, int64_t max, int64_t* out) {
    if (!value.IsScalar()) {
      return Invalid(field, value,
                     absl::StrCat("expected an integer, got ", Describe(value)));
    }
    int64_t v = 0;
    if (!absl::SimpleAtoi(value.Scalar(), &v)) {
      return Invalid(field, value,
                     absl::StrCat("\"", value.Scalar(), "\" is not an integer"));
    }
    if (v < min || v > max) {
      return Invalid(field, value,
                     absl::StrCat(v, " is out of range [", min, ", ", max, "]"));
    }
    *out = v;
    return absl::OkStatus();
  }

  static absl::Status ParseDouble(const std::string& field, const YAML::Node& value,
                                  double* out) {
    if (!value.IsScalar()) {
      return Invalid(field, value,
                     absl::StrCat("expected a number, got ", Describe(value)));
    }
    double v = 0;
    if (!absl::SimpleAtod(value.Scalar(), &v)) {
      return Invalid(field, value,
                     absl::StrCat("\"", value.Scalar(), "\" is not a number"));
    }
    *out = v;
    return absl::OkStatus();
  }

 private:
  Map(YAML::Node node, std::string path) : node_(std::move(node)), path_(std::move(path)) {}

  template <typename Fn>
  absl::Status List(const std::string& key, Fn&& each) const {
    const YAML::Node value = Get(key);
    if (!value.IsDefined()) return absl::OkStatus();
    if (value.IsScalar()) return each(Field(key), value);
    if (!value.IsSequence()) {
      return Invalid(Field(key), value,
                     absl::StrCat("expected a list of numbers, got ", Describe(value)));
    }
    for (size_t i = 0; i < value.size(); ++i) {
      RETURN_IF_ERROR(each(absl::StrCat(Field(key), "[", i, "]"), value[i]));
    }
    return absl::OkStatus();
  }

  YAML::Node node_;
  std::string path_;
  std::map<std::string, YAML::Node> values_;
};

// The items of a required, non-empty list of mappings.
absl::StatusOr<std::vector<YAML::Node>> Items(const Map& study, const std::string& key) {
  RETURN_IF_ERROR(study.Required(key));
  const YAML::Node list = study.Get(key);
  if (!list.IsSequence()) {
    return Invalid(key, list, absl::StrCat("expected a list, got ", Describe(list)));
  }
  if (list.size() == 0) return Invalid(key, list, "must not be empty");
  std::vector<YAML::Node> items;
  for (size_t i = 0; i < list.size(); ++i) items.push_back(list[i]);
  return items;
}

std::string Resolve(const std::string& path, const fs::path& base) {
  fs::path p(path);
  if (p.is_relative()) p = base / p;
  return p.lexically_normal().string();
}

absl::Status ParseModel(const YAML::Node& node, const std::string& path,
                        const fs::path& base, v1::ModelSpec* model) {
  ASSIGN_OR_RETURN(Map m, Map::Of(node, path,
                                  {"name", "path", "input_size", "channels", "mean",
                                   "std"}));
  std::string name, file;
  RETURN_IF_ERROR(m.String("name", /*required=*/true, &name));
  RETURN_IF_ERROR(m.String("path", /*required=*/true, &file));
  int64_t input_size = 0, channels = 0;
  RETURN_IF_ERROR(m.Int("input_size", kInt32Min, kInt32Max, &input_size));
  RETURN_IF_ERROR(m.Int("channels", kInt32Min, kInt32Max, &channels));
  std::vector<double> mean, std;
  RETURN_IF_ERROR(m.DoubleList("mean", &mean));
  RETURN_IF_ERROR(m.DoubleList("std", &std));
  model->set_name(name);
  model->set_input_size(static_cast<int32_t>(input_size));
  model->set_channels(static_cast<int32_t>(channels));
  for (double v : mean) model->add_mean(static_cast<float>(v));
  for (double v : std) model->add_std(static_cast<float>(v));

  const std::string absolute = Resolve(file, base);
  const std::string field = m.Field("path");
  std::error_code ec;
  if (!fs::exists(absolute, ec)) {
    return absl::NotFoundError(absl::StrCat(field, ": file ", absolute,
                                            " does not exist", Where(m.Get("path"))));
  }
  if (!fs::is_regular_file(absolute, ec)) {
    return Invalid(field, m.Get("path"),
                   absl::StrCat(absolute, " is not a regular file"));
  }
  model->set_path(absolute);
  absl::StatusOr<std::string> sha = Sha256File(absolute);
  if (!sha.ok()) {
    return absl::Status(sha.status().code(),
                        absl::StrCat(field, ": ", sha.status().message()));
  }
  model->set_sha256(*sha);
  return absl::OkStatus();
}

absl::Status ParseDataset(const YAML::Node& node, const std::string& path,
                          const fs::path& base,
                          std::map<std::string, std::string>& digests,
                          v1::DatasetSpec* dataset) {
  ASSIGN_OR_RETURN(Map d, Map::Of(node, path,
                                  {"name", "format", "root", "role", "train_limit",
                                   "test_limit"}));
  std::string name, format = "idx", root, role;
  RETURN_IF_ERROR(d.String("name", /*required=*/true, &name));
  RETURN_IF_ERROR(d.String("format", /*required=*/false, &format));
  RETURN_IF_ERROR(d.String("root", /*required=*/true, &root));
  RETURN_IF_ERROR(d.String("role", /*required=*/false, &role));
  int64_t train_limit = 0, test_limit = 0;
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  RETURN_IF_ERROR(d.Int("train_limit", 0, kMax, &train_limit));
  RETURN_IF_ERROR(d.Int("test_limit", 0, kMax, &test_limit));
  dataset->set_name(name);
  dataset->set_format(format);
  dataset->set_train_limit(train_limit);
  dataset->set_test_limit(test_limit);
  if (role.empty() || role == "in-domain" || role == "in_domain") {
    dataset->set_role(v1::DATASET_ROLE_IN_DOMAIN);
  } else if (role == "out-of-domain" || role == "out_of_domain") {
    dataset->set_role(v1::DATASET_ROLE_OUT_OF_DOMAIN);
  } else {
    return Invalid(d.Field("role"), d.Get("role"),
                   absl::StrCat("\"", role, "\" is not in-domain or out-of-domain"));
  }
  if (format != "idx") {
    return Invalid(d.Field("format"), d.Get("format"),
                   absl::StrCat("\"", format, "\" is not supported (supported: idx)"));
  }

  const std::string absolute = Resolve(root, base);
  const std::string field = d.Field("root");
  dataset->set_root(absolute);
  std::error_code ec;
  if (!fs::is_directory(absolute, ec)) {
    return absl::NotFoundError(absl::StrCat(field, ": folder ", absolute,
                                            " does not exist", Where(d.Get("root"))));
  }
  auto cached = digests.find(absolute);
  if (cached == digests.end()) {
    absl::StatusOr<std::string> digest = DatasetDigest(*dataset);
    if (!digest.ok()) {
      return absl::Status(digest.status().code(),
                          absl::StrCat(field, ": ", digest.status().message()));
    }
    cached = digests.emplace(absolute, *digest).first;
  }
  dataset->set_digest(cached->second);
  return absl::OkStatus();
}

absl::Status ParseProtocol(const YAML::Node& node, const std::string& path,
                           v1::ProtocolSpec* protocol) {
  ASSIGN_OR_RETURN(Map p, Map::Of(node, path,
                                  {"name", "kind", "ks", "temperature", "euclidean_k",
                                   "test_chunk_rows", "train_chunk_rows"}));
  std::string name, kind;
  RETURN_IF_ERROR(p.String("name", /*required=*/true, &name));
  RETURN_IF_ERROR(p.String("kind", /*required=*/false, &kind));
  protocol->set_name(name);
  if (kind.empty()) {
    if (name != "knn") {
      return Invalid(p.Field("kind"), p.node(),
                     absl::StrCat("is required for protocol \"", name,
                                  "\" (known kinds: knn)"));
    }
    kind = name;
  }
  if (kind != "knn") {
    return Invalid(p.Field("kind"), p.Get("kind"),
                   absl::StrCat("\"", kind, "\" is not supported (supported: knn)"));
  }
  v1::KnnParams* knn = protocol->mutable_knn();
  std::vector<int64_t> ks;
  RETURN_IF_ERROR(p.IntList("ks", &ks));
  for (int64_t k : ks) knn->add_ks(static_cast<int32_t>(k));
  double temperature = 0;
  RETURN_IF_ERROR(p.Double("temperature", &temperature));
  knn->set_temperature(temperature);
  int64_t euclidean_k = 0, test_rows = 0, train_rows = 0;
  RETURN_IF_ERROR(p.Int("euclidean_k", kInt32Min, kInt32Max, &euclidean_k));
  knn->set_euclidean_k(static_cast<int32_t>(euclidean_k));
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  RETURN_IF_ERROR(p.Int("test_chunk_rows", std::numeric_limits<int64_t>::min(), kMax,
                        &test_rows));
  RETURN_IF_ERROR(p.Int("train_chunk_rows", std::numeric_limits<int64_t>::min(), kMax,
                        &train_rows));
  // Zero means "default" in the spec; an explicit zero is impossible.
  if (p.Has("test_chunk_rows") && test_rows < 1) {
    return Invalid(p.Field("test_chunk_rows"), p.Get("test_chunk_rows"), "must be >= 1");
  }
  if (p.Has("train_chunk_rows") && train_rows < 1) {
    return Invalid(p.Field("train_chunk_rows"), p.Get("train_chunk_rows"),
                   "must be >= 1");
  }
  if (p.Has("euclidean_k") && euclidean_k == 0) {
    return Invalid(p.Field("euclidean_k"), p.Get("euclidean_k"),
                   "0 must be -1 (off) or in [1, 10000]");
  }
  if (p.Has("temperature") && !(temperature > 0)) {
    return Invalid(p.Field("temperature"), p.Get("temperature"),
                   absl::StrCat(temperature, " must be a positive number"));
  }
  if (p.Has("ks") && ks.empty()) {
    return Invalid(p.Field("ks"), p.Get("ks"), "at least one k is required");
  }
  knn->set_test_chunk_rows(test_rows);
  knn->set_train_chunk_rows(train_rows);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::StudySpec> ParseStudyYaml(const std::string& yaml_text,
                                             const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not valid YAML: ", e.msg, " (line ", e.mark.line + 1, ", column ",
        e.mark.column + 1, ")"));
  }
  if (!root.IsDefined() || root.IsNull()) {
    return absl::InvalidArgumentError(
        "the study is empty (expected name, models, datasets, protocols)");
  }
  std::error_code ec;
  fs::path base = fs::absolute(base_dir.empty() ? "." : base_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot resolve folder ", base_dir, ": ", ec.message()));
  }
  base = base.lexically_normal();

  v1::StudySpec spec;
  try {
    ASSIGN_OR_RETURN(Map study,
                     Map::Of(root, "",
                             {"name", "max_attempts", "extract_batch_size", "models",
                              "datasets", "protocols"}));
    std::string name;
    RETURN_IF_ERROR(study.String("name", /*required=*/true, &name));
    spec.set_name(name);
    int64_t max_attempts = 0, batch = 0;
    RETURN_IF_ERROR(study.Int("max_attempts", kInt32Min, kInt32Max, &max_attempts));
    RETURN_IF_ERROR(study.Int("extract_batch_size", kInt32Min, kInt32Max, &batch));
    if (study.Has("max_attempts") && max_attempts == 0) {
      return Invalid("max_attempts", study.Get("max_attempts"), "must be in [1, 100]");
    }
    if (study.Has("extract_batch_size") && batch == 0) {
      return Invalid("extract_batch_size", study.Get("extract_batch_size"),
                     "must be in [1, 65536]");
    }
    spec.set_max_attempts(static_cast<int32_t>(max_attempts));
    spec.set_extract_batch_size(static_cast<int32_t>(batch));

    // Shapes and types of every section first, so that a typo is reported
    // before any (slow) hashing of large files.
    ASSIGN_OR_RETURN(std::vector<YAML::Node> models, Items(study, "models"));
    ASSIGN_OR_RETURN(std::vector<YAML::Node> datasets, Items(study, "datasets"));
    ASSIGN_OR_RETURN(std::vector<YAML::Node> protocols, Items(study, "protocols"));
    for (size_t i = 0; i < protocols.size(); ++i) {
      RETURN_IF_ERROR(ParseProtocol(protocols[i], absl::StrCat("protocols[", i, "]"),
                                    spec.add_protocols()));
    }
    for (size_t i = 0; i < models.size(); ++i) {
      RETURN_IF_ERROR(ParseModel(models[i], absl::StrCat("models[", i, "]"), base,
                                 spec.add_models()));
    }
    std::map<std::string, std::string> digests;
    for (size_t i = 0; i < datasets.size(); ++i) {
      RETURN_IF_ERROR(ParseDataset(datasets[i], absl::StrCat("datasets[", i, "]"),
                                   base, digests, spec.add_datasets()));
    }
  } catch (const YAML::Exception& e) {
    // Defensive: the accessors above check types before converting.
    return absl::InvalidArgumentError(absl::StrCat("malformed study: ", e.what()));
  }
  ApplyStudyDefaults(spec);
  RETURN_IF_ERROR(ValidateStudySpec(spec));
  return spec;
}

absl::StatusOr<v1::StudySpec> LoadStudyFile(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("study file ", path, " does not exist"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::InternalError(absl::StrCat("cannot read study file ", path));
  }
  std::stringstream text;
  text << in.rdbuf();
  const fs::path parent = fs::path(path).parent_path();
  absl::StatusOr<v1::StudySpec> spec =
      ParseStudyYaml(text.str(), parent.empty() ? "." : parent.string());
  if (!spec.ok()) {
    return absl::Status(spec.status().code(),
                        absl::StrCat(path, ": ", spec.status().message()));
  }
  return spec;
}

}  // namespace sslbench::client
