#include "worker/compute/knn_kernels.h"

#include <cstdint>

namespace sslbench::compute {

// One clone per instruction set, chosen once at load time by the dynamic
// linker (GNU ifunc): AVX-512, AVX2 + FMA, or the x86-64 baseline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SSLBENCH_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SSLBENCH_TARGET_CLONES
#endif

SSLBENCH_TARGET_CLONES
float SquaredDistanceF32(const float* x, const float* y, int64_t dim) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const float d = x[i + u] - y[i + u];
      acc[u] += d * d;
    }
  }
  float sum = 0;
  for (int u = 0; u < kLanes; ++u) sum += acc[u];
  for (; i < dim; ++i) {
    const float d = x[i] - y[i];
    sum += d * d;
  }
  return sum;
}

}  // namespace sslbench::compute
