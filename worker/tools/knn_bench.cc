// sslbench-knn-bench: times RunKnn against the one matrix product it cannot
// avoid, and measures its peak memory.
//
//   sslbench-knn-bench --root DIR [--dim 784|D] [--threads N]
//       [--train-rows N] [--test-rows N] [--write-features DIR]
//       [--test-chunk-rows N] [--train-chunk-rows N] [--skip-matmul]
//       [--search-stats]
//       [--only cosine|euclidean] [--projection-dim -1|0|P]
//   sslbench-knn-bench --root DIR --memory [--dim D] [--threads N]
//
// Features: the raw pixels / 255 of an IDX dataset (Fashion-MNIST: D = 784),
// or, for any other --dim, a fixed random ReLU projection of those pixels,
// max(0, x W) with W[784, D] ~ N(0, 1/784) drawn from a seeded mt19937_64,
// like the pooled post-ReLU features of a network.
//
// Timing mode prints JSON lines: the features, the cosine run (ks 10, 20,
// 100, 200 at T = 0.07, one RunKnn call), the Euclidean run (k = 20, one
// call) and one at::mm of [test rows, D] x [D, train rows] in float32.
// --write-features writes train_x.npy, train_y.npy, test_x.npy, test_y.npy
// for a reference implementation to read.
//
// Memory mode runs one child process per (train rows, chunk setting) and
// prints, for each, the peak resident memory of a RunKnn call (both
// variants) above the resident memory before it (inputs loaded, thread pools
// and BLAS buffers warmed up by a small call): VmHWM after resetting it
// through /proc/self/clear_refs, minus VmRSS before the call. glibc's mmap
// threshold is fixed at 128 KiB there, so that freed buffers leave the
// resident set and allocator history does not blur the figures.

#include <malloc.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/image_set.h"
#include "worker/compute/knn.h"
#include "worker/tools/tool_util.h"

extern char** environ;

namespace {

using sslbench::compute::FeatureMatrix;
using sslbench::compute::ImageSet;
using sslbench::compute::KnnOptions;
using sslbench::compute::KnnResult;
using sslbench::tools::JsonNumber;

struct Args {
  std::string root = "/usr/share/datasets/fashion-mnist";
  int64_t dim = 784;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  int64_t train_rows = 0;  // 0: all
  int64_t test_rows = 0;
  std::string write_features;
  int64_t test_chunk_rows = KnnOptions().test_chunk_rows;
  int64_t train_chunk_rows = KnnOptions().train_chunk_rows;
  bool skip_matmul = false;
  bool search_stats = false;  // how the Euclidean search went (untimed)
  int projection_dim = -1;  // KnnOptions::euclidean_projection_dim
  std::string only;  // "cosine" or "euclidean": time that variant alone
  bool memory = false;
  bool memory_child = false;
};

int Usage() {
  std::fprintf(
      stderr,
      "usage: sslbench-knn-bench [--root DIR] [--dim D] [--threads N] "
      "[--train-rows N] [--test-rows N] [--write-features DIR] "
      "[--test-chunk-rows N] [--train-chunk-rows N] [--skip-matmul] [--search-stats] "
      "[--only cosine|euclidean] [--projection-dim -1|0|P] [--memory]\n");
  return 2;
}

// User + system CPU seconds of this process so far.
double CpuSeconds() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(usage.ru_utime.tv_usec +
                                    usage.ru_stime.tv_usec);
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                       start)
      .count();
}

std::string Number(double v) { return sslbench::tools::JsonNumber(v, 10); }

absl::StatusOr<FeatureMatrix> Pixels(const std::string& root,
                                     const std::string& split, int64_t limit) {
  absl::StatusOr<ImageSet> set =
      sslbench::compute::ReadIdxSplit(root, split, limit);
  if (!set.ok()) return set.status();
  return sslbench::tools::PixelFeatures(*set);
}

// max(0, x W), W[in, dim] ~ N(0, 1/in) from a fixed seed.
FeatureMatrix Project(const FeatureMatrix& x, int64_t dim) {
  std::mt19937_64 gen(20240601);
  std::normal_distribution<float> normal(
      0.0f, 1.0f / std::sqrt(static_cast<float>(x.dim)));
  std::vector<float> w(static_cast<size_t>(x.dim * dim));
  for (float& v : w) v = normal(gen);
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  FeatureMatrix out;
  out.rows = x.rows;
  out.dim = dim;
  out.labels = x.labels;
  out.data.resize(static_cast<size_t>(x.rows * dim));
  at::Tensor result = at::from_blob(out.data.data(), {x.rows, dim}, f32);
  at::mm_out(result,
             at::from_blob(const_cast<float*>(x.data.data()), {x.rows, x.dim},
                           f32),
             at::from_blob(w.data(), {x.dim, dim}, f32));
  result.clamp_min_(0);
  return out;
}

