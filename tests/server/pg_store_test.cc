// Store conformance against a real PostgreSQL server, driven through the
// domain (Coordinator) with an injected clock, so lease expiry needs no sleep.

#include "server/store/pg_store.h"

#include <stdlib.h>

#include <pqxx/pqxx>

#include <condition_variable>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/local_postgres.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/coordinator.h"
#include "server/store/call_deadline.h"
#include "server/store/migrations.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/study_fixtures.h"
#include "tests/testing/test_postgres.h"

namespace sslbench::server {
namespace {

using ::testing::HasSubstr;

class PgStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = testing::FreshDatabase();
    ASSERT_TRUE(db.ok()) << db.status();
    conninfo_ = *db;
    PgStoreOptions options;
    options.conninfo = conninfo_;
    options.max_connections = 16;
    auto store = PgStore::Create(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    policy_.lease_duration = absl::Seconds(30);
    policy_.backoff_base = absl::Seconds(1);
    coordinator_ = std::make_unique<Coordinator>(*store_, clock_, policy_, nullptr);
  }

  int64_t Submit(const v1::StudySpec& spec, const std::string& request_id = "") {
    v1::SubmitStudyRequest request;
    *request.mutable_spec() = spec;
    request.set_request_id(request_id);
    auto response = coordinator_->SubmitStudy(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->study_id() : 0;
  }

  int64_t Register(const std::string& name = "w", const std::string& device = "cpu") {
    v1::RegisterWorkerRequest request;
    request.set_name(name);
    request.set_device(device);
    auto response = coordinator_->RegisterWorker(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response->worker_id();
  }

  v1::LeaseTaskResponse Lease(int64_t worker) {
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker);
    auto response = coordinator_->LeaseTask(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::LeaseTaskResponse();
  }

  // A study of one linear probe with its extractions done: the probe's lease.
  v1::LeaseTaskResponse LeaseLinearProbe(int64_t* study) {
    v1::StudySpec spec = testing::MakeStudy(1, 1);
    spec.mutable_protocols(0)->Clear();
    spec.mutable_protocols(0)->set_name("linear");
    spec.mutable_protocols(0)->mutable_linear();
    *study = Submit(spec);
    const int64_t worker = Register();
    EXPECT_TRUE(CompleteExtract(Lease(worker)).ok());
    EXPECT_TRUE(CompleteExtract(Lease(worker)).ok());
    return Lease(worker);
  }

  // A completion of `lease` with one result of `protocol` for its model and
  // dataset, for the test to fill in.
  static v1::CompleteTaskRequest ProbeCompletion(const v1::LeaseTaskResponse& lease,
                                                 const std::string& protocol) {
    v1::CompleteTaskRequest complete;
    complete.set_task_id(lease.task_id());
    complete.set_lease_token(lease.lease_token());
    auto* result = complete.add_results();
    result->set_model(lease.spec().model().name());
    result->set_dataset(lease.spec().dataset().name());
    result->set_protocol(protocol);
    return complete;
  }

  // Stores one chunk covering `rows` rows and completes the extraction.
  absl::Status CompleteExtract(const v1::LeaseTaskResponse& lease, int rows = 4, int dim = 2) {
    v1::PutFeatureChunkRequest put;
    put.set_task_id(lease.task_id());
    put.set_lease_token(lease.lease_token());
    auto* chunk = put.mutable_chunk();
    chunk->set_cache_key(lease.spec().cache_key());
    chunk->set_chunk_index(0);
    chunk->set_num_rows(rows);
    chunk->set_dim(dim);
    chunk->set_features(std::string(rows * dim * 4, '\0'));
    chunk->set_labels(std::string(rows * 4, '\0'));
    if (auto s = coordinator_->PutFeatureChunk(put); !s.ok()) return s;
    v1::CompleteTaskRequest complete;
    complete.set_task_id(lease.task_id());
    complete.set_lease_token(lease.lease_token());
    complete.set_feature_rows(rows);
    complete.set_feature_dim(dim);
    complete.set_feature_chunks(1);
    return coordinator_->CompleteTask(complete);
  }

  absl::Status CompleteProbe(const v1::LeaseTaskResponse& lease, double top1 = 0.5) {
    v1::CompleteTaskRequest complete = ProbeCompletion(lease, "knn");
    complete.mutable_results(0)->set_variant("cosine k=20 T=0.07");
    complete.mutable_results(0)->set_top1(top1);
    return coordinator_->CompleteTask(complete);
  }

  // Leases and completes everything runnable; returns how many extractions ran.
  int Drain(int64_t worker) {
    int extracts = 0;
    for (;;) {
      auto lease = Lease(worker);
      if (lease.task_id() == 0) return extracts;
      if (lease.spec().kind() == v1::TASK_KIND_EXTRACT) {
        ++extracts;
        EXPECT_TRUE(CompleteExtract(lease).ok());
      } else {
        EXPECT_TRUE(CompleteProbe(lease).ok());
      }
    }
  }

  v1::StudyStatus Status(int64_t study) {
    auto status = coordinator_->GetStudy(study);
    EXPECT_TRUE(status.ok()) << status.status();
    return status.ok() ? *status : v1::StudyStatus();
  }

  std::string conninfo_;
  testing::FakeClock clock_;
  LeasePolicy policy_;
  std::unique_ptr<PgStore> store_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(PgStoreTest, MigrationsAreIdempotentAndConcurrent) {
  EXPECT_TRUE(store_->Migrate().ok());
  EXPECT_TRUE(store_->Migrate().ok());
  // Two more coordinators starting at once against the same database.
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      PgStoreOptions options;
      options.conninfo = conninfo_;
      auto store = PgStore::Create(options);
      results[i] = store.status();
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& s : results) EXPECT_TRUE(s.ok()) << s;
  auto version = store_->SchemaVersion();
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(*version, static_cast<int>(Migrations().size()));
}

TEST_F(PgStoreTest, UnreachableDatabaseIsUnavailable) {
  PgStoreOptions options;
  options.conninfo = "host=127.0.0.1 port=1 dbname=none connect_timeout=2";
  auto store = PgStore::Create(options);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(PgStoreTest, ProbesWaitForTheirExtractions) {
  const int64_t study = Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto first = Lease(worker);
  auto second = Lease(worker);
  EXPECT_EQ(first.spec().kind(), v1::TASK_KIND_EXTRACT);
  EXPECT_EQ(second.spec().kind(), v1::TASK_KIND_EXTRACT);
  // The probe is blocked until both splits are extracted.
  EXPECT_EQ(Lease(worker).task_id(), 0);
  ASSERT_TRUE(CompleteExtract(first).ok());
  EXPECT_EQ(Lease(worker).task_id(), 0);
  ASSERT_TRUE(CompleteExtract(second).ok());
  auto probe = Lease(worker);
  ASSERT_EQ(probe.spec().kind(), v1::TASK_KIND_KNN);
  EXPECT_EQ(Status(study).state(), v1::STUDY_STATE_RUNNING);
  ASSERT_TRUE(CompleteProbe(probe, 0.75).ok());
  EXPECT_EQ(Status(study).state(), v1::STUDY_STATE_SUCCEEDED);
  auto results = coordinator_->ListResults(study);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->results_size(), 1);
  EXPECT_DOUBLE_EQ(results->results(0).top1(), 0.75);
  EXPECT_EQ(results->results(0).study_id(), study);
}

TEST_F(PgStoreTest, ConcurrentLeasingNeverHandsOneTaskToTwoWorkers) {
  // 4 models x 5 datasets = 40 extraction tasks runnable at once.
  Submit(testing::MakeStudy(4, 5));
  constexpr int kThreads = 8;
  std::vector<int64_t> workers;
  for (int t = 0; t < kThreads; ++t) workers.push_back(Register(absl::StrCat("w", t)));
  std::mutex mu;
  std::condition_variable all_leased_once;
  int first_leases = 0;
  std::map<int64_t, int> leased_by;  // task -> worker
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (bool first = true;; first = false) {
        auto lease = Lease(workers[t]);
        std::unique_lock<std::mutex> lock(mu);
        if (lease.task_id() != 0) {
          EXPECT_EQ(leased_by.count(lease.task_id()), 0u) << "task leased twice";
          leased_by[lease.task_id()] = t;
        }
        if (first) {
          // Every worker leases once before any leases again: the leases
          // race, and each worker holds one of the 40 tasks.
          ++first_leases;
          all_leased_once.notify_all();
          all_leased_once.wait(lock, [&] { return first_leases == kThreads; });
        }
        if (lease.task_id() == 0) return;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(leased_by.size(), 40u);
  std::set<int> workers_used;
  for (const auto& [task, worker] : leased_by) workers_used.insert(worker);
  EXPECT_EQ(workers_used.size(), static_cast<size_t>(kThreads));
}

TEST_F(PgStoreTest, ExpiredLeaseIsRequeuedThenFailsAfterMaxAttempts) {
  v1::StudySpec spec = testing::MakeStudy(1, 1);
  spec.set_max_attempts(2);
  const int64_t study = Submit(spec);
  const int64_t worker = Register();
  auto lease = Lease(worker);
  ASSERT_NE(lease.task_id(), 0);
  EXPECT_EQ(lease.attempt(), 1);

  // Within the lease nothing expires; heartbeats extend it.
  clock_.Advance(absl::Seconds(20));
  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker);
  hb.set_task_id(lease.task_id());
  hb.set_lease_token(lease.lease_token());
  ASSERT_TRUE(coordinator_->Heartbeat(hb).ok());
  clock_.Advance(absl::Seconds(20));
  EXPECT_EQ(*coordinator_->ReapExpiredLeases(), 0);

  // The worker goes silent: the lease expires and the task is requeued with
  // backoff, under a new fencing token.
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(*coordinator_->ReapExpiredLeases(), 1);
  const int64_t other = Register("other");
  auto again = Lease(other);
  EXPECT_NE(again.task_id(), lease.task_id()) << "requeued task ignored its backoff";
  clock_.Advance(policy_.backoff_base);
  auto third = Lease(other);
  while (third.task_id() != 0 && third.task_id() != lease.task_id()) third = Lease(other);
  ASSERT_EQ(third.task_id(), lease.task_id());
  EXPECT_EQ(third.attempt(), 2);
  EXPECT_NE(third.lease_token(), lease.lease_token());

  // Second expiry: attempts used up, the task fails, and so do its dependents.
  clock_.Advance(absl::Seconds(31));
  EXPECT_GE(*coordinator_->ReapExpiredLeases(), 1);
  // The other extraction finishes; then nothing is left and the study fails.
  clock_.Advance(absl::Minutes(5));
  Drain(other);
  const v1::StudyStatus status = Status(study);
  EXPECT_EQ(status.state(), v1::STUDY_STATE_FAILED);
  EXPECT_THAT(status.error(), HasSubstr("lease expired"));
  EXPECT_THAT(status.error(), HasSubstr("2 attempts"));
  int failed_probes = 0;
  for (const auto& p : status.progress()) {
    if (p.kind() == v1::TASK_KIND_KNN) failed_probes = p.failed();
  }
  EXPECT_EQ(failed_probes, 1);
}

TEST_F(PgStoreTest, ReaperLeavesALeaseRenewedAfterItWasListed) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto lease = Lease(worker);
  clock_.Advance(absl::Seconds(31));
  auto expired = store_->FindExpiredLeases(clock_.Now(), 10);
  ASSERT_TRUE(expired.ok());
  ASSERT_EQ(expired->size(), 1u);
  // A heartbeat lands between listing and releasing.
  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker);
  hb.set_task_id(lease.task_id());
  hb.set_lease_token(lease.lease_token());
  ASSERT_TRUE(coordinator_->Heartbeat(hb).ok());
  Release release;
  release.error = "lease expired";
  release.only_if_expired_at = clock_.Now();
  EXPECT_EQ(store_->ReleaseTask(lease.task_id(), lease.lease_token(), release, clock_.Now()).code(),
            absl::StatusCode::kFailedPrecondition);
  // The worker still holds its lease.
  EXPECT_TRUE(coordinator_->Heartbeat(hb).ok());
}

TEST_F(PgStoreTest, OverlappingChunksCannotComplete) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto lease = Lease(worker);
  for (int c = 0; c < 2; ++c) {
    v1::PutFeatureChunkRequest put;
    put.set_task_id(lease.task_id());
    put.set_lease_token(lease.lease_token());
    auto* chunk = put.mutable_chunk();
    chunk->set_cache_key(lease.spec().cache_key());
    chunk->set_chunk_index(c);
    chunk->set_row_start(3 * c);  // chunk 1 leaves row 2 out (rows 0-1, then 3-5)
    chunk->set_num_rows(2 + c);
    chunk->set_dim(1);
    chunk->set_features(std::string(4 * (2 + c), '\0'));
    chunk->set_labels(std::string(4 * (2 + c), '\0'));
    ASSERT_TRUE(coordinator_->PutFeatureChunk(put).ok());
  }
  v1::CompleteTaskRequest complete;
  complete.set_task_id(lease.task_id());
  complete.set_lease_token(lease.lease_token());
  complete.set_feature_rows(6);
  complete.set_feature_dim(1);
  complete.set_feature_chunks(2);
  const absl::Status status = coordinator_->CompleteTask(complete);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("do not start where"));
}

