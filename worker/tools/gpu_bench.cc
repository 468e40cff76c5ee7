// sslbench-gpu-bench: the compute core's kNN and linear-probe grid on a
// device, on synthetic features that bench/gpu/reference.py regenerates bit
// for bit (same LibTorch, same seed, same calls), so both sides classify the
// same rows. Prints one JSON line. Used by bench/gpu/run.sh.
//
//   sslbench-gpu-bench --mode=knn --device=cuda --train_rows=1281167 \
//       --test_rows=50000 --dim=768 --k=200 --classes=1000
//   sslbench-gpu-bench --mode=linear --device=cuda --train_rows=1281167 \
//       --dim=2048 --classes=1000 --heads=52 --precision=bf16
//   sslbench-gpu-bench --mode=parity --device=cuda --train_rows=20000 \
//       --test_rows=5000 --dim=256 --classes=100
//     (kNN, linear probe and logistic regression on the same features, on
//     the CPU and on the device: metrics side by side)

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "worker/compute/device.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/knn.h"
#include "worker/compute/linear_probe.h"
#include "worker/compute/logistic_regression.h"
#include "worker/tools/tool_util.h"

ABSL_FLAG(std::string, mode, "knn", "knn, linear or parity");
ABSL_FLAG(std::string, device, "auto", "cpu, cuda, cuda:N or auto");
ABSL_FLAG(int64_t, train_rows, 100000, "train rows");
ABSL_FLAG(int64_t, test_rows, 10000, "test rows (knn)");
ABSL_FLAG(int64_t, dim, 768, "feature dim");
ABSL_FLAG(int, classes, 1000, "classes");
ABSL_FLAG(int, k, 200, "k (knn)");
ABSL_FLAG(int, heads, 1, "learning rates trained at once (linear)");
ABSL_FLAG(int, batch, 1024, "batch size (linear)");
ABSL_FLAG(std::string, precision, "fp32", "linear: fp32 or bf16 inputs");
ABSL_FLAG(std::string, candidate_precision, "auto",
          "knn: auto (fp16 on CUDA, fp32 on the CPU), fp32, bf16 or fp16");
ABSL_FLAG(int, threads, 1, "LibTorch intra-op threads");
ABSL_FLAG(uint64_t, seed, 0, "seed of the synthetic features");

