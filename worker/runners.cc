#include "worker/runners.h"

namespace sslbench::worker {

TaskRunners DefaultTaskRunners(const RunnerOptions& options, WorkerMetrics* metrics) {
  TaskRunners runners;
  runners.Register(v1::TASK_KIND_EXTRACT, NewExtractRunner(options, metrics));
  const std::shared_ptr<TaskRunner> probes = NewProbeRunner(options.feature_cache, options.device);
  for (v1::TaskKind kind : {v1::TASK_KIND_KNN, v1::TASK_KIND_LINEAR, v1::TASK_KIND_LOGREG}) {
    runners.Register(kind, probes);
  }
  runners.Register(v1::TASK_KIND_FINETUNE, NewFineTuneRunner(options.device, options.read));
  return runners;
}

}  // namespace sslbench::worker
