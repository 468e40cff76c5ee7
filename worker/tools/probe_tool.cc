// sslbench-probe: runs the linear-probe and logistic-regression protocols on
// features, for parity and speed checks against the Python references
// (bench/logreg_vs_sklearn.py, bench/linear_probe_vs_torch.py).
//
//   sslbench-probe logreg (--root IDX_DIR | --train-file F --test-file F)
//       [--train-limit N] [--test-limit N] [--threads N]
//       [--c C | --cs C,C,... | --sweep] [--max-iter N] [--tol T] [--float32]
//       [--val-fraction F] [--seed S]
//   sslbench-probe linear (--root IDX_DIR | --train-file F --test-file F)
//       [--train-limit N] [--test-limit N] [--threads N]
//       [--lrs R,R,...] [--epochs N] [--batch-size N] [--warmup-epochs N]
//       [--batch-norm] [--standardize] [--grad-clip G] [--weight-decay W]
//       [--init-std S] [--val-fraction F] [--seed S]
//
// With --root the features are the raw pixels / 255 of an IDX dataset (MNIST
// layout). A feature file holds little-endian int64 rows, int64 dim, then
// rows * dim float32 features, then rows int32 labels. Prints one JSON line
// with the test metrics and the seconds the protocol took (loading excluded).
// `logreg --c C` is one fit at C on all of train (scikit-learn's
// LogisticRegression(C=C)); --cs / --sweep run the held-out sweep and refit.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/image_set.h"
#include "worker/compute/knn.h"
#include "worker/compute/linear_probe.h"
#include "worker/compute/logistic_regression.h"
#include "worker/tools/tool_util.h"

namespace {

using sslbench::compute::ClassificationMetrics;
using sslbench::compute::FeatureMatrix;
using sslbench::compute::ImageSet;
using sslbench::tools::JsonNumber;

int Usage() {
  std::fprintf(
      stderr,
      "usage: sslbench-probe logreg|linear (--root IDX_DIR | --train-file F "
      "--test-file F) [options]; see the header of probe_tool.cc\n");
  return 2;
}

absl::StatusOr<FeatureMatrix> ReadFeatureFile(const std::string& path,
                                              int64_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot open feature file ", path));
  int64_t header[2] = {0, 0};
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  if (!in || header[0] < 0 || header[1] <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad header"));
  }
  FeatureMatrix m;
  m.rows = header[0];
  m.dim = header[1];
  m.data.resize(m.rows * m.dim);
  m.labels.resize(m.rows);
  in.read(reinterpret_cast<char*>(m.data.data()),
          static_cast<std::streamsize>(m.data.size() * sizeof(float)));
  in.read(reinterpret_cast<char*>(m.labels.data()),
          static_cast<std::streamsize>(m.labels.size() * sizeof(int32_t)));
  if (!in) return absl::DataLossError(absl::StrCat(path, ": truncated"));
  if (limit > 0 && limit < m.rows) {
    m.rows = limit;
    m.data.resize(m.rows * m.dim);
    m.labels.resize(m.rows);
  }
  return m;
}

std::string List(const std::vector<double>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i)
    absl::StrAppend(&out, i ? "," : "", JsonNumber(v[i]));
  return out + "]";
}

bool ParseList(const std::string& s, std::vector<double>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    double v = 0;
    if (!absl::SimpleAtod(part, &v)) return false;
    out->push_back(v);
  }
  return !out->empty();
}