// A chunk index no feature set reaches (it once made every worker that
// resumed the extraction size a vector by it), and chunks that break the
// equal-chunks layout, are refused before they are stored.
TEST_F(PgStoreTest, ChunkOutsideTheLayoutIsRefused) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto lease = Lease(worker);
  auto put = [&](int32_t index, int64_t row_start, int32_t rows) {
    v1::PutFeatureChunkRequest request;
    request.set_task_id(lease.task_id());
    request.set_lease_token(lease.lease_token());
    auto* chunk = request.mutable_chunk();
    chunk->set_cache_key(lease.spec().cache_key());
    chunk->set_chunk_index(index);
    chunk->set_row_start(row_start);
    chunk->set_num_rows(rows);
    chunk->set_dim(1);
    chunk->set_features(std::string(4 * rows, '\0'));
    chunk->set_labels(std::string(4 * rows, '\0'));
    return coordinator_->PutFeatureChunk(request);
  };
  const absl::Status poison = put(2147483647, 0, 1);
  EXPECT_EQ(poison.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(poison.message()), HasSubstr("beyond the 1048576 chunks"));
  EXPECT_EQ(put(0, 3, 4).code(), absl::StatusCode::kInvalidArgument);  // chunk 0 not at row 0
  EXPECT_EQ(put(2, 5, 2).code(), absl::StatusCode::kInvalidArgument);  // 5 is not 2 x R
  EXPECT_EQ(put(2, 8, 5).code(), absl::StatusCode::kInvalidArgument);  // 5 rows > R = 4
  EXPECT_TRUE(put(0, 0, 4).ok());
  EXPECT_TRUE(put(1, 4, 4).ok());
  EXPECT_TRUE(put(2, 8, 3).ok());  // a shorter last chunk
  v1::GetFeatureCacheRequest info_request;
  info_request.set_cache_key(lease.spec().cache_key());
  auto info = coordinator_->GetFeatureCache(info_request);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_THAT(std::vector<int>(info->present_chunks().begin(), info->present_chunks().end()),
              ::testing::ElementsAre(0, 1, 2));
}

// A probe fills no cache (its cache key is empty): a chunk sent under its
// lease, with the same empty key, is refused by name. It reached the
// database before, whose foreign key answered INTERNAL (found by
// fuzz_worker_api once probes were within its reach).
TEST_F(PgStoreTest, ChunkUnderAProbesLeaseIsRefused) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  ASSERT_TRUE(CompleteExtract(Lease(worker)).ok());
  ASSERT_TRUE(CompleteExtract(Lease(worker)).ok());
  const auto probe = Lease(worker);
  ASSERT_EQ(probe.spec().kind(), v1::TASK_KIND_KNN);
  ASSERT_TRUE(probe.spec().cache_key().empty());
  v1::PutFeatureChunkRequest request;
  request.set_task_id(probe.task_id());
  request.set_lease_token(probe.lease_token());
  auto* chunk = request.mutable_chunk();
  chunk->set_num_rows(1);
  chunk->set_dim(1);
  chunk->set_features(std::string(4, '\0'));
  chunk->set_labels(std::string(4, '\0'));
  const absl::Status refused = coordinator_->PutFeatureChunk(request);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("is not an extraction"));
  // The probe still completes.
  EXPECT_TRUE(CompleteProbe(probe).ok());
}

