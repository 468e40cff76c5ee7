// Unit tests of the correlation analysis: coefficients derived by hand, the
// bootstrap, and the study-level table and predictor ranking.

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/analysis/correlation.h"
#include "server/analysis/study_analysis.h"

namespace sslbench::server::analysis {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr double kTol = 1e-12;

TEST(CorrelationTest, PerfectlyMonotoneIsOne) {
  const std::vector<double> x = {1, 2, 3, 4, 5};
  const std::vector<double> y = {0.1, 0.4, 0.5, 0.9, 10};  // monotone, not linear
  EXPECT_THAT(Spearman(x, y), DoubleNear(1.0, kTol));
  EXPECT_THAT(KendallTauB(x, y), DoubleNear(1.0, kTol));
  EXPECT_LT(Pearson(x, y), 1.0);
  const std::vector<double> linear = {3, 5, 7, 9, 11};
  EXPECT_THAT(Pearson(x, linear), DoubleNear(1.0, kTol));
}

TEST(CorrelationTest, ReversedIsMinusOne) {
  const std::vector<double> x = {1, 2, 3, 4, 5};
  const std::vector<double> y = {9, 7, 5, 3, 1};
  EXPECT_THAT(Pearson(x, y), DoubleNear(-1.0, kTol));
  EXPECT_THAT(Spearman(x, y), DoubleNear(-1.0, kTol));
  EXPECT_THAT(KendallTauB(x, y), DoubleNear(-1.0, kTol));
}

TEST(CorrelationTest, PearsonByHand) {
  // x - mean = (-1, 0, 1), y - mean = (-1, 1, 0): sxy = 1, sxx = syy = 2,
  // r = 1 / sqrt(2 * 2) = 0.5.
  EXPECT_THAT(Pearson(std::vector<double>{1, 2, 3}, std::vector<double>{1, 3, 2}),
              DoubleNear(0.5, kTol));
}

TEST(CorrelationTest, KendallTauBWithTiesByHand) {
  // x = (1, 2, 2, 3), y = (2, 1, 3, 3); the 6 pairs (i, j):
  //   (0,1) x up, y down: discordant     (0,2) up, up: concordant
  //   (0,3) up, up: concordant           (1,2) x tied (y up)
  //   (1,3) up, up: concordant           (2,3) y tied (x up)
  // C = 3, D = 1, n0 = 6, n1 = 1 (tied in x), n2 = 1 (tied in y):
  // tau-b = (3 - 1) / sqrt((6 - 1) (6 - 1)) = 2 / 5 = 0.4. (tau-a would be 2/6.)
  const std::vector<double> x = {1, 2, 2, 3};
  EXPECT_THAT(KendallTauB(x, std::vector<double>{2, 1, 3, 3}), DoubleNear(0.4, kTol));
  // Swapping y's first two values makes every untied pair concordant:
  // C = 4, D = 0: tau-b = 4 / 5.
  EXPECT_THAT(KendallTauB(x, std::vector<double>{1, 3, 2, 3}), DoubleNear(0.8, kTol));
}

TEST(CorrelationTest, SpearmanAveragesTiedRanks) {
  EXPECT_THAT(AverageRanks(std::vector<double>{10, 20, 20, 30}), ElementsAre(1, 2.5, 2.5, 4));
  EXPECT_THAT(AverageRanks(std::vector<double>{5, 5, 5}), ElementsAre(2, 2, 2));
  EXPECT_THAT(AverageRanks(std::vector<double>{3, 1, 2}), ElementsAre(3, 1, 2));
  // Ranks x (1, 2, 3, 4), y (1, 3, 2, 4): d^2 sums to 2, no ties, so
  // rho = 1 - 6 * 2 / (4 (16 - 1)) = 0.8.
  EXPECT_THAT(Spearman(std::vector<double>{0.1, 0.2, 0.3, 0.4},
                       std::vector<double>{0.15, 0.35, 0.25, 0.45}),
              DoubleNear(0.8, kTol));
}

TEST(CorrelationTest, UndefinedIsNaN) {
  const std::vector<double> constant = {0.5, 0.5, 0.5, 0.5};
  const std::vector<double> x = {1, 2, 3, 4};
  EXPECT_TRUE(std::isnan(Pearson(x, constant)));
  EXPECT_TRUE(std::isnan(Spearman(constant, x)));
  EXPECT_TRUE(std::isnan(KendallTauB(x, constant)));
  // Fewer than 3 models.
  const std::vector<double> two = {1, 2};
  EXPECT_TRUE(std::isnan(Pearson(two, two)));
  EXPECT_TRUE(std::isnan(Spearman(two, two)));
  EXPECT_TRUE(std::isnan(KendallTauB(two, two)));
  // Mismatched lengths and non-finite values.
  EXPECT_TRUE(std::isnan(KendallTauB(x, std::vector<double>{1, 2, 3})));
  EXPECT_TRUE(std::isnan(Pearson(x, std::vector<double>{1, 2, NAN, 4})));
}

TEST(PercentileTest, InterpolatesLinearlyAsNumpy) {
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 25), 1.75);
  EXPECT_DOUBLE_EQ(Percentile({4, 1, 3, 2}, 97.5), 3.925);
  EXPECT_DOUBLE_EQ(Percentile({4, 1, 3, 2}, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile({4, 1, 3, 2}, 100), 4);
  EXPECT_DOUBLE_EQ(Percentile({7}, 2.5), 7);
  EXPECT_TRUE(std::isnan(Percentile({}, 50)));
}

