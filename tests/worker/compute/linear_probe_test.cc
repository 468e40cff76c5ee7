#include "worker/compute/linear_probe.h"

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

using ::sslbench::compute::testing::Blobs;
using ::sslbench::compute::testing::StatusIs;

LinearProbeOptions Small(std::vector<double> rates) {
  LinearProbeOptions o;
  o.learning_rates = std::move(rates);
  o.epochs = 5;
  o.batch_size = 64;
  o.warmup_epochs = 1;
  o.seed = 3;
  return o;
}

TEST(LinearProbeTest, LearnsAndIsDeterministicForASeed) {
  const FeatureMatrix train = Blobs(1000, 16, 4, 2.0, 1);
  const FeatureMatrix test = Blobs(400, 16, 4, 2.0, 2);
  const LinearProbeOptions o = Small({0.01, 0.1, 1.0});
  absl::StatusOr<LinearProbeResult> a = RunLinearProbe(train, test, 4, o);
  absl::StatusOr<LinearProbeResult> b = RunLinearProbe(train, test, 4, o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_GT(a->test.top1, 0.85);
  EXPECT_EQ(a->head, b->head);
  EXPECT_EQ(a->held_out_top1, b->held_out_top1);
  EXPECT_EQ(a->head.size(), 4u * 16 + 4);
  EXPECT_EQ(a->dim, 16);

  LinearProbeOptions other = o;
  other.seed = 4;
  absl::StatusOr<LinearProbeResult> c = RunLinearProbe(train, test, 4, other);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->head, c->head);
}

// The device update (StackedSgd, features resident, epoch order uploaded
// once) against the per-head CPU update, with everything the update does
// switched on: BatchNorm, standardisation, weight decay, clipping.
TEST(LinearProbeTest, StackedUpdateEqualsPerHeadUpdate) {
  const FeatureMatrix train = Blobs(1200, 24, 6, 1.2, 7, 4.0, 1.0);
  const FeatureMatrix test = Blobs(600, 24, 6, 1.2, 8, 4.0, 1.0);
  LinearProbeOptions o = Small({0.01, 0.1, 1.0});
  o.batch_norm = true;
  o.standardize = true;
  o.weight_decay = 1e-3;
  o.grad_clip = 0.5;
  absl::StatusOr<LinearProbeResult> a = RunLinearProbe(train, test, 6, o);
  o.stacked_update = true;
  absl::StatusOr<LinearProbeResult> b = RunLinearProbe(train, test, 6, o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->best_learning_rate, b->best_learning_rate);
  EXPECT_EQ(a->held_out_top1, b->held_out_top1);
  EXPECT_NEAR(a->test.top1, b->test.top1, 0.002);
  ASSERT_EQ(a->head.size(), b->head.size());
  for (size_t i = 0; i < a->head.size(); ++i) {
    EXPECT_NEAR(a->head[i], b->head[i], 1e-4 * (1 + std::fabs(a->head[i]))) << i;
  }
}