TEST_F(PgStoreTest, StaleFencingTokenIsRejected) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t w1 = Register("w1");
  const int64_t w2 = Register("w2");
  auto stale = Lease(w1);
  ASSERT_NE(stale.task_id(), 0);
  clock_.Advance(absl::Seconds(31));
  ASSERT_EQ(*coordinator_->ReapExpiredLeases(), 1);
  clock_.Advance(absl::Minutes(5));  // past any backoff
  v1::LeaseTaskResponse fresh;
  do {
    fresh = Lease(w2);
  } while (fresh.task_id() != 0 && fresh.task_id() != stale.task_id());
  ASSERT_EQ(fresh.task_id(), stale.task_id());

  // The presumed-dead worker comes back: every write it attempts is refused.
  v1::HeartbeatRequest hb;
  hb.set_worker_id(w1);
  hb.set_task_id(stale.task_id());
  hb.set_lease_token(stale.lease_token());
  EXPECT_EQ(coordinator_->Heartbeat(hb).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const absl::Status put = CompleteExtract(stale);
  EXPECT_EQ(put.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(put.message()), HasSubstr("stale token"));
  v1::FailTaskRequest fail;
  fail.set_task_id(stale.task_id());
  fail.set_lease_token(stale.lease_token());
  EXPECT_EQ(coordinator_->FailTask(fail).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The current holder is unaffected, and completing twice is harmless.
  EXPECT_TRUE(CompleteExtract(fresh).ok());
  v1::CompleteTaskRequest again;
  again.set_task_id(fresh.task_id());
  again.set_lease_token(fresh.lease_token());
  EXPECT_TRUE(coordinator_->CompleteTask(again).ok());
}

TEST_F(PgStoreTest, RetryableFailureRequeuesPermanentFailureFailsStudy) {
  const int64_t study = Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto lease = Lease(worker);
  v1::FailTaskRequest fail;
  fail.set_task_id(lease.task_id());
  fail.set_lease_token(lease.lease_token());
  fail.set_error("UNAVAILABLE: coordinator restarting");
  fail.set_retryable(true);
  auto r = coordinator_->FailTask(fail);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), v1::TASK_STATE_PENDING);

  clock_.Advance(absl::Minutes(5));
  auto next = Lease(worker);
  while (next.task_id() != lease.task_id()) next = Lease(worker);
  fail.set_lease_token(next.lease_token());
  fail.set_error("INVALID_ARGUMENT: failed to load model '/models/model0.pt'");
  fail.set_retryable(false);
  r = coordinator_->FailTask(fail);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->state(), v1::TASK_STATE_FAILED);
  // The other extraction still runs; the study fails once nothing is left.
  Drain(worker);
  const auto status = Status(study);
  EXPECT_EQ(status.state(), v1::STUDY_STATE_FAILED);
  EXPECT_THAT(status.error(), HasSubstr("failed to load model"));
}

TEST_F(PgStoreTest, PreemptedWorkerHandsTheTaskBackWithoutUsingAnAttempt) {
  v1::StudySpec spec = testing::MakeStudy(1, 1);
  spec.set_max_attempts(1);
  Submit(spec);
  const int64_t worker = Register();
  auto lease = Lease(worker);
  ASSERT_EQ(lease.attempt(), 1);
  v1::FailTaskRequest fail;
  fail.set_task_id(lease.task_id());
  fail.set_lease_token(lease.lease_token());
  fail.set_error("worker shutting down");
  fail.set_retryable(true);
  fail.set_preempted(true);
  auto r = coordinator_->FailTask(fail);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), v1::TASK_STATE_PENDING);  // despite max_attempts = 1
  // Runnable at once (no backoff), as attempt 1 again.
  auto again = Lease(worker);
  while (again.task_id() != 0 && again.task_id() != lease.task_id()) again = Lease(worker);
  ASSERT_EQ(again.task_id(), lease.task_id());
  EXPECT_EQ(again.attempt(), 1);
}

TEST_F(PgStoreTest, SecondStudyReusesCompleteFeatureCaches) {
  const int64_t first = Submit(testing::MakeStudy(2, 1, "first"));
  const int64_t worker = Register();
  EXPECT_EQ(Drain(worker), 4);
  EXPECT_EQ(Status(first).state(), v1::STUDY_STATE_SUCCEEDED);

  v1::StudySpec spec = testing::MakeStudy(2, 1, "second");
  spec.mutable_protocols(0)->mutable_knn()->set_temperature(0.1);  // new probe, same features
  v1::SubmitStudyRequest request;
  *request.mutable_spec() = spec;
  auto response = coordinator_->SubmitStudy(request);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->reused_features(), 4);
  EXPECT_EQ(response->tasks(), 2);  // probes only
  EXPECT_EQ(Drain(worker), 0);
  EXPECT_EQ(Status(response->study_id()).state(), v1::STUDY_STATE_SUCCEEDED);
}

// A cache found bad is dropped once nothing unfinished uses it; the next
// study extracts it again, under a new generation.
TEST_F(PgStoreTest, DroppedFeatureCacheIsExtractedAgain) {
  const int64_t first = Submit(testing::MakeStudy(1, 1, "first"));
  const int64_t worker = Register();
  std::string train_key;
  for (int i = 0; i < 2; ++i) {
    const v1::LeaseTaskResponse lease = Lease(worker);
    ASSERT_EQ(lease.spec().kind(), v1::TASK_KIND_EXTRACT);
    if (lease.spec().split() == "train") train_key = lease.spec().cache_key();
    ASSERT_TRUE(CompleteExtract(lease).ok());
  }
  ASSERT_FALSE(train_key.empty());
  auto listed = coordinator_->ListFeatureCaches(first);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->caches_size(), 2);
  for (const auto& c : listed->caches()) {
    EXPECT_TRUE(c.complete());
    EXPECT_EQ(c.num_chunks(), 1);
    EXPECT_GT(c.bytes(), 0);
    EXPECT_EQ(c.readers(), 1) << c.split();  // the probe, pending
  }
  v1::GetFeatureCacheRequest get;
  get.set_cache_key(train_key);
  auto old_info = coordinator_->GetFeatureCache(get);
  ASSERT_TRUE(old_info.ok()) << old_info.status();
  EXPECT_NE(old_info->generation(), 0);

  // In use by the pending probe: refused, naming it.
  auto refused = coordinator_->DropFeatureCache(train_key, Caller{"ops", Role::kAdmin});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("unfinished tasks"));
  EXPECT_EQ(Drain(worker), 0);
  EXPECT_EQ(Status(first).state(), v1::STUDY_STATE_SUCCEEDED);

  auto dropped = coordinator_->DropFeatureCache(train_key, Caller{"ops", Role::kAdmin});
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_EQ(dropped->split(), "train");
  EXPECT_EQ(dropped->num_chunks(), 1);
  EXPECT_EQ(coordinator_->GetFeatureCache(get).status().code(), absl::StatusCode::kNotFound);
  v1::GetFeatureChunkRequest chunk;
  chunk.set_cache_key(train_key);
  EXPECT_EQ(coordinator_->GetFeatureChunk(chunk).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->DropFeatureCache(train_key, Caller{"ops", Role::kAdmin}).status().code(),
            absl::StatusCode::kNotFound);

  // The same study again: the train features are extracted anew, the test
  // ones reused.
  v1::SubmitStudyRequest again;
  *again.mutable_spec() = testing::MakeStudy(1, 1, "again");
  auto response = coordinator_->SubmitStudy(again);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->reused_features(), 1);
  EXPECT_EQ(Drain(worker), 1);
  EXPECT_EQ(Status(response->study_id()).state(), v1::STUDY_STATE_SUCCEEDED);
  auto new_info = coordinator_->GetFeatureCache(get);
  ASSERT_TRUE(new_info.ok()) << new_info.status();
  EXPECT_TRUE(new_info->complete());
  EXPECT_NE(new_info->generation(), old_info->generation());
}