TEST(SplitMix64Test, MatchesTheReferenceStream) {
  SplitMix64 rng(0);
  EXPECT_EQ(rng.Next(), 0xe220a8397b1dcdafULL);
  SplitMix64 a(42), b(42);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.Next(), b.Next());
  SplitMix64 c(7);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 5000; ++i) {
    const uint64_t v = c.Below(5);
    ASSERT_LT(v, 5u);
    ++counts[v];
  }
  for (int n : counts) EXPECT_GT(n, 800);
}

// y = x + noise, 30 models: a clearly positive but imperfect relation.
void NoisyLine(std::vector<double>* x, std::vector<double>* y) {
  SplitMix64 rng(123);
  for (int i = 0; i < 30; ++i) {
    x->push_back(i / 30.0);
    y->push_back(i / 30.0 + 0.4 * (static_cast<double>(rng.Next() >> 11) / 9007199254740992.0));
  }
}

TEST(BootstrapTest, DeterministicForASeedAndContainsTheEstimate) {
  std::vector<double> x, y;
  NoisyLine(&x, &y);
  BootstrapOptions options;
  options.resamples = 500;
  options.seed = 9;
  const PairCorrelation a = Correlate(x, y, options);
  const PairCorrelation b = Correlate(x, y, options);
  EXPECT_EQ(a.n, 30);
  for (auto [ca, cb] : {std::pair{a.pearson, b.pearson}, std::pair{a.spearman, b.spearman},
                        std::pair{a.kendall, b.kendall}}) {
    EXPECT_EQ(ca.value, cb.value);
    EXPECT_EQ(ca.ci.low, cb.ci.low);
    EXPECT_EQ(ca.ci.high, cb.ci.high);
    EXPECT_EQ(ca.ci.valid, 500);
    EXPECT_LT(ca.ci.low, ca.value);
    EXPECT_GT(ca.ci.high, ca.value);
    EXPECT_GT(ca.ci.low, 0.0);  // clearly positive
    EXPECT_LE(ca.ci.high, 1.0);
  }
  EXPECT_THAT(a.kendall.value, DoubleNear(KendallTauB(x, y), 0));
  options.seed = 10;
  const PairCorrelation c = Correlate(x, y, options);
  EXPECT_EQ(c.kendall.value, a.kendall.value);
  EXPECT_NE(c.pearson.ci.low, a.pearson.ci.low);
}

