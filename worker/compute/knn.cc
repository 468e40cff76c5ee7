#include "worker/compute/knn.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
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
// Cosine (DINO): rows are L2-normalised (x / max(||x||, 1e-12)); for each
// block of test rows the similarities to a block of train rows come from one
// float32 matmul, and a running top-max(k) per test row is merged across train
// blocks (concatenate the best so far with the block's top-k, take top-k
// again). The vote of the i-th neighbour is exp(sim_i / T) added to its class,
// exactly DINO's `(sim / T).exp()` summed per one-hot class; every k reuses the
// same sorted neighbour list.
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
  if (!options.ks.empty() && !(options.temperature > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kNN: temperature must be positive, got ", options.temperature));
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

at::Tensor Wrap(const FeatureMatrix& m) {
  // from_blob neither copies nor writes; every op below produces new tensors.
  return at::from_blob(const_cast<float*>(m.data.data()), {m.rows, m.dim},
                       at::TensorOptions().dtype(at::kFloat));
}

at::Tensor L2Normalize(const at::Tensor& x) {
  return x / x.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
}

// Keeps the `k` best of (values, indices) and a new block's candidates.
void MergeTopK(at::Tensor& best_values, at::Tensor& best_indices,
               const at::Tensor& values, const at::Tensor& indices, int64_t k,
               bool largest) {
  if (!best_values.defined()) {
    best_values = values;
    best_indices = indices;
    return;
  }
  at::Tensor all_values = at::cat({best_values, values}, 1);
  at::Tensor all_indices = at::cat({best_indices, indices}, 1);
  auto [top_values, positions] =
      all_values.topk(std::min<int64_t>(k, all_values.size(1)), 1, largest,
                      /*sorted=*/true);
  best_values = top_values;
  best_indices = all_indices.gather(1, positions);
}

std::vector<KnnResult> RunCosine(const FeatureMatrix& train,
                                 const FeatureMatrix& test, int num_classes,
                                 const KnnOptions& options) {
  const at::Tensor train_t = Wrap(train);
  const at::Tensor test_t = Wrap(test);
  const at::Tensor train_labels =
      at::from_blob(const_cast<int32_t*>(train.labels.data()), {train.rows},
                    at::TensorOptions().dtype(at::kInt))
          .to(at::kLong);
  const int64_t kmax = *std::max_element(options.ks.begin(), options.ks.end());
  std::vector<MetricsAccumulator<float>> acc(
      options.ks.size(), MetricsAccumulator<float>(num_classes));

  for (int64_t s = 0; s < test.rows; s += options.test_chunk_rows) {
    const int64_t b = std::min(options.test_chunk_rows, test.rows - s);
    const at::Tensor q = L2Normalize(test_t.narrow(0, s, b));
    at::Tensor best_sim, best_idx;
    for (int64_t t = 0; t < train.rows; t += options.train_chunk_rows) {
      const int64_t m = std::min(options.train_chunk_rows, train.rows - t);
      const at::Tensor sim =
          at::mm(q, L2Normalize(train_t.narrow(0, t, m)).t());
      auto [values, indices] = sim.topk(std::min(kmax, m), 1,
                                        /*largest=*/true, /*sorted=*/true);
      MergeTopK(best_sim, best_idx, values, indices.add_(t), kmax,
                /*largest=*/true);
    }
    const at::Tensor neighbour_labels =
        train_labels.index_select(0, best_idx.reshape({-1})).view_as(best_idx);
    for (size_t ki = 0; ki < options.ks.size(); ++ki) {
      const int64_t k = options.ks[ki];
      const at::Tensor weights =
          (best_sim.narrow(1, 0, k) / options.temperature).exp();
      const at::Tensor scores =
          at::zeros({b, num_classes}, at::TensorOptions().dtype(at::kFloat))
              .scatter_add_(1, neighbour_labels.narrow(1, 0, k).contiguous(),
                            weights.contiguous());
      const float* p = scores.data_ptr<float>();
      for (int64_t r = 0; r < b; ++r) {
        acc[ki].Add(p + r * num_classes, test.labels[s + r]);
      }
    }
  }

  std::vector<KnnResult> results;
  for (size_t ki = 0; ki < options.ks.size(); ++ki) {
    KnnResult r;
    r.variant = "cosine";
    r.k = options.ks[ki];
    r.temperature = options.temperature;
    r.metrics = acc[ki].Finish();
    results.push_back(std::move(r));
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

// Refines candidate indices to the k nearest by exact distance, ties by index.
std::vector<Neighbour> Refine(const float* query, const FeatureMatrix& train,
                              const int64_t* candidates, int64_t count,
                              int64_t k) {
  std::vector<Neighbour> n(count);
  for (int64_t j = 0; j < count; ++j) {
    n[j] = {
        ExactSqDistance(query, train.data.data() + candidates[j] * train.dim,
                        train.dim),
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

KnnResult RunEuclidean(const FeatureMatrix& train, const FeatureMatrix& test,
                       int num_classes, const KnnOptions& options) {
  const int64_t k = options.euclidean_k;
  const int64_t num_candidates =
      std::min<int64_t>(train.rows, k + std::max<int64_t>(k, 16));
  const int64_t dim = train.dim;
  const at::Tensor train_t = Wrap(train);
  const at::Tensor test_t = Wrap(test);
  const at::Tensor mean = train_t.to(at::kDouble).mean(0).to(at::kFloat);

  // Centred squared norms of the train rows, once.
  std::vector<at::Tensor> norm_blocks;
  for (int64_t t = 0; t < train.rows; t += options.train_chunk_rows) {
    const int64_t m = std::min(options.train_chunk_rows, train.rows - t);
    const at::Tensor c = train_t.narrow(0, t, m) - mean;
    norm_blocks.push_back((c * c).sum(1));
  }
  const at::Tensor train_sq = at::cat(norm_blocks);
  const double max_train_sq = train_sq.max().item<double>();
  const double eps = std::numeric_limits<float>::epsilon();
  const double tol_factor = (2.0 * static_cast<double>(dim) + 16.0) * eps;

  // Float32 squared distances of centred query rows q to train block t.
  auto block_distances = [&](const at::Tensor& q, const at::Tensor& q_sq,
                             int64_t t, int64_t m) {
    const at::Tensor c = train_t.narrow(0, t, m) - mean;
    return at::addmm(q_sq.unsqueeze(1) + train_sq.narrow(0, t, m).unsqueeze(0),
                     q, c.t(), /*beta=*/1, /*alpha=*/-2);
  };

  MetricsAccumulator<double> acc(num_classes);
  for (int64_t s = 0; s < test.rows; s += options.test_chunk_rows) {
    const int64_t b = std::min(options.test_chunk_rows, test.rows - s);
    const at::Tensor q = test_t.narrow(0, s, b) - mean;
    const at::Tensor q_sq = (q * q).sum(1);
    at::Tensor best_d, best_idx;
    for (int64_t t = 0; t < train.rows; t += options.train_chunk_rows) {
      const int64_t m = std::min(options.train_chunk_rows, train.rows - t);
      auto [values, indices] =
          block_distances(q, q_sq, t, m)
              .topk(std::min(num_candidates, m), 1, /*largest=*/false,
                    /*sorted=*/true);
      MergeTopK(best_d, best_idx, values, indices.add_(t), num_candidates,
                /*largest=*/false);
    }
    best_d = best_d.contiguous();
    best_idx = best_idx.contiguous();
    const float* cand_d = best_d.data_ptr<float>();
    const int64_t* cand_idx = best_idx.data_ptr<int64_t>();
    const float* q_sq_p = q_sq.data_ptr<float>();

    std::vector<std::vector<Neighbour>> neighbours(b);
    std::vector<double> tolerance(b);
    std::vector<char> recheck(b, 0);
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* query = test.data.data() + (s + r) * dim;
        neighbours[r] = Refine(query, train, cand_idx + r * num_candidates,
                               num_candidates, k);
        tolerance[r] = tol_factor *
                           (static_cast<double>(q_sq_p[r]) + max_train_sq) *
                           1.01 +
                       std::numeric_limits<float>::min();
        const double last_candidate = cand_d[(r + 1) * num_candidates - 1];
        recheck[r] =
            num_candidates < train.rows &&
            !(last_candidate - tolerance[r] > neighbours[r].back().sq_distance);
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
      std::vector<double> limit_values(n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = rows[g + i];
        limit_values[i] = neighbours[r].back().sq_distance + tolerance[r];
      }
      const at::Tensor limit =
          at::tensor(limit_values, at::TensorOptions().dtype(at::kDouble))
              .unsqueeze(1);
      std::vector<std::vector<int64_t>> extra(n);
      for (int64_t t = 0; t < train.rows; t += options.train_chunk_rows) {
        const int64_t m = std::min(options.train_chunk_rows, train.rows - t);
        const at::Tensor within =
            (block_distances(qg, qg_sq, t, m).to(at::kDouble) <= limit)
                .nonzero()
                .contiguous();
        const int64_t* p = within.data_ptr<int64_t>();
        for (int64_t h = 0; h < within.size(0); ++h) {
          extra[p[2 * h]].push_back(t + p[2 * h + 1]);
        }
      }
      at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t r = rows[g + i];
          const float* query = test.data.data() + (s + r) * dim;
          // The k found so far are within the limit, so `extra` holds them.
          neighbours[r] = Refine(query, train, extra[i].data(),
                                 static_cast<int64_t>(extra[i].size()), k);
        }
      });
    }

    std::vector<double> scores(num_classes);
    for (int64_t r = 0; r < b; ++r) {
      std::fill(scores.begin(), scores.end(), 0.0);
      Vote(neighbours[r], train, scores.data());
      acc.Add(scores.data(), test.labels[s + r]);
    }
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
                                              const KnnOptions& options) {
  if (absl::Status s = Validate(train, test, num_classes, options); !s.ok()) {
    return s;
  }
  try {
    c10::InferenceMode inference;
    std::vector<KnnResult> results;
    if (!options.ks.empty()) {
      results = RunCosine(train, test, num_classes, options);
    }
    if (options.euclidean_k > 0) {
      results.push_back(RunEuclidean(train, test, num_classes, options));
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