// Idle pooled connections are closed (freeing their buffers and server
// processes) and opened again on demand.
TEST_F(PgStoreTest, IdleConnectionsAreClosedAndReopenedOnDemand) {
  pqxx::connection watcher(conninfo_);
  auto backends = [&] {
    pqxx::nontransaction n(watcher);
    return n.exec("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid()")[0][0].as<int>();
  };
  const int64_t study = Submit(testing::MakeStudy(1, 1));
  EXPECT_GE(backends(), 1);
  store_->CloseIdleConnections(absl::Hours(1));  // none idle that long
  EXPECT_GE(backends(), 1);
  store_->CloseIdleConnections(absl::ZeroDuration());
  // A server process leaves pg_stat_activity when it has read the goodbye,
  // just after the client has closed: wait for that, bounded.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (backends() != 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(backends(), 0);
  EXPECT_EQ(Status(study).state(), v1::STUDY_STATE_RUNNING);
  EXPECT_EQ(backends(), 1);
}

TEST_F(PgStoreTest, ConcurrentStudiesShareAnExtractionInProgress) {
  Submit(testing::MakeStudy(1, 1, "a"));
  v1::SubmitStudyRequest request;
  *request.mutable_spec() = testing::MakeStudy(1, 1, "b");
  auto b = coordinator_->SubmitStudy(request);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->tasks(), 1);  // its probe; the extractions belong to "a"
  const int64_t worker = Register();
  EXPECT_EQ(Drain(worker), 2);
  EXPECT_EQ(Status(b->study_id()).state(), v1::STUDY_STATE_SUCCEEDED);
}

TEST_F(PgStoreTest, SubmitIsIdempotentOnRequestId) {
  const auto spec = testing::MakeStudy(1, 1);
  const int64_t a = Submit(spec, "req-1");
  const int64_t b = Submit(spec, "req-1");
  EXPECT_EQ(a, b);
  v1::SubmitStudyRequest other;
  *other.mutable_spec() = testing::MakeStudy(2, 1);
  other.set_request_id("req-1");
  EXPECT_EQ(coordinator_->SubmitStudy(other).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(PgStoreTest, CancelStopsTheStudyAndTellsTheWorker) {
  const int64_t study = Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto lease = Lease(worker);
  auto cancelled = coordinator_->CancelStudy(study);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), v1::STUDY_STATE_CANCELLED);
  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker);
  hb.set_task_id(lease.task_id());
  hb.set_lease_token(lease.lease_token());
  auto response = coordinator_->Heartbeat(hb);
  ASSERT_TRUE(response.ok());
  EXPECT_TRUE(response->cancelled());
  EXPECT_EQ(Lease(worker).task_id(), 0);
  EXPECT_EQ(coordinator_->CancelStudy(424242).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(PgStoreTest, SharedExtractionOutlivesItsStudyOnlyWhileABorrowerRuns) {
  const int64_t a = Submit(testing::MakeStudy(1, 1, "a"));
  const int64_t b = Submit(testing::MakeStudy(1, 1, "b"));  // borrows a's two
  const int64_t worker = Register();
  auto lease = Lease(worker);
  ASSERT_EQ(lease.spec().kind(), v1::TASK_KIND_EXTRACT);
  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker);
  hb.set_task_id(lease.task_id());
  hb.set_lease_token(lease.lease_token());

  // "b" waits for the extractions: cancelling "a" keeps them.
  ASSERT_TRUE(coordinator_->CancelStudy(a).ok());
  auto response = coordinator_->Heartbeat(hb);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_FALSE(response->cancelled());

  // With "b" cancelled too, nothing does: both stop.
  ASSERT_TRUE(coordinator_->CancelStudy(b).ok());
  response = coordinator_->Heartbeat(hb);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(response->cancelled());
  EXPECT_EQ(Lease(worker).task_id(), 0);
  EXPECT_EQ(Status(a).state(), v1::STUDY_STATE_CANCELLED);
  EXPECT_EQ(Status(b).state(), v1::STUDY_STATE_CANCELLED);
}

TEST_F(PgStoreTest, IncompleteExtractionCannotComplete) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto lease = Lease(worker);
  v1::CompleteTaskRequest complete;
  complete.set_task_id(lease.task_id());
  complete.set_lease_token(lease.lease_token());
  complete.set_feature_rows(10);
  complete.set_feature_dim(2);
  complete.set_feature_chunks(1);
  // Chunks the worker reports but the store lacks (as after a database crash
  // lost their asynchronous commits): the extraction runs again.
  const absl::Status missing = coordinator_->CompleteTask(complete);
  EXPECT_EQ(missing.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("holds 0 of the 1 chunks"));
  // Malformed chunks are refused before they reach the table.
  v1::PutFeatureChunkRequest put;
  put.set_task_id(lease.task_id());
  put.set_lease_token(lease.lease_token());
  put.mutable_chunk()->set_cache_key(lease.spec().cache_key());
  put.mutable_chunk()->set_num_rows(2);
  put.mutable_chunk()->set_dim(3);
  put.mutable_chunk()->set_features("short");
  EXPECT_EQ(coordinator_->PutFeatureChunk(put).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PgStoreTest, FeatureChunksRoundTrip) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto lease = Lease(worker);
  std::string features(3 * 5 * 4, '\0');
  for (size_t i = 0; i < features.size(); ++i) features[i] = static_cast<char>(i * 7);
  v1::PutFeatureChunkRequest put;
  put.set_task_id(lease.task_id());
  put.set_lease_token(lease.lease_token());
  auto* chunk = put.mutable_chunk();
  chunk->set_cache_key(lease.spec().cache_key());
  chunk->set_chunk_index(0);
  chunk->set_num_rows(3);
  chunk->set_dim(5);
  chunk->set_features(features);
  chunk->set_labels(std::string("\x01\0\0\0\x02\0\0\0\x03\0\0\0", 12));
  ASSERT_TRUE(coordinator_->PutFeatureChunk(put).ok());
  ASSERT_TRUE(coordinator_->PutFeatureChunk(put).ok());  // idempotent
  v1::GetFeatureCacheRequest info_request;
  info_request.set_cache_key(lease.spec().cache_key());
  auto info = coordinator_->GetFeatureCache(info_request);
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->complete());
  EXPECT_THAT(std::vector<int>(info->present_chunks().begin(), info->present_chunks().end()),
              ::testing::ElementsAre(0));
  v1::GetFeatureChunkRequest get;
  get.set_cache_key(lease.spec().cache_key());
  get.set_chunk_index(0);
  auto got = coordinator_->GetFeatureChunk(get);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->features(), features);
  EXPECT_EQ(got->labels(), chunk->labels());
  get.set_chunk_index(1);
  EXPECT_EQ(coordinator_->GetFeatureChunk(get).status().code(), absl::StatusCode::kNotFound);
}

