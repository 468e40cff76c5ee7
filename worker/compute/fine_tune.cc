#include "worker/compute/fine_tune.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/script.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/device.h"
#include "worker/compute/device_internal.h"

// Determinism. Every random choice of a run (head initialisation, epoch
// shuffles, crops, flips) comes from one std::mt19937_64 owned by the run and
// drawn in a fixed order; randomness inside the backbone (dropout, drop path)
// comes from LibTorch's process-wide default CPU generator, which the run
// seeds at its start. Both states go into every checkpoint, with the state
// the run's generator had at the start of the current epoch, from which that
// epoch's permutation is drawn again on resume. The optimizer state is
// written per parameter in optimizer order (not torch::save, whose keys are
// tensor addresses), so equal runs write byte-identical checkpoints.
//
// Checkpoint layout (host byte order, little-endian on every supported
// platform):
//   "SSLBFTCK" | u32 version | u64 options hash | u64 payload size |
//   u32 CRC-32 of the payload | payload
// The payload is a sequence of fields written by `Writer` below, in the order
// of SaveCheckpoint. The options hash covers everything that shapes the
// trajectory (options but checkpoint_every_steps, preprocessing, class count,
// the train set's geometry and labels).

namespace sslbench::compute {
namespace {

// The key of a parameter in an optimizer's state map: LibTorch 1.x keys it
// by the printed address of the parameter's TensorImpl, 2.x by the address.
template <typename StateMap>
typename StateMap::key_type OptimizerStateKey(const at::Tensor& p) {
  using Key = typename StateMap::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream out;
    out << static_cast<const void*>(p.unsafeGetTensorImpl());
    return out.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

constexpr char kMagic[8] = {'S', 'S', 'L', 'B', 'F', 'T', 'C', 'K'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 8 + 8 + 4;
constexpr double kBatchNormMomentum = 0.1;  // BatchNorm1d defaults
constexpr double kBatchNormEps = 1e-5;
constexpr double kHeadInitStd = 0.01;
constexpr double kPi = 3.14159265358979323846;

std::string ErrorText(const c10::Error& e) { return e.what_without_backtrace(); }

// ---------------------------------------------------------------------------
// Random numbers. Written out rather than std::*_distribution, whose output
// the standard leaves to the library: a checkpoint must resume identically
// under any standard library.

double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

double Uniform(std::mt19937_64& rng, double lo, double hi) {
  return lo + (hi - lo) * Uniform01(rng);
}

// Uniform in [0, bound), bound > 0, without modulo bias.
uint64_t UniformInt(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

std::vector<int64_t> Permutation(int64_t n, std::mt19937_64& rng) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    std::swap(v[i], v[UniformInt(rng, static_cast<uint64_t>(i) + 1)]);
  }
  return v;
}

std::string RngState(const std::mt19937_64& rng) {
  std::ostringstream out;
  out << rng;
  return out.str();
}

bool SetRngState(const std::string& state, std::mt19937_64* rng) {
  std::istringstream in(state);
  in >> *rng;
  return !in.fail();
}

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Standard normal by Box-Muller, from the run's generator.
at::Tensor Normal(std::mt19937_64& rng, int64_t rows, int64_t cols, double stddev) {
  at::Tensor t = at::empty({rows, cols}, at::kFloat);
  float* p = t.data_ptr<float>();
  const int64_t n = rows * cols;
  for (int64_t i = 0; i < n; i += 2) {
    const double u1 = 1.0 - Uniform01(rng);  // (0, 1]
    const double u2 = Uniform01(rng);
    const double r = std::sqrt(-2.0 * std::log(u1));
    p[i] = static_cast<float>(stddev * r * std::cos(2 * kPi * u2));
    if (i + 1 < n) p[i + 1] = static_cast<float>(stddev * r * std::sin(2 * kPi * u2));
  }
  return t;
}

// torchvision's RandomResizedCrop.get_params: ten tries at an area fraction
// in [min_scale, 1] and a log-uniform aspect ratio in [3/4, 4/3], then a
// centre crop clamped to that ratio range. Python's round() ties to even, as
// std::nearbyint does in the default rounding mode.
struct Crop {
  int64_t top, left, height, width;
};

Crop SampleCrop(int64_t height, int64_t width, double min_scale, std::mt19937_64& rng) {
  constexpr double kMinRatio = 3.0 / 4.0;
  constexpr double kMaxRatio = 4.0 / 3.0;
  const double area = static_cast<double>(height * width);
  const double log_lo = std::log(kMinRatio);
  const double log_hi = std::log(kMaxRatio);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * Uniform(rng, min_scale, 1.0);
    const double ratio = std::exp(Uniform(rng, log_lo, log_hi));
    const auto w = static_cast<int64_t>(std::nearbyint(std::sqrt(target * ratio)));
    const auto h = static_cast<int64_t>(std::nearbyint(std::sqrt(target / ratio)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const auto top = static_cast<int64_t>(UniformInt(rng, height - h + 1));
      const auto left = static_cast<int64_t>(UniformInt(rng, width - w + 1));
      return {top, left, h, w};
    }
  }
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  int64_t w = width;
  int64_t h = height;
  if (in_ratio < kMinRatio) {
    h = static_cast<int64_t>(std::nearbyint(w / kMinRatio));
  } else if (in_ratio > kMaxRatio) {
    w = static_cast<int64_t>(std::nearbyint(h * kMaxRatio));
  }
  return {(height - h) / 2, (width - w) / 2, h, w};
}

// ---------------------------------------------------------------------------
// Checkpoint encoding.

class Writer {
 public:
  void Raw(const void* data, size_t n) { out_.append(static_cast<const char*>(data), n); }
  void I64(int64_t v) { Raw(&v, sizeof(v)); }
  void F64(double v) { Raw(&v, sizeof(v)); }
  void Bytes(const std::string& s) {
    I64(static_cast<int64_t>(s.size()));
    out_.append(s);
  }
  // A CPU tensor of any dtype: defined flag, dtype, shape, raw contiguous data.
  void Tensor(const at::Tensor& t) {
    I64(t.defined() ? 1 : 0);
    if (!t.defined()) return;
    const at::Tensor c = t.detach().cpu().contiguous();
    I64(static_cast<int64_t>(c.scalar_type()));
    I64(c.dim());
    for (int64_t s : c.sizes()) I64(s);
    const size_t nbytes = c.numel() * c.element_size();
    I64(static_cast<int64_t>(nbytes));
    Raw(c.data_ptr(), nbytes);
  }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(const char* data, size_t size) : data_(data), size_(size) {}

  bool Raw(void* out, size_t n) {
    if (n > size_ - pos_) return false;
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return true;
  }
  bool I64(int64_t* v) { return Raw(v, sizeof(*v)); }
  bool F64(double* v) { return Raw(v, sizeof(*v)); }
  bool Bytes(std::string* s) {
    int64_t n = 0;
    if (!I64(&n) || n < 0 || static_cast<uint64_t>(n) > size_ - pos_) return false;
    s->assign(data_ + pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return true;
  }
  bool Tensor(at::Tensor* t) {
    int64_t defined = 0;
    if (!I64(&defined) || (defined != 0 && defined != 1)) return false;
    if (defined == 0) {
      *t = at::Tensor();
      return true;
    }
    int64_t type = 0;
    int64_t dim = 0;
    if (!I64(&type) || !I64(&dim) || dim < 0 || dim > 16) return false;
    at::ScalarType scalar_type;
    switch (static_cast<at::ScalarType>(type)) {
      case at::kByte:
      case at::kChar:
      case at::kShort:
      case at::kInt:
      case at::kLong:
      case at::kHalf:
      case at::kFloat:
      case at::kDouble:
      case at::kBool:
      case at::kBFloat16:
        scalar_type = static_cast<at::ScalarType>(type);
        break;
      default:
        return false;
    }
    std::vector<int64_t> sizes(dim);
    uint64_t numel = 1;
    for (int64_t& s : sizes) {
      if (!I64(&s) || s < 0 || s > (int64_t{1} << 40)) return false;
      numel *= static_cast<uint64_t>(s);
      if (numel > (uint64_t{1} << 40)) return false;
    }
    int64_t nbytes = 0;
    if (!I64(&nbytes) || nbytes < 0 ||
        static_cast<uint64_t>(nbytes) != numel * c10::elementSize(scalar_type) ||
        static_cast<uint64_t>(nbytes) > size_ - pos_) {
      return false;
    }
    *t = at::empty(sizes, at::TensorOptions().dtype(scalar_type));
    return Raw(t->data_ptr(), static_cast<size_t>(nbytes));
  }
  bool AtEnd() const { return pos_ == size_; }

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

uint32_t Crc32(const std::string& s) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = reinterpret_cast<const Bytef*>(s.data());
  size_t left = s.size();
  while (left > 0) {
    const auto n = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
    crc = crc32(crc, p, n);
    p += n;
    left -= n;
  }
  return static_cast<uint32_t>(crc);
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string Hex(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%a", v);
  return buf;
}

uint64_t OptionsHash(const ModelOptions& model, const ImageSet& train, int num_classes,
                     const FineTuneOptions& o) {
  std::string s = absl::StrCat(
      "sslbench-finetune|optimizer=", o.optimizer, "|lr=", Hex(o.learning_rate),
      "|wd=", Hex(o.weight_decay), "|momentum=", Hex(o.momentum), "|epochs=", o.epochs,
      "|batch=", o.batch_size, "|warmup=", o.warmup_epochs, "|smoothing=", Hex(o.label_smoothing),
      "|bn=", o.batch_norm ? 1 : 0, "|min_scale=", Hex(o.min_scale), "|flip=", o.flip ? 1 : 0,
      "|seed=", o.seed, "|layer_decay=", Hex(o.layer_decay), "|classes=", num_classes, "|input_size=", model.input_size,
      "|channels=", model.channels, "|mean=");
  for (float v : model.mean) absl::StrAppend(&s, Hex(v), ",");
  absl::StrAppend(&s, "|std=");
  for (float v : model.std) absl::StrAppend(&s, Hex(v), ",");
  absl::StrAppend(&s, "|train=", train.count, "x", train.channels, "x", train.height, "x",
                  train.width, "|labels=");
  uint64_t labels = 0x9E3779B97F4A7C15ULL;
  for (int32_t l : train.labels) labels = Mix64(labels ^ static_cast<uint32_t>(l));
  absl::StrAppend(&s, labels);
  return Fnv1a(s);
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::vector<float>> PerChannel(const std::vector<float>& v, float fallback,
                                              int channels, const char* name,
                                              const std::string& path) {
  if (v.empty()) return std::vector<float>(channels, fallback);
  if (v.size() == 1) return std::vector<float>(channels, v[0]);
  if (static_cast<int>(v.size()) == channels) return v;
  return absl::InvalidArgumentError(absl::StrCat("model '", path, "': ", name, " has ", v.size(),
                                                 " values; expected 1 or ", channels,
                                                 " (one per model channel)"));
}

absl::Status ValidateImages(const ImageSet& set, const char* name, const ModelOptions& model,
                            int num_classes) {
  if (set.channels != 1 && set.channels != model.channels) {
    return absl::InvalidArgumentError(absl::StrCat("model '", model.path, "' expects ",
                                                   model.channels, " channels; ", name,
                                                   " images have ", set.channels));
  }
  if (set.height <= 0 || set.width <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, " images have no pixels"));
  }
  if (static_cast<int64_t>(set.pixels.size()) < set.count * set.image_bytes() ||
      static_cast<int64_t>(set.labels.size()) != set.count) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " set holds ", set.pixels.size(), " bytes and ", set.labels.size(),
                     " labels; expected ", set.count * set.image_bytes(), " and ", set.count));
  }
  for (int32_t l : set.labels) {
    if (l < 0 || l >= num_classes) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " label ", l, " is outside [0, ", num_classes, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const FineTuneOptions& o) {
  auto bad = [](const char* what, auto value) {
    return absl::InvalidArgumentError(absl::StrCat("fine-tune option ", what, ", got ", value));
  };
  if (o.optimizer != "sgd" && o.optimizer != "adamw") {
    return absl::InvalidArgumentError(absl::StrCat(
        "fine-tune optimizer must be \"sgd\" or \"adamw\", got \"", o.optimizer, "\""));
  }
  if (!(o.learning_rate > 0) || !std::isfinite(o.learning_rate)) {
    return bad("learning_rate must be positive and finite", o.learning_rate);
  }
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay)) {
    return bad("weight_decay must be >= 0", o.weight_decay);
  }
  if (!(o.momentum >= 0 && o.momentum < 1)) {
    return bad("momentum must be in [0, 1)", o.momentum);
  }
  if (o.epochs < 1) return bad("epochs must be >= 1", o.epochs);
  if (o.batch_size < 1) return bad("batch_size must be >= 1", o.batch_size);
  if (o.warmup_epochs < 0) return bad("warmup_epochs must be >= 0", o.warmup_epochs);
  if (!(o.label_smoothing >= 0 && o.label_smoothing < 1)) {
    return bad("label_smoothing must be in [0, 1)", o.label_smoothing);
  }
  if (!(o.min_scale > 0 && o.min_scale <= 1)) {
    return bad("min_scale must be in (0, 1]", o.min_scale);
  }
  if (o.checkpoint_every_steps < 0) {
    return bad("checkpoint_every_steps must be >= 0", o.checkpoint_every_steps);
  }
  return absl::OkStatus();
}

