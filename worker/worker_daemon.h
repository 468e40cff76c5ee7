#pragma once
// The worker daemon: register, lease, run, heartbeat, report. It speaks only
// gRPC to the coordinator and holds no database credentials. Compute runs
// through the LibTorch-free headers of worker/compute.

#include <atomic>
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
  absl::Duration idle_poll = absl::Milliseconds(500);
  absl::Duration rpc_timeout = absl::Seconds(60);
  // Target size of one uploaded feature chunk.
  int64_t chunk_bytes = 4 << 20;
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

  std::unique_ptr<v1::WorkerService::Stub> stub_;
  const WorkerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  WorkerMetrics metrics_;
  absl::Notification stop_;
  int64_t worker_id_ = 0;
  absl::Duration heartbeat_interval_ = absl::Seconds(5);
};

}  // namespace sslbench::worker
