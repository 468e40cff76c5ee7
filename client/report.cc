#include "client/report.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "server/analysis/correlation.h"
#include "server/analysis/study_analysis.h"

namespace sslbench::client {
namespace {

namespace analysis = ::sslbench::server::analysis;

constexpr char kFont[] = "font-family=\"sans-serif\"";
// Colour-blind-safe categorical palette (Okabe-Ito), then greys.
const char* const kPalette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00",
                                "#56B4E9", "#F0E442", "#000000", "#999999", "#666666"};

std::string Esc(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string F(double v, int digits = 1) { return absl::StrFormat("%.*f", digits, v); }

std::string Coef(double v) { return std::isnan(v) ? "n/a" : absl::StrFormat("%.3f", v); }

// Diverging blue-white-red for a coefficient in [-1, 1]; grey for NaN.
std::string TauColour(double t) {
  if (std::isnan(t)) return "#dddddd";
  t = std::clamp(t, -1.0, 1.0);
  const double white[3] = {247, 247, 247};
  const double red[3] = {178, 24, 43};
  const double blue[3] = {33, 102, 172};
  const double* end = t >= 0 ? red : blue;
  const double a = std::abs(t);
  int rgb[3];
  for (int i = 0; i < 3; ++i) rgb[i] = static_cast<int>(std::lround(white[i] + (end[i] - white[i]) * a));
  return absl::StrFormat("#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

struct Range {
  double lo = 0, hi = 1;
};

// Padded range of `values` (NaN ignored), at least `min_span` wide.
Range RangeOf(const std::vector<double>& values, double min_span = 0.02) {
  double lo = INFINITY, hi = -INFINITY;
  for (double v : values) {
    if (std::isnan(v)) continue;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (!std::isfinite(lo)) return {};
  if (hi - lo < min_span) {
    const double mid = (hi + lo) / 2;
    lo = mid - min_span / 2;
    hi = mid + min_span / 2;
  }
  const double pad = (hi - lo) * 0.08;
  return {lo - pad, hi + pad};
}

// Axes with 5 ticks each, into a plot area at (left, top) of size w x h.
std::string Axes(double left, double top, double w, double h, Range x, Range y,
                 const std::string& x_label, const std::string& y_label, bool log_x = false) {
  std::string out;
  absl::StrAppend(&out, "<rect x=\"", F(left), "\" y=\"", F(top), "\" width=\"", F(w),
                  "\" height=\"", F(h), "\" fill=\"none\" stroke=\"#888\"/>");
  for (int i = 0; i <= 4; ++i) {
    const double fx = x.lo + (x.hi - x.lo) * i / 4;
    const double px = left + w * i / 4;
    const std::string xt = log_x ? absl::StrFormat("%.3g", std::pow(10.0, fx)) : absl::StrFormat("%.3g", fx);
    absl::StrAppend(&out, "<line x1=\"", F(px), "\" y1=\"", F(top + h), "\" x2=\"", F(px), "\" y2=\"",
                    F(top + h + 4), "\" stroke=\"#888\"/><text x=\"", F(px), "\" y=\"", F(top + h + 16),
                    "\" font-size=\"10\" text-anchor=\"middle\" ", kFont, ">", xt, "</text>");
    const double fy = y.lo + (y.hi - y.lo) * i / 4;
    const double py = top + h - h * i / 4;
    absl::StrAppend(&out, "<line x1=\"", F(left - 4), "\" y1=\"", F(py), "\" x2=\"", F(left), "\" y2=\"",
                    F(py), "\" stroke=\"#888\"/><text x=\"", F(left - 6), "\" y=\"", F(py + 3),
                    "\" font-size=\"10\" text-anchor=\"end\" ", kFont, ">",
                    absl::StrFormat("%.3g", fy), "</text>");
  }
  absl::StrAppend(&out, "<text x=\"", F(left + w / 2), "\" y=\"", F(top + h + 32),
                  "\" font-size=\"11\" text-anchor=\"middle\" ", kFont, ">", Esc(x_label), "</text>");
  absl::StrAppend(&out, "<text x=\"", F(left - 42), "\" y=\"", F(top + h / 2),
                  "\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 ", F(left - 42), " ",
                  F(top + h / 2), ")\" ", kFont, ">", Esc(y_label), "</text>");
  return out;
}

std::map<std::string, const v1::ModelSpec*> ModelsByName(const v1::StudySpec& spec) {
  std::map<std::string, const v1::ModelSpec*> out;
  for (const v1::ModelSpec& m : spec.models()) out[m.name()] = &m;
  return out;
}

// Colour per family (or per model when no model has a family).
class Colours {
 public:
  explicit Colours(const v1::StudySpec& spec) {
    bool families = false;
    for (const v1::ModelSpec& m : spec.models()) families |= !m.family().empty();
    for (const v1::ModelSpec& m : spec.models()) {
      const std::string key = families ? (m.family().empty() ? "(none)" : m.family()) : m.name();
      key_of_[m.name()] = key;
      if (index_.emplace(key, static_cast<int>(order_.size())).second) order_.push_back(key);
    }
  }
  std::string Of(const std::string& model) const {
    auto it = key_of_.find(model);
    const int i = it == key_of_.end() ? 9 : index_.at(it->second);
    return kPalette[std::min(i, 9)];
  }
  // Legend at (x, y), one row per key.
  std::string Legend(double x, double y) const {
    std::string out;
    for (size_t i = 0; i < order_.size(); ++i) {
      const double ry = y + 14.0 * i;
      absl::StrAppend(&out, "<circle cx=\"", F(x + 5), "\" cy=\"", F(ry - 4), "\" r=\"4\" fill=\"",
                      kPalette[std::min<size_t>(i, 9)], "\"/><text x=\"", F(x + 13), "\" y=\"", F(ry),
                      "\" font-size=\"10\" ", kFont, ">", Esc(order_[i]), "</text>");
    }
    return out;
  }
  size_t size() const { return order_.size(); }

 private:
  std::map<std::string, std::string> key_of_;
  std::map<std::string, int> index_;
  std::vector<std::string> order_;
};

// "5-shot" -> 5, "10%" -> 10; false otherwise.
bool SubsetX(const std::string& subset, double* x, bool* percent) {
  absl::string_view s = subset;
  if (absl::ConsumeSuffix(&s, "-shot")) {
    *percent = false;
    return absl::SimpleAtod(s, x) && *x > 0;
  }
  if (absl::ConsumeSuffix(&s, "%")) {
    *percent = true;
    return absl::SimpleAtod(s, x) && *x > 0;
  }
  return false;
}

// The models grouped by a label (CorrelateResponse.groups): mean top-1 in
// and out of domain, and the best predictor within each group.
std::string GroupTable(const v1::CorrelateResponse& c) {
  if (c.groups_size() == 0) return "";
  std::string out = absl::StrCat("<h3>By ", Esc(c.group_by()),
                                 "</h3>\n<table id=\"groups\"><tr><th>", Esc(c.group_by()),
                                 "</th><th>models</th><th>mean in-domain</th>"
                                 "<th>mean out-of-domain</th><th>best predictor within</th></tr>\n");
  for (const v1::GroupSummary& g : c.groups()) {
    double sums[2] = {0, 0};
    int counts[2] = {0, 0};
    for (int k = 0; k < g.column_means_size() && k < c.columns_size(); ++k) {
      const double v = g.column_means(k);
      if (std::isnan(v)) continue;
      const v1::DatasetRole role = c.columns(k).role();
      if (role != v1::DATASET_ROLE_IN_DOMAIN && role != v1::DATASET_ROLE_OUT_OF_DOMAIN) continue;
      const int r = role == v1::DATASET_ROLE_IN_DOMAIN ? 0 : 1;
      sums[r] += v;
      ++counts[r];
    }
    std::string best = "fewer than 3 models";
    if (g.predictors_size() > 0) {
      const v1::Predictor& p = g.predictors(0);
      best = absl::StrCat(Esc(c.columns(p.column()).label()), " (tau-b ", Coef(p.mean_kendall()), ")");
    }
    absl::StrAppend(&out, "<tr><td>", Esc(g.value()), "</td><td>", Esc(absl::StrJoin(g.models(), ", ")),
                    "</td><td class=\"n\">",
                    counts[0] > 0 ? absl::StrFormat("%.4f", sums[0] / counts[0]) : "-",
                    "</td><td class=\"n\">",
                    counts[1] > 0 ? absl::StrFormat("%.4f", sums[1] / counts[1]) : "-", "</td><td>",
                    best, "</td></tr>\n");
  }
  return out + "</table>\n";
}

}  // namespace

std::string ScatterFromTable(const ReportInput& input, const analysis::MetricTable& table,
                             int predictor);

std::string HeatmapSvg(const v1::CorrelateResponse& c) {
  const int n = c.columns_size();
  size_t longest = 0;
  for (const auto& col : c.columns()) longest = std::max(longest, col.label().size());
  const double cell = std::clamp(520.0 / std::max(n, 1), 8.0, 26.0);
  const double label = 12 + 6.0 * static_cast<double>(longest);
  const double width = label + n * cell + 90, height = label + n * cell + 20;
  std::map<std::pair<int, int>, const v1::ColumnPair*> pairs;
  for (const auto& p : c.pairs()) pairs[{p.x(), p.y()}] = &p;
  std::string out = absl::StrCat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"figure\" id=\"heatmap\" width=\"", F(width),
      "\" height=\"", F(height), "\" viewBox=\"0 0 ", F(width), " ", F(height), "\">");
  absl::StrAppend(&out, "<title>Kendall tau-b between result columns over ", c.models_size(),
                  " models</title>");
  for (int i = 0; i < n; ++i) {
    const std::string& li = c.columns(i).label();
    const double y = label + i * cell;
    absl::StrAppend(&out, "<text x=\"", F(label - 4), "\" y=\"", F(y + cell / 2 + 3.5),
                    "\" font-size=\"10\" text-anchor=\"end\" ", kFont, ">", Esc(li), "</text>");
    const double x = label + i * cell + cell / 2 + 3.5;
    absl::StrAppend(&out, "<text x=\"", F(x), "\" y=\"", F(label - 4),
                    "\" font-size=\"10\" transform=\"rotate(-90 ", F(x), " ", F(label - 4), ")\" ", kFont,
                    ">", Esc(li), "</text>");
    for (int j = 0; j < n; ++j) {
      double tau = NAN, lo = NAN, hi = NAN;
      int models = 0;
      if (i == j) {
        tau = 1;
        models = c.columns(i).models();
      } else {
        auto it = pairs.find({std::min(i, j), std::max(i, j)});
        if (it != pairs.end()) {
          tau = it->second->kendall().value();
          lo = it->second->kendall().ci_low();
          hi = it->second->kendall().ci_high();
          models = it->second->n();
        }
      }
      std::string tip = absl::StrCat(li, " vs ", c.columns(j).label(), ": tau-b ", Coef(tau));
      if (!std::isnan(lo)) absl::StrAppend(&tip, " [", Coef(lo), ", ", Coef(hi), "]");
      absl::StrAppend(&tip, ", ", models, " models");
      absl::StrAppend(&out, "<rect class=\"cell\" x=\"", F(label + j * cell), "\" y=\"", F(y),
                      "\" width=\"", F(cell - 1), "\" height=\"", F(cell - 1), "\" fill=\"",
                      TauColour(tau), "\"><title>", Esc(tip), "</title></rect>");
    }
  }
  // Legend: a vertical gradient from -1 to 1.
  const double lx = label + n * cell + 20, ly = label, lh = std::max(60.0, n * cell);
  absl::StrAppend(&out,
                  "<defs><linearGradient id=\"tau-scale\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">"
                  "<stop offset=\"0\" stop-color=\"",
                  TauColour(-1), "\"/><stop offset=\"0.5\" stop-color=\"", TauColour(0),
                  "\"/><stop offset=\"1\" stop-color=\"", TauColour(1),
                  "\"/></linearGradient></defs><rect x=\"", F(lx), "\" y=\"", F(ly),
                  "\" width=\"14\" height=\"", F(lh), "\" fill=\"url(#tau-scale)\" stroke=\"#888\"/>");
  for (int k = 0; k <= 2; ++k) {
    absl::StrAppend(&out, "<text x=\"", F(lx + 18), "\" y=\"", F(ly + lh - lh * k / 2 + 3),
                    "\" font-size=\"10\" ", kFont, ">", k - 1, "</text>");
  }
  absl::StrAppend(&out, "<text x=\"", F(lx), "\" y=\"", F(ly - 6), "\" font-size=\"10\" ", kFont,
                  ">tau-b</text></svg>");
  return out;
}

std::string ScatterSvg(const ReportInput& input, int predictor) {
  return ScatterFromTable(
      input, analysis::BuildMetricTable(input.spec, input.results, analysis::Metric::kTop1),
      predictor);
}

// ScatterSvg on a metric table built once for all the scatters of a page.
std::string ScatterFromTable(const ReportInput& input, const analysis::MetricTable& table,
                             int predictor) {
  const v1::CorrelateResponse& c = input.correlation;
  if (predictor < 0 || predictor >= c.columns_size()) return "";
  const v1::CorrelationColumn& p = c.columns(predictor);
  int pc = -1;
  std::vector<int> same, any;
  for (size_t k = 0; k < table.columns.size(); ++k) {
    const v1::CorrelationColumn& col = table.columns[k];
    if (col.label() == p.label()) pc = static_cast<int>(k);
    if (col.role() != v1::DATASET_ROLE_OUT_OF_DOMAIN) continue;
    any.push_back(static_cast<int>(k));
    if (col.protocol() == p.protocol() && col.variant() == p.variant() && col.subset() == p.subset()) {
      same.push_back(static_cast<int>(k));
    }
  }
  if (pc < 0) return "";
  const std::vector<int>& targets = same.empty() ? any : same;
  std::vector<double> xs, ys;
  std::vector<std::string> names;
  for (size_t m = 0; m < table.models.size(); ++m) {
    const double x = table.values[pc][m];
    double sum = 0;
    int count = 0;
    for (int t : targets) {
      if (!std::isnan(table.values[t][m])) {
        sum += table.values[t][m];
        ++count;
      }
    }
    if (std::isnan(x) || count == 0) continue;
    xs.push_back(x);
    ys.push_back(sum / count);
    names.push_back(table.models[m]);
  }
  const Colours colours(input.spec);
  const double left = 64, top = 44, w = 400, h = 300;
  const double width = left + w + 170, height = top + h + 48;
  const double tau = xs.size() >= 3 ? analysis::KendallTauB(xs, ys) : NAN;
  const std::string y_label =
      same.empty() ? "mean top-1, all out-of-domain columns"
                   : absl::StrCat("mean top-1 out of domain (", p.protocol(),
                                  p.variant().empty() ? "" : absl::StrCat("[", p.variant(), "]"), "/",
                                  p.subset(), ", ", targets.size(), " datasets)");
  std::string out = absl::StrCat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"figure scatter\" id=\"scatter-", predictor,
      "\" width=\"", F(width), "\" height=\"", F(height), "\" viewBox=\"0 0 ", F(width), " ",
      F(height), "\">");
  absl::StrAppend(&out, "<text x=\"", F(left), "\" y=\"16\" font-size=\"12\" font-weight=\"bold\" ",
                  kFont, ">", Esc(p.label()), "</text><text x=\"", F(left),
                  "\" y=\"32\" font-size=\"11\" ", kFont, ">Kendall tau-b = ", Coef(tau), ", ",
                  xs.size(), " models</text>");
  const Range xr = RangeOf(xs), yr = RangeOf(ys);
  absl::StrAppend(&out, Axes(left, top, w, h, xr, yr, absl::StrCat("top-1 ", p.label()), y_label));
  auto px = [&](double v) { return left + (v - xr.lo) / (xr.hi - xr.lo) * w; };
  auto py = [&](double v) { return top + h - (v - yr.lo) / (yr.hi - yr.lo) * h; };
  if (xs.size() >= 2) {
    double mx = 0, my = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      mx += xs[i];
      my += ys[i];
    }
    mx /= xs.size();
    my /= ys.size();
    double sxy = 0, sxx = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      sxy += (xs[i] - mx) * (ys[i] - my);
      sxx += (xs[i] - mx) * (xs[i] - mx);
    }
    if (sxx > 0) {
      const double slope = sxy / sxx, icpt = my - slope * mx;
      absl::StrAppend(&out, "<line class=\"fit\" x1=\"", F(px(xr.lo)), "\" y1=\"", F(py(slope * xr.lo + icpt)),
                      "\" x2=\"", F(px(xr.hi)), "\" y2=\"", F(py(slope * xr.hi + icpt)),
                      "\" stroke=\"#444\" stroke-dasharray=\"5 3\" clip-path=\"url(#clip-", predictor,
                      ")\"><title>least squares: y = ", absl::StrFormat("%.3f", slope), " x + ",
                      absl::StrFormat("%.3f", icpt), "</title></line>");
    }
  }
  absl::StrAppend(&out, "<clipPath id=\"clip-", predictor, "\"><rect x=\"", F(left), "\" y=\"", F(top),
                  "\" width=\"", F(w), "\" height=\"", F(h), "\"/></clipPath>");
  for (size_t i = 0; i < xs.size(); ++i) {
    absl::StrAppend(&out, "<circle class=\"point\" cx=\"", F(px(xs[i])), "\" cy=\"", F(py(ys[i])),
                    "\" r=\"5\" fill=\"", colours.Of(names[i]), "\" fill-opacity=\"0.85\"><title>",
                    Esc(names[i]), ": ", absl::StrFormat("%.4f", xs[i]), ", ",
                    absl::StrFormat("%.4f", ys[i]), "</title></circle>");
  }
  absl::StrAppend(&out, colours.Legend(left + w + 16, top + 8), "</svg>");
  return out;
}

