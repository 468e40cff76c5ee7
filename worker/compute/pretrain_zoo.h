#pragma once
// A model zoo built here, because no pre-trained weights can be downloaded:
// two small backbone families pre-trained on Fashion-MNIST with LibTorch on
// CPU, with methods of the kinds the field compares, exported as TorchScript.
//
//   backbone      a small ResNet (GroupNorm, 16-32-64 channels, 64-d pooled
//                 features) and a tiny ViT (7x7 patches, 3 blocks, width 64,
//                 class token after the final LayerNorm)
//   methods       random initialisation (no training), supervised
//                 (cross-entropy on the labels), rotation prediction (pretext),
//                 SimCLR (contrastive), BYOL (distillation, EMA target),
//                 DINO-style self-distillation (EMA teacher, centring,
//                 sharpening) and SimMIM/MAE-style masked patch
//                 reconstruction (ViT)
//
// Every run is a pure function of its options and the thread count;
// finished models are kept with a stamp of their options and reused.
// Torch-free header.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sslbench::compute {

struct ZooOptions {
  std::string fmnist_root = "/usr/share/datasets/fashion-mnist";
  std::string out;               // folder of NAME.pt files and zoo.yaml
  int steps = 300;               // optimizer steps per pre-training
  int batch_size = 64;
  int64_t train_images = 20000;  // the first N train images, labels unused but by supervised
  uint64_t seed = 0;
  std::vector<std::string> only; // model names to build; empty: all
};

struct ZooModel {
  std::string name;      // e.g. "resnet-simclr"
  std::string backbone;  // "resnet-small" or "vit-tiny"
  std::string method;    // "random", "supervised", "rotation", "simclr", "byol", "dino", "mae"
  std::string family;    // "baseline", "supervised", "pretext", "contrastive", "distillation",
                         // "masked-image-modeling"
  std::string path;      // absolute, NAME.pt
  int feature_dim = 0;
  bool cached = false;
  double seconds = 0;    // pre-training time (0 when cached)
  double final_loss = 0; // mean over the last 10% of steps (0 for random)
};

// The zoo's model names, in build order.
std::vector<std::string> ZooModelNames();

// (model, steps done, steps in all)
using ZooProgress = std::function<void(const std::string&, int, int)>;

// Builds (or reuses) the models and writes OUT/zoo.yaml, the `models:`
// entries of a study file for them (28x28 grey input, Fashion-MNIST's
// mean/std). NOT_FOUND when Fashion-MNIST is missing; INVALID_ARGUMENT for
// bad options or an unknown name in `only`; INTERNAL when a run diverges.
absl::StatusOr<std::vector<ZooModel>> BuildZoo(const ZooOptions& options,
                                              const ZooProgress& progress = nullptr);

}  // namespace sslbench::compute
