#include "client/format.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace sslbench::client {
namespace {

// Terminal columns of UTF-8 text ("±" is two bytes, one column): counts the
// bytes that start a character.
size_t DisplayWidth(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Left-aligned text columns, right-aligned numeric ones, two spaces apart.
std::string Table(const std::vector<std::string>& header,
                  const std::vector<bool>& right_aligned,
                  const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = DisplayWidth(header[c]);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < width.size(); ++c) {
      width[c] = std::max(width[c], DisplayWidth(row[c]));
    }
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t c = 0; c < width.size(); ++c) {
      const std::string& cell = c < cells.size() ? cells[c] : "";
      const std::string pad(width[c] - std::min(width[c], DisplayWidth(cell)), ' ');
      if (c > 0) out += "  ";
      out += right_aligned[c] ? pad + cell : cell + (c + 1 < width.size() ? pad : "");
    }
    return out + "\n";
  };
  std::string out = line(header);
  for (const auto& row : rows) out += line(row);
  return out;
}

std::string Percent(double fraction) { return absl::StrFormat("%.2f", 100.0 * fraction); }

// "71.23", or "71.23 ± 0.45" for a mean over several seeds.
std::string Metric(double mean, double stddev, int num_seeds) {
  if (num_seeds <= 1) return Percent(mean);
  return absl::StrCat(Percent(mean), " \u00b1 ", Percent(stddev));
}

std::string Number(double v) { return absl::StrFormat("%.6g", v); }

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string WithThousands(int64_t n) {
  std::string digits = absl::StrCat(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

int64_t Finished(const v1::TaskProgress& p) {
  return p.succeeded() + p.failed() + p.cancelled();
}

std::string Counts(const v1::TaskProgress& p) {
  std::string out = absl::StrCat(p.succeeded(), "/", p.total(), " done");
  if (p.leased() > 0) absl::StrAppend(&out, ", ", p.leased(), " running");
  if (p.pending() > 0) absl::StrAppend(&out, ", ", p.pending(), " pending");
  if (p.failed() > 0) absl::StrAppend(&out, ", ", p.failed(), " failed");
  if (p.cancelled() > 0) absl::StrAppend(&out, ", ", p.cancelled(), " cancelled");
  if (p.reused() > 0) absl::StrAppend(&out, ", ", p.reused(), " reused");
  return out;
}

}  // namespace

std::string StudyStateName(v1::StudyState state) {
  switch (state) {
    case v1::STUDY_STATE_RUNNING:
      return "RUNNING";
    case v1::STUDY_STATE_SUCCEEDED:
      return "SUCCEEDED";
    case v1::STUDY_STATE_FAILED:
      return "FAILED";
    case v1::STUDY_STATE_CANCELLED:
      return "CANCELLED";
    default:
      return "UNKNOWN";
  }
}

std::string TaskKindName(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_EXTRACT:
      return "extract";
    case v1::TASK_KIND_KNN:
      return "knn";
    case v1::TASK_KIND_LINEAR:
      return "linear";
    case v1::TASK_KIND_LOGREG:
      return "logreg";
    case v1::TASK_KIND_FINETUNE:
      return "finetune";
    default:
      return absl::StrCat("kind", static_cast<int>(kind));
  }
}

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "--";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%d:%02d", s / 60, s % 60);
  return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
}

std::string FormatResultsTable(const v1::ListResultsResponse& results) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : results.results()) {
    rows.push_back({r.model(), r.dataset(), r.protocol(), r.variant(),
                    r.subset().empty() ? "full" : r.subset(),
                    Metric(r.top1(), r.top1_std(), r.num_seeds()),
                    Metric(r.top5(), r.top5_std(), r.num_seeds()),
                    Metric(r.mean_per_class(), r.mean_per_class_std(), r.num_seeds()),
                    r.artifact_id() > 0 ? absl::StrCat(r.artifact_id()) : "-"});
  }
  return Table({"model", "dataset", "protocol", "variant", "subset", "top1 %", "top5 %",
                "mean-per-class %", "artifact"},
               {false, false, false, false, false, true, true, true, true}, rows);
}

