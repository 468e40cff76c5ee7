#pragma once
// Internals shared by the kNN variants (knn.cc, knn_euclidean.cc): metrics,
// progress, the running top lists and the tiled GEMM loop. Includes ATen;
// only the kNN sources include it.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/features.h"
#include "worker/compute/knn.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
// at::parallel_for is then an inline OpenMP loop: without -fopenmp its
// pragma is ignored and every "parallel" loop here runs on one thread.
#error "kNN sources must be compiled with OpenMP (link OpenMP::OpenMP_CXX)"
#endif

namespace sslbench::compute::knn_internal {

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

inline at::Tensor Wrap(const FeatureMatrix& m) {
  // from_blob neither copies nor writes; every op below produces new tensors.
  return at::from_blob(const_cast<float*>(m.data.data()), {m.rows, m.dim},
                       at::TensorOptions().dtype(at::kFloat));
}

// Train rows per similarity tile. Each thread's float32 block of similarities
// (test rows x tile) and its normalised or centred train rows (tile x dim)
// should stay in the last-level cache between the GEMM that writes them and
// the selection pass that reads them; larger tiles gain nothing in GEMM speed.
inline int64_t TileRows(const KnnOptions& options, int64_t dim) {
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
// best can be rejected too. A starting threshold, when known, rejects values
// from the start; the buffer grows only as far as values are accepted.
class TopK {
 public:
  // 8 bytes: train indices fit in 32 bits (RunKnn rejects larger sets).
  struct Entry {
    float value;
    int32_t index;
  };

  // Starts a stream that keeps the best `capacity` values above `threshold`.
  void Reset(int64_t capacity,
             float threshold = -std::numeric_limits<float>::infinity()) {
    capacity_ = capacity;
    entries_.clear();
    threshold_ = threshold;
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
    std::sort(entries_.begin(), entries_.end(), Better());
    *count = static_cast<int64_t>(entries_.size());
    return entries_.data();
  }

  // The same entries in no particular order. Ends the stream.
  const Entry* FinishUnsorted(int64_t* count) {
    Cut();
    *count = static_cast<int64_t>(entries_.size());
    return entries_.data();
  }

  // Every value not returned is <= this: the capacity-th best value offered
  // (the lowest kept) or the starting threshold, whichever is higher; -inf
  // until full when there was none.
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
    entries_.push_back({value, static_cast<int32_t>(index)});
    if (static_cast<int64_t>(entries_.size()) == 2 * capacity_) Cut();
  }

  // Keeps the best `capacity` entries and raises the threshold to the worst
  // of them.
  void Cut() {
    if (static_cast<int64_t>(entries_.size()) < capacity_) return;
    if (static_cast<int64_t>(entries_.size()) > capacity_) {
      std::nth_element(entries_.begin(), entries_.begin() + (capacity_ - 1),
                       entries_.end(), Better());
      entries_.resize(static_cast<size_t>(capacity_));
    }
    float lowest = entries_[0].value;
    for (const Entry& e : entries_) lowest = std::min(lowest, e.value);
    threshold_ = std::max(threshold_, lowest);
  }

  int64_t capacity_ = 0;
  float threshold_ = 0;
  std::vector<Entry> entries_;
};

// Runs `fn(begin, end)` over [0, n) on the intra-op pool, in ranges of 8
// rows handed to whichever thread is free (rows may differ in cost).
template <typename Fn>
void ParallelRows(int64_t n, const Fn& fn) {
  constexpr int64_t kRows = 8;
  std::atomic<int64_t> next{0};
  const int64_t threads =
      std::min<int64_t>(at::get_num_threads(), (n + kRows - 1) / kRows);
  at::parallel_for(0, std::max<int64_t>(threads, 1), 1, [&](int64_t, int64_t) {
    c10::InferenceMode inference;  // thread-local: each pool thread sets it
    for (int64_t r = next.fetch_add(kRows); r < n; r = next.fetch_add(kRows)) {
      fn(r, std::min(n, r + kRows));
    }
  });
}

// One thread's buffers and selection state for the tile loop: the tile's
// prepared (normalised or centred) train rows, the block's products with
// them, and a running top list per test row of the block.
struct Worker {
  at::Tensor tile;        // [tile rows, dim]
  at::Tensor products;    // [block rows * tile rows]
  std::vector<TopK> top;  // block rows
  // Scratch a variant may use while preparing a tile (projected rows and
  // per-row terms of the Euclidean search).
  at::Tensor aux;
  std::vector<float> row_terms;
};

inline std::vector<Worker> MakeWorkers(int64_t block_rows, int64_t tile_rows,
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
// [t, t + m) a thread calls prepare(w, t, m), which returns the tile's
// prepared rows x ([m, dim], written into w.tile or a view of rows prepared
// earlier), multiplies q by x^T (one single-threaded GEMM: ATen, and an
// OpenMP build of OpenBLAS such as Debian's libopenblas0-openmp, do not nest
// parallelism inside a parallel region; a pthreads OpenBLAS would
// oversubscribe the cores here) and passes each test
// row's products to scan_row(w, r, products, t, m), w.top[r] being its own
// TopK for row r. One synchronisation per block; afterwards each worker's TopK for a
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
    c10::InferenceMode inference;  // thread-local: each pool thread sets it
    Worker& w = workers[next_worker.fetch_add(1) % workers.size()];
    for (int64_t i = next_tile.fetch_add(1); i < num_tiles;
         i = next_tile.fetch_add(1)) {
      const int64_t t = i * tile_rows;
      const int64_t m = std::min(tile_rows, train_rows - t);
      const at::Tensor x = prepare(w, t, m);
      at::Tensor out = w.products.narrow(0, 0, b * m).view({b, m});
      at::mm_out(out, q, x.t());
      const float* p = out.data_ptr<float>();
      for (int64_t r = 0; r < b; ++r) scan_row(w, r, p + r * m, t, m);
    }
  });
}

// Row r's best entries over all workers, best first (the exact top list of
// the whole train set: each worker's list is exact for its tiles). `scratch`
// is the caller's, reused across rows.
inline const TopK::Entry* BestOf(std::vector<Worker>& workers, int64_t r,
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

// The Euclidean variant (knn_euclidean.cc).

using Neighbour = EuclideanNeighbour;

// Called with the first test row of a block and, for each row of the block,
// its k nearest train rows by exact distance, nearest first, ties to the
// lower train index.
using EuclideanBlockFn = std::function<void(
    int64_t first_row, const std::vector<std::vector<Neighbour>>& neighbours)>;

// The k = options.euclidean_k nearest train rows of every test row, block by
// block (inputs already validated).
absl::Status SearchEuclidean(const FeatureMatrix& train,
                             const FeatureMatrix& test,
                             const KnnOptions& options,
                             ProgressTracker& progress,
                             const EuclideanBlockFn& on_block,
                             EuclideanSearchStats* stats = nullptr);

absl::StatusOr<KnnResult> RunEuclidean(const FeatureMatrix& train,
                                       const FeatureMatrix& test,
                                       int num_classes,
                                       const KnnOptions& options,
                                       ProgressTracker& progress);

}  // namespace sslbench::compute::knn_internal
