#pragma once
// The data types every protocol of the compute core shares: features in
// memory, classification metrics, progress reporting. LibTorch-free.

#include <cstdint>
#include <functional>
#include <vector>

namespace sslbench::compute {

// Row-major float32 features with integer labels.
struct FeatureMatrix {
  int64_t rows = 0;
  int64_t dim = 0;
  std::vector<float> data;      // rows * dim
  std::vector<int32_t> labels;  // rows
};

struct ClassificationMetrics {
  double top1 = 0;            // fraction in [0, 1]
  double top5 = 0;            // fraction in [0, 1]
  double mean_per_class = 0;  // mean over classes present in the test set
  std::vector<double> per_class;  // num_classes entries; NaN for absent ones
};

// Called now and then with (done, total) work units; returning false asks the
// computation to stop, which it does with CANCELLED at its next checkpoint.
using ProgressFn = std::function<bool(int64_t done, int64_t total)>;

}  // namespace sslbench::compute
