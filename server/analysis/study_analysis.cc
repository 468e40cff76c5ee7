#include "server/analysis/study_analysis.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "server/analysis/correlation.h"

namespace sslbench::server::analysis {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// FNV-1a: a hash that, unlike std::hash and absl::Hash, is the same in every
// build and process, so a seed gives the same intervals everywhere.
uint64_t StableHash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

int RoleOrder(v1::DatasetRole role) {
  switch (role) {
    case v1::DATASET_ROLE_IN_DOMAIN: return 0;
    case v1::DATASET_ROLE_OUT_OF_DOMAIN: return 1;
    default: return 2;
  }
}

std::string Label(const v1::CorrelationColumn& c) {
  std::string out = c.protocol();
  if (!c.variant().empty()) absl::StrAppend(&out, "[", c.variant(), "]");
  absl::StrAppend(&out, "/", c.subset(), "@", c.dataset());
  return out;
}

void Fill(const Coefficient& from, v1::Coefficient* to) {
  to->set_value(from.value);
  to->set_ci_low(from.ci.low);
  to->set_ci_high(from.ci.high);
  to->set_valid_resamples(from.ci.valid);
}

}  // namespace

absl::StatusOr<Metric> ParseMetric(absl::string_view name) {
  if (name.empty() || name == "top1") return Metric::kTop1;
  if (name == "top5") return Metric::kTop5;
  if (name == "mean_per_class") return Metric::kMeanPerClass;
  return absl::InvalidArgumentError(absl::StrCat(
      "metric: \"", name, "\" is not one of top1, top5, mean_per_class"));
}

std::string MetricName(Metric metric) {
  switch (metric) {
    case Metric::kTop5: return "top5";
    case Metric::kMeanPerClass: return "mean_per_class";
    case Metric::kTop1:
    default: return "top1";
  }
}

double MetricValue(const v1::ProbeResult& result, Metric metric) {
  switch (metric) {
    case Metric::kTop5: return result.top5();
    case Metric::kMeanPerClass: return result.mean_per_class();
    case Metric::kTop1:
    default: return result.top1();
  }
}

MetricTable BuildMetricTable(const v1::StudySpec& spec,
                             const std::vector<v1::ProbeResult>& results,
                             Metric metric) {
  std::map<std::string, std::pair<int, v1::DatasetRole>> datasets;  // name -> (order, role)
  for (int i = 0; i < spec.datasets_size(); ++i) {
    datasets.emplace(spec.datasets(i).name(), std::make_pair(i, spec.datasets(i).role()));
  }
  std::map<std::string, int> protocols;
  for (int i = 0; i < spec.protocols_size(); ++i) protocols.emplace(spec.protocols(i).name(), i);

  // Columns in display order: role, then the spec's order of datasets and
  // protocols (names the spec lacks after the rest), then variant and subset.
  using Key = std::tuple<int, int, std::string, int, std::string, std::string, std::string>;
  std::map<Key, std::map<std::string, double>> cells;  // column -> model -> value
  std::map<Key, v1::CorrelationColumn> columns;
  std::map<std::string, int> models;
  for (const v1::ProbeResult& r : results) {
    const double value = MetricValue(r, metric);
    if (!std::isfinite(value)) continue;
    const std::string subset = r.subset().empty() ? "full" : r.subset();
    auto d = datasets.find(r.dataset());
    const v1::DatasetRole role =
        d == datasets.end() ? v1::DATASET_ROLE_UNSPECIFIED : d->second.second;
    const int dataset_order =
        d == datasets.end() ? spec.datasets_size() : d->second.first;
    auto p = protocols.find(r.protocol());
    const int protocol_order =
        p == protocols.end() ? spec.protocols_size() : p->second;
    const Key key{RoleOrder(role), dataset_order, r.dataset(), protocol_order,
                  r.protocol(), r.variant(), subset};
    auto [it, inserted] = columns.try_emplace(key);
    if (inserted) {
      v1::CorrelationColumn& c = it->second;
      c.set_protocol(r.protocol());
      c.set_variant(r.variant());
      c.set_subset(subset);
      c.set_dataset(r.dataset());
      c.set_role(role);
      c.set_label(Label(c));
    }
    cells[key][r.model()] = value;  // results come in storage order: the last wins
    models.emplace(r.model(), 0);
  }

  MetricTable table;
  for (auto& [name, index] : models) {
    index = static_cast<int>(table.models.size());
    table.models.push_back(name);
  }
  for (auto& [key, column] : columns) {
    const auto& by_model = cells[key];
    column.set_models(static_cast<int32_t>(by_model.size()));
    std::vector<double> values(table.models.size(), kNaN);
    for (const auto& [model, value] : by_model) values[models[model]] = value;
    table.columns.push_back(std::move(column));
    table.values.push_back(std::move(values));
  }
  return table;
}

