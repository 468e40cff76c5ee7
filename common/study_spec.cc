#include "common/study_spec.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/location.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench {
namespace {

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
          c == '.')) {
      return false;
    }
  }
  return true;
}

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// An absolute, normalised path outside the kernel's pseudo file systems:
// workers must never be sent to read /dev/zero or /proc. Workers confine
// paths further to their configured roots (see common/path_guard.h).
absl::Status CheckPath(const std::string& field, const std::string& location) {
  // A URI (file:///models/x.pt): its scheme must have a resolver, and its
  // path part obeys the rules of a path.
  std::string path = location;
  if (const std::string scheme = LocationScheme(location); !scheme.empty()) {
    if (absl::Status s = CheckLocation(location); !s.ok()) {
      return Invalid(field, std::string(s.message()));
    }
    path = location.substr(scheme.size() + 3);
    if (scheme != "file") return absl::OkStatus();
  }
  if (path.empty() || path[0] != '/') {
    return Invalid(field, absl::StrCat("\"", path, "\" must be an absolute path"));
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == ".." || part == ".") {
      return Invalid(field, absl::StrCat("\"", path, "\" must not contain . or .. components"));
    }
  }
  for (const char* pseudo : {"/dev", "/proc", "/sys"}) {
    const std::string p(pseudo);
    if (path == p || path.rfind(p + "/", 0) == 0) {
      return Invalid(field, absl::StrCat("\"", path, "\" is under ", p, ", not a file of data"));
    }
  }
  return absl::OkStatus();
}

// Walks every field of `m` (recursively): strings within
// kMaxSpecStringBytes, lists within kMaxSpecListEntries. `path` names the
// field in the error, as `models[3].path`.
absl::Status CheckSizes(const google::protobuf::Message& m, const std::string& path) {
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    const std::string name = path.empty() ? f->name() : absl::StrCat(path, ".", f->name());
    const bool is_string = f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_STRING;
    const bool is_message = f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE;
    if (!f->is_repeated()) {
      if (is_string && r->GetStringReference(m, f, nullptr).size() > kMaxSpecStringBytes) {
        return Invalid(name, absl::StrCat(r->GetStringReference(m, f, nullptr).size(),
                                          " bytes; at most ", kMaxSpecStringBytes));
      }
      if (is_message) RETURN_IF_ERROR(CheckSizes(r->GetMessage(m, f), name));
      continue;
    }
    const int n = r->FieldSize(m, f);
    if (n > kMaxSpecListEntries) {
      return Invalid(name, absl::StrCat(n, " entries; at most ", kMaxSpecListEntries));
    }
    for (int i = 0; i < n; ++i) {
      const std::string item = absl::StrCat(name, "[", i, "]");
      if (is_string && r->GetRepeatedStringReference(m, f, i, nullptr).size() >
                           kMaxSpecStringBytes) {
        return Invalid(item, absl::StrCat("longer than ", kMaxSpecStringBytes, " bytes"));
      }
      if (is_message) RETURN_IF_ERROR(CheckSizes(r->GetRepeatedMessage(m, f, i), item));
    }
  }
  return absl::OkStatus();
}

}  // namespace

