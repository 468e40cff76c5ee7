// The daemon's lease/heartbeat loop against a fake coordinator connection,
// fake runners and a fake clock: no RPC, no sleeping.

#include "worker/worker_daemon.h"

#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fake_clock.h"
#include "worker/task_runner.h"

namespace sslbench::worker {
namespace {

using ::testing::HasSubstr;

// Answers as scripted; records what it was asked.
class FakeConnection final : public CoordinatorConnection {
 public:
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(const v1::RegisterWorkerRequest&,
                                                            const CallOptions&) override {
    absl::MutexLock lock(&mu_);
    ++registrations_;
    if (!register_failures_.empty()) {
      absl::Status s = register_failures_.front();
      register_failures_.pop_front();
      return s;
    }
    v1::RegisterWorkerResponse r;
    r.set_worker_id(7);
    r.set_heartbeat_interval_ms(1000);
    return r;
  }
  absl::StatusOr<v1::LeaseTaskResponse> LeaseTask(const v1::LeaseTaskRequest&,
                                                  const CallOptions&) override {
    absl::MutexLock lock(&mu_);
    ++leases_asked_;
    if (leases_.empty()) return v1::LeaseTaskResponse();
    absl::StatusOr<v1::LeaseTaskResponse> next = leases_.front();
    leases_.pop_front();
    return next;
  }
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request,
                                                  const CallOptions&) override {
    absl::MutexLock lock(&mu_);
    heartbeats_.push_back(request);
    return heartbeat_answer_;
  }
  absl::Status CompleteTask(const v1::CompleteTaskRequest& request, const CallOptions&) override {
    absl::MutexLock lock(&mu_);
    completed_.push_back(request);
    return absl::OkStatus();
  }
  absl::StatusOr<v1::FailTaskResponse> FailTask(const v1::FailTaskRequest& request,
                                                const CallOptions& options) override {
    absl::MutexLock lock(&mu_);
    failed_.push_back(request);
    fail_timeouts_.push_back(options.timeout);
    return v1::FailTaskResponse();
  }
  absl::Status PutFeatureChunk(const v1::PutFeatureChunkRequest&, const CallOptions&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::StatusOr<v1::FeatureChunk> GetFeatureChunk(const v1::GetFeatureChunkRequest&,
                                                   const CallOptions&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::StatusOr<v1::FeatureCacheInfo> GetFeatureCache(const v1::GetFeatureCacheRequest&,
                                                       const CallOptions&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status PutCheckpoint(const v1::PutCheckpointRequest&, const CallOptions&) override {
    return absl::UnimplementedError("not in this test");
  }
  absl::Status PutArtifactPart(const v1::PutArtifactPartRequest& request,
                               const CallOptions&) override {
    absl::MutexLock lock(&mu_);
    parts_.push_back(request);
    return absl::OkStatus();
  }
  absl::StatusOr<v1::Checkpoint> GetCheckpoint(const v1::GetCheckpointRequest&,
                                               const CallOptions&) override {
    return absl::UnimplementedError("not in this test");
  }

  void AddLease(absl::StatusOr<v1::LeaseTaskResponse> lease) {
    absl::MutexLock lock(&mu_);
    leases_.push_back(std::move(lease));
  }
  void FailRegistrations(std::vector<absl::Status> failures) {
    absl::MutexLock lock(&mu_);
    register_failures_.assign(failures.begin(), failures.end());
  }
  void AnswerHeartbeats(absl::StatusOr<v1::HeartbeatResponse> answer) {
    absl::MutexLock lock(&mu_);
    heartbeat_answer_ = std::move(answer);
  }
  // Blocks until `pred` holds for the recorded calls.
  void AwaitCalls(const std::function<bool(const FakeConnection&)>& pred) {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pred(*this); };
    mu_.Await(absl::Condition(&done));
  }
  template <typename T>
  T Read(const std::function<T(const FakeConnection&)>& f) {
    absl::MutexLock lock(&mu_);
    return f(*this);
  }

  mutable absl::Mutex mu_;
  int registrations_ ABSL_GUARDED_BY(mu_) = 0;
  int leases_asked_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<absl::Status> register_failures_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::StatusOr<v1::LeaseTaskResponse>> leases_ ABSL_GUARDED_BY(mu_);
  absl::StatusOr<v1::HeartbeatResponse> heartbeat_answer_ ABSL_GUARDED_BY(mu_) =
      v1::HeartbeatResponse();
  std::vector<v1::HeartbeatRequest> heartbeats_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::CompleteTaskRequest> completed_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::PutArtifactPartRequest> parts_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::FailTaskRequest> failed_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> fail_timeouts_ ABSL_GUARDED_BY(mu_);
};

// Reports progress 3 of 10, then waits until released (returning `result`)
// or until the task should stop (returning CANCELLED).
class BlockingRunner final : public TaskRunner {
 public:
  absl::StatusOr<TaskOutcome> Run(TaskContext& ctx) override {
    ctx.SetProgress(3, 10);
    started_.Notify();
    while (!release_.WaitForNotificationWithTimeout(absl::Milliseconds(1))) {
      if (ctx.ShouldStop()) return absl::CancelledError("stopped");
    }
    return result_;
  }
  absl::Notification started_;
  absl::Notification release_;
  absl::StatusOr<TaskOutcome> result_;
};

v1::LeaseTaskResponse Lease(v1::TaskKind kind, int64_t id = 11) {
  v1::LeaseTaskResponse lease;
  lease.set_task_id(id);
  lease.set_lease_token(99);
  lease.mutable_spec()->set_kind(kind);
  return lease;
}

class WorkerDaemonTest : public ::testing::Test {
 protected:
  // The daemon with options_ and runner_ for kNN tasks, not yet running.
  void Create() {
    TaskRunners runners;
    runners.Register(v1::TASK_KIND_KNN, runner_);
    daemon_ = std::make_unique<WorkerDaemon>(connection_, std::move(runners), options_, clock_,
                                             nullptr);
  }
  void Start() {
    Create();
    thread_ = std::thread([this] { result_ = daemon_->Run(); });
  }
  void TearDown() override {
    if (daemon_) daemon_->Stop();
    if (thread_.joinable()) thread_.join();
  }

  FakeConnection connection_;
  WorkerOptions options_;
  testing::FakeClock clock_;
  std::shared_ptr<BlockingRunner> runner_ = std::make_shared<BlockingRunner>();
  std::unique_ptr<WorkerDaemon> daemon_;
  std::thread thread_;
  absl::Status result_;
};

TEST_F(WorkerDaemonTest, RegistersThroughTransientFailuresWithBackoff) {
  connection_.FailRegistrations({absl::UnavailableError("starting"), absl::UnavailableError("starting")});
  Start();
  clock_.AwaitWaiters(1);  // 200 ms backoff
  EXPECT_EQ(connection_.Read<int>([](const auto& c) { return c.registrations_; }), 1);
  clock_.Advance(absl::Milliseconds(200));
  connection_.AwaitCalls([](const auto& c) { return c.registrations_ == 2; });
  clock_.AwaitWaiters(1);  // 400 ms backoff now
  clock_.Advance(absl::Milliseconds(399));
  EXPECT_EQ(connection_.Read<int>([](const auto& c) { return c.registrations_; }), 2);
  clock_.Advance(absl::Milliseconds(1));
  connection_.AwaitCalls([](const auto& c) { return c.registrations_ == 3 && c.leases_asked_ >= 1; });
  EXPECT_EQ(daemon_->worker_id(), 7);
}

TEST_F(WorkerDaemonTest, RefusedRegistrationEndsRun) {
  connection_.FailRegistrations({absl::InvalidArgumentError("empty name")});
  Start();
  thread_.join();
  EXPECT_EQ(result_.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(WorkerDaemonTest, CompletesWithResultsAndHeartbeatsProgress) {
  TaskOutcome outcome;
  outcome.results.emplace_back().set_variant("cosine k=20");
  runner_->result_ = outcome;
  connection_.AddLease(Lease(v1::TASK_KIND_KNN));
  Start();
  runner_->started_.WaitForNotification();
  clock_.AwaitWaiters(1);  // the heartbeat loop
  clock_.Advance(absl::Seconds(1));
  connection_.AwaitCalls([](const auto& c) { return c.heartbeats_.size() == 1; });
  const v1::HeartbeatRequest hb = connection_.Read<v1::HeartbeatRequest>(
      [](const auto& c) { return c.heartbeats_[0]; });
  EXPECT_EQ(hb.task_id(), 11);
  EXPECT_EQ(hb.lease_token(), 99);
  EXPECT_EQ(hb.worker_id(), 7);
  EXPECT_EQ(hb.work_done(), 3);
  EXPECT_EQ(hb.work_total(), 10);
  runner_->release_.Notify();
  connection_.AwaitCalls([](const auto& c) { return c.completed_.size() == 1; });
  const v1::CompleteTaskRequest done = connection_.Read<v1::CompleteTaskRequest>(
      [](const auto& c) { return c.completed_[0]; });
  EXPECT_EQ(done.lease_token(), 99);
  ASSERT_EQ(done.results_size(), 1);
  EXPECT_EQ(done.results(0).variant(), "cosine k=20");
  EXPECT_TRUE(connection_.Read<bool>([](const auto& c) { return c.failed_.empty(); }));
}

TEST_F(WorkerDaemonTest, CancelledStudyStopsTheRunnerAndReportsNothing) {
  v1::HeartbeatResponse cancelled;
  cancelled.set_cancelled(true);
  connection_.AnswerHeartbeats(cancelled);
  connection_.AddLease(Lease(v1::TASK_KIND_KNN));
  Start();
  runner_->started_.WaitForNotification();
  clock_.AwaitWaiters(1);
  clock_.Advance(absl::Seconds(1));
  // The daemon goes on to the next lease once the runner has stopped.
  connection_.AwaitCalls([](const auto& c) { return c.leases_asked_ >= 2; });
  EXPECT_TRUE(connection_.Read<bool>(
      [](const auto& c) { return c.completed_.empty() && c.failed_.empty(); }));
}

TEST_F(WorkerDaemonTest, LostLeaseIsAbandonedWithoutReport) {
  connection_.AnswerHeartbeats(absl::FailedPreconditionError("lease lost: stale token"));
  connection_.AddLease(Lease(v1::TASK_KIND_KNN));
  Start();
  runner_->started_.WaitForNotification();
  clock_.AwaitWaiters(1);
  clock_.Advance(absl::Seconds(1));
  connection_.AwaitCalls([](const auto& c) { return c.leases_asked_ >= 2; });
  EXPECT_TRUE(connection_.Read<bool>(
      [](const auto& c) { return c.completed_.empty() && c.failed_.empty(); }));
}

TEST_F(WorkerDaemonTest, TransientHeartbeatFailureKeepsWorking) {
  connection_.AnswerHeartbeats(absl::UnavailableError("replica restarting"));
  runner_->result_ = TaskOutcome{};
  connection_.AddLease(Lease(v1::TASK_KIND_KNN));
  Start();
  runner_->started_.WaitForNotification();
  for (int i = 1; i <= 3; ++i) {
    clock_.AwaitWaiters(1);
    clock_.Advance(absl::Seconds(1));
    connection_.AwaitCalls([i](const auto& c) { return c.heartbeats_.size() == static_cast<size_t>(i); });
  }
  runner_->release_.Notify();
  connection_.AwaitCalls([](const auto& c) { return c.completed_.size() == 1; });
}

TEST_F(WorkerDaemonTest, FailuresAreRetryableUnlessTheInputIsBad) {
  runner_->result_ = absl::InvalidArgumentError("dataset folder /x has no class subfolders");
  runner_->release_.Notify();
  connection_.AddLease(Lease(v1::TASK_KIND_KNN, 1));
  connection_.AddLease(Lease(v1::TASK_KIND_FINETUNE, 2));  // no runner for it here
  Start();
  connection_.AwaitCalls([](const auto& c) { return c.failed_.size() == 2; });
  const auto failed = connection_.Read<std::vector<v1::FailTaskRequest>>(
      [](const auto& c) { return c.failed_; });
  EXPECT_FALSE(failed[0].retryable());
  EXPECT_THAT(failed[0].error(), HasSubstr("no class subfolders"));
  EXPECT_FALSE(failed[1].retryable());
  EXPECT_THAT(failed[1].error(), HasSubstr("TASK_KIND_FINETUNE is not supported"));
}

TEST_F(WorkerDaemonTest, InternalErrorIsRetryable) {
  runner_->result_ = absl::InternalError("model failed");
  runner_->release_.Notify();
  connection_.AddLease(Lease(v1::TASK_KIND_KNN));
  Start();
  connection_.AwaitCalls([](const auto& c) { return c.failed_.size() == 1; });
  EXPECT_TRUE(connection_.Read<bool>([](const auto& c) { return c.failed_[0].retryable(); }));
}

TEST_F(WorkerDaemonTest, StopMidTaskHandsTheTaskBackPreempted) {
  connection_.AddLease(Lease(v1::TASK_KIND_KNN));
  Start();
  runner_->started_.WaitForNotification();
  daemon_->Stop();
  thread_.join();
  EXPECT_TRUE(result_.ok()) << result_;
  const auto failed = connection_.Read<std::vector<v1::FailTaskRequest>>(
      [](const auto& c) { return c.failed_; });
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_TRUE(failed[0].preempted());
  EXPECT_TRUE(failed[0].retryable());
}

// Readiness is "registered and the coordinator answers", liveness "the loop
// goes round": a worker cut off from its coordinator stays live but is not
// ready; a loop that stops going round is not live.
TEST_F(WorkerDaemonTest, ReadyOnlyWhileRegisteredAndAnswered) {
  connection_.FailRegistrations({absl::UnavailableError("starting")});
  options_.ready_window = absl::Seconds(60);
  options_.live_window = absl::Seconds(300);
  Create();
  WorkerHealth before = daemon_->Health();
  EXPECT_FALSE(before.ready);
  EXPECT_TRUE(before.live);
  EXPECT_THAT(before.detail, HasSubstr("not registered yet"));

  thread_ = std::thread([this] { result_ = daemon_->Run(); });
  clock_.AwaitWaiters(1);  // backing off after the refused registration
  EXPECT_FALSE(daemon_->Health().ready);
  clock_.Advance(absl::Seconds(1));
  connection_.AwaitCalls([](const auto& c) { return c.leases_asked_ >= 1; });
  clock_.AwaitWaiters(1);  // idle between lease polls
  const WorkerHealth leasing = daemon_->Health();
  EXPECT_TRUE(leasing.ready) << leasing.detail;
  EXPECT_TRUE(leasing.live);

  // The coordinator stops answering: live (the loop backs off and retries),
  // not ready once the window has passed.
  for (int i = 0; i < 100; ++i) connection_.AddLease(absl::UnavailableError("down"));
  for (int i = 0; i < 8; ++i) {
    clock_.AwaitWaiters(1);
    clock_.Advance(absl::Seconds(10));
  }
  clock_.AwaitWaiters(1);
  const WorkerHealth cut_off = daemon_->Health();
  EXPECT_FALSE(cut_off.ready);
  EXPECT_TRUE(cut_off.live) << cut_off.detail;
  EXPECT_THAT(cut_off.detail, HasSubstr("has not answered"));
  daemon_->Stop();
  thread_.join();
  EXPECT_FALSE(daemon_->Health().ready);

  // Nothing goes round for longer than the live window: not live.
  clock_.Advance(absl::Seconds(301));
  const WorkerHealth wedged = daemon_->Health();
  EXPECT_FALSE(wedged.live);
  EXPECT_THAT(wedged.detail, HasSubstr("has not gone round"));
}

// The hand-back at a stop gets no longer than what is left of the drain time.
TEST_F(WorkerDaemonTest, HandBackAtStopIsBoundedByTheDrainTime) {
  options_.drain_timeout = absl::Seconds(20);
  options_.rpc_timeout = absl::Seconds(60);
  connection_.AddLease(Lease(v1::TASK_KIND_KNN));
  Start();
  runner_->started_.WaitForNotification();
  daemon_->Stop();
  thread_.join();
  const auto timeouts = connection_.Read<std::vector<absl::Duration>>(
      [](const auto& c) { return c.fail_timeouts_; });
  ASSERT_EQ(timeouts.size(), 1u);
  EXPECT_LE(timeouts[0], absl::Seconds(20));
  EXPECT_GE(timeouts[0], absl::Seconds(1));
}

// A head larger than the part size goes up in parts under the task's lease,
// and the completion names the count instead of carrying the bytes; small
// ones stay inline.
TEST_F(WorkerDaemonTest, LargeArtifactsGoUpInPartsBeforeTheCompletion) {
  options_.artifact_part_bytes = 1000;
  std::string head(2500, '\0');
  for (size_t i = 0; i < head.size(); ++i) head[i] = static_cast<char>(i * 7);
  TaskOutcome outcome;
  outcome.results.emplace_back().set_artifact("small head");
  outcome.results.emplace_back().set_artifact(head);
  runner_->result_ = outcome;
  runner_->release_.Notify();
  connection_.AddLease(Lease(v1::TASK_KIND_KNN, 12));
  Start();
  connection_.AwaitCalls([](const auto& c) { return c.completed_.size() == 1; });
  const auto [parts, done] =
      connection_.Read<std::pair<std::vector<v1::PutArtifactPartRequest>, v1::CompleteTaskRequest>>(
          [](const auto& c) { return std::make_pair(c.parts_, c.completed_[0]); });
  ASSERT_EQ(parts.size(), 3u);
  std::string joined;
  for (size_t p = 0; p < parts.size(); ++p) {
    EXPECT_EQ(parts[p].task_id(), 12);
    EXPECT_EQ(parts[p].lease_token(), 99);
    EXPECT_EQ(parts[p].result_index(), 1);
    EXPECT_EQ(parts[p].part(), static_cast<int>(p));
    EXPECT_LE(parts[p].data().size(), 1000u);
    joined += parts[p].data();
  }
  EXPECT_TRUE(joined == head);
  ASSERT_EQ(done.results_size(), 2);
  EXPECT_EQ(done.results(0).artifact(), "small head");
  EXPECT_EQ(done.results(0).artifact_parts(), 0);
  EXPECT_TRUE(done.results(1).artifact().empty());
  EXPECT_EQ(done.results(1).artifact_parts(), 3);
}

TEST_F(WorkerDaemonTest, ForgottenWorkerRegistersAgain) {
  connection_.AddLease(absl::NotFoundError("unknown worker 7"));
  Start();
  connection_.AwaitCalls([](const auto& c) { return c.registrations_ == 2 && c.leases_asked_ >= 2; });
}

TEST(TaskKindLabelTest, ComesFromTheProtoEnum) {
  EXPECT_EQ(TaskKindLabel(v1::TASK_KIND_EXTRACT), "extract");
  EXPECT_EQ(TaskKindLabel(v1::TASK_KIND_LOGREG), "logreg");
  EXPECT_EQ(TaskKindLabel(v1::TASK_KIND_FINETUNE), "finetune");
}

}  // namespace
}  // namespace sslbench::worker
