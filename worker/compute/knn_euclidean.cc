// The Euclidean kNN variant: scikit-learn's KNeighborsClassifier(
// weights="distance", algorithm="brute"), reproduced exactly: the k nearest
// are those of a float64 brute-force search (squared distances summed in
// index order, ties to the lower train index). scikit-learn forms its float64
// distances as |x|^2 + |y|^2 - 2 x.y, which could order two neighbours whose
// distances agree to 1e-15 differently; on Fashion-MNIST it does not.
//
// scikit-learn ranks by distances computed in float64 and votes 1/d, giving
// a row that has zero-distance neighbours weight 1 for those and 0 for the
// rest; the prediction is the argmax of the summed weights, ties to the
// lowest class. Its accuracy must be matched exactly, and a float32 GEMM
// alone cannot do that: ||x||^2 + ||y||^2 - 2 x.y in float32 reorders near
// neighbours. Every search below therefore ends the same way (Finish): the
// squared distances of a candidate set that provably holds the k nearest are
// recomputed in float64 from the original rows, sorted ascending (ties to the
// lower train index) and the first k kept. Two searches produce the
// candidates.
//
// Projected search (the default for dim >= 256 and 4096+ train rows). Almost
// all of the variance of image features lies in a few directions, so most
// train rows can be ruled out from a product of much lower dimension. With Q
// an orthonormal basis [dim, p] of the top principal subspace of the centred
// train rows (a randomised range finder on a strided sample: the bound holds
// for any orthonormal Q, its quality only decides how much it prunes),
// a = x - mu, b = y - mu and rho_a = |a - Q Q^T a| the norm of the part
// outside the subspace,
//     |x - y|^2 = |Q^T (a - b)|^2 + |(I - Q Q^T)(a - b)|^2
//              >= |Q^T a - Q^T b|^2 + (rho_a - rho_b)^2 = |z_a - z_b|^2  (1)
// by Pythagoras and the reverse triangle inequality, with z_a = [Q^T a,
// rho_a] in p + 1 coordinates. So one float32 GEMM of the projected rows
// ([b, p + 1] x [p + 1, train rows]; p + 1 = 192 for dim 2048, 128 for 784:
// a tenth or a sixth of the full product) gives, in the same form as a
// Euclidean distance, the bound (1) for every pair, lowered by a margin that
// covers every rounding error on the way (below). Each test row lists the
// train rows of smallest bound (about kListed of them: a threshold estimated
// from a sample of the train rows rejects the others with one comparison),
// visits them in ascending bound and computes their exact distances (a
// float32 sum of squared differences, within a relative (dim + 4) eps since
// all its terms are non-negative), until the next bound exceeds an upper
// bound of the k-th smallest distance found: no row left, listed or not, can
// then be among the k nearest. A row whose k nearest are not settled by its
// list (the bound separates too few rows) is searched again with the bound
// over all train rows, or by the direct search. Where the bound prunes badly
// (features with no dominant directions), the search notices it on the first
// block of test rows and hands the rest to the direct search.
//
// The projections and their terms are kept for the whole train set when they
// fit in train_chunk_rows x dim floats (one raw train chunk), and recomputed
// tile by tile for every block of test rows otherwise.
//
// The margin. With u = 2^-24 and gamma_n = n u / (1 - n u): the float32
// projection z~ = (x - mu) Q~ (Q~: Q rounded to float32) is within e_z |a|
// of Q^T a, e_z = (gamma_{dim+2} + u) sqrt(p) (1 + 4u) + u (the float32
// centring, the rounding of Q and a length-dim dot product per coordinate);
// the residual norm, computed as |(x - mu) - z~ Q~^T| with no cancellation,
// is within e_r |a| of rho_a, e_r = 1.05 (e_z + (gamma_{p+2} + u)
// (1 + 1.01 sqrt(p)) + 2 gamma_dim + 4u). The float32 GEMM form of
// |z~_a - z~_b|^2 errs by at most g (|a|^2 + |b|^2), g = 1.1 (2 (p + 1) + 8) u.
// Since (s - e)_+^2 >= (1 - eta) s^2 - e^2 / eta for any eta in (0, 1),
//     |x - y|^2 >= (1 - eta) dz
//                  - ((1 - eta) g + 2 (e_z^2 + e_r^2) / eta) (|a|^2 + |b|^2)
// with dz the computed |z~_a - z~_b|^2; the coefficient is raised by 25%
// and 32u to cover the float32 evaluation of this expression itself.
// eta = 1/64: the bound gives up 1.6% of its value, and the absolute term is
// 1.6e-4 (|a|^2 + |b|^2) for dim 784 (p = 127), 1.3e-3 for dim 2048
// (p = 191). These are worst-case bounds; actual errors are far smaller.
//
// Direct search (small dims, or where the projection does not pay):
//  1. candidates: float32 GEMM distances on mean-centred rows (centring keeps
//     the norms, and so the cancellation error, small), keeping the
//     k + max(k, 16) smallest per test row;
//  2. refinement in float64 as above.
// Stage 1 can miss a true neighbour only if the float32 error exceeds the gap
// between the last candidate and the k-th refined distance. The worst-case
// error of a float32 dot product of length D is about D * eps * |x| |y|, so
// with tol = (2 D + 16) * eps * (|x|^2 + max |y|^2) every row whose last
// candidate lies more than tol beyond its k-th exact distance is provably
// exact. The rare rows that are not are searched again: every train row whose
// float32 distance is within tol of the k-th exact distance becomes a
// candidate, and the refinement is repeated on that set.

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/compute/knn_device.h"
#include "worker/compute/knn_internal.h"
#include "worker/compute/knn_kernels.h"