// A forged or broken worker's results (outside [0, 1], NaN) and non-finite
// features are refused; nothing of them is stored.
TEST_F(PgStoreTest, ForgedResultsAndNonFiniteFeaturesAreRefused) {
  const int64_t study = Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  auto extract = Lease(worker);
  v1::PutFeatureChunkRequest put;
  put.set_task_id(extract.task_id());
  put.set_lease_token(extract.lease_token());
  auto* chunk = put.mutable_chunk();
  chunk->set_cache_key(extract.spec().cache_key());
  chunk->set_num_rows(2);
  chunk->set_dim(2);
  std::vector<float> values = {0.5f, 1.0f, std::nanf(""), 2.0f};
  chunk->set_features(std::string(reinterpret_cast<const char*>(values.data()), 16));
  chunk->set_labels(std::string(8, '\0'));
  const absl::Status nan = coordinator_->PutFeatureChunk(put);
  EXPECT_EQ(nan.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nan.message()), HasSubstr("row 1 holds a non-finite feature"));
  chunk->set_dtype("float16");
  chunk->set_features(std::string("\x00\x3c\x00\x7c\x00\x3c\x00\x3c", 8));  // 1, +inf, 1, 1
  EXPECT_EQ(coordinator_->PutFeatureChunk(put).code(), absl::StatusCode::kInvalidArgument);
  v1::GetFeatureCacheRequest info_request;
  info_request.set_cache_key(extract.spec().cache_key());
  auto info = coordinator_->GetFeatureCache(info_request);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->present_chunks_size(), 0);

  ASSERT_TRUE(CompleteExtract(extract).ok());
  ASSERT_TRUE(CompleteExtract(Lease(worker)).ok());
  v1::CompleteTaskRequest complete = ProbeCompletion(Lease(worker), "knn");
  auto* result = complete.mutable_results(0);
  result->set_top1(7.5);
  const absl::Status forged = coordinator_->CompleteTask(complete);
  EXPECT_EQ(forged.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(forged.message()), HasSubstr("top1 7.5 is not a fraction in [0, 1]"));
  result->set_top1(std::nan(""));
  EXPECT_EQ(coordinator_->CompleteTask(complete).code(), absl::StatusCode::kInvalidArgument);
  result->set_top1(0.5);
  result->add_per_class(-0.1);
  EXPECT_EQ(coordinator_->CompleteTask(complete).code(), absl::StatusCode::kInvalidArgument);
  auto none = coordinator_->ListResults(study);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->results_size(), 0);
  result->clear_per_class();
  result->set_top5(0.9);
  result->set_mean_per_class(0.5);
  // A result filed under another model (or protocol) than the task's.
  result->set_model("model9");
  const absl::Status elsewhere = coordinator_->CompleteTask(complete);
  EXPECT_EQ(elsewhere.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(elsewhere.message()), HasSubstr("does not belong to it"));
  result->set_model("model0");
  result->set_protocol("linear");
  EXPECT_EQ(coordinator_->CompleteTask(complete).code(), absl::StatusCode::kInvalidArgument);
  result->set_protocol("knn");
  v1::CompleteTaskRequest empty = complete;
  empty.clear_results();
  EXPECT_EQ(coordinator_->CompleteTask(empty).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(coordinator_->CompleteTask(complete).ok());
  auto one = coordinator_->ListResults(study);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->results_size(), 1);
}

TEST_F(PgStoreTest, HeadsAreStoredAsArtefacts) {
  int64_t study = 0;
  v1::CompleteTaskRequest complete = ProbeCompletion(LeaseLinearProbe(&study), "linear");
  auto* result = complete.mutable_results(0);
  result->set_variant("linear");
  result->set_subset("full");
  const std::string head = std::string("{\"format\":\"x\"}\n") + std::string(400, '\x7f');
  result->set_artifact(head);
  ASSERT_TRUE(coordinator_->CompleteTask(complete).ok());
  auto results = coordinator_->ListResults(study);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->results_size(), 1);
  const auto& stored = results->results(0);
  EXPECT_TRUE(stored.artifact().empty()) << "heads are not inlined in results";
  ASSERT_GT(stored.artifact_id(), 0);
  auto artifact = coordinator_->GetArtifact(stored.artifact_id());
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(artifact->data(), head);
  EXPECT_EQ(artifact->study_id(), study);
  EXPECT_EQ(artifact->name(), "model0/dataset0/linear/linear/full");
  EXPECT_EQ(coordinator_->GetArtifact(999).status().code(), absl::StatusCode::kNotFound);
}

