#include "worker/compute/feature_extractor.h"

#include <ATen/Parallel.h>
#include <torch/script.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

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
                       std::vector<float> mean, std::vector<float> std)
      : options_(std::move(options)),
        module_(std::move(module)),
        mean_(at::tensor(mean).view({1, -1, 1, 1})),
        std_(at::tensor(std).view({1, -1, 1, 1})) {}

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
    if (images.channels != 1 && images.channels != options_.channels) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model '", options_.path, "' expects ", options_.channels,
          " channels; images have ", images.channels));
    }
    if (static_cast<int64_t>(images.pixels.size()) <
        images.count * images.image_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image set holds ", images.pixels.size(), " bytes; expected ",
          images.count * images.image_bytes()));
    }

    std::vector<float> out;
    c10::InferenceMode inference;
    for (int64_t start = begin; start < end; start += batch_size) {
      const int64_t n = std::min<int64_t>(batch_size, end - start);
      at::Tensor features;
      try {
        at::Tensor batch = Preprocess(images, start, n);
        torch::jit::IValue result = module_.forward({batch});
        if (!result.isTensor()) {
          return absl::InvalidArgumentError(
              absl::StrCat("model '", options_.path, "' returned ",
                           result.tagKind(), ", not a tensor"));
        }
        features =
            result.toTensor().reshape({n, -1}).to(at::kFloat).contiguous();
      } catch (const c10::Error& e) {
        return absl::InternalError(
            absl::StrCat("model '", options_.path, "' failed: ", ErrorText(e)));
      } catch (const std::exception& e) {
        return absl::InternalError(
            absl::StrCat("model '", options_.path, "' failed: ", e.what()));
      }
      const int64_t width = features.size(1);
      if (dim_ < 0) {
        dim_ = width;
      } else if (width != dim_) {
        return absl::InvalidArgumentError(
            absl::StrCat("model '", options_.path, "' returned ", width,
                         " features per image; earlier batches had ", dim_));
      }
      const size_t offset = out.size();
      out.resize(offset + static_cast<size_t>(n * width));
      std::memcpy(out.data() + offset, features.data_ptr<float>(),
                  static_cast<size_t>(n * width) * sizeof(float));
    }
    if (dim != nullptr) *dim = dim_;
    return out;
  }

 private:
  // uint8 [n, c, h, w] -> float [n, channels, size, size], scaled, resized,
  // normalised. Runs under the caller's inference mode.
  at::Tensor Preprocess(const ImageSet& images, int64_t start, int64_t n) {
    const int64_t bytes = images.image_bytes();
    // from_blob does not copy and never writes: the .to() below copies.
    at::Tensor raw = at::from_blob(
        const_cast<uint8_t*>(images.pixels.data() + start * bytes),
        {n, images.channels, images.height, images.width},
        at::TensorOptions().dtype(at::kByte));
    at::Tensor x = raw.to(at::kFloat).div_(255.0f);
    if (images.channels == 1 && options_.channels == 3) {
      x = x.expand({n, 3, images.height, images.width});
    }
    if (options_.input_size > 0 && (images.height != options_.input_size ||
                                    images.width != options_.input_size)) {
      x = at::upsample_bilinear2d(x, {options_.input_size, options_.input_size},
                                  /*align_corners=*/false);
    }
    // Subtract then divide, as torchvision's Normalize does.
    return ((x - mean_) / std_).contiguous();
  }

  const ModelOptions options_;
  torch::jit::Module module_;
  at::Tensor mean_;
  at::Tensor std_;
  int64_t dim_ = -1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FeatureExtractor>> FeatureExtractor::Load(
    const ModelOptions& options) {
  if (options.channels != 1 && options.channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", options.path,
                     "': channels must be 1 or 3, got ", options.channels));
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
  std::error_code ec;
  if (!std::filesystem::is_regular_file(options.path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model file '", options.path, "' does not exist"));
  }
  try {
    torch::jit::Module module = torch::jit::load(options.path, at::kCPU);
    module.eval();
    return std::unique_ptr<FeatureExtractor>(new TorchScriptExtractor(
        options, std::move(module), *std::move(mean), *std::move(std)));
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
