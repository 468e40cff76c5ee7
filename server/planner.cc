#include "server/planner.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/study_spec.h"

namespace sslbench::server {
namespace {

v1::TaskKind ProbeKind(const v1::ProtocolSpec& protocol) {
  switch (protocol.params_case()) {
    case v1::ProtocolSpec::kLinear: return v1::TASK_KIND_LINEAR;
    case v1::ProtocolSpec::kLogreg: return v1::TASK_KIND_LOGREG;
    case v1::ProtocolSpec::kFinetune: return v1::TASK_KIND_FINETUNE;
    default: return v1::TASK_KIND_KNN;
  }
}

// One probe task per few-shot setting (each runs all seeds), or one task on
// the full train split.
std::vector<v1::Subset> Subsets(const v1::ProtocolSpec& protocol) {
  if (!protocol.has_few_shot()) return {v1::Subset()};
  std::vector<v1::Subset> subsets;
  for (int shots : protocol.few_shot().shots()) {
    v1::Subset subset;
    subset.set_shots(shots);
    *subset.mutable_seeds() = protocol.few_shot().seeds();
    subsets.push_back(std::move(subset));
  }
  for (double fraction : protocol.few_shot().fractions()) {
    v1::Subset subset;
    subset.set_fraction(fraction);
    *subset.mutable_seeds() = protocol.few_shot().seeds();
    subsets.push_back(std::move(subset));
  }
  return subsets;
}

}  // namespace

absl::StatusOr<StudyPlan> PlanStudy(v1::StudySpec spec, std::string request_id,
                                    const PlanLimits& limits) {
  ApplyStudyDefaults(spec);
  RETURN_IF_ERROR(ValidateStudySpec(spec));
  if (request_id.size() > 256) {
    return absl::InvalidArgumentError("request_id: longer than 256 characters");
  }
  StudyPlan plan;
  plan.request_id = std::move(request_id);
  std::set<std::string> planned_keys;
  // Fine-tuning reads images; every other protocol reads cached features.
  bool needs_features = false;
  for (const auto& protocol : spec.protocols()) needs_features |= !protocol.has_finetune();
  // Counted before anything is built: the bounds are what keep a small
  // request from filling the database.
  int64_t per_pair = needs_features ? 2 : 0;
  for (const auto& protocol : spec.protocols()) {
    per_pair += static_cast<int64_t>(Subsets(protocol).size());
  }
  const int64_t tasks = per_pair * spec.models_size() * spec.datasets_size();
  if (tasks > limits.max_tasks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec: ", tasks, " tasks (", spec.models_size(), " models x ", spec.datasets_size(),
        " datasets x ", per_pair, " tasks each); a study may have at most ", limits.max_tasks,
        " (coordinator flag --max_tasks_per_study); split it into several studies"));
  }
  int64_t task_bytes = 0;
  auto count_bytes = [&](const v1::TaskSpec& task) -> absl::Status {
    task_bytes += static_cast<int64_t>(task.ByteSizeLong());
    if (task_bytes <= limits.max_task_bytes) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "spec: its tasks would store more than ", limits.max_task_bytes >> 20,
        " MiB of task specs; shorten paths and lists, or split the study"));
  };
  for (const auto& model : spec.models()) {
    for (const auto& dataset : spec.datasets()) {
      std::string keys[2];
      const char* splits[2] = {"train", "test"};
      for (int s = 0; s < 2 && needs_features; ++s) {
        keys[s] = FeatureCacheKey(model, dataset, splits[s], spec.feature_dtype());
        // Two models with identical bytes and preprocessing share features.
        if (!planned_keys.insert(keys[s]).second) continue;
        PlannedExtract extract;
        extract.cache_key = keys[s];
        auto& task = extract.spec;
        task.set_kind(v1::TASK_KIND_EXTRACT);
        *task.mutable_model() = model;
        *task.mutable_dataset() = dataset;
        task.set_split(splits[s]);
        task.set_cache_key(keys[s]);
        task.set_batch_size(spec.extract_batch_size());
        task.set_feature_dtype(spec.feature_dtype());
        RETURN_IF_ERROR(count_bytes(task));
        plan.extracts.push_back(std::move(extract));
      }
      for (const auto& protocol : spec.protocols()) {
        for (const v1::Subset& subset : Subsets(protocol)) {
          PlannedProbe probe;
          auto& task = probe.spec;
          task.set_kind(ProbeKind(protocol));
          *task.mutable_model() = model;
          *task.mutable_dataset() = dataset;
          if (!protocol.has_finetune()) {
            task.set_train_cache_key(keys[0]);
            task.set_test_cache_key(keys[1]);
          }
          *task.mutable_protocol() = protocol;
          if (subset.shots() > 0 || subset.fraction() > 0) *task.mutable_subset() = subset;
          RETURN_IF_ERROR(count_bytes(task));
          plan.probes.push_back(std::move(probe));
        }
      }
    }
  }
  plan.spec = std::move(spec);
  return plan;
}

}  // namespace sslbench::server
