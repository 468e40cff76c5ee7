#include "server/analysis/correlation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace sslbench::server::analysis {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The checks every coefficient shares; true when it can be computed.
bool Usable(absl::Span<const double> x, absl::Span<const double> y) {
  if (x.size() != y.size() || x.size() < static_cast<size_t>(kMinModels)) return false;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) return false;
  }
  auto constant = [](absl::Span<const double> v) {
    return std::all_of(v.begin(), v.end(), [&](double a) { return a == v[0]; });
  };
  return !constant(x) && !constant(y);
}

double Mean(absl::Span<const double> v) {
  double sum = 0;
  for (double a : v) sum += a;
  return sum / static_cast<double>(v.size());
}

// Pearson's r once Usable() holds. Centred, each column scaled to unit norm
// before the dot product (as scipy does), so large values cannot overflow.
// Allocates nothing: the bootstrap calls it millions of times.
double PearsonUnchecked(absl::Span<const double> x, absl::Span<const double> y) {
  const size_t n = x.size();
  const double mx = Mean(x);
  const double my = Mean(y);
  double sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  const double nx = std::sqrt(sxx);
  const double ny = std::sqrt(syy);
  if (!(nx > 0) || !(ny > 0)) return kNaN;
  double r = 0;
  for (size_t i = 0; i < n; ++i) r += ((x[i] - mx) / nx) * ((y[i] - my) / ny);
  return std::clamp(r, -1.0, 1.0);
}

// Kendall's tau-b from integer codes that order (and tie) as the values do.
double KendallOfCodes(absl::Span<const int> x, absl::Span<const int> y) {
  const size_t n = x.size();
  // Integer counts keep the numerator and the tie corrections exact.
  int64_t concordant_minus_discordant = 0;
  int64_t tied_x = 0;
  int64_t tied_y = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      const int sx = (x[i] > x[j]) - (x[i] < x[j]);
      const int sy = (y[i] > y[j]) - (y[i] < y[j]);
      tied_x += sx == 0;
      tied_y += sy == 0;
      concordant_minus_discordant += sx * sy;
    }
  }
  const int64_t total = static_cast<int64_t>(n) * static_cast<int64_t>(n - 1) / 2;
  if (tied_x == total || tied_y == total) return kNaN;
  // The same order of operations as scipy.stats.kendalltau.
  const double tau = static_cast<double>(concordant_minus_discordant) /
                     std::sqrt(static_cast<double>(total - tied_x)) /
                     std::sqrt(static_cast<double>(total - tied_y));
  return std::clamp(tau, -1.0, 1.0);
}

// Dense codes 0..k-1 of the values: equal values share a code, and codes
// order as the values. Returns k.
int DenseCodes(absl::Span<const double> values, std::vector<int>* codes) {
  std::vector<double> distinct(values.begin(), values.end());
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  codes->resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    (*codes)[i] = static_cast<int>(std::lower_bound(distinct.begin(), distinct.end(), values[i]) -
                                   distinct.begin());
  }
  return static_cast<int>(distinct.size());
}

// Average ranks of a sample given as dense codes in [0, k), by counting:
// O(n + k), no sort. `count` has k entries and is left zeroed.
void RanksOfCodes(absl::Span<const int> codes, std::vector<int>& count,
                  std::vector<double>& rank_of_code, std::vector<double>* ranks) {
  for (int c : codes) ++count[c];
  int below = 0;  // values with a smaller code
  for (size_t c = 0; c < count.size(); ++c) {
    // Positions below+1 .. below+count share their mean rank.
    rank_of_code[c] = below + 0.5 * (count[c] + 1);
    below += count[c];
    count[c] = 0;
  }
  for (size_t i = 0; i < codes.size(); ++i) (*ranks)[i] = rank_of_code[codes[i]];
}

}  // namespace

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::Below(uint64_t n) {
  // Rejects the top partial block of 2^64 so every residue is equally likely.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() -
                         std::numeric_limits<uint64_t>::max() % n;
  uint64_t v;
  do {
    v = Next();
  } while (v >= limit);
  return v % n;
}

std::vector<double> AverageRanks(absl::Span<const double> values) {
  const size_t n = values.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(n);
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && values[order[j]] == values[order[i]]) ++j;
    // Positions i..j-1 (ranks i+1..j) share their mean rank.
    const double rank = 0.5 * static_cast<double>(i + 1 + j);
    for (size_t k = i; k < j; ++k) ranks[order[k]] = rank;
    i = j;
  }
  return ranks;
}