// A head too large for one message goes up in parts under the lease; the
// completion joins them in order, refuses while one is missing, and the
// artefact is read back in pages (whole only up to 32 MiB).
TEST_F(PgStoreTest, LargeHeadsGoUpInPartsAndAreReadInPages) {
  int64_t study = 0;
  const v1::LeaseTaskResponse lease = LeaseLinearProbe(&study);
  ASSERT_GT(lease.task_id(), 0);
  std::string head((33 << 20) + 5, '\0');
  for (size_t i = 0; i < head.size(); i += 997) head[i] = static_cast<char>(i % 253 + 1);
  const int64_t part_bytes = int64_t{16} << 20;
  auto part = [&](int index, std::string data, int64_t token) {
    v1::PutArtifactPartRequest r;
    r.set_task_id(lease.task_id());
    r.set_lease_token(token);
    r.set_result_index(0);
    r.set_part(index);
    r.set_data(std::move(data));
    return coordinator_->PutArtifactPart(r);
  };
  auto slice = [&](int index) { return head.substr(index * part_bytes, part_bytes); };
  EXPECT_EQ(part(0, slice(0), lease.lease_token() + 1).code(),
            absl::StatusCode::kFailedPrecondition);  // not the lease's token
  EXPECT_EQ(part(32, "x", lease.lease_token()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(part(0, std::string(part_bytes + 1, 'x'), lease.lease_token()).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(part(0, "a first try, replaced", lease.lease_token()).ok());
  ASSERT_TRUE(part(2, slice(2), lease.lease_token()).ok());
  ASSERT_TRUE(part(0, slice(0), lease.lease_token()).ok());

  v1::CompleteTaskRequest complete = ProbeCompletion(lease, "linear");
  complete.mutable_results(0)->set_variant("linear");
  complete.mutable_results(0)->set_artifact_parts(3);
  const absl::Status missing = coordinator_->CompleteTask(complete);
  EXPECT_EQ(missing.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("2 of the 3 artefact parts"));
  EXPECT_EQ(coordinator_->ListResults(study)->results_size(), 0) << "nothing of it stored";
  ASSERT_TRUE(part(1, slice(1), lease.lease_token()).ok());
  ASSERT_TRUE(coordinator_->CompleteTask(complete).ok());

  auto results = coordinator_->ListResults(study);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->results_size(), 1);
  const int64_t id = results->results(0).artifact_id();
  ASSERT_GT(id, 0);
  EXPECT_EQ(results->results(0).artifact_parts(), 0);
  const auto whole = coordinator_->GetArtifact(id);
  EXPECT_EQ(whole.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(whole.status().message()), HasSubstr("read it in pages"));
  std::string read;
  for (int pages = 0; pages < 10 && read.size() < head.size(); ++pages) {
    auto page = coordinator_->GetArtifact(id, static_cast<int64_t>(read.size()), 10 << 20);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_EQ(page->offset(), static_cast<int64_t>(read.size()));
    EXPECT_EQ(page->total_bytes(), static_cast<int64_t>(head.size()));
    EXPECT_EQ(page->name(), "model0/dataset0/linear/linear");
    ASSERT_FALSE(page->data().empty());
    read += page->data();
  }
  EXPECT_TRUE(read == head) << "joined in part order";
  auto past = coordinator_->GetArtifact(id, static_cast<int64_t>(head.size()) + 9, 100);
  ASSERT_TRUE(past.ok());
  EXPECT_TRUE(past->data().empty());
  EXPECT_EQ(coordinator_->GetArtifact(id, -1, 100).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PgStoreTest, CheckpointsAreFencedAndReplaced) {
  v1::StudySpec spec = testing::MakeStudy(1, 1);
  spec.mutable_protocols(0)->Clear();
  spec.mutable_protocols(0)->set_name("finetune");
  Submit(spec);
  const int64_t worker = Register();
  auto lease = Lease(worker);
  ASSERT_EQ(lease.spec().kind(), v1::TASK_KIND_FINETUNE);
  v1::GetCheckpointRequest get;
  get.set_task_id(lease.task_id());
  EXPECT_EQ(coordinator_->GetCheckpoint(get).status().code(), absl::StatusCode::kNotFound);
  v1::PutCheckpointRequest put;
  put.set_task_id(lease.task_id());
  put.set_lease_token(lease.lease_token());
  put.set_step(10);
  put.set_data("state-at-10");
  ASSERT_TRUE(coordinator_->PutCheckpoint(put).ok());
  put.set_step(20);
  put.set_data("state-at-20");
  ASSERT_TRUE(coordinator_->PutCheckpoint(put).ok());
  auto got = coordinator_->GetCheckpoint(get);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->step(), 20);
  EXPECT_EQ(got->data(), "state-at-20");
  // After expiry the old holder can no longer overwrite it; the new one reads it.
  clock_.Advance(absl::Seconds(31));
  ASSERT_EQ(*coordinator_->ReapExpiredLeases(), 1);
  put.set_data("zombie");
  EXPECT_EQ(coordinator_->PutCheckpoint(put).code(), absl::StatusCode::kFailedPrecondition);
  clock_.Advance(absl::Minutes(5));
  auto again = Lease(worker);
  ASSERT_EQ(again.task_id(), lease.task_id());
  EXPECT_EQ(coordinator_->GetCheckpoint(get)->data(), "state-at-20");
}

// A store on a cluster of its own, which a test may stop and restart whatever
// server the other tests use (SSLBENCH_TEST_PG may point at one it cannot
// restart).
class OwnClusterTest : public PgStoreTest {
 protected:
  void SetUp() override {
    ASSERT_NE(mkdtemp(dir_), nullptr);
    LocalPostgresOptions cluster_options;
    cluster_options.dir = dir_;
    cluster_options.durable = false;
    absl::StatusOr<std::unique_ptr<LocalPostgres>> started =
        LocalPostgres::Start(cluster_options);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = *std::move(started);
    PgStoreOptions options;
    options.conninfo = cluster_->ConnInfo("postgres");
    options.max_connections = 4;
    auto store = PgStore::Create(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    policy_.lease_duration = absl::Seconds(30);
    policy_.backoff_base = absl::Seconds(1);
    policy_.outage_bridge_after = absl::Seconds(10);
    coordinator_ = std::make_unique<Coordinator>(*store_, clock_, policy_, nullptr);
  }
  void TearDown() override {
    coordinator_.reset();
    store_.reset();
    cluster_.reset();
    std::filesystem::remove_all(dir_);
  }

  char dir_[64] = "/tmp/sslbench-restart-pg-XXXXXX";
  std::unique_ptr<LocalPostgres> cluster_;
};

TEST_F(OwnClusterTest, SurvivesADatabaseRestart) {
  const int64_t study = Submit(testing::MakeStudy(1, 1));
  ASSERT_TRUE(cluster_->Restart().ok());
  // Pooled connections died with the server; the store reconnects.
  EXPECT_EQ(Status(study).state(), v1::STUDY_STATE_RUNNING);
  ASSERT_TRUE(cluster_->Stop().ok());
  EXPECT_EQ(coordinator_->GetStudy(study).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(cluster_->Restart().ok());
  EXPECT_EQ(Status(study).state(), v1::STUDY_STATE_RUNNING);
}

// PostgreSQL down for 40 s (longer than the 30 s lease): the worker's
// heartbeats fail meanwhile, but the reaper does not take its task when the
// database returns; the lease then expires as usual when the worker is gone.
TEST_F(OwnClusterTest, LeasesOutliveADatabaseOutage) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t worker = Register();
  ASSERT_TRUE(coordinator_->ReapExpiredLeases().ok());
  const v1::LeaseTaskResponse lease = Lease(worker);
  ASSERT_NE(lease.task_id(), 0);
  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker);
  hb.set_task_id(lease.task_id());
  hb.set_lease_token(lease.lease_token());

  ASSERT_TRUE(cluster_->Stop().ok());
  for (int i = 0; i < 20; ++i) {
    clock_.Advance(absl::Seconds(2));
    EXPECT_EQ(coordinator_->ReapExpiredLeases().status().code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(coordinator_->Heartbeat(hb).status().code(), absl::StatusCode::kUnavailable);
  }
  ASSERT_TRUE(cluster_->Restart().ok());
  auto reaped = coordinator_->ReapExpiredLeases();
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 0) << "a lease expired during the database's outage";
  auto beat = coordinator_->Heartbeat(hb);
  ASSERT_TRUE(beat.ok()) << beat.status();
  EXPECT_FALSE(beat->cancelled());

  // The worker now goes silent while the reaper runs: its lease expires, and
  // the task comes back on its first attempt's count (no attempt was lost to
  // the outage).
  int released = 0;
  for (int i = 0; i < 16; ++i) {
    clock_.Advance(absl::Seconds(2));
    released += *coordinator_->ReapExpiredLeases();
  }
  EXPECT_EQ(released, 1);
  clock_.Advance(absl::Minutes(1));
  v1::LeaseTaskResponse again;
  do {
    again = Lease(worker);
  } while (again.task_id() != 0 && again.task_id() != lease.task_id());
  ASSERT_EQ(again.task_id(), lease.task_id());
  EXPECT_EQ(again.attempt(), 2);
}

// Tokens come from a CSPRNG: distinct, far apart, and a refusal never tells
// the caller the token that holds.
TEST_F(PgStoreTest, FencingTokensAreUnguessableAndNeverEchoed) {
  Submit(testing::MakeStudy(4, 2));
  const int64_t worker = Register();
  std::vector<v1::LeaseTaskResponse> leases;
  for (int i = 0; i < 16; ++i) {
    leases.push_back(Lease(worker));
    ASSERT_NE(leases.back().task_id(), 0);
  }
  for (size_t i = 0; i < leases.size(); ++i) {
    EXPECT_GT(leases[i].lease_token(), 0);
    for (size_t j = 0; j < i; ++j) {
      // Sequential or nearby tokens would be guessed in a few tries.
      const uint64_t a = static_cast<uint64_t>(leases[i].lease_token());
      const uint64_t b = static_cast<uint64_t>(leases[j].lease_token());
      EXPECT_GT(a > b ? a - b : b - a, uint64_t{1} << 32) << i << " " << j;
    }
  }
  // A caller guessing: the refusal names neither token.
  v1::FailTaskRequest fail;
  fail.set_task_id(leases[0].task_id());
  fail.set_lease_token(leases[0].lease_token() ^ 1);
  const absl::Status refused = coordinator_->FailTask(fail).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("stale token"));
  EXPECT_THAT(std::string(refused.message()),
              ::testing::Not(HasSubstr(absl::StrCat(leases[0].lease_token()))));
  EXPECT_THAT(std::string(refused.message()),
              ::testing::Not(HasSubstr(absl::StrCat(leases[0].lease_token() ^ 1))));
}

// A heartbeat must come from the worker that holds the lease, token or not.
// A call's deadline bounds its database work: a lease stuck behind a lock
// ends when the caller's deadline passes (statement_timeout), not when the
// lock is released, and the connection serves the next call normally.
TEST_F(PgStoreTest, CallDeadlineBoundsTheDatabaseWork) {
  const int64_t worker = Register();
  pqxx::connection holder(conninfo_);
  pqxx::work lock(holder);
  lock.exec0("LOCK TABLE workers IN ACCESS EXCLUSIVE MODE");
  auto lease = [&] {
    return store_->LeaseTasks(worker, clock_.Now(), clock_.Now() + absl::Seconds(30), {}, 4);
  };
  auto leased = std::async(std::launch::async, [&] {
    CallDeadline scope(absl::Now() + absl::Milliseconds(300));
    return lease();
  });
  // Without the deadline in SQL, the lease waits as long as the lock is held.
  const bool ended = leased.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  lock.abort();
  ASSERT_TRUE(ended) << "the lease outlived its deadline by 30 s";
  const auto stuck = leased.get();
  EXPECT_EQ(stuck.status().code(), absl::StatusCode::kDeadlineExceeded) << stuck.status();
  EXPECT_THAT(std::string(stuck.status().message()), HasSubstr("deadline"));
  // A deadline already past never reaches the database.
  {
    CallDeadline scope(absl::Now() - absl::Milliseconds(1));
    EXPECT_EQ(lease().status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  // Calls with and without a deadline go on working.
  {
    CallDeadline scope(absl::Now() + absl::Seconds(10));
    EXPECT_TRUE(lease().ok());
  }
  EXPECT_TRUE(lease().ok());
}

TEST_F(PgStoreTest, HeartbeatFromAnotherWorkerIsRefused) {
  Submit(testing::MakeStudy(1, 1));
  const int64_t holder = Register("holder");
  const int64_t intruder = Register("intruder");
  const v1::LeaseTaskResponse lease = Lease(holder);
  ASSERT_NE(lease.task_id(), 0);
  v1::HeartbeatRequest hb;
  hb.set_worker_id(intruder);
  hb.set_task_id(lease.task_id());
  hb.set_lease_token(lease.lease_token());
  const absl::Status refused = coordinator_->Heartbeat(hb).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("not leased to worker"));
  hb.set_worker_id(holder);
  EXPECT_TRUE(coordinator_->Heartbeat(hb).ok());
}

}  // namespace
}  // namespace sslbench::server

