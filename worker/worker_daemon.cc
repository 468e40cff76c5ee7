#include "worker/worker_daemon.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/malloc_tuning.h"
#include "common/status_macros.h"

namespace sslbench::worker {
namespace {

// Failures caused by the task's input do not improve with a retry.
bool Retryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kDataLoss:
      return false;
    default:
      return true;
  }
}

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry)
    : tasks(&prometheus::BuildCounter()
                 .Name("sslbench_worker_tasks_total")
                 .Help("Tasks run by this worker, by kind and outcome")
                 .Register(registry)),
      task_duration(&prometheus::BuildHistogram()
                         .Name("sslbench_worker_task_duration_seconds")
                         .Help("Wall time of tasks by kind")
                         .Register(registry)),
      images(&prometheus::BuildCounter()
                  .Name("sslbench_worker_images_total")
                  .Help("Images passed through a backbone")
                  .Register(registry)
                  .Add({})),
      feature_bytes_uploaded(&prometheus::BuildCounter()
                                  .Name("sslbench_worker_feature_bytes_uploaded_total")
                                  .Help("Feature bytes sent to the coordinator")
                                  .Register(registry)
                                  .Add({})),
      busy(&prometheus::BuildGauge()
                .Name("sslbench_worker_busy")
                .Help("1 while the worker runs a task")
                .Register(registry)
                .Add({})) {}

WorkerDaemon::WorkerDaemon(CoordinatorConnection& connection, TaskRunners runners,
                           WorkerOptions options, const Clock& clock, WorkerMetrics* metrics)
    : connection_(connection),
      runners_(std::move(runners)),
      options_(std::move(options)),
      clock_(clock),
      metrics_(metrics),
      started_ns_(absl::ToUnixNanos(clock.Now())),
      last_tick_ns_(absl::ToUnixNanos(clock.Now())) {}

void WorkerDaemon::Tick() { last_tick_ns_ = absl::ToUnixNanos(clock_.Now()); }

void WorkerDaemon::Answered() {
  const int64_t now = absl::ToUnixNanos(clock_.Now());
  last_answer_ns_ = now;
  last_tick_ns_ = now;
}

WorkerHealth WorkerDaemon::Health() const {
  const absl::Time now = clock_.Now();
  WorkerHealth health;
  const absl::Duration since_tick = now - absl::FromUnixNanos(last_tick_ns_.load());
  health.live = since_tick <= options_.live_window;
  const int64_t answered = last_answer_ns_.load();
  const absl::Duration since_answer = now - absl::FromUnixNanos(answered);
  if (stop_.HasBeenNotified()) {
    health.detail = "stopping: handing back its task";
  } else if (worker_id_.load() == 0) {
    health.detail = absl::StrCat("not registered yet (trying for ",
                                 absl::FormatDuration(absl::Trunc(
                                     now - absl::FromUnixNanos(started_ns_.load()),
                                     absl::Seconds(1))),
                                 ")");
  } else if (answered == 0 || since_answer > options_.ready_window) {
    health.detail = absl::StrCat("worker ", worker_id_.load(),
                                 ": the coordinator has not answered for ",
                                 absl::FormatDuration(absl::Trunc(since_answer, absl::Seconds(1))));
  } else {
    health.ready = true;
    health.detail = absl::StrCat("worker ", worker_id_.load(), " leasing");
  }
  if (!health.live) {
    health.detail = absl::StrCat("the lease loop has not gone round for ",
                                 absl::FormatDuration(absl::Trunc(since_tick, absl::Seconds(1))),
                                 "; ", health.detail);
  }
  return health;
}

CallOptions WorkerDaemon::Once() const {
  CallOptions options;
  options.timeout = options_.rpc_timeout;
  return options;
}

void WorkerDaemon::Stop() {
  if (stop_.HasBeenNotified()) return;
  stop_ns_ = absl::ToUnixNanos(clock_.Now());
  stop_.Notify();
}

