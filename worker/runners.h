#pragma once
// The task runners of this worker, one per kind, and the registry of them
// the daemon uses.

#include <cstdint>
#include <memory>
#include <string>

#include "worker/feature_cache.h"
#include "worker/runner_util.h"
#include "worker/task_runner.h"
#include "worker/worker_metrics.h"

namespace sslbench::worker {

struct RunnerOptions {
  // Target size of one uploaded feature chunk.
  int64_t chunk_bytes = 4 << 20;
  // Threads decoding and preprocessing images while the model runs.
  int decode_threads = 1;
  // The worker's disk cache of feature sets; may be null.
  LocalFeatureCache* feature_cache = nullptr;
  // Where extraction, fine-tuning and every probe run: "cpu" or
  // "cuda:N" (resolved, see compute/device.h). Extraction and fine-tuning
  // use the device's default precision (bf16 autocast on CUDA).
  std::string device = "cpu";
  // Where model files and datasets may be read from.
  ReadPolicy read;
};

// Extract: features of (model, dataset, split), uploaded in chunks; resumes
// after the chunks an earlier attempt stored. `metrics` may be null.
std::shared_ptr<TaskRunner> NewExtractRunner(const RunnerOptions& options,
                                             WorkerMetrics* metrics);
// kNN, linear probe, logistic regression on cached features (read through
// `cache` when given).
std::shared_ptr<TaskRunner> NewProbeRunner(LocalFeatureCache* cache,
                                           const std::string& device = "cpu");
// End-to-end fine-tuning, checkpointed, resuming from the latest checkpoint.
// On `device`, with bf16 autocast on CUDA.
std::shared_ptr<TaskRunner> NewFineTuneRunner(const std::string& device = "cpu",
                                              const ReadPolicy& read = ReadPolicy());

// Every runner above, registered under its kinds.
TaskRunners DefaultTaskRunners(const RunnerOptions& options, WorkerMetrics* metrics);

}  // namespace sslbench::worker
