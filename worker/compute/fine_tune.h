#pragma once
// End-to-end fine-tuning of a TorchScript backbone plus a new linear head
// (optionally BatchNorm1d(affine=False) before it) on augmented images, with
// periodic checkpoints so that a preempted run resumes instead of restarting.
// LibTorch-free header.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/image_set.h"
#include "worker/compute/knn.h"
#include "worker/compute/probe_common.h"

namespace sslbench::compute {

struct FineTuneOptions {
  std::string optimizer = "sgd";   // "sgd" (momentum 0.9) or "adamw"
  double learning_rate = 0.01;     // base; scaled by batch_size / 256
  double weight_decay = 0.0;
  double momentum = 0.9;           // sgd
  int epochs = 10;
  int batch_size = 256;
  int warmup_epochs = 1;           // linear warmup, then cosine to 0, per step
  double label_smoothing = 0.1;
  bool batch_norm = false;         // BatchNorm1d(affine=False) before the head
  // Augmentation: RandomResizedCrop(scale [min_scale, 1], ratio [3/4, 4/3])
  // back to the model's input size, and a horizontal flip with probability
  // 0.5 when `flip` (off for data where mirroring changes the class).
  double min_scale = 0.35;
  bool flip = true;
  uint64_t seed = 0;
  // A checkpoint is offered every `checkpoint_every_steps` optimizer steps
  // (and at the end of every epoch when 0).
  int checkpoint_every_steps = 0;
  // Layer-wise lr decay (0 or 1: off): see LayerDecayScales.
  double layer_decay = 0.0;
};

// The learning-rate factor of each named parameter under layer-wise decay
// `decay` (BEiT/MAE): with L transformer blocks found by name
// (encoder_layer_N, blocks.N), block N gets decay^(L - N); embeddings
// (class_token, cls_token, pos_embed*, pos_embedding, conv_proj,
// patch_embed) decay^(L + 1); everything else 1. `*blocks` receives L (0 when
// none is found: every factor is then 1).
std::vector<double> LayerDecayScales(const std::vector<std::string>& names, double decay,
                                     int* blocks);

struct FineTuneResult {
  ClassificationMetrics test;
  int64_t steps = 0;              // optimizer steps taken in total
  int64_t resumed_from_step = 0;  // 0 when the run started afresh
  double final_train_loss = 0;
  int layer_decay_blocks = 0;     // transformer blocks layer decay found (0: not applied)
};

// Receives an opaque checkpoint (model, head, optimizer state, step, RNG
// state) to store; a non-OK status aborts the run with that status.
using CheckpointSink = std::function<absl::Status(int64_t step, const std::string& bytes)>;

// Fine-tunes on `train` (a class-balanced subset when the caller selected
// one), evaluates on `test` (centre: no augmentation). Runs on
// `model.device` with autocast at `model.precision` (auto: bf16 on CUDA,
// fp32 on the CPU; fp16 is refused: it would need loss scaling);
// augmentation draws stay on the host, so the batches are the same on every
// device, and checkpoints resume across devices. If `resume_from` is
// non-empty it must be a checkpoint written by an earlier run with the same
// options and data; training continues from its step and the result equals
// an uninterrupted run's for the same seed and thread count.
// INVALID_ARGUMENT for a corrupt checkpoint or bad options; CANCELLED when
// `progress` returns false (progress units: optimizer steps).
absl::StatusOr<FineTuneResult> RunFineTune(const ModelOptions& model, const ImageSet& train,
                                           const ImageSet& test, int num_classes,
                                           const FineTuneOptions& options,
                                           const std::string& resume_from,
                                           const CheckpointSink& checkpoint,
                                           const ProgressFn& progress = nullptr);

}  // namespace sslbench::compute
