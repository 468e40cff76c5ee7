#include "worker/compute/linear_probe.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/device_internal.h"

// All learning rates are trained together, as DINOv2 trains its grid of
// heads: the H heads' weights are stacked into one [H*C, D] matrix, so each
// batch costs one forward GEMM ([B, D] x [D, H*C]) and one backward GEMM
// ([H*C, B] x [B, D]) for all heads, and the batch is gathered, standardised
// and batch-normalised once. BatchNorm1d(affine=False) has no parameters, so
// no gradient flows into it and its output is shared by every head.
//
// Gradients are written out by hand (linear layer + mean cross-entropy:
// dL/dlogits = (softmax - onehot) / B), then each head follows PyTorch's
// torch.optim.SGD exactly: g = clip(grad) + weight_decay * p;
// buf = momentum * buf + g (buf starts at 0, which equals PyTorch's first
// buf = g); p -= lr * buf. Clipping is torch.nn.utils.clip_grad_norm_ over
// that head's weight and bias: g *= min(1, max_norm / (||g|| + 1e-6)).
//
// Schedule, per optimisation step s of T = epochs * steps_per_epoch, with
// W = warmup_epochs * steps_per_epoch (MAE's per-iteration schedule):
//   lr(s) = base * s / W                                       for s < W
//   lr(s) = base * 0.5 * (1 + cos(pi * (s - W) / (T - W)))     otherwise
// where base = rate * batch_size / 256.
//
// Every head starts from the same N(0, init_std) draw (ATen's CPU generator
// seeded with `seed`, as torch.Generator().manual_seed(seed) with
// weight.normal_(0, init_std, generator=g)), bias 0, and sees the same batches
// (epoch e is SeededPermutation(fit rows, DeriveSeed(seed, e))), so a head
// trained alongside others follows the same trajectory as when trained alone.
//
// The chosen head is the one trained on the fit part; it is not refit on all
// of train (the DINOv2 protocol): the held-out rows only choose the rate.

namespace sslbench::compute {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kBatchNormEps = 1e-5;
constexpr double kBatchNormMomentum = 0.1;
constexpr int64_t kEvalChunkRows = 8192;

absl::Status ValidateOptions(const LinearProbeOptions& o) {
  if (o.learning_rates.empty()) {
    return absl::InvalidArgumentError("linear probe: learning_rates is empty");
  }
  for (double lr : o.learning_rates) {
    if (!(lr > 0) || !std::isfinite(lr)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "linear probe: learning rate ", lr, " must be positive and finite"));
    }
  }
  if (o.epochs <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear probe: epochs must be positive, got ", o.epochs));
  }
  if (o.batch_size <= 0 || (o.batch_norm && o.batch_size < 2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear probe: batch_size must be at least ",
                     o.batch_norm ? 2 : 1, ", got ", o.batch_size));
  }
  if (o.warmup_epochs < 0 || o.warmup_epochs > o.epochs) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear probe: warmup_epochs must be in [0, epochs], got ",
                     o.warmup_epochs));
  }
  if (!(o.momentum >= 0 && o.momentum < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "linear probe: momentum must be in [0, 1), got ", o.momentum));
  }
  if (!(o.weight_decay >= 0) || !(o.grad_clip >= 0) || !(o.init_std >= 0)) {
    return absl::InvalidArgumentError(
        "linear probe: weight_decay, grad_clip and init_std must be "
        "non-negative");
  }
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "linear probe: val_fraction must be in [0, 1), got ", o.val_fraction));
  }
  if (o.input_precision != "fp32" && o.input_precision != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat(
        "linear probe: input_precision must be fp32 or bf16, got '",
        o.input_precision, "'"));
  }
  return absl::OkStatus();
}

at::Tensor LongTensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()),
                       {static_cast<int64_t>(v.size())},
                       at::TensorOptions().dtype(at::kLong))
      .clone();
}

// Feature transforms fixed after training: standardisation and BatchNorm's
// running statistics. Undefined tensors are skipped.
struct Transform {
  at::Tensor mean, inv_std, std;         // standardisation [D]
  at::Tensor running_mean, running_var;  // BatchNorm [D]

  at::Tensor Standardize(at::Tensor x) const {
    if (mean.defined()) x = (x - mean) * inv_std;
    return x;
  }
  at::Tensor Eval(const at::Tensor& x) const {
    at::Tensor y = Standardize(x);
    if (running_mean.defined()) {
      y = at::batch_norm(y, {}, {}, running_mean, running_var,
                         /*training=*/false, kBatchNormMomentum, kBatchNormEps,
                         /*cudnn_enabled=*/false);
    }
    return y;
  }
};