void ApplyStudyDefaults(v1::StudySpec& spec) {
  if (spec.max_attempts() == 0) spec.set_max_attempts(3);
  if (spec.extract_batch_size() == 0) spec.set_extract_batch_size(256);
  if (spec.feature_dtype().empty()) spec.set_feature_dtype("float32");
  for (auto& model : *spec.mutable_models()) {
    if (model.channels() == 0) model.set_channels(1);
    if (model.mean().empty()) {
      for (int c = 0; c < model.channels(); ++c) model.add_mean(0.0f);
    }
    if (model.std().empty()) {
      for (int c = 0; c < model.channels(); ++c) model.add_std(1.0f);
    }
  }
  for (auto& dataset : *spec.mutable_datasets()) {
    if (dataset.format().empty()) dataset.set_format(datasets::kDefaultFormat);
    if (dataset.role() == v1::DATASET_ROLE_UNSPECIFIED) {
      dataset.set_role(v1::DATASET_ROLE_IN_DOMAIN);
    }
  }
  for (auto& protocol : *spec.mutable_protocols()) {
    if (protocol.params_case() == v1::ProtocolSpec::PARAMS_NOT_SET) {
      if (protocol.name() == "knn") protocol.mutable_knn();
      if (protocol.name() == "linear") protocol.mutable_linear();
      if (protocol.name() == "logreg") protocol.mutable_logreg();
      if (protocol.name() == "finetune") protocol.mutable_finetune();
    }
    if (protocol.has_finetune()) {
      auto* ft = protocol.mutable_finetune();
      if (ft->optimizer().empty()) ft->set_optimizer("sgd");
      if (ft->learning_rate() == 0) ft->set_learning_rate(0.01);
      if (!ft->has_momentum() && ft->optimizer() == "sgd") ft->set_momentum(0.9);
      if (ft->epochs() == 0) ft->set_epochs(10);
      if (ft->batch_size() == 0) ft->set_batch_size(256);
      if (!ft->has_warmup_epochs()) ft->set_warmup_epochs(1);
      if (!ft->has_label_smoothing()) ft->set_label_smoothing(0.1);
      if (ft->min_scale() == 0) ft->set_min_scale(0.35);
    }
    if (protocol.has_linear()) {
      auto* linear = protocol.mutable_linear();
      if (linear->learning_rates().empty()) {
        for (double lr : {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2}) {
          linear->add_learning_rates(lr);
        }
      }
      if (linear->epochs() == 0) linear->set_epochs(100);
      if (linear->batch_size() == 0) linear->set_batch_size(1024);
      if (!linear->has_warmup_epochs()) linear->set_warmup_epochs(5);
      if (!linear->has_momentum()) linear->set_momentum(0.9);
      if (linear->val_fraction() == 0) linear->set_val_fraction(0.1);
      if (linear->init_std() == 0) linear->set_init_std(0.01);
    }
    if (protocol.has_logreg()) {
      auto* logreg = protocol.mutable_logreg();
      if (logreg->num_cs() == 0) logreg->set_num_cs(45);
      if (logreg->c_min() == 0) logreg->set_c_min(1e-6);
      if (logreg->c_max() == 0) logreg->set_c_max(1e5);
      if (logreg->val_fraction() == 0) logreg->set_val_fraction(0.1);
      if (logreg->max_iterations() == 0) logreg->set_max_iterations(1000);
      if (logreg->tolerance() == 0) logreg->set_tolerance(1e-6);
    }
    if (protocol.has_few_shot() && protocol.few_shot().seeds().empty()) {
      for (int64_t seed : {0, 1, 2}) protocol.mutable_few_shot()->add_seeds(seed);
    }
    if (protocol.has_knn()) {
      auto* knn = protocol.mutable_knn();
      if (knn->ks().empty()) {
        for (int k : {10, 20, 100, 200}) knn->add_ks(k);
      }
      if (knn->temperature() == 0) knn->set_temperature(0.07);
      if (knn->euclidean_k() == 0) knn->set_euclidean_k(20);
      if (knn->test_chunk_rows() == 0) knn->set_test_chunk_rows(1024);
      if (knn->train_chunk_rows() == 0) knn->set_train_chunk_rows(16384);
    }
  }
}

