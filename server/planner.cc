#include "server/planner.h"

#include <set>
#include <utility>

#include "common/status_macros.h"
#include "common/study_spec.h"

namespace sslbench::server {

absl::StatusOr<StudyPlan> PlanStudy(v1::StudySpec spec, std::string request_id) {
  ApplyStudyDefaults(spec);
  RETURN_IF_ERROR(ValidateStudySpec(spec));
  if (request_id.size() > 256) {
    return absl::InvalidArgumentError("request_id: longer than 256 characters");
  }
  StudyPlan plan;
  plan.request_id = std::move(request_id);
  std::set<std::string> planned_keys;
  for (const auto& model : spec.models()) {
    for (const auto& dataset : spec.datasets()) {
      std::string keys[2];
      const char* splits[2] = {"train", "test"};
      for (int s = 0; s < 2; ++s) {
        keys[s] = FeatureCacheKey(model, dataset, splits[s]);
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
        plan.extracts.push_back(std::move(extract));
      }
      for (const auto& protocol : spec.protocols()) {
        PlannedProbe probe;
        auto& task = probe.spec;
        task.set_kind(v1::TASK_KIND_KNN);
        *task.mutable_model() = model;
        *task.mutable_dataset() = dataset;
        task.set_train_cache_key(keys[0]);
        task.set_test_cache_key(keys[1]);
        *task.mutable_protocol() = protocol;
        plan.probes.push_back(std::move(probe));
      }
    }
  }
  plan.spec = std::move(spec);
  return plan;
}

}  // namespace sslbench::server
