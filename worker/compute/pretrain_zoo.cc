#include "worker/compute/pretrain_zoo.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/seed_mix.h"
#include "common/status_macros.h"
#include "worker/datasets/files.h"
#include "worker/compute/image_set.h"

namespace sslbench::compute {
namespace {

namespace fs = std::filesystem;

constexpr int kSide = 28;
constexpr int kClasses = 10;
constexpr float kMean = 0.286f;  // Fashion-MNIST
constexpr float kStd = 0.353f;
constexpr int kWidth = 64;       // feature width of both backbones
// Bump when a recipe changes: stamps of older builds then no longer match.
constexpr char kStampVersion[] = "sslbench zoo 3";
constexpr double kPi = 3.14159265358979323846;

struct Spec {
  const char* name;
  const char* backbone;
  const char* method;
  const char* family;
};

const Spec kSpecs[] = {
    {"resnet-random", "resnet-small", "random", "baseline"},
    {"resnet-supervised", "resnet-small", "supervised", "supervised"},
    {"resnet-rotation", "resnet-small", "rotation", "pretext"},
    {"resnet-simclr", "resnet-small", "simclr", "contrastive"},
    {"resnet-byol", "resnet-small", "byol", "distillation"},
    {"resnet-dino", "resnet-small", "dino", "distillation"},
    {"vit-random", "vit-tiny", "random", "baseline"},
    {"vit-supervised", "vit-tiny", "supervised", "supervised"},
    {"vit-simclr", "vit-tiny", "simclr", "contrastive"},
    {"vit-dino", "vit-tiny", "dino", "distillation"},
    {"vit-mae", "vit-tiny", "mae", "masked-image-modeling"},
};

std::string ErrorText(const c10::Error& e) { return e.what_without_backtrace(); }

at::Tensor Randn(at::IntArrayRef shape, double std, at::Generator& gen) {
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)) * std;
}

at::Tensor Kaiming(at::IntArrayRef shape, at::Generator& gen) {
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  return Randn(shape, std::sqrt(2.0 / static_cast<double>(fan_in)), gen);
}

void Param(torch::jit::Module& m, const std::string& name, at::Tensor value) {
  m.register_parameter(name, std::move(value), /*is_buffer=*/false);
}

// GroupNorm residual network: stride-2 stem (14x14), a block, stride-2 down
// (7x7), a block, stride-2 down (4x4), a block, global average pool.
torch::jit::Module ResNetSmall(at::Generator& gen) {
  torch::jit::Module m("__torch__.sslbench.ResNetSmall");
  const int widths[3] = {16, 32, 64};
  int in = 1;
  for (int s = 0; s < 3; ++s) {
    const int w = widths[s];
    const std::string d = absl::StrCat("down", s);
    Param(m, d + "_w", Kaiming({w, in, 3, 3}, gen));
    Param(m, d + "_gw", at::ones({w}));
    Param(m, d + "_gb", at::zeros({w}));
    const std::string b = absl::StrCat("layer", s);
    Param(m, b + "_c1", Kaiming({w, w, 3, 3}, gen));
    Param(m, b + "_g1w", at::ones({w}));
    Param(m, b + "_g1b", at::zeros({w}));
    Param(m, b + "_c2", Kaiming({w, w, 3, 3}, gen));
    // The residual branch starts near zero (zero-init of the last norm).
    Param(m, b + "_g2w", at::zeros({w}));
    Param(m, b + "_g2b", at::zeros({w}));
    in = w;
  }
  m.define(R"(
def down(self, x, w, gw, gb):
    return torch.relu(torch.group_norm(torch.conv2d(x, w, None, [2, 2], [1, 1]), 4, gw, gb, 1e-5))

def block(self, x, c1, g1w, g1b, c2, g2w, g2b):
    h = torch.relu(torch.group_norm(torch.conv2d(x, c1, None, [1, 1], [1, 1]), 4, g1w, g1b, 1e-5))
    h = torch.group_norm(torch.conv2d(h, c2, None, [1, 1], [1, 1]), 4, g2w, g2b, 1e-5)
    return torch.relu(x + h)

def forward(self, x):
    x = self.down(x, self.down0_w, self.down0_gw, self.down0_gb)
    x = self.block(x, self.layer0_c1, self.layer0_g1w, self.layer0_g1b, self.layer0_c2, self.layer0_g2w, self.layer0_g2b)
    x = self.down(x, self.down1_w, self.down1_gw, self.down1_gb)
    x = self.block(x, self.layer1_c1, self.layer1_g1w, self.layer1_g1b, self.layer1_c2, self.layer1_g2w, self.layer1_g2b)
    x = self.down(x, self.down2_w, self.down2_gw, self.down2_gb)
    x = self.block(x, self.layer2_c1, self.layer2_g1w, self.layer2_g1b, self.layer2_c2, self.layer2_g2w, self.layer2_g2b)
    return torch.mean(x, [2, 3])
)");
  return m;
}