// Population mean and std of the given rows, accumulated in float64; a
// feature whose std is below 1e-6 is divided by 1 (it is constant on train).
void FitStandardization(const at::Tensor& x, const std::vector<int64_t>& rows,
                        Transform& t) {
  const int64_t d = x.size(1);
  const at::TensorOptions f64 =
      at::TensorOptions().dtype(at::kDouble).device(x.device());
  at::Tensor sum = at::zeros({d}, f64);
  at::Tensor sum_sq = at::zeros({d}, f64);
  for (size_t s = 0; s < rows.size(); s += kEvalChunkRows) {
    const size_t e = std::min(rows.size(), s + kEvalChunkRows);
    const at::Tensor xb =
        x.index_select(0, LongTensor(std::vector<int64_t>(rows.begin() + s,
                                                          rows.begin() + e))
                              .to(x.device()))
            .to(at::kDouble);
    sum += xb.sum(0);
    sum_sq += (xb * xb).sum(0);
  }
  const double n = static_cast<double>(rows.size());
  const at::Tensor mean = sum / n;
  at::Tensor std = (sum_sq / n - mean * mean).clamp_min(0).sqrt();
  std = at::where(std < 1e-6, at::ones_like(std), std);
  t.mean = mean.to(at::kFloat);
  t.std = std.to(at::kFloat);
  t.inv_std = t.std.reciprocal();
}

// Logits of `rows` of x for the stacked heads, in chunks.
at::Tensor Logits(const at::Tensor& x, const at::Tensor& rows,
                  const Transform& t, const at::Tensor& weight,
                  const at::Tensor& bias) {
  std::vector<at::Tensor> parts;
  const int64_t n = rows.defined() ? rows.size(0) : x.size(0);
  for (int64_t s = 0; s < n; s += kEvalChunkRows) {
    const int64_t b = std::min(kEvalChunkRows, n - s);
    const at::Tensor xb = rows.defined()
                              ? x.index_select(0, rows.narrow(0, s, b))
                              : x.narrow(0, s, b);
    parts.push_back(at::addmm(bias, t.Eval(xb.to(at::kFloat)), weight.t()));
  }
  return at::cat(parts);
}

double LearningRateFactor(int64_t step, int64_t warmup_steps,
                          int64_t total_steps) {
  if (step < warmup_steps) {
    return static_cast<double>(step) / static_cast<double>(warmup_steps);
  }
  if (total_steps <= warmup_steps) return 1.0;
  const double progress = static_cast<double>(step - warmup_steps) /
                          static_cast<double>(total_steps - warmup_steps);
  return 0.5 * (1.0 + std::cos(kPi * progress));
}

// torch.optim.SGD (momentum, weight decay, no dampening or Nesterov) for
// every head of the stacked [H*C, D] weight and [H*C] bias, after
// clip_grad_norm_ over each head's weight and bias, in one fused pass per
// head: no temporaries, and a parallel region only when the heads are large.
class HeadsSgd {
 public:
  HeadsSgd(at::Tensor weight, at::Tensor bias, int64_t num_heads,
           const LinearProbeOptions& options)
      : weight_(std::move(weight)),
        bias_(std::move(bias)),
        weight_buf_(at::zeros_like(weight_)),
        bias_buf_(at::zeros_like(bias_)),
        num_heads_(num_heads),
        classes_(bias_.size(0) / num_heads),
        dim_(weight_.size(1)),
        momentum_(static_cast<float>(options.momentum)),
        weight_decay_(static_cast<float>(options.weight_decay)),
        clip_(options.grad_clip) {}

