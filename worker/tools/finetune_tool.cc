// sslbench-finetune --root IDX_DIR --model PATH [--train-limit N]
//     [--test-limit N] [--epochs E] [--lr LR] [--threads T]
//     [--batch-size B] [--warmup-epochs W] [--optimizer sgd|adamw]
//     [--weight-decay WD] [--label-smoothing S] [--min-scale S] [--no-flip]
//     [--batch-norm] [--seed N] [--input-size S] [--channels C]
//     [--mean M[,M,M]] [--std S[,S,S]]
//     [--checkpoint-dir D] [--checkpoint-every N] [--keep-checkpoints]
//     [--stop-after-step N] [--linear-baseline]
//
// Fine-tunes a TorchScript backbone end to end on an IDX dataset (MNIST
// layout) and prints one JSON object with the test metrics and the seconds
// taken. With --checkpoint-dir the run writes D/latest.ckpt (and
// D/step-N.ckpt with --keep-checkpoints) and, when D/latest.ckpt exists at
// start, resumes from it. --stop-after-step N cancels the run after step N
// (exit status 3), to exercise resuming. --linear-baseline also reports
// linear classifiers on the frozen backbone's features: a softmax regression
// on z-scored features (SGD with momentum over a learning-rate grid, the rate
// chosen on 10% of train held out; the best test accuracy over the grid as
// an upper bound) and the study's linear probe (RunLinearProbe with its
// defaults, without and with a BatchNorm head).

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/fine_tune.h"
#include "worker/compute/image_set.h"
#include "worker/compute/knn.h"
#include "worker/compute/linear_probe.h"
#include "worker/tools/tool_util.h"

namespace {

using sslbench::compute::ClassificationMetrics;
using sslbench::compute::FeatureExtractor;
using sslbench::compute::FineTuneOptions;
using sslbench::compute::FineTuneResult;
using sslbench::compute::ImageSet;
using sslbench::compute::ModelOptions;
using sslbench::tools::JsonNumber;

int Usage() {
  std::fprintf(stderr,
               "usage: sslbench-finetune --root IDX_DIR --model PATH [--train-limit N] "
               "[--test-limit N] [--epochs E] [--lr LR] [--threads T] [--batch-size B] "
               "[--warmup-epochs W] [--optimizer sgd|adamw] [--weight-decay WD] "
               "[--label-smoothing S] [--min-scale S] [--no-flip] [--batch-norm] [--seed N] "
               "[--input-size S] [--channels C] [--mean M[,M,M]] [--std S[,S,S]] "
               "[--checkpoint-dir D] [--checkpoint-every N] [--keep-checkpoints] "
               "[--stop-after-step N] [--linear-baseline]\n");
  return 2;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

bool ParseFloats(const std::string& text, std::vector<float>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    float v = 0;
    if (!absl::SimpleAtof(part, &v)) return false;
    out->push_back(v);
  }
  return !out->empty();
}

// Writes `bytes` to `path` through a temporary file and a rename, so a crash
// never leaves a torn checkpoint under the final name.
absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// ---------------------------------------------------------------------------
// The frozen-feature baseline: multinomial logistic regression by minibatch
// SGD (momentum 0.9, batch 256, cosine schedule) on z-scored features.

struct Features {
  int64_t rows = 0;
  int64_t dim = 0;
  std::vector<float> data;
  std::vector<int32_t> labels;
};

struct Linear {
  std::vector<float> w;  // [classes, dim]
  std::vector<float> b;  // [classes]
};

Linear TrainSoftmax(const Features& f, const std::vector<int64_t>& rows, int classes, double lr,
                    int epochs, uint64_t seed) {
  const int64_t dim = f.dim;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  Linear m;
  m.w.resize(classes * dim);
  for (float& v : m.w) v = normal(rng);
  m.b.assign(classes, 0.0f);
  std::vector<float> vw(m.w.size(), 0.0f), vb(classes, 0.0f);
  std::vector<float> gw(m.w.size()), gb(classes), p(classes);
  constexpr int kBatch = 256;
  std::vector<int64_t> order = rows;
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t steps_per_epoch = (n + kBatch - 1) / kBatch;
  const int64_t total = steps_per_epoch * epochs;
  int64_t step = 0;
  for (int e = 0; e < epochs; ++e) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t start = 0; start < n; start += kBatch, ++step) {
      const int64_t end = std::min<int64_t>(n, start + kBatch);
      std::fill(gw.begin(), gw.end(), 0.0f);
      std::fill(gb.begin(), gb.end(), 0.0f);
      for (int64_t i = start; i < end; ++i) {
        const float* x = f.data.data() + order[i] * dim;
        float max = -1e30f;
        for (int c = 0; c < classes; ++c) {
          float z = m.b[c];
          const float* wc = m.w.data() + c * dim;
          for (int64_t d = 0; d < dim; ++d) z += wc[d] * x[d];
          p[c] = z;
          max = std::max(max, z);
        }
        float sum = 0;
        for (int c = 0; c < classes; ++c) sum += (p[c] = std::exp(p[c] - max));
        for (int c = 0; c < classes; ++c) {
          const float g = p[c] / sum - (c == f.labels[order[i]] ? 1.0f : 0.0f);
          gb[c] += g;
          float* gwc = gw.data() + c * dim;
          for (int64_t d = 0; d < dim; ++d) gwc[d] += g * x[d];
        }
      }
      const float scale = 1.0f / static_cast<float>(end - start);
      const double rate = lr * 0.5 * (1.0 + std::cos(3.14159265358979323846 * step / total));
      for (size_t k = 0; k < m.w.size(); ++k) {
        vw[k] = 0.9f * vw[k] + gw[k] * scale;
        m.w[k] -= static_cast<float>(rate) * vw[k];
      }
      for (int c = 0; c < classes; ++c) {
        vb[c] = 0.9f * vb[c] + gb[c] * scale;
        m.b[c] -= static_cast<float>(rate) * vb[c];
      }
    }
  }
  return m;
}

