#pragma once
// Rank and linear correlation between two columns of numbers (one value per
// model), with percentile bootstrap confidence intervals over the models.
// Pure functions: no RPC, no database, no global state; thread-safe.
//
// Every coefficient is NaN when it is undefined: fewer than kMinModels
// values, columns of different lengths, a non-finite value, or a constant
// column. The definitions follow scipy.stats (pearsonr, spearmanr with ranks
// averaged over ties as rankdata does, kendalltau's default tau-b), which
// bench/correlation_vs_scipy.py checks to 1e-12.

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace sslbench::server::analysis {

// Below this many models no coefficient is computed.
inline constexpr int kMinModels = 3;

// Pearson's product-moment correlation r.
double Pearson(absl::Span<const double> x, absl::Span<const double> y);
// Spearman's rho: Pearson's r of the average ranks.
double Spearman(absl::Span<const double> x, absl::Span<const double> y);
// Kendall's tau-b: (concordant - discordant) / sqrt((n0 - n1) (n0 - n2)), where
// n0 = n (n - 1) / 2 and n1, n2 count the pairs tied in x and in y. O(n^2).
double KendallTauB(absl::Span<const double> x, absl::Span<const double> y);

// Ranks 1..n, ties given the mean of the ranks they span (scipy's
// rankdata(method="average")).
std::vector<double> AverageRanks(absl::Span<const double> values);

// The q-th percentile (q in [0, 100]) of `values` by linear interpolation
// between the closest ranks, as numpy.percentile's default. NaN when empty.
double Percentile(std::vector<double> values, double q);

// SplitMix64 (Steele, Lea and Flood 2014): a small, fast, seedable generator
// whose stream is fixed by its seed on every platform, so bootstrap intervals
// are reproducible. Not thread-safe.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, n), without modulo bias; n > 0.
  uint64_t Below(uint64_t n);

 private:
  uint64_t state_;
};

struct Interval {
  double low = 0;   // NaN when no resample gave a defined value
  double high = 0;
  int valid = 0;    // resamples where the statistic was defined
};

struct Coefficient {
  double value = 0;  // on all the models; NaN when undefined
  Interval ci;       // 95% percentile bootstrap interval
};

struct PairCorrelation {
  int n = 0;  // models
  Coefficient pearson;
  Coefficient spearman;
  Coefficient kendall;
};

struct BootstrapOptions {
  int resamples = 1000;  // 0: no intervals (they read NaN, valid 0)
  uint64_t seed = 0;
  double level = 0.95;   // central coverage of the interval
};

// The three coefficients of (x, y) with percentile bootstrap intervals: each
// resample draws n models with replacement (the same draws serve the three
// coefficients), resamples where a coefficient is undefined are skipped for
// that coefficient, and the interval runs between the (1 - level)/2 and
// (1 + level)/2 percentiles of the rest. Deterministic in (x, y, options).
PairCorrelation Correlate(absl::Span<const double> x, absl::Span<const double> y,
                          const BootstrapOptions& options);

}  // namespace sslbench::server::analysis
