#include "worker/compute/feature_extractor.h"

#include <ATen/Parallel.h>
#include <torch/script.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/device.h"
#include "worker/compute/device_internal.h"

namespace sslbench::compute {
namespace {

std::string ErrorText(const c10::Error& e) {
  return e.what_without_backtrace();
}

// Expands a per-channel vector of size 1 or `channels` to `channels` entries.
absl::StatusOr<std::vector<float>> PerChannel(const std::vector<float>& v,
                                              float fallback, int channels,
                                              const char* name,
                                              const std::string& path) {
  if (v.empty()) return std::vector<float>(channels, fallback);
  if (v.size() == 1) return std::vector<float>(channels, v[0]);
  if (static_cast<int>(v.size()) == channels) return v;
  return absl::InvalidArgumentError(absl::StrCat(
      "model '", path, "': ", name, " has ", v.size(),
      " values; expected 1 or ", channels, " (one per model channel)"));
}

class TorchScriptExtractor final : public FeatureExtractor {
 public:
  TorchScriptExtractor(ModelOptions options, torch::jit::Module module,
                       std::vector<float> mean, std::vector<float> std,
                       c10::Device device, bool channels_last)
      : options_(std::move(options)),
        module_(std::move(module)),
        device_(device),
        dtype_(device_internal::PrecisionType(options_.precision)),
        channels_last_(channels_last) {
    options_.mean = std::move(mean);
    options_.std = std::move(std);
    preprocess_ = PreprocessOptionsFor(options_);
  }

  absl::StatusOr<std::vector<float>> Extract(const ImageSet& images,
                                             int64_t begin, int64_t end,
                                             int batch_size,
                                             int64_t* dim) override {
    if (begin < 0 || end > images.count || begin > end) {
      return absl::InvalidArgumentError(
          absl::StrCat("image range [", begin, ", ", end,
                       ") is outside the image set of ", images.count));
    }
    if (batch_size <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch size must be positive, got ", batch_size));
    }
    if (images.channels != 1 && images.channels != 3) {
      return absl::InvalidArgumentError(
          absl::StrCat("images have ", images.channels, " channels; expected 1 or 3"));
    }
    if (static_cast<int64_t>(images.pixels.size()) <
        images.count * images.image_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image set holds ", images.pixels.size(), " bytes; expected ",
          images.count * images.image_bytes()));
    }
    int height = 0, width = 0;
    image::OutputSize(preprocess_, images.height, images.width, &height, &width);
    const size_t floats = static_cast<size_t>(options_.channels) * height * width;
    std::vector<float> out;
    std::vector<float> batch;
    image::Image one;
    one.height = images.height;
    one.width = images.width;
    one.channels = images.channels;
    one.pixels.resize(static_cast<size_t>(images.image_bytes()));
    const int64_t plane = int64_t{images.height} * images.width;
    for (int64_t start = begin; start < end; start += batch_size) {
      const int64_t n = std::min<int64_t>(batch_size, end - start);
      batch.resize(static_cast<size_t>(n) * floats);
      for (int64_t i = 0; i < n; ++i) {
        // ImageSet rows are CHW; the preprocessing reads HWC.
        const uint8_t* chw = images.pixels.data() + (start + i) * images.image_bytes();
        for (int64_t p = 0; p < plane; ++p) {
          for (int c = 0; c < images.channels; ++c) {
            one.pixels[p * images.channels + c] = chw[c * plane + p];
          }
        }
        image::Preprocess(one, preprocess_, batch.data() + i * floats);
      }
      int64_t width_out = 0;
      absl::StatusOr<std::vector<float>> rows =
          Forward(batch.data(), n, height, width, &width_out);
      if (!rows.ok()) return rows.status();
      out.insert(out.end(), rows->begin(), rows->end());
    }
    if (dim != nullptr) *dim = dim_;
    return out;
  }

  const std::string& device() const override { return options_.device; }
  const std::string& precision() const override { return options_.precision; }
  int64_t max_batch_rows() const override { return max_rows_; }