double Top1(const Linear& m, const Features& f, const std::vector<int64_t>& rows, int classes) {
  int64_t right = 0;
  for (int64_t r : rows) {
    const float* x = f.data.data() + r * f.dim;
    int best = 0;
    float best_z = -1e30f;
    for (int c = 0; c < classes; ++c) {
      float z = m.b[c];
      for (int64_t d = 0; d < f.dim; ++d) z += m.w[c * f.dim + d] * x[d];
      if (z > best_z) {
        best_z = z;
        best = c;
      }
    }
    right += best == f.labels[r];
  }
  return rows.empty() ? 0.0 : static_cast<double>(right) / rows.size();
}

absl::StatusOr<Features> Extract(FeatureExtractor& extractor, const ImageSet& set) {
  Features f;
  absl::StatusOr<std::vector<float>> data = extractor.Extract(set, 0, set.count, 256, &f.dim);
  if (!data.ok()) return data.status();
  f.rows = set.count;
  f.data = *std::move(data);
  f.labels = set.labels;
  return f;
}

struct Baseline {
  double top1 = 0;  // with the rate chosen on held-out train
  double best_lr = 0;
  double oracle_top1 = 0;  // best test accuracy over the grid (an upper bound)
  double seconds = 0;
  int64_t dim = 0;
  // The study's linear probe (RunLinearProbe, default options: a learning
  // rate grid chosen on held-out train, 100 epochs), plain and with a
  // BatchNorm head.
  double probe_top1 = 0;
  double probe_bn_top1 = 0;
  double probe_seconds = 0;
};

absl::Status StudyProbe(const Features& train, const Features& test, int classes, uint64_t seed,
                        Baseline* out) {
  const auto start = std::chrono::steady_clock::now();
  auto matrix = [](const Features& f) {
    sslbench::compute::FeatureMatrix m;
    m.rows = f.rows;
    m.dim = f.dim;
    m.data = f.data;
    m.labels = f.labels;
    return m;
  };
  const sslbench::compute::FeatureMatrix tr = matrix(train);
  const sslbench::compute::FeatureMatrix te = matrix(test);
  for (bool bn : {false, true}) {
    sslbench::compute::LinearProbeOptions o;
    o.batch_norm = bn;
    o.seed = seed;
    absl::StatusOr<sslbench::compute::LinearProbeResult> r =
        sslbench::compute::RunLinearProbe(tr, te, classes, o);
    if (!r.ok()) return r.status();
    (bn ? out->probe_bn_top1 : out->probe_top1) = r->test.top1;
  }
  out->probe_seconds = Seconds(start);
  return absl::OkStatus();
}