std::string FewShotSvg(const ReportInput& input, const std::string& protocol,
                       const std::string& dataset) {
  struct Point {
    double x, y, sd;
  };
  std::map<std::string, std::vector<Point>> curves;
  bool percent = false;
  std::vector<double> all_x, all_y;
  for (const v1::ProbeResult& r : input.results) {
    if (r.protocol() != protocol || r.dataset() != dataset) continue;
    double x = 0;
    bool pct = false;
    if (!SubsetX(r.subset(), &x, &pct)) continue;
    if (!curves.empty() && pct != percent) continue;  // one kind of axis per figure
    percent = pct;
    curves[r.model()].push_back({x, r.top1(), r.top1_std()});
    all_x.push_back(std::log10(x));
    all_y.push_back(r.top1() - r.top1_std());
    all_y.push_back(r.top1() + r.top1_std());
  }
  if (curves.empty()) return "";
  const Colours colours(input.spec);
  const double left = 64, top = 44, w = 400, h = 300;
  const double width = left + w + 190, height = top + h + 48;
  std::string out = absl::StrCat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"figure fewshot\" id=\"fewshot-", Esc(protocol),
      "\" width=\"", F(width), "\" height=\"", F(height), "\" viewBox=\"0 0 ", F(width), " ", F(height),
      "\">");
  absl::StrAppend(&out, "<text x=\"", F(left), "\" y=\"16\" font-size=\"12\" font-weight=\"bold\" ", kFont,
                  ">", Esc(protocol), " few-shot on ", Esc(dataset), "</text><text x=\"", F(left),
                  "\" y=\"32\" font-size=\"11\" ", kFont,
                  ">top-1, mean and standard deviation over seeds</text>");
  const Range xr = RangeOf(all_x, 0.3), yr = RangeOf(all_y);
  absl::StrAppend(&out, Axes(left, top, w, h, xr, yr,
                             percent ? "percent of train (log)" : "images per class (log)", "top-1",
                             /*log_x=*/true));
  auto px = [&](double v) { return left + (std::log10(v) - xr.lo) / (xr.hi - xr.lo) * w; };
  auto py = [&](double v) { return top + h - (v - yr.lo) / (yr.hi - yr.lo) * h; };
  int row = 0;
  for (auto& [model, points] : curves) {
    std::sort(points.begin(), points.end(), [](const Point& a, const Point& b) { return a.x < b.x; });
    const std::string colour = colours.Of(model);
    std::string line;
    for (const Point& pt : points) absl::StrAppend(&line, F(px(pt.x)), ",", F(py(pt.y)), " ");
    absl::StrAppend(&out, "<polyline class=\"curve\" points=\"", line, "\" fill=\"none\" stroke=\"",
                    colour, "\" stroke-width=\"1.5\"><title>", Esc(model), "</title></polyline>");
    for (const Point& pt : points) {
      absl::StrAppend(&out, "<line x1=\"", F(px(pt.x)), "\" y1=\"", F(py(pt.y - pt.sd)), "\" x2=\"",
                      F(px(pt.x)), "\" y2=\"", F(py(pt.y + pt.sd)), "\" stroke=\"", colour,
                      "\"/><circle class=\"point\" cx=\"", F(px(pt.x)), "\" cy=\"", F(py(pt.y)),
                      "\" r=\"3\" fill=\"", colour, "\"><title>", Esc(model), ", ",
                      absl::StrFormat("%g", pt.x), percent ? "%" : "-shot", ": ",
                      absl::StrFormat("%.4f +- %.4f", pt.y, pt.sd), "</title></circle>");
    }
    absl::StrAppend(&out, "<text x=\"", F(left + w + 16), "\" y=\"", F(top + 8 + 13.0 * row),
                    "\" font-size=\"10\" fill=\"", colour, "\" ", kFont, ">", Esc(model), "</text>");
    ++row;
  }
  absl::StrAppend(&out, "</svg>");
  return out;
}

