// The coordinator's gRPC surface over loopback (port 0), with a real
// PostgreSQL behind it.

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/coordinator_server.h"
#include "sslbench/v1/client_api.grpc.pb.h"
#include "sslbench/v1/worker_api.grpc.pb.h"
#include "tests/server/grpc_test_util.h"
#include "tests/testing/http_get.h"
#include "tests/testing/study_fixtures.h"
#include "tests/testing/test_postgres.h"

namespace sslbench::server {
namespace {

using ::testing::HasSubstr;

class CoordinatorGrpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::StartTestCoordinator();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto channel = testing::ChannelTo(*server_);
    studies_ = v1::StudyService::NewStub(channel);
    workers_ = v1::WorkerService::NewStub(channel);
  }

  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<v1::StudyService::Stub> studies_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

TEST_F(CoordinatorGrpcTest, ErrorsCarryCodesAndFieldNames) {
  grpc::ClientContext c1;
  v1::GetStudyRequest get;
  get.set_study_id(999);
  v1::StudyStatus status;
  EXPECT_EQ(studies_->GetStudy(&c1, get, &status).error_code(), grpc::NOT_FOUND);

  grpc::ClientContext c2;
  v1::SubmitStudyRequest submit;
  *submit.mutable_spec() = testing::MakeStudy(1, 1);
  submit.mutable_spec()->mutable_models(0)->set_channels(5);
  v1::SubmitStudyResponse response;
  const grpc::Status s = studies_->SubmitStudy(&c2, submit, &response);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("models[0].channels"));
}

// Oversized requests are refused before anything is stored.
TEST_F(CoordinatorGrpcTest, OversizedSubmitAndWorkerNameAreRefused) {
  grpc::ClientContext c1;
  v1::SubmitStudyRequest submit;
  *submit.mutable_spec() = testing::MakeStudy(2, 2);
  submit.mutable_spec()->mutable_datasets(1)->set_root("/" + std::string(2 << 20, 'd'));
  v1::SubmitStudyResponse submitted;
  const grpc::Status s = studies_->SubmitStudy(&c1, submit, &submitted);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("bytes"));
  grpc::ClientContext c2;
  v1::ListWorkersResponse listed;
  ASSERT_TRUE(studies_->ListWorkers(&c2, v1::ListWorkersRequest(), &listed).ok());

  grpc::ClientContext c3;
  v1::RegisterWorkerRequest reg;
  reg.set_name(std::string(5 << 20, 'w'));
  v1::RegisterWorkerResponse registered;
  const grpc::Status r = workers_->RegisterWorker(&c3, reg, &registered);
  EXPECT_EQ(r.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(r.error_message(), HasSubstr("name: 5242880 bytes"));
  grpc::ClientContext c4;
  v1::ListWorkersResponse after;
  ASSERT_TRUE(studies_->ListWorkers(&c4, v1::ListWorkersRequest(), &after).ok());
  EXPECT_EQ(after.workers_size(), listed.workers_size());
}

TEST_F(CoordinatorGrpcTest, WatchStreamsUntilTheStudyEnds) {
  grpc::ClientContext submit_context;
  v1::SubmitStudyRequest submit;
  *submit.mutable_spec() = testing::MakeStudy(1, 1);
  v1::SubmitStudyResponse submitted;
  ASSERT_TRUE(studies_->SubmitStudy(&submit_context, submit, &submitted).ok());

  grpc::ClientContext watch_context;
  v1::WatchStudyRequest watch;
  watch.set_study_id(submitted.study_id());
  watch.set_interval_ms(50);
  auto reader = studies_->WatchStudy(&watch_context, watch);
  v1::StudyStatus first;
  ASSERT_TRUE(reader->Read(&first));
  EXPECT_EQ(first.state(), v1::STUDY_STATE_RUNNING);

  // Cancelling ends the stream with the final state.
  grpc::ClientContext cancel_context;
  v1::CancelStudyRequest cancel;
  cancel.set_study_id(submitted.study_id());
  v1::StudyStatus after_cancel;
  ASSERT_TRUE(studies_->CancelStudy(&cancel_context, cancel, &after_cancel).ok());
  v1::StudyStatus last;
  int reads = 0;
  while (reader->Read(&last)) ++reads;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last.state(), v1::STUDY_STATE_CANCELLED);
}

