#pragma once
// Hot loops of the kNN search that the compiler must vectorise for the CPU
// it runs on (knn_kernels.cc is built with function multi-versioning).
// LibTorch-free.

#include <cstdint>

namespace sslbench::compute {

// sum_i (x[i] - y[i])^2 in float32, in 16 partial sums. All terms are
// non-negative, so the result is within a relative (dim + 4) * 2^-24 of the
// exact value, whatever the summation order.
float SquaredDistanceF32(const float* x, const float* y, int64_t dim);

}  // namespace sslbench::compute
