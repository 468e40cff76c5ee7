#include "worker/compute/knn_device.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/compute/device.h"
#include "worker/compute/device_internal.h"

// The candidate search: what a GPU does well is a large matrix product in low
// precision, and what it does badly is select the k best of 1.28 million
// columns (torch.topk over the full row is most of the time of DINO's loop).
// So, for each block of test rows:
//
// 1. Scores against tiles of train rows come from one matrix product in the
//    candidate precision (float16 on CUDA for the cosine variant: tensor
//    cores; float32 otherwise): cosine q.x of L2-normalised rows, Euclidean
//    2 q.x - |x|^2 (= |q|^2 - |q - x|^2, larger is nearer).
// 2. The best C = k + max(64, k / 2) scores of each row and tile are found
//    without sorting the tile: the maxima of groups of 32 consecutive
//    columns (one pass over the scores), the C best groups by their maximum
//    (a top-C over 32 times fewer values), then the C best of those groups'
//    32 C scores. The C best groups hold the C best scores: a group left out
//    has a maximum no larger than the smallest maximum kept, and the C groups
//    kept hold at least C scores that large. Tiles merge by a top-C of the
//    2 C values.
// 3. Every candidate score is within eps of the exact one (a bound on the
//    rounding of the inputs to the candidate precision, of the float32
//    accumulation over dim terms and of the output; see ErrorUnit). If s_k is
//    the k-th best candidate score and t the k-th best exact score, at least
//    k scores are >= t - eps, so s_k >= t - eps, and at most k - 1 exceed
//    t + eps, so s_k <= t + eps: every row of the exact top k scores at least
//    t - eps >= s_k - 2 eps. When the C-th candidate score is below
//    s_k - 2 eps the list holds all of them; otherwise (many near-equal
//    scores) the row is searched exhaustively instead.
// 4. The candidates are scored exactly, in float64 from the float32 rows:
//    cosine similarities rounded to float32 (the CPU search's values),
//    Euclidean squared distances as sums of squared differences; sorted
//    (cosine descending, Euclidean ascending; ties to the lower train index
//    by a stable sort of the index-ordered list) and the first k kept. The
//    neighbours are therefore those of an exhaustive search in that
//    arithmetic, on any device: the same lists as the CPU search's, which
//    orders float32 similarities and float64 distances the same way.