namespace sslbench::compute::knn_internal {
namespace {

constexpr double kUnit = 0x1p-24;  // float32 unit roundoff

using Neighbours = std::vector<std::vector<Neighbour>>;

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

// The train mean, summed in float64 chunk by chunk and rounded to float32:
// both searches measure rows from it.
at::Tensor TrainMean(const at::Tensor& train_t, int64_t chunk_rows) {
  const int64_t rows = train_t.size(0);
  at::Tensor sum =
      at::zeros({train_t.size(1)}, at::TensorOptions().dtype(at::kDouble));
  for (int64_t t = 0; t < rows; t += chunk_rows) {
    const int64_t m = std::min(chunk_rows, rows - t);
    sum += train_t.narrow(0, t, m).to(at::kDouble).sum(0);
  }
  return (sum / static_cast<double>(rows)).to(at::kFloat);
}

// The direct search: float32 candidates from the full-dimension product,
// float64 refinement (see the top of the file).
class DirectSearch {
 public:
  // Searches for at most `max_rows` test rows at a time.
  DirectSearch(const FeatureMatrix& train, const at::Tensor& mean,
               const KnnOptions& options, int64_t max_rows)
      : train_(train),
        train_t_(Wrap(train)),
        mean_(mean),
        k_(options.euclidean_k),
        num_candidates_(std::min<int64_t>(
            train.rows, options.euclidean_k +
                            std::max<int64_t>(options.euclidean_k, 16))),
        tile_(std::min(TileRows(options, train.dim), train.rows)),
        block_rows_(std::min(options.test_chunk_rows, max_rows)) {
    workers_ = MakeWorkers(block_rows_, tile_, train.dim);
    // Centred squared norms of the train rows, once.
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
    train_sq_ = at::empty({train.rows}, f32);
    for (int64_t t = 0; t < train.rows; t += tile_) {
      const int64_t m = std::min(tile_, train.rows - t);
      at::Tensor c = workers_[0].tile.narrow(0, 0, m);
      at::sub_out(c, train_t_.narrow(0, t, m), mean_);
      at::Tensor out = train_sq_.narrow(0, t, m);
      at::sum_out(out, c * c, at::IntArrayRef{1});
    }
    max_train_sq_ = train_sq_.max().item<double>();
    cand_idx_.resize(static_cast<size_t>(block_rows_ * num_candidates_));
  }

  int64_t block_rows() const { return block_rows_; }

  // The k nearest train rows of each test row in `rows` (at most
  // block_rows()), into out[i] for rows[i].
  void Search(const FeatureMatrix& test, const std::vector<int64_t>& rows,
              Neighbours& out) {
    const int64_t b = static_cast<int64_t>(rows.size());
    const int64_t dim = train_.dim;
    const float* train_sq_p = train_sq_.data_ptr<float>();
    const at::Tensor index =
        at::from_blob(const_cast<int64_t*>(rows.data()), {b},
                      at::TensorOptions().dtype(at::kLong));
    const at::Tensor q =
        (Wrap(test).index_select(0, index) - mean_).contiguous();
    const at::Tensor q_sq = (q * q).sum(1).contiguous();
    const float* q_sq_p = q_sq.data_ptr<float>();
    for (Worker& w : workers_) {
      for (int64_t r = 0; r < b; ++r) w.top[r].Reset(num_candidates_);
    }
    // The float32 squared distance of centred query q_r to centred train row
    // c_j is (q_sq[r] + train_sq[j]) - 2 q_r . c_j; it is negated, so that
    // the nearest is the largest.
    TileLoop(
        workers_, q, train_.rows, tile_,
        [&](Worker& w, int64_t t, int64_t m) {
          at::Tensor x = w.tile.narrow(0, 0, m);
          at::sub_out(x, train_t_.narrow(0, t, m), mean_);
          return x;
        },
        [&](Worker& w, int64_t r, const float* row, int64_t t, int64_t m) {
          const float qs = q_sq_p[r];
          const float* tile_sq = train_sq_p + t;
          w.top[r].Scan(m, t, [row, qs, tile_sq](int64_t j) {
            return 2.0f * row[j] - (qs + tile_sq[j]);
          });
        });

    const double eps = std::numeric_limits<float>::epsilon();
    const double tol_factor = (2.0 * static_cast<double>(dim) + 16.0) * eps;
    std::vector<double> tolerance(b);
    std::vector<char> recheck(b, 0);
    ParallelRows(b, [&](int64_t begin, int64_t end) {
      std::vector<TopK::Entry> scratch;
      for (int64_t r = begin; r < end; ++r) {
        int64_t count = 0;
        const TopK::Entry* e = BestOf(workers_, r, scratch, &count);
        int64_t* idx = cand_idx_.data() + r * num_candidates_;
        for (int64_t i = 0; i < count; ++i) idx[i] = e[i].index;
        // The largest float32 distance among the candidates.
        const double last = -static_cast<double>(e[count - 1].value);
        const float* query = test.data.data() + rows[r] * dim;
        out[r] = Refine(query, train_, idx, count, k_);
        tolerance[r] = tol_factor *
                           (static_cast<double>(q_sq_p[r]) + max_train_sq_) *
                           1.01 +
                       std::numeric_limits<float>::min();
        recheck[r] = num_candidates_ < train_.rows &&
                     !(last - tolerance[r] > out[r].back().sq_distance);
      }
    });

    // Rows whose candidate list may have missed a neighbour: take every train
    // row within tolerance of the k-th exact distance, in small groups so the
    // candidate lists stay bounded.
    std::vector<int64_t> again;
    for (int64_t r = 0; r < b; ++r) {
      if (recheck[r]) again.push_back(r);
    }
    constexpr int64_t kRecheckGroup = 64;
    for (size_t g = 0; g < again.size(); g += kRecheckGroup) {
      const int64_t n = std::min<int64_t>(kRecheckGroup, again.size() - g);
      const at::Tensor group_rows =
          at::from_blob(again.data() + g, {n},
                        at::TensorOptions().dtype(at::kLong))
              .clone();
      const at::Tensor qg = q.index_select(0, group_rows);
      const at::Tensor qg_sq = q_sq.index_select(0, group_rows);
      std::vector<double> limit(n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = again[g + i];
        limit[i] = out[r].back().sq_distance + tolerance[r];
      }
      std::vector<std::vector<int64_t>> extra(n);
      for (int64_t t = 0; t < train_.rows; t += tile_) {
        const int64_t m = std::min(tile_, train_.rows - t);
        at::Tensor c = workers_[0].tile.narrow(0, 0, m);
        at::sub_out(c, train_t_.narrow(0, t, m), mean_);
        at::Tensor dots = workers_[0].products.narrow(0, 0, n * m).view({n, m});
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
          const int64_t r = again[g + i];
          const float* query = test.data.data() + rows[r] * dim;
          // The k found so far are within the limit, so `extra` holds them.
          out[r] = Refine(query, train_, extra[i].data(),
                          static_cast<int64_t>(extra[i].size()), k_);
        }
      });
    }
  }