// Where a run stands; what a checkpoint restores besides the tensors.
struct Position {
  int64_t step = 0;        // optimizer steps done
  int64_t epoch = 0;       // current epoch
  int64_t next_batch = 0;  // batches of `epoch` already consumed
  std::string rng_state;
  std::string epoch_rng_state;  // the run's generator at the start of `epoch`
  double epoch_loss_sum = 0;
  int64_t epoch_loss_count = 0;
  double final_loss = 0;  // mean train loss of the last completed epoch
};

class FineTuneRun {
 public:
  // `device` and `dtype`: where the backbone and head live and the
  // autocast precision of forward passes (at::kFloat: none). The checkpoint
  // format does not depend on them: tensors are written from the host.
  FineTuneRun(const ModelOptions& model, const ImageSet& train, const ImageSet& test,
              int num_classes, const FineTuneOptions& options, std::vector<float> mean,
              std::vector<float> std, c10::Device device, at::ScalarType dtype)
      : model_(model),
        train_(train),
        test_(test),
        num_classes_(num_classes),
        options_(options),
        device_(device),
        dtype_(dtype),
        mean_(at::tensor(mean).view({1, -1, 1, 1}).to(device)),
        std_(at::tensor(std).view({1, -1, 1, 1}).to(device)),
        out_h_(model.input_size > 0 ? model.input_size : train.height),
        out_w_(model.input_size > 0 ? model.input_size : train.width),
        options_hash_(OptionsHash(model, train, num_classes, options)) {
    // drop_last, as fine-tuning recipes do, unless train is smaller than one
    // batch.
    steps_per_epoch_ = std::max<int64_t>(1, train.count / options.batch_size);
    batch_ = std::min<int64_t>(options.batch_size, train.count);
    total_steps_ = steps_per_epoch_ * options.epochs;
    warmup_steps_ = steps_per_epoch_ * options.warmup_epochs;
    peak_lr_ = options.learning_rate * options.batch_size / 256.0;
  }