absl::Status AddGroups(const v1::StudySpec& spec, const std::vector<v1::ProbeResult>& results,
                       const AnalysisOptions& options, v1::CorrelateResponse& response);

absl::StatusOr<v1::CorrelateResponse> AnalyzeStudy(
    const v1::StudySpec& spec, const std::vector<v1::ProbeResult>& results,
    const AnalysisOptions& options) {
  MetricTable table = BuildMetricTable(spec, results, options.metric);
  if (table.models.size() < static_cast<size_t>(kMinModels)) {
    return absl::FailedPreconditionError(absl::StrCat(
        table.models.size(), " model(s) have ", MetricName(options.metric),
        " results; correlations need at least ", kMinModels,
        " (wait for more tasks to finish)"));
  }

  v1::CorrelateResponse response;
  response.set_metric(MetricName(options.metric));
  response.set_bootstrap_resamples(options.bootstrap_resamples);
  response.set_seed(options.seed);
  for (const std::string& m : table.models) response.add_models(m);
  for (const auto& c : table.columns) *response.add_columns() = c;

  const size_t num_columns = table.columns.size();
  // pair_index[x][y] (x < y): index into response.pairs, or -1.
  std::vector<std::vector<int>> pair_index(num_columns, std::vector<int>(num_columns, -1));
  std::vector<double> x, y;
  for (size_t a = 0; a < num_columns; ++a) {
    for (size_t b = a + 1; b < num_columns; ++b) {
      x.clear();
      y.clear();
      for (size_t m = 0; m < table.models.size(); ++m) {
        const double va = table.values[a][m];
        const double vb = table.values[b][m];
        if (std::isnan(va) || std::isnan(vb)) continue;
        x.push_back(va);
        y.push_back(vb);
      }
      if (x.size() < static_cast<size_t>(kMinModels)) continue;
      BootstrapOptions bootstrap;
      bootstrap.resamples = options.bootstrap_resamples;
      // A per-pair stream: splitmix the seed with the two labels.
      bootstrap.seed = SplitMix64(options.seed ^
                                  StableHash(table.columns[a].label()) ^
                                  (StableHash(table.columns[b].label()) * 0x9e3779b97f4a7c15ULL))
                           .Next();
      const PairCorrelation pc = Correlate(x, y, bootstrap);
      pair_index[a][b] = response.pairs_size();
      v1::ColumnPair* pair = response.add_pairs();
      pair->set_x(static_cast<int32_t>(a));
      pair->set_y(static_cast<int32_t>(b));
      pair->set_n(pc.n);
      Fill(pc.pearson, pair->mutable_pearson());
      Fill(pc.spearman, pair->mutable_spearman());
      Fill(pc.kendall, pair->mutable_kendall());
    }
  }

  std::vector<v1::Predictor> predictors;
  for (size_t a = 0; a < num_columns; ++a) {
    if (table.columns[a].role() != v1::DATASET_ROLE_IN_DOMAIN) continue;
    v1::Predictor p;
    p.set_column(static_cast<int32_t>(a));
    double sum_tau = 0, sum_rho = 0;
    double min_tau = kNaN, max_tau = kNaN;
    int targets = 0;
    for (size_t b = 0; b < num_columns; ++b) {
      if (table.columns[b].role() != v1::DATASET_ROLE_OUT_OF_DOMAIN) continue;
      const int index = a < b ? pair_index[a][b] : pair_index[b][a];
      if (index < 0) continue;
      const v1::ColumnPair& pair = response.pairs(index);
      const double tau = pair.kendall().value();
      const double rho = pair.spearman().value();
      // Both are undefined together (a constant column), or both defined.
      if (std::isnan(tau) || std::isnan(rho)) continue;
      sum_tau += tau;
      sum_rho += rho;
      min_tau = targets == 0 ? tau : std::min(min_tau, tau);
      max_tau = targets == 0 ? tau : std::max(max_tau, tau);
      ++targets;
    }
    p.set_targets(targets);
    p.set_mean_kendall(targets > 0 ? sum_tau / targets : kNaN);
    p.set_mean_spearman(targets > 0 ? sum_rho / targets : kNaN);
    p.set_min_kendall(min_tau);
    p.set_max_kendall(max_tau);
    predictors.push_back(std::move(p));
  }
  std::stable_sort(predictors.begin(), predictors.end(),
                   [](const v1::Predictor& l, const v1::Predictor& r) {
                     const bool ln = std::isnan(l.mean_kendall());
                     const bool rn = std::isnan(r.mean_kendall());
                     if (ln != rn) return rn;  // defined ones first
                     if (ln) return false;
                     if (l.mean_kendall() != r.mean_kendall()) {
                       return l.mean_kendall() > r.mean_kendall();
                     }
                     return l.mean_spearman() > r.mean_spearman();
                   });
  for (auto& p : predictors) *response.add_predictors() = std::move(p);
  if (!options.group_by.empty()) RETURN_IF_ERROR(AddGroups(spec, results, options, response));
  return response;
}