std::string ReportHtml(const ReportInput& in) {
  const v1::StudySpec& spec = in.spec;
  const auto models = ModelsByName(spec);
  std::map<std::string, v1::DatasetRole> roles;
  std::string in_domain;
  for (const v1::DatasetSpec& d : spec.datasets()) {
    roles[d.name()] = d.role();
    if (in_domain.empty() && d.role() == v1::DATASET_ROLE_IN_DOMAIN) in_domain = d.name();
  }
  std::string out = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sslbench study ",
      in.status.study_id(), ": ", Esc(spec.name()), "</title><style>\n",
      "body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}"
      "h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}"
      "table{border-collapse:collapse;font-size:12px}td,th{padding:3px 8px;border-bottom:1px solid #eee;"
      "text-align:left;vertical-align:top}th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}"
      "td.n{text-align:right;font-variant-numeric:tabular-nums}.figs{display:flex;flex-wrap:wrap;gap:16px}"
      "details pre{white-space:pre-wrap;max-width:520px;font-size:11px}#errors{color:#b00}"
      ".note{color:#555}\n</style></head><body>\n");
  absl::StrAppend(&out, "<h1>sslbench study ", in.status.study_id(), ": ", Esc(spec.name()), "</h1>\n");
  absl::StrAppend(&out, "<p class=\"note\">", spec.models_size(), " models, ", spec.datasets_size(),
                  " datasets (in-domain: ", Esc(in_domain.empty() ? "none" : in_domain), "), ",
                  spec.protocols_size(), " protocols; ", in.results.size(), " results; elapsed ",
                  absl::StrFormat("%.0f", in.status.elapsed_seconds()), " s.</p>\n<div id=\"errors\"></div>\n");

  // Predictors and figures.
  const v1::CorrelateResponse& c = in.correlation;
  absl::StrAppend(&out, "<h2>Which in-domain protocol predicts out-of-domain accuracy</h2>\n");
  if (c.columns_size() == 0) {
    absl::StrAppend(&out, "<p class=\"note\">", Esc(in.correlation_note), "</p>\n");
  } else {
    absl::StrAppend(&out, "<table id=\"predictors\"><tr><th>rank</th><th>in-domain column</th>"
                          "<th>mean tau-b</th><th>mean rho</th><th>min tau-b</th><th>max tau-b</th>"
                          "<th>targets</th></tr>\n");
    int rank = 0;
    for (const v1::Predictor& p : c.predictors()) {
      absl::StrAppend(&out, "<tr><td class=\"n\">", ++rank, "</td><td>", Esc(c.columns(p.column()).label()),
                      "</td><td class=\"n\">", Coef(p.mean_kendall()), "</td><td class=\"n\">",
                      Coef(p.mean_spearman()), "</td><td class=\"n\">", Coef(p.min_kendall()),
                      "</td><td class=\"n\">", Coef(p.max_kendall()), "</td><td class=\"n\">",
                      p.targets(), "</td></tr>\n");
    }
    absl::StrAppend(&out, "</table>\n", GroupTable(c));
    absl::StrAppend(&out, "<h2>In-domain protocols against out-of-domain accuracy</h2>\n"
                          "<div class=\"figs\">\n");
    const analysis::MetricTable table =
        analysis::BuildMetricTable(spec, in.results, analysis::Metric::kTop1);
    for (const v1::Predictor& p : c.predictors()) {
      absl::StrAppend(&out, ScatterFromTable(in, table, p.column()), "\n");
    }
    absl::StrAppend(&out, "</div>\n<h2>Protocol correlations (Kendall tau-b over models; hover for the "
                          "95% bootstrap interval)</h2>\n",
                    HeatmapSvg(c), "\n");
  }
  // Few-shot curves on the in-domain dataset.
  std::vector<std::string> few_shot;
  for (const v1::ProtocolSpec& p : spec.protocols()) {
    if (p.has_few_shot()) few_shot.push_back(p.name());
  }
  if (!few_shot.empty() && !in_domain.empty()) {
    absl::StrAppend(&out, "<h2>Few-shot</h2>\n<div class=\"figs\">\n");
    for (const std::string& p : few_shot) absl::StrAppend(&out, FewShotSvg(in, p, in_domain), "\n");
    absl::StrAppend(&out, "</div>\n");
  }

  // Every result, sortable, with its configuration.
  absl::StrAppend(&out, "<h2>Results</h2>\n<p class=\"note\">Click a column to sort.</p>\n"
                        "<table id=\"results\"><thead><tr><th>model</th><th>family</th><th>backbone</th>"
                        "<th>dataset</th><th>role</th><th>protocol</th><th>variant</th><th>subset</th>"
                        "<th>top-1</th><th>sd</th><th>top-5</th><th>mean per class</th><th>seeds</th>"
                        "<th>configuration</th></tr></thead><tbody>\n");
  for (const v1::ProbeResult& r : in.results) {
    auto m = models.find(r.model());
    const std::string family = m == models.end() ? "" : m->second->family();
    const std::string backbone = m == models.end() ? "" : m->second->backbone();
    auto role = roles.find(r.dataset());
    const std::string role_name =
        role == roles.end() ? "" : role->second == v1::DATASET_ROLE_IN_DOMAIN ? "in" : "out";
    absl::StrAppend(
        &out, "<tr><td>", Esc(r.model()), "</td><td>", Esc(family), "</td><td>", Esc(backbone),
        "</td><td>", Esc(r.dataset()), "</td><td>", role_name, "</td><td>", Esc(r.protocol()),
        "</td><td>", Esc(r.variant()), "</td><td>", Esc(r.subset().empty() ? "full" : r.subset()),
        "</td><td class=\"n\">", absl::StrFormat("%.4f", r.top1()), "</td><td class=\"n\">",
        r.num_seeds() > 1 ? absl::StrFormat("%.4f", r.top1_std()) : "", "</td><td class=\"n\">",
        absl::StrFormat("%.4f", r.top5()), "</td><td class=\"n\">",
        absl::StrFormat("%.4f", r.mean_per_class()), "</td><td class=\"n\">",
        std::max(1, r.num_seeds()), "</td><td><details><summary>show</summary><pre>",
        Esc(r.config_json()), "</pre></details></td></tr>\n");
  }
  absl::StrAppend(&out, "</tbody></table>\n");
  // Sorting, and a self-check the tests read back: the size of every figure
  // as laid out, and its marks.
  absl::StrAppend(&out, R"(<script>
window.addEventListener('error', function (e) {
  document.getElementById('errors').textContent += 'script error: ' + e.message + '\n';
});
(function () {
  var table = document.getElementById('results');
  var heads = table.querySelectorAll('th');
  heads.forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute('data-sort') !== 'up';
      heads.forEach(function (h) { h.removeAttribute('data-sort'); });
      th.setAttribute('data-sort', up ? 'up' : 'down');
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return up ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('svg.figure').forEach(function (svg) {
    var box = svg.getBBox();
    var marks = svg.querySelectorAll('rect.cell, circle.point, polyline.curve').length;
    out.push(svg.id + ':' + Math.round(box.width) + 'x' + Math.round(box.height) + ':' + marks);
  });
  document.body.setAttribute('data-rendered', out.join(' '));
});
</script>
</body></html>
)");
  return out;
}