  // Loads the model from its file and builds a fresh head and optimizer.
  absl::Status Start() {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(model_.path, ec)) {
      return absl::NotFoundError(absl::StrCat("model file '", model_.path, "' does not exist"));
    }
    try {
      module_ = torch::jit::load(model_.path, device_);
    } catch (const c10::Error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("failed to load model '", model_.path, "': ", ErrorText(e)));
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("failed to load model '", model_.path, "': ", e.what()));
    }
    if (absl::Status s = PrepareBackbone(); !s.ok()) return s;
    rng_.seed(options_.seed);
    // Drawn on the host (the same head on every device), then moved.
    weight_ = Normal(rng_, num_classes_, dim_, kHeadInitStd).to(device_);
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
    bias_ = at::zeros({num_classes_}, f32);
    if (options_.batch_norm) {
      bn_mean_ = at::zeros({dim_}, f32);
      bn_var_ = at::ones({dim_}, f32);
    }
    BuildOptimizer();
    SeedDefaultGenerator();
    return absl::OkStatus();
  }

  absl::Status Resume(const std::string& bytes);

  absl::StatusOr<FineTuneResult> Train(const CheckpointSink& checkpoint,
                                       const ProgressFn& progress);

 private:
  // Train mode, every parameter trainable, feature width from one forward of
  // a dummy batch in eval mode (eval: it must not move BatchNorm statistics).
  absl::Status PrepareBackbone() {
    try {
      module_.eval();
      at::Tensor features;
      {
        at::NoGradGuard no_grad;
        at::Tensor dummy = at::zeros({2, model_.channels, out_h_, out_w_},
                                     at::TensorOptions().dtype(at::kFloat).device(device_));
        torch::jit::IValue out = module_.forward({dummy});
        if (!out.isTensor()) {
          return absl::InvalidArgumentError(
              absl::StrCat("model '", model_.path, "' returned ", out.tagKind(), ", not a tensor"));
        }
        features = out.toTensor();
      }
      if (features.dim() < 1 || features.size(0) != 2 || features.numel() == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("model '", model_.path, "' returned a tensor of shape ",
                         c10::str(features.sizes()), " for a batch of 2"));
      }
      dim_ = features.numel() / 2;
      module_.train();
      params_.clear();
      std::vector<std::string> names;
      for (const auto& named : module_.named_parameters(/*recurse=*/true)) {
        at::Tensor p = named.value;
        p.requires_grad_(true);
        params_.push_back(p);
        names.push_back(named.name);
      }
      param_scales_.assign(params_.size(), 1.0);
      decay_blocks_ = 0;
      if (options_.layer_decay > 0 && options_.layer_decay < 1) {
        param_scales_ = LayerDecayScales(names, options_.layer_decay, &decay_blocks_);
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("model '", model_.path, "' failed: ", ErrorText(e)));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("model '", model_.path, "' failed: ", e.what()));
    }
    return absl::OkStatus();
  }

  // One parameter group per learning-rate factor (one group without layer
  // decay); the head trains at the full rate.
  void BuildOptimizer() {
    weight_.requires_grad_(true);
    bias_.requires_grad_(true);
    std::vector<at::Tensor> all = params_;
    all.push_back(weight_);
    all.push_back(bias_);
    std::vector<double> scales = param_scales_;
    scales.push_back(1.0);
    scales.push_back(1.0);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    group_scales_.clear();
    std::map<double, size_t> group_of;
    std::vector<std::vector<at::Tensor>> members;
    for (size_t i = 0; i < all.size(); ++i) {
      auto [it, added] = group_of.emplace(scales[i], members.size());
      if (added) {
        members.emplace_back();
        group_scales_.push_back(scales[i]);
      }
      members[it->second].push_back(all[i]);
    }
    for (auto& m : members) groups.emplace_back(std::move(m));
    if (options_.optimizer == "adamw") {
      optimizer_ = std::make_unique<torch::optim::AdamW>(
          groups, torch::optim::AdamWOptions(peak_lr_).weight_decay(options_.weight_decay));
    } else {
      optimizer_ = std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(peak_lr_)
                                                                   .momentum(options_.momentum)
                                                                   .weight_decay(options_.weight_decay)
                                                                   .nesterov(false));
    }
    optimizer_params_ = std::move(all);
  }

  // Dropout and drop path inside a backbone draw from the default generator.
  void SeedDefaultGenerator() {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(Mix64(options_.seed ^ 0x44524F504F5554ULL));  // "DROPOUT"
  }

  double LearningRate(int64_t step) const {
    if (step < warmup_steps_) {
      return peak_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_steps_);
    }
    const double span = static_cast<double>(total_steps_ - warmup_steps_);
    const double t = span > 0 ? static_cast<double>(step - warmup_steps_) / span : 0.0;
    return peak_lr_ * 0.5 * (1.0 + std::cos(kPi * t));
  }

  // uint8 -> float in [0, 1], grey replicated to the model's channels,
  // normalised; `x` is [n, image channels, out_h, out_w].
  at::Tensor Finish(at::Tensor x) const {
    if (x.size(1) == 1 && model_.channels == 3) {
      x = x.expand({x.size(0), 3, x.size(2), x.size(3)});
    }
    return ((x - mean_) / std_).contiguous();
  }

  // As FeatureExtractor: the whole image, resized to the input size.
  at::Tensor EvalBatch(const ImageSet& images, int64_t start, int64_t n) const {
    at::Tensor raw = at::from_blob(
        const_cast<uint8_t*>(images.pixels.data() + start * images.image_bytes()),
        {n, images.channels, images.height, images.width}, at::TensorOptions().dtype(at::kByte));
    // Bytes cross to the device, a quarter of the floats.
    at::Tensor x = raw.to(device_).to(at::kFloat).div_(255.0f);
    if (images.height != out_h_ || images.width != out_w_) {
      x = at::upsample_bilinear2d(x, {out_h_, out_w_}, /*align_corners=*/false);
    }
    return Finish(x);
  }

  // RandomResizedCrop back to the input size, then a flip with p = 0.5.
  // Draws, per image in batch order: the crop's, then the flip's.
  at::Tensor TrainBatch(const int64_t* rows, int64_t n) {
    const ImageSet& images = train_;
    const int64_t bytes = images.image_bytes();
    at::Tensor out = at::empty({n, images.channels, out_h_, out_w_}, at::kFloat);
    for (int64_t k = 0; k < n; ++k) {
      at::Tensor image = at::from_blob(const_cast<uint8_t*>(images.pixels.data() + rows[k] * bytes),
                                       {1, images.channels, images.height, images.width},
                                       at::TensorOptions().dtype(at::kByte))
                             .to(at::kFloat)
                             .div_(255.0f);
      const Crop crop = SampleCrop(images.height, images.width, options_.min_scale, rng_);
      at::Tensor patch = image.narrow(2, crop.top, crop.height).narrow(3, crop.left, crop.width);
      patch = at::upsample_bilinear2d(patch, {out_h_, out_w_}, /*align_corners=*/false);
      if (options_.flip && Uniform01(rng_) < 0.5) patch = patch.flip({3});
      out.narrow(0, k, 1).copy_(patch);
    }
    return Finish(out.to(device_));
  }

  at::Tensor Features(const at::Tensor& x) {
    torch::jit::IValue out = module_.forward({x});
    if (!out.isTensor()) {
      throw std::runtime_error(absl::StrCat("returned ", out.tagKind(), ", not a tensor"));
    }
    at::Tensor f = out.toTensor().reshape({x.size(0), -1}).to(at::kFloat);
    if (f.size(1) != dim_) {
      throw std::runtime_error(
          absl::StrCat("returned ", f.size(1), " features per image; expected ", dim_));
    }
    return f;
  }

  at::Tensor Logits(const at::Tensor& features, bool training) {
    at::Tensor f = features;
    if (options_.batch_norm) {
      f = at::batch_norm(f, /*weight=*/{}, /*bias=*/{}, bn_mean_, bn_var_, training,
                         kBatchNormMomentum, kBatchNormEps, /*cudnn_enabled=*/false);
    }
    return at::linear(f, weight_, bias_);
  }

  std::vector<float> Evaluate() {
    std::vector<float> scores(static_cast<size_t>(test_.count) * num_classes_);
    module_.eval();
    {
      c10::InferenceMode inference;
      for (int64_t start = 0; start < test_.count; start += batch_) {
        const int64_t n = std::min<int64_t>(batch_, test_.count - start);
        at::Tensor logits;
        {
          device_internal::AutocastScope autocast(device_, dtype_);
          logits = Logits(Features(EvalBatch(test_, start, n)), /*training=*/false);
        }
        logits = logits.to(at::kCPU, at::kFloat).contiguous();
        std::memcpy(scores.data() + start * num_classes_, logits.data_ptr<float>(),
                    static_cast<size_t>(n * num_classes_) * sizeof(float));
      }
    }
    module_.train();
    return scores;
  }

  absl::StatusOr<std::string> SaveCheckpoint() const;

  const ModelOptions& model_;
  const ImageSet& train_;
  const ImageSet& test_;
  const int num_classes_;
  const FineTuneOptions& options_;
  const c10::Device device_;
  const at::ScalarType dtype_;
  const at::Tensor mean_;
  const at::Tensor std_;
  const int64_t out_h_;
  const int64_t out_w_;
  const uint64_t options_hash_;
  int64_t steps_per_epoch_ = 0;
  int64_t batch_ = 0;
  int64_t total_steps_ = 0;
  int64_t warmup_steps_ = 0;
  double peak_lr_ = 0;

  torch::jit::Module module_;
  int64_t dim_ = 0;
  std::vector<at::Tensor> params_;            // backbone parameters
  std::vector<double> param_scales_;          // their lr factors (layer decay)
  std::vector<double> group_scales_;          // lr factor of each optimizer group
  int decay_blocks_ = 0;                      // blocks layer decay found
  std::vector<at::Tensor> optimizer_params_;  // backbone, then head weight, bias
  at::Tensor weight_;                         // head [num_classes, dim]
  at::Tensor bias_;                           // head [num_classes]
  at::Tensor bn_mean_;                        // BatchNorm running stats [dim]
  at::Tensor bn_var_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::mt19937_64 rng_;
  Position pos_;
  int64_t resumed_from_step_ = 0;
};