absl::StatusOr<FeatureMatrix> Features(const Args& args,
                                       const std::string& split,
                                       int64_t limit) {
  absl::StatusOr<FeatureMatrix> pixels = Pixels(args.root, split, limit);
  if (!pixels.ok() || pixels->dim == args.dim) return pixels;
  return Project(*pixels, args.dim);
}

// numpy's .npy format, version 1.0, C order.
bool WriteNpy(const std::string& path, const std::string& descr,
              const std::vector<int64_t>& shape, const void* data,
              size_t bytes) {
  std::string header = absl::StrCat("{'descr': '", descr,
                                    "', 'fortran_order': False, 'shape': (");
  for (int64_t s : shape) absl::StrAppend(&header, s, ", ");
  absl::StrAppend(&header, "), }");
  // Magic (6) + version (2) + length (2) + header + '\n', padded to 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  const unsigned char prefix[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(reinterpret_cast<const char*>(prefix), 8);
  const uint16_t length = static_cast<uint16_t>(header.size());
  const unsigned char le[2] = {static_cast<unsigned char>(length & 0xff),
                               static_cast<unsigned char>(length >> 8)};
  out.write(reinterpret_cast<const char*>(le), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  return static_cast<bool>(out);
}

bool WriteFeatures(const std::string& dir, const std::string& name,
                   const FeatureMatrix& m) {
  return WriteNpy(absl::StrCat(dir, "/", name, "_x.npy"), "<f4",
                  {m.rows, m.dim}, m.data.data(),
                  m.data.size() * sizeof(float)) &&
         WriteNpy(absl::StrCat(dir, "/", name, "_y.npy"), "<i4", {m.rows},
                  m.labels.data(), m.labels.size() * sizeof(int32_t));
}

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); -1 if absent.
int64_t StatusBytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = absl::StrCat(field, ":");
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) == 0) {
      int64_t kb = 0;
      if (std::sscanf(line.c_str() + prefix.size(), "%lld",
                      reinterpret_cast<long long*>(&kb)) == 1) {
        return kb * 1024;
      }
    }
  }
  return -1;
}

KnnOptions Cosine(const Args& args) {
  KnnOptions o;
  o.ks = {10, 20, 100, 200};
  o.temperature = 0.07;
  o.euclidean_k = 0;
  o.test_chunk_rows = args.test_chunk_rows;
  o.train_chunk_rows = args.train_chunk_rows;
  return o;
}

KnnOptions Euclidean(const Args& args) {
  KnnOptions o = Cosine(args);
  o.ks.clear();
  o.euclidean_k = 20;
  o.euclidean_projection_dim = args.projection_dim;
  return o;
}

int NumClasses(const FeatureMatrix& train, const FeatureMatrix& test) {
  int32_t max_label = 0;
  for (int32_t l : train.labels) max_label = std::max(max_label, l);
  for (int32_t l : test.labels) max_label = std::max(max_label, l);
  return max_label + 1;
}

FeatureMatrix Head(const FeatureMatrix& m, int64_t rows) {
  FeatureMatrix head;
  head.rows = std::min(m.rows, rows);
  head.dim = m.dim;
  head.data.assign(m.data.begin(), m.data.begin() + head.rows * m.dim);
  head.labels.assign(m.labels.begin(), m.labels.begin() + head.rows);
  return head;
}

// Warms thread pools and BLAS buffers with a small run.
bool WarmUp(const FeatureMatrix& train, const FeatureMatrix& test,
            int num_classes, const Args& args) {
  KnnOptions o = Cosine(args);
  o.euclidean_k = 20;
  return sslbench::compute::RunKnn(Head(train, 1000), Head(test, 64),
                                   num_classes, o)
      .ok();
}

// Whether both loaded; prints why not.
bool BothOk(const absl::StatusOr<FeatureMatrix>& train,
            const absl::StatusOr<FeatureMatrix>& test) {
  if (train.ok() && test.ok()) return true;
  std::fprintf(stderr, "%s\n",
               (train.ok() ? test.status() : train.status()).ToString().c_str());
  return false;
}