constexpr int kPatch = 7;
constexpr int kTokens = (kSide / kPatch) * (kSide / kPatch);  // 16
constexpr int kBlocks = 3;
constexpr int kPrototypes = 128;  // DINO head outputs
constexpr double kEmaStart = 0.95;

// A pre-norm transformer block; parameters named as torchvision's
// encoder_layer_N so layer-wise lr decay finds them.
torch::jit::Module VitBlock(int index, at::Generator& gen) {
  torch::jit::Module m(absl::StrCat("__torch__.sslbench.VitBlock", index));
  Param(m, "ln1_w", at::ones({kWidth}));
  Param(m, "ln1_b", at::zeros({kWidth}));
  Param(m, "qkv_w", Randn({kWidth, 3 * kWidth}, 0.02, gen));
  Param(m, "qkv_b", at::zeros({3 * kWidth}));
  Param(m, "proj_w", Randn({kWidth, kWidth}, 0.02, gen));
  Param(m, "proj_b", at::zeros({kWidth}));
  Param(m, "ln2_w", at::ones({kWidth}));
  Param(m, "ln2_b", at::zeros({kWidth}));
  Param(m, "fc1_w", Randn({kWidth, 2 * kWidth}, 0.02, gen));
  Param(m, "fc1_b", at::zeros({2 * kWidth}));
  Param(m, "fc2_w", Randn({2 * kWidth, kWidth}, 0.02, gen));
  Param(m, "fc2_b", at::zeros({kWidth}));
  m.define(R"(
def forward(self, x):
    n = x.size(0)
    t = x.size(1)
    h = torch.layer_norm(x, [64], self.ln1_w, self.ln1_b, 1e-6)
    qkv = (torch.matmul(h, self.qkv_w) + self.qkv_b).reshape(n, t, 3, 4, 16).permute(2, 0, 3, 1, 4)
    a = torch.softmax(torch.matmul(qkv[0], qkv[1].transpose(-2, -1)) * 0.25, -1)
    o = torch.matmul(a, qkv[2]).transpose(1, 2).reshape(n, t, 64)
    x = x + torch.matmul(o, self.proj_w) + self.proj_b
    h = torch.layer_norm(x, [64], self.ln2_w, self.ln2_b, 1e-6)
    h = torch.gelu(torch.matmul(h, self.fc1_w) + self.fc1_b)
    return x + torch.matmul(h, self.fc2_w) + self.fc2_b
)");
  return m;
}