absl::StatusOr<std::string> FineTuneRun::SaveCheckpoint() const {
  Writer w;
  w.I64(pos_.step);
  w.I64(pos_.epoch);
  w.I64(pos_.next_batch);
  w.Bytes(pos_.rng_state);
  w.Bytes(pos_.epoch_rng_state);
  w.F64(pos_.epoch_loss_sum);
  w.I64(pos_.epoch_loss_count);
  w.F64(pos_.final_loss);
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    w.Tensor(gen.get_state());
  }
  std::ostringstream module_bytes;
  module_.save(module_bytes);
  w.Bytes(module_bytes.str());
  w.Tensor(weight_);
  w.Tensor(bias_);
  w.Tensor(bn_mean_);
  w.Tensor(bn_var_);
  // Optimizer state per parameter, in optimizer order.
  const auto& state = optimizer_->state();
  w.I64(static_cast<int64_t>(optimizer_params_.size()));
  for (const at::Tensor& p : optimizer_params_) {
    auto it = state.find(OptimizerStateKey<std::decay_t<decltype(state)>>(p));
    if (options_.optimizer == "adamw") {
      if (it == state.end()) {
        w.I64(-1);
        continue;
      }
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
      w.I64(s.step());
      w.Tensor(s.exp_avg());
      w.Tensor(s.exp_avg_sq());
      w.Tensor(s.max_exp_avg_sq());
    } else {
      if (it == state.end()) {
        w.I64(0);
        continue;
      }
      const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
      w.I64(1);
      w.Tensor(s.momentum_buffer());
    }
  }
  // After a step every parameter has state (SGD with momentum, AdamW); a
  // mismatch means the optimizer keys its state differently than assumed here
  // and a resumed run would silently differ.
  const bool expects_state = options_.optimizer == "adamw" || options_.momentum > 0;
  if (expects_state && pos_.step > 0 && state.size() != optimizer_params_.size()) {
    return absl::InternalError(absl::StrCat("optimizer holds state for ", state.size(),
                                            " tensors; expected ", optimizer_params_.size()));
  }

  const std::string& payload = w.str();
  Writer out;
  out.Raw(kMagic, sizeof(kMagic));
  const uint32_t version = kFormatVersion;
  out.Raw(&version, sizeof(version));
  out.Raw(&options_hash_, sizeof(options_hash_));
  const uint64_t size = payload.size();
  out.Raw(&size, sizeof(size));
  const uint32_t crc = Crc32(payload);
  out.Raw(&crc, sizeof(crc));
  out.str().append(payload);
  return std::move(out.str());
}

