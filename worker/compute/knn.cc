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

// Two kNN variants over frozen features.
//
// Both variants share one loop (TileLoop): for each block of test rows, the
// train set's cache-sized tiles are shared out among the threads; a thread
// prepares a tile (normalises or centres it into its own buffer), computes
// the block's products with it in one single-threaded float32 GEMM, and at
// once, while they are still in cache, passes them through each row's
// running top list (TopK: one comparison per value against the row's current
// threshold, nothing sorted until the end). The threads' lists are merged
// per row after the block. One synchronisation per block, no idle thread
// while tiles remain, and nothing proportional to the train set kept but one
// float per train row.
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
// Euclidean (scikit-learn KNeighborsClassifier(weights="distance",
// algorithm="brute")): scikit-learn ranks by distances computed in float64
// and votes 1/d, giving a row that has zero-distance neighbours weight 1 for
// those and 0 for the rest; the prediction is the argmax of the summed
// weights, ties to the lowest class. Its accuracy must be matched exactly, and
// a float32 GEMM alone cannot do that: ||x||^2 + ||y||^2 - 2 x.y in float32
// reorders near neighbours. So the search runs in two stages:
//  1. candidates: float32 GEMM distances on mean-centred rows (centring keeps
//     the norms, and so the cancellation error, small), keeping the
//     k + max(k, 16) smallest per test row;
//  2. refinement: the candidates' squared distances are recomputed in float64
//     from the original rows, sorted ascending (ties by train index) and the
//     first k kept.
// Stage 1 can miss a true neighbour only if the float32 error exceeds the gap
// between the last candidate and the k-th refined distance. The worst-case
// error of a float32 dot product of length D is about D * eps * |x| |y|, so
// with tol = (2 D + 16) * eps * (|x|^2 + max |y|^2) every row whose last
// candidate lies more than tol beyond its k-th exact distance is provably
// exact. The rare rows that are not are searched again: every train row whose
// float32 distance is within tol of the k-th exact distance becomes a
// candidate, and the refinement is repeated on that set.

namespace sslbench::compute {
namespace {

// Accumulates top-1, top-5 and per-class accuracy row by row. The rank of the
// true class counts the classes that score higher, or equal with a lower
// index, so rank 0 is numpy's argmax (ties to the lowest class).
template <typename T>
class MetricsAccumulator {
 public:
  explicit MetricsAccumulator(int num_classes)
      : num_classes_(num_classes),
        correct_(num_classes, 0),
        total_(num_classes, 0) {}

  void Add(const T* scores, int32_t label) {
    const T own = scores[label];
    int rank = 0;
    for (int c = 0; c < num_classes_; ++c) {
      if (scores[c] > own || (scores[c] == own && c < label)) ++rank;
    }
    ++rows_;
    ++total_[label];
    if (rank == 0) {
      ++top1_;
      ++correct_[label];
    }
    if (rank < 5) ++top5_;
  }

  ClassificationMetrics Finish() const {
    ClassificationMetrics m;
    m.per_class.assign(num_classes_, std::numeric_limits<double>::quiet_NaN());
    if (rows_ == 0) return m;
    m.top1 = static_cast<double>(top1_) / static_cast<double>(rows_);
    m.top5 = static_cast<double>(top5_) / static_cast<double>(rows_);
    double sum = 0;
    int present = 0;
    for (int c = 0; c < num_classes_; ++c) {
      if (total_[c] == 0) continue;
      m.per_class[c] =
          static_cast<double>(correct_[c]) / static_cast<double>(total_[c]);
      sum += m.per_class[c];
      ++present;
    }
    m.mean_per_class = present > 0 ? sum / present : 0;
    return m;
  }