// bfloat16 inputs (the GPU setting) cost at most 0.5 points of accuracy
// here; the device string is checked before any work.
TEST(LinearProbeTest, BFloat16InputsKeepAccuracy) {
  const FeatureMatrix train = Blobs(3000, 32, 10, 1.0, 9);
  const FeatureMatrix test = Blobs(2000, 32, 10, 1.0, 10);
  LinearProbeOptions o = Small({0.01, 0.1});
  o.batch_norm = true;
  absl::StatusOr<LinearProbeResult> a = RunLinearProbe(train, test, 10, o);
  o.input_precision = "bf16";
  absl::StatusOr<LinearProbeResult> b = RunLinearProbe(train, test, 10, o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_GT(a->test.top1, 0.5);
  EXPECT_NEAR(a->test.top1, b->test.top1, 0.005);
  EXPECT_NE(a->head, b->head);  // bfloat16 was used
  o.input_precision = "fp8";
  EXPECT_THAT(RunLinearProbe(train, test, 10, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "input_precision"));
  o.input_precision = "fp32";
  o.device = "tpu";
  EXPECT_THAT(RunLinearProbe(train, test, 10, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "linear probe: device 'tpu'"));
}

TEST(LinearProbeTest, ParallelHeadsEqualSeparatelyTrainedHeads) {
  const FeatureMatrix train = Blobs(800, 12, 3, 1.5, 5);
  const FeatureMatrix test = Blobs(300, 12, 3, 1.5, 6);
  for (bool batch_norm : {false, true}) {
    LinearProbeOptions all = Small({0.001, 0.05, 0.5});
    all.batch_norm = batch_norm;
    all.grad_clip =
        0.5;  // per head: one head's clipping must not touch another
    absl::StatusOr<LinearProbeResult> together =
        RunLinearProbe(train, test, 3, all);
    ASSERT_TRUE(together.ok()) << together.status();
    for (size_t h = 0; h < all.learning_rates.size(); ++h) {
      LinearProbeOptions one = all;
      one.learning_rates = {all.learning_rates[h]};
      absl::StatusOr<LinearProbeResult> alone =
          RunLinearProbe(train, test, 3, one);
      ASSERT_TRUE(alone.ok()) << alone.status();
      EXPECT_EQ(alone->held_out_top1[0], together->held_out_top1[h])
          << "head " << h;
      if (all.learning_rates[h] == together->best_learning_rate) {
        ASSERT_EQ(alone->head.size(), together->head.size());
        for (size_t i = 0; i < alone->head.size(); ++i) {
          // One GEMM for all heads vs one per head: the same sums, at most
          // reassociated by the BLAS kernel.
          EXPECT_NEAR(alone->head[i], together->head[i],
                      1e-5 * (1 + std::abs(alone->head[i])))
              << "head " << h << " value " << i;
        }
        EXPECT_EQ(alone->test.top1, together->test.top1);
      }
    }
  }
}

TEST(LinearProbeTest, ChoosesBestRateTiesToSmaller) {
  const FeatureMatrix train = Blobs(600, 8, 2, 8.0, 7);  // trivially separable
  const FeatureMatrix test = Blobs(200, 8, 2, 8.0, 8);
  absl::StatusOr<LinearProbeResult> r =
      RunLinearProbe(train, test, 2, Small({0.5, 0.2}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->held_out_top1[0], 1.0);
  EXPECT_EQ(r->held_out_top1[1], 1.0);
  EXPECT_EQ(r->best_learning_rate, 0.2);

  // A rate too small to move the head from its init loses.
  const FeatureMatrix hard = Blobs(900, 8, 3, 1.5, 9);
  absl::StatusOr<LinearProbeResult> s =
      RunLinearProbe(hard, hard, 3, Small({1e-7, 0.2}));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->best_learning_rate, 0.2);
  EXPECT_GT(s->held_out_top1[1], s->held_out_top1[0]);
}

TEST(LinearProbeTest, BatchNormMakesFeatureScaleIrrelevant) {
  // Features scaled by 1000 and shifted by 500: plain SGD at this rate
  // diverges or stalls, BatchNorm normalises them away.
  const FeatureMatrix train = Blobs(1200, 10, 3, 1.5, 11, 1000, 500);
  const FeatureMatrix test = Blobs(600, 10, 3, 1.5, 12, 1000, 500);
  LinearProbeOptions o = Small({0.1});
  o.batch_norm = true;
  absl::StatusOr<LinearProbeResult> r = RunLinearProbe(train, test, 3, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->test.top1, 0.8);
  // weight, bias, running mean, running var.
  ASSERT_EQ(r->head.size(), 3u * 10 + 3 + 10 + 10);
  for (int d = 0; d < 10; ++d) {
    const float mean = r->head[3 * 10 + 3 + d];
    const float var = r->head[3 * 10 + 3 + 10 + d];
    // Every dim is offset by 1.5 for one class in three: true mean
    // 500 + 1000 * 1.5 / 3 = 1000, true var 1e6 + 1500^2 * 2 / 9 = 1.5e6.
    EXPECT_NEAR(mean, 1000.0, 150.0) << d;
    EXPECT_GT(var, 0.5e6) << d;
    EXPECT_LT(var, 2.0e6) << d;
  }

  LinearProbeOptions z = Small({0.1});
  z.standardize = true;
  absl::StatusOr<LinearProbeResult> s = RunLinearProbe(train, test, 3, z);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_GT(s->test.top1, 0.8);
  ASSERT_EQ(s->head.size(),
            3u * 10 + 3 + 10 + 10);  // + standardisation mean, std
}

TEST(LinearProbeTest, CancelledThroughProgress) {
  const FeatureMatrix train = Blobs(500, 8, 2, 1.0, 13);
  LinearProbeOptions o = Small({0.1, 0.2});
  int calls = 0;
  int64_t seen_total = 0;
  absl::StatusOr<LinearProbeResult> r =
      RunLinearProbe(train, train, 2, o, [&](int64_t done, int64_t total) {
        EXPECT_LE(done, total);
        seen_total = total;
        return ++calls < 4;
      });
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(calls, 4);
  // 450 fit rows in batches of 64: 8 steps per epoch, 5 epochs.
  EXPECT_EQ(seen_total, 40);
}

TEST(LinearProbeTest, RejectsBadOptions) {
  const FeatureMatrix train = Blobs(50, 4, 2, 1.0, 14);
  LinearProbeOptions o = Small({});
  EXPECT_THAT(RunLinearProbe(train, train, 2, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "learning_rates"));
  o = Small({0.1, 0.2});
  o.val_fraction = 0;
  EXPECT_THAT(RunLinearProbe(train, train, 2, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "held out"));
  o = Small({0.1});
  o.warmup_epochs = 10;
  EXPECT_THAT(RunLinearProbe(train, train, 2, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "warmup_epochs"));
  o = Small({0.1});
  o.val_fraction = 0;  // one rate needs no held-out part
  absl::StatusOr<LinearProbeResult> r = RunLinearProbe(train, train, 2, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(std::isnan(r->held_out_top1[0]));
}

}  // namespace
}  // namespace sslbench::compute