absl::Status FineTuneRun::Resume(const std::string& bytes) {
  auto corrupt = [](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("fine-tune checkpoint is corrupt: ", why));
  };
  if (bytes.size() < kHeaderBytes || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return corrupt("not a fine-tune checkpoint (bad magic)");
  }
  Reader header(bytes.data() + sizeof(kMagic), kHeaderBytes - sizeof(kMagic));
  uint32_t version = 0;
  uint64_t hash = 0;
  uint64_t size = 0;
  uint32_t crc = 0;
  header.Raw(&version, sizeof(version));
  header.Raw(&hash, sizeof(hash));
  header.Raw(&size, sizeof(size));
  header.Raw(&crc, sizeof(crc));
  if (version != kFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat("fine-tune checkpoint has format version ",
                                                   version, "; this build reads ", kFormatVersion));
  }
  if (size != bytes.size() - kHeaderBytes) {
    return corrupt(
        absl::StrCat("payload is ", bytes.size() - kHeaderBytes, " bytes; header says ", size));
  }
  const std::string payload = bytes.substr(kHeaderBytes);
  if (Crc32(payload) != crc) return corrupt("checksum mismatch");
  if (hash != options_hash_) {
    return absl::InvalidArgumentError(
        "fine-tune checkpoint was written with different options, preprocessing or train "
        "data; start afresh or resume with the options it was written with");
  }

  Reader r(payload.data(), payload.size());
  Position pos;
  at::Tensor generator_state;
  std::string module_bytes;
  if (!r.I64(&pos.step) || !r.I64(&pos.epoch) || !r.I64(&pos.next_batch) ||
      !r.Bytes(&pos.rng_state) || !r.Bytes(&pos.epoch_rng_state) || !r.F64(&pos.epoch_loss_sum) ||
      !r.I64(&pos.epoch_loss_count) || !r.F64(&pos.final_loss) || !r.Tensor(&generator_state) ||
      !r.Bytes(&module_bytes)) {
    return corrupt("truncated");
  }
  if (pos.step < 0 || pos.step > total_steps_ || pos.epoch < 0 || pos.epoch > options_.epochs ||
      pos.next_batch < 0 || pos.next_batch >= steps_per_epoch_ ||
      pos.epoch * steps_per_epoch_ + pos.next_batch != pos.step) {
    return corrupt(absl::StrCat("position step ", pos.step, ", epoch ", pos.epoch, ", batch ",
                                pos.next_batch, " does not fit ", steps_per_epoch_,
                                " steps per epoch"));
  }
  std::mt19937_64 epoch_rng;
  if (!SetRngState(pos.rng_state, &rng_) ||
      (pos.next_batch > 0 && !SetRngState(pos.epoch_rng_state, &epoch_rng))) {
    return corrupt("bad generator state");
  }
  try {
    std::istringstream in(module_bytes);
    module_ = torch::jit::load(in, device_);
  } catch (const c10::Error& e) {
    return corrupt(absl::StrCat("cannot load its model: ", ErrorText(e)));
  } catch (const std::exception& e) {
    return corrupt(absl::StrCat("cannot load its model: ", e.what()));
  }
  if (absl::Status s = PrepareBackbone(); !s.ok()) return s;

  at::Tensor weight, bias, bn_mean, bn_var;
  if (!r.Tensor(&weight) || !r.Tensor(&bias) || !r.Tensor(&bn_mean) || !r.Tensor(&bn_var)) {
    return corrupt("truncated head");
  }
  auto shaped = [](const at::Tensor& t, std::vector<int64_t> sizes) {
    return t.defined() && t.scalar_type() == at::kFloat && t.sizes() == at::IntArrayRef(sizes);
  };
  if (!shaped(weight, {num_classes_, dim_}) || !shaped(bias, {num_classes_}) ||
      (options_.batch_norm && (!shaped(bn_mean, {dim_}) || !shaped(bn_var, {dim_}))) ||
      (!options_.batch_norm && (bn_mean.defined() || bn_var.defined()))) {
    return corrupt("head does not fit the model and class count");
  }
  auto on_device = [this](const at::Tensor& t) { return t.defined() ? t.to(device_) : t; };
  weight_ = on_device(weight);
  bias_ = on_device(bias);
  bn_mean_ = on_device(bn_mean);
  bn_var_ = on_device(bn_var);
  BuildOptimizer();

  int64_t count = 0;
  if (!r.I64(&count) || count != static_cast<int64_t>(optimizer_params_.size())) {
    return corrupt("optimizer state does not fit the model");
  }
  auto& state = optimizer_->state();
  for (const at::Tensor& p : optimizer_params_) {
    auto fits = [&p](const at::Tensor& t) {
      return !t.defined() || (t.scalar_type() == p.scalar_type() && t.sizes() == p.sizes());
    };
    const auto key = OptimizerStateKey<std::decay_t<decltype(state)>>(p);
    if (options_.optimizer == "adamw") {
      int64_t step = 0;
      if (!r.I64(&step) || step < -1) return corrupt("truncated optimizer state");
      if (step < 0) continue;
      at::Tensor exp_avg, exp_avg_sq, max_exp_avg_sq;
      if (!r.Tensor(&exp_avg) || !r.Tensor(&exp_avg_sq) || !r.Tensor(&max_exp_avg_sq) ||
          !fits(exp_avg) || !fits(exp_avg_sq) || !fits(max_exp_avg_sq)) {
        return corrupt("optimizer state does not fit the model");
      }
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(step);
      s->exp_avg(on_device(exp_avg));
      s->exp_avg_sq(on_device(exp_avg_sq));
      s->max_exp_avg_sq(on_device(max_exp_avg_sq));
      state[key] = std::move(s);
    } else {
      int64_t has = 0;
      if (!r.I64(&has) || (has != 0 && has != 1)) return corrupt("truncated optimizer state");
      if (has == 0) continue;
      at::Tensor buffer;
      if (!r.Tensor(&buffer) || !fits(buffer)) {
        return corrupt("optimizer state does not fit the model");
      }
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(on_device(buffer));
      state[key] = std::move(s);
    }
  }
  if (!r.AtEnd()) return corrupt("trailing bytes");
  try {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(generator_state);
  } catch (const std::exception& e) {
    return corrupt(absl::StrCat("bad generator state: ", e.what()));
  }
  pos_ = std::move(pos);
  resumed_from_step_ = pos_.step;
  return absl::OkStatus();
}

