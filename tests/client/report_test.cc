#include "client/report.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/analysis/study_analysis.h"
#include "tests/client/client_test_util.h"

namespace sslbench::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

int Count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

// 5 models x (one in-domain, two out-of-domain datasets) x kNN and a
// few-shot linear probe; out-of-domain accuracy rises with the model index.
ReportInput Synthetic() {
  ReportInput in;
  in.spec.set_name("synthetic");
  for (int m = 0; m < 5; ++m) {
    v1::ModelSpec* model = in.spec.add_models();
    model->set_name(absl::StrCat("m", m));
    model->set_family(m < 2 ? "contrastive" : "distillation");
  }
  for (auto [name, role] : {std::pair{"home", v1::DATASET_ROLE_IN_DOMAIN},
                            std::pair{"away1", v1::DATASET_ROLE_OUT_OF_DOMAIN},
                            std::pair{"away2", v1::DATASET_ROLE_OUT_OF_DOMAIN}}) {
    v1::DatasetSpec* d = in.spec.add_datasets();
    d->set_name(name);
    d->set_role(role);
  }
  in.spec.add_protocols()->set_name("knn");
  v1::ProtocolSpec* few = in.spec.add_protocols();
  few->set_name("linear-fewshot");
  few->mutable_few_shot()->add_shots(5);
  in.status.set_study_id(7);
  for (int m = 0; m < 5; ++m) {
    for (const char* d : {"home", "away1", "away2"}) {
      v1::ProbeResult r;
      r.set_model(absl::StrCat("m", m));
      r.set_dataset(d);
      r.set_protocol("knn");
      r.set_top1(0.5 + 0.05 * m + (std::string(d) == "home" ? 0.1 : 0.0));
      r.set_config_json(R"({"k":20,"note":"<b>&"})");
      in.results.push_back(r);
      for (int shots : {5, 25}) {
        v1::ProbeResult f = r;
        f.set_protocol("linear-fewshot");
        f.set_subset(absl::StrCat(shots, "-shot"));
        f.set_top1(0.3 + 0.04 * m + 0.002 * shots);
        f.set_top1_std(0.01);
        f.set_num_seeds(3);
        in.results.push_back(f);
      }
    }
  }
  server::analysis::AnalysisOptions options;
  options.bootstrap_resamples = 50;
  options.group_by = "family";
  auto correlation = server::analysis::AnalyzeStudy(in.spec, in.results, options);
  EXPECT_TRUE(correlation.ok()) << correlation.status();
  in.correlation = *correlation;
  return in;
}

TEST(ReportTest, PageHasEveryFigureAndTheResultsAndLoadsNothing) {
  const ReportInput in = Synthetic();
  const int columns = in.correlation.columns_size();
  ASSERT_EQ(columns, 9);  // (knn, 5-shot, 25-shot) x 3 datasets
  const std::string html = ReportHtml(in);
  EXPECT_THAT(html, HasSubstr("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"figure\" id=\"heatmap\""));
  EXPECT_EQ(Count(html, "<rect class=\"cell\""), columns * columns);
  // One scatter per in-domain column, a point per model in each.
  EXPECT_EQ(Count(html, "class=\"figure scatter\""), in.correlation.predictors_size());
  EXPECT_EQ(in.correlation.predictors_size(), 3);
  EXPECT_EQ(Count(html, "<circle class=\"point\""), 3 * 5 + 5 * 2);  // scatters + few-shot points
  EXPECT_EQ(Count(html, "<polyline class=\"curve\""), 5);
  // Out-of-domain knn accuracy follows in-domain knn exactly.
  EXPECT_THAT(html, HasSubstr("Kendall tau-b = 1.000, 5 models"));
  // One row per result; configurations escaped.
  EXPECT_EQ(Count(html, "<tr><td>m"), static_cast<int>(in.results.size()));
  EXPECT_THAT(html, HasSubstr("{&quot;k&quot;:20,&quot;note&quot;:&quot;&lt;b&gt;&amp;&quot;}"));
  EXPECT_THAT(html, Not(HasSubstr("<b>&")));
  // The models by family: two contrastive (m0, m1), three distillation.
  EXPECT_THAT(html, HasSubstr("<h3>By family</h3>"));
  EXPECT_THAT(html, HasSubstr("<tr><td>contrastive</td><td>m0, m1</td>"));
  EXPECT_THAT(html, HasSubstr("<tr><td>distillation</td><td>m2, m3, m4</td>"));
  EXPECT_THAT(html, HasSubstr("fewer than 3 models"));
  // Self-contained: the only URL is SVG's namespace.
  EXPECT_THAT(html, Not(HasSubstr("src=")));
  EXPECT_THAT(html, Not(HasSubstr("<link")));
  EXPECT_EQ(Count(html, "http"), Count(html, "http://www.w3.org/2000/svg"));
}

TEST(ReportTest, SingleFiguresAsSvg) {
  const ReportInput in = Synthetic();
  auto heatmap = FigureSvg(in, "heatmap");
  ASSERT_TRUE(heatmap.ok()) << heatmap.status();
  EXPECT_TRUE(absl::StartsWith(*heatmap, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
  EXPECT_TRUE(absl::EndsWith(*heatmap, "</svg>"));
  auto scatter = FigureSvg(in, "scatter:2");
  ASSERT_TRUE(scatter.ok()) << scatter.status();
  EXPECT_EQ(Count(*scatter, "<circle class=\"point\""), 5);
  auto few = FigureSvg(in, "fewshot:linear-fewshot");
  ASSERT_TRUE(few.ok()) << few.status();
  EXPECT_EQ(Count(*few, "<polyline class=\"curve\""), 5);
  EXPECT_EQ(FigureSvg(in, "pie").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FigureSvg(in, "scatter:9").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FigureSvg(in, "fewshot:knn").status().code(), absl::StatusCode::kFailedPrecondition);

  ReportInput empty = in;
  empty.correlation.Clear();
  empty.correlation_note = "2 model(s) have top1 results";
  EXPECT_EQ(FigureSvg(empty, "heatmap").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ReportHtml(empty), HasSubstr("2 model(s) have top1 results"));
}

}  // namespace
}  // namespace sslbench::client
