#pragma once
// Small TorchScript models built in C++, for tests and local runs: they need
// no Python and no downloaded weights. LibTorch-free header.

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace sslbench::compute {

// forward(x) = x.flatten(1): the features are the preprocessed pixels.
absl::Status WriteIdentityModel(const std::string& path);

// A randomly initialised CNN for `channels`-channel input of any size (28x28
// grey intended by default): conv channels->16 3x3 pad 1 + ReLU + 2x2 max pool, conv 16->32 3x3 pad 1 + ReLU,
// global average pool -> 32 features. Kaiming-normal weights (fan-in, ReLU
// gain), zero biases; the same seed writes the same weights.
absl::Status WriteRandomCnnModel(const std::string& path, uint64_t seed, int channels = 1);

// Feature width of WriteRandomCnnModel's model.
inline constexpr int kRandomCnnDim = 32;

}  // namespace sslbench::compute
