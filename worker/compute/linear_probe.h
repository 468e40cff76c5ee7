#pragma once
// Linear probing on frozen features (MAE / DINOv2 / the IJCV study's
// protocol): a grid of learning rates trained as parallel heads in one pass
// over the data, the best chosen on a class-stratified held-out part of train,
// then evaluated on test. LibTorch-free header.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/compute/knn.h"
#include "worker/compute/probe_common.h"

namespace sslbench::compute {

struct LinearProbeOptions {
  // Base learning rates; each head's rate is base * batch_size / 256.
  std::vector<double> learning_rates = {0.001, 0.002, 0.005, 0.01,
                                        0.02,  0.05,  0.1,   0.2};
  bool batch_norm = false;   // BatchNorm1d(affine=False) before the head
  bool standardize = false;  // z-score features with train statistics
  int epochs = 100;
  int batch_size = 1024;
  int warmup_epochs = 5;  // linear warmup, then cosine to 0 (per step)
  double momentum = 0.9;
  double weight_decay = 0.0;
  double grad_clip = 0.0;     // max gradient norm per head; 0 = off
  double init_std = 0.01;     // head weights ~ N(0, init_std), bias 0
  double val_fraction = 0.1;  // held out of train to choose the rate
  uint64_t seed = 0;
  // "cpu", "cuda" or "cuda:N" (device.h): the features are copied there
  // once and every step runs there.
  std::string device = "cpu";
  // "fp32", or "bf16": features kept in bfloat16 and both matrix products of
  // a step on bfloat16 operands (float32 accumulation); weights, momentum,
  // softmax and BatchNorm stay float32.
  std::string input_precision = "fp32";
  // The device update (every head in a few tensor operations, features
  // resident in one tensor) also on the CPU in float32; it is always used
  // off the CPU and with bf16 inputs. Results agree with the per-head CPU
  // update up to float rounding.
  bool stacked_update = false;
};

struct LinearProbeResult {
  double best_learning_rate = 0;      // base rate of the chosen head
  std::vector<double> held_out_top1;  // per learning rate
  ClassificationMetrics test;         // chosen head on test
  // The chosen head, refit-free: weight [num_classes, dim] row-major float32
  // then bias [num_classes], plus BN running mean/var [dim] each when
  // batch_norm, plus standardisation mean/std [dim] each when standardize.
  std::vector<float> head;
  int64_t dim = 0;
};

// The held-out part is SplitStratified(train.labels, val_fraction, seed);
// every head starts from the same N(0, init_std) draw and sees the same
// batches, so a head trained in a grid matches the same rate trained alone
// (up to BLAS summation order). The chosen head is the one trained on the fit
// part: it is not refit on all of train. With one rate, val_fraction may be 0
// (train on all of train; held_out_top1 is then NaN). Progress work units are
// optimisation steps. Deterministic for a given seed and thread count.
// INVALID_ARGUMENT for bad options or inputs (several rates and nothing held
// out included); CANCELLED when `progress` returns false.
absl::StatusOr<LinearProbeResult> RunLinearProbe(
    const FeatureMatrix& train, const FeatureMatrix& test, int num_classes,
    const LinearProbeOptions& options, const ProgressFn& progress = nullptr);

}  // namespace sslbench::compute