 private:
  const FeatureMatrix& train_;
  const at::Tensor train_t_;
  const at::Tensor mean_;
  const int64_t k_;
  const int64_t num_candidates_;
  const int64_t tile_;
  const int64_t block_rows_;
  std::vector<Worker> workers_;
  at::Tensor train_sq_;
  double max_train_sq_ = 0;
  std::vector<int64_t> cand_idx_;
};

// The projected search (see the top of the file).
class ProjectedSearch {
 public:
  // Work of the last Search, to tell whether the projection pays.
  struct Stats {
    int64_t rows = 0;
    int64_t verified = 0;      // exact distances computed
    int64_t unsettled = 0;     // rows searched again
    int64_t sent_direct = 0;   // of which by the direct search
  };

  // Searches for at most `max_rows` test rows at a time.
  ProjectedSearch(const FeatureMatrix& train, const at::Tensor& mean,
                  const KnnOptions& options, int64_t p, int64_t max_rows)
      : train_(train),
        train_t_(Wrap(train)),
        mean32_(mean),
        dim_(train.dim),
        p_(p),
        k_(options.euclidean_k),
        capacity_(std::min<int64_t>(
            train.rows, std::max<int64_t>(2 * kListed, 4 * k_))),
        block_rows_(std::min({options.test_chunk_rows, kBlockRows, max_rows})),
        cached_(train.rows * (p + 1) <= options.train_chunk_rows * train.dim),
        // Tiles of projected rows whose products with a block take about
        // kProductBytes; no larger than a raw tile when tiles are projected
        // on the fly.
        tile_(std::min({train.rows,
                        std::clamp<int64_t>(kProductBytes / (block_rows_ * 4),
                                            256,
                                            std::max<int64_t>(
                                                256, options.train_chunk_rows)),
                        cached_ ? train.rows : TileRows(options, train.dim)})) {
    const double u = kUnit;
    const double d = static_cast<double>(dim_);
    const double pp = static_cast<double>(p_);
    dist_gamma_ = (d + 4) * u / (1 - (d + 4) * u) * 1.01;
    const auto gamma = [u](double n) { return n * u / (1 - n * u); };
    const double e_z = (gamma(d + 2) + u) * std::sqrt(pp) * (1 + 4 * u) + u;
    const double e_r = 1.05 * (e_z + (gamma(pp + 2) + u) * (1 + 1.01 * std::sqrt(pp)) +
                               2 * gamma(d) + 4 * u);
    const double g = 1.1 * (2 * (pp + 1) + 8) * u;
    shrink_ = 1.0 - kEta;
    margin_ = 1.25 * (shrink_ * g + 2 * (e_z * e_z + e_r * e_r) / kEta + 32 * u);
    // Relative bounds fail where float32 values are subnormal: an absolute
    // slack far above any error made there (each operation errs by at most
    // 2^-150 in that range; FLT_MIN is 2^-126).
    const double tiny = std::numeric_limits<float>::min();
    dist_slack_ = (2 * d + 16) * tiny;
    bound_slack_ = (d + 2 * pp + 32) * tiny;

    ComputeBasis();
    ProjectTrain();
    ProjectSample();
    workers_ = MakeWorkers(block_rows_, tile_, cached_ ? 1 : dim_);
    if (!cached_) {
      for (Worker& w : workers_) {
        w.aux = at::empty({tile_, p_ + 1}, at::TensorOptions().dtype(at::kFloat));
        w.row_terms.resize(static_cast<size_t>(tile_));
      }
    }
  }