std::string Metrics(const ClassificationMetrics& m) {
  return absl::StrCat("\"top1\":", JsonNumber(m.top1), ",\"top5\":", JsonNumber(m.top5),
                      ",\"mean_per_class\":", JsonNumber(m.mean_per_class));
}

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage();
  const std::string command = argv[1];
  if (command != "logreg" && command != "linear") return Usage();

  std::string root, train_file, test_file;
  int64_t train_limit = 0, test_limit = 0;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  double c = 1.0;
  bool sweep = false;
  sslbench::compute::LogisticRegressionOptions lr_options;
  sslbench::compute::LinearProbeOptions lp_options;
  double val_fraction = -1;
  uint64_t seed = 0;

  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has = i + 1 < argc;
    const std::string value = has ? argv[i + 1] : "";
    bool ok = true;
    if (arg == "--root" && has) {
      root = value, ++i;
    } else if (arg == "--train-file" && has) {
      train_file = value, ++i;
    } else if (arg == "--test-file" && has) {
      test_file = value, ++i;
    } else if (arg == "--train-limit" && has) {
      ok = absl::SimpleAtoi(value, &train_limit), ++i;
    } else if (arg == "--test-limit" && has) {
      ok = absl::SimpleAtoi(value, &test_limit), ++i;
    } else if (arg == "--threads" && has) {
      ok = absl::SimpleAtoi(value, &threads), ++i;
    } else if (arg == "--seed" && has) {
      ok = absl::SimpleAtoi(value, &seed), ++i;
    } else if (arg == "--val-fraction" && has) {
      ok = absl::SimpleAtod(value, &val_fraction), ++i;
    } else if (arg == "--c" && has) {
      ok = absl::SimpleAtod(value, &c), ++i;
    } else if (arg == "--cs" && has) {
      ok = ParseList(value, &lr_options.cs), sweep = true, ++i;
    } else if (arg == "--sweep") {
      sweep = true;
    } else if (arg == "--max-iter" && has) {
      ok = absl::SimpleAtoi(value, &lr_options.max_iterations), ++i;
    } else if (arg == "--tol" && has) {
      ok = absl::SimpleAtod(value, &lr_options.tolerance), ++i;
    } else if (arg == "--float32") {
      lr_options.float64 = false;
    } else if (arg == "--lrs" && has) {
      ok = ParseList(value, &lp_options.learning_rates), ++i;
    } else if (arg == "--epochs" && has) {
      ok = absl::SimpleAtoi(value, &lp_options.epochs), ++i;
    } else if (arg == "--batch-size" && has) {
      ok = absl::SimpleAtoi(value, &lp_options.batch_size), ++i;
    } else if (arg == "--warmup-epochs" && has) {
      ok = absl::SimpleAtoi(value, &lp_options.warmup_epochs), ++i;
    } else if (arg == "--batch-norm") {
      lp_options.batch_norm = true;
    } else if (arg == "--standardize") {
      lp_options.standardize = true;
    } else if (arg == "--grad-clip" && has) {
      ok = absl::SimpleAtod(value, &lp_options.grad_clip), ++i;
    } else if (arg == "--weight-decay" && has) {
      ok = absl::SimpleAtod(value, &lp_options.weight_decay), ++i;
    } else if (arg == "--init-std" && has) {
      ok = absl::SimpleAtod(value, &lp_options.init_std), ++i;
    } else {
      ok = false;
    }
    if (!ok) return Usage();
  }
  if (root.empty() == (train_file.empty() || test_file.empty())) return Usage();
  sslbench::compute::SetComputeThreads(threads);

  FeatureMatrix train, test;
  if (!root.empty()) {
    absl::StatusOr<ImageSet> tr =
        sslbench::compute::ReadIdxSplit(root, "train", train_limit);
    absl::StatusOr<ImageSet> te =
        sslbench::compute::ReadIdxSplit(root, "test", test_limit);
    if (!tr.ok() || !te.ok()) {
      std::fprintf(stderr, "%s\n",
                   (tr.ok() ? te.status() : tr.status()).ToString().c_str());
      return 1;
    }
    train = sslbench::tools::PixelFeatures(*tr);
    test = sslbench::tools::PixelFeatures(*te);
  } else {
    absl::StatusOr<FeatureMatrix> tr = ReadFeatureFile(train_file, train_limit);
    absl::StatusOr<FeatureMatrix> te = ReadFeatureFile(test_file, test_limit);
    if (!tr.ok() || !te.ok()) {
      std::fprintf(stderr, "%s\n",
                   (tr.ok() ? te.status() : tr.status()).ToString().c_str());
      return 1;
    }
    train = std::move(*tr);
    test = std::move(*te);
  }
  int num_classes = 0;
  for (int32_t l : train.labels) num_classes = std::max(num_classes, l + 1);
  for (int32_t l : test.labels) num_classes = std::max(num_classes, l + 1);

  const std::string common =
      absl::StrCat("\"train_rows\":", train.rows, ",\"test_rows\":", test.rows,
                   ",\"dim\":", train.dim, ",\"threads\":", threads);
  const auto start = std::chrono::steady_clock::now();
  if (command == "logreg") {
    lr_options.seed = seed;
    if (val_fraction >= 0) lr_options.val_fraction = val_fraction;
    absl::StatusOr<sslbench::compute::LogisticRegressionResult> r =
        sweep ? sslbench::compute::RunLogisticRegression(
                    train, test, num_classes, lr_options)
              : sslbench::compute::FitLogisticRegression(
                    train, test, num_classes, c, lr_options);
    const double seconds = Since(start);
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
    std::printf(
        "{\"protocol\":\"logreg\",%s,\"best_c\":%s,\"cs\":%s,\"held_out_top1\":"
        "%s,"
        "\"iterations\":%d,%s,\"seconds\":%s}\n",
        common.c_str(), JsonNumber(r->best_c).c_str(), List(r->cs).c_str(),
        List(r->held_out_top1).c_str(), r->iterations, Metrics(r->test).c_str(),
        JsonNumber(seconds).c_str());
  } else {
    lp_options.seed = seed;
    lp_options.val_fraction = val_fraction >= 0 ? val_fraction
                              : lp_options.learning_rates.size() == 1
                                  ? 0.0
                                  : lp_options.val_fraction;
    absl::StatusOr<sslbench::compute::LinearProbeResult> r =
        sslbench::compute::RunLinearProbe(train, test, num_classes, lp_options);
    const double seconds = Since(start);
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
    std::printf(
        "{\"protocol\":\"linear\",%s,\"heads\":%zu,\"best_learning_rate\":%s,"
        "\"held_out_top1\":%s,%s,\"seconds\":%s}\n",
        common.c_str(), lp_options.learning_rates.size(),
        JsonNumber(r->best_learning_rate).c_str(), List(r->held_out_top1).c_str(),
        Metrics(r->test).c_str(), JsonNumber(seconds).c_str());
  }
  return 0;
}