 private:
  int num_classes_;
  int64_t rows_ = 0;
  int64_t top1_ = 0;
  int64_t top5_ = 0;
  std::vector<int64_t> correct_;
  std::vector<int64_t> total_;
};

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
  for (size_t i = 0; i < m.data.size(); ++i) {
    if (!std::isfinite(m.data[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("kNN: ", name, " features are not finite (row ",
                       static_cast<int64_t>(i) / m.dim, ")"));
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
  if (options.test_chunk_rows <= 0 || options.train_chunk_rows <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: chunk sizes must be positive, got test ", options.test_chunk_rows,
        " and train ", options.train_chunk_rows));
  }
  return absl::OkStatus();
}

// Counts test rows done over both variants and asks the caller whether to go
// on.
class ProgressTracker {
 public:
  ProgressTracker(const ProgressFn& fn, int64_t total) : fn_(fn), total_(total) {}

  // False when the caller asked to stop.
  bool Advance(int64_t rows) {
    done_ += rows;
    return !fn_ || fn_(done_, total_);
  }

  absl::Status Cancelled() const {
    return absl::CancelledError(absl::StrCat("kNN cancelled after ", done_,
                                             " of ", total_, " test rows"));
  }

 private:
  const ProgressFn& fn_;
  const int64_t total_;
  int64_t done_ = 0;
};

at::Tensor Wrap(const FeatureMatrix& m) {
  // from_blob neither copies nor writes; every op below produces new tensors.
  return at::from_blob(const_cast<float*>(m.data.data()), {m.rows, m.dim},
                       at::TensorOptions().dtype(at::kFloat));
}

at::Tensor L2Normalize(const at::Tensor& x) {
  return x / x.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
}

// Train rows per similarity tile. Each thread's float32 block of similarities
// (test rows x tile) and its normalised or centred train rows (tile x dim)
// should stay in the last-level cache between the GEMM that writes them and
// the selection pass that reads them; larger tiles gain nothing in GEMM speed.
int64_t TileRows(const KnnOptions& options, int64_t dim) {
  constexpr int64_t kTileBytes = int64_t{4} << 20;
  const int64_t by_dim =
      kTileBytes / (dim * static_cast<int64_t>(sizeof(float))) / 64 * 64;
  const int64_t rows = std::clamp<int64_t>(by_dim, 512, 4096);
  return std::min(rows, options.train_chunk_rows);
}

// The `capacity` best (largest value, ties to the lower index) of a stream of
// (value, index) pairs whose indices arrive in increasing order. Values below
// the current capacity-th best are rejected with one comparison; accepted ones
// go to a buffer of 2 x capacity that is cut back to the best `capacity` when
// full. Since later indices lose every tie, a value equal to the capacity-th
// best can be rejected too.
class TopK {
 public:
  struct Entry {
    float value;
    int64_t index;
  };

  void Reset(int64_t capacity) {
    capacity_ = capacity;
    entries_.resize(static_cast<size_t>(2 * capacity));
    size_ = 0;
    threshold_ = -std::numeric_limits<float>::infinity();
  }

  // Offers value(j) with index base + j for j in [0, n).
  template <typename ValueAt>
  void Scan(int64_t n, int64_t base, const ValueAt& value) {
    constexpr int64_t kLanes = 16;
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      // Branch-free test of a whole group first: almost every group of a long
      // row is rejected here once the threshold has settled.
      const float thr = threshold_;
      float v[kLanes];
      int any = 0;
      for (int64_t u = 0; u < kLanes; ++u) {
        v[u] = value(j + u);
        any |= v[u] > thr;
      }
      if (!any) continue;
      for (int64_t u = 0; u < kLanes; ++u) Offer(v[u], base + j + u);
    }
    for (; j < n; ++j) Offer(value(j), base + j);
  }

  // The best min(capacity, offered) entries, best first. Ends the stream.
  const Entry* Finish(int64_t* count) {
    Cut();
    std::sort(entries_.begin(), entries_.begin() + size_, Better());
    *count = size_;
    return entries_.data();
  }

  // The capacity-th best value so far (lowest kept value); -inf until full.
  float threshold() const { return threshold_; }

  int64_t capacity() const { return capacity_; }

  // The order of the result: larger value first, ties to the lower index.
  struct Better {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.value > b.value || (a.value == b.value && a.index < b.index);
    }
  };

 private:
  void Offer(float value, int64_t index) {
    if (!(value > threshold_)) return;
    entries_[size_++] = {value, index};
    if (size_ == 2 * capacity_) Cut();
  }