namespace sslbench::compute::knn_internal {
namespace {

constexpr int64_t kGroup = 32;
constexpr double kUnit32 = 0x1p-24;  // float32 unit roundoff
constexpr int64_t kExactBytes = int64_t{256} << 20;

double UnitOf(at::ScalarType type) {
  if (type == at::kBFloat16) return 0x1p-8;
  if (type == at::kHalf) return 0x1p-11;
  return kUnit32;
}

// TF32 would round float32 inputs to 10 mantissa bits behind the error
// bound's back: off for the search, restored after.
class NoTf32 {
 public:
  NoTf32() : was_(at::globalContext().allowTF32CuBLAS()) {
    if (was_) at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~NoTf32() {
    if (was_) at::globalContext().setAllowTF32CuBLAS(true);
  }

 private:
  bool was_;
};

// The best `c` scores of each row of `scores` ([b, m], any floating type) as
// float32 values and int64 columns, in no particular order.
void TopOfTile(const at::Tensor& scores, int64_t c, at::Tensor* values,
               at::Tensor* columns) {
  const int64_t b = scores.size(0);
  const int64_t m = scores.size(1);
  c = std::min(c, m);
  const int64_t grouped = m / kGroup * kGroup;
  if (grouped < 4 * kGroup * c) {
    auto top = at::topk(scores, c, 1, /*largest=*/true, /*sorted=*/false);
    *values = std::get<0>(top).to(at::kFloat);
    *columns = std::get<1>(top);
    return;
  }
  const int64_t groups = grouped / kGroup;
  const at::Tensor maxima =
      scores.narrow(1, 0, grouped).reshape({b, groups, kGroup}).amax(2);
  const at::Tensor best_groups =
      std::get<1>(at::topk(maxima, c, 1, /*largest=*/true, /*sorted=*/false));
  at::Tensor cols =
      (best_groups.unsqueeze(2) * kGroup +
       at::arange(kGroup, best_groups.options()).view({1, 1, kGroup}))
          .view({b, c * kGroup});
  if (grouped < m) {
    // The last columns outside whole groups are candidates as they are.
    cols = at::cat({cols, at::arange(grouped, m, cols.options())
                              .unsqueeze(0)
                              .expand({b, m - grouped})},
                   1);
  }
  const at::Tensor gathered = scores.gather(1, cols);
  auto top = at::topk(gathered, c, 1, /*largest=*/true, /*sorted=*/false);
  *values = std::get<0>(top).to(at::kFloat);
  *columns = cols.gather(1, std::get<1>(top));
}

}  // namespace

bool UseDeviceSearch(const KnnOptions& options) {
  if (options.search == "candidates") return true;
  if (options.search == "tiles") return false;
  return IsCudaDevice(options.device);
}

absl::StatusOr<std::unique_ptr<DeviceSearch>> DeviceSearch::Create(
    const FeatureMatrix& train, const KnnOptions& options, Metric metric,
    int64_t k) {
  absl::StatusOr<c10::Device> device =
      device_internal::TorchDevice(options.device);
  if (!device.ok()) return device.status();
  std::unique_ptr<DeviceSearch> s(new DeviceSearch());
  s->metric_ = metric;
  s->device_ = *device;
  s->rows_ = train.rows;
  s->dim_ = train.dim;
  s->k_ = k;
  s->capacity_ = std::min(train.rows, k + std::max<int64_t>(64, k / 2));

  const std::string& precision = options.candidate_precision;
  if (metric == Metric::kEuclidean || precision == "fp32" ||
      ((precision.empty() || precision == "auto") && !device->is_cuda())) {
    s->approx_type_ = at::kFloat;
  } else if (precision == "bf16") {
    s->approx_type_ = at::kBFloat16;
  } else if (precision == "fp16" || precision.empty() || precision == "auto") {
    s->approx_type_ = at::kHalf;
  } else {
    return absl::InvalidArgumentError(
        "kNN: candidate_precision must be auto, fp32, bf16 or fp16, got '" +
        precision + "'");
  }

  const at::Tensor host =
      at::from_blob(const_cast<float*>(train.data.data()),
                    {train.rows, train.dim}, at::TensorOptions().dtype(at::kFloat));
  s->exact_ = host.to(s->device_, /*non_blocking=*/false, /*copy=*/true);
  const double d = static_cast<double>(train.dim);
  if (metric == Metric::kCosine) {
    // Exactly the CPU search's normalisation: x / max(|x|, 1e-12) in float32.
    s->exact_.div_(s->exact_.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12));
    const double u = UnitOf(s->approx_type_);
    // Inputs rounded (2 u, relative to sum |q_i x_i| <= 1), output rounded
    // (u), float32 accumulation over dim terms; float16 underflow below 2^-14
    // adds at most 2^-25 per input element (sum <= 2^-24 sqrt(dim)); the
    // float32 rounding of the exact value one more unit.
    s->error_unit_ =
        s->approx_type_ == at::kFloat
            ? 1.01 * (d + 2) * kUnit32 + 0x1p-23
            : 1.01 * (3 * u + (d + 2) * kUnit32) + std::sqrt(d) * 0x1p-24 +
                  0x1p-23;
  } else {
    s->sq_norms_ = s->exact_.pow(2).sum(1);
    s->max_norm_ = std::sqrt(s->sq_norms_.max().item<double>());
    // Per unit of (2 |q| max|x| + max|x|^2): the dot product's and the
    // squared norm's float32 accumulation, the addmm's output rounding.
    s->error_unit_ = 1.01 * (d + 4) * kUnit32 + 1e-12;
  }
  s->approx_ = s->approx_type_ == at::kFloat ? s->exact_
                                              : s->exact_.to(s->approx_type_);

  s->tile_ = std::min<int64_t>(train.rows,
                               std::max<int64_t>(options.device_tile_rows, 1));
  const int64_t element = s->approx_type_ == at::kFloat ? 4 : 2;
  const double budget = static_cast<double>(options.device_memory_mib) * (1 << 20);
  // The tile's scores, their group maxima and the float32 copy a top-k may
  // make: about 1.5 score elements per score.
  s->block_rows_ = std::clamp<int64_t>(
      static_cast<int64_t>(budget / (1.5 * element * static_cast<double>(s->tile_))),
      1, 8192);
  return s;
}

at::Tensor DeviceSearch::Scores(const at::Tensor& q_approx,
                                const at::Tensor& q32, int64_t t,
                                int64_t m) const {
  if (metric_ == Metric::kCosine) {
    return at::mm(q_approx, approx_.narrow(0, t, m).t());
  }
  return at::addmm(sq_norms_.narrow(0, t, m).neg().unsqueeze(0), q32,
                   exact_.narrow(0, t, m).t(), /*beta=*/1, /*alpha=*/2);
}

void DeviceSearch::Search(const FeatureMatrix& test, int64_t first, int64_t b,
                          at::Tensor* values, at::Tensor* indices) {
  NoTf32 no_tf32;
  const bool cosine = metric_ == Metric::kCosine;
  at::Tensor q32 =
      at::from_blob(const_cast<float*>(test.data.data() + first * dim_),
                    {b, dim_}, at::TensorOptions().dtype(at::kFloat))
          .to(device_, /*non_blocking=*/false, /*copy=*/true);
  if (cosine) {
    q32.div_(q32.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12));
  }
  const at::Tensor q_approx =
      approx_type_ == at::kFloat ? q32 : q32.to(approx_type_);