torch::jit::Module VitTiny(at::Generator& gen) {
  torch::jit::Module m("__torch__.sslbench.VitTiny");
  Param(m, "patch_w", Randn({kPatch * kPatch, kWidth}, 1.0 / kPatch, gen));
  Param(m, "patch_b", at::zeros({kWidth}));
  Param(m, "cls_token", Randn({1, 1, kWidth}, 0.02, gen));
  Param(m, "pos_embed", Randn({1, kTokens + 1, kWidth}, 0.02, gen));
  Param(m, "mask_token", Randn({1, 1, kWidth}, 0.02, gen));
  for (int b = 0; b < kBlocks; ++b) m.register_module(absl::StrCat("encoder_layer_", b), VitBlock(b, gen));
  Param(m, "ln_w", at::ones({kWidth}));
  Param(m, "ln_b", at::zeros({kWidth}));
  m.define(R"(
def tokens(self, x, mask):
    n = x.size(0)
    p = x.unfold(2, 7, 7).unfold(3, 7, 7).reshape(n, 16, 49)
    t = torch.matmul(p, self.patch_w) + self.patch_b
    m = mask.unsqueeze(2)
    t = t * (1.0 - m) + self.mask_token * m
    t = torch.cat([self.cls_token.expand(n, 1, 64), t], 1) + self.pos_embed
    t = self.encoder_layer_0.forward(t)
    t = self.encoder_layer_1.forward(t)
    t = self.encoder_layer_2.forward(t)
    return torch.layer_norm(t, [64], self.ln_w, self.ln_b, 1e-6)

def forward(self, x):
    mask = torch.zeros([x.size(0), 16], dtype=x.dtype, device=x.device)
    return self.tokens(x, mask)[:, 0]
)");
  return m;
}

// A head: a stack of linear layers as plain tensors; hidden layers are
// standardised over the batch (BatchNorm without affine, as SSL projectors
// have: it keeps BYOL and DINO from collapsing) and go through a ReLU.
struct Mlp {
  std::vector<at::Tensor> w, b;
  Mlp(std::vector<int> dims, at::Generator& gen) {
    for (size_t i = 0; i + 1 < dims.size(); ++i) {
      w.push_back(Randn({dims[i], dims[i + 1]}, std::sqrt(1.0 / dims[i]), gen).requires_grad_());
      b.push_back(at::zeros({dims[i + 1]}).requires_grad_());
    }
  }
  at::Tensor operator()(at::Tensor x) const {
    for (size_t i = 0; i < w.size(); ++i) {
      x = at::matmul(x, w[i]) + b[i];
      if (i + 1 < w.size()) {
        x = (x - x.mean(0, /*keepdim=*/true)) / at::sqrt(x.var(0, /*unbiased=*/false, /*keepdim=*/true) + 1e-5);
        x = at::relu(x);
      }
    }
    return x;
  }
  std::vector<at::Tensor> params() const {
    std::vector<at::Tensor> p = w;
    p.insert(p.end(), b.begin(), b.end());
    return p;
  }
};

// uint8 [n, 1, 28, 28] rows of the training set -> float in [0, 1].
at::Tensor Batch(const ImageSet& images, const at::Tensor& rows) {
  at::Tensor all = at::from_blob(const_cast<uint8_t*>(images.pixels.data()),
                                 {images.count, 1, kSide, kSide}, at::TensorOptions().dtype(at::kByte));
  return all.index_select(0, rows).to(at::kFloat).div_(255.0f);
}

at::Tensor Normalize(const at::Tensor& x) { return (x - kMean) / kStd; }