absl::Status ValidateStudySpec(const v1::StudySpec& spec) {
  if (const size_t bytes = spec.ByteSizeLong(); bytes > kMaxSpecBytes) {
    return Invalid("spec", absl::StrCat(bytes, " bytes; a study spec may have at most ",
                                        kMaxSpecBytes));
  }
  RETURN_IF_ERROR(CheckSizes(spec, ""));
  if (!ValidName(spec.name())) {
    return Invalid("name", absl::StrCat("\"", spec.name(),
                                        "\" must be 1-128 of [A-Za-z0-9_.-]"));
  }
  if (spec.models().empty()) return Invalid("models", "at least one model is required");
  if (spec.datasets().empty()) return Invalid("datasets", "at least one dataset is required");
  if (spec.protocols().empty()) return Invalid("protocols", "at least one protocol is required");
  if (spec.max_attempts() < 1 || spec.max_attempts() > 100) {
    return Invalid("max_attempts", "must be in [1, 100]");
  }
  if (spec.extract_batch_size() < 1 || spec.extract_batch_size() > 65536) {
    return Invalid("extract_batch_size", "must be in [1, 65536]");
  }
  if (spec.feature_dtype() != "float32" && spec.feature_dtype() != "float16") {
    return Invalid("feature_dtype",
                   absl::StrCat("\"", spec.feature_dtype(), "\" is not float32 or float16"));
  }
  for (int i = 0; i < spec.gpu_task_kinds_size(); ++i) {
    const v1::TaskKind kind = spec.gpu_task_kinds(i);
    if (kind == v1::TASK_KIND_UNSPECIFIED || !v1::TaskKind_IsValid(kind)) {
      return Invalid(absl::StrCat("gpu_task_kinds[", i, "]"),
                     absl::StrCat(static_cast<int>(kind), " is not a task kind"));
    }
  }
  std::set<std::string> names;
  for (int i = 0; i < spec.models_size(); ++i) {
    const auto& m = spec.models(i);
    const std::string f = absl::StrCat("models[", i, "]");
    if (!ValidName(m.name())) {
      return Invalid(f + ".name", absl::StrCat("\"", m.name(), "\" must be 1-128 of [A-Za-z0-9_.-]"));
    }
    if (!names.insert(m.name()).second) {
      return Invalid(f + ".name", absl::StrCat("duplicate model \"", m.name(), "\""));
    }
    RETURN_IF_ERROR(CheckPath(f + ".path", m.path()));
    if (m.channels() != 1 && m.channels() != 3) {
      return Invalid(f + ".channels", absl::StrCat(m.channels(), " is not 1 or 3"));
    }
    if (m.input_size() < 0 || m.input_size() > 4096) {
      return Invalid(f + ".input_size", absl::StrCat(m.input_size(), " is not in [0, 4096]"));
    }
    if (m.resize_size() < 0 || m.resize_size() > 8192) {
      return Invalid(f + ".resize_size", absl::StrCat(m.resize_size(), " is not in [0, 8192]"));
    }
    if (m.resize_size() > 0 && m.input_size() == 0) {
      return Invalid(f + ".resize_size", "needs input_size (the centre crop) as well");
    }
    if (m.mean_size() != 1 && m.mean_size() != m.channels()) {
      return Invalid(f + ".mean", absl::StrCat(m.mean_size(), " values for ", m.channels(), " channels"));
    }
    if (m.std_size() != 1 && m.std_size() != m.channels()) {
      return Invalid(f + ".std", absl::StrCat(m.std_size(), " values for ", m.channels(), " channels"));
    }
    for (float s : m.std()) {
      if (!(s > 0) || !std::isfinite(s)) {
        return Invalid(f + ".std", absl::StrCat(s, " must be a positive number"));
      }
    }
    for (float v : m.mean()) {
      if (!std::isfinite(v)) return Invalid(f + ".mean", "must be finite");
    }
    if (m.sha256().size() != 64) {
      return Invalid(f + ".sha256", "missing or malformed content hash of the model file");
    }
  }
  names.clear();
  for (int i = 0; i < spec.datasets_size(); ++i) {
    const auto& d = spec.datasets(i);
    const std::string f = absl::StrCat("datasets[", i, "]");
    if (!ValidName(d.name())) {
      return Invalid(f + ".name", absl::StrCat("\"", d.name(), "\" must be 1-128 of [A-Za-z0-9_.-]"));
    }
    if (!names.insert(d.name()).second) {
      return Invalid(f + ".name", absl::StrCat("duplicate dataset \"", d.name(), "\""));
    }
    if (!datasets::IsKnownFormat(d.format())) {
      return Invalid(f + ".format", absl::StrCat("\"", d.format(), "\" is not supported (supported: ",
                                                 absl::StrJoin(datasets::KnownFormats(), ", "), ")"));
    }
    if (absl::Status s = datasets::ParseBadImagePolicy(d.on_bad_image()).status(); !s.ok()) {
      return Invalid(f + ".on_bad_image", std::string(s.message()));
    }
    RETURN_IF_ERROR(CheckPath(f + ".root", d.root()));
    if (d.train_limit() < 0) return Invalid(f + ".train_limit", "must be >= 0");
    if (d.test_limit() < 0) return Invalid(f + ".test_limit", "must be >= 0");
    if (d.digest().empty()) return Invalid(f + ".digest", "missing content digest of the dataset files");
  }
  names.clear();
  for (int i = 0; i < spec.protocols_size(); ++i) {
    const auto& p = spec.protocols(i);
    const std::string f = absl::StrCat("protocols[", i, "]");
    if (!ValidName(p.name())) {
      return Invalid(f + ".name", absl::StrCat("\"", p.name(), "\" must be 1-128 of [A-Za-z0-9_.-]"));
    }
    if (!names.insert(p.name()).second) {
      return Invalid(f + ".name", absl::StrCat("duplicate protocol \"", p.name(), "\""));
    }
    if (p.params_case() == v1::ProtocolSpec::PARAMS_NOT_SET) {
      return Invalid(f, absl::StrCat("protocol \"", p.name(),
                                     "\" has no parameters of a known kind (known: knn, linear, logreg, finetune)"));
    }
    if (p.has_few_shot()) {
      const auto& fs = p.few_shot();
      if (fs.shots().empty() && fs.fractions().empty()) {
        return Invalid(f + ".few_shot", "give shots, fractions or both");
      }
      for (int shots : fs.shots()) {
        if (shots < 1 || shots > 100000) {
          return Invalid(f + ".few_shot.shots", absl::StrCat(shots, " is not in [1, 100000]"));
        }
      }
      for (double fraction : fs.fractions()) {
        if (!(fraction > 0 && fraction <= 1)) {
          return Invalid(f + ".few_shot.fractions", absl::StrCat(fraction, " is not in (0, 1]"));
        }
      }
      if (fs.seeds_size() > 100) return Invalid(f + ".few_shot.seeds", "at most 100 seeds");
    }
    if (p.has_linear()) {
      const auto& l = p.linear();
      if (l.learning_rates_size() > 64) {
        return Invalid(f + ".learning_rates", "at most 64 learning rates");
      }
      for (double lr : l.learning_rates()) {
        if (!(lr > 0) || !std::isfinite(lr)) {
          return Invalid(f + ".learning_rates", absl::StrCat(lr, " must be a positive number"));
        }
      }
      if (l.epochs() < 1 || l.epochs() > 10000) return Invalid(f + ".epochs", "must be in [1, 10000]");
      if (l.batch_size() < 1 || l.batch_size() > 1 << 20) {
        return Invalid(f + ".batch_size", "must be in [1, 1048576]");
      }
      if (l.warmup_epochs() < 0) return Invalid(f + ".warmup_epochs", "must be >= 0");
      if (l.momentum() < 0 || l.momentum() >= 1) return Invalid(f + ".momentum", "must be in [0, 1)");
      if (l.weight_decay() < 0) return Invalid(f + ".weight_decay", "must be >= 0");
      if (l.grad_clip() < 0) return Invalid(f + ".grad_clip", "must be >= 0");
      if (!(l.val_fraction() > 0 && l.val_fraction() < 1)) {
        return Invalid(f + ".val_fraction", "must be in (0, 1)");
      }
      if (!(l.init_std() > 0)) return Invalid(f + ".init_std", "must be positive");
      continue;
    }
    if (p.has_finetune()) {
      const auto& ft = p.finetune();
      if (ft.optimizer() != "sgd" && ft.optimizer() != "adamw") {
        return Invalid(f + ".optimizer", absl::StrCat("\"", ft.optimizer(), "\" is not sgd or adamw"));
      }
      if (!(ft.learning_rate() > 0) || !std::isfinite(ft.learning_rate())) {
        return Invalid(f + ".learning_rate", "must be a positive number");
      }
      if (ft.weight_decay() < 0) return Invalid(f + ".weight_decay", "must be >= 0");
      if (ft.momentum() < 0 || ft.momentum() >= 1) return Invalid(f + ".momentum", "must be in [0, 1)");
      if (ft.epochs() < 1 || ft.epochs() > 10000) return Invalid(f + ".epochs", "must be in [1, 10000]");
      if (ft.batch_size() < 1 || ft.batch_size() > 65536) {
        return Invalid(f + ".batch_size", "must be in [1, 65536]");
      }
      if (ft.warmup_epochs() < 0) return Invalid(f + ".warmup_epochs", "must be >= 0");
      if (ft.label_smoothing() < 0 || ft.label_smoothing() >= 1) {
        return Invalid(f + ".label_smoothing", "must be in [0, 1)");
      }
      if (!(ft.min_scale() > 0 && ft.min_scale() <= 1)) {
        return Invalid(f + ".min_scale", "must be in (0, 1]");
      }
      if (ft.layer_decay() < 0 || ft.layer_decay() > 1) {
        return Invalid(f + ".layer_decay", "must be in (0, 1], or 0 for off");
      }
      if (ft.checkpoint_every_steps() < 0) {
        return Invalid(f + ".checkpoint_every_steps", "must be >= 0");
      }
      continue;
    }
    if (p.has_logreg()) {
      const auto& l = p.logreg();
      for (double c : l.cs()) {
        if (!(c > 0) || !std::isfinite(c)) {
          return Invalid(f + ".cs", absl::StrCat(c, " must be a positive number"));
        }
      }
      if (l.num_cs() < 1 || l.num_cs() > 1000) return Invalid(f + ".num_cs", "must be in [1, 1000]");
      if (!(l.c_min() > 0) || !(l.c_max() >= l.c_min())) {
        return Invalid(f + ".c_min", "need 0 < c_min <= c_max");
      }
      if (!(l.val_fraction() > 0 && l.val_fraction() < 1)) {
        return Invalid(f + ".val_fraction", "must be in (0, 1)");
      }
      if (l.max_iterations() < 1) return Invalid(f + ".max_iterations", "must be >= 1");
      if (!(l.tolerance() > 0)) return Invalid(f + ".tolerance", "must be positive");
      continue;
    }
    const auto& knn = p.knn();
    if (knn.ks().empty()) return Invalid(f + ".ks", "at least one k is required");
    for (int k : knn.ks()) {
      if (k < 1 || k > 10000) return Invalid(f + ".ks", absl::StrCat(k, " is not in [1, 10000]"));
    }
    if (!(knn.temperature() > 0) || !std::isfinite(knn.temperature())) {
      return Invalid(f + ".temperature", absl::StrCat(knn.temperature(), " must be a positive number"));
    }
    if (knn.euclidean_k() < -1 || knn.euclidean_k() == 0 || knn.euclidean_k() > 10000) {
      return Invalid(f + ".euclidean_k", absl::StrCat(knn.euclidean_k(), " must be -1 (off) or in [1, 10000]"));
    }
    for (double t : knn.temperatures()) {
      if (!(t > 0) || !std::isfinite(t)) {
        return Invalid(f + ".temperatures", absl::StrCat(t, " must be a positive number"));
      }
    }
    if (knn.test_chunk_rows() < 1) return Invalid(f + ".test_chunk_rows", "must be >= 1");
    if (knn.train_chunk_rows() < 1) return Invalid(f + ".train_chunk_rows", "must be >= 1");
  }
  return absl::OkStatus();
}

std::string FeatureCacheKey(const v1::ModelSpec& model,
                            const v1::DatasetSpec& dataset,
                            const std::string& split, const std::string& dtype) {
  const std::string limit = absl::StrCat(
      split == "train" ? dataset.train_limit() : dataset.test_limit());
  const std::string material = absl::StrCat(
      "model=", model.sha256(), "\ninput_size=", model.input_size(),
      "\nresize=", model.resize_size() > 0 ? model.resize_size() : model.input_size(),
      "\nchannels=", model.channels(), "\nmean=", absl::StrJoin(model.mean(), ","),
      "\nstd=", absl::StrJoin(model.std(), ","), "\ndataset=", dataset.format(),
      ":", dataset.digest(), "\nsplit=", split, "\nlimit=", limit,
      dataset.on_bad_image() == "skip" ? "\non_bad_image=skip" : "",
      "\nlayer=output\npooling=flatten\ndtype=", dtype.empty() ? "float32" : dtype,
      "\nextractor=",
      kExtractorVersion, "\n");
  return Sha256Hex(material);
}

}  // namespace sslbench