int TimeAll(const Args& args) {
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<FeatureMatrix> train = Features(args, "train", args.train_rows);
  absl::StatusOr<FeatureMatrix> test = Features(args, "test", args.test_rows);
  if (!BothOk(train, test)) return 1;
  const int num_classes = NumClasses(*train, *test);
  std::printf(
      "{\"event\":\"features\",\"source\":\"%s\",\"dim\":%lld,"
      "\"train_rows\":%lld,\"test_rows\":%lld,\"threads\":%d,"
      "\"seconds\":%s}\n",
      train->dim == 784 ? "pixels/255" : "relu(pixels/255 @ W), W ~ N(0, 1/784)",
      static_cast<long long>(train->dim),
      static_cast<long long>(train->rows), static_cast<long long>(test->rows),
      args.threads, Number(Seconds(start)).c_str());
  std::fflush(stdout);
  if (!args.write_features.empty()) {
    if (!WriteFeatures(args.write_features, "train", *train) ||
        !WriteFeatures(args.write_features, "test", *test)) {
      std::fprintf(stderr, "cannot write features to %s\n",
                   args.write_features.c_str());
      return 1;
    }
  }
  if (!WarmUp(*train, *test, num_classes, args)) {
    std::fprintf(stderr, "warm-up run failed\n");
    return 1;
  }

  for (const auto& [name, options] :
       {std::pair<const char*, KnnOptions>("cosine", Cosine(args)),
        std::pair<const char*, KnnOptions>("euclidean", Euclidean(args))}) {
    if (!args.only.empty() && args.only != name) continue;
    start = std::chrono::steady_clock::now();
    const double cpu_start = CpuSeconds();
    absl::StatusOr<std::vector<KnnResult>> results =
        sslbench::compute::RunKnn(*train, *test, num_classes, options);
    const double seconds = Seconds(start);
    const double cpu_seconds = CpuSeconds() - cpu_start;
    if (!results.ok()) {
      std::fprintf(stderr, "%s\n", results.status().ToString().c_str());
      return 1;
    }
    std::string list;
    for (const KnnResult& r : *results) {
      absl::StrAppend(&list, list.empty() ? "" : ",", "{\"k\":", r.k,
                      ",\"temperature\":", Number(r.temperature),
                      ",\"top1\":", Number(r.metrics.top1),
                      ",\"top5\":", Number(r.metrics.top5), "}");
    }
    std::printf(
        "{\"event\":\"%s\",\"seconds\":%s,\"cpu_seconds\":%s,"
        "\"results\":[%s]}\n",
        name, Number(seconds).c_str(), Number(cpu_seconds).c_str(),
        list.c_str());
    std::fflush(stdout);
  }

  if (args.search_stats) {
    // A separate, untimed search: how many rows the projected search settled,
    // searched again or handed to the full product, and how many exact
    // distances it computed.
    sslbench::compute::EuclideanSearchStats stats;
    absl::StatusOr<std::vector<std::vector<sslbench::compute::EuclideanNeighbour>>>
        found = sslbench::compute::EuclideanNeighbours(*train, *test,
                                                       Euclidean(args), &stats);
    if (!found.ok()) {
      std::fprintf(stderr, "%s\n", found.status().ToString().c_str());
      return 1;
    }
    std::printf(
        "{\"event\":\"euclidean_search\",\"projection_dim\":%lld,"
        "\"projected_rows\":%lld,\"rechecked_rows\":%lld,"
        "\"direct_rows\":%lld,\"verified\":%lld,"
        "\"verified_per_projected_row\":%s}\n",
        static_cast<long long>(stats.projection_dim),
        static_cast<long long>(stats.projected_rows),
        static_cast<long long>(stats.rechecked_rows),
        static_cast<long long>(stats.direct_rows),
        static_cast<long long>(stats.verified),
        Number(stats.projected_rows > 0
                   ? static_cast<double>(stats.verified) / stats.projected_rows
                   : 0.0)
            .c_str());
    std::fflush(stdout);
  }

  if (!args.skip_matmul) {
    c10::InferenceMode inference;
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor a =
        at::from_blob(test->data.data(), {test->rows, test->dim}, f32);
    const at::Tensor b =
        at::from_blob(train->data.data(), {train->rows, train->dim}, f32);
    start = std::chrono::steady_clock::now();
    const double cpu_start = CpuSeconds();
    at::Tensor product = at::mm(a, b.t());
    const double seconds = Seconds(start);
    const double cpu_seconds = CpuSeconds() - cpu_start;
    std::printf(
        "{\"event\":\"matmul\",\"shape\":[%lld,%lld,%lld],\"seconds\":%s,"
        "\"cpu_seconds\":%s,\"checksum\":%s}\n",
        static_cast<long long>(test->rows), static_cast<long long>(test->dim),
        static_cast<long long>(train->rows), Number(seconds).c_str(),
        Number(cpu_seconds).c_str(),
        Number(product.select(0, 0).sum().item<double>()).c_str());
  }
  return 0;
}

