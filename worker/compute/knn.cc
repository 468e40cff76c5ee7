#include "worker/compute/knn.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/device.h"
#include "worker/compute/device_internal.h"
#include "worker/compute/knn_device.h"
#include "worker/compute/knn_internal.h"

// Two kNN variants over frozen features.
//
// Both variants share one loop (TileLoop, knn_internal.h): for each block of
// test rows, the train set's cache-sized tiles are shared out among the
// threads; a thread prepares a tile (normalises, centres or projects it),
// computes the block's products with it in one single-threaded float32 GEMM,
// and at once, while they are still in cache, passes them through each row's
// running top list (TopK: one comparison per value against the row's current
// threshold, nothing sorted until the end). The threads' lists are merged
// per row after the block. One synchronisation per block, no idle thread
// while tiles remain, and nothing proportional to the train set kept but one
// float per train row (and, within a bound, the projected Euclidean search's
// projections). The loops run on ATen's OpenMP pool: this code must be built
// with -fopenmp, or at::parallel_for silently runs them on one thread.
//
// Cosine (DINO): rows are L2-normalised (x / max(||x||, 1e-12)); the train
// rows' norms are computed once and each tile is divided by them just before
// its GEMM, which gives the same float32 similarities as normalising the
// whole train set first. The top-max(k) neighbours are sorted by similarity
// (ties to the lower train index). The vote of the i-th neighbour is
// exp(sim_i / T) added to its class, exactly DINO's `(sim / T).exp()` summed
// per one-hot class; every (k, T) pair reuses the same sorted neighbour list,
// the scores for each k being prefix sums in neighbour order.
//
// Euclidean (scikit-learn's KNeighborsClassifier(weights="distance")): see
// knn_euclidean.cc.

namespace sslbench::compute {
namespace {

using knn_internal::BestOf;
using knn_internal::DeviceSearch;
using knn_internal::Metric;
using knn_internal::UseDeviceSearch;
using knn_internal::MakeWorkers;
using knn_internal::MetricsAccumulator;
using knn_internal::ParallelRows;
using knn_internal::ProgressTracker;
using knn_internal::TileLoop;
using knn_internal::TileRows;
using knn_internal::TopK;
using knn_internal::Worker;
using knn_internal::Wrap;

absl::Status ValidateMatrix(const FeatureMatrix& m, const char* name,
                            int num_classes) {
  if (m.rows <= 0 || m.dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: ", name, " features are empty (", m.rows, " x ", m.dim, ")"));
  }
  if (static_cast<int64_t>(m.data.size()) != m.rows * m.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("kNN: ", name, " features hold ", m.data.size(),
                     " values; expected ", m.rows, " x ", m.dim));
  }
  if (static_cast<int64_t>(m.labels.size()) != m.rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("kNN: ", name, " has ", m.labels.size(), " labels for ",
                     m.rows, " rows"));
  }
  for (int64_t i = 0; i < m.rows; ++i) {
    if (m.labels[i] < 0 || m.labels[i] >= num_classes) {
      return absl::InvalidArgumentError(
          absl::StrCat("kNN: ", name, " label ", m.labels[i], " of row ", i,
                       " is outside [0, ", num_classes, ")"));
    }
  }
  // Squared norms and distances are formed in float32: values this large
  // would overflow them (features of trained networks are many orders of
  // magnitude smaller).
  constexpr float kMaxMagnitude = 1e15f;
  for (size_t i = 0; i < m.data.size(); ++i) {
    if (!std::isfinite(m.data[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("kNN: ", name, " features are not finite (row ",
                       static_cast<int64_t>(i) / m.dim, ")"));
    }
    if (std::fabs(m.data[i]) > kMaxMagnitude) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kNN: ", name, " feature ", m.data[i], " in row ",
          static_cast<int64_t>(i) / m.dim,
          " exceeds 1e15 in magnitude; squared distances would overflow"));
    }
  }
  return absl::OkStatus();
}

// The cosine temperatures in effect: the sweep, or the single temperature.
std::vector<double> Temperatures(const KnnOptions& options) {
  if (!options.temperatures.empty()) return options.temperatures;
  return {options.temperature};
}