namespace sslbench::server {
namespace {

// A worker that holds a probe's train features on its disk is leased that
// probe before older runnable ones.
TEST_F(PgStoreTest, ProbesGoFirstToWorkersThatCacheTheirFeatures) {
  Submit(testing::MakeStudy(3, 1));
  const int64_t worker = Register();
  // Run the six extractions, and note each probe's train features.
  std::vector<std::string> train_keys;
  for (;;) {
    auto lease = Lease(worker);
    ASSERT_NE(lease.task_id(), 0);
    if (lease.spec().kind() != v1::TASK_KIND_EXTRACT) {
      // The oldest probe (model0); hand it back untouched.
      v1::FailTaskRequest back;
      back.set_task_id(lease.task_id());
      back.set_lease_token(lease.lease_token());
      back.set_preempted(true);
      back.set_retryable(true);
      ASSERT_TRUE(coordinator_->FailTask(back).ok());
      EXPECT_EQ(lease.spec().model().name(), "model0");
      break;
    }
    ASSERT_TRUE(CompleteExtract(lease).ok());
    if (lease.spec().split() == "train") train_keys.push_back(lease.spec().cache_key());
  }
  ASSERT_EQ(train_keys.size(), 3u);
  v1::LeaseTaskRequest request;
  request.set_worker_id(worker);
  request.add_cached_feature_keys(std::string(64, 'f'));  // held, but not needed
  request.add_cached_feature_keys(train_keys[2]);         // model2's
  request.add_cached_feature_keys("not a key");           // ignored
  auto preferred = coordinator_->LeaseTask(request);
  ASSERT_TRUE(preferred.ok()) << preferred.status();
  EXPECT_EQ(preferred->spec().model().name(), "model2");
  EXPECT_EQ(preferred->spec().train_cache_key(), train_keys[2]);
  // Without a preference, the oldest again.
  EXPECT_EQ(Lease(worker).spec().model().name(), "model0");
}

// A study that reserves extraction for GPU workers: a CPU worker gets
// nothing while only extractions are runnable, a CUDA worker gets them, and
// the probes then go to either.
TEST_F(PgStoreTest, GpuTaskKindsGoOnlyToGpuWorkers) {
  v1::StudySpec spec = testing::MakeStudy(1, 1);
  spec.add_gpu_task_kinds(v1::TASK_KIND_EXTRACT);
  Submit(spec);
  const int64_t cpu = Register("cpu-worker", "cpu");
  const int64_t gpu = Register("gpu-worker", "cuda:0");
  EXPECT_EQ(Lease(cpu).task_id(), 0);
  auto first = Lease(gpu);
  auto second = Lease(gpu);
  ASSERT_EQ(first.spec().kind(), v1::TASK_KIND_EXTRACT);
  ASSERT_EQ(second.spec().kind(), v1::TASK_KIND_EXTRACT);
  ASSERT_TRUE(CompleteExtract(first).ok());
  ASSERT_TRUE(CompleteExtract(second).ok());
  EXPECT_EQ(Lease(cpu).spec().kind(), v1::TASK_KIND_KNN);

  // An unknown kind is refused at submit.
  v1::StudySpec bad = testing::MakeStudy(1, 1);
  bad.add_gpu_task_kinds(static_cast<v1::TaskKind>(42));
  v1::SubmitStudyRequest request;
  *request.mutable_spec() = bad;
  EXPECT_EQ(coordinator_->SubmitStudy(request).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sslbench::server

namespace sslbench::server {
namespace {

// Batches: leases in one call, each under its own token; completions in one
// call, each checked against its own token, a refused one writing nothing.
TEST_F(PgStoreTest, BatchedLeasesAndCompletionsKeepFencingExact) {
  const int64_t study = Submit(testing::MakeStudy(3, 1));  // 6 extractions, 3 probes
  const int64_t worker = Register();
  v1::LeaseTasksRequest lease;
  lease.set_worker_id(worker);
  lease.set_max_tasks(0);
  EXPECT_EQ(coordinator_->LeaseTasks(lease).status().code(), absl::StatusCode::kInvalidArgument);
  lease.set_max_tasks(4);
  auto first = coordinator_->LeaseTasks(lease);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->leases_size(), 4);
  lease.set_max_tasks(10);
  auto rest = coordinator_->LeaseTasks(lease);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->leases_size(), 2) << "probes wait for their extractions";
  std::set<int64_t> ids, tokens;
  for (const auto* batch : {&*first, &*rest}) {
    for (const auto& l : batch->leases()) {
      EXPECT_EQ(l.spec().kind(), v1::TASK_KIND_EXTRACT);
      ids.insert(l.task_id());
      tokens.insert(l.lease_token());
    }
  }
  EXPECT_EQ(ids.size(), 6u);
  EXPECT_EQ(tokens.size(), 6u);

  // Complete all six, one of them with a stale token.
  for (const auto* batch : {&*first, &*rest}) {
    for (const auto& l : batch->leases()) {
      v1::PutFeatureChunkRequest put;
      put.set_task_id(l.task_id());
      put.set_lease_token(l.lease_token());
      put.mutable_chunk()->set_cache_key(l.spec().cache_key());
      put.mutable_chunk()->set_num_rows(4);
      put.mutable_chunk()->set_dim(2);
      put.mutable_chunk()->set_features(std::string(32, '\0'));
      put.mutable_chunk()->set_labels(std::string(16, '\0'));
      ASSERT_TRUE(coordinator_->PutFeatureChunk(put).ok());
    }
  }
  v1::CompleteTasksRequest complete;
  for (const auto* batch : {&*first, &*rest}) {
    for (const auto& l : batch->leases()) {
      auto* c = complete.add_tasks();
      c->set_task_id(l.task_id());
      c->set_lease_token(l.lease_token());
      c->set_feature_rows(4);
      c->set_feature_dim(2);
      c->set_feature_chunks(1);
    }
  }
  complete.mutable_tasks(2)->set_lease_token(complete.tasks(2).lease_token() ^ 1);
  auto outcomes = coordinator_->CompleteTasks(complete);
  ASSERT_TRUE(outcomes.ok()) << outcomes.status();
  ASSERT_EQ(outcomes->outcomes_size(), 6);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(outcomes->outcomes(i).task_id(), complete.tasks(i).task_id());
    EXPECT_EQ(outcomes->outcomes(i).code(),
              i == 2 ? static_cast<int>(absl::StatusCode::kFailedPrecondition) : 0)
        << i << ": " << outcomes->outcomes(i).message();
  }
  // Two probes are ready now (their extractions done); the third waits for
  // the extraction whose completion was refused, which is still leased.
  lease.set_max_tasks(10);
  auto probes = coordinator_->LeaseTasks(lease);
  ASSERT_TRUE(probes.ok());
  EXPECT_EQ(probes->leases_size(), 2);
  complete.mutable_tasks(2)->set_lease_token(complete.tasks(2).lease_token() ^ 1);
  v1::CompleteTasksRequest again;
  *again.add_tasks() = complete.tasks(2);
  ASSERT_EQ(coordinator_->CompleteTasks(again)->outcomes(0).code(), 0);
  EXPECT_EQ(coordinator_->LeaseTasks(lease)->leases_size(), 1);
  EXPECT_EQ(Status(study).state(), v1::STUDY_STATE_RUNNING);
}

// A lease scans the ready queue from where the previous scan found its first
// ready task, not from the head (whose dead entries every scan would step
// over); a task requeued below that mark is still leased: at once when the
// scan from the mark comes up short, and within a second otherwise.
using StoreLease = ::sslbench::server::Lease;  // the fixture's Lease() hides it
TEST_F(PgStoreTest, TasksRequeuedBelowTheScanMarkAreStillLeased) {
  Submit(testing::MakeStudy(3, 1));  // 6 extractions, then probes waiting for them
  const int64_t worker = Register();
  const absl::Time deadline = clock_.Now() + absl::Minutes(5);
  auto lease = [&](int n) {
    auto leased = store_->LeaseTasks(worker, clock_.Now(), deadline, {}, n);
    EXPECT_TRUE(leased.ok()) << leased.status();
    std::vector<StoreLease> out = leased.ok() ? *std::move(leased) : std::vector<StoreLease>{};
    return out;
  };
  auto requeue = [&](const StoreLease& l) {
    Release release;
    release.not_before = clock_.Now();
    release.error = "requeued by the test";
    ASSERT_TRUE(store_->ReleaseTask(l.task_id, l.token, release, clock_.Now()).ok());
  };
  std::vector<StoreLease> first;
  for (int i = 0; i < 3; ++i) {
    auto one = lease(1);
    ASSERT_EQ(one.size(), 1u);
    first.push_back(one[0]);
  }
  ASSERT_LT(first[0].task_id, first[1].task_id);
  ASSERT_LT(first[1].task_id, first[2].task_id);
  requeue(first[0]);
  // The scan starts at the mark: the next task after it comes first...
  auto next = lease(1);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_GT(next[0].task_id, first[2].task_id);
  // ...and a second later a scan from the head finds the requeued task.
  clock_.Advance(absl::Milliseconds(1100));
  auto again = lease(1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].task_id, first[0].task_id);

  // Every ready task leased (the probes wait for their extractions), at
  // the same instant: the mark now lies beyond the requeued task.
  auto rest = lease(50);
  ASSERT_EQ(rest.size(), 6u - 4u);
  requeue(first[1]);
  // The scan from the mark finds nothing; the one from the head finds it.
  auto below = lease(50);
  ASSERT_EQ(below.size(), 1u);
  EXPECT_EQ(below[0].task_id, first[1].task_id);
  EXPECT_TRUE(lease(50).empty());
}

// `blocked_deps` says a task is ready; the dependency guard behind it is
// asked only of the rows a lease has locked. A probe whose count says ready
// while an extraction it reads is unfinished is leased by none of the three
// lease statements (a first lease in a transaction, a lease alone, a lease
// of preferred keys), and is leased once its count is true again and its
// extractions are done.
TEST_F(PgStoreTest, DependencyGuardHoldsWhereTheCountSaysReady) {
  Submit(testing::MakeStudy(1, 1));  // 2 extractions, 1 probe reading both
  pqxx::connection sql(conninfo_);
  std::string probe_key;
  {
    pqxx::work w(sql);
    const auto r = w.exec(
        "UPDATE tasks SET blocked_deps = 0 WHERE kind = 'KNN' RETURNING input_key, id");
    ASSERT_EQ(r.size(), 1u);
    probe_key = r[0][0].as<std::string>();
    w.commit();
  }
  const absl::Time deadline = clock_.Now() + absl::Minutes(5);
  auto lease = [&](int64_t worker, const std::vector<std::string>& keys) {
    auto leased = store_->LeaseTasks(worker, clock_.Now(), deadline, keys, 50);
    EXPECT_TRUE(leased.ok()) << leased.status();
    std::vector<StoreLease> out = leased.ok() ? *std::move(leased) : std::vector<StoreLease>{};
    for (const auto& l : out) EXPECT_EQ(l.spec.kind(), v1::TASK_KIND_EXTRACT);
    return out;
  };
  const int64_t a = Register("a");
  // The worker's first lease: its device is not known yet, a transaction.
  auto extracts = lease(a, {});
  ASSERT_EQ(extracts.size(), 2u);
  Release release;
  release.not_before = clock_.Now();
  release.error = "requeued by the test";
  ASSERT_TRUE(store_->ReleaseTask(extracts[0].task_id, extracts[0].token, release,
                                  clock_.Now()).ok());
  // A lease alone (the device is known now).
  auto again = lease(a, {});
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].task_id, extracts[0].task_id);
  // Preferred keys: the probe's own input.
  const int64_t b = Register("b");
  EXPECT_TRUE(lease(b, {probe_key}).empty());
  EXPECT_TRUE(lease(b, {}).empty());

