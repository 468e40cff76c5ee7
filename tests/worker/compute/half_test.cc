#include "worker/compute/half.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace sslbench::compute {
namespace {

TEST(HalfTest, EveryHalfRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const float f = HalfToFloat(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f)))) << bits;
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << "half bits " << bits << " -> " << f;
  }
}

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);           // largest half
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);           // rounds to inf
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);  // below half of it
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_FLOAT_EQ(HalfToFloat(0x3555), 0.333251953125f);
}

TEST(HalfTest, RoundsToNearestEven) {
  // Between 1 and the next half (1 + 2^-10): the midpoint rounds to even (1).
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  // From 1 + 2^-10 (odd) the midpoint rounds up to 1 + 2^-9 (even).
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  // The relative error of a normal value is at most 2^-11.
  for (float v = 1e-4f; v < 6e4f; v *= 1.37f) {
    EXPECT_LE(std::fabs(HalfToFloat(FloatToHalf(v)) - v), v * std::ldexp(1.0f, -11)) << v;
  }
}

}  // namespace
}  // namespace sslbench::compute