absl::Status WorkerDaemon::Register() {
  v1::RegisterWorkerRequest request;
  request.set_name(options_.name);
  request.set_hostname(options_.hostname.empty() ? Hostname() : options_.hostname);
  request.set_device(options_.device);
  // The coordinator may still be starting: retry unavailability with backoff.
  absl::Duration backoff = absl::Milliseconds(200);
  while (!stop_.HasBeenNotified()) {
    const absl::StatusOr<v1::RegisterWorkerResponse> response =
        connection_.RegisterWorker(request, Once());
    Tick();
    if (response.ok()) {
      worker_id_ = response->worker_id();
      if (response->heartbeat_interval_ms() > 0) {
        heartbeat_interval_ = absl::Milliseconds(response->heartbeat_interval_ms());
      }
      LogInfo("worker", "registered as worker ", worker_id_.load(), " (", options_.name, ")");
      return absl::OkStatus();
    }
    const absl::Status& status = response.status();
    if (!absl::IsUnavailable(status) && !absl::IsDeadlineExceeded(status)) return status;
    LogWarning("worker", "coordinator unavailable, retrying: ", status.message());
    clock_.WaitForNotification(stop_, backoff);
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
  return absl::CancelledError("stopped before registering");
}

absl::Status WorkerDaemon::Run() {
  RETURN_IF_ERROR(Register());
  absl::Duration backoff = options_.idle_poll;
  while (!stop_.HasBeenNotified()) {
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker_id_);
    if (options_.cached_feature_keys) {
      for (std::string& key : options_.cached_feature_keys()) {
        request.add_cached_feature_keys(std::move(key));
      }
    }
    const absl::StatusOr<v1::LeaseTaskResponse> lease = connection_.LeaseTask(request, Once());
    Tick();
    if (lease.ok()) Answered();
    if (absl::IsNotFound(lease.status())) {
      // The coordinator's database forgot us (e.g. it was reset): register again.
      RETURN_IF_ERROR(Register());
      continue;
    }
    if (!lease.ok()) {
      LogWarning("worker", "lease failed, retrying: ", lease.status().ToString());
      clock_.WaitForNotification(stop_, backoff);
      backoff = std::min(backoff * 2, absl::Seconds(10));
      continue;
    }
    backoff = options_.idle_poll;
    if (lease->task_id() == 0) {
      clock_.WaitForNotification(stop_, options_.idle_poll);
      continue;
    }
    RunTask(*lease);
  }
  LogInfo("worker", "stopped");
  return absl::OkStatus();
}

void WorkerDaemon::HeartbeatLoop(TaskContext& ctx, absl::Notification& finished) {
  while (!clock_.WaitForNotification(finished, heartbeat_interval_)) {
    v1::HeartbeatRequest request;
    request.set_worker_id(worker_id_);
    request.set_task_id(ctx.task_id());
    request.set_lease_token(ctx.token());
    request.set_work_done(ctx.work_done());
    request.set_work_total(ctx.work_total());
    // A heartbeat stuck on an unresponsive replica must not outlast the
    // lease: give it no longer than the interval, then try again.
    CallOptions once;
    once.timeout = heartbeat_interval_;
    const absl::StatusOr<v1::HeartbeatResponse> response = connection_.Heartbeat(request, once);
    Tick();
    if (response.ok()) Answered();
    if (absl::IsFailedPrecondition(response.status()) || absl::IsNotFound(response.status())) {
      LogWarning("worker", "task ", ctx.task_id(), ": ", response.status().message(),
                 "; abandoning it");
      ctx.MarkLeaseLost();
      return;
    }
    if (!response.ok()) {
      // Transient: the lease outlives a few missed heartbeats.
      LogWarning("worker", "heartbeat for task ", ctx.task_id(),
                 " failed: ", response.status().ToString());
      continue;
    }
    if (response->cancelled()) {
      LogInfo("worker", "task ", ctx.task_id(), " was cancelled");
      ctx.MarkCancelled();
      return;
    }
  }
}

void WorkerDaemon::ReportFailure(TaskContext& ctx, const absl::Status& failure, bool retryable,
                                 bool preempted) {
  v1::FailTaskRequest request;
  request.set_task_id(ctx.task_id());
  request.set_lease_token(ctx.token());
  request.set_error(failure.ToString());
  request.set_retryable(retryable);
  request.set_preempted(preempted);
  // A hand-back at shutdown must not wait on retries the stop would cut,
  // nor outlast the drain time.
  CallOptions options = preempted ? Once() : ctx.rpc();
  if (preempted) {
    const absl::Duration left =
        options_.drain_timeout - (clock_.Now() - absl::FromUnixNanos(stop_ns_.load()));
    options.timeout = std::min(std::max(left, absl::Seconds(1)), options_.rpc_timeout);
  }
  const absl::Status sent = connection_.FailTask(request, options).status();
  if (!sent.ok()) {
    LogWarning("worker", "task ", ctx.task_id(), ": failure not recorded: ", sent.ToString());
  }
}

absl::Status WorkerDaemon::UploadLargeArtifacts(TaskContext& ctx,
                                                v1::CompleteTaskRequest& request) {
  const int64_t part_bytes = std::max<int64_t>(1, options_.artifact_part_bytes);
  for (int i = 0; i < request.results_size(); ++i) {
    v1::ProbeResult& result = *request.mutable_results(i);
    const std::string& data = result.artifact();
    if (static_cast<int64_t>(data.size()) <= part_bytes) continue;
    const int64_t parts = (static_cast<int64_t>(data.size()) + part_bytes - 1) / part_bytes;
    for (int64_t p = 0; p < parts; ++p) {
      v1::PutArtifactPartRequest part;
      part.set_task_id(ctx.task_id());
      part.set_lease_token(ctx.token());
      part.set_result_index(i);
      part.set_part(static_cast<int32_t>(p));
      part.set_data(data.substr(static_cast<size_t>(p * part_bytes),
                                static_cast<size_t>(part_bytes)));
      RETURN_IF_ERROR(connection_.PutArtifactPart(part, ctx.rpc()));
    }
    result.clear_artifact();
    result.set_artifact_parts(static_cast<int32_t>(parts));
  }
  return absl::OkStatus();
}

