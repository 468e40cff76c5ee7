// The correlation analysis end to end through the store: a study submitted,
// its tasks completed with chosen accuracies against a real PostgreSQL, then
// Coordinator::Correlate; and the RPC's error codes over loopback gRPC.

#include <grpcpp/grpcpp.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/coordinator.h"
#include "server/coordinator_server.h"
#include "server/store/pg_store.h"
#include "sslbench/v1/client_api.grpc.pb.h"
#include "tests/server/grpc_test_util.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/study_fixtures.h"
#include "tests/testing/test_postgres.h"

namespace sslbench::server {
namespace {

using ::testing::DoubleNear;
using ::testing::HasSubstr;

constexpr double kTol = 1e-12;

// dataset0 is in-domain, dataset1 out-of-domain; one kNN protocol.
v1::StudySpec TwoDomainStudy(int models) {
  v1::StudySpec spec = testing::MakeStudy(models, 2, "correlate");
  spec.mutable_datasets(0)->set_role(v1::DATASET_ROLE_IN_DOMAIN);
  spec.mutable_datasets(1)->set_role(v1::DATASET_ROLE_OUT_OF_DOMAIN);
  return spec;
}

class AnalysisIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = testing::FreshDatabase();
    ASSERT_TRUE(db.ok()) << db.status();
    PgStoreOptions options;
    options.conninfo = *db;
    auto store = PgStore::Create(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    coordinator_ = std::make_unique<Coordinator>(*store_, clock_, LeasePolicy(), nullptr);
  }

