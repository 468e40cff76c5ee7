#include "worker/probe_tasks.h"

#include <cmath>

#include "gmock/gmock.h"
#include "worker/compute/device.h"
#include "gtest/gtest.h"

namespace sslbench::worker {
namespace {

using ::testing::HasSubstr;

// Two well-separated 2-D clusters per class, `per_class` points each.
compute::FeatureMatrix Clusters(int classes, int per_class, float noise_seed) {
  compute::FeatureMatrix m;
  m.dim = 2;
  for (int c = 0; c < classes; ++c) {
    for (int i = 0; i < per_class; ++i) {
      const float angle = 6.2831853f * static_cast<float>(c) / static_cast<float>(classes);
      const float jitter = 0.05f * std::sin(noise_seed + static_cast<float>(i * 7 + c));
      m.data.push_back(std::cos(angle) * 10 + jitter);
      m.data.push_back(std::sin(angle) * 10 - jitter);
      m.labels.push_back(c);
      ++m.rows;
    }
  }
  return m;
}

v1::TaskSpec KnnTask() {
  v1::TaskSpec spec;
  spec.set_kind(v1::TASK_KIND_KNN);
  spec.mutable_model()->set_name("m");
  spec.mutable_dataset()->set_name("d");
  auto* protocol = spec.mutable_protocol();
  protocol->set_name("knn");
  protocol->mutable_knn()->add_ks(3);
  protocol->mutable_knn()->set_temperature(0.07);
  protocol->mutable_knn()->set_euclidean_k(3);
  protocol->mutable_knn()->set_test_chunk_rows(16);
  protocol->mutable_knn()->set_train_chunk_rows(16);
  return spec;
}

// The worker's device reaches every probe: on a build without CUDA each kind
// fails before any work, naming CUDA; on a GPU build each runs there.
TEST(ProbeTasksTest, TheDeviceReachesEveryProbe) {
  const auto train = Clusters(4, 20, 0.f);
  const auto test = Clusters(4, 5, 1.f);
  v1::TaskSpec knn = KnnTask();
  v1::TaskSpec linear = KnnTask();
  linear.set_kind(v1::TASK_KIND_LINEAR);
  auto* lp = linear.mutable_protocol()->mutable_linear();
  lp->add_learning_rates(0.1);
  lp->set_epochs(2);
  lp->set_batch_size(16);
  lp->set_momentum(0.9);
  lp->set_val_fraction(0.2);
  v1::TaskSpec logreg = KnnTask();
  logreg.set_kind(v1::TASK_KIND_LOGREG);
  auto* lr = logreg.mutable_protocol()->mutable_logreg();
  lr->add_cs(1.0);
  lr->set_max_iterations(50);
  lr->set_tolerance(1e-6);
  lr->set_val_fraction(0.2);
  for (const v1::TaskSpec& spec : {knn, linear, logreg}) {
    SCOPED_TRACE(v1::TaskKind_Name(spec.kind()));
    auto on_cpu = RunProbeTask(spec, train, test, nullptr, {}, "cpu");
    ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
    auto on_cuda = RunProbeTask(spec, train, test, nullptr, {}, "cuda:0");
    if (compute::CudaDeviceCount() == 0) {
      EXPECT_EQ(on_cuda.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(std::string(on_cuda.status().message()), HasSubstr("CUDA is not available"));
    } else {
      ASSERT_TRUE(on_cuda.ok()) << on_cuda.status();
      EXPECT_EQ(on_cuda->front().top1(), on_cpu->front().top1());
    }
  }
}

TEST(ProbeTasksTest, KnnOnTheFullSplitReportsEveryVariantWithItsConfig) {
  const auto train = Clusters(4, 20, 0.f);
  const auto test = Clusters(4, 5, 1.f);
  auto results = RunProbeTask(KnnTask(), train, test, nullptr);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 2u);
  EXPECT_EQ((*results)[0].variant(), "cosine k=3 T=0.07");
  EXPECT_EQ((*results)[1].variant(), "euclidean k=3");
  for (const auto& r : *results) {
    EXPECT_DOUBLE_EQ(r.top1(), 1.0);
    EXPECT_EQ(r.subset(), "full");
    EXPECT_EQ(r.num_seeds(), 1);
    EXPECT_EQ(r.per_class_size(), 4);
    EXPECT_THAT(r.config_json(), HasSubstr("\"train_rows\":80"));
    EXPECT_THAT(r.config_json(), HasSubstr("\"libtorch\":\""));
    EXPECT_THAT(r.config_json(), HasSubstr("\"temperature\":0.07"));
  }
}

TEST(ProbeTasksTest, FewShotRunsEverySeedOnClassBalancedSubsets) {
  v1::TaskSpec spec = KnnTask();
  spec.mutable_subset()->set_shots(3);
  for (int seed : {0, 1, 2, 3}) spec.mutable_subset()->add_seeds(seed);
  const auto train = Clusters(4, 20, 0.f);
  const auto test = Clusters(4, 5, 1.f);
  auto results = RunProbeTask(spec, train, test, nullptr);
  ASSERT_TRUE(results.ok()) << results.status();
  const auto& r = (*results)[0];
  EXPECT_EQ(r.subset(), "3-shot");
  EXPECT_EQ(r.num_seeds(), 4);
  ASSERT_EQ(r.seed_top1_size(), 4);
  double mean = 0;
  for (double t : r.seed_top1()) mean += t / 4;
  EXPECT_NEAR(r.top1(), mean, 1e-12);
  // 3 images per class x 4 classes on every seed.
  EXPECT_THAT(r.config_json(), HasSubstr("\"train_rows_used\":[12,12,12,12]"));
  EXPECT_THAT(r.config_json(), HasSubstr("\"seeds\":[0,1,2,3]"));
}

TEST(ProbeTasksTest, AggregateReportsSampleStandardDeviation) {
  v1::TaskSpec spec = KnnTask();
  std::vector<SeedOutcome> runs(3);
  const double top1[] = {0.5, 0.6, 0.7};
  for (int i = 0; i < 3; ++i) {
    runs[i].variant = "v";
    runs[i].metrics.top1 = top1[i];
    runs[i].metrics.per_class = {top1[i], 1.0};
  }
  runs[0].head = "head-of-seed-0";
  const v1::ProbeResult r = AggregateSeeds(spec, "v", {0, 1, 2}, runs, {10, 10, 10}, 100, 50, 8, 2);
  EXPECT_NEAR(r.top1(), 0.6, 1e-12);
  EXPECT_NEAR(r.top1_std(), 0.1, 1e-12);  // sqrt(((0.1)^2 * 2) / 2)
  EXPECT_NEAR(r.per_class(0), 0.6, 1e-12);
  EXPECT_EQ(r.artifact(), "head-of-seed-0");
}

TEST(ProbeTasksTest, KindThatDoesNotFitTheProtocolIsRejected) {
  v1::TaskSpec spec = KnnTask();
  spec.set_kind(v1::TASK_KIND_LINEAR);
  const auto data = Clusters(2, 4, 0.f);
  auto results = RunProbeTask(spec, data, data, nullptr);
  EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProbeTasksTest, ProgressCanCancel) {
  const auto train = Clusters(4, 20, 0.f);
  auto results = RunProbeTask(KnnTask(), train, train,
                              [](int64_t, int64_t) { return false; });
  EXPECT_EQ(results.status().code(), absl::StatusCode::kCancelled);
}

TEST(ProbeTasksTest, SubsetNamesAndRowSelection) {
  v1::Subset subset;
  EXPECT_EQ(SubsetName(subset), "full");
  subset.set_shots(5);
  EXPECT_EQ(SubsetName(subset), "5-shot");
  subset.set_shots(0);
  subset.set_fraction(0.1);
  EXPECT_EQ(SubsetName(subset), "10%");
  const auto m = Clusters(2, 3, 0.f);
  const auto picked = SelectRows(m, {4, 1});
  ASSERT_EQ(picked.rows, 2);
  EXPECT_EQ(picked.labels[0], 1);
  EXPECT_EQ(picked.labels[1], 0);
  EXPECT_EQ(picked.data[0], m.data[8]);
  EXPECT_EQ(EncodeHead("{}", {1.0f}).size(), 3u + sizeof(float));
}

}  // namespace
}  // namespace sslbench::worker