absl::Status Validate(const FeatureMatrix& train, const FeatureMatrix& test,
                      int num_classes, const KnnOptions& options) {
  if (num_classes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kNN: num_classes must be positive, got ", num_classes));
  }
  if (absl::Status s = ValidateMatrix(train, "train", num_classes); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateMatrix(test, "test", num_classes); !s.ok()) {
    return s;
  }
  if (train.rows > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: ", train.rows, " train rows; at most 2^31 - 1 are supported"));
  }
  if (train.dim != test.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("kNN: train features have dim ", train.dim,
                     " but test features have dim ", test.dim));
  }
  if (options.ks.empty() && options.euclidean_k == 0) {
    return absl::InvalidArgumentError(
        "kNN: no cosine k and no Euclidean k requested");
  }
  for (int k : options.ks) {
    if (k <= 0 || k > train.rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kNN: k = ", k, " must be in [1, ", train.rows, "] (train rows)"));
    }
  }
  if (!options.ks.empty()) {
    for (double t : Temperatures(options)) {
      if (!(t > 0) || !std::isfinite(t)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "kNN: temperature must be a positive number, got ", t));
      }
    }
  }
  if (options.euclidean_k < 0 || options.euclidean_k > train.rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("kNN: euclidean_k = ", options.euclidean_k,
                     " must be in [0, ", train.rows, "] (train rows)"));
  }
  if (options.euclidean_projection_dim < -1 ||
      options.euclidean_projection_dim >= train.dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: euclidean_projection_dim = ", options.euclidean_projection_dim,
        " must be -1 (automatic), 0 (off) or below the feature dim ",
        train.dim));
  }
  if (options.search != "auto" && options.search != "tiles" &&
      options.search != "candidates") {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: search must be auto, tiles or candidates, got '", options.search,
        "'"));
  }
  if (options.search == "tiles" && IsCudaDevice(options.device)) {
    return absl::InvalidArgumentError(
        "kNN: the tile search runs on the CPU only; use search auto or "
        "candidates on a CUDA device");
  }
  if (options.device_tile_rows <= 0 || options.device_memory_mib <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: device_tile_rows and device_memory_mib must be positive, got ",
        options.device_tile_rows, " and ", options.device_memory_mib));
  }
  if (options.test_chunk_rows <= 0 || options.train_chunk_rows <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: chunk sizes must be positive, got test ", options.test_chunk_rows,
        " and train ", options.train_chunk_rows));
  }
  return absl::OkStatus();
}

// The options with the device name resolved ("auto" to cpu or cuda:0).
absl::StatusOr<KnnOptions> ResolveOptions(const KnnOptions& requested) {
  absl::StatusOr<std::string> device = ResolveDevice(requested.device);
  if (!device.ok()) return device_internal::Prefixed(device.status(), "kNN");
  KnnOptions options = requested;
  options.device = *device;
  return options;
}

at::Tensor L2Normalize(const at::Tensor& x) {
  return x / x.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
}

