// sslbench-make-models OUT_DIR [--seed N]
// Writes the TorchScript models built into the compute core: identity.pt
// (raw pixels as features), cnn.pt (a random CNN for 1x28x28 input) and
// cnn_rgb.pt (the same for RGB input of any size).

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "worker/compute/model_zoo.h"

namespace {

int Usage() {
  std::fprintf(stderr, "usage: sslbench-make-models OUT_DIR [--seed N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_dir;
  uint64_t seed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seed" && i + 1 < argc) {
      if (!absl::SimpleAtoi(argv[++i], &seed)) return Usage();
    } else if (arg.rfind("--seed=", 0) == 0) {
      if (!absl::SimpleAtoi(arg.substr(7), &seed)) return Usage();
    } else if (arg == "-h" || arg == "--help") {
      Usage();
      return 0;
    } else if (!arg.empty() && arg[0] != '-' && out_dir.empty()) {
      out_dir = arg;
    } else {
      return Usage();
    }
  }
  if (out_dir.empty()) return Usage();

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    std::fprintf(stderr, "cannot create %s: %s\n", out_dir.c_str(),
                 ec.message().c_str());
    return 1;
  }
  const std::string identity =
      (std::filesystem::path(out_dir) / "identity.pt").string();
  const std::string cnn = (std::filesystem::path(out_dir) / "cnn.pt").string();
  if (absl::Status s = sslbench::compute::WriteIdentityModel(identity);
      !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s (identity: features = flattened pixels)\n",
              identity.c_str());
  if (absl::Status s = sslbench::compute::WriteRandomCnnModel(cnn, seed);
      !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s (random CNN, seed %llu: 1x28x28 input, %d features)\n",
              cnn.c_str(), static_cast<unsigned long long>(seed),
              sslbench::compute::kRandomCnnDim);
  const std::string cnn_rgb = (std::filesystem::path(out_dir) / "cnn_rgb.pt").string();
  if (absl::Status s = sslbench::compute::WriteRandomCnnModel(cnn_rgb, seed, 3); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s (random CNN, seed %llu: RGB input, %d features)\n", cnn_rgb.c_str(),
              static_cast<unsigned long long>(seed), sslbench::compute::kRandomCnnDim);
  return 0;
}