TEST(BootstrapTest, PerfectRankAgreementHasADegenerateInterval) {
  // Every resample with two distinct models keeps tau-b = 1 (repeated models
  // tie in both columns); resamples of one model are skipped.
  const std::vector<double> x = {1, 2, 3};
  const std::vector<double> y = {1, 4, 9};
  BootstrapOptions options;
  options.resamples = 200;
  const PairCorrelation pc = Correlate(x, y, options);
  EXPECT_DOUBLE_EQ(pc.kendall.ci.low, 1.0);
  EXPECT_DOUBLE_EQ(pc.kendall.ci.high, 1.0);
  EXPECT_LT(pc.kendall.ci.valid, 200);  // 3 of 27 draws repeat one model
  EXPECT_GT(pc.kendall.ci.valid, 150);
}

TEST(BootstrapTest, NoResamplesNoInterval) {
  std::vector<double> x, y;
  NoisyLine(&x, &y);
  BootstrapOptions options;
  options.resamples = 0;
  const PairCorrelation pc = Correlate(x, y, options);
  EXPECT_FALSE(std::isnan(pc.spearman.value));
  EXPECT_TRUE(std::isnan(pc.spearman.ci.low));
  EXPECT_TRUE(std::isnan(pc.spearman.ci.high));
  EXPECT_EQ(pc.spearman.ci.valid, 0);
}

// --- the study -----------------------------------------------------------------

v1::StudySpec Spec() {
  v1::StudySpec spec;
  spec.set_name("closer-look");
  for (auto [name, role] : {std::pair{"imagenet", v1::DATASET_ROLE_IN_DOMAIN},
                            std::pair{"cub", v1::DATASET_ROLE_OUT_OF_DOMAIN},
                            std::pair{"flowers", v1::DATASET_ROLE_OUT_OF_DOMAIN}}) {
    auto* d = spec.add_datasets();
    d->set_name(name);
    d->set_role(role);
  }
  spec.add_protocols()->set_name("linear");
  spec.add_protocols()->set_name("knn");
  return spec;
}

v1::ProbeResult Result(const std::string& model, const std::string& dataset,
                       const std::string& protocol, double top1) {
  v1::ProbeResult r;
  r.set_model(model);
  r.set_dataset(dataset);
  r.set_protocol(protocol);
  r.set_top1(top1);
  r.set_top5(std::min(1.0, top1 + 0.2));
  r.set_mean_per_class(top1 - 0.01);
  return r;
}

// 8 models whose out-of-domain accuracy (both protocols, both datasets) rises
// with the model index; in-domain linear accuracy does too, exactly, while
// in-domain kNN accuracy is a scrambled order of the models.
std::vector<v1::ProbeResult> SyntheticStudy() {
  const std::vector<int> scrambled = {3, 7, 0, 5, 1, 6, 2, 4};
  std::vector<v1::ProbeResult> results;
  for (int m = 0; m < 8; ++m) {
    const std::string model = absl::StrCat("m", m);
    results.push_back(Result(model, "imagenet", "linear", 0.60 + 0.02 * m));
    results.push_back(Result(model, "imagenet", "knn", 0.50 + 0.03 * scrambled[m]));
    results.push_back(Result(model, "cub", "linear", 0.30 + 0.05 * m + 0.001 * (m % 2)));
    results.push_back(Result(model, "cub", "knn", 0.20 + 0.04 * m * m / 8));
    results.push_back(Result(model, "flowers", "linear", 0.70 + 0.01 * m));
    results.push_back(Result(model, "flowers", "knn", 0.40 + 0.02 * m));
  }
  return results;
}

TEST(StudyAnalysisTest, ParsesMetrics) {
  EXPECT_EQ(*ParseMetric(""), Metric::kTop1);
  EXPECT_EQ(*ParseMetric("top1"), Metric::kTop1);
  EXPECT_EQ(*ParseMetric("top5"), Metric::kTop5);
  EXPECT_EQ(*ParseMetric("mean_per_class"), Metric::kMeanPerClass);
  const auto bad = ParseMetric("top3");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("top3"));
}