// SimCLR-style view: random resized crop (area min_area-1, aspect 3/4-4/3),
// horizontal flip, brightness and contrast jitter; batched through an
// affine grid.
at::Tensor Augment(const at::Tensor& x, at::Generator& gen, double min_area = 0.4) {
  const int64_t n = x.size(0);
  auto u = [&](double lo, double hi) {
    return at::rand({n}, gen, at::TensorOptions().dtype(at::kFloat)) * (hi - lo) + lo;
  };
  at::Tensor area = u(min_area, 1.0);
  at::Tensor log_ratio = u(std::log(3.0 / 4.0), std::log(4.0 / 3.0));
  at::Tensor ratio = at::exp(log_ratio);
  at::Tensor sx = at::clamp(at::sqrt(area * ratio), 0.0, 1.0);
  at::Tensor sy = at::clamp(at::sqrt(area / ratio), 0.0, 1.0);
  at::Tensor tx = (u(0, 1) * 2 - 1) * (1 - sx);
  at::Tensor ty = (u(0, 1) * 2 - 1) * (1 - sy);
  at::Tensor flip = at::where(u(0, 1) < 0.5, at::full({n}, -1.0f), at::full({n}, 1.0f));
  at::Tensor zero = at::zeros({n});
  at::Tensor theta = at::stack({at::stack({sx * flip, zero, tx}, 1), at::stack({zero, sy, ty}, 1)}, 1);
  at::Tensor grid = at::affine_grid_generator(theta, {n, 1, kSide, kSide}, /*align_corners=*/false);
  at::Tensor out = at::grid_sampler(x, grid, /*bilinear*/ 0, /*zeros*/ 0, /*align_corners=*/false);
  at::Tensor contrast = u(0.6, 1.4).view({n, 1, 1, 1});
  at::Tensor brightness = u(-0.2, 0.2).view({n, 1, 1, 1});
  at::Tensor mean = out.mean({1, 2, 3}, /*keepdim=*/true);
  return at::clamp((out - mean) * contrast + mean + brightness, 0.0, 1.0);
}

at::Tensor L2Normalize(const at::Tensor& x) {
  return x / at::clamp_min(x.norm(2, {1}, /*keepdim=*/true), 1e-12);
}

at::Tensor Features(torch::jit::Module& m, const at::Tensor& x) {
  return m.forward({x}).toTensor();
}

// Copies `from` into `to` with EMA momentum `m` (to = m * to + (1 - m) * from).
void Ema(torch::jit::Module& to, torch::jit::Module& from, double m) {
  at::NoGradGuard no_grad;
  auto t = to.parameters().begin();
  for (const at::Tensor& f : from.parameters()) {
    (*t).mul_(m).add_(f.detach(), 1.0 - m);
    ++t;
  }
}

void EmaHead(Mlp& to, const Mlp& from, double m) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < to.w.size(); ++i) {
    to.w[i].mul_(m).add_(from.w[i].detach(), 1.0 - m);
    to.b[i].mul_(m).add_(from.b[i].detach(), 1.0 - m);
  }
}

Mlp CopyMlp(const Mlp& from) {
  Mlp out = from;
  for (auto& w : out.w) w = w.detach().clone();
  for (auto& b : out.b) b = b.detach().clone();
  return out;
}

