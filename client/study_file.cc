#include "client/study_file.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dataset_digest.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/study_spec.h"
#include "worker/datasets/dataset_reader.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
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
    ASSIGN_OR_RETURN(Map map, Any(node, std::move(path), known));
    RETURN_IF_ERROR(map.Allow(known, ""));
    return map;
  }

  // A mapping whose keys are checked later with Allow(), once the mapping's
  // own fields (a protocol's kind) tell which keys belong. `known` only
  // words the error for a value that is not a mapping.
  static absl::StatusOr<Map> Any(const YAML::Node& node, std::string path,
                                 const std::vector<std::string>& known) {
    if (!node.IsMap()) {
      return Invalid(path.empty() ? "study" : path, node,
                     absl::StrCat("expected a mapping with keys ",
                                  absl::StrJoin(known, ", "), ", got ",
                                  Describe(node)));
    }
    Map map(node, std::move(path));
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (!it->first.IsScalar()) {
        return Invalid(map.path_.empty() ? "study" : map.path_, it->first,
                       "keys must be plain names");
      }
      const std::string key = it->first.Scalar();
      if (!map.values_.emplace(key, it->second).second) {
        return Invalid(map.Field(key), it->first, "given twice");
      }
      map.keys_.emplace_back(key, it->first);
    }
    return map;
  }

  // Rejects the first key (in the file's order) not in `known`;
  // `qualifier` words the error, e.g. "for a linear protocol".
  absl::Status Allow(const std::vector<std::string>& known,
                     const std::string& qualifier) const {
    for (const auto& [key, key_node] : keys_) {
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      return Invalid(Field(key), key_node,
                     absl::StrCat("unknown key", qualifier.empty() ? "" : " ", qualifier,
                                  " (known: ", absl::StrJoin(known, ", "), ")"));
    }
    return absl::OkStatus();
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

  absl::Status Double(const std::string& key, double* out, bool finite = false) const {
    const YAML::Node value = Get(key);
    if (!value.IsDefined()) return absl::OkStatus();
    return ParseDouble(Field(key), value, out, finite);
  }

  absl::Status Bool(const std::string& key, bool* out) const {
    const YAML::Node value = Get(key);
    if (!value.IsDefined()) return absl::OkStatus();
    if (!value.IsScalar()) {
      return Invalid(Field(key), value,
                     absl::StrCat("expected true or false, got ", Describe(value)));
    }
    const std::string v = absl::AsciiStrToLower(value.Scalar());
    if (v == "true" || v == "yes" || v == "on") {
      *out = true;
    } else if (v == "false" || v == "no" || v == "off") {
      *out = false;
    } else {
      return Invalid(Field(key), value,
                     absl::StrCat("\"", value.Scalar(), "\" is not true or false"));
    }
    return absl::OkStatus();
  }

  // A list of numbers; a single number reads as a list of one.
  absl::Status IntList(const std::string& key, std::vector<int64_t>* out,
                       int64_t min = kInt32Min, int64_t max = kInt32Max) const {
    return List(key, [&](const std::string& field, const YAML::Node& item) {
      int64_t v = 0;
      RETURN_IF_ERROR(ParseInt(field, item, min, max, &v));
      out->push_back(v);
      return absl::OkStatus();
    });
  }
  absl::Status DoubleList(const std::string& key, std::vector<double>* out,
                          bool finite = false) const {
    return List(key, [&](const std::string& field, const YAML::Node& item) {
      double v = 0;
      RETURN_IF_ERROR(ParseDouble(field, item, &v, finite));
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

  // Task kinds by name (extract, knn, linear, logreg, finetune); a single
  // name reads as a list of one.
  absl::Status KindList(const std::string& key,
                        google::protobuf::RepeatedField<int>* out) const {
    static const std::map<std::string, v1::TaskKind> kKinds = {
        {"extract", v1::TASK_KIND_EXTRACT}, {"knn", v1::TASK_KIND_KNN},
        {"linear", v1::TASK_KIND_LINEAR},   {"logreg", v1::TASK_KIND_LOGREG},
        {"finetune", v1::TASK_KIND_FINETUNE}};
    return List(key, [&](const std::string& field, const YAML::Node& item) {
      const auto it = item.IsScalar() ? kKinds.find(item.Scalar()) : kKinds.end();
      if (it == kKinds.end()) {
        return Invalid(field, item,
                       absl::StrCat(Describe(item),
                                    " is not a task kind (extract, knn, linear, logreg, finetune)"));
      }
      out->Add(it->second);
      return absl::OkStatus();
    }, "task kinds");
  }

  // `finite`: "nan" and "inf" are rejected too.
  static absl::Status ParseDouble(const std::string& field, const YAML::Node& value,
                                  double* out, bool finite = false) {
    if (!value.IsScalar()) {
      return Invalid(field, value,
                     absl::StrCat("expected a number, got ", Describe(value)));
    }
    double v = 0;
    if (!absl::SimpleAtod(value.Scalar(), &v)) {
      return Invalid(field, value,
                     absl::StrCat("\"", value.Scalar(), "\" is not a number"));
    }
    if (finite && !std::isfinite(v)) {
      return Invalid(field, value,
                     absl::StrCat("\"", value.Scalar(), "\" is not a finite number"));
    }
    *out = v;
    return absl::OkStatus();
  }

 private:
  Map(YAML::Node node, std::string path) : node_(std::move(node)), path_(std::move(path)) {}

  template <typename Fn>
  absl::Status List(const std::string& key, Fn&& each, const char* what = "numbers") const {
    const YAML::Node value = Get(key);
    if (!value.IsDefined()) return absl::OkStatus();
    if (value.IsScalar()) return each(Field(key), value);
    if (!value.IsSequence()) {
      return Invalid(Field(key), value,
                     absl::StrCat("expected a list of ", what, ", got ", Describe(value)));
    }
    for (size_t i = 0; i < value.size(); ++i) {
      RETURN_IF_ERROR(each(absl::StrCat(Field(key), "[", i, "]"), value[i]));
    }
    return absl::OkStatus();
  }

  YAML::Node node_;
  std::string path_;
  std::map<std::string, YAML::Node> values_;
  std::vector<std::pair<std::string, YAML::Node>> keys_;  // in the file's order
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

// Replaces each ${NAME} with the environment variable NAME (so a shared study
// file names its data roots once: root: ${SSLBENCH_DATA}/imagenet).
absl::StatusOr<std::string> ExpandVariables(const std::string& text) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const size_t open = text.find("${", i);
    if (open == std::string::npos) {
      out.append(text, i, std::string::npos);
      break;
    }
    const size_t close = text.find('}', open + 2);
    if (close == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("\"", text, "\": unclosed ${"));
    }
    const std::string name = text.substr(open + 2, close - open - 2);
    bool valid = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0]));
    for (char c : name) valid &= std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    if (!valid) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", text, "\": \"", name, "\" is not a variable name"));
    }
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", text, "\": the environment variable ", name, " is not set"));
    }
    out.append(text, i, open - i);
    out += value;
    i = close + 1;
  }
  return out;
}