TEST(StudyAnalysisTest, TableHasOneColumnPerProtocolVariantSubsetDataset) {
  std::vector<v1::ProbeResult> results = SyntheticStudy();
  // A rerun of one cell: the later result counts.
  results.push_back(Result("m0", "cub", "linear", 0.99));
  // A few-shot subset and a variant are columns of their own.
  v1::ProbeResult shot = Result("m1", "cub", "linear", 0.1);
  shot.set_subset("5-shot");
  results.push_back(shot);
  v1::ProbeResult variant = Result("m1", "cub", "knn", 0.1);
  variant.set_variant("euclidean k=20");
  results.push_back(variant);
  // A dataset the spec does not name.
  results.push_back(Result("m2", "mystery", "knn", 0.5));

  const MetricTable table = BuildMetricTable(Spec(), results, Metric::kTop1);
  ASSERT_EQ(table.models.size(), 8u);
  EXPECT_EQ(table.models[0], "m0");
  std::vector<std::string> labels;
  for (const auto& c : table.columns) labels.push_back(c.label());
  EXPECT_THAT(labels, ElementsAre("linear/full@imagenet", "knn/full@imagenet",
                                  "linear/5-shot@cub", "linear/full@cub",
                                  "knn/full@cub", "knn[euclidean k=20]/full@cub",
                                  "linear/full@flowers", "knn/full@flowers",
                                  "knn/full@mystery"));
  EXPECT_EQ(table.columns[0].role(), v1::DATASET_ROLE_IN_DOMAIN);
  EXPECT_EQ(table.columns[3].role(), v1::DATASET_ROLE_OUT_OF_DOMAIN);
  EXPECT_EQ(table.columns[8].role(), v1::DATASET_ROLE_UNSPECIFIED);
  EXPECT_EQ(table.columns[3].models(), 8);
  EXPECT_EQ(table.columns[2].models(), 1);
  EXPECT_DOUBLE_EQ(table.values[3][0], 0.99);
  EXPECT_TRUE(std::isnan(table.values[2][0]));

  const MetricTable top5 = BuildMetricTable(Spec(), SyntheticStudy(), Metric::kTop5);
  EXPECT_DOUBLE_EQ(top5.values[0][1], 0.82);
}

TEST(StudyAnalysisTest, RanksTheInDomainProtocolThatTracksOutOfDomainAccuracyFirst) {
  AnalysisOptions options;
  options.bootstrap_resamples = 200;
  options.seed = 1;
  const auto response = AnalyzeStudy(Spec(), SyntheticStudy(), options);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->metric(), "top1");
  EXPECT_EQ(response->models_size(), 8);
  ASSERT_EQ(response->columns_size(), 6);
  EXPECT_EQ(response->pairs_size(), 15);  // 6 choose 2, all with 8 models
  ASSERT_EQ(response->predictors_size(), 2);
  const v1::Predictor& best = response->predictors(0);
  EXPECT_EQ(response->columns(best.column()).label(), "linear/full@imagenet");
  EXPECT_EQ(best.targets(), 4);
  EXPECT_THAT(best.mean_kendall(), DoubleNear(1.0, kTol));
  EXPECT_THAT(best.mean_spearman(), DoubleNear(1.0, kTol));
  EXPECT_THAT(best.min_kendall(), DoubleNear(1.0, kTol));
  const v1::Predictor& second = response->predictors(1);
  EXPECT_EQ(response->columns(second.column()).label(), "knn/full@imagenet");
  EXPECT_EQ(second.targets(), 4);
  // Every out-of-domain column orders the models by index, so each tau is
  // tau(index, scrambled) and the mean is that value.
  const std::vector<double> index = {0, 1, 2, 3, 4, 5, 6, 7};
  const std::vector<double> scrambled = {3, 7, 0, 5, 1, 6, 2, 4};
  EXPECT_THAT(second.mean_kendall(), DoubleNear(KendallTauB(index, scrambled), kTol));
  EXPECT_THAT(second.mean_spearman(), DoubleNear(Spearman(index, scrambled), kTol));
  EXPECT_LT(second.mean_kendall(), best.mean_kendall());

  for (const auto& pair : response->pairs()) {
    EXPECT_LT(pair.x(), pair.y());
    EXPECT_EQ(pair.n(), 8);
    const v1::Coefficient& tau = pair.kendall();
    EXPECT_GT(tau.valid_resamples(), 190);
    EXPECT_LE(tau.ci_low(), tau.value() + kTol);
    EXPECT_GE(tau.ci_high(), tau.value() - kTol);
  }
  // The same seed gives the same intervals.
  const auto again = AnalyzeStudy(Spec(), SyntheticStudy(), options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->SerializeAsString(), response->SerializeAsString());
}