namespace {

using sslbench::compute::FeatureMatrix;

[[noreturn]] void Die(const absl::Status& s) { sslbench::tools::Die("sslbench-gpu-bench", s); }

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Sync(const c10::Device& device) {
  if (device.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(device.index());
}

// Class centres, then per split labels and rows = N(0, 1) + centre / 4: the same
// calls in the same order as reference.py's make_features().
void MakeFeatures(const c10::Device& device, uint64_t seed, int64_t train_rows,
                  int64_t test_rows, int64_t dim, int classes, FeatureMatrix* train,
                  FeatureMatrix* test) {
  at::manual_seed(seed);
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const at::TensorOptions i64 = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor centres = at::randn({classes, dim}, f32);
  auto make = [&](int64_t rows, FeatureMatrix* m) {
    const at::Tensor labels = at::randint(classes, {rows}, i64);
    const at::Tensor x = at::randn({rows, dim}, f32) + centres.index_select(0, labels) * 0.25;
    const at::Tensor xc = x.cpu().contiguous();
    const at::Tensor lc = labels.to(at::kCPU, at::kInt).contiguous();
    m->rows = rows;
    m->dim = dim;
    m->data.assign(xc.data_ptr<float>(), xc.data_ptr<float>() + xc.numel());
    m->labels.assign(lc.data_ptr<int32_t>(), lc.data_ptr<int32_t>() + lc.numel());
  };
  make(train_rows, train);
  if (test_rows > 0) make(test_rows, test);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  namespace compute = sslbench::compute;
  using sslbench::tools::JsonNumber;
  compute::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  const absl::StatusOr<std::string> device_name = compute::ResolveDevice(absl::GetFlag(FLAGS_device));
  if (!device_name.ok()) Die(device_name.status());
  const c10::Device device(*device_name);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const int classes = absl::GetFlag(FLAGS_classes);
  FeatureMatrix train, test;
  MakeFeatures(device, absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_train_rows),
               mode == "linear" ? 0 : absl::GetFlag(FLAGS_test_rows), absl::GetFlag(FLAGS_dim),
               classes, &train, &test);

  if (mode == "knn") {
    compute::KnnOptions o;
    o.ks = {absl::GetFlag(FLAGS_k)};
    o.temperature = 0.07;
    o.euclidean_k = 0;
    o.device = *device_name;
    o.candidate_precision = absl::GetFlag(FLAGS_candidate_precision);
    Sync(device);
    const double start = Now();
    auto results = compute::RunKnn(train, test, classes, o);
    if (!results.ok()) Die(results.status());
    const double seconds = Now() - start;
    const compute::KnnResult& r = results->front();
    std::printf(
        "{\"mode\":\"knn\",\"device\":\"%s\",\"train_rows\":%lld,\"test_rows\":%lld,"
        "\"dim\":%lld,\"k\":%d,\"seconds\":%s,\"top1\":%s,\"top5\":%s,"
        "\"correct\":%lld,\"exhaustive_rows\":%lld}\n",
        device_name->c_str(), static_cast<long long>(train.rows),
        static_cast<long long>(test.rows), static_cast<long long>(train.dim), r.k,
        JsonNumber(seconds, 6).c_str(), JsonNumber(r.metrics.top1).c_str(),
        JsonNumber(r.metrics.top5).c_str(), std::llround(r.metrics.top1 * test.rows),
        static_cast<long long>(r.exhaustive_rows));
    return 0;
  }
  if (mode == "parity") {
    // Every probe on the CPU, then on the device, on the same features.
    auto knn = [&](const std::string& on) {
      compute::KnnOptions o;
      o.ks = {20};
      o.euclidean_k = 20;
      o.device = on;
      auto r = compute::RunKnn(train, test, classes, o);
      if (!r.ok()) Die(r.status());
      return *r;
    };
    auto linear = [&](const std::string& on) {
      compute::LinearProbeOptions o;
      o.learning_rates = {0.01, 0.1, 1.0};
      o.epochs = 10;
      o.batch_norm = true;
      o.device = on;
      auto r = compute::RunLinearProbe(train, test, classes, o);
      if (!r.ok()) Die(r.status());
      return *r;
    };
    auto logreg = [&](const std::string& on) {
      compute::LogisticRegressionOptions o;
      o.cs = {1e-3, 1e-2, 1e-1, 1.0};
      o.device = on;
      auto r = compute::RunLogisticRegression(train, test, classes, o);
      if (!r.ok()) Die(r.status());
      return *r;
    };
    const auto knn_cpu = knn("cpu"), knn_dev = knn(*device_name);
    bool same = knn_cpu.size() == knn_dev.size();
    for (size_t i = 0; same && i < knn_cpu.size(); ++i) {
      same = knn_cpu[i].metrics.top1 == knn_dev[i].metrics.top1 &&
             knn_cpu[i].metrics.top5 == knn_dev[i].metrics.top5 &&
             knn_cpu[i].metrics.per_class.size() == knn_dev[i].metrics.per_class.size();
      for (size_t c = 0; same && c < knn_cpu[i].metrics.per_class.size(); ++c) {
        const double a = knn_cpu[i].metrics.per_class[c], b = knn_dev[i].metrics.per_class[c];
        same = a == b || (std::isnan(a) && std::isnan(b));
      }
    }
    const auto lin_cpu = linear("cpu"), lin_dev = linear(*device_name);
    const auto lr_cpu = logreg("cpu"), lr_dev = logreg(*device_name);
    std::printf(
        "{\"mode\":\"parity\",\"device\":\"%s\",\"train_rows\":%lld,\"test_rows\":%lld,"
        "\"dim\":%lld,\"knn_cosine_top1\":[%s,%s],\"knn_euclidean_top1\":[%s,%s],"
        "\"knn_metrics_identical\":%s,\"linear_top1\":[%s,%s],\"logreg_top1\":[%s,%s],"
        "\"logreg_best_c\":[%s,%s]}\n",
        device_name->c_str(), static_cast<long long>(train.rows),
        static_cast<long long>(test.rows), static_cast<long long>(train.dim),
        JsonNumber(knn_cpu[0].metrics.top1).c_str(), JsonNumber(knn_dev[0].metrics.top1).c_str(),
        JsonNumber(knn_cpu[1].metrics.top1).c_str(), JsonNumber(knn_dev[1].metrics.top1).c_str(),
        same ? "true" : "false", JsonNumber(lin_cpu.test.top1).c_str(),
        JsonNumber(lin_dev.test.top1).c_str(), JsonNumber(lr_cpu.test.top1).c_str(),
        JsonNumber(lr_dev.test.top1).c_str(), JsonNumber(lr_cpu.best_c).c_str(),
        JsonNumber(lr_dev.best_c).c_str());
    return 0;
  }
  if (mode == "linear") {
    const int heads = absl::GetFlag(FLAGS_heads);
    compute::LinearProbeOptions o;
    o.learning_rates.clear();
    for (int h = 0; h < heads; ++h) o.learning_rates.push_back(1e-4 * std::pow(1.2, h));
    o.epochs = 1;
    o.warmup_epochs = 0;
    o.batch_size = absl::GetFlag(FLAGS_batch);
    o.val_fraction = heads > 1 ? 0.01 : 0.0;
    o.device = *device_name;
    o.input_precision = absl::GetFlag(FLAGS_precision);
    // The epoch alone: from before the first step to after the last one has
    // run on the device (the progress callback runs on this thread).
    double epoch_start = 0, epoch_end = 0;
    auto progress = [&](int64_t done, int64_t total) {
      if (done == 0) {
        Sync(device);
        epoch_start = Now();
      } else if (done == total) {
        Sync(device);
        epoch_end = Now();
      }
      return true;
    };
    test = train;  // accuracy is not the point; evaluation is timed apart
    test.rows = std::min<int64_t>(train.rows, 10000);
    test.data.resize(test.rows * test.dim);
    test.labels.resize(test.rows);
    Sync(device);
    const double start = Now();
    auto result = compute::RunLinearProbe(train, test, classes, o, progress);
    if (!result.ok()) Die(result.status());
    const double seconds = Now() - start;
    std::printf(
        "{\"mode\":\"linear\",\"device\":\"%s\",\"rows\":%lld,\"dim\":%lld,\"heads\":%d,"
        "\"precision\":\"%s\",\"epoch_seconds\":%s,\"total_seconds\":%s,\"train_top1\":%s}\n",
        device_name->c_str(), static_cast<long long>(train.rows),
        static_cast<long long>(train.dim), heads, o.input_precision.c_str(),
        JsonNumber(epoch_end - epoch_start, 6).c_str(), JsonNumber(seconds, 6).c_str(),
        JsonNumber(result->test.top1, 6).c_str());
    return 0;
  }
  Die(absl::InvalidArgumentError("--mode must be knn, linear or parity"));
}