// ExpandVariables on the string value of `key`, errors naming the field.
absl::Status ExpandField(const Map& map, const std::string& key, std::string* value) {
  absl::StatusOr<std::string> expanded = ExpandVariables(*value);
  if (!expanded.ok()) {
    return Invalid(map.Field(key), map.Get(key), std::string(expanded.status().message()));
  }
  *value = *std::move(expanded);
  return absl::OkStatus();
}

std::string Resolve(const std::string& path, const fs::path& base) {
  fs::path p(path);
  if (p.is_relative()) p = base / p;
  return p.lexically_normal().string();
}

// What the spec keeps of the location `value` of `m`'s field `key`, and the
// local path this process reads: a URI stays in the spec (each worker
// resolves it) and resolves here under options.locations; a path is made
// absolute against `base`.
absl::Status Locate(const Map& m, const std::string& key, const std::string& value,
                    const fs::path& base, const StudyFileOptions& options, std::string* located,
                    std::string* local) {
  if (LocationScheme(value).empty()) {
    *local = Resolve(value, base);
    *located = *local;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> resolved = ResolveLocation(value, options.locations);
  if (!resolved.ok()) {
    return Invalid(m.Field(key), m.Get(key), std::string(resolved.status().message()));
  }
  *located = value;
  *local = *resolved;
  return absl::OkStatus();
}

absl::Status ParseModel(const YAML::Node& node, const std::string& path,
                        const fs::path& base, const StudyFileOptions& options,
                        v1::ModelSpec* model) {
  ASSIGN_OR_RETURN(Map m, Map::Of(node, path,
                                  {"name", "path", "input_size", "resize_size", "channels",
                                   "mean", "std", "backbone", "method", "family"}));
  std::string name, file, backbone, method, family;
  RETURN_IF_ERROR(m.String("name", /*required=*/true, &name));
  RETURN_IF_ERROR(m.String("path", /*required=*/true, &file));
  RETURN_IF_ERROR(m.String("backbone", /*required=*/false, &backbone));
  RETURN_IF_ERROR(m.String("method", /*required=*/false, &method));
  RETURN_IF_ERROR(m.String("family", /*required=*/false, &family));
  model->set_backbone(backbone);
  model->set_method(method);
  model->set_family(family);
  RETURN_IF_ERROR(ExpandField(m, "path", &file));
  int64_t input_size = 0, resize_size = 0, channels = 0;
  RETURN_IF_ERROR(m.Int("input_size", kInt32Min, kInt32Max, &input_size));
  RETURN_IF_ERROR(m.Int("resize_size", kInt32Min, kInt32Max, &resize_size));
  RETURN_IF_ERROR(m.Int("channels", kInt32Min, kInt32Max, &channels));
  std::vector<double> mean, std;
  RETURN_IF_ERROR(m.DoubleList("mean", &mean));
  RETURN_IF_ERROR(m.DoubleList("std", &std));
  model->set_name(name);
  model->set_input_size(static_cast<int32_t>(input_size));
  model->set_resize_size(static_cast<int32_t>(resize_size));
  model->set_channels(static_cast<int32_t>(channels));
  for (double v : mean) model->add_mean(static_cast<float>(v));
  for (double v : std) model->add_std(static_cast<float>(v));

  const std::string field = m.Field("path");
  std::string located, absolute;
  RETURN_IF_ERROR(Locate(m, "path", file, base, options, &located, &absolute));
  model->set_path(located);
  std::error_code ec;
  if (!options.read_files) {
    // A dry run: no hashing; a placeholder hash keeps models apart.
    model->set_sha256(Sha256Hex(absl::StrCat("unread model file ", absolute)));
    if (!fs::is_regular_file(absolute, ec) && options.notes != nullptr) {
      options.notes->push_back(absl::StrCat(field, ": file ", absolute, " does not exist",
                                            Where(m.Get("path"))));
    }
    return absl::OkStatus();
  }
  if (!fs::exists(absolute, ec)) {
    return absl::NotFoundError(absl::StrCat(field, ": file ", absolute,
                                            " does not exist", Where(m.Get("path"))));
  }
  if (!fs::is_regular_file(absolute, ec)) {
    return Invalid(field, m.Get("path"),
                   absl::StrCat(absolute, " is not a regular file"));
  }
  absl::StatusOr<std::string> sha = Sha256File(absolute);
  if (!sha.ok()) {
    return absl::Status(sha.status().code(),
                        absl::StrCat(field, ": ", sha.status().message()));
  }
  model->set_sha256(*sha);
  return absl::OkStatus();
}

absl::Status ParseDataset(const YAML::Node& node, const std::string& path,
                          const fs::path& base, const StudyFileOptions& options,
                          std::map<std::string, std::string>& digests,
                          v1::DatasetSpec* dataset) {
  ASSIGN_OR_RETURN(Map d, Map::Of(node, path,
                                  {"name", "format", "root", "role", "train_limit",
                                   "test_limit", "on_bad_image", "train_images",
                                   "test_images"}));
  std::string name, format = datasets::kDefaultFormat, root, role, on_bad_image;
  RETURN_IF_ERROR(d.String("name", /*required=*/true, &name));
  RETURN_IF_ERROR(d.String("format", /*required=*/false, &format));
  RETURN_IF_ERROR(d.String("root", /*required=*/true, &root));
  RETURN_IF_ERROR(d.String("role", /*required=*/false, &role));
  RETURN_IF_ERROR(d.String("on_bad_image", /*required=*/false, &on_bad_image));
  int64_t train_limit = 0, test_limit = 0;
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  RETURN_IF_ERROR(d.Int("train_limit", 0, kMax, &train_limit));
  RETURN_IF_ERROR(d.Int("test_limit", 0, kMax, &test_limit));
  int64_t train_images = 0, test_images = 0;
  RETURN_IF_ERROR(d.Int("train_images", 0, kMax, &train_images));
  RETURN_IF_ERROR(d.Int("test_images", 0, kMax, &test_images));
  dataset->set_train_images(train_images);
  dataset->set_test_images(test_images);
  RETURN_IF_ERROR(ExpandField(d, "root", &root));
  dataset->set_name(name);
  dataset->set_format(format);
  dataset->set_on_bad_image(on_bad_image);
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
  if (!datasets::IsKnownFormat(format)) {
    return Invalid(d.Field("format"), d.Get("format"),
                   absl::StrCat("\"", format, "\" is not supported (supported: ",
                                absl::StrJoin(datasets::KnownFormats(), ", "), ")"));
  }
  if (absl::Status s = datasets::ParseBadImagePolicy(on_bad_image).status(); !s.ok()) {
    return Invalid(d.Field("on_bad_image"), d.Get("on_bad_image"), std::string(s.message()));
  }

  const std::string field = d.Field("root");
  std::string located, absolute;
  RETURN_IF_ERROR(Locate(d, "root", root, base, options, &located, &absolute));
  dataset->set_root(located);
  std::error_code ec;
  if (!options.read_files) {
    dataset->set_digest(absl::StrCat("unread:", absolute));
    if (!fs::is_directory(absolute, ec) && options.notes != nullptr) {
      options.notes->push_back(absl::StrCat(field, ": folder ", absolute, " does not exist",
                                            Where(d.Get("root"))));
    }
    return absl::OkStatus();
  }
  if (!fs::is_directory(absolute, ec)) {
    return absl::NotFoundError(absl::StrCat(field, ": folder ", absolute,
                                            " does not exist", Where(d.Get("root"))));
  }
  auto cached = digests.find(absolute);
  if (cached == digests.end()) {
    v1::DatasetSpec local = *dataset;
    local.set_root(absolute);
    absl::StatusOr<std::string> digest = DatasetDigest(local);
    if (!digest.ok()) {
      return absl::Status(digest.status().code(),
                          absl::StrCat(field, ": ", digest.status().message()));
    }
    cached = digests.emplace(absolute, *digest).first;
  }
  dataset->set_digest(cached->second);
  // Declared sizes catch a partial copy or a wrong root before any work.
  if (train_images > 0 || test_images > 0) {
    datasets::DatasetConfig config;
    config.format = format;
    config.root = absolute;
    ASSIGN_OR_RETURN(std::unique_ptr<datasets::DatasetReader> reader,
                     datasets::OpenDatasetReader(config));
    const std::pair<const char*, int64_t> splits[] = {{"train", train_images},
                                                      {"test", test_images}};
    for (const auto& [split, want] : splits) {
      if (want == 0) continue;
      absl::StatusOr<datasets::SplitListing> listing = reader->List(split, 0);
      if (!listing.ok()) {
        return absl::Status(listing.status().code(),
                            absl::StrCat(field, ": ", listing.status().message()));
      }
      const int64_t have = static_cast<int64_t>(listing->records.size());
      if (have != want) {
        const std::string key = absl::StrCat(split, "_images");
        return Invalid(d.Field(key), d.Get(key),
                       absl::StrCat("the ", split, " split of ", absolute, " holds ", have,
                                    " images, not ", want));
      }
    }
  }
  return absl::OkStatus();
}

// Reads the keys of `m` that name fields of `params` (KnnParams, LinearParams,
// LogRegParams, FineTuneParams, FewShot): the file's keys are the proto's
// field names, so a new parameter or kind needs no parser change (but see
// ZeroMeansDefault). Numbers must be finite.
absl::Status ReadFields(const Map& m, google::protobuf::Message* params) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Descriptor* descriptor = params->GetDescriptor();
  const google::protobuf::Reflection* reflection = params->GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* field = descriptor->field(i);
    const std::string& key = field->name();
    if (!m.Has(key)) continue;
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
      case FieldDescriptor::CPPTYPE_INT64: {
        const bool is32 = field->cpp_type() == FieldDescriptor::CPPTYPE_INT32;
        const int64_t min = is32 ? kInt32Min : std::numeric_limits<int64_t>::min();
        const int64_t max = is32 ? kInt32Max : std::numeric_limits<int64_t>::max();
        std::vector<int64_t> values;
        if (field->is_repeated()) {
          RETURN_IF_ERROR(m.IntList(key, &values, min, max));
        } else {
          values.emplace_back();
          RETURN_IF_ERROR(m.Int(key, min, max, &values.back()));
        }
        for (int64_t v : values) {
          if (field->is_repeated() && is32) {
            reflection->AddInt32(params, field, static_cast<int32_t>(v));
          } else if (field->is_repeated()) {
            reflection->AddInt64(params, field, v);
          } else if (is32) {
            reflection->SetInt32(params, field, static_cast<int32_t>(v));
          } else {
            reflection->SetInt64(params, field, v);
          }
        }
        break;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        if (field->is_repeated()) {
          std::vector<double> values;
          RETURN_IF_ERROR(m.DoubleList(key, &values, /*finite=*/true));
          for (double v : values) reflection->AddDouble(params, field, v);
        } else {
          double v = 0;
          RETURN_IF_ERROR(m.Double(key, &v, /*finite=*/true));
          reflection->SetDouble(params, field, v);
        }
        break;
      }
      case FieldDescriptor::CPPTYPE_BOOL: {
        bool v = false;
        RETURN_IF_ERROR(m.Bool(key, &v));
        reflection->SetBool(params, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_STRING: {
        if (field->is_repeated()) {
          return absl::InternalError(absl::StrCat(
              m.Field(key), ": lists of strings are not readable from a study file"));
        }
        std::string v;
        RETURN_IF_ERROR(m.String(key, /*required=*/false, &v));
        reflection->SetString(params, field, v);
        break;
      }
      default:
        return absl::InternalError(absl::StrCat(m.Field(key), ": field type ",
                                                field->cpp_type_name(),
                                                " is not readable from a study file"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> FieldNames(const google::protobuf::Descriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->field_count(); ++i) {
    names.push_back(descriptor->field(i)->name());
  }
  return names;
}

// Parameters that the spec reads as "use the default" when zero (or, for a
// list, empty): given explicitly, the value would silently turn into the
// default, so it is refused here, with ValidateStudySpec's wording where
// there is one.
const std::map<std::string, std::string>& ZeroMeansDefault() {
  static const auto* rules = new std::map<std::string, std::string>{
      {"knn.ks", "at least one k is required"},
      {"knn.temperature", "0 must be a positive number"},
      {"knn.euclidean_k", "0 must be -1 (off) or in [1, 10000]"},
      {"knn.test_chunk_rows", "must be >= 1"},
      {"knn.train_chunk_rows", "must be >= 1"},
      {"linear.learning_rates", "at least one learning rate is required"},
      {"linear.epochs", "must be in [1, 10000]"},
      {"linear.batch_size", "must be in [1, 1048576]"},
      {"linear.val_fraction", "must be in (0, 1)"},
      {"linear.init_std", "must be positive"},
      {"logreg.num_cs", "must be in [1, 1000]"},
      {"logreg.c_min", "need 0 < c_min <= c_max"},
      {"logreg.c_max", "need 0 < c_min <= c_max"},
      {"logreg.val_fraction", "must be in (0, 1)"},
      {"logreg.max_iterations", "must be >= 1"},
      {"logreg.tolerance", "must be positive"},
      {"finetune.learning_rate", "must be a positive number"},
      {"finetune.epochs", "must be in [1, 10000]"},
      {"finetune.batch_size", "must be in [1, 65536]"},
      {"finetune.min_scale", "must be in (0, 1]"},
      {"few_shot.seeds", "at least one seed is required"},
  };
  return *rules;
}

absl::Status RefuseZeroDefaults(const Map& m, const std::string& scope,
                                const google::protobuf::Message& params) {
  const google::protobuf::Descriptor* descriptor = params.GetDescriptor();
  const google::protobuf::Reflection* reflection = params.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = descriptor->field(i);
    auto rule = ZeroMeansDefault().find(absl::StrCat(scope, ".", field->name()));
    if (rule == ZeroMeansDefault().end() || !m.Has(field->name())) continue;
    bool zero = false;
    if (field->is_repeated()) {
      zero = reflection->FieldSize(params, field) == 0;
    } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_DOUBLE) {
      zero = reflection->GetDouble(params, field) == 0;  // -0.0 too
    } else {
      zero = !reflection->HasField(params, field);
    }
    if (zero) return Invalid(m.Field(field->name()), m.Get(field->name()), rule->second);
  }
  return absl::OkStatus();
}

// The oneof `params` of ProtocolSpec: its fields are the protocol kinds.
const google::protobuf::OneofDescriptor& ParamsOneof() {
  return *v1::ProtocolSpec::descriptor()->FindOneofByName("params");
}

absl::Status ParseProtocol(const YAML::Node& node, const std::string& path,
                           v1::ProtocolSpec* protocol) {
  const std::vector<std::string> common = {"name", "kind", "few_shot"};
  std::vector<std::string> kinds;
  for (int i = 0; i < ParamsOneof().field_count(); ++i) {
    kinds.push_back(ParamsOneof().field(i)->name());
  }
  const std::string known_kinds = absl::StrJoin(kinds, ", ");

  ASSIGN_OR_RETURN(Map p, Map::Any(node, path, common));
  std::string name, kind;
  RETURN_IF_ERROR(p.String("name", /*required=*/true, &name));
  RETURN_IF_ERROR(p.String("kind", /*required=*/false, &kind));
  protocol->set_name(name);
  if (kind.empty()) {
    if (std::find(kinds.begin(), kinds.end(), name) == kinds.end()) {
      return Invalid(p.Field("kind"), p.node(),
                     absl::StrCat("is required for protocol \"", name,
                                  "\" (known kinds: ", known_kinds, ")"));
    }
    kind = name;
  }
  const google::protobuf::FieldDescriptor* kind_field = nullptr;
  for (int i = 0; i < ParamsOneof().field_count(); ++i) {
    if (ParamsOneof().field(i)->name() == kind) kind_field = ParamsOneof().field(i);
  }
  if (kind_field == nullptr) {
    return Invalid(p.Field("kind"), p.Get("kind"),
                   absl::StrCat("\"", kind, "\" is not supported (supported: ",
                                known_kinds, ")"));
  }

  google::protobuf::Message* params =
      protocol->GetReflection()->MutableMessage(protocol, kind_field);
  std::vector<std::string> known = common;
  for (const std::string& key : FieldNames(params->GetDescriptor())) known.push_back(key);
  RETURN_IF_ERROR(p.Allow(known, absl::StrCat("for a ", kind, " protocol")));
  RETURN_IF_ERROR(ReadFields(p, params));
  RETURN_IF_ERROR(RefuseZeroDefaults(p, kind, *params));

  if (p.Has("few_shot")) {
    v1::FewShot* few_shot = protocol->mutable_few_shot();
    ASSIGN_OR_RETURN(Map f, Map::Of(p.Get("few_shot"), p.Field("few_shot"),
                                    FieldNames(v1::FewShot::descriptor())));
    RETURN_IF_ERROR(ReadFields(f, few_shot));
    RETURN_IF_ERROR(RefuseZeroDefaults(f, "few_shot", *few_shot));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::StudySpec> ParseStudyYaml(const std::string& yaml_text,
                                             const std::string& base_dir,
                                             const StudyFileOptions& options) {
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
                             {"name", "max_attempts", "extract_batch_size", "feature_dtype",
                              "gpu_tasks", "models", "datasets", "protocols"}));
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
    std::string dtype;
    RETURN_IF_ERROR(study.String("feature_dtype", /*required=*/false, &dtype));
    if (!dtype.empty() && dtype != "float32" && dtype != "float16") {
      return Invalid("feature_dtype", study.Get("feature_dtype"),
                     absl::StrCat("\"", dtype, "\" is not float32 or float16"));
    }
    spec.set_feature_dtype(dtype);
    RETURN_IF_ERROR(study.KindList("gpu_tasks", spec.mutable_gpu_task_kinds()));
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
      RETURN_IF_ERROR(ParseModel(models[i], absl::StrCat("models[", i, "]"), base, options,
                                 spec.add_models()));
    }
    std::map<std::string, std::string> digests;
    for (size_t i = 0; i < datasets.size(); ++i) {
      RETURN_IF_ERROR(ParseDataset(datasets[i], absl::StrCat("datasets[", i, "]"),
                                   base, options, digests, spec.add_datasets()));
    }
  } catch (const YAML::Exception& e) {
    // Defensive: the accessors above check types before converting.
    return absl::InvalidArgumentError(absl::StrCat("malformed study: ", e.what()));
  }
  ApplyStudyDefaults(spec);
  RETURN_IF_ERROR(ValidateStudySpec(spec));
  return spec;
}

absl::StatusOr<v1::StudySpec> LoadStudyFile(const std::string& path,
                                            const StudyFileOptions& options) {
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
      ParseStudyYaml(text.str(), parent.empty() ? "." : parent.string(), options);
  if (!spec.ok()) {
    return absl::Status(spec.status().code(),
                        absl::StrCat(path, ": ", spec.status().message()));
  }
  return spec;
}

}  // namespace sslbench::client
