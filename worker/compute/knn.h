#pragma once
// k-nearest-neighbour classification on frozen features, as the field's
// reference implementations define it. LibTorch-free header.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

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

struct KnnOptions {
  // Cosine variant (DINO): L2-normalised features, cosine similarity, vote of
  // each of the k nearest neighbours = exp(sim / temperature). All ks are
  // computed from one top-max(k) search.
  std::vector<int> ks = {10, 20, 100, 200};
  double temperature = 0.07;
  // Euclidean variant (scikit-learn KNeighborsClassifier(weights="distance",
  // algorithm="brute")): vote = 1 / distance; a zero distance takes all the
  // weight. 0 disables it.
  int euclidean_k = 20;
  // Memory bound: similarities are computed for blocks of test_chunk_rows
  // test rows x train_chunk_rows train rows at a time, so peak extra memory is
  // O(test_chunk_rows * (train_chunk_rows + max k)), independent of the
  // dataset size.
  int64_t test_chunk_rows = 1024;
  int64_t train_chunk_rows = 16384;
};

struct KnnResult {
  std::string variant;  // "cosine" or "euclidean"
  int k = 0;
  double temperature = 0;  // cosine only
  ClassificationMetrics metrics;
};

// One KnnResult per k of the cosine variant (in the order of options.ks),
// then one for the Euclidean variant if enabled. INVALID_ARGUMENT for empty
// inputs, mismatched dims, a k larger than train.rows, labels outside
// [0, num_classes), or a non-positive temperature.
absl::StatusOr<std::vector<KnnResult>> RunKnn(const FeatureMatrix& train,
                                              const FeatureMatrix& test,
                                              int num_classes,
                                              const KnnOptions& options);

// Metrics from per-class scores: `scores` is row-major [labels.size(),
// num_classes]; ties resolve to the lowest class index (as numpy's argmax).
ClassificationMetrics MetricsFromScores(const std::vector<float>& scores,
                                        const std::vector<int32_t>& labels,
                                        int num_classes);

}  // namespace sslbench::compute