void WorkerDaemon::RunTask(const v1::LeaseTaskResponse& leased) {
  v1::LeaseTaskResponse lease = leased;
  const absl::Status localized =
      options_.localize ? options_.localize(*lease.mutable_spec()) : absl::OkStatus();
  TaskContext ctx(lease, connection_, stop_, options_.rpc_timeout, options_.rpc_retry_window);
  const std::string kind = TaskKindLabel(ctx.spec().kind());
  LogInfo("worker", "task ", ctx.task_id(), " (", kind, ", attempt ", lease.attempt(),
          ", model ", ctx.spec().model().name(), ", dataset ", ctx.spec().dataset().name(),
          ctx.spec().split().empty() ? "" : absl::StrCat(", ", ctx.spec().split()), ")");
  if (metrics_ != nullptr) metrics_->busy->Set(1);
  const auto wall_start = std::chrono::steady_clock::now();
  absl::Notification finished;
  std::thread heartbeat([&] { HeartbeatLoop(ctx, finished); });

  absl::StatusOr<TaskOutcome> outcome;
  if (!localized.ok()) {
    outcome = localized;
  } else if (TaskRunner* runner = runners_.Find(ctx.spec().kind()); runner != nullptr) {
    outcome = runner->Run(ctx);
  } else {
    outcome = absl::InvalidArgumentError(
        absl::StrCat("task kind ", v1::TaskKind_Name(ctx.spec().kind()),
                     " is not supported by this worker"));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();

  // Heartbeats go on until the outcome is acknowledged: reporting may retry
  // through a coordinator restart, and the lease must outlive that.
  std::string result;
  if (ctx.lease_lost()) {
    result = "lease_lost";
  } else if (ctx.cancelled()) {
    result = "cancelled";
  } else if (outcome.ok()) {
    v1::CompleteTaskRequest request;
    request.set_task_id(ctx.task_id());
    request.set_lease_token(ctx.token());
    for (auto& r : outcome->results) *request.add_results() = std::move(r);
    absl::Status sent = UploadLargeArtifacts(ctx, request);
    if (ctx.spec().kind() == v1::TASK_KIND_EXTRACT) {
      request.set_feature_rows(outcome->feature_rows);
      request.set_feature_dim(outcome->feature_dim);
      request.set_feature_chunks(outcome->feature_chunks);
    }
    if (sent.ok()) sent = connection_.CompleteTask(request, ctx.rpc());
    result = sent.ok() ? "succeeded" : "report_failed";
    if (!sent.ok()) {
      LogWarning("worker", "task ", ctx.task_id(), ": completion not accepted: ", sent.ToString());
      // A rejection other than a lost lease is the task's real error: record
      // it rather than let the lease expire and hide it.
      if (!absl::IsFailedPrecondition(sent) && !absl::IsUnavailable(sent) &&
          !absl::IsDeadlineExceeded(sent)) {
        ReportFailure(ctx, sent, Retryable(sent), /*preempted=*/false);
      }
    } else {
      LogInfo("worker", "task ", ctx.task_id(), " done in ", absl::StrFormat("%.1f", seconds),
              " s");
    }
  } else if (stop_.HasBeenNotified() && absl::IsCancelled(outcome.status())) {
    // Shutting down: hand the task back now instead of letting the lease
    // expire (which would cost an attempt and the lease's duration).
    result = "interrupted";
    ReportFailure(ctx, absl::CancelledError("worker shutting down"), true, /*preempted=*/true);
  } else {
    result = "failed";
    LogWarning("worker", "task ", ctx.task_id(), " failed: ", outcome.status().ToString());
    ReportFailure(ctx, outcome.status(), Retryable(outcome.status()), /*preempted=*/false);
  }
  finished.Notify();
  heartbeat.join();
  // What the task freed (feature matrices, chunk buffers) goes back to the
  // system before the next lease, not when the heap happens to shrink.
  ReleaseFreeMemory();
  if (metrics_ != nullptr) {
    metrics_->busy->Set(0);
    metrics_->tasks->Add({{"kind", kind}, {"outcome", result}}).Increment();
    metrics_->task_duration
        ->Add({{"kind", kind}},
              prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200})
        .Observe(seconds);
  }
}

}  // namespace sslbench::worker
