#include "common/study_spec.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/sha256.h"

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

}  // namespace

void ApplyStudyDefaults(v1::StudySpec& spec) {
  if (spec.max_attempts() == 0) spec.set_max_attempts(3);
  if (spec.extract_batch_size() == 0) spec.set_extract_batch_size(256);
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
    if (dataset.format().empty()) dataset.set_format("idx");
    if (dataset.role() == v1::DATASET_ROLE_UNSPECIFIED) {
      dataset.set_role(v1::DATASET_ROLE_IN_DOMAIN);
    }
  }
  for (auto& protocol : *spec.mutable_protocols()) {
    if (protocol.params_case() == v1::ProtocolSpec::PARAMS_NOT_SET &&
        protocol.name() == "knn") {
      protocol.mutable_knn();
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
    if (m.path().empty() || m.path()[0] != '/') {
      return Invalid(f + ".path", absl::StrCat("\"", m.path(), "\" must be an absolute path"));
    }
    if (m.channels() != 1 && m.channels() != 3) {
      return Invalid(f + ".channels", absl::StrCat(m.channels(), " is not 1 or 3"));
    }
    if (m.input_size() < 0 || m.input_size() > 4096) {
      return Invalid(f + ".input_size", absl::StrCat(m.input_size(), " is not in [0, 4096]"));
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
    if (d.format() != "idx") {
      return Invalid(f + ".format", absl::StrCat("\"", d.format(), "\" is not supported (supported: idx)"));
    }
    if (d.root().empty() || d.root()[0] != '/') {
      return Invalid(f + ".root", absl::StrCat("\"", d.root(), "\" must be an absolute path"));
    }
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
    if (!p.has_knn()) {
      return Invalid(f, absl::StrCat("protocol \"", p.name(), "\" has no parameters of a known kind (known: knn)"));
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
    if (knn.test_chunk_rows() < 1) return Invalid(f + ".test_chunk_rows", "must be >= 1");
    if (knn.train_chunk_rows() < 1) return Invalid(f + ".train_chunk_rows", "must be >= 1");
  }
  return absl::OkStatus();
}

std::string FeatureCacheKey(const v1::ModelSpec& model,
                            const v1::DatasetSpec& dataset,
                            const std::string& split) {
  const std::string limit = absl::StrCat(
      split == "train" ? dataset.train_limit() : dataset.test_limit());
  const std::string material = absl::StrCat(
      "model=", model.sha256(), "\ninput_size=", model.input_size(),
      "\nchannels=", model.channels(), "\nmean=", absl::StrJoin(model.mean(), ","),
      "\nstd=", absl::StrJoin(model.std(), ","), "\ndataset=", dataset.format(),
      ":", dataset.digest(), "\nsplit=", split, "\nlimit=", limit,
      "\nlayer=output\npooling=flatten\ndtype=float32\nextractor=",
      kExtractorVersion, "\n");
  return Sha256Hex(material);
}

}  // namespace sslbench