// One pre-training: returns the mean loss over the last 10% of steps.
absl::StatusOr<double> Pretrain(const Spec& spec, torch::jit::Module& backbone, const ImageSet& data,
                                const ZooOptions& o, uint64_t seed, const ZooProgress& progress) {
  const std::string method = spec.method;
  if (method == "random") return 0.0;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x5A4F4FULL);
  {
    // Dropout-free models, but keep the default generator out of it anyway.
    at::Generator def = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(def.mutex());
    def.set_current_seed(seed);
  }
  // EMA target (BYOL, DINO), copied before the backbone's parameters
  // require gradients.
  torch::jit::Module teacher;
  if (method == "byol" || method == "dino") {
    teacher = backbone.deepcopy();
    for (at::Tensor p : teacher.parameters()) p.requires_grad_(false);
  }
  backbone.train();
  std::vector<at::Tensor> params;
  for (at::Tensor p : backbone.parameters()) {
    p.requires_grad_(true);
    params.push_back(p);
  }
  const bool vit = std::string(spec.backbone) == "vit-tiny";
  // Heads per method.
  Mlp head({kWidth, kClasses}, gen);                          // supervised
  Mlp rot({kWidth, 4}, gen);                                  // rotation
  Mlp proj({kWidth, 128, 32}, gen);                           // simclr
  Mlp byol_proj({kWidth, 128, 64}, gen), byol_pred({64, 128, 64}, gen);
  // DINO's head: an MLP to an l2-normalised bottleneck, then prototypes
  // of unit norm (cosine logits).
  Mlp dino_head({kWidth, 128, 32}, gen);
  at::Tensor protos = Randn({32, kPrototypes}, 1.0, gen).requires_grad_();
  Mlp decoder({kWidth, kPatch * kPatch}, gen);                // mae
  std::vector<at::Tensor> head_params;
  if (method == "supervised") head_params = head.params();
  if (method == "rotation") head_params = rot.params();
  if (method == "simclr") head_params = proj.params();
  if (method == "byol") {
    head_params = byol_proj.params();
    auto more = byol_pred.params();
    head_params.insert(head_params.end(), more.begin(), more.end());
  }
  if (method == "dino") {
    head_params = dino_head.params();
    head_params.push_back(protos);
  }
  if (method == "mae") head_params = decoder.params();
  params.insert(params.end(), head_params.begin(), head_params.end());
  Mlp teacher_head = CopyMlp(method == "byol" ? byol_proj : dino_head);
  at::Tensor teacher_protos = protos.detach().clone();
  auto prototype_logits = [](const at::Tensor& z, const at::Tensor& p) {
    return at::matmul(L2Normalize(z), p / at::clamp_min(p.norm(2, {0}, /*keepdim=*/true), 1e-12));
  };
  at::Tensor center = at::zeros({1, kPrototypes});


  // Supervised training takes a larger step (its labels are a strong signal).
  const double peak_lr = (vit ? 1e-3 : 2e-3) * (method == "supervised" ? 2.0 : 1.0);
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(peak_lr).weight_decay(0.05));
  const int warmup = std::max(1, o.steps / 10);
  double loss_sum = 0;
  int loss_n = 0;
  for (int step = 0; step < o.steps; ++step) {
    const double lr = step < warmup ? peak_lr * (step + 1) / warmup
                                    : peak_lr * 0.5 *
                                          (1 + std::cos(kPi * (step - warmup) /
                                                        std::max(1, o.steps - warmup)));
    for (auto& g : optimizer.param_groups()) g.options().set_lr(lr);
    // Every method processes about 2 x batch_size images per step: two views
    // (SimCLR, BYOL, DINO), one view of twice the batch (supervised), four
    // rotations of half the batch (rotation); MAE encodes one view.
    const int64_t batch = method == "supervised" ? 2 * o.batch_size
                          : method == "rotation" ? o.batch_size / 2
                                                 : o.batch_size;
    at::Tensor rows = at::randint(data.count, {batch}, gen, at::TensorOptions().dtype(at::kLong));
    at::Tensor x = Batch(data, rows);
    at::Tensor loss;
    if (method == "supervised") {
      at::Tensor y = at::from_blob(const_cast<int32_t*>(data.labels.data()), {data.count},
                                   at::TensorOptions().dtype(at::kInt))
                         .index_select(0, rows)
                         .to(at::kLong);
      // The supervised baseline as usually trained: mild augmentation.
      loss = at::cross_entropy_loss(head(Features(backbone, Normalize(Augment(x, gen, 0.8)))), y);
    } else if (method == "rotation") {
      std::vector<at::Tensor> views;
      std::vector<at::Tensor> labels;
      for (int k = 0; k < 4; ++k) {
        views.push_back(at::rot90(x, k, {2, 3}));
        labels.push_back(at::full({batch}, k, at::TensorOptions().dtype(at::kLong)));
      }
      loss = at::cross_entropy_loss(rot(Features(backbone, Normalize(at::cat(views)))), at::cat(labels));
    } else if (method == "simclr") {
      at::Tensor v = at::cat({Augment(x, gen), Augment(x, gen)});
      at::Tensor z = L2Normalize(proj(Features(backbone, Normalize(v))));
      const int64_t n = batch;
      at::Tensor sim = at::matmul(z, z.t()) / 0.2;
      sim = sim - at::eye(2 * n) * 1e9;
      at::Tensor targets = at::cat({at::arange(n, 2 * n), at::arange(0, n)});
      loss = at::cross_entropy_loss(sim, targets);
    } else if (method == "byol" || method == "dino") {
      at::Tensor v1 = Normalize(Augment(x, gen)), v2 = Normalize(Augment(x, gen));
      at::Tensor s = Features(backbone, at::cat({v1, v2}));
      at::Tensor t;
      {
        at::NoGradGuard no_grad;
        t = teacher_head(Features(teacher, at::cat({v2, v1})));  // swapped views
        if (method == "dino") t = prototype_logits(t, teacher_protos);
      }
      if (method == "byol") {
        at::Tensor p = L2Normalize(byol_pred(byol_proj(s)));
        at::Tensor tn = L2Normalize(t);
        loss = (2 - 2 * (p * tn).sum(1)).mean();
      } else {
        at::Tensor targets = at::softmax((t - center) / 0.04, 1);
        loss = -(targets * at::log_softmax(prototype_logits(dino_head(s), protos) / 0.1, 1)).sum(1).mean();
        at::NoGradGuard no_grad;
        center = center * 0.9 + t.mean(0, /*keepdim=*/true) * 0.1;
      }
    } else if (method == "mae") {
      // Mask 60% of the 16 patches; reconstruct their (normalised) pixels.
      at::Tensor xn = Normalize(x);
      at::Tensor mask = (at::rand({batch, kTokens}, gen) < 0.6).to(at::kFloat);
      at::Tensor tokens = backbone.get_method("tokens")({xn, mask}).toTensor();
      at::Tensor pred = decoder(tokens.narrow(1, 1, kTokens));
      at::Tensor target = xn.unfold(2, kPatch, kPatch).unfold(3, kPatch, kPatch)
                              .reshape({batch, kTokens, kPatch * kPatch});
      at::Tensor err = ((pred - target) * (pred - target)).mean(2);
      loss = (err * mask).sum() / at::clamp_min(mask.sum(), 1.0);
    }
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (method == "byol" || method == "dino") {
      // Target momentum from kEmaStart to 1 on a cosine (short schedules
      // need a faster-moving target than the usual 0.996).
      const double m = 1 - (1 - kEmaStart) * (std::cos(kPi * step / o.steps) + 1) / 2;
      Ema(teacher, backbone, m);
      EmaHead(teacher_head, method == "byol" ? byol_proj : dino_head, m);
      if (method == "dino") {
        at::NoGradGuard no_grad;
        teacher_protos.mul_(m).add_(protos.detach(), 1.0 - m);
      }
    }
    const double value = loss.item<double>();
    if (!std::isfinite(value)) {
      return absl::InternalError(absl::StrCat(spec.name, ": pre-training diverged at step ",
                                              step + 1, " (loss ", value, ")"));
    }
    if (step >= o.steps - std::max(1, o.steps / 10)) {
      loss_sum += value;
      ++loss_n;
    }
    if (progress && ((step + 1) % 10 == 0 || step + 1 == o.steps)) progress(spec.name, step + 1, o.steps);
  }
  backbone.eval();
  for (at::Tensor p : backbone.parameters()) p.requires_grad_(false);
  return loss_n > 0 ? loss_sum / loss_n : 0.0;
}