  int64_t block_rows() const { return block_rows_; }
  const Stats& stats() const { return stats_; }

  // Whether the last Search cost clearly less than the direct search would
  // have: a verified distance reads a whole train row from memory, about as
  // slow as 16 GEMM products of that row.
  bool Pays() const {
    if (stats_.rows == 0) return true;
    const double n = static_cast<double>(train_.rows);
    const double rows = static_cast<double>(stats_.rows);
    const double projected =
        n * p_ * (1.0 + static_cast<double>(stats_.unsettled) / rows) +
        16.0 * static_cast<double>(dim_) *
            static_cast<double>(stats_.verified) / rows +
        n * dim_ * static_cast<double>(stats_.sent_direct) / rows;
    return projected < 0.6 * n * dim_;
  }

  // The k nearest train rows of test rows [s, s + b), b <= block_rows(),
  // into out[0, b). `direct` takes the rows whose bound prunes too little.
  void Search(const FeatureMatrix& test, int64_t s, int64_t b,
              const std::function<DirectSearch*()>& direct, Neighbours& out) {
    stats_ = Stats{};
    stats_.rows = b;
    const Projected q = Project(Wrap(test).narrow(0, s, b));
    const float* q_terms = q.terms.data();
    const std::vector<float> start = StartThresholds(q);
    for (Worker& w : workers_) {
      for (int64_t r = 0; r < b; ++r) w.top[r].Reset(capacity_, start[r]);
    }
    const float two_shrink = static_cast<float>(2 * shrink_);
    // value = -(lower bound of the squared distance): the nearest is largest.
    TileLoop(
        workers_, q.z, train_.rows, tile_,
        [&](Worker& w, int64_t t, int64_t m) { return PrepareTile(w, t, m); },
        [&](Worker& w, int64_t r, const float* row, int64_t t, int64_t m) {
          const float qt = q_terms[r];
          const float* terms = TileTerms(w, t);
          w.top[r].Scan(m, t, [=](int64_t j) {
            return two_shrink * row[j] - (qt + terms[j]);
          });
        });

    // Each row: verify its listed rows in ascending bound until settled.
    std::vector<double> upper(b, 0);
    std::vector<char> settled(b, 0);
    std::vector<int64_t> verified(b, 0);
    ParallelRows(b, [&](int64_t begin, int64_t end) {
      std::vector<TopK::Entry> list;
      for (int64_t r = begin; r < end; ++r) {
        list.clear();
        // Every row not listed by a worker is at or below its threshold.
        float rest = -std::numeric_limits<float>::infinity();
        for (Worker& w : workers_) {
          int64_t count = 0;
          const TopK::Entry* e = w.top[r].FinishUnsorted(&count);
          list.insert(list.end(), e, e + count);
          rest = std::max(rest, w.top[r].threshold());
        }
        const float* query = test.data.data() + (s + r) * dim_;
        const Verification v =
            Verify(query, list, -static_cast<double>(rest), &out[r]);
        settled[r] = v.settled;
        upper[r] = v.upper;
        verified[r] = v.verified;
      }
    });
    for (int64_t r = 0; r < b; ++r) stats_.verified += verified[r];

    std::vector<int64_t> again;
    for (int64_t r = 0; r < b; ++r) {
      if (!settled[r]) again.push_back(r);
    }
    stats_.unsettled = static_cast<int64_t>(again.size());
    if (again.empty()) return;
    // The second pass needs the kept projections (re-projecting the train set
    // per group costs more than the full product), a finite upper bound (a
    // row that listed fewer than k rows has none) and few such rows.
    std::vector<int64_t> to_direct;
    if (!cached_ || 4 * static_cast<int64_t>(again.size()) > b) {
      to_direct = std::move(again);
      again.clear();
    } else {
      std::vector<int64_t> finite;
      for (int64_t r : again) {
        (std::isfinite(upper[r]) ? finite : to_direct).push_back(r);
      }
      again = std::move(finite);
    }
    if (!again.empty()) Recheck(test, s, q, again, upper, out, &to_direct);
    if (!to_direct.empty()) SendToDirect(test, s, to_direct, direct, out);
  }

  // Rows of the block that the full-product search takes.
  void SendToDirect(const FeatureMatrix& test, int64_t s,
                    const std::vector<int64_t>& block_rows,
                    const std::function<DirectSearch*()>& direct,
                    Neighbours& out) {
    stats_.sent_direct += static_cast<int64_t>(block_rows.size());
    DirectSearch* d = direct();
    std::vector<int64_t> rows;
    Neighbours found;
    for (size_t g = 0; g < block_rows.size(); g += d->block_rows()) {
      const size_t n = std::min<size_t>(d->block_rows(), block_rows.size() - g);
      rows.clear();
      for (size_t i = 0; i < n; ++i) rows.push_back(s + block_rows[g + i]);
      found.assign(n, {});
      d->Search(test, rows, found);
      for (size_t i = 0; i < n; ++i) out[block_rows[g + i]] = std::move(found[i]);
    }
  }