  // grad_w [H*C, D] and grad_b [H*C], contiguous; rates[h] is head h's
  // learning rate for this step.
  void Step(const at::Tensor& grad_w, const at::Tensor& grad_b,
            const std::vector<double>& rates) {
    const int64_t per_head = classes_ * dim_;
    const int64_t grain = std::max<int64_t>(
        1, (int64_t{1} << 17) / std::max<int64_t>(per_head, 1));
    at::parallel_for(0, num_heads_, grain, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h)
        StepHead(h, grad_w, grad_b, rates[h]);
    });
  }

 private:
  void StepHead(int64_t h, const at::Tensor& grad_w, const at::Tensor& grad_b,
                double rate) {
    const int64_t nw = classes_ * dim_;
    const float* gw = grad_w.data_ptr<float>() + h * nw;
    const float* gb = grad_b.data_ptr<float>() + h * classes_;
    float* w = weight_.data_ptr<float>() + h * nw;
    float* b = bias_.data_ptr<float>() + h * classes_;
    float* bw = weight_buf_.data_ptr<float>() + h * nw;
    float* bb = bias_buf_.data_ptr<float>() + h * classes_;
    float coef = 1.0f;
    if (clip_ > 0) {
      double sq = 0;
      for (int64_t i = 0; i < nw; ++i) sq += static_cast<double>(gw[i]) * gw[i];
      for (int64_t i = 0; i < classes_; ++i)
        sq += static_cast<double>(gb[i]) * gb[i];
      coef = static_cast<float>(std::min(1.0, clip_ / (std::sqrt(sq) + 1e-6)));
    }
    const float lr = static_cast<float>(rate);
    auto update = [&](const float* g, float* p, float* buf, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        float d = g[i];
        if (coef != 1.0f) d *= coef;
        if (weight_decay_ != 0) d += weight_decay_ * p[i];
        buf[i] = buf[i] * momentum_ + d;
        p[i] -= lr * buf[i];
      }
    };
    update(gw, w, bw, nw);
    update(gb, b, bb, classes_);
  }

  at::Tensor weight_, bias_, weight_buf_, bias_buf_;
  int64_t num_heads_, classes_, dim_;
  float momentum_, weight_decay_;
  double clip_;
};

// The same update as HeadsSgd, for every head at once in a few tensor
// operations: what a GPU wants (HeadsSgd's per-head loops are for the CPU's
// caches). Equal to HeadsSgd up to float rounding (the clipping norm is
// summed in float32 here).
class StackedSgd {
 public:
  StackedSgd(at::Tensor weight, at::Tensor bias, int64_t num_heads,
             const std::vector<double>& base_rates,
             const LinearProbeOptions& options)
      : heads_(num_heads),
        weight_(weight.view({num_heads, -1})),
        bias_(bias.view({num_heads, -1})),
        weight_buf_(at::zeros_like(weight_)),
        bias_buf_(at::zeros_like(bias_)),
        base_rates_(at::tensor(base_rates, at::TensorOptions().dtype(at::kDouble))
                        .to(weight.device(), at::kFloat)
                        .view({num_heads, 1})),
        momentum_(options.momentum),
        weight_decay_(options.weight_decay),
        clip_(options.grad_clip) {}

  void Step(const at::Tensor& grad_w, const at::Tensor& grad_b, double factor) {
    const at::Tensor gw = grad_w.view({heads_, -1});
    const at::Tensor gb = grad_b.view({heads_, -1});
    at::Tensor coef;
    if (clip_ > 0) {
      const at::Tensor norm =
          (gw.pow(2).sum(1, /*keepdim=*/true) + gb.pow(2).sum(1, /*keepdim=*/true))
              .sqrt_();
      coef = (clip_ / (norm + 1e-6)).clamp_max_(1.0);
    }
    const at::Tensor rates = base_rates_ * factor;
    Update(gw, weight_, weight_buf_, coef, rates);
    Update(gb, bias_, bias_buf_, coef, rates);
  }

 private:
  void Update(const at::Tensor& g, const at::Tensor& p, const at::Tensor& buf,
              const at::Tensor& coef, const at::Tensor& rates) const {
    at::Tensor d = coef.defined() ? g * coef : g;
    if (weight_decay_ != 0) d = d.add(p, weight_decay_);
    buf.mul_(momentum_).add_(d);
    p.sub_(buf * rates);
  }

  int64_t heads_;
  at::Tensor weight_, bias_, weight_buf_, bias_buf_, base_rates_;
  double momentum_, weight_decay_, clip_;
};