std::string FormatResultsCsv(const v1::ListResultsResponse& results) {
  std::string out =
      "study_id,task_id,model,dataset,protocol,variant,subset,num_seeds,top1,top1_std,"
      "top5,top5_std,mean_per_class,mean_per_class_std,seed_top1,artifact_id,per_class,"
      "config_json\n";
  auto numbers = [](const google::protobuf::RepeatedField<double>& values) {
    return absl::StrJoin(values, ";",
                         [](std::string* o, double v) { absl::StrAppend(o, Number(v)); });
  };
  for (const auto& r : results.results()) {
    absl::StrAppend(&out, r.study_id(), ",", r.task_id(), ",", CsvField(r.model()), ",",
                    CsvField(r.dataset()), ",", CsvField(r.protocol()), ",",
                    CsvField(r.variant()), ",", CsvField(r.subset()), ",");
    absl::StrAppend(&out, r.num_seeds(), ",", Number(r.top1()), ",", Number(r.top1_std()),
                    ",", Number(r.top5()), ",", Number(r.top5_std()), ",",
                    Number(r.mean_per_class()), ",", Number(r.mean_per_class_std()), ",");
    absl::StrAppend(&out, CsvField(numbers(r.seed_top1())), ",", r.artifact_id(), ",",
                    CsvField(numbers(r.per_class())), ",", CsvField(r.config_json()),
                    "\n");
  }
  return out;
}

std::string FormatResultsJson(const v1::ListResultsResponse& results) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(results, &out, options).ok()) {
    return "{}\n";
  }
  if (out.empty() || out.back() != '\n') out += "\n";
  return out;
}

absl::StatusOr<std::string> FormatResults(const v1::ListResultsResponse& results,
                                          const std::string& format) {
  if (format == "table") return FormatResultsTable(results);
  if (format == "csv") return FormatResultsCsv(results);
  if (format == "json") return FormatResultsJson(results);
  return absl::InvalidArgumentError(
      absl::StrCat("--format=", format, " is not one of table, csv, json"));
}

std::string FormatWorkersTable(const v1::ListWorkersResponse& workers, double now_unix) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& w : workers.workers()) {
    rows.push_back({absl::StrCat(w.worker_id()), w.name(), w.hostname(), w.device(),
                    w.alive() ? "yes" : "no",
                    w.last_seen_unix() > 0
                        ? FormatDuration(std::max(0.0, now_unix - w.last_seen_unix())) +
                              " ago"
                        : "never",
                    w.current_task_id() > 0 ? absl::StrCat(w.current_task_id()) : "-"});
  }
  if (rows.empty()) return "no workers registered\n";
  return Table({"id", "name", "host", "device", "alive", "last seen", "task"},
               {true, false, false, false, false, false, true}, rows);
}

std::string FormatStudyStatus(const v1::StudyStatus& status) {
  std::string out = absl::StrCat("study ", status.study_id(), " \"", status.name(),
                                 "\": ", StudyStateName(status.state()), " after ",
                                 FormatDuration(status.elapsed_seconds()), "\n");
  for (const auto& p : status.progress()) {
    absl::StrAppend(&out, "  ", absl::StrFormat("%-8s", TaskKindName(p.kind())),
                    Counts(p));
    if (p.work_total() > 0) {
      absl::StrAppend(&out, " (running work ", WithThousands(p.work_done()), "/",
                      WithThousands(p.work_total()), ")");
    }
    out += "\n";
  }
  if (!status.error().empty()) absl::StrAppend(&out, "  error: ", status.error(), "\n");
  return out;
}