  // 1-2: the best `capacity_` candidate scores over all tiles.
  at::Tensor best, best_index;
  for (int64_t t = 0; t < rows_; t += tile_) {
    const int64_t m = std::min(tile_, rows_ - t);
    at::Tensor v, c;
    TopOfTile(Scores(q_approx, q32, t, m), capacity_, &v, &c);
    c.add_(t);
    if (!best.defined()) {
      best = v;
      best_index = c;
      continue;
    }
    const at::Tensor all_v = at::cat({best, v}, 1);
    const at::Tensor all_i = at::cat({best_index, c}, 1);
    const int64_t keep = std::min(capacity_, all_v.size(1));
    auto top = at::topk(all_v, keep, 1, /*largest=*/true, /*sorted=*/false);
    best = std::get<0>(top);
    best_index = all_i.gather(1, std::get<1>(top));
  }
  const int64_t count = best.size(1);

  // 3: rows whose list may miss one of the exact top k.
  at::Tensor overflow;
  if (count < rows_) {
    const at::Tensor sorted = std::get<0>(at::sort(best, 1, /*descending=*/true));
    const at::Tensor kth = sorted.select(1, k_ - 1).to(at::kDouble);
    const at::Tensor last = sorted.select(1, count - 1).to(at::kDouble);
    at::Tensor eps;
    if (cosine) {
      eps = at::full_like(kth, error_unit_);
    } else {
      const at::Tensor qn = q32.to(at::kDouble).norm(2, {1});
      eps = (qn * (2 * max_norm_) + max_norm_ * max_norm_) * error_unit_;
    }
    overflow = last.ge(kth - 2 * eps);
  }

  // 4: exact scores of the candidates, in slices of rows that bound memory.
  const at::Tensor index_sorted_perm = std::get<1>(at::sort(best_index, 1));
  const at::Tensor cand = best_index.gather(1, index_sorted_perm);
  const at::TensorOptions on_device = at::TensorOptions().device(device_);
  at::Tensor out_v = at::empty({b, k_}, on_device.dtype(cosine ? at::kFloat : at::kDouble));
  at::Tensor out_i = at::empty({b, k_}, on_device.dtype(at::kLong));
  const int64_t slice = std::max<int64_t>(
      1, kExactBytes / std::max<int64_t>(1, count * dim_ * 8));
  for (int64_t r = 0; r < b; r += slice) {
    const int64_t n = std::min(slice, b - r);
    const at::Tensor idx = cand.narrow(0, r, n);
    const at::Tensor rows =
        exact_.index_select(0, idx.reshape({-1})).view({n, count, dim_}).to(at::kDouble);
    const at::Tensor q = q32.narrow(0, r, n).to(at::kDouble);
    at::Tensor exact;
    if (cosine) {
      exact = at::bmm(rows, q.unsqueeze(2)).squeeze(2).to(at::kFloat);
    } else {
      exact = (rows - q.unsqueeze(1)).pow(2).sum(2);
    }
    auto sorted = at::sort(exact, /*stable=*/true, 1, /*descending=*/cosine);
    out_v.narrow(0, r, n).copy_(std::get<0>(sorted).narrow(1, 0, k_));
    out_i.narrow(0, r, n).copy_(idx.gather(1, std::get<1>(sorted).narrow(1, 0, k_)));
  }

  if (overflow.defined()) {
    const at::Tensor rows = overflow.nonzero().view({-1});
    const int64_t n = rows.size(0);
    if (n > 0) {
      fallback_rows_ += n;
      constexpr int64_t kRowsAtOnce = 16;
      for (int64_t r = 0; r < n; r += kRowsAtOnce) {
        const at::Tensor part = rows.narrow(0, r, std::min(kRowsAtOnce, n - r));
        at::Tensor v, i;
        Exhaustive(q32.index_select(0, part), &v, &i);
        out_v.index_copy_(0, part, v);
        out_i.index_copy_(0, part, i);
      }
    }
  }
  *values = out_v.cpu();
  *indices = out_i.cpu();
}

void DeviceSearch::Exhaustive(const at::Tensor& q32, at::Tensor* values,
                              at::Tensor* indices) const {
  const bool cosine = metric_ == Metric::kCosine;
  const int64_t n = q32.size(0);
  const at::Tensor q = q32.to(at::kDouble);
  at::Tensor all = at::empty(
      {n, rows_}, at::TensorOptions().device(device_).dtype(cosine ? at::kFloat : at::kDouble));
  const int64_t tile = std::max<int64_t>(
      1, kExactBytes / (8 * dim_ * (cosine ? 1 : n)));
  for (int64_t t = 0; t < rows_; t += tile) {
    const int64_t m = std::min(tile, rows_ - t);
    const at::Tensor x = exact_.narrow(0, t, m).to(at::kDouble);
    if (cosine) {
      all.narrow(1, t, m).copy_(at::mm(q, x.t()).to(at::kFloat));
    } else {
      all.narrow(1, t, m).copy_((x.unsqueeze(0) - q.unsqueeze(1)).pow(2).sum(2));
    }
  }
  auto sorted = at::sort(all, /*stable=*/true, 1, /*descending=*/cosine);
  *values = std::get<0>(sorted).narrow(1, 0, k_);
  *indices = std::get<1>(sorted).narrow(1, 0, k_);
}

}  // namespace sslbench::compute::knn_internal