absl::StatusOr<FineTuneResult> FineTuneRun::Train(const CheckpointSink& checkpoint,
                                                  const ProgressFn& progress) {
  if (progress && !progress(pos_.step, total_steps_)) {
    return absl::CancelledError("fine-tuning cancelled");
  }
  std::vector<int64_t> targets(batch_);
  for (; pos_.epoch < options_.epochs; ++pos_.epoch) {
    std::vector<int64_t> order;
    if (pos_.next_batch == 0) {
      pos_.epoch_rng_state = RngState(rng_);
      order = Permutation(train_.count, rng_);
      pos_.epoch_loss_sum = 0;
      pos_.epoch_loss_count = 0;
    } else {
      // Resumed mid-epoch: draw the epoch's permutation again from the state
      // the generator had at the epoch's start, then continue where it was.
      std::mt19937_64 epoch_rng;
      SetRngState(pos_.epoch_rng_state, &epoch_rng);
      order = Permutation(train_.count, epoch_rng);
    }
    for (; pos_.next_batch < steps_per_epoch_; ++pos_.next_batch) {
      const int64_t* rows = order.data() + pos_.next_batch * batch_;
      at::Tensor x;
      {
        at::NoGradGuard no_grad;
        x = TrainBatch(rows, batch_);
      }
      for (int64_t k = 0; k < batch_; ++k) targets[k] = train_.labels[rows[k]];
      at::Tensor y = at::tensor(targets, at::kLong).to(device_);
      at::Tensor loss;
      {
        // Forward and loss under autocast; backward outside it, as
        // torch.autocast asks.
        device_internal::AutocastScope autocast(device_, dtype_);
        loss = at::cross_entropy_loss(Logits(Features(x), /*training=*/true), y,
                                      /*weight=*/{}, at::Reduction::Mean,
                                      /*ignore_index=*/-100, options_.label_smoothing);
      }
      optimizer_->zero_grad();
      loss.backward();
      const double lr = LearningRate(pos_.step);
      auto& param_groups = optimizer_->param_groups();
      for (size_t g = 0; g < param_groups.size(); ++g) {
        param_groups[g].options().set_lr(lr * group_scales_[g]);
      }
      optimizer_->step();
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        return absl::FailedPreconditionError(absl::StrCat("fine-tuning diverged at step ",
                                                          pos_.step + 1, " (loss ", value,
                                                          "); lower the learning rate"));
      }
      pos_.epoch_loss_sum += value;
      ++pos_.epoch_loss_count;
      ++pos_.step;

      const bool epoch_end = pos_.next_batch + 1 == steps_per_epoch_;
      if (epoch_end) pos_.final_loss = pos_.epoch_loss_sum / pos_.epoch_loss_count;
      const bool save = options_.checkpoint_every_steps > 0
                            ? pos_.step % options_.checkpoint_every_steps == 0
                            : epoch_end;
      if (save && checkpoint) {
        // Saved as the position after this step: the next batch, or the
        // start of the next epoch.
        Position here = pos_;
        if (epoch_end) {
          ++pos_.epoch;
          pos_.next_batch = 0;
        } else {
          ++pos_.next_batch;
        }
        pos_.rng_state = RngState(rng_);
        absl::StatusOr<std::string> bytes = SaveCheckpoint();
        pos_ = std::move(here);
        if (!bytes.ok()) return bytes.status();
        if (absl::Status s = checkpoint(pos_.step, *bytes); !s.ok()) return s;
      }
      if (progress && !progress(pos_.step, total_steps_)) {
        return absl::CancelledError(
            absl::StrCat("fine-tuning cancelled after step ", pos_.step, " of ", total_steps_));
      }
    }
    pos_.next_batch = 0;
  }

  FineTuneResult result;
  result.test = MetricsFromScores(Evaluate(), test_.labels, num_classes_);
  result.steps = pos_.step;
  result.resumed_from_step = resumed_from_step_;
  result.final_train_loss = pos_.final_loss;
  result.layer_decay_blocks = decay_blocks_;
  return result;
}

}  // namespace