double Pearson(absl::Span<const double> x, absl::Span<const double> y) {
  if (!Usable(x, y)) return kNaN;
  return PearsonUnchecked(x, y);
}

double Spearman(absl::Span<const double> x, absl::Span<const double> y) {
  if (!Usable(x, y)) return kNaN;
  const std::vector<double> rx = AverageRanks(x);
  const std::vector<double> ry = AverageRanks(y);
  return PearsonUnchecked(rx, ry);
}

double KendallTauB(absl::Span<const double> x, absl::Span<const double> y) {
  if (!Usable(x, y)) return kNaN;
  std::vector<int> cx, cy;
  DenseCodes(x, &cx);
  DenseCodes(y, &cy);
  return KendallOfCodes(cx, cy);
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return kNaN;
  std::sort(values.begin(), values.end());
  const double position = q / 100.0 * static_cast<double>(values.size() - 1);
  const double floor = std::floor(position);
  const size_t lo = static_cast<size_t>(std::clamp(floor, 0.0,
                                                   static_cast<double>(values.size() - 1)));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double t = position - floor;
  // numpy's lerp: exact at both ends, and monotone in t.
  const double a = values[lo];
  const double b = values[hi];
  return t >= 0.5 ? b - (b - a) * (1.0 - t) : a + (b - a) * t;
}

PairCorrelation Correlate(absl::Span<const double> x, absl::Span<const double> y,
                          const BootstrapOptions& options) {
  PairCorrelation out;
  out.n = static_cast<int>(std::min(x.size(), y.size()));
  out.pearson.value = Pearson(x, y);
  out.spearman.value = Spearman(x, y);
  out.kendall.value = KendallTauB(x, y);
  for (Coefficient* c : {&out.pearson, &out.spearman, &out.kendall}) {
    c->ci = Interval{kNaN, kNaN, 0};
  }
  if (options.resamples <= 0 || x.size() != y.size() ||
      x.size() < static_cast<size_t>(kMinModels)) {
    return out;
  }
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) return out;
  }
  const size_t n = x.size();
  // Each resample is a multiset of the models: ranks and ties follow from
  // the models' codes, so no resample needs a sort.
  std::vector<int> codes_x, codes_y;
  const int kx = DenseCodes(x, &codes_x);
  const int ky = DenseCodes(y, &codes_y);
  std::vector<int> count_x(kx, 0), count_y(ky, 0);
  std::vector<double> rank_of_x(kx), rank_of_y(ky);
  SplitMix64 rng(options.seed);
  std::vector<double> bx(n), by(n), rx(n), ry(n);
  std::vector<int> cx(n), cy(n);
  std::vector<double> pearson, spearman, kendall;
  pearson.reserve(options.resamples);
  spearman.reserve(options.resamples);
  kendall.reserve(options.resamples);
  for (int b = 0; b < options.resamples; ++b) {
    bool varies_x = false, varies_y = false;
    for (size_t i = 0; i < n; ++i) {
      const size_t k = static_cast<size_t>(rng.Below(n));
      bx[i] = x[k];
      by[i] = y[k];
      cx[i] = codes_x[k];
      cy[i] = codes_y[k];
      varies_x |= cx[i] != cx[0];
      varies_y |= cy[i] != cy[0];
    }
    // A constant column leaves all three undefined: skip the resample.
    if (!varies_x || !varies_y) continue;
    pearson.push_back(PearsonUnchecked(bx, by));
    RanksOfCodes(cx, count_x, rank_of_x, &rx);
    RanksOfCodes(cy, count_y, rank_of_y, &ry);
    spearman.push_back(PearsonUnchecked(rx, ry));
    kendall.push_back(KendallOfCodes(cx, cy));
  }
  const double tail = 50.0 * (1.0 - options.level);
  auto fill = [&](Coefficient& c, std::vector<double>& values) {
    // A NaN from degenerate arithmetic would poison the sort.
    values.erase(std::remove_if(values.begin(), values.end(),
                                [](double v) { return std::isnan(v); }),
                 values.end());
    c.ci.valid = static_cast<int>(values.size());
    if (values.empty()) return;
    c.ci.low = Percentile(values, tail);
    c.ci.high = Percentile(values, 100.0 - tail);
  };
  fill(out.pearson, pearson);
  fill(out.spearman, spearman);
  fill(out.kendall, kendall);
  return out;
}

}  // namespace sslbench::server::analysis