  {
    pqxx::work w(sql);
    w.exec("UPDATE tasks SET blocked_deps = 2 WHERE kind = 'KNN'");
    w.commit();
  }
  for (const StoreLease& l : {extracts[1], again[0]}) {
    v1::LeaseTaskResponse response;
    response.set_task_id(l.task_id);
    response.set_lease_token(l.token);
    *response.mutable_spec() = l.spec;
    ASSERT_TRUE(CompleteExtract(response).ok());
  }
  auto probe = store_->LeaseTasks(b, clock_.Now(), deadline, {probe_key}, 50);
  ASSERT_TRUE(probe.ok()) << probe.status();
  ASSERT_EQ(probe->size(), 1u);
  EXPECT_EQ((*probe)[0].spec.kind(), v1::TASK_KIND_KNN);
}

// A worker's row gone (a restored database) after this coordinator learnt
// its device: the lease statement that runs alone leases nothing and says
// so, as the one in a transaction does.
TEST_F(PgStoreTest, WorkerWhoseRowIsGoneLeasesNothing) {
  Submit(testing::MakeStudy(2, 2));  // 8 extractions ready
  const int64_t worker = Register();
  const absl::Time deadline = clock_.Now() + absl::Minutes(5);
  auto first = store_->LeaseTasks(worker, clock_.Now(), deadline, {}, 1);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->size(), 1u);
  pqxx::connection sql(conninfo_);
  pqxx::work w(sql);
  w.exec_params("DELETE FROM workers WHERE id = $1", worker);
  w.commit();
  for (int i = 0; i < 2; ++i) {  // alone, then in a transaction (the device forgotten)
    auto leased = store_->LeaseTasks(worker, clock_.Now(), deadline, {}, 4);
    EXPECT_EQ(leased.status().code(), absl::StatusCode::kNotFound) << leased.status();
  }
  pqxx::nontransaction n(sql);
  EXPECT_EQ(n.exec1("SELECT count(*) FROM tasks WHERE state = 'LEASED'")[0].as<int>(), 1);
}

// A task whose count says ready while a dependency is unfinished (what the
// guard is for) must not hold up the queue: the lease that locks it sets
// its count right and goes on, even one task at a time.
TEST_F(PgStoreTest, AMiscountedTaskDoesNotHoldUpSingleLeases) {
  Submit(testing::MakeStudy(1, 1));  // 2 extractions, then the probe
  const int64_t worker = Register();
  const absl::Time deadline = clock_.Now() + absl::Minutes(5);
  auto lease = [&]() {
    auto leased = store_->LeaseTasks(worker, clock_.Now(), deadline, {}, 1);
    EXPECT_TRUE(leased.ok()) << leased.status();
    std::vector<StoreLease> out = leased.ok() ? *std::move(leased) : std::vector<StoreLease>{};
    return out;
  };
  // Both extractions leased, and left running: the probe waits for them.
  ASSERT_EQ(lease().size(), 1u);
  ASSERT_EQ(lease().size(), 1u);
  pqxx::connection sql(conninfo_);
  int64_t probe = 0;
  {
    pqxx::work w(sql);
    probe = w.exec1("UPDATE tasks SET blocked_deps = 0 WHERE kind = 'KNN' RETURNING id")[0]
                .as<int64_t>();
    w.commit();
  }
  // Another study's extractions queue behind the probe.
  v1::StudySpec other = testing::MakeStudy(1, 1, "other");
  other.mutable_models(0)->set_sha256(std::string(63, 'b') + "0");
  Submit(other);
  clock_.Advance(absl::Milliseconds(1100));  // a scan from the head, where the probe lies
  auto next = lease();
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].spec.kind(), v1::TASK_KIND_EXTRACT);
  EXPECT_GT(next[0].task_id, probe);
  pqxx::nontransaction n(sql);
  EXPECT_EQ(n.exec_params1("SELECT blocked_deps FROM tasks WHERE id = $1", probe)[0].as<int>(), 2);
  // The worker's row names the task it now works on.
  EXPECT_EQ(n.exec_params1("SELECT current_task FROM workers WHERE id = $1", worker)[0]
                .as<int64_t>(),
            next[0].task_id);
}

}  // namespace
}  // namespace sslbench::server
