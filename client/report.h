#pragma once
// `sslbench report ID -o report.html`: one self-contained HTML file for a
// study — a sortable results table with each result's configuration, the
// protocol-correlation heatmap (Kendall tau-b with bootstrap intervals), a
// scatter of each in-domain protocol against out-of-domain accuracy with the
// fitted line and Kendall tau, and few-shot curves with the spread over
// seeds. The SVG is drawn here; the page loads nothing (no network, no
// external scripts). Each figure can also be written alone as SVG.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sslbench/v1/client_api.pb.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::client {

struct ReportInput {
  v1::StudySpec spec;
  v1::StudyStatus status;
  std::vector<v1::ProbeResult> results;
  // Empty (no columns) when the study has fewer than 3 models with results;
  // `correlation_note` then says why.
  v1::CorrelateResponse correlation;
  std::string correlation_note;
};

// The correlation heatmap: one cell per pair of columns, Kendall tau-b.
std::string HeatmapSvg(const v1::CorrelateResponse& correlation);

// In-domain column `predictor` (an index into correlation.columns) against
// each model's mean over the out-of-domain columns of the same protocol,
// variant and subset (all out-of-domain columns when there are none), with
// the least-squares line and Kendall tau-b.
std::string ScatterSvg(const ReportInput& input, int predictor);

// Few-shot curves on `dataset`: top-1 (mean +- standard deviation over seeds)
// against images per class (or fraction of train), one line per model, for
// `protocol`. Empty when it has no few-shot results there.
std::string FewShotSvg(const ReportInput& input, const std::string& protocol,
                       const std::string& dataset);

std::string ReportHtml(const ReportInput& input);

// A single figure as SVG: "heatmap", "scatter" (the best predictor),
// "scatter:N" (the N-th, from 1), or "fewshot:PROTOCOL" (on the first
// in-domain dataset). INVALID_ARGUMENT naming the choices otherwise;
// FAILED_PRECONDITION when the study has nothing to draw for it.
absl::StatusOr<std::string> FigureSvg(const ReportInput& input, const std::string& figure);

}  // namespace sslbench::client