 private:
  // Rows listed per test row (about), and the sample that sets the starting
  // threshold for that.
  static constexpr int64_t kListed = 1024;
  static constexpr int64_t kSampleRows = 2048;
  static constexpr int64_t kBlockRows = 512;
  static constexpr int64_t kProductBytes = int64_t{2} << 20;
  static constexpr int64_t kBasisSampleRows = 8192;
  static constexpr int kPowerIterations = 2;
  static constexpr double kEta = 1.0 / 64;

  struct Candidate {
    float sq_distance;  // float32, relative error <= dist_gamma_
    int64_t index;
  };

  // Projected rows of a block: [z~, rho] [rows, p + 1] and each row's term
  // (1 - eta) (|z~|^2 + rho^2) - margin |a|^2.
  struct Projected {
    at::Tensor z;
    std::vector<float> terms;
  };

  struct Verification {
    bool settled = false;  // out holds the k nearest
    double upper = 0;      // else an upper bound of the k-th distance
    int64_t verified = 0;  // distances computed
  };

  // Visits `list` (values = -bound, rows not in it have bounds >= rest) in
  // ascending bound, computing each row's float32 distance, until the next
  // bound exceeds an upper bound of the k-th smallest exact distance found:
  // then no row left, listed or not, can be among the k nearest, and those
  // are found by Finish. `list` is reordered.
  Verification Verify(const float* query, std::vector<TopK::Entry>& list,
                      double rest, std::vector<Neighbour>* out) const {
    Verification v;
    // A heap of the list, nearest bound on top: only the visited part is
    // ever ordered.
    const auto farther = [](const TopK::Entry& a, const TopK::Entry& b) {
      return a.value < b.value || (a.value == b.value && a.index > b.index);
    };
    std::make_heap(list.begin(), list.end(), farther);
    std::vector<Candidate> found;
    std::vector<float> nearest;  // max-heap of the k smallest distances
    double bound = std::numeric_limits<double>::infinity();
    auto end = list.end();
    // Rows are taken a few at a time and their memory requested before any
    // is read, so that the reads overlap (each is a random train row).
    constexpr int kBatch = 8;
    int64_t batch[kBatch];
    for (;;) {
      int n = 0;
      while (n < kBatch && end != list.begin() &&
             !(-static_cast<double>(list.front().value) > bound)) {
        batch[n++] = list.front().index;
        std::pop_heap(list.begin(), end, farther);
        --end;
      }
      if (n == 0) break;
      for (int i = 0; i < n; ++i) {
        const char* row =
            reinterpret_cast<const char*>(train_.data.data() + batch[i] * dim_);
        for (int64_t off = 0; off < dim_ * 4; off += 64) {
          __builtin_prefetch(row + off);
        }
      }
      for (int i = 0; i < n; ++i) {
        const float d2 = SquaredDistanceF32(
            query, train_.data.data() + batch[i] * dim_, dim_);
        found.push_back({d2, batch[i]});
        if (static_cast<int64_t>(nearest.size()) < k_) {
          nearest.push_back(d2);
          std::push_heap(nearest.begin(), nearest.end());
        } else if (d2 < nearest.front()) {
          std::pop_heap(nearest.begin(), nearest.end());
          nearest.back() = d2;
          std::push_heap(nearest.begin(), nearest.end());
        }
        if (static_cast<int64_t>(nearest.size()) == k_) {
          // The k-th smallest exact distance among those found is at most
          // this (relative float32 error below dist_gamma_).
          bound = static_cast<double>(nearest.front()) * (1 + 2 * dist_gamma_) +
                  dist_slack_;
        }
      }
    }
    v.verified = static_cast<int64_t>(found.size());
    // Listed rows left have bounds above `bound` (when stopped), the others
    // at least `rest`.
    v.settled = static_cast<int64_t>(nearest.size()) == k_ && rest > bound;
    if (!v.settled) {
      v.upper = bound;
      return v;
    }
    *out = Finish(query, found);
    return v;
  }

  // The k nearest among `found`, which holds them: the rows whose float32
  // distance may lie within the k-th exact distance, refined in float64.
  std::vector<Neighbour> Finish(const float* query,
                                std::vector<Candidate>& found) const {
    const int64_t n = static_cast<int64_t>(found.size());
    const int64_t kth = std::min(k_, n) - 1;
    std::nth_element(found.begin(), found.begin() + kth, found.end(),
                     [](const Candidate& a, const Candidate& b) {
                       return a.sq_distance < b.sq_distance;
                     });
    const double limit =
        static_cast<double>(found[kth].sq_distance) * (1 + 4 * dist_gamma_) +
        3 * dist_slack_;
    std::vector<int64_t> keep;
    for (const Candidate& c : found) {
      if (static_cast<double>(c.sq_distance) <= limit) keep.push_back(c.index);
    }
    return Refine(query, train_, keep.data(), static_cast<int64_t>(keep.size()),
                  k_);
  }

