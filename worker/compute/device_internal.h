#pragma once
// The torch side of device.h, for the core's .cc files: the c10::Device of a
// device name, the autocast scope and the out-of-memory test. Includes ATen.

#include <ATen/ATen.h>

#include <string>

#include "absl/status/statusor.h"

namespace sslbench::compute::device_internal {

// The c10::Device of a name ResolveDevice accepts ("auto" resolved too);
// its errors otherwise. Every entry point of the core calls it first, so a
// CUDA request on a machine without CUDA fails before any work.
absl::StatusOr<c10::Device> TorchDevice(const std::string& name);

// `status` with "context: " before its message (same code), for the errors
// of ResolveDevice / ResolvePrecision / TorchDevice at an entry point.
absl::Status Prefixed(const absl::Status& status, const std::string& context);

// at::kBFloat16 / at::kHalf for "bf16" / "fp16"; at::kFloat otherwise.
at::ScalarType PrecisionType(const std::string& precision);

// Enables autocast to `dtype` on `device`'s type for the scope's lifetime
// (nothing for at::kFloat), restoring the previous state after. One thread:
// autocast state is thread-local.
class AutocastScope {
 public:
  AutocastScope(c10::Device device, at::ScalarType dtype);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kFloat;
};

// Waits for the device's queued work (nothing on the CPU), so that timings
// and host reads see finished results.
void Synchronize(c10::Device device);

// Whether an exception is LibTorch's out-of-memory error (CUDA's allocator
// throws c10::OutOfMemoryError; the message test covers older builds).
bool IsOutOfMemory(const c10::Error& e);

}  // namespace sslbench::compute::device_internal
