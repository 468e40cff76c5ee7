#pragma once
// Where the compute core runs: "cpu" or "cuda:N". Every heavy entry point of
// the core (extraction, kNN, linear probe, logistic regression, fine-tuning)
// takes a device name in its options; the worker resolves its --device flag
// once and passes the canonical name down. LibTorch-free header.

#include <string>

#include "absl/status/statusor.h"

namespace sslbench::compute {

// Resolves a device request to its canonical name, "cpu" or "cuda:N":
// "auto" (or empty) is cuda:0 when LibTorch sees a CUDA device, else cpu;
// "cuda" is cuda:0. INVALID_ARGUMENT for a malformed name ("gpu", "cuda:x");
// FAILED_PRECONDITION "CUDA is not available ..." when a CUDA device is asked
// for and this build or machine has none, or N is past the device count.
absl::StatusOr<std::string> ResolveDevice(const std::string& requested);

// True for "cuda" and "cuda:N".
bool IsCudaDevice(const std::string& device);

// Number of CUDA devices LibTorch sees (0 on a CPU-only build).
int CudaDeviceCount();

// The arithmetic a model's forward pass runs in: "fp32", "bf16" or "fp16"
// (autocast: matrix products and convolutions in the lower precision,
// reductions and normalisations in float32). "auto" (or empty) is bf16 on a
// CUDA device and fp32 on the CPU. INVALID_ARGUMENT for anything else, and
// for "fp16" on the CPU (LibTorch's CPU autocast has no float16).
absl::StatusOr<std::string> ResolvePrecision(const std::string& precision,
                                             const std::string& device);

}  // namespace sslbench::compute
