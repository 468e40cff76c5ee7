#pragma once
// Multinomial L2-regularised logistic regression on frozen features, fitted
// by full-batch L-BFGS (the CLIP benchmark / DINOv2 protocol): the
// regularisation strength is swept over a log grid with warm starts, chosen on
// a class-stratified held-out part of train, then refit on all of train.
// LibTorch-free header.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/compute/knn.h"
#include "worker/compute/probe_common.h"

namespace sslbench::compute {

struct LogisticRegressionOptions {
  // Inverse regularisation strengths, as scikit-learn's C: the objective is
  // C * sum_i CE(x_i) + 0.5 * ||W||^2 (bias not penalised). Empty: `num_cs`
  // values log-spaced in [c_min, c_max].
  std::vector<double> cs;
  int num_cs = 45;
  double c_min = 1e-6;
  double c_max = 1e5;
  double val_fraction = 0.1;
  int max_iterations = 1000;
  double tolerance = 1e-6;  // on the projected gradient, as scikit-learn's tol
  // Also stop when (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= this, as scipy's
  // L-BFGS-B (its default ftol = factr * eps, the rule that usually ends
  // scikit-learn's fits); 0 stops on the gradient or iteration count only.
  double relative_reduction = 2.220446049250313e-09;
  bool float64 = true;
  uint64_t seed = 0;
  // "cpu", "cuda" or "cuda:N" (device.h): the rows, logits and parameters
  // live there; the line search's scalars come back each trial.
  std::string device = "cpu";
  // The device code path (tensor operations for the per-row passes) also on
  // the CPU; always used off the CPU. Agrees with the host path to rounding.
  bool tensor_ops = false;
};

struct LogisticRegressionResult {
  double best_c = 0;
  std::vector<double> held_out_top1;  // per C, in the order swept
  std::vector<double> cs;             // the Cs swept
  ClassificationMetrics test;
  std::vector<float> head;  // weight [num_classes, dim] then bias
  int64_t dim = 0;
  int iterations = 0;  // of the final refit
};

// Sweeps the Cs in ascending order, each fit on the fit part of
// SplitStratified(train.labels, val_fraction, seed) warm-started from the
// previous C's solution; chooses the best held-out top-1 (ties: the smaller
// C); refits on all of train at that C from its fit-part solution; reports
// the refit on test. Deterministic for a given thread count.
// INVALID_ARGUMENT for bad options or inputs; CANCELLED when `progress`
// returns false (work units: max_iterations per fit, the refit included).
absl::StatusOr<LogisticRegressionResult> RunLogisticRegression(
    const FeatureMatrix& train, const FeatureMatrix& test, int num_classes,
    const LogisticRegressionOptions& options,
    const ProgressFn& progress = nullptr);

// One fit at a fixed C on all of `train` (no sweep), for parity with
// scikit-learn's LogisticRegression(C=c, multi_class="multinomial").
absl::StatusOr<LogisticRegressionResult> FitLogisticRegression(
    const FeatureMatrix& train, const FeatureMatrix& test, int num_classes,
    double c, const LogisticRegressionOptions& options);

}  // namespace sslbench::compute