double ProgressBars::Fraction(const v1::TaskProgress& p) {
  if (p.total() <= 0) return 1.0;
  double done = static_cast<double>(Finished(p));
  if (p.work_total() > 0 && p.leased() > 0) {
    done += p.leased() * std::min(1.0, static_cast<double>(p.work_done()) /
                                           static_cast<double>(p.work_total()));
  }
  return std::clamp(done / static_cast<double>(p.total()), 0.0, 1.0);
}

std::vector<std::string> ProgressBars::Lines(const v1::StudyStatus& status,
                                             absl::Time now) {
  std::vector<std::string> lines;
  for (const auto& p : status.progress()) {
    const double f = Fraction(p);
    const int filled = static_cast<int>(std::floor(f * bar_width_));
    std::string bar = absl::StrCat("[", std::string(filled, '#'),
                                   std::string(bar_width_ - filled, '.'), "]");
    std::string eta;
    const bool active = p.leased() > 0 || Finished(p) > 0;
    auto origin = origins_.find(p.kind());
    if (Finished(p) >= p.total()) {
      eta = "";
    } else if (!active) {
      eta = "  waiting";
    } else if (origin == origins_.end()) {
      origins_[p.kind()] = Origin{now, f};
      eta = "  ETA --";
    } else {
      const double seconds = absl::ToDoubleSeconds(now - origin->second.time);
      const double gained = f - origin->second.fraction;
      eta = gained > 0 && seconds >= 1
                ? absl::StrCat("  ETA ", FormatDuration(seconds * (1 - f) / gained))
                : "  ETA --";
    }
    std::string work;
    if (p.leased() > 0 && p.work_total() > 0) {
      work = absl::StrCat("  work ", WithThousands(p.work_done()), "/",
                          WithThousands(p.work_total()));
    }
    lines.push_back(absl::StrCat(absl::StrFormat("%-8s", TaskKindName(p.kind())), bar,
                                 absl::StrFormat(" %3d%%  ", static_cast<int>(100 * f)),
                                 Counts(p), work, eta));
  }
  return lines;
}

namespace {

std::string Coef(double v) {
  return std::isnan(v) ? "n/a" : absl::StrFormat("%.3f", v);
}

// "0.812 [0.701, 0.903]"; the bare value when there is no interval.
std::string CoefWithInterval(const v1::Coefficient& c) {
  if (std::isnan(c.value())) return "n/a";
  if (std::isnan(c.ci_low()) || std::isnan(c.ci_high())) return Coef(c.value());
  return absl::StrCat(Coef(c.value()), " [", Coef(c.ci_low()), ", ", Coef(c.ci_high()),
                      "]");
}

std::string CsvNumber(double v) {
  return std::isnan(v) ? "" : absl::StrFormat("%.17g", v);
}

const v1::CorrelationColumn& ColumnAt(const v1::CorrelateResponse& response, int index) {
  static const v1::CorrelationColumn* const kEmpty = new v1::CorrelationColumn();
  return index >= 0 && index < response.columns_size() ? response.columns(index) : *kEmpty;
}

std::string ColumnCsv(const v1::CorrelationColumn& c) {
  return absl::StrCat(CsvField(c.protocol()), ",", CsvField(c.variant()), ",",
                      CsvField(c.subset()), ",", CsvField(c.dataset()));
}

// The in-domain columns ranked as predictors, one row each.
std::string PredictorTable(const v1::CorrelateResponse& response) {
  std::vector<std::vector<std::string>> rows;
  int rank = 0;
  for (const auto& p : response.predictors()) {
    rows.push_back({absl::StrCat(++rank), ColumnAt(response, p.column()).label(),
                    Coef(p.mean_kendall()), Coef(p.mean_spearman()), Coef(p.min_kendall()),
                    Coef(p.max_kendall()), absl::StrCat(p.targets())});
  }
  if (rows.empty()) {
    return "  (none: the study needs datasets with role in-domain and out-of-domain)\n";
  }
  return Table({"rank", "in-domain column", "mean tau-b", "mean rho", "min tau-b", "max tau-b",
                "targets"},
               {true, false, true, true, true, true, true}, rows);
}

}  // namespace

