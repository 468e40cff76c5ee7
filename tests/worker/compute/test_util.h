#pragma once
// Helpers shared by the compute tests.

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <random>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/compute/features.h"

namespace sslbench::compute::testing {

// A fresh folder under the test temp dir, one per call.
inline std::string MakeTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      absl::StrCat("sslbench_compute_", ::getpid(), "_", name, "_",
                   counter.fetch_add(1));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

inline // Gaussian blobs: class c has mean `separation` * e_(c mod dim), then every
// value is scaled by `scale` and shifted by `shift`.
FeatureMatrix Blobs(int64_t rows, int64_t dim, int num_classes,
                    double separation, uint32_t seed, double scale = 1,
                    double shift = 0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  FeatureMatrix m;
  m.rows = rows;
  m.dim = dim;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t label = static_cast<int32_t>(i % num_classes);
    m.labels.push_back(label);
    for (int64_t d = 0; d < dim; ++d) {
      const double v =
          normal(gen) + (d % num_classes == label ? separation : 0);
      m.data.push_back(static_cast<float>(v * scale + shift));
    }
  }
  return m;
}

// Every metric equal (per-class NaN for absent classes on both sides).
inline void ExpectSameMetrics(const ClassificationMetrics& a,
                              const ClassificationMetrics& b) {
  EXPECT_EQ(a.top1, b.top1);
  EXPECT_EQ(a.top5, b.top5);
  EXPECT_EQ(a.mean_per_class, b.mean_per_class);
  ASSERT_EQ(a.per_class.size(), b.per_class.size());
  for (size_t c = 0; c < a.per_class.size(); ++c) {
    if (std::isnan(a.per_class[c])) {
      EXPECT_TRUE(std::isnan(b.per_class[c])) << c;
    } else {
      EXPECT_EQ(a.per_class[c], b.per_class[c]) << c;
    }
  }
}

MATCHER_P(StatusIs, code, "") {
  if (arg.code() == code) return true;
  *result_listener << "status is " << arg.ToString();
  return false;
}

MATCHER_P2(StatusIs, code, substring, "") {
  if (arg.code() == code &&
      arg.message().find(std::string(substring)) != std::string::npos) {
    return true;
  }
  *result_listener << "status is " << arg.ToString();
  return false;
}

}  // namespace sslbench::compute::testing
