#pragma once
// The worker daemon: register, lease, run, heartbeat, report. It speaks only
// gRPC to the coordinator and holds no database credentials. Compute runs
// through the LibTorch-free headers of worker/compute.

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "sslbench/v1/worker_api.grpc.pb.h"
#include "worker/compute/knn.h"

namespace sslbench::worker {

struct WorkerOptions {
  std::string name = "worker";
  std::string device = "cpu";
  int compute_threads = 1;
  // Threads decoding and preprocessing images while the model runs.
  int decode_threads = 1;
  absl::Duration idle_poll = absl::Milliseconds(500);
  absl::Duration rpc_timeout = absl::Seconds(60);
  // Target size of one uploaded feature chunk.
  int64_t chunk_bytes = 4 << 20;
  // How long a task's RPCs retry transient failures (coordinator restarts).
  absl::Duration rpc_retry_window = absl::Seconds(60);
};

class WorkerMetrics {
 public:
  explicit WorkerMetrics(prometheus::Registry& registry);
  prometheus::Family<prometheus::Counter>* tasks;
  prometheus::Family<prometheus::Histogram>* task_duration;
  prometheus::Counter* images;
  prometheus::Counter* feature_bytes_uploaded;
  prometheus::Gauge* busy;
};

class WorkerDaemon {
 public:
  WorkerDaemon(std::shared_ptr<grpc::Channel> channel, WorkerOptions options,
               std::shared_ptr<prometheus::Registry> registry);

  // Runs until Stop(). Returns an error only when registration is impossible.
  absl::Status Run();
  // Asks Run() to return; a running task stops at its next checkpoint and is
  // left to its lease (the coordinator requeues it).
  void Stop();

  int64_t worker_id() const { return worker_id_; }

 private:
  struct TaskContext;
  absl::Status Register();
  void RunTask(const v1::LeaseTaskResponse& lease);
  absl::Status RunExtract(TaskContext& ctx);
  absl::Status RunProbe(TaskContext& ctx, std::vector<v1::ProbeResult>* results);
  absl::Status RunFineTuneTask(TaskContext& ctx, std::vector<v1::ProbeResult>* results);
  absl::Status PutCheckpoint(TaskContext& ctx, int64_t step, std::string data);
  absl::Status FetchFeatures(TaskContext& ctx, const std::string& key,
                             compute::FeatureMatrix* out);
  void HeartbeatLoop(TaskContext& ctx);
  std::unique_ptr<grpc::ClientContext> NewContext() const;
  // Runs `rpc` with a fresh context, retrying UNAVAILABLE, DEADLINE_EXCEEDED
  // and ABORTED with backoff for up to rpc_retry_window, unless the daemon or
  // the task (`ctx`, may be null) is stopping.
  absl::Status Call(const TaskContext* ctx, const char* what,
                    const std::function<grpc::Status(grpc::ClientContext*)>& rpc);

  std::unique_ptr<v1::WorkerService::Stub> stub_;
  const WorkerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  WorkerMetrics metrics_;
  absl::Notification stop_;
  int64_t worker_id_ = 0;
  absl::Duration heartbeat_interval_ = absl::Seconds(5);
};

}  // namespace sslbench::worker