  absl::StatusOr<std::vector<float>> Forward(const float* data, int64_t n, int height,
                                             int width, int64_t* dim) override {
    const int64_t floats = int64_t{options_.channels} * height * width;
    if (max_rows_ > 0 && n > max_rows_) {
      // Batches this large ran out of device memory before: go in parts.
      std::vector<float> out;
      for (int64_t s = 0; s < n; s += max_rows_) {
        absl::StatusOr<std::vector<float>> part = Forward(
            data + s * floats, std::min(max_rows_, n - s), height, width, dim);
        if (!part.ok()) return part.status();
        out.insert(out.end(), part->begin(), part->end());
      }
      return out;
    }
    at::Tensor features;
    c10::InferenceMode inference;
    try {
      absl::StatusOr<at::Tensor> on_device = Run(data, n, height, width, staging_);
      if (!on_device.ok()) return on_device.status();
      features = on_device->to(at::kCPU).contiguous();
    } catch (const c10::Error& e) {
      if (device_internal::IsOutOfMemory(e)) {
        if (n == 1) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "model '", options_.path, "': one ", height, "x", width,
              " image does not fit in the memory of ", options_.device));
        }
        // Halve and retry; later batches start at the size that fits.
        max_rows_ = n / 2;
        return Forward(data, n, height, width, dim);
      }
      return absl::InternalError(
          absl::StrCat("model '", options_.path, "' failed: ", ErrorText(e)));
    } catch (const std::exception& e) {
      return absl::InternalError(
          absl::StrCat("model '", options_.path, "' failed: ", e.what()));
    }
    return Rows(features, dim);
  }

  absl::Status Start(const float* data, int64_t n, int height, int width) override {
    if (flight_.size() >= 2) {
      return absl::FailedPreconditionError("two batches are in flight; Collect one first");
    }
    InFlight f;
    if (!device_.is_cuda() || (max_rows_ > 0 && n > max_rows_)) {
      f.done = Forward(data, n, height, width, nullptr);
      flight_.push_back(std::move(f));
      return absl::OkStatus();
    }
    c10::InferenceMode inference;
    try {
      // The slot the batch before last used: that batch was collected, so
      // its copy to the device is done.
      absl::StatusOr<at::Tensor> on_device =
          Run(data, n, height, width, staging_slots_[next_slot_]);
      if (!on_device.ok()) {
        f.done = on_device.status();
      } else {
        const at::Tensor& features = *on_device;
        // Back through pinned memory, queued behind the forward pass; the
        // event says when it has landed.
        f.host = at::empty(features.sizes(),
                           at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
        f.host.copy_(features, /*non_blocking=*/true);
        f.event = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
        f.event->record(c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(device_));
        next_slot_ ^= 1;
      }
    } catch (const c10::Error& e) {
      if (device_internal::IsOutOfMemory(e)) {
        // Forward halves it (and remembers the size that fits).
        f = InFlight();
        f.done = Forward(data, n, height, width, nullptr);
      } else {
        f.done = absl::InternalError(
            absl::StrCat("model '", options_.path, "' failed: ", ErrorText(e)));
      }
    } catch (const std::exception& e) {
      f.done = absl::InternalError(
          absl::StrCat("model '", options_.path, "' failed: ", e.what()));
    }
    flight_.push_back(std::move(f));
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<float>> Collect(int64_t* dim) override {
    if (flight_.empty()) return absl::FailedPreconditionError("no batch was started");
    InFlight f = std::move(flight_.front());
    flight_.pop_front();
    if (!f.event) {
      if (f.done.ok() && dim != nullptr) *dim = dim_;
      return std::move(f.done);
    }
    // c10::Event has no blocking wait in every LibTorch this builds with.
    while (!f.event->query()) std::this_thread::sleep_for(std::chrono::microseconds(20));
    return Rows(f.host, dim);
  }

 private:
  // A batch started and not yet collected: its result, or (CUDA) the pinned
  // host tensor its features are copied into and the event after the copy.
  struct InFlight {
    absl::StatusOr<std::vector<float>> done = std::vector<float>();
    at::Tensor host;
    std::unique_ptr<c10::Event> event;
  };

  // Runs the model on a host batch: on a CUDA device through `staging` (a
  // pinned buffer, grown as needed) and an asynchronous copy; channels-last
  // and autocast as configured. The features [n, width] as float32 where
  // the model ran, not waited for. Throws what the model throws.
  absl::StatusOr<at::Tensor> Run(const float* data, int64_t n, int height, int width,
                                 at::Tensor& staging) {
    // from_blob does not copy and forward does not write its input.
    at::Tensor batch = at::from_blob(const_cast<float*>(data),
                                     {n, options_.channels, height, width},
                                     at::TensorOptions().dtype(at::kFloat));
    if (device_.is_cuda()) {
      if (!staging.defined() || staging.numel() < batch.numel()) {
        staging = at::empty({batch.numel()},
                            at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
      }
      at::Tensor pinned = staging.narrow(0, 0, batch.numel()).view(batch.sizes());
      pinned.copy_(batch);
      batch = pinned.to(device_, /*non_blocking=*/true);
    }
    if (channels_last_) batch = batch.contiguous(at::MemoryFormat::ChannelsLast);
    torch::jit::IValue result;
    {
      device_internal::AutocastScope autocast(device_, dtype_);
      result = module_.forward({batch});
    }
    if (!result.isTensor()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model '", options_.path, "' returned ", result.tagKind(), ", not a tensor"));
    }
    return result.toTensor().reshape({n, -1}).to(at::kFloat);
  }

  // Host float32 features [n, width] as rows, checking the width against
  // earlier batches.
  absl::StatusOr<std::vector<float>> Rows(const at::Tensor& features, int64_t* dim) {
    const int64_t features_per_row = features.size(1);
    if (dim_ < 0) {
      dim_ = features_per_row;
    } else if (features_per_row != dim_) {
      return absl::InvalidArgumentError(
          absl::StrCat("model '", options_.path, "' returned ", features_per_row,
                       " features per image; earlier batches had ", dim_));
    }
    std::vector<float> out(static_cast<size_t>(features.numel()));
    std::memcpy(out.data(), features.data_ptr<float>(), out.size() * sizeof(float));
    if (dim != nullptr) *dim = dim_;
    return out;
  }

  ModelOptions options_;
  torch::jit::Module module_;
  const c10::Device device_;
  const at::ScalarType dtype_;
  const bool channels_last_;
  image::PreprocessOptions preprocess_;
  int64_t dim_ = -1;
  int64_t max_rows_ = 0;  // 0: no batch ran out of memory yet
  at::Tensor staging_;    // pinned host buffer of Forward (CUDA only)
  // Start/Collect: two pinned buffers used in turn, the batches in flight.
  at::Tensor staging_slots_[2];
  int next_slot_ = 0;
  std::deque<InFlight> flight_;
};

}  // namespace

image::PreprocessOptions PreprocessOptionsFor(const ModelOptions& options) {
  image::PreprocessOptions p;
  p.crop = options.input_size;
  p.resize = options.resize_size > 0 ? options.resize_size : options.input_size;
  p.channels = options.channels;
  p.mean = options.mean;
  p.std = options.std;
  return p;
}

absl::StatusOr<std::unique_ptr<FeatureExtractor>> FeatureExtractor::Load(
    const ModelOptions& options) {
  if (options.channels != 1 && options.channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", options.path,
                     "': channels must be 1 or 3, got ", options.channels));
  }
  if (options.resize_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", options.path,
                     "': resize_size must be >= 0, got ", options.resize_size));
  }
  if (options.input_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", options.path,
                     "': input_size must be >= 0, got ", options.input_size));
  }
  absl::StatusOr<std::vector<float>> mean =
      PerChannel(options.mean, 0.0f, options.channels, "mean", options.path);
  if (!mean.ok()) return mean.status();
  absl::StatusOr<std::vector<float>> std =
      PerChannel(options.std, 1.0f, options.channels, "std", options.path);
  if (!std.ok()) return std.status();
  for (float s : *std) {
    if (!(s > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model '", options.path, "': std values must be positive, got ", s));
    }
  }
  const std::string context = absl::StrCat("model '", options.path, "'");
  absl::StatusOr<std::string> device_name = ResolveDevice(options.device);
  if (!device_name.ok()) return device_internal::Prefixed(device_name.status(), context);
  absl::StatusOr<std::string> precision = ResolvePrecision(options.precision, *device_name);
  if (!precision.ok()) return device_internal::Prefixed(precision.status(), context);
  if (options.channels_last != "auto" && options.channels_last != "on" &&
      options.channels_last != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", options.path, "': channels_last must be auto, on or off, got '",
                     options.channels_last, "'"));
  }
  ModelOptions resolved = options;
  resolved.device = *device_name;
  resolved.precision = *precision;
  const c10::Device device = *device_internal::TorchDevice(resolved.device);
  const bool channels_last = options.channels_last == "on" ||
                             (options.channels_last == "auto" && device.is_cuda());
  std::error_code ec;
  if (!std::filesystem::is_regular_file(options.path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model file '", options.path, "' does not exist"));
  }
  try {
    torch::jit::Module module = torch::jit::load(options.path, device);
    module.eval();
    if (channels_last) {
      // As model.to(memory_format=torch.channels_last): every 4-d weight.
      for (at::Tensor p : module.parameters()) {
        if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
      }
    }
    if (options.optimize && (device.is_cuda() || resolved.precision != "fp32")) {
      // Frozen (weights as constants, BatchNorm folded). The oneDNN passes
      // of optimize_for_inference are for the CPU, and their prepacked
      // convolutions ignore autocast (measured: bf16 features equal to
      // fp32's bit for bit).
      try {
        module = torch::jit::freeze(module);
      } catch (const std::exception&) {
      }
    } else if (options.optimize) {
      // Inference only: fold BatchNorm into convolutions, fuse activations
      // and run convolutions through oneDNN, as torch.jit.freeze +
      // optimize_for_inference do (ResNet-18 on 2 cores: 1.55x). A module
      // that cannot be frozen runs as loaded.
      try {
        torch::jit::Module frozen = torch::jit::freeze(module);
        module = torch::jit::optimize_for_inference(frozen);
      } catch (const std::exception&) {
      }
    }
    return std::unique_ptr<FeatureExtractor>(new TorchScriptExtractor(
        resolved, std::move(module), *std::move(mean), *std::move(std), device,
        channels_last));
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "failed to load model '", options.path, "': ", ErrorText(e)));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("failed to load model '", options.path, "': ", e.what()));
  }
}

void SetComputeThreads(int num_threads) {
  if (num_threads <= 0) return;
  at::set_num_threads(num_threads);
  // The inter-op pool can be sized only before its first use; later calls
  // throw, and the intra-op setting above is the one that matters here.
  try {
    at::set_num_interop_threads(num_threads);
  } catch (const std::exception&) {
  }
}

}  // namespace sslbench::compute