absl::StatusOr<LinearProbeResult> Train(const FeatureMatrix& train,
                                        const FeatureMatrix& test,
                                        int num_classes,
                                        const LinearProbeOptions& options,
                                        const c10::Device device,
                                        const ProgressFn& progress) {
  // Off the CPU, or with bfloat16 inputs, the features live on the device
  // (in bfloat16 when asked: half the memory and the matrix products on
  // tensor cores, the weights and everything else in float32) and the heads
  // step with StackedSgd; on the CPU in float32, HeadsSgd as always.
  const bool bf16 = options.input_precision == "bf16";
  const bool on_host = device.is_cpu() && !bf16 && !options.stacked_update;
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t num_heads = static_cast<int64_t>(options.learning_rates.size());
  const int64_t classes = num_classes;
  const int64_t dim = train.dim;

  StratifiedSplit split;
  if (options.val_fraction > 0) {
    split = SplitStratified(train.labels, num_classes, options.val_fraction,
                            options.seed);
  } else {
    split.fit.resize(train.rows);
    for (int64_t i = 0; i < train.rows; ++i) split.fit[i] = i;
  }
  if (split.held_out.empty() && num_heads > 1) {
    return absl::InvalidArgumentError(
        "linear probe: nothing is held out of train (val_fraction is 0 or "
        "every class has one "
        "row), so the learning rate cannot be chosen; pass one rate or a "
        "positive val_fraction");
  }
  const int64_t num_fit = static_cast<int64_t>(split.fit.size());
  const int64_t batch = std::min<int64_t>(options.batch_size, num_fit);
  // PyTorch's BatchNorm1d rejects a training batch of one row; such a last
  // batch is skipped (it would be with drop_last as well).
  int64_t steps_per_epoch = (num_fit + batch - 1) / batch;
  if (options.batch_norm && num_fit % batch == 1) --steps_per_epoch;
  if (steps_per_epoch <= 0) {
    return absl::InvalidArgumentError(
        "linear probe: BatchNorm needs at least two training rows");
  }
  const int64_t total_steps = steps_per_epoch * options.epochs;
  const int64_t warmup_steps = steps_per_epoch * options.warmup_epochs;

  at::Tensor x =
      at::from_blob(const_cast<float*>(train.data.data()), {train.rows, dim},
                    at::TensorOptions().dtype(at::kFloat));
  if (!on_host) x = x.to(device, bf16 ? at::kBFloat16 : at::kFloat);
  const at::Tensor labels =
      at::from_blob(const_cast<int32_t*>(train.labels.data()), {train.rows},
                    at::TensorOptions().dtype(at::kInt))
          .to(device, at::kLong);

  Transform transform;
  if (options.standardize) FitStandardization(x, split.fit, transform);
  if (options.batch_norm) {
    transform.running_mean = at::zeros({dim}, f32);
    transform.running_var = at::ones({dim}, f32);
  }

  // The initial draw comes from the CPU generator on every device.
  at::Generator generator = at::detail::createCPUGenerator(options.seed);
  at::Tensor init = at::empty({classes, dim}, at::kFloat);
  init.normal_(0.0, options.init_std, generator);
  at::Tensor weight = init.repeat({num_heads, 1}).to(device);  // [H*C, D]
  at::Tensor bias = at::zeros({num_heads * classes}, f32);

  std::vector<double> base_rates(num_heads);
  std::vector<double> rates(num_heads);
  for (int64_t h = 0; h < num_heads; ++h) {
    base_rates[h] = options.learning_rates[h] *
                    static_cast<double>(options.batch_size) / 256.0;
  }
  std::optional<HeadsSgd> sgd;
  std::optional<StackedSgd> stacked;
  if (on_host) {
    sgd.emplace(weight, bias, num_heads, options);
  } else {
    stacked.emplace(weight, bias, num_heads, base_rates, options);
  }

  if (progress && !progress(0, total_steps)) {
    return absl::CancelledError("linear probe cancelled before training");
  }
  std::vector<int64_t> rows(batch);
  int64_t step = 0;
  for (int epoch = 0; epoch < options.epochs; ++epoch) {
    const std::vector<int64_t> order = SeededPermutation(
        num_fit, DeriveSeed(options.seed, static_cast<uint64_t>(epoch)));
    // Off the host the epoch's row order goes to the device once.
    at::Tensor epoch_rows;
    if (!on_host) {
      std::vector<int64_t> all(num_fit);
      for (int64_t i = 0; i < num_fit; ++i) all[i] = split.fit[order[i]];
      epoch_rows = LongTensor(all).to(device);
    }
    for (int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
      const int64_t begin = s * batch;
      const int64_t b = std::min(batch, num_fit - begin);
      at::Tensor rows_t;
      if (on_host) {
        rows.resize(b);
        for (int64_t i = 0; i < b; ++i) rows[i] = split.fit[order[begin + i]];
        rows_t = LongTensor(rows);
      } else {
        rows_t = epoch_rows.narrow(0, begin, b);
      }
      at::Tensor xb =
          transform.Standardize(x.index_select(0, rows_t).to(at::kFloat));
      if (options.batch_norm) {
        // PyTorch's own kernel: batch statistics, and running statistics
        // updated in place with momentum 0.1 and the unbiased variance.
        xb = at::batch_norm(
            xb, {}, {}, transform.running_mean, transform.running_var,
            /*training=*/true, kBatchNormMomentum, kBatchNormEps,
            /*cudnn_enabled=*/false);
      }
      const at::Tensor yb = labels.index_select(0, rows_t);

      // dL/dlogits for every head: (softmax - onehot) / b. With bfloat16
      // inputs both products take bfloat16 operands (float32 accumulation).
      at::Tensor xb16;
      at::Tensor grad;
      if (bf16) {
        xb16 = xb.to(at::kBFloat16);
        grad = at::mm(xb16, weight.to(at::kBFloat16).t()).to(at::kFloat).add_(bias);
      } else {
        grad = at::addmm(bias, xb, weight.t());
      }
      grad = at::softmax(grad.view({b, num_heads, classes}), 2);
      grad.sub_(at::zeros({b, 1, classes}, f32)
                    .scatter_(2, yb.view({b, 1, 1}), 1.0));
      grad.div_(static_cast<double>(b));
      grad = grad.view({b, num_heads * classes});
      const at::Tensor grad_w =  // [H*C, D]
          bf16 ? at::mm(grad.to(at::kBFloat16).t(), xb16).to(at::kFloat)
               : at::mm(grad.t(), xb);
      const at::Tensor grad_b = grad.sum(0);  // [H*C]
      const double factor = LearningRateFactor(step, warmup_steps, total_steps);
      if (on_host) {
        for (int64_t h = 0; h < num_heads; ++h) rates[h] = base_rates[h] * factor;
        sgd->Step(grad_w, grad_b, rates);
      } else {
        stacked->Step(grad_w, grad_b, factor);
      }

      if (progress && !progress(step + 1, total_steps)) {
        return absl::CancelledError(absl::StrCat(
            "linear probe cancelled at step ", step + 1, " of ", total_steps));
      }
    }
  }

  // Held-out top-1 of every head from one pass; argmax ties go to the lowest
  // class, as numpy's.
  LinearProbeResult result;
  result.dim = dim;
  result.held_out_top1.assign(num_heads,
                              std::numeric_limits<double>::quiet_NaN());
  int64_t best = 0;
  if (!split.held_out.empty()) {
    const at::Tensor held = LongTensor(split.held_out).to(device);
    const at::Tensor predicted = Logits(x, held, transform, weight, bias)
                                     .view({-1, num_heads, classes})
                                     .argmax(2);
    const at::Tensor correct =
        predicted.eq(labels.index_select(0, held).unsqueeze(1))
            .sum(0)
            .to(at::kCPU, at::kDouble);
    const double n = static_cast<double>(split.held_out.size());
    for (int64_t h = 0; h < num_heads; ++h) {
      result.held_out_top1[h] = correct[h].item<double>() / n;
      const double lr = options.learning_rates[h];
      const double best_lr = options.learning_rates[best];
      if (result.held_out_top1[h] > result.held_out_top1[best] ||
          (result.held_out_top1[h] == result.held_out_top1[best] &&
           lr < best_lr)) {
        best = h;
      }
    }
  }
  result.best_learning_rate = options.learning_rates[best];

  const at::Tensor head_w =
      weight.narrow(0, best * classes, classes).contiguous();
  const at::Tensor head_b =
      bias.narrow(0, best * classes, classes).contiguous();
  const at::Tensor xt =
      at::from_blob(const_cast<float*>(test.data.data()), {test.rows, dim},
                    at::TensorOptions().dtype(at::kFloat))
          .to(device);
  const at::Tensor scores =
      Logits(xt, at::Tensor(), transform, head_w, head_b).contiguous().cpu();
  const float* p = scores.data_ptr<float>();
  result.test = MetricsFromScores(std::vector<float>(p, p + scores.numel()),
                                  test.labels, num_classes);

  std::vector<at::Tensor> parts = {head_w.view({-1}), head_b};
  if (options.batch_norm) {
    parts.push_back(transform.running_mean);
    parts.push_back(transform.running_var);
  }
  if (options.standardize) {
    parts.push_back(transform.mean);
    parts.push_back(transform.std);
  }
  const at::Tensor head = at::cat(parts).contiguous().cpu();
  result.head.assign(head.data_ptr<float>(),
                     head.data_ptr<float>() + head.numel());
  return result;
}

}  // namespace

absl::StatusOr<LinearProbeResult> RunLinearProbe(
    const FeatureMatrix& train, const FeatureMatrix& test, int num_classes,
    const LinearProbeOptions& options, const ProgressFn& progress) {
  if (absl::Status s =
          ValidateProbeInputs(train, test, num_classes, "linear probe");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  absl::StatusOr<c10::Device> device =
      device_internal::TorchDevice(options.device);
  if (!device.ok()) return device_internal::Prefixed(device.status(), "linear probe");
  try {
    c10::InferenceMode inference;
    return Train(train, test, num_classes, options, *device, progress);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("linear probe failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("linear probe failed: ", e.what()));
  }
}

}  // namespace sslbench::compute