absl::StatusOr<std::vector<KnnResult>> RunCosine(
    const FeatureMatrix& train, const FeatureMatrix& test, int num_classes,
    const KnnOptions& options, const std::vector<double>& temperatures,
    ProgressTracker& progress) {
  const int64_t dim = train.dim;
  const at::Tensor train_t = Wrap(train);
  const at::Tensor test_t = Wrap(test);
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);

  // Each train row's norm, once: a tile is normalised by dividing by them,
  // which is bit for bit DINO's x / max(||x||, 1e-12) without keeping a
  // normalised copy of the whole train set.
  // (The candidate search normalises on its device instead.)
  const bool on_device = UseDeviceSearch(options);
  const at::Tensor norms = on_device ? at::Tensor() : at::empty({train.rows, 1}, f32);
  for (int64_t t = 0; !on_device && t < train.rows; t += options.train_chunk_rows) {
    const int64_t m = std::min(options.train_chunk_rows, train.rows - t);
    norms.narrow(0, t, m).copy_(
        train_t.narrow(0, t, m).norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12));
  }

  // Each distinct k once, ascending: the votes for all ks are prefix sums of
  // one sorted neighbour list.
  std::vector<int> sorted_ks = options.ks;
  std::sort(sorted_ks.begin(), sorted_ks.end());
  sorted_ks.erase(std::unique(sorted_ks.begin(), sorted_ks.end()),
                  sorted_ks.end());
  const int64_t num_ks = static_cast<int64_t>(sorted_ks.size());
  const int64_t kmax = sorted_ks.back();
  std::vector<MetricsAccumulator<float>> acc(
      temperatures.size() * sorted_ks.size(),
      MetricsAccumulator<float>(num_classes));

  std::unique_ptr<DeviceSearch> device_search;
  int64_t step = options.test_chunk_rows;
  if (on_device) {
    absl::StatusOr<std::unique_ptr<DeviceSearch>> created =
        DeviceSearch::Create(train, options, Metric::kCosine, kmax);
    if (!created.ok()) return created.status();
    device_search = *std::move(created);
    step = device_search->block_rows();
  }
  const int64_t tile = std::min(TileRows(options, dim), train.rows);
  const int64_t block_rows = std::min(step, test.rows);
  std::vector<Worker> workers =
      device_search ? std::vector<Worker>() : MakeWorkers(block_rows, tile, dim);
  at::Tensor best_sim = at::empty({block_rows, kmax}, f32);
  std::vector<int32_t> best_label(static_cast<size_t>(block_rows * kmax));
  std::vector<float> scores(num_classes);

  for (int64_t s = 0; s < test.rows; s += step) {
    const int64_t b = std::min(step, test.rows - s);
    if (device_search) {
      at::Tensor values, indices;
      device_search->Search(test, s, b, &values, &indices);
      best_sim.narrow(0, 0, b).copy_(values);
      const int64_t* index = indices.data_ptr<int64_t>();
      for (int64_t i = 0; i < b * kmax; ++i) {
        best_label[i] = train.labels[index[i]];
      }
    } else {
      const at::Tensor q = L2Normalize(test_t.narrow(0, s, b));
      for (Worker& w : workers) {
        for (int64_t r = 0; r < b; ++r) w.top[r].Reset(kmax);
      }
      TileLoop(
          workers, q, train.rows, tile,
          [&](Worker& w, int64_t t, int64_t m) {
            at::Tensor x = w.tile.narrow(0, 0, m);
            at::div_out(x, train_t.narrow(0, t, m), norms.narrow(0, t, m));
            return x;
          },
          [](Worker& w, int64_t r, const float* row, int64_t t, int64_t m) {
            w.top[r].Scan(m, t, [row](int64_t j) { return row[j]; });
          });

      // Sorted neighbours: similarity descending, ties to the lower train
      // index.
      float* sim_out = best_sim.data_ptr<float>();
      ParallelRows(b, [&](int64_t begin, int64_t end) {
        std::vector<TopK::Entry> scratch;
        for (int64_t r = begin; r < end; ++r) {
          int64_t count = 0;
          const TopK::Entry* e = BestOf(workers, r, scratch, &count);
          for (int64_t i = 0; i < count; ++i) {
            sim_out[r * kmax + i] = e[i].value;
            best_label[r * kmax + i] = train.labels[e[i].index];
          }
        }
      });
    }

    for (size_t ti = 0; ti < temperatures.size(); ++ti) {
      // DINO's weights, (sim / T).exp(), by the same ATen kernels; the class
      // scores add them in neighbour order, so every k's scores equal those
      // of a search for that k alone.
      const at::Tensor weights =
          best_sim.narrow(0, 0, b).div(temperatures[ti]).exp_().contiguous();
      const float* w = weights.data_ptr<float>();
      for (int64_t r = 0; r < b; ++r) {
        std::fill(scores.begin(), scores.end(), 0.0f);
        int64_t ki = 0;
        for (int64_t i = 0; i < kmax; ++i) {
          scores[best_label[r * kmax + i]] += w[r * kmax + i];
          if (sorted_ks[ki] == i + 1) {
            acc[ti * num_ks + ki].Add(scores.data(), test.labels[s + r]);
            ++ki;
          }
        }
      }
    }
    if (!progress.Advance(b)) return progress.Cancelled();
  }

  std::vector<KnnResult> results;
  for (size_t ti = 0; ti < temperatures.size(); ++ti) {
    for (int k : options.ks) {
      const int64_t ki =
          std::lower_bound(sorted_ks.begin(), sorted_ks.end(), k) -
          sorted_ks.begin();
      KnnResult r;
      r.variant = "cosine";
      r.k = k;
      r.temperature = temperatures[ti];
      r.metrics = acc[ti * num_ks + ki].Finish();
      if (device_search) r.exhaustive_rows = device_search->fallback_rows();
      results.push_back(std::move(r));
    }
  }
  return results;
}

}  // namespace