// One memory measurement, in this process (run as a child of --memory).
int MeasureMemory(const Args& args) {
  // A fixed mmap threshold turns off glibc's dynamic one, so that every large
  // buffer is mapped when allocated and unmapped when freed: the resident size
  // then follows the live buffers, whatever ran before in the process.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  absl::StatusOr<FeatureMatrix> train = Features(args, "train", args.train_rows);
  absl::StatusOr<FeatureMatrix> test = Features(args, "test", args.test_rows);
  if (!BothOk(train, test)) return 1;
  const int num_classes = NumClasses(*train, *test);
  if (!WarmUp(*train, *test, num_classes, args)) return 1;
  KnnOptions options = Cosine(args);
  options.euclidean_k = 20;
  const int64_t input_bytes =
      static_cast<int64_t>((train->data.size() + test->data.size()) *
                           sizeof(float));
  const int64_t rss_before = StatusBytes("VmRSS");
  {
    // "5" resets the peak resident size (VmHWM) to the current one.
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
  }
  const int64_t hwm_reset = StatusBytes("VmHWM");
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<KnnResult>> results =
      sslbench::compute::RunKnn(*train, *test, num_classes, options);
  const double seconds = Seconds(start);
  if (!results.ok()) {
    std::fprintf(stderr, "%s\n", results.status().ToString().c_str());
    return 1;
  }
  const int64_t hwm = StatusBytes("VmHWM");
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  std::printf(
      "{\"event\":\"memory\",\"dim\":%lld,\"train_rows\":%lld,"
      "\"test_rows\":%lld,\"test_chunk_rows\":%lld,\"train_chunk_rows\":%lld,"
      "\"input_bytes\":%lld,\"rss_before\":%lld,\"hwm_reset_ok\":%s,"
      "\"peak_rss\":%lld,\"extra_bytes\":%lld,\"ru_maxrss\":%lld,"
      "\"seconds\":%s}\n",
      static_cast<long long>(train->dim), static_cast<long long>(train->rows),
      static_cast<long long>(test->rows),
      static_cast<long long>(options.test_chunk_rows),
      static_cast<long long>(options.train_chunk_rows),
      static_cast<long long>(input_bytes), static_cast<long long>(rss_before),
      hwm_reset >= 0 && hwm_reset <= rss_before + (1 << 20) ? "true" : "false",
      static_cast<long long>(hwm), static_cast<long long>(hwm - rss_before),
      static_cast<long long>(usage.ru_maxrss) * 1024,
      Number(seconds).c_str());
  return 0;
}

// Runs MeasureMemory in a fresh process per configuration, so that no
// allocation of one run is reused by the next.
int MemoryTable(const Args& args) {
  struct Config {
    int64_t train_rows, test_chunk_rows, train_chunk_rows;
  };
  const Config configs[] = {{30000, 1024, 16384},
                            {60000, 1024, 16384},
                            {30000, 256, 2048},
                            {60000, 256, 2048}};
  for (const Config& c : configs) {
    std::vector<std::string> argv_s = {
        "/proc/self/exe",
        "--memory-child",
        "--root",
        args.root,
        "--dim",
        std::to_string(args.dim),
        "--threads",
        std::to_string(args.threads),
        "--train-rows",
        std::to_string(c.train_rows),
        "--test-rows",
        std::to_string(args.test_rows),
        "--test-chunk-rows",
        std::to_string(c.test_chunk_rows),
        "--train-chunk-rows",
        std::to_string(c.train_chunk_rows)};
    std::vector<char*> argv;
    for (std::string& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    std::fflush(stdout);
    pid_t pid = 0;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(),
                    environ) != 0) {
      std::fprintf(stderr, "cannot start a measuring process: %s\n",
                   std::strerror(errno));
      return 1;
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "measuring process failed\n");
      return 1;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--root" && has_value) {
      args.root = argv[++i];
    } else if (arg == "--dim" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &args.dim) || args.dim <= 0) {
        return Usage();
      }
    } else if (arg == "--threads" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &args.threads)) return Usage();
    } else if (arg == "--train-rows" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &args.train_rows)) return Usage();
    } else if (arg == "--test-rows" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &args.test_rows)) return Usage();
    } else if (arg == "--test-chunk-rows" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &args.test_chunk_rows)) return Usage();
    } else if (arg == "--train-chunk-rows" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &args.train_chunk_rows)) return Usage();
    } else if (arg == "--write-features" && has_value) {
      args.write_features = argv[++i];
    } else if (arg == "--projection-dim" && has_value) {
      if (!absl::SimpleAtoi(argv[++i], &args.projection_dim)) return Usage();
    } else if (arg == "--only" && has_value) {
      args.only = argv[++i];
      if (args.only != "cosine" && args.only != "euclidean") return Usage();
    } else if (arg == "--search-stats") {
      args.search_stats = true;
    } else if (arg == "--skip-matmul") {
      args.skip_matmul = true;
    } else if (arg == "--memory") {
      args.memory = true;
    } else if (arg == "--memory-child") {
      args.memory_child = true;
    } else {
      return Usage();
    }
  }
  sslbench::compute::SetComputeThreads(args.threads);
  if (args.memory_child) return MeasureMemory(args);
  if (args.memory) return MemoryTable(args);
  return TimeAll(args);
}