  // Per test row, a starting threshold for its top list: the value that
  // about kListed train rows exceed, estimated from a strided sample of the
  // train rows (so that the list is filled with one comparison per row).
  std::vector<float> StartThresholds(const Projected& q) const {
    const int64_t b = q.z.size(0);
    const int64_t n = sample_.size(0);
    const at::Tensor products = at::mm(q.z, sample_.t()).contiguous();
    const float* p = products.data_ptr<float>();
    const float two_shrink = static_cast<float>(2 * shrink_);
    const int64_t rank = std::clamp<int64_t>(
        kListed * n / train_.rows, 1, n) - 1;
    std::vector<float> start(b);
    ParallelRows(b, [&](int64_t begin, int64_t end) {
      std::vector<float> values(n);
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          values[j] = two_shrink * p[r * n + j] - (q.terms[r] + sample_terms_[j]);
        }
        std::nth_element(values.begin(), values.begin() + rank, values.end(),
                         std::greater<float>());
        // Rows equal to it are kept (strictly above the next lower value).
        start[r] = std::nextafter(values[rank], -std::numeric_limits<float>::infinity());
      }
    });
    return start;
  }

  // An orthonormal basis of the top principal subspace of the centred train
  // rows, from a strided sample: power iterations on a random start, then a
  // float64 QR (orthonormal to float64 precision whatever the data).
  void ComputeBasis() {
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
    const int64_t samples = std::min(train_.rows, kBasisSampleRows);
    const int64_t stride = train_.rows / samples;
    const at::Tensor index =
        at::arange(samples, at::TensorOptions().dtype(at::kLong)) * stride;
    std::vector<float> start(static_cast<size_t>(dim_ * p_));
    std::mt19937_64 rng(0x6b6e6e);
    for (float& v : start) {
      v = static_cast<float>(static_cast<double>(rng() >> 11) * 0x1p-53 - 0.5);
    }
    at::Tensor y = at::from_blob(start.data(), {dim_, p_}, f32).clone();
    const int64_t rows = std::max<int64_t>(64, kPassBytes / (dim_ * 4));
    for (int it = 0; it < kPowerIterations; ++it) {
      const at::Tensor basis = std::get<0>(at::linalg_qr(y));
      at::Tensor acc = at::zeros({dim_, p_}, f32);
      for (int64_t t = 0; t < samples; t += rows) {
        const int64_t m = std::min(rows, samples - t);
        const at::Tensor a =
            train_t_.index_select(0, index.narrow(0, t, m)) - mean32_;
        acc.addmm_(a.t(), a.mm(basis));
      }
      y = acc;
    }
    // [Q, 0]: the extra zero column leaves room for rho in the products.
    basis32_ = at::zeros({dim_, p_ + 1}, f32);
    basis32_.narrow(1, 0, p_).copy_(
        std::get<0>(at::linalg_qr(y.to(at::kDouble))).to(at::kFloat));
  }

  // Projects rows x [m, dim] in float32: writes [z~, rho] into out
  // [m, p + 1] and each row's term into terms; `centred` [m, dim] is scratch.
  // z~ = (x - mu) Q~ and rho = |(x - mu) - z~ Q~^T|: no cancellation, so the
  // error of rho, like that of z~, is a small multiple of eps |a|.
  void ProjectRows(const at::Tensor& x, at::Tensor centred, at::Tensor out,
                   float* terms) const {
    const int64_t m = x.size(0);
    at::sub_out(centred, x, mean32_);
    const float* c = centred.data_ptr<float>();
    std::vector<float> a_sq(static_cast<size_t>(m));
    for (int64_t j = 0; j < m; ++j) a_sq[j] = SquaredNorm(c + j * dim_, dim_);
    // The basis has a zero last column, so out's last column is 0 here.
    at::mm_out(out, centred, basis32_);
    centred.addmm_(out, basis32_.t(), /*beta=*/1, /*alpha=*/-1);
    float* z = out.data_ptr<float>();
    const int64_t cols = p_ + 1;
    for (int64_t j = 0; j < m; ++j) {
      const float rho = std::sqrt(SquaredNorm(c + j * dim_, dim_));
      z[j * cols + p_] = rho;
      terms[j] = static_cast<float>(shrink_ * SquaredNorm(z + j * cols, cols) -
                                    margin_ * a_sq[j] - 0.5 * bound_slack_);
    }
  }

  static float SquaredNorm(const float* x, int64_t n) {
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
    return sum;
  }

  Projected Project(const at::Tensor& x) const {
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
    Projected out;
    out.z = at::empty({x.size(0), p_ + 1}, f32);
    out.terms.resize(static_cast<size_t>(x.size(0)));
    ProjectRows(x, at::empty({x.size(0), dim_}, f32), out.z, out.terms.data());
    return out;
  }

  // The projections of all train rows, when the cache fits the budget.
  void ProjectTrain() {
    if (!cached_) return;
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
    const int64_t rows = std::max<int64_t>(64, kPassBytes / (dim_ * 4));
    cache_ = at::empty({train_.rows, p_ + 1}, f32);
    terms_.resize(static_cast<size_t>(train_.rows));
    const at::Tensor centred = at::empty({std::min(rows, train_.rows), dim_}, f32);
    for (int64_t t = 0; t < train_.rows; t += rows) {
      const int64_t m = std::min(rows, train_.rows - t);
      ProjectRows(train_t_.narrow(0, t, m), centred.narrow(0, 0, m),
                  cache_.narrow(0, t, m), terms_.data() + t);
    }
  }

  // A strided sample of the projected train rows, for StartThresholds.
  void ProjectSample() {
    const int64_t n = std::min(train_.rows, kSampleRows);
    const at::Tensor index =
        at::arange(n, at::TensorOptions().dtype(at::kLong)) * (train_.rows / n);
    sample_terms_.resize(static_cast<size_t>(n));
    if (cached_) {
      sample_ = cache_.index_select(0, index);
      for (int64_t j = 0; j < n; ++j) {
        sample_terms_[j] = terms_[index.data_ptr<int64_t>()[j]];
      }
      return;
    }
    const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
    sample_ = at::empty({n, p_ + 1}, f32);
    ProjectRows(train_t_.index_select(0, index), at::empty({n, dim_}, f32),
                sample_, sample_terms_.data());
  }

  // The projected rows of train tile [t, t + m): a view of the cache, or
  // projected now into the worker's buffers (with their terms).
  at::Tensor PrepareTile(Worker& w, int64_t t, int64_t m) const {
    if (cached_) return cache_.narrow(0, t, m);
    at::Tensor z = w.aux.narrow(0, 0, m);
    ProjectRows(train_t_.narrow(0, t, m), w.tile.narrow(0, 0, m), z,
                w.row_terms.data());
    return z;
  }

  const float* TileTerms(const Worker& w, int64_t t) const {
    return cached_ ? terms_.data() + t : w.row_terms.data();
  }

  // Rows whose bound left more candidates than their list held: every train
  // row whose bound is within the row's upper bound is listed and verified
  // (cached projections only).
  // Rows whose list would exceed kMaxRecheckList, or (which the bounds rule
  // out) that do not settle, are added to `to_direct`.
  void Recheck(const FeatureMatrix& test, int64_t s, const Projected& q,
               const std::vector<int64_t>& again,
               const std::vector<double>& upper, Neighbours& out,
               std::vector<int64_t>* to_direct) {
    constexpr int64_t kGroup = 64;
    const float two_shrink = static_cast<float>(2 * shrink_);
    for (size_t g = 0; g < again.size(); g += kGroup) {
      const int64_t n = std::min<int64_t>(kGroup, again.size() - g);
      const at::Tensor group = at::from_blob(const_cast<int64_t*>(again.data()) + g,
                                             {n}, at::TensorOptions().dtype(at::kLong));
      const at::Tensor qg = q.z.index_select(0, group);
      std::vector<std::vector<TopK::Entry>> lists(n);
      for (int64_t t = 0; t < train_.rows; t += tile_) {
        const int64_t m = std::min(tile_, train_.rows - t);
        at::Tensor dots = workers_[0].products.narrow(0, 0, n * m).view({n, m});
        at::mm_out(dots, qg, cache_.narrow(0, t, m).t());
        const float* p = dots.data_ptr<float>();
        ParallelRows(n, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const float qt = q.terms[again[g + i]];
            const double limit = -upper[again[g + i]];
            if (static_cast<int64_t>(lists[i].size()) > kMaxRecheckList) {
              continue;  // too many: this row goes to the direct search
            }
            for (int64_t j = 0; j < m; ++j) {
              const float value = two_shrink * p[i * m + j] - (qt + terms_[t + j]);
              if (static_cast<double>(value) >= limit) {
                lists[i].push_back({value, static_cast<int32_t>(t + j)});
              }
            }
          }
        });
      }
      std::vector<int64_t> verified(n, 0);
      std::vector<char> settled(n, 0);
      ParallelRows(n, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          if (static_cast<int64_t>(lists[i].size()) > kMaxRecheckList) continue;
          const int64_t r = again[g + i];
          const float* query = test.data.data() + (s + r) * dim_;
          // Rows not listed have bounds above the upper bound, which is at
          // least the k-th distance among those listed: settled.
          const Verification v = Verify(
              query, lists[i],
              std::nextafter(upper[r], std::numeric_limits<double>::infinity()),
              &out[r]);
          verified[i] = v.verified;
          settled[i] = v.settled;
        }
      });
      for (int64_t i = 0; i < n; ++i) {
        stats_.verified += verified[i];
        if (!settled[i]) to_direct->push_back(again[g + i]);
      }
    }
  }

  static constexpr int64_t kPassBytes = int64_t{8} << 20;
  // A row of the second pass lists at most this many train rows (16 bytes
  // each) before it is handed to the direct search.
  static constexpr int64_t kMaxRecheckList = int64_t{1} << 16;

  const FeatureMatrix& train_;
  const at::Tensor train_t_;
  const at::Tensor mean32_;
  const int64_t dim_;
  const int64_t p_;
  const int64_t k_;
  const int64_t capacity_;
  const int64_t block_rows_;
  const bool cached_;
  const int64_t tile_;
  double dist_gamma_ = 0;
  double dist_slack_ = 0;   // absolute error of a float32 distance
  double bound_slack_ = 0;  // absolute error of a lower bound (half per row)
  double shrink_ = 1;
  double margin_ = 0;
  at::Tensor basis32_;          // [dim, p + 1]: Q~ and a zero column
  at::Tensor cache_;            // [train rows, p + 1] when cached_
  std::vector<float> terms_;    // per train row, when cached_
  at::Tensor sample_;           // [sample rows, p + 1]
  std::vector<float> sample_terms_;
  std::vector<Worker> workers_;
  Stats stats_;
};

