// sslbench-knn-idx ROOT [--train-limit N] [--test-limit N] [--ks K,K,...|none]
//                  [--euclidean-k K] [--threads N]
// Reads an IDX dataset (MNIST layout), takes the raw pixels / 255 as features
// (what the identity model yields) and prints one JSON line per kNN result,
// with the seconds each variant took. Used for parity with scikit-learn.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/image_set.h"
#include "worker/compute/knn.h"
#include "worker/tools/tool_util.h"

namespace {

using sslbench::compute::FeatureMatrix;
using sslbench::compute::ImageSet;
using sslbench::compute::KnnOptions;
using sslbench::compute::KnnResult;
using sslbench::tools::JsonNumber;

int Usage() {
  std::fprintf(stderr,
               "usage: sslbench-knn-idx ROOT [--train-limit N] "
               "[--test-limit N] [--ks K,K,...|none] [--euclidean-k K] "
               "[--threads N]\n");
  return 2;
}

// Same arithmetic as numpy's `uint8_array.astype(np.float32) / 255`.
void Print(const KnnResult& r, int64_t train_rows, int64_t test_rows,
           double seconds) {
  std::string per_class;
  for (double v : r.metrics.per_class) {
    absl::StrAppend(&per_class, per_class.empty() ? "" : ",", JsonNumber(v));
  }
  std::printf(
      "{\"variant\":\"%s\",\"k\":%d,\"temperature\":%s,\"train_rows\":%lld,"
      "\"test_rows\":%lld,\"top1\":%s,\"top5\":%s,\"mean_per_class\":%s,"
      "\"per_class\":[%s],\"seconds\":%s}\n",
      r.variant.c_str(), r.k, JsonNumber(r.temperature).c_str(),
      static_cast<long long>(train_rows), static_cast<long long>(test_rows),
      JsonNumber(r.metrics.top1).c_str(), JsonNumber(r.metrics.top5).c_str(),
      JsonNumber(r.metrics.mean_per_class).c_str(), per_class.c_str(),
      JsonNumber(seconds).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string root;
  int64_t train_limit = 0;
  int64_t test_limit = 0;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  KnnOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--train-limit" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &train_limit)) return Usage();
    } else if (arg == "--test-limit" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &test_limit)) return Usage();
    } else if (arg == "--euclidean-k" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &options.euclidean_k)) return Usage();
    } else if (arg == "--threads" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &threads)) return Usage();
    } else if (arg == "--ks" && has_value) {
      const std::string value = argv[++i];
      options.ks.clear();
      if (value != "none") {
        for (absl::string_view part : absl::StrSplit(value, ',')) {
          int k = 0;
          if (!absl::SimpleAtoi(part, &k)) return Usage();
          options.ks.push_back(k);
        }
      }
    } else if (!arg.empty() && arg[0] != '-' && root.empty()) {
      root = arg;
    } else {
      return Usage();
    }
  }
  if (root.empty()) return Usage();
  sslbench::compute::SetComputeThreads(threads);

  absl::StatusOr<ImageSet> train =
      sslbench::compute::ReadIdxSplit(root, "train", train_limit);
  if (!train.ok()) {
    std::fprintf(stderr, "%s\n", train.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<ImageSet> test =
      sslbench::compute::ReadIdxSplit(root, "test", test_limit);
  if (!test.ok()) {
    std::fprintf(stderr, "%s\n", test.status().ToString().c_str());
    return 1;
  }
  const FeatureMatrix train_f = sslbench::tools::PixelFeatures(*train);
  const FeatureMatrix test_f = sslbench::tools::PixelFeatures(*test);
  const int num_classes = std::max(train->num_classes, test->num_classes);

  // One call per variant, so that each is timed on its own.
  std::vector<KnnOptions> runs;
  if (!options.ks.empty()) {
    KnnOptions cosine = options;
    cosine.euclidean_k = 0;
    runs.push_back(cosine);
  }
  if (options.euclidean_k > 0) {
    KnnOptions euclidean = options;
    euclidean.ks.clear();
    runs.push_back(euclidean);
  }
  for (const KnnOptions& run : runs) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<std::vector<KnnResult>> results =
        sslbench::compute::RunKnn(train_f, test_f, num_classes, run);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    if (!results.ok()) {
      std::fprintf(stderr, "%s\n", results.status().ToString().c_str());
      return 1;
    }
    for (const KnnResult& r : *results) {
      Print(r, train_f.rows, test_f.rows, seconds);
    }
  }
  return 0;
}
