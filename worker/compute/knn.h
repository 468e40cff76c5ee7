#pragma once
// k-nearest-neighbour classification on frozen features, as the field's
// reference implementations define it. LibTorch-free header.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/compute/features.h"

namespace sslbench::compute {

struct KnnOptions {
  // Cosine variant (DINO): L2-normalised features, cosine similarity, vote of
  // each of the k nearest neighbours = exp(sim / temperature). Every
  // (k, temperature) pair is computed from one top-max(k) search.
  std::vector<int> ks = {10, 20, 100, 200};
  double temperature = 0.07;
  // Temperature sweep: when non-empty it replaces `temperature`.
  std::vector<double> temperatures;
  // Euclidean variant (scikit-learn KNeighborsClassifier(weights="distance",
  // algorithm="brute")): vote = 1 / distance; a zero distance takes all the
  // weight. 0 disables it.
  int euclidean_k = 20;
  // Euclidean search strategy: the dimension p of the principal subspace
  // whose lower bound rules out most train rows before any exact distance is
  // computed (-1: automatic: dim / 4 - 1 in steps of 16 for dim 256-511, 127
  // up to dim 1279, 191 for dim 2048, at most 255, none below dim 256 or 4096
  // train rows; 0: none, every distance from the full float32 product; else
  // 1 <= p < dim). The neighbours found are the same either way; only speed
  // and memory differ.
  int euclidean_projection_dim = -1;
  // Memory bound: each thread computes similarities for a block of at most
  // test_chunk_rows test rows x train_chunk_rows train rows at a time (fewer
  // train rows when a cache-sized tile is smaller), so peak extra memory is
  // O(threads * (test_chunk_rows * (train_chunk_rows + max k) +
  // train_chunk_rows * dim)) plus one float per train row (norms):
  // independent of the number of test rows and, but for those 4 bytes per
  // row, of the number of train rows. The projected Euclidean search adds
  // its projected train rows (p + 1 floats each, and one more) only while
  // they fit in train_chunk_rows x dim floats (else it recomputes them per
  // block of test rows), and per thread a candidate list for each of at most
  // 512 test rows: about 1024 entries of 16 bytes typically, at most
  // 2 x max(2048, 4 k). Rows it searches a second time list at most 65536
  // entries each, 64 rows at a time.
  int64_t test_chunk_rows = 1024;
  int64_t train_chunk_rows = 16384;

  // Where to search: "cpu", "cuda" or "cuda:N" (see device.h). The features
  // are copied to the device once: train rows take dim x 6 bytes each there
  // (float32 and the float16 candidate copy) for the cosine variant, dim x 4
  // for the Euclidean one.
  std::string device = "cpu";
  // "auto": the tile search above on the CPU, the candidate search on a CUDA
  // device (low-precision scores, group-maximum selection, exact rescoring:
  // knn_device.cc); "tiles" (CPU only) or "candidates" force one. Both find
  // the same neighbours: the cosine variant's from float32 similarities,
  // ties to the lower train index, the Euclidean variant's from float64
  // distances.
  std::string search = "auto";
  // Precision of the candidate search's cosine scores: "auto" (fp16 on CUDA,
  // fp32 on the CPU), "fp32", "bf16", "fp16". The Euclidean variant always
  // scores candidates in float32. Only speed depends on it: a wider error
  // bound means more rows searched exhaustively.
  std::string candidate_precision = "auto";
  // Candidate search: train rows per score tile, and the memory one tile of
  // scores may take (it decides how many test rows go at once, at most 8192).
  int64_t device_tile_rows = 262144;
  int64_t device_memory_mib = 4096;
};

struct KnnResult {
  std::string variant;  // "cosine" or "euclidean"
  int k = 0;
  double temperature = 0;  // cosine only
  ClassificationMetrics metrics;
  // Candidate search only: test rows whose candidate list could not be
  // proved complete and were searched exhaustively (correct, slower).
  int64_t exhaustive_rows = 0;
};

// Cosine results first: for each temperature (options.temperatures in order,
// or options.temperature alone), one KnnResult per k in the order of
// options.ks; then one for the Euclidean variant if enabled.
// INVALID_ARGUMENT for empty inputs, mismatched dims, a k larger than
// train.rows, labels outside [0, num_classes), or a temperature that is not a
// positive finite number.
//
// `progress`, if set, is called on the calling thread after each block of test
// rows with (test rows done, total), where total counts the test rows once per
// enabled variant. When it returns false, RunKnn starts no further block and
// returns CANCELLED. Threads: uses the LibTorch intra-op pool (see
// SetComputeThreads) and the BLAS threads.
absl::StatusOr<std::vector<KnnResult>> RunKnn(const FeatureMatrix& train,
                                              const FeatureMatrix& test,
                                              int num_classes,
                                              const KnnOptions& options,
                                              const ProgressFn& progress = {});

// A train row and its squared Euclidean distance (computed in float64) to a
// test row.
struct EuclideanNeighbour {
  double sq_distance;
  int64_t index;
};

// How EuclideanNeighbours (and the Euclidean variant of RunKnn) searched.
struct EuclideanSearchStats {
  int64_t projection_dim = 0;  // 0: the direct search only
  int64_t projected_rows = 0;  // test rows settled by the projected search
  int64_t rechecked_rows = 0;  // of which needed a second pass
  int64_t direct_rows = 0;     // test rows searched with the full product
  int64_t verified = 0;        // exact distances the projected search computed
  int64_t exhaustive_rows = 0; // candidate search: rows searched exhaustively
};

// The options.euclidean_k nearest train rows of every test row, nearest
// first, ties to the lower train index: the neighbours the Euclidean variant
// votes with, exactly those of a float64 brute-force search. Labels are not
// used. Memory: test.rows x k entries besides RunKnn's.
absl::StatusOr<std::vector<std::vector<EuclideanNeighbour>>>
EuclideanNeighbours(const FeatureMatrix& train, const FeatureMatrix& test,
                    const KnnOptions& options,
                    EuclideanSearchStats* stats = nullptr);

// Metrics from per-class scores: `scores` is row-major [labels.size(),
// num_classes]; ties resolve to the lowest class index (as numpy's argmax).
ClassificationMetrics MetricsFromScores(const std::vector<float>& scores,
                                        const std::vector<int32_t>& labels,
                                        int num_classes);

}  // namespace sslbench::compute