namespace sslbench::worker {
namespace {

// Settings the data cannot honour fail the probe, naming the numbers, instead
// of being clamped or accepted (they used to be).
TEST(ProbeTasksTest, KLargerThanTheTrainSetIsRefused) {
  const auto train = Clusters(4, 5, 0.f);  // 20 images
  const auto test = Clusters(4, 2, 1.f);
  v1::TaskSpec spec = KnnTask();
  spec.mutable_protocol()->mutable_knn()->add_ks(200);
  auto results = RunProbeTask(spec, train, test, nullptr);
  EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(results.status().message()), HasSubstr("k=200 is larger than the 20"));

  // In a few-shot subset the bound is the subset: 2-shot x 4 classes = 8.
  v1::TaskSpec few = KnnTask();
  few.mutable_protocol()->mutable_knn()->set_euclidean_k(10);
  few.mutable_subset()->set_shots(2);
  few.mutable_subset()->add_seeds(0);
  results = RunProbeTask(few, train, test, nullptr);
  EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(results.status().message()), HasSubstr("euclidean_k=10 is larger than the 8"));
}

TEST(ProbeTasksTest, MoreShotsThanAClassHasAreRefused) {
  auto train = Clusters(4, 5, 0.f);
  // Class 2 keeps 3 of its 5 images.
  compute::FeatureMatrix fewer;
  fewer.dim = train.dim;
  int kept2 = 0;
  for (int64_t r = 0; r < train.rows; ++r) {
    if (train.labels[r] == 2 && ++kept2 > 3) continue;
    fewer.data.insert(fewer.data.end(), train.data.begin() + r * 2, train.data.begin() + r * 2 + 2);
    fewer.labels.push_back(train.labels[r]);
    ++fewer.rows;
  }
  v1::TaskSpec spec = KnnTask();
  spec.mutable_subset()->set_shots(4);
  spec.mutable_subset()->add_seeds(0);
  auto results = RunProbeTask(spec, fewer, Clusters(4, 2, 1.f), nullptr);
  EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(results.status().message()),
              HasSubstr("4-shot needs 4 train images of every class; class 2 has 3"));
  spec.mutable_subset()->set_shots(3);
  EXPECT_TRUE(RunProbeTask(spec, fewer, Clusters(4, 2, 1.f), nullptr).ok());
}

// Label 255 in a 10-class set: 245 empty classes would join the mean
// per-class accuracy.
TEST(ProbeTasksTest, LabelOutsideTheClassesIsRefused) {
  auto train = Clusters(10, 3, 0.f);
  const auto test = Clusters(10, 2, 1.f);
  train.labels[7] = 255;
  v1::TaskSpec spec = KnnTask();
  auto results = RunProbeTask(spec, train, test, nullptr);
  EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(results.status().message()),
              HasSubstr("245 of the 256 classes 0..255 have no train image (10, 11, 12, 13, 14, ...)"));
  EXPECT_THAT(std::string(results.status().message()), HasSubstr("largest label is 255 in train"));
  // A test label that train never has.
  auto test_only = Clusters(10, 2, 1.f);
  test_only.labels[0] = 10;
  results = RunProbeTask(spec, Clusters(10, 3, 0.f), test_only, nullptr);
  EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(results.status().message()), HasSubstr("1 of the 11 classes"));
}

}  // namespace
}  // namespace sslbench::worker
