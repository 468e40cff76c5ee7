#include "worker/compute/logistic_regression.h"

#include "worker/compute/device.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/compute/test_util.h"

namespace sslbench::compute {
namespace {

using ::sslbench::compute::testing::StatusIs;

// The blobs shifted by 0.5 (not centred).
FeatureMatrix Blobs(int64_t rows, int64_t dim, int num_classes,
                    double separation, uint32_t seed) {
  return testing::Blobs(rows, dim, num_classes, separation, seed, 1, 0.5);
}

// Gradient of C * sum CE + 0.5 ||W||^2 at `head` (weight [K, D] then bias),
// in float64 with plain loops; returns max |g| / C (scikit-learn's scale).
double MaxGradient(const FeatureMatrix& m, int k, double c,
                   const std::vector<float>& head) {
  const int64_t d = m.dim;
  std::vector<double> g(head.size(), 0.0);
  std::vector<double> z(k);
  for (int64_t i = 0; i < m.rows; ++i) {
    double mx = -1e300;
    for (int j = 0; j < k; ++j) {
      z[j] = head[k * d + j];
      for (int64_t t = 0; t < d; ++t)
        z[j] += head[j * d + t] * m.data[i * d + t];
      mx = std::max(mx, z[j]);
    }
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += std::exp(z[j] - mx);
    for (int j = 0; j < k; ++j) {
      const double r =
          std::exp(z[j] - mx) / sum - (m.labels[i] == j ? 1.0 : 0.0);
      for (int64_t t = 0; t < d; ++t) g[j * d + t] += c * r * m.data[i * d + t];
      g[k * d + j] += c * r;
    }
  }
  double worst = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (i < static_cast<size_t>(k * d)) g[i] += head[i];
    worst = std::max(worst, std::abs(g[i]) / c);
  }
  return worst;
}

TEST(LogisticRegressionTest, TwoPointOptimumMatchesHandDerivation) {
  // x = -1 (class 0), x = +1 (class 1). By symmetry w0 = -w1 = -m/2, equal
  // biases, and the margin m solves m = 4 C sigmoid(-m) (derivative of
  // 2 C log(1 + e^-m) + m^2 / 4).
  FeatureMatrix m;
  m.rows = 2;
  m.dim = 1;
  m.data = {-1.0f, 1.0f};
  m.labels = {0, 1};
  for (double c : {0.1, 1.0, 10.0}) {
    LogisticRegressionOptions o;
    o.tolerance = 1e-10;
    o.relative_reduction = 0;
    absl::StatusOr<LogisticRegressionResult> r =
        FitLogisticRegression(m, m, 2, c, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->head.size(), 4u);
    const double w0 = r->head[0], w1 = r->head[1], b0 = r->head[2],
                 b1 = r->head[3];
    const double margin = w1 - w0;
    EXPECT_NEAR(w0, -w1, 1e-6);
    EXPECT_NEAR(b0, b1, 1e-6);
    EXPECT_NEAR(margin, 4 * c / (1 + std::exp(margin)), 1e-5) << "C = " << c;
    EXPECT_EQ(r->test.top1, 1.0);
  }
  // C = 1 by hand: m = 4 / (1 + e^m) at m = 1.04260 (solved numerically)
  LogisticRegressionOptions o;
  o.tolerance = 1e-10;
  o.relative_reduction = 0;
  absl::StatusOr<LogisticRegressionResult> r =
      FitLogisticRegression(m, m, 2, 1.0, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->head[1] - r->head[0], 1.0425969, 1e-5);
}

TEST(LogisticRegressionTest, NonSeparableGradientVanishesAtSolution) {
  const FeatureMatrix train = Blobs(300, 5, 3, 1.0, 1);
  const FeatureMatrix test = Blobs(300, 5, 3, 1.0, 2);
  LogisticRegressionOptions o;
  o.tolerance = 1e-6;
  o.relative_reduction = 0;  // run to the gradient tolerance
  for (double c : {0.01, 1.0}) {
    absl::StatusOr<LogisticRegressionResult> r =
        FitLogisticRegression(train, test, 3, c, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_LT(MaxGradient(train, 3, c, r->head), 1e-3) << "C = " << c;
    EXPECT_GT(r->test.top1, 0.6);
    EXPECT_LT(r->test.top1, 1.0);
    EXPECT_GT(r->iterations, 0);
  }
}

TEST(LogisticRegressionTest, SeparableProblemHasFiniteRegularisedSolution) {
  const FeatureMatrix train = Blobs(200, 4, 2, 12.0, 3);
  LogisticRegressionOptions o;
  o.tolerance = 1e-6;
  o.relative_reduction = 0;
  absl::StatusOr<LogisticRegressionResult> r =
      FitLogisticRegression(train, train, 2, 10.0, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->test.top1, 1.0);
  EXPECT_LT(MaxGradient(train, 2, 10.0, r->head), 1e-3);
  for (float v : r->head) EXPECT_TRUE(std::isfinite(v));
}

TEST(LogisticRegressionTest, Float32AgreesWithFloat64) {
  const FeatureMatrix train = Blobs(400, 8, 4, 1.0, 4);
  const FeatureMatrix test = Blobs(400, 8, 4, 1.0, 5);
  LogisticRegressionOptions o;
  o.tolerance = 1e-4;
  absl::StatusOr<LogisticRegressionResult> f64 =
      FitLogisticRegression(train, test, 4, 1.0, o);
  o.float64 = false;
  absl::StatusOr<LogisticRegressionResult> f32 =
      FitLogisticRegression(train, test, 4, 1.0, o);
  ASSERT_TRUE(f64.ok() && f32.ok());
  EXPECT_NEAR(f64->test.top1, f32->test.top1, 0.01);
  for (size_t i = 0; i < f64->head.size(); ++i)
    EXPECT_NEAR(f64->head[i], f32->head[i], 1e-2);
}

TEST(LogisticRegressionTest, SweepChoosesOnHeldOutAndRefits) {
  const FeatureMatrix train = Blobs(600, 6, 3, 1.2, 6);
  const FeatureMatrix test = Blobs(600, 6, 3, 1.2, 7);
  LogisticRegressionOptions o;
  o.cs = {100.0, 1e-6, 1.0, 1e-2};
  o.relative_reduction = 0;
  absl::StatusOr<LogisticRegressionResult> r =
      RunLogisticRegression(train, test, 3, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->cs, ::testing::ElementsAre(1e-6, 1e-2, 1.0, 100.0));
  ASSERT_EQ(r->held_out_top1.size(), 4u);
  const size_t best =
      std::max_element(r->held_out_top1.begin(), r->held_out_top1.end()) -
      r->held_out_top1.begin();
  EXPECT_EQ(r->best_c, r->cs[best]);
  EXPECT_GT(r->test.top1, 0.7);
  // The reported head is the refit on all of train at best C.
  EXPECT_LT(MaxGradient(train, 3, r->best_c, r->head), 1e-3);
}

// The device code path (tensor ops for the row passes), run on the CPU,
// against the host path: the same sweep, the same choice of C, the same
// accuracy, heads equal to 1e-5 (with the preconditioned basis, as every
// problem up to 4096 features).
TEST(LogisticRegressionTest, TensorOpsPathEqualsHostPath) {
  const FeatureMatrix train = Blobs(600, 6, 3, 1.2, 6);
  const FeatureMatrix test = Blobs(600, 6, 3, 1.2, 7);
  LogisticRegressionOptions o;
  o.cs = {1e-4, 1e-2, 1.0, 100.0};
  o.relative_reduction = 0;  // stop on the gradient only
  absl::StatusOr<LogisticRegressionResult> host = RunLogisticRegression(train, test, 3, o);
  o.tensor_ops = true;
  absl::StatusOr<LogisticRegressionResult> tensors = RunLogisticRegression(train, test, 3, o);
  ASSERT_TRUE(host.ok()) << host.status();
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(host->best_c, tensors->best_c);
  EXPECT_EQ(host->held_out_top1, tensors->held_out_top1);
  EXPECT_EQ(host->test.top1, tensors->test.top1);
  ASSERT_EQ(host->head.size(), tensors->head.size());
  for (size_t i = 0; i < host->head.size(); ++i) {
    EXPECT_NEAR(host->head[i], tensors->head[i], 1e-5 * (1 + std::fabs(host->head[i]))) << i;
  }
  EXPECT_LT(MaxGradient(train, 3, tensors->best_c, tensors->head), 1e-3);
  o.device = "cuda:7";
  if (CudaDeviceCount() == 0) {
    EXPECT_EQ(RunLogisticRegression(train, test, 3, o).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

TEST(LogisticRegressionTest, DefaultGridIsLogSpaced) {
  const FeatureMatrix train = Blobs(100, 3, 2, 2.0, 8);
  LogisticRegressionOptions o;
  o.num_cs = 3;
  o.c_min = 1e-2;
  o.c_max = 1e2;
  absl::StatusOr<LogisticRegressionResult> r =
      RunLogisticRegression(train, train, 2, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->cs.size(), 3u);
  EXPECT_NEAR(r->cs[0], 1e-2, 1e-12);
  EXPECT_NEAR(r->cs[1], 1.0, 1e-12);
  EXPECT_NEAR(r->cs[2], 1e2, 1e-9);
}

TEST(LogisticRegressionTest, CancelledThroughProgress) {
  const FeatureMatrix train = Blobs(300, 5, 3, 1.0, 9);
  LogisticRegressionOptions o;
  o.cs = {0.1, 1.0, 10.0};
  o.tolerance = 0;
  int calls = 0;
  absl::StatusOr<LogisticRegressionResult> r = RunLogisticRegression(
      train, train, 3, o, [&](int64_t done, int64_t total) {
        EXPECT_LE(done, total);
        return ++calls < 3;
      });
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(calls, 3);
}

TEST(LogisticRegressionTest, RejectsBadInput) {
  const FeatureMatrix train = Blobs(20, 2, 2, 1.0, 10);
  LogisticRegressionOptions o;
  EXPECT_THAT(FitLogisticRegression(train, train, 2, 0.0, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "C = 0"));
  o.cs = {-1.0};
  EXPECT_THAT(RunLogisticRegression(train, train, 2, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  o.cs = {1.0};
  o.val_fraction = 0;
  EXPECT_THAT(RunLogisticRegression(train, train, 2, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "val_fraction"));
  EXPECT_THAT(
      FitLogisticRegression(train, train, 1, 1.0, LogisticRegressionOptions())
          .status(),
      StatusIs(absl::StatusCode::kInvalidArgument, "label"));
}

}  // namespace
}  // namespace sslbench::compute
