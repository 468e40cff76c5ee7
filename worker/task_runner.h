#pragma once
// One TaskRunner per task kind (extract, probes, fine-tuning), found by kind
// in a registry; the daemon is the lease/heartbeat loop around them. A
// runner talks to the coordinator through its TaskContext only.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "sslbench/v1/types.pb.h"
#include "sslbench/v1/worker_api.pb.h"
#include "worker/coordinator_connection.h"

namespace sslbench::worker {

// "extract", "knn", ...: the proto enum's name without its prefix, lower case.
std::string TaskKindLabel(v1::TaskKind kind);

// A leased task as its runner sees it. Thread-safe: the heartbeat loop sets
// the stop flags and reads the progress while the runner works.
class TaskContext {
 public:
  TaskContext(const v1::LeaseTaskResponse& lease, CoordinatorConnection& connection,
              const absl::Notification& daemon_stopping, absl::Duration rpc_timeout,
              absl::Duration rpc_retry_window);

  int64_t task_id() const { return task_id_; }
  int64_t token() const { return token_; }
  int32_t attempt() const { return attempt_; }
  const v1::TaskSpec& spec() const { return spec_; }
  CoordinatorConnection& connection() { return connection_; }
  // Options for the task's calls: transient failures retried while the task
  // should go on.
  CallOptions rpc() const;

  void SetProgress(int64_t done, int64_t total) {
    work_total_ = total;
    work_done_ = done;
  }
  void AddDone(int64_t n) { work_done_ += n; }
  void SetTotal(int64_t total) { work_total_ = total; }
  int64_t work_done() const { return work_done_; }
  int64_t work_total() const { return work_total_; }

  // The study was cancelled, another worker owns the task now, or the daemon
  // is stopping: return CANCELLED at the next checkpoint.
  bool ShouldStop() const { return cancelled_ || lease_lost_ || daemon_stopping_.HasBeenNotified(); }
  bool cancelled() const { return cancelled_; }
  bool lease_lost() const { return lease_lost_; }
  bool daemon_stopping() const { return daemon_stopping_.HasBeenNotified(); }
  void MarkCancelled() { cancelled_ = true; }
  void MarkLeaseLost() { lease_lost_ = true; }

 private:
  const int64_t task_id_;
  const int64_t token_;
  const int32_t attempt_;
  const v1::TaskSpec spec_;
  CoordinatorConnection& connection_;
  const absl::Notification& daemon_stopping_;
  const absl::Duration rpc_timeout_;
  const absl::Duration rpc_retry_window_;
  std::atomic<int64_t> work_done_{0};
  std::atomic<int64_t> work_total_{0};
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> lease_lost_{false};
};

// What a finished task reports.
struct TaskOutcome {
  std::vector<v1::ProbeResult> results;  // probes, fine-tuning
  int64_t feature_rows = 0;              // extract
  int32_t feature_dim = 0;
  int32_t feature_chunks = 0;
};

class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  // Runs the task. CANCELLED when it stopped because ctx.ShouldStop();
  // INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION / DATA_LOSS for bad
  // input (not retried); anything else is retried by the coordinator.
  virtual absl::StatusOr<TaskOutcome> Run(TaskContext& ctx) = 0;
};

// Runners by kind. Not thread-safe to fill; Find is.
class TaskRunners {
 public:
  void Register(v1::TaskKind kind, std::shared_ptr<TaskRunner> runner);
  TaskRunner* Find(v1::TaskKind kind) const;
  std::vector<v1::TaskKind> Kinds() const;

 private:
  std::map<v1::TaskKind, std::shared_ptr<TaskRunner>> runners_;
};

}  // namespace sslbench::worker