absl::StatusOr<Baseline> LinearBaseline(const ModelOptions& model, const ImageSet& train,
                                        const ImageSet& test, int classes, uint64_t seed) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<FeatureExtractor>> extractor = FeatureExtractor::Load(model);
  if (!extractor.ok()) return extractor.status();
  absl::StatusOr<Features> tr = Extract(**extractor, train);
  if (!tr.ok()) return tr.status();
  absl::StatusOr<Features> te = Extract(**extractor, test);
  if (!te.ok()) return te.status();
  const int64_t dim = tr->dim;
  Baseline out;
  // On the raw features, before the z-scoring below.
  if (absl::Status s = StudyProbe(*tr, *te, classes, seed, &out); !s.ok()) return s;
  // z-score with train statistics.
  std::vector<double> mean(dim, 0.0), var(dim, 0.0);
  for (int64_t r = 0; r < tr->rows; ++r) {
    for (int64_t d = 0; d < dim; ++d) mean[d] += tr->data[r * dim + d];
  }
  for (double& m : mean) m /= tr->rows;
  for (int64_t r = 0; r < tr->rows; ++r) {
    for (int64_t d = 0; d < dim; ++d) {
      const double x = tr->data[r * dim + d] - mean[d];
      var[d] += x * x;
    }
  }
  for (Features* f : {&*tr, &*te}) {
    for (int64_t r = 0; r < f->rows; ++r) {
      for (int64_t d = 0; d < dim; ++d) {
        const double sd = std::sqrt(var[d] / tr->rows) + 1e-6;
        f->data[r * dim + d] = static_cast<float>((f->data[r * dim + d] - mean[d]) / sd);
      }
    }
  }
  std::vector<int64_t> order(tr->rows);
  for (int64_t i = 0; i < tr->rows; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const int64_t held = tr->rows / 10;
  const std::vector<int64_t> held_out(order.begin(), order.begin() + held);
  const std::vector<int64_t> fit(order.begin() + held, order.end());
  std::vector<int64_t> all_test(te->rows);
  for (int64_t i = 0; i < te->rows; ++i) all_test[i] = i;

  out.dim = dim;
  double best_held = -1;
  for (double lr : {0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0}) {
    const Linear m = TrainSoftmax(*tr, fit, classes, lr, /*epochs=*/50, seed);
    const double h = Top1(m, *tr, held_out, classes);
    const double t = Top1(m, *te, all_test, classes);
    out.oracle_top1 = std::max(out.oracle_top1, t);
    if (h > best_held) {
      best_held = h;
      out.best_lr = lr;
      out.top1 = t;
    }
  }
  out.seconds = Seconds(start);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string root;
  ModelOptions model;
  int64_t train_limit = 0;
  int64_t test_limit = 0;
  int threads = 2;
  FineTuneOptions options;
  options.epochs = 3;
  options.learning_rate = 0.1;
  std::string checkpoint_dir;
  bool keep_checkpoints = false;
  int64_t stop_after_step = 0;
  bool linear_baseline = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    auto next = [&]() { return std::string(argv[++i]); };
    if (arg == "--root" && has_value) {
      root = next();
    } else if (arg == "--model" && has_value) {
      model.path = next();
    } else if (arg == "--train-limit" && has_value) {
      if (!absl::SimpleAtoi(next(), &train_limit)) return Usage();
    } else if (arg == "--test-limit" && has_value) {
      if (!absl::SimpleAtoi(next(), &test_limit)) return Usage();
    } else if (arg == "--epochs" && has_value) {
      if (!absl::SimpleAtoi(next(), &options.epochs)) return Usage();
    } else if (arg == "--lr" && has_value) {
      if (!absl::SimpleAtod(next(), &options.learning_rate)) return Usage();
    } else if (arg == "--threads" && has_value) {
      if (!absl::SimpleAtoi(next(), &threads)) return Usage();
    } else if (arg == "--batch-size" && has_value) {
      if (!absl::SimpleAtoi(next(), &options.batch_size)) return Usage();
    } else if (arg == "--warmup-epochs" && has_value) {
      if (!absl::SimpleAtoi(next(), &options.warmup_epochs)) return Usage();
    } else if (arg == "--optimizer" && has_value) {
      options.optimizer = next();
    } else if (arg == "--weight-decay" && has_value) {
      if (!absl::SimpleAtod(next(), &options.weight_decay)) return Usage();
    } else if (arg == "--label-smoothing" && has_value) {
      if (!absl::SimpleAtod(next(), &options.label_smoothing)) return Usage();
    } else if (arg == "--min-scale" && has_value) {
      if (!absl::SimpleAtod(next(), &options.min_scale)) return Usage();
    } else if (arg == "--no-flip") {
      options.flip = false;
    } else if (arg == "--batch-norm") {
      options.batch_norm = true;
    } else if (arg == "--seed" && has_value) {
      if (!absl::SimpleAtoi(next(), &options.seed)) return Usage();
    } else if (arg == "--input-size" && has_value) {
      if (!absl::SimpleAtoi(next(), &model.input_size)) return Usage();
    } else if (arg == "--channels" && has_value) {
      if (!absl::SimpleAtoi(next(), &model.channels)) return Usage();
    } else if (arg == "--mean" && has_value) {
      if (!ParseFloats(next(), &model.mean)) return Usage();
    } else if (arg == "--std" && has_value) {
      if (!ParseFloats(next(), &model.std)) return Usage();
    } else if (arg == "--checkpoint-dir" && has_value) {
      checkpoint_dir = next();
    } else if (arg == "--checkpoint-every" && has_value) {
      if (!absl::SimpleAtoi(next(), &options.checkpoint_every_steps)) return Usage();
    } else if (arg == "--keep-checkpoints") {
      keep_checkpoints = true;
    } else if (arg == "--stop-after-step" && has_value) {
      if (!absl::SimpleAtoi(next(), &stop_after_step)) return Usage();
    } else if (arg == "--linear-baseline") {
      linear_baseline = true;
    } else {
      return Usage();
    }
  }
  if (root.empty() || model.path.empty()) return Usage();
  // Training frees and reallocates megabyte-sized activations every step;
  // with glibc's default thresholds they go back to the kernel each time and
  // are faulted in again (a third of the wall time for a small CNN). Keep
  // freed memory in the process instead.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1024 << 20);
  sslbench::compute::SetComputeThreads(threads);

  absl::StatusOr<ImageSet> train = sslbench::compute::ReadIdxSplit(root, "train", train_limit);
  if (!train.ok()) {
    std::fprintf(stderr, "%s\n", train.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<ImageSet> test = sslbench::compute::ReadIdxSplit(root, "test", test_limit);
  if (!test.ok()) {
    std::fprintf(stderr, "%s\n", test.status().ToString().c_str());
    return 1;
  }
  const int num_classes = std::max(train->num_classes, test->num_classes);

  std::string resume_from;
  std::string latest;
  if (!checkpoint_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(checkpoint_dir, ec);
    latest = (std::filesystem::path(checkpoint_dir) / "latest.ckpt").string();
    if (std::filesystem::exists(latest, ec)) {
      absl::StatusOr<std::string> bytes = ReadFile(latest);
      if (!bytes.ok()) {
        std::fprintf(stderr, "%s\n", bytes.status().ToString().c_str());
        return 1;
      }
      resume_from = *std::move(bytes);
    }
  }
  sslbench::compute::CheckpointSink sink;
  if (!checkpoint_dir.empty()) {
    sink = [&](int64_t step, const std::string& bytes) -> absl::Status {
      if (keep_checkpoints) {
        const std::string path =
            (std::filesystem::path(checkpoint_dir) / absl::StrCat("step-", step, ".ckpt")).string();
        if (absl::Status s = WriteFileAtomically(path, bytes); !s.ok()) return s;
      }
      return WriteFileAtomically(latest, bytes);
    };
  }
  sslbench::compute::ProgressFn progress = [&](int64_t step, int64_t) {
    return stop_after_step <= 0 || step < stop_after_step;
  };

  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<FineTuneResult> result = sslbench::compute::RunFineTune(
      model, *train, *test, num_classes, options, resume_from, sink, progress);
  const double seconds = Seconds(start);
  if (!result.ok()) {
    std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
    return result.status().code() == absl::StatusCode::kCancelled ? 3 : 1;
  }
  const ClassificationMetrics& m = result->test;
  std::string json = absl::StrCat(
      "{\"model\":\"", model.path, "\",\"train_rows\":", train->count,
      ",\"test_rows\":", test->count, ",\"epochs\":", options.epochs,
      ",\"batch_size\":", options.batch_size, ",\"lr\":", JsonNumber(options.learning_rate),
      ",\"optimizer\":\"", options.optimizer, "\",\"threads\":", threads,
      ",\"seed\":", options.seed, ",\"steps\":", result->steps,
      ",\"resumed_from_step\":", result->resumed_from_step,
      ",\"final_train_loss\":", JsonNumber(result->final_train_loss), ",\"top1\":", JsonNumber(m.top1),
      ",\"top5\":", JsonNumber(m.top5), ",\"mean_per_class\":", JsonNumber(m.mean_per_class),
      ",\"seconds\":", JsonNumber(seconds));
  if (linear_baseline) {
    absl::StatusOr<Baseline> b = LinearBaseline(model, *train, *test, num_classes, options.seed);
    if (!b.ok()) {
      std::fprintf(stderr, "%s\n", b.status().ToString().c_str());
      return 1;
    }
    absl::StrAppend(&json, ",\"linear_baseline\":{\"dim\":", b->dim, ",\"top1\":", JsonNumber(b->top1),
                    ",\"best_lr\":", JsonNumber(b->best_lr),
                    ",\"oracle_top1\":", JsonNumber(b->oracle_top1),
                    ",\"seconds\":", JsonNumber(b->seconds - b->probe_seconds),
                    ",\"study_probe_top1\":", JsonNumber(b->probe_top1),
                    ",\"study_probe_bn_top1\":", JsonNumber(b->probe_bn_top1),
                    ",\"study_probe_seconds\":", JsonNumber(b->probe_seconds), "}");
  }
  std::printf("%s}\n", json.c_str());
  return 0;
}