std::string Stamp(const ZooOptions& o, const Spec& s) {
  return absl::StrCat(kStampVersion, "\nmodel=", s.name, "\nsteps=", o.steps,
                      "\nbatch_size=", o.batch_size, "\ntrain_images=", o.train_images,
                      "\nseed=", o.seed, "\n");
}

}  // namespace

std::vector<std::string> ZooModelNames() {
  std::vector<std::string> names;
  for (const Spec& s : kSpecs) names.push_back(s.name);
  return names;
}

absl::StatusOr<std::vector<ZooModel>> BuildZoo(const ZooOptions& o, const ZooProgress& progress) {
  if (o.out.empty()) return absl::InvalidArgumentError("zoo: no output folder");
  if (o.steps < 1 || o.batch_size < 2 || o.train_images < o.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "zoo: need steps >= 1, batch_size >= 2 and train_images >= batch_size (got ", o.steps, ", ",
        o.batch_size, ", ", o.train_images, ")"));
  }
  const std::vector<std::string> names = ZooModelNames();
  for (const std::string& n : o.only) {
    if (std::find(names.begin(), names.end(), n) == names.end()) {
      return absl::InvalidArgumentError(absl::StrCat("zoo: no model \"", n, "\""));
    }
  }
  std::error_code ec;
  const fs::path out = fs::absolute(o.out, ec).lexically_normal();
  fs::create_directories(out, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out.string(), ": ", ec.message()));

  std::vector<ZooModel> models;
  std::unique_ptr<ImageSet> data;
  for (size_t i = 0; i < std::size(kSpecs); ++i) {
    const Spec& s = kSpecs[i];
    if (!o.only.empty() && std::find(o.only.begin(), o.only.end(), s.name) == o.only.end()) continue;
    ZooModel model;
    model.name = s.name;
    model.backbone = s.backbone;
    model.method = s.method;
    model.family = s.family;
    model.path = (out / absl::StrCat(s.name, ".pt")).string();
    model.feature_dim = kWidth;
    const std::string stamp_path = (out / absl::StrCat(s.name, ".stamp")).string();
    const std::string stamp = Stamp(o, s);
    const std::string existing = datasets::ReadWholeFile(stamp_path).value_or("");
    if (existing.rfind(stamp, 0) == 0 && fs::is_regular_file(model.path, ec) &&
        std::sscanf(existing.c_str() + stamp.size(), "final_loss=%lf", &model.final_loss) == 1) {
      model.cached = true;
      models.push_back(model);
      continue;
    }
    if (data == nullptr) {
      ASSIGN_OR_RETURN(ImageSet set, ReadIdxSplit(o.fmnist_root, "train", o.train_images));
      if (set.height != kSide || set.width != kSide || set.channels != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(o.fmnist_root, " is not Fashion-MNIST (28x28 grey)"));
      }
      data = std::make_unique<ImageSet>(std::move(set));
    }
    const uint64_t seed = MixSeed(o.seed, i);
    const auto start = std::chrono::steady_clock::now();
    try {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
      torch::jit::Module backbone = model.backbone == "vit-tiny" ? VitTiny(gen) : ResNetSmall(gen);
      ASSIGN_OR_RETURN(model.final_loss, Pretrain(s, backbone, *data, o, seed, progress));
      const std::string tmp = model.path + ".partial";
      backbone.save(tmp);
      fs::rename(tmp, model.path, ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot write ", model.path, ": ", ec.message()));
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("zoo: ", s.name, ": ", ErrorText(e)));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("zoo: ", s.name, ": ", e.what()));
    }
    model.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    {
      std::ofstream f(stamp_path);
      f << stamp << absl::StrFormat("final_loss=%.17g\n", model.final_loss);
      if (!f) return absl::InternalError(absl::StrCat("cannot write ", stamp_path));
    }
    models.push_back(model);
  }

  std::string yaml = "# The model zoo (sslbench zoo build): paste under a study's models:\nmodels:\n";
  for (const ZooModel& m : models) {
    absl::StrAppend(&yaml, "  - name: ", m.name, "\n    path: ", m.path, "\n    backbone: ", m.backbone,
                    "\n    method: ", m.method, "\n    family: ", m.family,
                    "\n    channels: 1\n    input_size: 28\n    mean: [", kMean, "]\n    std: [", kStd,
                    "]\n");
  }
  std::ofstream y(out / "zoo.yaml");
  y << yaml;
  if (!y) return absl::InternalError(absl::StrCat("cannot write ", (out / "zoo.yaml").string()));
  return models;
}

}  // namespace sslbench::compute
