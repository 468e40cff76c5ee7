#pragma once
// Pieces every probe shares: progress reporting with cancellation, and the
// class-stratified split of train into fit / held-out parts. LibTorch-free.

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "worker/compute/features.h"

namespace sslbench::compute {


// A class-stratified split of row indices: from each class,
// round(fraction * count) rows (at least 1 when the class has 2 or more) go
// to `held_out`, chosen by a seeded shuffle; the rest to `fit`. Both sorted.
// A pure function of (labels, fraction, seed). A class always keeps at least
// one row in `fit`; fraction <= 0 holds nothing out; a class of one row, and
// rows with labels outside [0, num_classes), are never held out (the latter
// are in neither list). The shuffle is splitmix64 Fisher-Yates (see the .cc),
// identical on every platform.
struct StratifiedSplit {
  std::vector<int64_t> fit;
  std::vector<int64_t> held_out;
};
StratifiedSplit SplitStratified(const std::vector<int32_t>& labels,
                                int num_classes, double fraction,
                                uint64_t seed);

// Few-shot subsets, class-balanced, a pure function of (labels, n, seed):
// `shots` rows per class (all of a class's rows when it has fewer), or, when
// shots == 0, int(fraction * rows / num_classes) per class (at least 1).
// Returns sorted row indices.
std::vector<int64_t> SelectFewShot(const std::vector<int32_t>& labels,
                                   int num_classes, int shots, double fraction,
                                   uint64_t seed);

// A permutation of [0, n), a pure function of (n, seed) (splitmix64
// Fisher-Yates), for per-epoch shuffles.
std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed);

// Checks a probe's inputs: positive num_classes, non-empty train and test of
// one dim, data sizes that match, finite values, labels in
// [0, num_classes). INVALID_ARGUMENT naming `protocol` and the fault.
absl::Status ValidateProbeInputs(const FeatureMatrix& train,
                                 const FeatureMatrix& test, int num_classes,
                                 const char* protocol);

// An independent seed for sub-stream `stream` of `seed` (e.g. one per epoch).
uint64_t DeriveSeed(uint64_t seed, uint64_t stream);

}  // namespace sslbench::compute