  // Keeps the best `capacity` entries and raises the threshold to the worst
  // of them.
  void Cut() {
    if (size_ < capacity_) return;
    if (size_ > capacity_) {
      std::nth_element(entries_.begin(), entries_.begin() + (capacity_ - 1),
                       entries_.begin() + size_, Better());
      size_ = capacity_;
    }
    float lowest = entries_[0].value;
    for (int64_t i = 1; i < size_; ++i) lowest = std::min(lowest, entries_[i].value);
    threshold_ = lowest;
  }

  int64_t capacity_ = 0;
  int64_t size_ = 0;
  float threshold_ = 0;
  std::vector<Entry> entries_;
};

// Runs `fn(begin, end)` over [0, n) on the intra-op pool.
template <typename Fn>
void ParallelRows(int64_t n, const Fn& fn) {
  at::parallel_for(0, n, /*grain_size=*/8, fn);
}

// One thread's buffers and selection state for the tile loop: the tile's
// prepared (normalised or centred) train rows, the block's products with
// them, and a running top list per test row of the block.
struct Worker {
  at::Tensor tile;        // [tile rows, dim]
  at::Tensor products;    // [block rows * tile rows]
  std::vector<TopK> top;  // block rows
};

std::vector<Worker> MakeWorkers(int64_t block_rows, int64_t tile_rows,
                                int64_t dim) {
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  std::vector<Worker> workers(std::max(1, at::get_num_threads()));
  for (Worker& w : workers) {
    w.tile = at::empty({tile_rows, dim}, f32);
    w.products = at::empty({block_rows * tile_rows}, f32);
    w.top.resize(static_cast<size_t>(block_rows));
  }
  return workers;
}

// Runs the tile loop for one block of test rows `q` ([b, dim]): the train
// tiles are shared out among the threads, each taking the next tile when it
// is free (so one slowed by other work simply takes fewer). For tile
// [t, t + m) a thread calls prepare(t, m, x) to write the tile's rows into
// its buffer x, multiplies q by x^T (one single-threaded GEMM: ATen and
// OpenBLAS do not nest parallelism inside a parallel region) and passes each
// test row's products to scan_row(top, r, products, t, m), its own TopK for
// row r. One synchronisation per block; afterwards each worker's TopK for a
// row holds the best of the tiles that worker took, which increase.
template <typename Prepare, typename ScanRow>
void TileLoop(std::vector<Worker>& workers, const at::Tensor& q,
              int64_t train_rows, int64_t tile_rows, const Prepare& prepare,
              const ScanRow& scan_row) {
  const int64_t b = q.size(0);
  const int64_t num_tiles = (train_rows + tile_rows - 1) / tile_rows;
  std::atomic<int64_t> next_tile{0};
  std::atomic<size_t> next_worker{0};
  at::parallel_for(0, static_cast<int64_t>(workers.size()), 1,
                   [&](int64_t, int64_t) {
    Worker& w = workers[next_worker.fetch_add(1) % workers.size()];
    for (int64_t i = next_tile.fetch_add(1); i < num_tiles;
         i = next_tile.fetch_add(1)) {
      const int64_t t = i * tile_rows;
      const int64_t m = std::min(tile_rows, train_rows - t);
      at::Tensor x = w.tile.narrow(0, 0, m);
      prepare(t, m, x);
      at::Tensor out = w.products.narrow(0, 0, b * m).view({b, m});
      at::mm_out(out, q, x.t());
      const float* p = out.data_ptr<float>();
      for (int64_t r = 0; r < b; ++r) scan_row(w.top[r], r, p + r * m, t, m);
    }
  });
}