absl::StatusOr<FineTuneResult> RunFineTune(const ModelOptions& model, const ImageSet& train,
                                           const ImageSet& test, int num_classes,
                                           const FineTuneOptions& options,
                                           const std::string& resume_from,
                                           const CheckpointSink& checkpoint,
                                           const ProgressFn& progress) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  if (model.channels != 1 && model.channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model.path, "': channels must be 1 or 3, got ", model.channels));
  }
  if (model.input_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model.path, "': input_size must be >= 0, got ", model.input_size));
  }
  if (num_classes < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("fine-tuning needs at least 2 classes, got ", num_classes));
  }
  if (train.count < 1) return absl::InvalidArgumentError("fine-tuning needs train images");
  if (absl::Status s = ValidateImages(train, "train", model, num_classes); !s.ok()) return s;
  if (absl::Status s = ValidateImages(test, "test", model, num_classes); !s.ok()) return s;
  if (model.input_size == 0 && test.count > 0 &&
      (test.height != train.height || test.width != train.width)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model.path, "' has no input_size and test images are ", test.height,
                     "x", test.width, ", train images ", train.height, "x", train.width));
  }
  if (options.batch_norm && std::min<int64_t>(options.batch_size, train.count) < 2) {
    return absl::InvalidArgumentError("a BatchNorm head needs batches of at least 2 images");
  }
  absl::StatusOr<std::vector<float>> mean =
      PerChannel(model.mean, 0.0f, model.channels, "mean", model.path);
  if (!mean.ok()) return mean.status();
  absl::StatusOr<std::vector<float>> std =
      PerChannel(model.std, 1.0f, model.channels, "std", model.path);
  if (!std.ok()) return std.status();
  for (float s : *std) {
    if (!(s > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("model '", model.path, "': std values must be positive, got ", s));
    }
  }

  const std::string context = absl::StrCat("fine-tuning model '", model.path, "'");
  absl::StatusOr<std::string> device = ResolveDevice(model.device);
  if (!device.ok()) return device_internal::Prefixed(device.status(), context);
  absl::StatusOr<std::string> precision = ResolvePrecision(model.precision, *device);
  if (!precision.ok()) return device_internal::Prefixed(precision.status(), context);
  if (*precision == "fp16") {
    return absl::InvalidArgumentError(
        "fine-tuning runs in fp32 or bf16 (fp16 would need loss scaling)");
  }

  try {
    FineTuneRun run(model, train, test, num_classes, options, *std::move(mean), *std::move(std),
                    *device_internal::TorchDevice(*device),
                    device_internal::PrecisionType(*precision));
    absl::Status started = resume_from.empty() ? run.Start() : run.Resume(resume_from);
    if (!started.ok()) return started;
    return run.Train(checkpoint, progress);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("fine-tuning model '", model.path, "' failed: ", ErrorText(e)));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("fine-tuning model '", model.path, "' failed: ", e.what()));
  }
}