std::string FormatCorrelationTable(const v1::CorrelateResponse& response) {
  std::string out = absl::StrCat("study ", response.study_id(), ": ", response.metric(),
                                 " over ", response.models_size(), " models, ",
                                 response.columns_size(), " columns");
  if (response.bootstrap_resamples() > 0) {
    absl::StrAppend(&out, "; 95% bootstrap intervals from ", response.bootstrap_resamples(),
                    " resamples of the models (seed ", response.seed(), ")");
  }
  out += "\n\nin-domain columns as predictors of out-of-domain accuracy\n";
  out += PredictorTable(response);
  out += "\npairs of columns (models in common: n)\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& pair : response.pairs()) {
    rows.push_back({ColumnAt(response, pair.x()).label(), ColumnAt(response, pair.y()).label(),
                    absl::StrCat(pair.n()), CoefWithInterval(pair.pearson()),
                    CoefWithInterval(pair.spearman()), CoefWithInterval(pair.kendall())});
  }
  if (rows.empty()) {
    out += "  (none: no two columns have 3 models in common)\n";
  } else {
    out += Table({"x", "y", "n", "pearson", "spearman", "kendall tau-b"},
                 {false, false, true, true, true, true}, rows);
  }
  if (response.groups_size() > 0) {
    // Per group: mean accuracy in and out of domain, and the best predictor
    // within the group (is a family's edge the backbone's?).
    absl::StrAppend(&out, "\nby ", response.group_by(),
                    " (mean over the group's models and its columns of each role)\n");
    rows.clear();
    for (const v1::GroupSummary& g : response.groups()) {
      double in_sum = 0, out_sum = 0;
      int in_n = 0, out_n = 0;
      for (int c = 0; c < g.column_means_size() && c < response.columns_size(); ++c) {
        const double v = g.column_means(c);
        if (std::isnan(v)) continue;
        if (response.columns(c).role() == v1::DATASET_ROLE_IN_DOMAIN) {
          in_sum += v;
          ++in_n;
        } else if (response.columns(c).role() == v1::DATASET_ROLE_OUT_OF_DOMAIN) {
          out_sum += v;
          ++out_n;
        }
      }
      std::string best = "(fewer than 3 models)";
      if (g.predictors_size() > 0) {
        const v1::Predictor& p = g.predictors(0);
        best = absl::StrCat(ColumnAt(response, p.column()).label(), " tau-b ",
                            Coef(p.mean_kendall()));
      }
      rows.push_back({g.value(), absl::StrCat(g.models_size()),
                      in_n > 0 ? absl::StrFormat("%.4f", in_sum / in_n) : "-",
                      out_n > 0 ? absl::StrFormat("%.4f", out_sum / out_n) : "-", best});
    }
    out += Table({response.group_by(), "models", "in-domain", "out-of-domain",
                  "best predictor within"},
                 {false, true, true, true, false}, rows);
  }
  return out;
}

std::string FormatCorrelationCsv(const v1::CorrelateResponse& response) {
  std::string out =
      "rank,protocol,variant,subset,dataset,mean_kendall,mean_spearman,min_kendall,"
      "max_kendall,targets\n";
  int rank = 0;
  for (const auto& p : response.predictors()) {
    absl::StrAppend(&out, ++rank, ",", ColumnCsv(ColumnAt(response, p.column())), ",",
                    CsvNumber(p.mean_kendall()), ",", CsvNumber(p.mean_spearman()), ",",
                    CsvNumber(p.min_kendall()), ",", CsvNumber(p.max_kendall()), ",",
                    p.targets(), "\n");
  }
  out +=
      "\nx_protocol,x_variant,x_subset,x_dataset,y_protocol,y_variant,y_subset,y_dataset,n,"
      "pearson,pearson_ci_low,pearson_ci_high,spearman,spearman_ci_low,spearman_ci_high,"
      "kendall,kendall_ci_low,kendall_ci_high\n";
  for (const auto& pair : response.pairs()) {
    absl::StrAppend(&out, ColumnCsv(ColumnAt(response, pair.x())), ",",
                    ColumnCsv(ColumnAt(response, pair.y())), ",", pair.n());
    for (const v1::Coefficient* c : {&pair.pearson(), &pair.spearman(), &pair.kendall()}) {
      absl::StrAppend(&out, ",", CsvNumber(c->value()), ",", CsvNumber(c->ci_low()), ",",
                      CsvNumber(c->ci_high()));
    }
    out += "\n";
  }
  return out;
}

