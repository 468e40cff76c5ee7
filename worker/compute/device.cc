#include "worker/compute/device.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/version.h>

#include <cctype>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/device_internal.h"

namespace sslbench::compute {

int CudaDeviceCount() {
  const at::CUDAHooksInterface& hooks = at::detail::getCUDAHooks();
  if (!hooks.hasCUDA()) return 0;
  return hooks.getNumGPUs();
}

bool IsCudaDevice(const std::string& device) {
  return device == "cuda" || device.rfind("cuda:", 0) == 0;
}

absl::StatusOr<std::string> ResolveDevice(const std::string& requested) {
  if (requested.empty() || requested == "auto") {
    return CudaDeviceCount() > 0 ? std::string("cuda:0") : std::string("cpu");
  }
  if (requested == "cpu") return std::string("cpu");
  if (!IsCudaDevice(requested)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device '", requested, "' is not one of auto, cpu, cuda, cuda:N"));
  }
  int index = 0;
  if (requested != "cuda") {
    const std::string digits = requested.substr(5);
    if (digits.empty() || digits.size() > 4 ||
        !absl::SimpleAtoi(digits, &index) || index < 0 ||
        !std::isdigit(static_cast<unsigned char>(digits[0]))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "device '", requested, "' is not one of auto, cpu, cuda, cuda:N"));
    }
  }
  const int count = CudaDeviceCount();
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device '", requested,
        "': CUDA is not available (this LibTorch has no CUDA support or the "
        "machine has no NVIDIA GPU); use --device=cpu"));
  }
  if (index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", requested, "': only ", count,
                     " CUDA device(s), cuda:0 to cuda:", count - 1));
  }
  return absl::StrCat("cuda:", index);
}

absl::StatusOr<std::string> ResolvePrecision(const std::string& precision,
                                             const std::string& device) {
  const bool cuda = IsCudaDevice(device);
  if (precision.empty() || precision == "auto") {
    return std::string(cuda ? "bf16" : "fp32");
  }
  if (precision == "fp32" || precision == "bf16") return precision;
  if (precision == "fp16") {
    if (!cuda) {
      return absl::InvalidArgumentError(
          "precision fp16 needs a CUDA device (LibTorch's CPU autocast has "
          "no float16); use fp32 or bf16 on the CPU");
    }
    return precision;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "precision '", precision, "' is not one of auto, fp32, bf16, fp16"));
}

namespace device_internal {

absl::StatusOr<c10::Device> TorchDevice(const std::string& name) {
  absl::StatusOr<std::string> resolved = ResolveDevice(name);
  if (!resolved.ok()) return resolved.status();
  if (*resolved == "cpu") return c10::Device(c10::kCPU);
  int index = 0;
  (void)absl::SimpleAtoi(resolved->substr(5), &index);
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

absl::Status Prefixed(const absl::Status& status, const std::string& context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

at::ScalarType PrecisionType(const std::string& precision) {
  if (precision == "bf16") return at::kBFloat16;
  if (precision == "fp16") return at::kHalf;
  return at::kFloat;
}

// LibTorch 2.x keys autocast state by device type; 1.x has one switch for
// CUDA and one for the CPU.
AutocastScope::AutocastScope(c10::Device device, at::ScalarType dtype) {
  if (dtype == at::kFloat) return;
  active_ = true;
  cuda_ = device.is_cuda();
#if TORCH_VERSION_MAJOR >= 2
  const c10::DeviceType type = device.type();
  was_enabled_ = at::autocast::is_autocast_enabled(type);
  was_dtype_ = at::autocast::get_autocast_dtype(type);
  at::autocast::set_autocast_dtype(type, dtype);
  at::autocast::set_autocast_enabled(type, true);
#else
  if (cuda_) {
    was_enabled_ = at::autocast::is_enabled();
    was_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(true);
  } else {
    was_enabled_ = at::autocast::is_cpu_enabled();
    was_dtype_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(true);
  }
#endif
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
#if TORCH_VERSION_MAJOR >= 2
  const c10::DeviceType type = cuda_ ? c10::kCUDA : c10::kCPU;
  at::autocast::set_autocast_enabled(type, was_enabled_);
  at::autocast::set_autocast_dtype(type, was_dtype_);
#else
  if (cuda_) {
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(was_dtype_);
  } else {
    at::autocast::set_cpu_enabled(was_enabled_);
    at::autocast::set_autocast_cpu_dtype(was_dtype_);
  }
#endif
  // Cached casts of weights belong to this scope.
  at::autocast::clear_cache();
}

void Synchronize(c10::Device device) {
  if (device.is_cuda()) {
    at::detail::getCUDAHooks().deviceSynchronize(device.index());
  }
}

bool IsOutOfMemory(const c10::Error& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;
  const std::string message = e.what_without_backtrace();
  return message.find("out of memory") != std::string::npos;
}

}  // namespace device_internal
}  // namespace sslbench::compute