std::vector<double> LayerDecayScales(const std::vector<std::string>& names, double decay,
                                     int* blocks) {
  // The block index in a parameter's name, or -1.
  auto block_of = [](const std::string& name) -> int {
    for (const char* marker : {"encoder_layer_", "blocks."}) {
      const size_t at = name.find(marker);
      if (at == std::string::npos) continue;
      size_t i = at + std::strlen(marker);
      int n = 0;
      bool digits = false;
      while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) {
        n = n * 10 + (name[i++] - '0');
        digits = true;
      }
      if (digits && n < 100000) return n;
    }
    return -1;
  };
  auto is_embedding = [](const std::string& name) {
    for (const char* marker :
         {"class_token", "cls_token", "pos_embed", "pos_embedding", "conv_proj.", "patch_embed."}) {
      if (name.find(marker) != std::string::npos) return true;
    }
    return false;
  };
  int count = 0;
  for (const std::string& name : names) count = std::max(count, block_of(name) + 1);
  *blocks = count;
  std::vector<double> scales(names.size(), 1.0);
  if (count == 0) return scales;
  for (size_t i = 0; i < names.size(); ++i) {
    const int b = block_of(names[i]);
    if (b >= 0) {
      scales[i] = std::pow(decay, count - b);
    } else if (is_embedding(names[i])) {
      scales[i] = std::pow(decay, count + 1);
    }
  }
  return scales;
}

}  // namespace sslbench::compute
