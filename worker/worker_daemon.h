#pragma once
// The worker daemon: register, lease, heartbeat, report. The work of each
// task is its kind's TaskRunner; the coordinator is reached through a
// CoordinatorConnection and time through a Clock, both injected, so the loop
// is unit-tested against fakes (tests/worker/worker_daemon_test.cc).

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "worker/coordinator_connection.h"
#include "worker/task_runner.h"
#include "worker/worker_metrics.h"

namespace sslbench::worker {

struct WorkerOptions {
  std::string name = "worker";
  std::string device = "cpu";
  std::string hostname;  // empty: gethostname()
  absl::Duration idle_poll = absl::Milliseconds(500);
  absl::Duration rpc_timeout = absl::Seconds(60);
  // How long a task's RPCs retry transient failures (coordinator restarts).
  absl::Duration rpc_retry_window = absl::Seconds(60);
  // The feature caches this worker holds on disk, sent with each lease
  // request so that probes reading them come here; may be empty.
  std::function<std::vector<std::string>()> cached_feature_keys;
  // Turns the leased spec's locations into this worker's local paths
  // (LocalizeSpec); may be empty. An error fails the task.
  std::function<absl::Status(v1::TaskSpec&)> localize;
  // Readiness: registered, not stopping, and the coordinator answered a
  // lease or heartbeat within this window.
  absl::Duration ready_window = absl::Seconds(60);
  // Liveness: the lease loop (or, during a task, the heartbeat loop) went
  // round within this window. A loop stuck longer is a wedged worker.
  absl::Duration live_window = absl::Seconds(300);
  // After Stop(), the hand-back of a running task gets what is left of this
  // (at least a second): a stopped worker is gone within its grace period.
  absl::Duration drain_timeout = absl::Seconds(30);
  // Artefacts (trained heads) larger than this go up in parts of this size
  // before the completion (PutArtifactPart) instead of inside it.
  int64_t artifact_part_bytes = int64_t{8} << 20;
};

// What the worker's /readyz and /livez answer.
struct WorkerHealth {
  bool ready = false;
  bool live = false;
  std::string detail;  // why not, or what it is doing
};

class WorkerDaemon {
 public:
  // `connection`, `clock` and `metrics` (may be null) must outlive the daemon.
  WorkerDaemon(CoordinatorConnection& connection, TaskRunners runners, WorkerOptions options,
               const Clock& clock, WorkerMetrics* metrics);

  // Runs until Stop(). Returns an error only when registration is impossible
  // (a non-transient refusal); CANCELLED when stopped before registering.
  absl::Status Run();
  // Asks Run() to return; a running task stops at its next checkpoint and is
  // handed back to the coordinator at once (not counted as an attempt).
  void Stop();

  int64_t worker_id() const { return worker_id_.load(); }

  // Readiness means "registered and leasing", liveness "the lease loop is
  // alive" (see WorkerOptions). Safe to call from any thread.
  WorkerHealth Health() const;

 private:
  absl::Status Register();
  void RunTask(const v1::LeaseTaskResponse& lease);
  void HeartbeatLoop(TaskContext& ctx, absl::Notification& finished);
  void ReportFailure(TaskContext& ctx, const absl::Status& failure, bool retryable,
                     bool preempted);
  CallOptions Once() const;
  // Results' artefacts above options_.artifact_part_bytes go up in parts;
  // `request` then names the part counts instead of carrying the bytes.
  absl::Status UploadLargeArtifacts(TaskContext& ctx, v1::CompleteTaskRequest& request);

  CoordinatorConnection& connection_;
  const TaskRunners runners_;
  const WorkerOptions options_;
  const Clock& clock_;
  WorkerMetrics* const metrics_;
  void Tick();        // a loop went round
  void Answered();    // the coordinator answered a lease or heartbeat

  absl::Notification stop_;
  std::atomic<int64_t> worker_id_{0};
  std::atomic<int64_t> started_ns_;
  std::atomic<int64_t> last_tick_ns_;
  std::atomic<int64_t> last_answer_ns_{0};
  std::atomic<int64_t> stop_ns_{0};
  absl::Duration heartbeat_interval_ = absl::Seconds(5);
};

}  // namespace sslbench::worker