TEST(StudyAnalysisTest, ColumnsWithFewerThanThreeCommonModelsHaveNoPair) {
  std::vector<v1::ProbeResult> results = SyntheticStudy();
  v1::ProbeResult shot = Result("m1", "cub", "linear", 0.1);
  shot.set_subset("5-shot");
  results.push_back(shot);
  shot.set_model("m2");
  results.push_back(shot);
  AnalysisOptions options;
  options.bootstrap_resamples = 0;
  const auto response = AnalyzeStudy(Spec(), results, options);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->columns_size(), 7);
  EXPECT_EQ(response->pairs_size(), 15);
  EXPECT_TRUE(std::isnan(response->pairs(0).kendall().ci_low()));
}

TEST(StudyAnalysisTest, FewerThanThreeModelsIsAFailedPrecondition) {
  std::vector<v1::ProbeResult> results = {Result("a", "imagenet", "linear", 0.5),
                                          Result("b", "imagenet", "linear", 0.6),
                                          Result("b", "cub", "linear", 0.6)};
  const auto response = AnalyzeStudy(Spec(), results, AnalysisOptions());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(response.status().message(), HasSubstr("2 model(s)"));
  EXPECT_EQ(AnalyzeStudy(Spec(), {}, AnalysisOptions()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace sslbench::server::analysis

namespace sslbench::server::analysis {
namespace {

// Models m0..m3 are "contrastive" ResNets, m4..m7 "distillation" ViTs: the
// groups' means and within-group predictors come from their members alone.
TEST(StudyAnalysisTest, GroupsByModelLabels) {
  v1::StudySpec spec = Spec();
  for (int m = 0; m < 8; ++m) {
    v1::ModelSpec* model = spec.add_models();
    model->set_name(absl::StrCat("m", m));
    model->set_backbone(m < 4 ? "resnet50" : "vit_b_16");
    model->set_family(m < 4 ? "contrastive" : "distillation");
  }
  AnalysisOptions options;
  options.bootstrap_resamples = 0;
  options.group_by = "family";
  const auto response = AnalyzeStudy(spec, SyntheticStudy(), options);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->group_by(), "family");
  ASSERT_EQ(response->groups_size(), 2);
  const v1::GroupSummary& contrastive = response->groups(0);
  EXPECT_EQ(contrastive.value(), "contrastive");
  EXPECT_THAT(contrastive.models(), ElementsAre("m0", "m1", "m2", "m3"));
  ASSERT_EQ(contrastive.column_means_size(), response->columns_size());
  // linear/full@imagenet is column 0: 0.60 + 0.02 m over m = 0..3.
  EXPECT_THAT(contrastive.column_means(0), DoubleNear(0.63, kTol));
  EXPECT_THAT(response->groups(1).column_means(0), DoubleNear(0.71, kTol));
  // Within each group in-domain linear still orders the models exactly.
  ASSERT_EQ(contrastive.predictors_size(), 2);
  EXPECT_EQ(response->columns(contrastive.predictors(0).column()).label(),
            "linear/full@imagenet");
  EXPECT_THAT(contrastive.predictors(0).mean_kendall(), DoubleNear(1.0, kTol));

  options.group_by = "backbone,family";
  const auto both = AnalyzeStudy(spec, SyntheticStudy(), options);
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_EQ(both->groups_size(), 2);
  EXPECT_EQ(both->groups(0).value(), "resnet50/contrastive");
  EXPECT_EQ(both->groups(1).value(), "vit_b_16/distillation");

  options.group_by = "colour";
  EXPECT_EQ(AnalyzeStudy(spec, SyntheticStudy(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sslbench::server::analysis
