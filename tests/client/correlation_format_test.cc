// `sslbench correlate` output: predictors first, then pairs, in each format.

#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench::client {
namespace {

using ::sslbench::client::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void SetCoefficient(v1::Coefficient* c, double value, double low, double high) {
  c->set_value(value);
  c->set_ci_low(low);
  c->set_ci_high(high);
  c->set_valid_resamples(std::isnan(low) ? 0 : 1000);
}

v1::CorrelateResponse Response() {
  v1::CorrelateResponse r;
  r.set_study_id(7);
  r.set_metric("top1");
  r.set_bootstrap_resamples(1000);
  r.set_seed(3);
  for (const char* m : {"a", "b", "c", "d"}) r.add_models(m);
  struct Col {
    const char* protocol;
    const char* variant;
    const char* dataset;
    v1::DatasetRole role;
    const char* label;
  };
  for (const Col& c : {Col{"linear", "", "imagenet", v1::DATASET_ROLE_IN_DOMAIN,
                           "linear/full@imagenet"},
                       Col{"knn", "cosine k=20 T=0.07", "imagenet",
                           v1::DATASET_ROLE_IN_DOMAIN, "knn[cosine k=20 T=0.07]/full@imagenet"},
                       Col{"linear", "", "cub", v1::DATASET_ROLE_OUT_OF_DOMAIN,
                           "linear/full@cub"}}) {
    v1::CorrelationColumn* col = r.add_columns();
    col->set_protocol(c.protocol);
    col->set_variant(c.variant);
    col->set_subset("full");
    col->set_dataset(c.dataset);
    col->set_role(c.role);
    col->set_models(4);
    col->set_label(c.label);
  }
  v1::ColumnPair* p = r.add_pairs();
  p->set_x(0);
  p->set_y(2);
  p->set_n(4);
  SetCoefficient(p->mutable_pearson(), 0.8, 0.25, 0.99);
  SetCoefficient(p->mutable_spearman(), 0.8, 0.2, 1.0);
  SetCoefficient(p->mutable_kendall(), 2.0 / 3.0, 0.0, 1.0);
  v1::ColumnPair* q = r.add_pairs();
  q->set_x(1);
  q->set_y(2);
  q->set_n(4);
  SetCoefficient(q->mutable_pearson(), kNaN, kNaN, kNaN);
  SetCoefficient(q->mutable_spearman(), kNaN, kNaN, kNaN);
  SetCoefficient(q->mutable_kendall(), kNaN, kNaN, kNaN);
  v1::Predictor* best = r.add_predictors();
  best->set_column(0);
  best->set_mean_kendall(2.0 / 3.0);
  best->set_mean_spearman(0.8);
  best->set_min_kendall(2.0 / 3.0);
  best->set_max_kendall(2.0 / 3.0);
  best->set_targets(1);
  v1::Predictor* none = r.add_predictors();
  none->set_column(1);
  none->set_mean_kendall(kNaN);
  none->set_mean_spearman(kNaN);
  none->set_min_kendall(kNaN);
  none->set_max_kendall(kNaN);
  none->set_targets(0);
  return r;
}

TEST(CorrelationFormatTest, TablePrintsPredictorsThenPairs) {
  const std::string table = FormatCorrelationTable(Response());
  EXPECT_THAT(table, HasSubstr("study 7: top1 over 4 models, 3 columns; 95% bootstrap "
                               "intervals from 1000 resamples of the models (seed 3)"));
  const size_t predictors = table.find("rank  in-domain column");
  const size_t pairs = table.find("pearson");
  ASSERT_NE(predictors, std::string::npos);
  ASSERT_NE(pairs, std::string::npos);
  EXPECT_LT(predictors, pairs);
  const std::vector<std::string> lines = absl::StrSplit(table, '\n');
  // Rank 1 is the in-domain linear probe: mean tau-b 0.667, rho 0.800.
  EXPECT_THAT(table, HasSubstr("   1  linear/full@imagenet"));
  EXPECT_THAT(table, HasSubstr("0.667     0.800"));
  EXPECT_THAT(table, HasSubstr("0.800 [0.250, 0.990]"));
  EXPECT_THAT(table, HasSubstr("0.667 [0.000, 1.000]"));
  EXPECT_THAT(table, HasSubstr("n/a"));
  EXPECT_THAT(table, Not(HasSubstr("nan")));
  // The pair table's header names its columns.
  bool seen_header = false;
  for (const std::string& line : lines) {
    if (absl::StartsWith(line, "x  ")) seen_header = true;
  }
  EXPECT_TRUE(seen_header);
}

TEST(CorrelationFormatTest, TableWithoutIntervalsOrPredictors) {
  v1::CorrelateResponse r = Response();
  r.set_bootstrap_resamples(0);
  r.clear_predictors();
  for (auto& p : *r.mutable_pairs()) {
    for (v1::Coefficient* c : {p.mutable_pearson(), p.mutable_spearman(), p.mutable_kendall()}) {
      c->set_ci_low(kNaN);
      c->set_ci_high(kNaN);
    }
  }
  const std::string table = FormatCorrelationTable(r);
  EXPECT_THAT(table, Not(HasSubstr("bootstrap")));
  EXPECT_THAT(table, HasSubstr("in-domain and out-of-domain"));
  EXPECT_THAT(table, Not(HasSubstr(" [0.")));  // no intervals
  EXPECT_THAT(table, HasSubstr("0.800"));
}

TEST(CorrelationFormatTest, CsvHasTwoTablesWithEmptyFieldsForUndefined) {
  const std::string csv = FormatCorrelationCsv(Response());
  const std::vector<std::string> lines = absl::StrSplit(csv, '\n');
  ASSERT_GE(lines.size(), 7u);
  EXPECT_EQ(lines[0],
            "rank,protocol,variant,subset,dataset,mean_kendall,mean_spearman,min_kendall,"
            "max_kendall,targets");
  EXPECT_EQ(lines[1],
            "1,linear,,full,imagenet,0.66666666666666663,0.80000000000000004,"
            "0.66666666666666663,0.66666666666666663,1");
  EXPECT_EQ(lines[2], "2,knn,cosine k=20 T=0.07,full,imagenet,,,,,0");
  EXPECT_EQ(lines[3], "");
  EXPECT_THAT(lines[4], HasSubstr("x_protocol,x_variant,x_subset,x_dataset,y_protocol"));
  EXPECT_THAT(lines[5], HasSubstr("linear,,full,imagenet,linear,,full,cub,4,"
                                  "0.80000000000000004,0.25,0.98999999999999999,"));
  EXPECT_EQ(lines[6], "knn,cosine k=20 T=0.07,full,imagenet,linear,,full,cub,4,,,,,,,,,");
}

TEST(CorrelationFormatTest, JsonAndUnknownFormat) {
  auto json = FormatCorrelation(Response(), "json");
  ASSERT_TRUE(json.ok());
  EXPECT_THAT(*json, HasSubstr("\"predictors\""));
  EXPECT_THAT(*json, HasSubstr("\"mean_kendall\""));
  EXPECT_THAT(*json, HasSubstr("\"NaN\""));
  EXPECT_THAT(FormatCorrelation(Response(), "xml").status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto table = FormatCorrelation(Response(), "table");
  ASSERT_TRUE(table.ok());
  EXPECT_EQ(*table, FormatCorrelationTable(Response()));
}

}  // namespace
}  // namespace sslbench::client
