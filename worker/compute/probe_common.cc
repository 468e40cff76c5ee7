#include "worker/compute/probe_common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/compute/knn.h"

// Every random choice here comes from splitmix64 (Steele, Lea & Flood 2014;
// the generator of Java's SplittableRandom), implemented below, so the subsets
// are the same on every platform and standard library:
//
//   next():  state += 0x9E3779B97F4A7C15; return Mix64(state)
//   Mix64(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//             z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//             return z ^ (z >> 31)
//
// A uniform integer in [0, bound) rejects draws below 2^64 mod bound and
// returns draw mod bound (no modulo bias). A shuffle is the textbook
// Fisher-Yates: for i = n-1 down to 1, swap a[i] with a[Uniform(i + 1)].
//
// Each class c gets its own stream, initial state
// Mix64(seed ^ Mix64(salt + c)), with a different salt for each public
// function; the rows of class c (ascending) are shuffled and a prefix is
// taken. So the rows chosen from one class depend only on that class's rows,
// the count taken and the seed.

namespace sslbench::compute {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kSplitSalt = 0x5350'4C49'5400'0000ULL;    // "SPLIT"
constexpr uint64_t kFewShotSalt = 0x4645'5753'484F'5400ULL;  // "FEWSHOT"
constexpr uint64_t kPermuteSalt = 0x5045'524D'5554'4500ULL;  // "PERMUTE"

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}

  uint64_t Next() {
    state_ += kGolden;
    return Mix64(state_);
  }

  // Uniform in [0, bound), bound > 0.
  uint64_t Uniform(uint64_t bound) {
    const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    for (;;) {
      const uint64_t r = Next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  uint64_t state_;
};

void Shuffle(std::vector<int64_t>& v, SplitMix64& gen) {
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(gen.Uniform(i));
    std::swap(v[i - 1], v[j]);
  }
}

// Row indices per class, ascending; rows with labels outside
// [0, num_classes) belong to no class.
std::vector<std::vector<int64_t>> RowsByClass(
    const std::vector<int32_t>& labels, int num_classes) {
  std::vector<std::vector<int64_t>> rows(std::max(num_classes, 0));
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] >= 0 && labels[i] < num_classes) {
      rows[labels[i]].push_back(static_cast<int64_t>(i));
    }
  }
  return rows;
}

SplitMix64 ClassStream(uint64_t seed, uint64_t salt, int c) {
  return SplitMix64(Mix64(seed ^ Mix64(salt + static_cast<uint64_t>(c))));
}

}  // namespace

std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> v(std::max<int64_t>(n, 0));
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  SplitMix64 gen(Mix64(seed ^ kPermuteSalt));
  Shuffle(v, gen);
  return v;
}

uint64_t DeriveSeed(uint64_t seed, uint64_t stream) {
  return Mix64(seed ^ Mix64(stream + kGolden));
}

StratifiedSplit SplitStratified(const std::vector<int32_t>& labels,
                                int num_classes, double fraction,
                                uint64_t seed) {
  StratifiedSplit split;
  const std::vector<std::vector<int64_t>> by_class =
      RowsByClass(labels, num_classes);
  for (int c = 0; c < num_classes; ++c) {
    std::vector<int64_t> rows = by_class[c];
    const int64_t n = static_cast<int64_t>(rows.size());
    int64_t held = 0;
    if (fraction > 0 && n >= 2) {
      held = std::llround(fraction * static_cast<double>(n));
      held = std::clamp<int64_t>(held, 1, n - 1);
    }
    SplitMix64 gen = ClassStream(seed, kSplitSalt, c);
    Shuffle(rows, gen);
    split.held_out.insert(split.held_out.end(), rows.begin(),
                          rows.begin() + held);
    split.fit.insert(split.fit.end(), rows.begin() + held, rows.end());
  }
  std::sort(split.fit.begin(), split.fit.end());
  std::sort(split.held_out.begin(), split.held_out.end());
  return split;
}

std::vector<int64_t> SelectFewShot(const std::vector<int32_t>& labels,
                                   int num_classes, int shots, double fraction,
                                   uint64_t seed) {
  std::vector<int64_t> selected;
  if (num_classes <= 0) return selected;
  int64_t per_class = shots;
  if (shots <= 0) {
    per_class =
        static_cast<int64_t>(fraction * static_cast<double>(labels.size()) /
                             static_cast<double>(num_classes));
    per_class = std::max<int64_t>(per_class, 1);
  }
  const std::vector<std::vector<int64_t>> by_class =
      RowsByClass(labels, num_classes);
  for (int c = 0; c < num_classes; ++c) {
    std::vector<int64_t> rows = by_class[c];
    const int64_t take =
        std::min<int64_t>(per_class, static_cast<int64_t>(rows.size()));
    SplitMix64 gen = ClassStream(seed, kFewShotSalt, c);
    Shuffle(rows, gen);
    selected.insert(selected.end(), rows.begin(), rows.begin() + take);
  }
  std::sort(selected.begin(), selected.end());
  return selected;
}

namespace {

absl::Status ValidateMatrix(const FeatureMatrix& m, const char* protocol,
                            const char* name, int num_classes) {
  if (m.rows <= 0 || m.dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(protocol, ": ", name,
                                                   " features are empty (",
                                                   m.rows, " x ", m.dim, ")"));
  }
  if (static_cast<int64_t>(m.data.size()) != m.rows * m.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(protocol, ": ", name, " features hold ", m.data.size(),
                     " values; expected ", m.rows, " x ", m.dim));
  }
  if (static_cast<int64_t>(m.labels.size()) != m.rows) {
    return absl::InvalidArgumentError(
        absl::StrCat(protocol, ": ", name, " has ", m.labels.size(),
                     " labels for ", m.rows, " rows"));
  }
  for (int64_t i = 0; i < m.rows; ++i) {
    if (m.labels[i] < 0 || m.labels[i] >= num_classes) {
      return absl::InvalidArgumentError(
          absl::StrCat(protocol, ": ", name, " label ", m.labels[i], " of row ",
                       i, " is outside [0, ", num_classes, ")"));
    }
  }
  for (size_t i = 0; i < m.data.size(); ++i) {
    if (!std::isfinite(m.data[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(protocol, ": ", name, " features are not finite (row ",
                       static_cast<int64_t>(i) / m.dim, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateProbeInputs(const FeatureMatrix& train,
                                 const FeatureMatrix& test, int num_classes,
                                 const char* protocol) {
  if (num_classes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        protocol, ": num_classes must be positive, got ", num_classes));
  }
  if (absl::Status s = ValidateMatrix(train, protocol, "train", num_classes);
      !s.ok())
    return s;
  if (absl::Status s = ValidateMatrix(test, protocol, "test", num_classes);
      !s.ok())
    return s;
  if (train.dim != test.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(protocol, ": train features have dim ", train.dim,
                     " but test features have dim ", test.dim));
  }
  return absl::OkStatus();
}

}  // namespace sslbench::compute
