#pragma once
// The candidate search of the kNN variants, for a CUDA device (and, for
// tests and comparison, the CPU): see knn_device.cc. Includes ATen; only the
// kNN sources include it.

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "worker/compute/features.h"
#include "worker/compute/knn.h"

namespace sslbench::compute::knn_internal {

enum class Metric { kCosine, kEuclidean };

// Whether RunKnn searches with DeviceSearch for these options.
bool UseDeviceSearch(const KnnOptions& options);

class DeviceSearch {
 public:
  // Copies the train rows to `options.device` once (cosine: L2-normalised
  // float32 rows and their candidate-precision copy; Euclidean: float32
  // rows and squared norms). Inputs already validated.
  static absl::StatusOr<std::unique_ptr<DeviceSearch>> Create(
      const FeatureMatrix& train, const KnnOptions& options, Metric metric,
      int64_t k);

  // Test rows per Search call that keep one tile of scores within the
  // options' memory bound.
  int64_t block_rows() const { return block_rows_; }

  // The k best train rows of test rows [first, first + b) of `test` (b <=
  // block_rows()), on the host: `values` [b, k] (cosine: float32
  // similarities, descending; Euclidean: float64 squared distances,
  // ascending) and `indices` [b, k] int64, ties to the lower train index.
  // Exactly the neighbours of an exhaustive search in that arithmetic.
  void Search(const FeatureMatrix& test, int64_t first, int64_t b,
              at::Tensor* values, at::Tensor* indices);

  // Test rows whose candidate list could not prove its completeness and
  // were searched exhaustively instead.
  int64_t fallback_rows() const { return fallback_rows_; }

 private:
  DeviceSearch() = default;
  at::Tensor Scores(const at::Tensor& q_approx, const at::Tensor& q32,
                    int64_t t, int64_t m) const;
  void Exhaustive(const at::Tensor& q32, at::Tensor* values,
                  at::Tensor* indices) const;

  Metric metric_ = Metric::kCosine;
  c10::Device device_ = c10::Device(c10::kCPU);
  at::ScalarType approx_type_ = at::kFloat;
  int64_t rows_ = 0;
  int64_t dim_ = 0;
  int64_t k_ = 0;
  int64_t capacity_ = 0;  // candidates kept per test row
  int64_t tile_ = 0;      // train rows per score tile
  int64_t block_rows_ = 0;
  at::Tensor exact_;      // [rows, dim] float32: normalised (cosine) or raw
  at::Tensor approx_;     // [rows, dim] candidate precision (may be exact_)
  at::Tensor sq_norms_;   // Euclidean: [rows] float32
  double max_norm_ = 0;   // Euclidean: largest train row norm
  double error_unit_ = 0; // relative error bound of one candidate score
  int64_t fallback_rows_ = 0;
};

}  // namespace sslbench::compute::knn_internal