// The projection dimension for these features, or 0 for the direct search.
int64_t ProjectionDim(const FeatureMatrix& train, const KnnOptions& options) {
  if (options.euclidean_projection_dim >= 0) {
    return options.euclidean_projection_dim;
  }
  if (train.dim < 256 || train.rows < 4096) return 0;
  // With the residual norm the product has p + 1 columns: 128 up to dim
  // 1279, then dim / 10 in steps of 64 up to 256 (192 for dim 2048), where
  // the GEMM's cost and the distances left to verify balance on image
  // features.
  if (train.dim < 512) return train.dim / 4 / 16 * 16 - 1;
  return std::clamp<int64_t>(train.dim / 10 / 64 * 64, 128, 256) - 1;
}

}  // namespace

absl::Status SearchEuclidean(const FeatureMatrix& train,
                             const FeatureMatrix& test,
                             const KnnOptions& options,
                             ProgressTracker& progress,
                             const EuclideanBlockFn& on_block,
                             EuclideanSearchStats* stats) {
  if (stats != nullptr) *stats = EuclideanSearchStats{};
  EuclideanSearchStats counts;
  if (UseDeviceSearch(options)) {
    absl::StatusOr<std::unique_ptr<DeviceSearch>> search = DeviceSearch::Create(
        train, options, Metric::kEuclidean, options.euclidean_k);
    if (!search.ok()) return search.status();
    const int64_t k = options.euclidean_k;
    Neighbours neighbours;
    for (int64_t s = 0; s < test.rows;) {
      const int64_t b = std::min((*search)->block_rows(), test.rows - s);
      at::Tensor values, indices;
      (*search)->Search(test, s, b, &values, &indices);
      const double* v = values.data_ptr<double>();
      const int64_t* i = indices.data_ptr<int64_t>();
      neighbours.assign(b, std::vector<Neighbour>(k));
      for (int64_t r = 0; r < b; ++r) {
        for (int64_t j = 0; j < k; ++j) {
          neighbours[r][j] = {v[r * k + j], i[r * k + j]};
        }
      }
      on_block(s, neighbours);
      s += b;
      if (!progress.Advance(b)) return progress.Cancelled();
    }
    counts.direct_rows = test.rows;
    counts.exhaustive_rows = (*search)->fallback_rows();
    if (stats != nullptr) *stats = counts;
    return absl::OkStatus();
  }
  const at::Tensor mean = TrainMean(
      Wrap(train), std::min(TileRows(options, train.dim), train.rows));
  std::unique_ptr<DirectSearch> direct;
  const auto get_direct = [&]() {
    if (!direct) {
      direct = std::make_unique<DirectSearch>(train, mean, options, test.rows);
    }
    return direct.get();
  };
  std::unique_ptr<ProjectedSearch> projected;
  if (const int64_t p = ProjectionDim(train, options); p > 0) {
    projected =
        std::make_unique<ProjectedSearch>(train, mean, options, p, test.rows);
    counts.projection_dim = p;
  }

  Neighbours neighbours;
  std::vector<int64_t> rows;
  for (int64_t s = 0; s < test.rows;) {
    int64_t b = 0;
    if (projected) {
      b = std::min(projected->block_rows(), test.rows - s);
      neighbours.assign(b, {});
      projected->Search(test, s, b, get_direct, neighbours);
      const ProjectedSearch::Stats& last = projected->stats();
      counts.projected_rows += b - last.sent_direct;
      counts.direct_rows += last.sent_direct;
      counts.rechecked_rows += last.unsettled - last.sent_direct;
      counts.verified += last.verified;
      // Where the bound prunes too little, the rest goes to the direct search.
      if (!projected->Pays()) projected.reset();
    } else {
      DirectSearch* d = get_direct();
      b = std::min(d->block_rows(), test.rows - s);
      rows.resize(b);
      for (int64_t i = 0; i < b; ++i) rows[i] = s + i;
      neighbours.assign(b, {});
      d->Search(test, rows, neighbours);
      counts.direct_rows += b;
    }
    on_block(s, neighbours);
    s += b;
    if (!progress.Advance(b)) return progress.Cancelled();
  }
  if (stats != nullptr) *stats = counts;
  return absl::OkStatus();
}

absl::StatusOr<KnnResult> RunEuclidean(const FeatureMatrix& train,
                                       const FeatureMatrix& test,
                                       int num_classes,
                                       const KnnOptions& options,
                                       ProgressTracker& progress) {
  MetricsAccumulator<double> acc(num_classes);
  std::vector<double> scores(num_classes);
  EuclideanSearchStats stats;
  const absl::Status status = SearchEuclidean(
      train, test, options, progress,
      [&](int64_t first, const Neighbours& neighbours) {
        for (size_t r = 0; r < neighbours.size(); ++r) {
          std::fill(scores.begin(), scores.end(), 0.0);
          Vote(neighbours[r], train, scores.data());
          acc.Add(scores.data(), test.labels[first + r]);
        }
      },
      &stats);
  if (!status.ok()) return status;
  KnnResult result;
  result.exhaustive_rows = stats.exhaustive_rows;
  result.variant = "euclidean";
  result.k = options.euclidean_k;
  result.metrics = acc.Finish();
  return result;
}

}  // namespace sslbench::compute::knn_internal
