#pragma once
// Runs a probe task (kNN, linear probe, logistic regression; full train split
// or few-shot subsets over several seeds) on features already in memory, and
// turns the outcome into ProbeResults carrying their full configuration.
// No RPC here: the daemon downloads the features and reports the results.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sslbench/v1/types.pb.h"
#include "worker/compute/image_set.h"
#include "worker/compute/knn.h"
#include "worker/compute/probe_common.h"

namespace sslbench::worker {

// Images left out of the features as undecodable (on_bad_image: skip).
struct SkippedImages {
  int64_t train = 0;
  int64_t test = 0;
};

// INVALID_ARGUMENT for a task whose protocol does not fit its kind;
// CANCELLED when `progress` returns false; errors of the compute core as is.
// `skipped` is reported in each result's configuration when not zero.
// Every probe runs on `device` (canonical: "cpu", "cuda:N").
absl::StatusOr<std::vector<v1::ProbeResult>> RunProbeTask(
    const v1::TaskSpec& spec, const compute::FeatureMatrix& train,
    const compute::FeatureMatrix& test, const compute::ProgressFn& progress,
    const SkippedImages& skipped = {}, const std::string& device = "cpu");

// One variant's outcome on one seed.
struct SeedOutcome {
  std::string variant;
  compute::ClassificationMetrics metrics;
  std::string selected_json;  // what model selection chose, e.g. {"learning_rate":0.1}
  std::string head;           // encoded head, when the protocol keeps one
};

// Folds the per-seed outcomes of one variant into a ProbeResult: means and
// sample standard deviations over seeds, per-class means, the first seed's
// head as the artefact, and the full configuration. `train_rows_used` holds
// the train rows each seed saw; `dim` the feature width (0 if none).
v1::ProbeResult AggregateSeeds(const v1::TaskSpec& spec, const std::string& variant,
                               const std::vector<int64_t>& seeds,
                               const std::vector<SeedOutcome>& runs,
                               const std::vector<int64_t>& train_rows_used,
                               int64_t train_rows, int64_t test_rows, int64_t dim,
                               int num_classes, const SkippedImages& skipped = {});

// The seeds a probe task runs: the subset's (default {0}) for few-shot tasks,
// else the protocol's own seed.
std::vector<int64_t> TaskSeeds(const v1::TaskSpec& spec);

// "full", "5-shot" or "10%".
std::string SubsetName(const v1::Subset& subset);

// Images `rows` of `images`, in order.
compute::ImageSet SelectImages(const compute::ImageSet& images, const std::vector<int64_t>& rows);

// Rows `rows` of `m`, in order.
compute::FeatureMatrix SelectRows(const compute::FeatureMatrix& m,
                                  const std::vector<int64_t>& rows);

// The serialised head: one JSON line describing the layout, then the float32
// little-endian values.
std::string EncodeHead(const std::string& header_json, const std::vector<float>& values);

}  // namespace sslbench::worker