// Row r's best entries over all workers, best first (the exact top list of
// the whole train set: each worker's list is exact for its tiles). `scratch`
// is the caller's, reused across rows.
const TopK::Entry* BestOf(std::vector<Worker>& workers, int64_t r,
                          std::vector<TopK::Entry>& scratch, int64_t* count) {
  if (workers.size() == 1) return workers[0].top[r].Finish(count);
  scratch.clear();
  for (Worker& w : workers) {
    int64_t n = 0;
    const TopK::Entry* e = w.top[r].Finish(&n);
    scratch.insert(scratch.end(), e, e + n);
  }
  const int64_t keep = std::min<int64_t>(workers[0].top[r].capacity(),
                                         static_cast<int64_t>(scratch.size()));
  std::partial_sort(scratch.begin(), scratch.begin() + keep, scratch.end(),
                    TopK::Better());
  *count = keep;
  return scratch.data();
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
  const at::Tensor norms = at::empty({train.rows, 1}, f32);
  for (int64_t t = 0; t < train.rows; t += options.train_chunk_rows) {
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

  const int64_t tile = std::min(TileRows(options, dim), train.rows);
  const int64_t block_rows = std::min(options.test_chunk_rows, test.rows);
  std::vector<Worker> workers = MakeWorkers(block_rows, tile, dim);
  const at::Tensor best_sim = at::empty({block_rows, kmax}, f32);
  std::vector<int32_t> best_label(static_cast<size_t>(block_rows * kmax));
  std::vector<float> scores(num_classes);

  for (int64_t s = 0; s < test.rows; s += options.test_chunk_rows) {
    const int64_t b = std::min(options.test_chunk_rows, test.rows - s);
    const at::Tensor q = L2Normalize(test_t.narrow(0, s, b));
    for (Worker& w : workers) {
      for (int64_t r = 0; r < b; ++r) w.top[r].Reset(kmax);
    }
    TileLoop(
        workers, q, train.rows, tile,
        [&](int64_t t, int64_t m, at::Tensor& x) {
          at::div_out(x, train_t.narrow(0, t, m), norms.narrow(0, t, m));
        },
        [](TopK& top, int64_t, const float* row, int64_t t, int64_t m) {
          top.Scan(m, t, [row](int64_t j) { return row[j]; });
        });

    // Sorted neighbours: similarity descending, ties to the lower train index.
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
      results.push_back(std::move(r));
    }
  }
  return results;
}

struct Neighbour {
  double sq_distance;
  int64_t index;
};

// Squared Euclidean distance in float64, summed in index order.
double ExactSqDistance(const float* x, const float* y, int64_t dim) {
  double sum = 0;
  for (int64_t i = 0; i < dim; ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(y[i]);
    sum += d * d;
  }
  return sum;
}

// ExactSqDistance to four rows at once: four independent sums, each in index
// order with the same operations, so each equals ExactSqDistance bit for bit.
void ExactSqDistances4(const float* x, const float* const y[4], int64_t dim,
                       double out[4]) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int64_t i = 0; i < dim; ++i) {
    const double xi = static_cast<double>(x[i]);
    const double d0 = xi - static_cast<double>(y[0][i]);
    const double d1 = xi - static_cast<double>(y[1][i]);
    const double d2 = xi - static_cast<double>(y[2][i]);
    const double d3 = xi - static_cast<double>(y[3][i]);
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// Refines candidate indices to the k nearest by exact distance, ties by index.
std::vector<Neighbour> Refine(const float* query, const FeatureMatrix& train,
                              const int64_t* candidates, int64_t count,
                              int64_t k) {
  std::vector<Neighbour> n(count);
  const float* data = train.data.data();
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float* const rows[4] = {data + candidates[j] * train.dim,
                                  data + candidates[j + 1] * train.dim,
                                  data + candidates[j + 2] * train.dim,
                                  data + candidates[j + 3] * train.dim};
    double d[4];
    ExactSqDistances4(query, rows, train.dim, d);
    for (int u = 0; u < 4; ++u) n[j + u] = {d[u], candidates[j + u]};
  }
  for (; j < count; ++j) {
    n[j] = {ExactSqDistance(query, data + candidates[j] * train.dim, train.dim),
            candidates[j]};
  }
  std::sort(n.begin(), n.end(), [](const Neighbour& a, const Neighbour& b) {
    return a.sq_distance < b.sq_distance ||
           (a.sq_distance == b.sq_distance && a.index < b.index);
  });
  n.resize(std::min(k, count));
  return n;
}