absl::Status AddGroups(const v1::StudySpec& spec, const std::vector<v1::ProbeResult>& results,
                       const AnalysisOptions& options, v1::CorrelateResponse& response) {
  std::vector<std::string> labels = absl::StrSplit(options.group_by, ',', absl::SkipEmpty());
  for (const std::string& label : labels) {
    if (label != "backbone" && label != "method" && label != "family") {
      return absl::InvalidArgumentError(absl::StrCat(
          "group_by: \"", label, "\" is not a model label (backbone, method, family)"));
    }
  }
  std::map<std::string, std::string> group_of;  // model name -> group value
  for (const v1::ModelSpec& m : spec.models()) {
    std::vector<std::string> parts;
    for (const std::string& label : labels) {
      const std::string& v = label == "backbone" ? m.backbone()
                             : label == "method" ? m.method()
                                                 : m.family();
      parts.push_back(v.empty() ? "(none)" : v);
    }
    group_of[m.name()] = absl::StrJoin(parts, "/");
  }
  response.set_group_by(absl::StrJoin(labels, ","));
  std::map<std::string, int> column_index;
  for (int c = 0; c < response.columns_size(); ++c) column_index[response.columns(c).label()] = c;
  std::map<std::string, std::vector<v1::ProbeResult>> by_group;
  for (const v1::ProbeResult& r : results) {
    auto it = group_of.find(r.model());
    by_group[it == group_of.end() ? "(none)" : it->second].push_back(r);
  }
  for (const auto& [value, members] : by_group) {
    const MetricTable table = BuildMetricTable(spec, members, options.metric);
    if (table.models.empty()) continue;
    v1::GroupSummary* group = response.add_groups();
    group->set_value(value);
    for (const std::string& m : table.models) group->add_models(m);
    std::vector<double> means(response.columns_size(), kNaN);
    for (size_t c = 0; c < table.columns.size(); ++c) {
      double sum = 0;
      int n = 0;
      for (double v : table.values[c]) {
        if (std::isnan(v)) continue;
        sum += v;
        ++n;
      }
      auto it = column_index.find(table.columns[c].label());
      if (n > 0 && it != column_index.end()) means[it->second] = sum / n;
    }
    for (double m : means) group->add_column_means(m);
    if (table.models.size() < static_cast<size_t>(kMinModels)) continue;
    AnalysisOptions inner = options;
    inner.group_by.clear();
    inner.bootstrap_resamples = 0;
    absl::StatusOr<v1::CorrelateResponse> within = AnalyzeStudy(spec, members, inner);
    if (!within.ok()) continue;
    for (v1::Predictor p : within->predictors()) {
      auto it = column_index.find(within->columns(p.column()).label());
      if (it == column_index.end()) continue;
      p.set_column(it->second);
      *group->add_predictors() = std::move(p);
    }
  }
  return absl::OkStatus();
}

}  // namespace sslbench::server::analysis
