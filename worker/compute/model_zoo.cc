#include "worker/compute/model_zoo.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/script.h>

#include <cmath>
#include <exception>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sslbench::compute {
namespace {

// Saving throws on an unwritable path; report it as a status naming the file.
absl::Status Save(torch::jit::Module& module, const std::string& path) {
  try {
    module.save(path);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("cannot write model '", path,
                                            "': ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("cannot write model '", path, "': ", e.what()));
  }
  return absl::OkStatus();
}

at::Tensor KaimingNormal(at::IntArrayRef shape, at::Generator& gen) {
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)) *
         std::sqrt(2.0 / static_cast<double>(fan_in));
}

}  // namespace

absl::Status WriteIdentityModel(const std::string& path) {
  try {
    torch::jit::Module module("IdentityModel");
    module.define(R"(
def forward(self, x):
    return x.flatten(1)
)");
    return Save(module, path);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("cannot build identity model: ", e.what()));
  }
}

absl::Status WriteRandomCnnModel(const std::string& path, uint64_t seed, int channels) {
  try {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    torch::jit::Module module("RandomCnn");
    module.register_parameter("conv1_weight", KaimingNormal({16, channels, 3, 3}, gen),
                              /*is_buffer=*/false);
    module.register_parameter("conv1_bias", at::zeros({16}),
                              /*is_buffer=*/false);
    module.register_parameter("conv2_weight",
                              KaimingNormal({32, 16, 3, 3}, gen),
                              /*is_buffer=*/false);
    module.register_parameter("conv2_bias", at::zeros({32}),
                              /*is_buffer=*/false);
    module.define(R"(
def forward(self, x):
    x = torch.conv2d(x, self.conv1_weight, self.conv1_bias, [1, 1], [1, 1])
    x = torch.max_pool2d(torch.relu(x), [2, 2])
    x = torch.conv2d(x, self.conv2_weight, self.conv2_bias, [1, 1], [1, 1])
    x = torch.relu(x)
    return torch.mean(x, [2, 3])
)");
    return Save(module, path);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot build random CNN: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("cannot build random CNN: ", e.what()));
  }
}

}  // namespace sslbench::compute
