#pragma once
// Expands a study (models x datasets x protocols) into a task graph:
// extract(model, dataset, split) tasks feed probe tasks. Pure: no database,
// no RPC; the store decides which extractions the feature cache already has.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::server {

struct PlannedExtract {
  std::string cache_key;
  v1::TaskSpec spec;
};

struct PlannedProbe {
  v1::TaskSpec spec;  // carries train_cache_key / test_cache_key
};

struct StudyPlan {
  v1::StudySpec spec;        // defaulted and validated
  std::string request_id;    // may be empty
  std::string submitted_by;  // the caller's token name; empty without authentication
  std::vector<PlannedExtract> extracts;  // unique by cache_key
  std::vector<PlannedProbe> probes;
};

// What one study may put in the database.
struct PlanLimits {
  int64_t max_tasks = 250000;
  // The tasks' specs as stored (each carries its model, dataset, protocol).
  int64_t max_task_bytes = int64_t{256} << 20;
};

// Applies defaults, validates (INVALID_ARGUMENT naming the field) and expands.
// A study over `limits` is refused with INVALID_ARGUMENT before any task is
// built.
absl::StatusOr<StudyPlan> PlanStudy(v1::StudySpec spec, std::string request_id,
                                    const PlanLimits& limits = PlanLimits());

}  // namespace sslbench::server