// scikit-learn's "distance" weights: 1/d, or, when some neighbour is at
// distance 0, 1 for those and 0 for the others.
void Vote(const std::vector<Neighbour>& neighbours, const FeatureMatrix& train,
          double* scores) {
  bool has_zero = false;
  for (const Neighbour& n : neighbours) has_zero |= n.sq_distance == 0;
  for (const Neighbour& n : neighbours) {
    const double w = has_zero ? (n.sq_distance == 0 ? 1.0 : 0.0)
                              : 1.0 / std::sqrt(n.sq_distance);
    scores[train.labels[n.index]] += w;
  }
}

absl::StatusOr<KnnResult> RunEuclidean(const FeatureMatrix& train,
                                       const FeatureMatrix& test,
                                       int num_classes,
                                       const KnnOptions& options,
                                       ProgressTracker& progress) {
  const int64_t k = options.euclidean_k;
  const int64_t num_candidates =
      std::min<int64_t>(train.rows, k + std::max<int64_t>(k, 16));
  const int64_t dim = train.dim;
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor train_t = Wrap(train);
  const at::Tensor test_t = Wrap(test);
  const int64_t tile = std::min(TileRows(options, dim), train.rows);
  const int64_t block_rows = std::min(options.test_chunk_rows, test.rows);
  std::vector<Worker> workers = MakeWorkers(block_rows, tile, dim);
  const at::Tensor& tile_buffer = workers[0].tile;

  // The train mean in float64, chunk by chunk.
  at::Tensor sum = at::zeros({dim}, at::TensorOptions().dtype(at::kDouble));
  for (int64_t t = 0; t < train.rows; t += tile) {
    const int64_t m = std::min(tile, train.rows - t);
    sum += train_t.narrow(0, t, m).to(at::kDouble).sum(0);
  }
  const at::Tensor mean = (sum / static_cast<double>(train.rows)).to(at::kFloat);

  // Centred squared norms of the train rows, once.
  const at::Tensor train_sq = at::empty({train.rows}, f32);
  for (int64_t t = 0; t < train.rows; t += tile) {
    const int64_t m = std::min(tile, train.rows - t);
    at::Tensor c = tile_buffer.narrow(0, 0, m);
    at::sub_out(c, train_t.narrow(0, t, m), mean);
    at::Tensor out = train_sq.narrow(0, t, m);
    at::sum_out(out, c * c, at::IntArrayRef{1});
  }
  const float* train_sq_p = train_sq.data_ptr<float>();
  const double max_train_sq = train_sq.max().item<double>();
  const double eps = std::numeric_limits<float>::epsilon();
  const double tol_factor = (2.0 * static_cast<double>(dim) + 16.0) * eps;

  std::vector<int64_t> cand_idx(static_cast<size_t>(block_rows * num_candidates));
  MetricsAccumulator<double> acc(num_classes);
  std::vector<double> scores(num_classes);

  for (int64_t s = 0; s < test.rows; s += options.test_chunk_rows) {
    const int64_t b = std::min(options.test_chunk_rows, test.rows - s);
    const at::Tensor q = (test_t.narrow(0, s, b) - mean).contiguous();
    const at::Tensor q_sq = (q * q).sum(1).contiguous();
    const float* q_sq_p = q_sq.data_ptr<float>();
    for (Worker& w : workers) {
      for (int64_t r = 0; r < b; ++r) w.top[r].Reset(num_candidates);
    }
    // The float32 squared distance of centred query q_r to centred train row
    // c_j is (q_sq[r] + train_sq[j]) - 2 q_r . c_j; it is negated, so that
    // the nearest is the largest.
    TileLoop(
        workers, q, train.rows, tile,
        [&](int64_t t, int64_t m, at::Tensor& x) {
          at::sub_out(x, train_t.narrow(0, t, m), mean);
        },
        [&](TopK& top, int64_t r, const float* row, int64_t t, int64_t m) {
          const float qs = q_sq_p[r];
          const float* tile_sq = train_sq_p + t;
          top.Scan(m, t, [row, qs, tile_sq](int64_t j) {
            return 2.0f * row[j] - (qs + tile_sq[j]);
          });
        });

    std::vector<std::vector<Neighbour>> neighbours(b);
    std::vector<double> tolerance(b);
    std::vector<char> recheck(b, 0);
    ParallelRows(b, [&](int64_t begin, int64_t end) {
      std::vector<TopK::Entry> scratch;
      for (int64_t r = begin; r < end; ++r) {
        int64_t count = 0;
        const TopK::Entry* e = BestOf(workers, r, scratch, &count);
        int64_t* idx = cand_idx.data() + r * num_candidates;
        for (int64_t i = 0; i < count; ++i) idx[i] = e[i].index;
        // The largest float32 distance among the candidates.
        const double last = -static_cast<double>(e[count - 1].value);
        const float* query = test.data.data() + (s + r) * dim;
        neighbours[r] = Refine(query, train, idx, count, k);
        tolerance[r] = tol_factor *
                           (static_cast<double>(q_sq_p[r]) + max_train_sq) *
                           1.01 +
                       std::numeric_limits<float>::min();
        recheck[r] =
            num_candidates < train.rows &&
            !(last - tolerance[r] > neighbours[r].back().sq_distance);
      }
    });

    // Rows whose candidate list may have missed a neighbour: take every train
    // row within tolerance of the k-th exact distance, in small groups so the
    // candidate lists stay bounded.
    std::vector<int64_t> rows;
    for (int64_t r = 0; r < b; ++r) {
      if (recheck[r]) rows.push_back(r);
    }
    constexpr int64_t kRecheckGroup = 64;
    for (size_t g = 0; g < rows.size(); g += kRecheckGroup) {
      const int64_t n = std::min<int64_t>(kRecheckGroup, rows.size() - g);
      const at::Tensor group_rows =
          at::from_blob(rows.data() + g, {n},
                        at::TensorOptions().dtype(at::kLong))
              .clone();
      const at::Tensor qg = q.index_select(0, group_rows);
      const at::Tensor qg_sq = q_sq.index_select(0, group_rows);
      std::vector<double> limit(n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = rows[g + i];
        limit[i] = neighbours[r].back().sq_distance + tolerance[r];
      }
      std::vector<std::vector<int64_t>> extra(n);
      for (int64_t t = 0; t < train.rows; t += tile) {
        const int64_t m = std::min(tile, train.rows - t);
        at::Tensor c = workers[0].tile.narrow(0, 0, m);
        at::sub_out(c, train_t.narrow(0, t, m), mean);
        at::Tensor dots = workers[0].products.narrow(0, 0, n * m).view({n, m});
        at::mm_out(dots, qg, c.t());
        const float* p = dots.data_ptr<float>();
        const float* qg_sq_p = qg_sq.data_ptr<float>();
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < m; ++j) {
            const float d = (qg_sq_p[i] + train_sq_p[t + j]) - 2.0f * p[i * m + j];
            if (static_cast<double>(d) <= limit[i]) extra[i].push_back(t + j);
          }
        }
      }
      ParallelRows(n, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t r = rows[g + i];
          const float* query = test.data.data() + (s + r) * dim;
          // The k found so far are within the limit, so `extra` holds them.
          neighbours[r] = Refine(query, train, extra[i].data(),
                                 static_cast<int64_t>(extra[i].size()), k);
        }
      });
    }

    for (int64_t r = 0; r < b; ++r) {
      std::fill(scores.begin(), scores.end(), 0.0);
      Vote(neighbours[r], train, scores.data());
      acc.Add(scores.data(), test.labels[s + r]);
    }
    if (!progress.Advance(b)) return progress.Cancelled();
  }

  KnnResult result;
  result.variant = "euclidean";
  result.k = static_cast<int>(k);
  result.metrics = acc.Finish();
  return result;
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

absl::StatusOr<std::vector<KnnResult>> RunKnn(const FeatureMatrix& train,
                                              const FeatureMatrix& test,
                                              int num_classes,
                                              const KnnOptions& options,
                                              const ProgressFn& progress) {
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
          RunEuclidean(train, test, num_classes, options, tracker);
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