TEST_F(CoordinatorGrpcTest, WorkerRoundTripAndMetrics) {
  grpc::ClientContext c1;
  v1::RegisterWorkerRequest reg;
  reg.set_name("grpc-test");
  v1::RegisterWorkerResponse registered;
  ASSERT_TRUE(workers_->RegisterWorker(&c1, reg, &registered).ok());
  EXPECT_GT(registered.worker_id(), 0);
  grpc::ClientContext c2;
  v1::LeaseTaskRequest lease;
  lease.set_worker_id(registered.worker_id());
  v1::LeaseTaskResponse leased;
  ASSERT_TRUE(workers_->LeaseTask(&c2, lease, &leased).ok());
  EXPECT_EQ(leased.task_id(), 0);  // nothing submitted

  grpc::ClientContext c3;
  v1::ListWorkersResponse listed;
  const grpc::Status list_status = studies_->ListWorkers(&c3, v1::ListWorkersRequest(), &listed);
  ASSERT_TRUE(list_status.ok()) << list_status.error_code() << " " << list_status.error_message();
  ASSERT_EQ(listed.workers_size(), 1);
  EXPECT_TRUE(listed.workers(0).alive());

  auto scraped = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  EXPECT_THAT(*scraped, HasSubstr("200 OK"));
  EXPECT_THAT(*scraped, HasSubstr("sslbench_rpc_duration_seconds_count{code=\"OK\",method=\"LeaseTask\"} 1"));
  EXPECT_THAT(*scraped, HasSubstr("sslbench_db_duration_seconds"));
}

// Every ended attempt is counted by outcome, from 0, for the failure-rate
// alert (deploy/base/monitoring.yaml).
TEST_F(CoordinatorGrpcTest, TaskAttemptsAreCountedByOutcome) {
  auto count = [&](const std::string& outcome) {
    auto scraped = testing::HttpGet(server_->metrics_port(), "/metrics");
    EXPECT_TRUE(scraped.ok()) << scraped.status();
    const std::string key = "sslbench_task_attempts_total{outcome=\"" + outcome + "\"} ";
    const size_t at = scraped.ok() ? scraped->find(key) : std::string::npos;
    return at == std::string::npos ? -1 : std::stoi(scraped->substr(at + key.size()));
  };
  for (const char* outcome : {"succeeded", "retried", "failed", "preempted"}) {
    EXPECT_EQ(count(outcome), 0) << outcome;
  }
  grpc::ClientContext submit_context;
  v1::SubmitStudyRequest submit;
  *submit.mutable_spec() = testing::MakeStudy(1, 1);
  submit.mutable_spec()->set_max_attempts(2);
  v1::SubmitStudyResponse submitted;
  ASSERT_TRUE(studies_->SubmitStudy(&submit_context, submit, &submitted).ok());
  grpc::ClientContext c1;
  v1::RegisterWorkerRequest reg;
  reg.set_name("outcomes");
  v1::RegisterWorkerResponse registered;
  ASSERT_TRUE(workers_->RegisterWorker(&c1, reg, &registered).ok());

  // Handed back, then failed retryably, then failed for good (2 attempts).
  for (const auto& [preempted, retryable] : {std::pair{true, true}, std::pair{false, true},
                                             std::pair{false, false}}) {
    grpc::ClientContext lease_context;
    v1::LeaseTaskRequest lease;
    lease.set_worker_id(registered.worker_id());
    v1::LeaseTaskResponse leased;
    ASSERT_TRUE(workers_->LeaseTask(&lease_context, lease, &leased).ok());
    ASSERT_GT(leased.task_id(), 0);
    grpc::ClientContext fail_context;
    v1::FailTaskRequest fail;
    fail.set_task_id(leased.task_id());
    fail.set_lease_token(leased.lease_token());
    fail.set_error("boom");
    fail.set_preempted(preempted);
    fail.set_retryable(retryable);
    v1::FailTaskResponse failed;
    ASSERT_TRUE(workers_->FailTask(&fail_context, fail, &failed).ok());
  }
  EXPECT_EQ(count("preempted"), 1);
  EXPECT_EQ(count("retried"), 1);
  EXPECT_EQ(count("failed"), 1);
  EXPECT_EQ(count("succeeded"), 0);
}

}  // namespace
}  // namespace sslbench::server
