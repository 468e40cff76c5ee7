#include "server/lease_policy.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fake_clock.h"

namespace sslbench::server {
namespace {

using ::testing::HasSubstr;

TEST(LeasePolicyTest, BackoffDoublesAndIsCapped) {
  LeasePolicy policy;
  policy.backoff_base = absl::Seconds(1);
  policy.backoff_max = absl::Seconds(10);
  EXPECT_EQ(RetryBackoff(policy, 1), absl::Seconds(1));
  EXPECT_EQ(RetryBackoff(policy, 2), absl::Seconds(2));
  EXPECT_EQ(RetryBackoff(policy, 3), absl::Seconds(4));
  EXPECT_EQ(RetryBackoff(policy, 4), absl::Seconds(8));
  EXPECT_EQ(RetryBackoff(policy, 5), absl::Seconds(10));
  EXPECT_EQ(RetryBackoff(policy, 60), absl::Seconds(10));
}

TEST(LeasePolicyTest, RetryableFailureRequeuesAfterBackoff) {
  testing::FakeClock clock;
  LeasePolicy policy;
  const Release r = DecideRelease(policy, 2, 3, /*retryable=*/true, "boom", clock.Now());
  EXPECT_FALSE(r.fail);
  EXPECT_EQ(r.not_before, clock.Now() + RetryBackoff(policy, 2));
  EXPECT_EQ(r.error, "boom");
}

TEST(LeasePolicyTest, LastAttemptFailsWithTheLastError) {
  testing::FakeClock clock;
  const Release r = DecideRelease(LeasePolicy{}, 3, 3, true, "disk full", clock.Now());
  EXPECT_TRUE(r.fail);
  EXPECT_THAT(r.error, HasSubstr("3 attempts"));
  EXPECT_THAT(r.error, HasSubstr("disk full"));
}

TEST(LeasePolicyTest, PermanentFailureFailsAtOnce) {
  testing::FakeClock clock;
  const Release r = DecideRelease(LeasePolicy{}, 1, 3, /*retryable=*/false,
                                  "failed to load model", clock.Now());
  EXPECT_TRUE(r.fail);
  EXPECT_EQ(r.error, "failed to load model");
}

}  // namespace
}  // namespace sslbench::server
