#pragma once
// Text the CLI prints: tables, CSV, JSON, study status and progress bars.
// Pure functions of the protos (no I/O), so they are tested directly.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sslbench/v1/client_api.pb.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::client {

// "RUNNING", "SUCCEEDED", ...; "extract", "knn", "linear", "logreg",
// "finetune".
std::string StudyStateName(v1::StudyState state);
std::string TaskKindName(v1::TaskKind kind);
// "42s", "3:05", "1:02:03".
std::string FormatDuration(double seconds);

// Columns model, dataset, protocol, variant, subset ("full" when unset),
// top1 %, top5 %, mean-per-class %, artifact (id, or "-" when none). A mean
// over several seeds (num_seeds > 1) reads "71.23 ± 0.45" (mean ± standard
// deviation, in percent).
std::string FormatResultsTable(const v1::ListResultsResponse& results);
// Header line, then one row per result with every field of ProbeResult but
// the artefact's bytes; metrics are fractions; seed_top1 and per_class are
// ';'-separated in one field; config_json is a quoted field.
std::string FormatResultsCsv(const v1::ListResultsResponse& results);
// {"results": [...]} with the proto field names.
std::string FormatResultsJson(const v1::ListResultsResponse& results);
// `format` is "table", "csv" or "json"; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::string> FormatResults(const v1::ListResultsResponse& results,
                                          const std::string& format);

std::string FormatWorkersTable(const v1::ListWorkersResponse& workers,
                               double now_unix);

// Several lines: id, name, state, elapsed, one line per task kind, error.
std::string FormatStudyStatus(const v1::StudyStatus& status);

// Progress bars of a watched study, one line per task kind, with an ETA
// estimated from the progress seen since the kind became active. Not
// thread-safe.
class ProgressBars {
 public:
  explicit ProgressBars(int bar_width = 24) : bar_width_(bar_width) {}
  std::vector<std::string> Lines(const v1::StudyStatus& status, absl::Time now);

  // Fraction of a kind's work that is done, counting the running tasks'
  // work units.
  static double Fraction(const v1::TaskProgress& progress);

 private:
  struct Origin {
    absl::Time time;
    double fraction;
  };
  int bar_width_;
  std::map<int, Origin> origins_;  // by TaskKind
};

// The answer of `sslbench correlate`: the in-domain columns ranked as
// predictors of out-of-domain accuracy first (mean Kendall tau-b and
// Spearman rho over the out-of-domain columns), then one line per pair of
// columns with n and each coefficient with its bootstrap interval.
// Coefficients have 3 decimals; an undefined one reads "n/a".
std::string FormatCorrelationTable(const v1::CorrelateResponse& response);
// Two CSV tables separated by one empty line: the predictors (header
// "rank,protocol,variant,subset,dataset,mean_kendall,mean_spearman,
// min_kendall,max_kendall,targets"), then the pairs (each column's four
// fields for x and for y, n, then value, ci_low, ci_high for pearson,
// spearman and kendall). Full precision; undefined values are empty fields.
std::string FormatCorrelationCsv(const v1::CorrelateResponse& response);
// The response as JSON with the proto field names (NaN reads "NaN").
std::string FormatCorrelationJson(const v1::CorrelateResponse& response);
// `format` is "table", "csv" or "json"; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::string> FormatCorrelation(const v1::CorrelateResponse& response,
                                              const std::string& format);

// One protocol's top-1 (full train split) as a models x datasets table with
// each model's family and mean out-of-domain accuracy, sorted by the
// in-domain column.
std::string FormatModelAccuracy(const v1::StudySpec& spec, const v1::ListResultsResponse& results,
                                const std::string& protocol);

// The predictor ranking of a correlation, without the pairs.
std::string FormatPredictorRanking(const v1::CorrelateResponse& response);

}  // namespace sslbench::client
