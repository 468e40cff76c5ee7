#pragma once
// The cross-protocol analysis of one study: the models x columns table of a
// metric, where a column is (protocol, variant, subset, dataset); the
// correlations between every two columns over their common models; and the
// in-domain columns ranked by how well they predict out-of-domain accuracy
// (mean Kendall tau-b over the out-of-domain columns), the question of
// Marks et al., "A Closer Look at Benchmarking Self-supervised Pre-training
// with Image Classification". Pure functions of the spec and the results;
// thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sslbench/v1/client_api.pb.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::server::analysis {

enum class Metric { kTop1, kTop5, kMeanPerClass };

// "top1" (also ""), "top5", "mean_per_class"; INVALID_ARGUMENT otherwise.
absl::StatusOr<Metric> ParseMetric(absl::string_view name);
std::string MetricName(Metric metric);
double MetricValue(const v1::ProbeResult& result, Metric metric);

struct MetricTable {
  std::vector<std::string> models;              // sorted by name
  std::vector<v1::CorrelationColumn> columns;   // ordered as CorrelateResponse's
  // values[c][m]: column c, model m; NaN where the model has no result.
  std::vector<std::vector<double>> values;
};

// One value per (model, column); when several results share a cell (a task
// that was run again) the last one counts. Non-finite values are left out.
// Roles come from the spec's datasets; a dataset the spec does not name has
// DATASET_ROLE_UNSPECIFIED.
MetricTable BuildMetricTable(const v1::StudySpec& spec,
                             const std::vector<v1::ProbeResult>& results,
                             Metric metric);

struct AnalysisOptions {
  Metric metric = Metric::kTop1;
  int bootstrap_resamples = 1000;  // 0: no confidence intervals
  uint64_t seed = 0;
  // ModelSpec labels to group by: "backbone", "method", "family", or several
  // joined by commas; empty: no groups.
  std::string group_by;
};

// The whole CorrelateResponse but study_id. Pairs are computed for every two
// columns with at least 3 models in common; each pair's bootstrap draws from
// its own generator, seeded from `seed` and the pair's column labels, so the
// intervals do not depend on which other columns exist.
// FAILED_PRECONDITION when fewer than 3 models have a value of the metric;
// INVALID_ARGUMENT for an unknown group_by label. A model without the label
// falls in the group "(none)".
absl::StatusOr<v1::CorrelateResponse> AnalyzeStudy(
    const v1::StudySpec& spec, const std::vector<v1::ProbeResult>& results,
    const AnalysisOptions& options);

}  // namespace sslbench::server::analysis