ClassificationMetrics MetricsFromScores(const std::vector<float>& scores,
                                        const std::vector<int32_t>& labels,
                                        int num_classes) {
  MetricsAccumulator<float> acc(num_classes);
  if (num_classes <= 0) return acc.Finish();
  const size_t rows = std::min(labels.size(), scores.size() / num_classes);
  for (size_t i = 0; i < rows; ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) continue;
    acc.Add(scores.data() + i * num_classes, labels[i]);
  }
  return acc.Finish();
}

absl::StatusOr<std::vector<std::vector<EuclideanNeighbour>>>
EuclideanNeighbours(const FeatureMatrix& train, const FeatureMatrix& test,
                    const KnnOptions& requested, EuclideanSearchStats* stats) {
  absl::StatusOr<KnnOptions> resolved = ResolveOptions(requested);
  if (!resolved.ok()) return resolved.status();
  const KnnOptions& options = *resolved;
  // Labels play no part; validate them against the widest range they use.
  int32_t max_label = 0;
  for (int32_t l : train.labels) max_label = std::max(max_label, l);
  for (int32_t l : test.labels) max_label = std::max(max_label, l);
  KnnOptions euclidean = options;
  euclidean.ks.clear();
  if (euclidean.euclidean_k <= 0) {
    return absl::InvalidArgumentError(
        "kNN: EuclideanNeighbours needs euclidean_k > 0");
  }
  if (absl::Status s = Validate(train, test, max_label + 1, euclidean);
      !s.ok()) {
    return s;
  }
  std::vector<std::vector<EuclideanNeighbour>> all(test.rows);
  const ProgressFn no_progress;
  ProgressTracker tracker(no_progress, test.rows);
  try {
    c10::InferenceMode inference;
    absl::Status status = knn_internal::SearchEuclidean(
        train, test, euclidean, tracker,
        [&](int64_t first,
            const std::vector<std::vector<EuclideanNeighbour>>& block) {
          for (size_t r = 0; r < block.size(); ++r) all[first + r] = block[r];
        },
        stats);
    if (!status.ok()) return status;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("kNN failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("kNN failed: ", e.what()));
  }
  return all;
}

absl::StatusOr<std::vector<KnnResult>> RunKnn(const FeatureMatrix& train,
                                              const FeatureMatrix& test,
                                              int num_classes,
                                              const KnnOptions& requested,
                                              const ProgressFn& progress) {
  absl::StatusOr<KnnOptions> resolved = ResolveOptions(requested);
  if (!resolved.ok()) return resolved.status();
  const KnnOptions& options = *resolved;
  if (absl::Status s = Validate(train, test, num_classes, options); !s.ok()) {
    return s;
  }
  const bool cosine = !options.ks.empty();
  const bool euclidean = options.euclidean_k > 0;
  ProgressTracker tracker(progress,
                          test.rows * ((cosine ? 1 : 0) + (euclidean ? 1 : 0)));
  try {
    c10::InferenceMode inference;
    std::vector<KnnResult> results;
    if (cosine) {
      absl::StatusOr<std::vector<KnnResult>> r = RunCosine(
          train, test, num_classes, options, Temperatures(options), tracker);
      if (!r.ok()) return r.status();
      results = *std::move(r);
    }
    if (euclidean) {
      absl::StatusOr<KnnResult> r =
          knn_internal::RunEuclidean(train, test, num_classes, options, tracker);
      if (!r.ok()) return r.status();
      results.push_back(*std::move(r));
    }
    return results;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("kNN failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("kNN failed: ", e.what()));
  }
}

}  // namespace sslbench::compute