absl::StatusOr<std::string> FigureSvg(const ReportInput& input, const std::string& figure) {
  const v1::CorrelateResponse& c = input.correlation;
  auto need_correlation = [&]() -> absl::Status {
    if (c.columns_size() == 0) {
      return absl::FailedPreconditionError(absl::StrCat("no correlations to draw: ", input.correlation_note));
    }
    return absl::OkStatus();
  };
  if (figure == "heatmap") {
    if (absl::Status s = need_correlation(); !s.ok()) return s;
    return HeatmapSvg(c);
  }
  if (figure == "scatter" || absl::StartsWith(figure, "scatter:")) {
    if (absl::Status s = need_correlation(); !s.ok()) return s;
    int rank = 1;
    if (figure != "scatter" && (!absl::SimpleAtoi(figure.substr(8), &rank) || rank < 1)) {
      return absl::InvalidArgumentError(absl::StrCat("--figure=", figure, ": expected scatter:N, N >= 1"));
    }
    if (rank > c.predictors_size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the study has ", c.predictors_size(), " in-domain predictors"));
    }
    return ScatterSvg(input, c.predictors(rank - 1).column());
  }
  if (absl::StartsWith(figure, "fewshot:")) {
    std::string in_domain;
    for (const v1::DatasetSpec& d : input.spec.datasets()) {
      if (d.role() == v1::DATASET_ROLE_IN_DOMAIN) {
        in_domain = d.name();
        break;
      }
    }
    const std::string svg = FewShotSvg(input, figure.substr(8), in_domain);
    if (svg.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("no few-shot results of protocol \"", figure.substr(8), "\" on ", in_domain));
    }
    return svg;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--figure=", figure, ": expected heatmap, scatter, scatter:N or fewshot:PROTOCOL"));
}

}  // namespace sslbench::client