std::string FormatCorrelationJson(const v1::CorrelateResponse& response) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(response, &out, options).ok()) {
    return "{}\n";
  }
  if (out.empty() || out.back() != '\n') out += "\n";
  return out;
}

absl::StatusOr<std::string> FormatCorrelation(const v1::CorrelateResponse& response,
                                              const std::string& format) {
  if (format == "table") return FormatCorrelationTable(response);
  if (format == "csv") return FormatCorrelationCsv(response);
  if (format == "json") return FormatCorrelationJson(response);
  return absl::InvalidArgumentError(
      absl::StrCat("--format=", format, " is not one of table, csv, json"));
}

std::string FormatModelAccuracy(const v1::StudySpec& spec, const v1::ListResultsResponse& results,
                                const std::string& protocol) {
  // top1 of `protocol` on the full train split, by (model, dataset).
  std::map<std::pair<std::string, std::string>, double> top1;
  for (const v1::ProbeResult& r : results.results()) {
    if (r.protocol() != protocol || (!r.subset().empty() && r.subset() != "full")) continue;
    top1.emplace(std::make_pair(r.model(), r.dataset()), r.top1());
  }
  std::string in_domain;
  for (const v1::DatasetSpec& d : spec.datasets()) {
    if (d.role() == v1::DATASET_ROLE_IN_DOMAIN) {
      in_domain = d.name();
      break;
    }
  }
  struct Row {
    double key;
    std::vector<std::string> cells;
  };
  std::vector<Row> rows;
  for (const v1::ModelSpec& m : spec.models()) {
    Row row;
    auto own = top1.find({m.name(), in_domain});
    row.key = own == top1.end() ? -1 : own->second;
    row.cells = {m.name(), m.family()};
    double sum = 0;
    int n = 0;
    for (const v1::DatasetSpec& d : spec.datasets()) {
      auto it = top1.find({m.name(), d.name()});
      row.cells.push_back(it == top1.end() ? "-" : absl::StrFormat("%.4f", it->second));
      if (it != top1.end() && d.role() == v1::DATASET_ROLE_OUT_OF_DOMAIN) {
        sum += it->second;
        ++n;
      }
    }
    row.cells.push_back(n > 0 ? absl::StrFormat("%.4f", sum / n) : "-");
    rows.push_back(std::move(row));
  }
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.key > b.key; });
  std::vector<std::string> header = {"model", "family"};
  std::vector<bool> right = {false, false};
  for (const v1::DatasetSpec& d : spec.datasets()) {
    header.push_back(d.name());
    right.push_back(true);
  }
  header.push_back("mean out-of-domain");
  right.push_back(true);
  std::vector<std::vector<std::string>> cells;
  for (Row& r : rows) cells.push_back(std::move(r.cells));
  return absl::StrCat(protocol, " top-1 by model (sorted by ", in_domain.empty() ? "?" : in_domain,
                      ")\n", Table(header, right, cells));
}

std::string FormatPredictorRanking(const v1::CorrelateResponse& response) {
  return absl::StrCat("in-domain protocols as predictors of out-of-domain accuracy (",
                      response.metric(), ", ", response.models_size(), " models)\n",
                      PredictorTable(response));
}

}  // namespace sslbench::client