  int64_t Submit(const v1::StudySpec& spec) {
    v1::SubmitStudyRequest request;
    *request.mutable_spec() = spec;
    auto response = coordinator_->SubmitStudy(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->study_id() : 0;
  }

  // Leases and completes every task: extractions with one empty chunk, probes
  // with top1 = top1_of[{model, dataset}].
  void RunAll(const std::map<std::pair<std::string, std::string>, double>& top1_of) {
    v1::RegisterWorkerRequest reg;
    reg.set_name("w");
    auto worker = coordinator_->RegisterWorker(reg);
    ASSERT_TRUE(worker.ok()) << worker.status();
    for (;;) {
      v1::LeaseTaskRequest lease_request;
      lease_request.set_worker_id(worker->worker_id());
      auto lease = coordinator_->LeaseTask(lease_request);
      ASSERT_TRUE(lease.ok()) << lease.status();
      if (lease->task_id() == 0) return;
      v1::CompleteTaskRequest complete;
      complete.set_task_id(lease->task_id());
      complete.set_lease_token(lease->lease_token());
      if (lease->spec().kind() == v1::TASK_KIND_EXTRACT) {
        constexpr int kRows = 4, kDim = 2;
        v1::PutFeatureChunkRequest put;
        put.set_task_id(lease->task_id());
        put.set_lease_token(lease->lease_token());
        auto* chunk = put.mutable_chunk();
        chunk->set_cache_key(lease->spec().cache_key());
        chunk->set_chunk_index(0);
        chunk->set_num_rows(kRows);
        chunk->set_dim(kDim);
        chunk->set_features(std::string(kRows * kDim * 4, '\0'));
        chunk->set_labels(std::string(kRows * 4, '\0'));
        ASSERT_TRUE(coordinator_->PutFeatureChunk(put).ok());
        complete.set_feature_rows(kRows);
        complete.set_feature_dim(kDim);
        complete.set_feature_chunks(1);
      } else {
        const std::string model = lease->spec().model().name();
        const std::string dataset = lease->spec().dataset().name();
        auto it = top1_of.find({model, dataset});
        ASSERT_NE(it, top1_of.end()) << model << " " << dataset;
        auto* result = complete.add_results();
        result->set_model(model);
        result->set_dataset(dataset);
        result->set_protocol(lease->spec().protocol().name());
        result->set_variant("cosine k=20 T=0.07");
        result->set_top1(it->second);
        result->set_top5(1.0);
        result->set_mean_per_class(it->second);
      }
      ASSERT_TRUE(coordinator_->CompleteTask(complete).ok());
    }
  }

  testing::FakeClock clock_;
  std::unique_ptr<PgStore> store_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(AnalysisIntegrationTest, StoredSpecRoundTrips) {
  const v1::StudySpec spec = TwoDomainStudy(3);
  const int64_t id = Submit(spec);
  auto stored = store_->GetStudySpec(id);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->name(), "correlate");
  ASSERT_EQ(stored->datasets_size(), 2);
  EXPECT_EQ(stored->datasets(0).role(), v1::DATASET_ROLE_IN_DOMAIN);
  EXPECT_EQ(stored->datasets(1).role(), v1::DATASET_ROLE_OUT_OF_DOMAIN);
  EXPECT_EQ(store_->GetStudySpec(id + 100).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AnalysisIntegrationTest, CorrelatesTheStoredResults) {
  const int64_t id = Submit(TwoDomainStudy(4));
  // Not enough results yet.
  v1::CorrelateRequest request;
  request.set_study_id(id);
  EXPECT_EQ(coordinator_->Correlate(request).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // In-domain (0.1, 0.2, 0.3, 0.4); out-of-domain swaps models 1 and 2:
  // (0.15, 0.35, 0.25, 0.45). By hand, over the 4 models:
  //   Pearson: centred x = (-.15, -.05, .05, .15), y = (-.15, .05, -.05, .15);
  //            sxy = .04, sxx = syy = .05, r = 0.8.
  //   Spearman: ranks (1, 2, 3, 4) and (1, 3, 2, 4), sum d^2 = 2,
  //            rho = 1 - 6 * 2 / (4 * 15) = 0.8.
  //   Kendall: one discordant pair (1, 2) of 6, no ties: (5 - 1) / 6 = 2/3.
  RunAll({{{"model0", "dataset0"}, 0.1},  {{"model1", "dataset0"}, 0.2},
          {{"model2", "dataset0"}, 0.3},  {{"model3", "dataset0"}, 0.4},
          {{"model0", "dataset1"}, 0.15}, {{"model1", "dataset1"}, 0.35},
          {{"model2", "dataset1"}, 0.25}, {{"model3", "dataset1"}, 0.45}});
  ASSERT_EQ(coordinator_->GetStudy(id)->state(), v1::STUDY_STATE_SUCCEEDED);

  request.set_bootstrap_resamples(300);
  request.set_seed(5);
  auto response = coordinator_->Correlate(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->study_id(), id);
  EXPECT_EQ(response->metric(), "top1");
  EXPECT_EQ(response->bootstrap_resamples(), 300);
  EXPECT_EQ(response->models_size(), 4);
  ASSERT_EQ(response->columns_size(), 2);
  EXPECT_EQ(response->columns(0).label(), "knn[cosine k=20 T=0.07]/full@dataset0");
  EXPECT_EQ(response->columns(0).role(), v1::DATASET_ROLE_IN_DOMAIN);
  EXPECT_EQ(response->columns(1).dataset(), "dataset1");
  EXPECT_EQ(response->columns(1).role(), v1::DATASET_ROLE_OUT_OF_DOMAIN);
  ASSERT_EQ(response->pairs_size(), 1);
  const v1::ColumnPair& pair = response->pairs(0);
  EXPECT_EQ(pair.n(), 4);
  EXPECT_THAT(pair.pearson().value(), DoubleNear(0.8, kTol));
  EXPECT_THAT(pair.spearman().value(), DoubleNear(0.8, kTol));
  EXPECT_THAT(pair.kendall().value(), DoubleNear(2.0 / 3.0, kTol));
  for (const v1::Coefficient* c : {&pair.pearson(), &pair.spearman(), &pair.kendall()}) {
    EXPECT_GT(c->valid_resamples(), 0);
    EXPECT_LE(c->ci_low(), c->ci_high());
    EXPECT_GE(c->ci_low(), -1.0);
    EXPECT_LE(c->ci_high(), 1.0);
  }
  ASSERT_EQ(response->predictors_size(), 1);
  EXPECT_EQ(response->predictors(0).column(), 0);
  EXPECT_EQ(response->predictors(0).targets(), 1);
  EXPECT_THAT(response->predictors(0).mean_kendall(), DoubleNear(2.0 / 3.0, kTol));
  EXPECT_THAT(response->predictors(0).mean_spearman(), DoubleNear(0.8, kTol));

  // Deterministic for a seed; no intervals when asked for none.
  auto again = coordinator_->Correlate(request);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->SerializeAsString(), response->SerializeAsString());
  request.set_bootstrap_resamples(0);
  auto bare = coordinator_->Correlate(request);
  ASSERT_TRUE(bare.ok());
  EXPECT_TRUE(std::isnan(bare->pairs(0).kendall().ci_low()));
  EXPECT_THAT(bare->pairs(0).kendall().value(), DoubleNear(2.0 / 3.0, kTol));

  // top5 is constant (1.0) in this study: every coefficient is undefined.
  request.set_metric("top5");
  auto top5 = coordinator_->Correlate(request);
  ASSERT_TRUE(top5.ok()) << top5.status();
  EXPECT_TRUE(std::isnan(top5->pairs(0).kendall().value()));
  EXPECT_TRUE(std::isnan(top5->predictors(0).mean_kendall()));
  EXPECT_EQ(top5->predictors(0).targets(), 0);
}

TEST_F(AnalysisIntegrationTest, ErrorCodes) {
  v1::CorrelateRequest request;
  request.set_study_id(424242);
  EXPECT_EQ(coordinator_->Correlate(request).status().code(), absl::StatusCode::kNotFound);
  request.set_study_id(Submit(TwoDomainStudy(3)));
  request.set_metric("top3");
  auto bad_metric = coordinator_->Correlate(request);
  EXPECT_EQ(bad_metric.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_metric.status().message(), HasSubstr("metric"));
  request.set_metric("top1");
  request.set_bootstrap_resamples(-1);
  EXPECT_EQ(coordinator_->Correlate(request).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.clear_bootstrap_resamples();
  auto early = coordinator_->Correlate(request);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(early.status().message(), HasSubstr("at least 3"));
}

TEST(CorrelateGrpcTest, AdapterMapsTheDomainsErrorCodes) {
  auto server = testing::StartTestCoordinator();
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::StudyService::NewStub(testing::ChannelTo(**server));

  v1::CorrelateRequest request;
  request.set_study_id(999);
  v1::CorrelateResponse response;
  grpc::ClientContext c1;
  EXPECT_EQ(stub->Correlate(&c1, request, &response).error_code(), grpc::NOT_FOUND);

  grpc::ClientContext c2;
  v1::SubmitStudyRequest submit;
  *submit.mutable_spec() = TwoDomainStudy(3);
  v1::SubmitStudyResponse submitted;
  ASSERT_TRUE(stub->SubmitStudy(&c2, submit, &submitted).ok());
  request.set_study_id(submitted.study_id());
  grpc::ClientContext c3;
  EXPECT_EQ(stub->Correlate(&c3, request, &response).error_code(),
            grpc::FAILED_PRECONDITION);
  request.set_metric("accuracy");
  grpc::ClientContext c4;
  const grpc::Status bad = stub->Correlate(&c4, request, &response);
  EXPECT_EQ(bad.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("accuracy"));
}

}  // namespace
}  // namespace sslbench::server
