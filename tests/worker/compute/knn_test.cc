#include "worker/compute/knn.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/compute/test_util.h"
#include "worker/compute/feature_extractor.h"

namespace sslbench::compute {
namespace {

using ::sslbench::compute::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::IsNan;

FeatureMatrix Matrix(int64_t dim, std::vector<float> data,
                     std::vector<int32_t> labels) {
  FeatureMatrix m;
  m.dim = dim;
  m.rows = static_cast<int64_t>(labels.size());
  m.data = std::move(data);
  m.labels = std::move(labels);
  return m;
}

FeatureMatrix Random(int64_t rows, int64_t dim, int num_classes,
                     uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  FeatureMatrix m;
  m.rows = rows;
  m.dim = dim;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t label = static_cast<int32_t>(gen() % num_classes);
    m.labels.push_back(label);
    // Class-dependent offset so that kNN does better than chance.
    for (int64_t d = 0; d < dim; ++d) {
      m.data.push_back(normal(gen) + (d % num_classes == label ? 1.5f : 0));
    }
  }
  return m;
}

KnnOptions CosineOnly(std::vector<int> ks, double temperature) {
  KnnOptions o;
  o.ks = std::move(ks);
  o.temperature = temperature;
  o.euclidean_k = 0;
  return o;
}

KnnOptions EuclideanOnly(int k) {
  KnnOptions o;
  o.ks = {};
  o.euclidean_k = k;
  return o;
}

using ::sslbench::compute::testing::ExpectSameMetrics;

class KnnTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetComputeThreads(2); }
};

// Test point q = (1, 0), label 0. Cosine similarities of the train points:
//   a = (1, 0.2)  label 1: 1/sqrt(1.04) = 0.98058
//   b = (1, 0.5)  label 0: 1/sqrt(1.25) = 0.89443
//   c = (1, -0.6) label 0: 1/sqrt(1.36) = 0.85749
//   d = (0, 1)    label 1: 0
//   e = (-2, 0)   label 0: -1
// With k = 3 the votes are class 1: exp(0.98058/T), class 0: exp(0.89443/T) +
// exp(0.85749/T). T = 1: 2.666 vs 4.803, class 0 wins. T = 0.07: 1.21e6 vs
// 3.54e5 + 2.09e5 = 5.63e5, class 1 wins. k = 1: a alone, class 1.
// k = 5 at T = 1: class 1 2.666 + 1 = 3.666, class 0 4.803 + 0.368: class 0.
const FeatureMatrix& CosineTrain() {
  static const FeatureMatrix* m = new FeatureMatrix(
      Matrix(2, {1, 0.2f, 1, 0.5f, 1, -0.6f, 0, 1, -2, 0}, {1, 0, 0, 1, 0}));
  return *m;
}

TEST_F(KnnTest, CosineVoteIsExpOfSimilarityOverTemperature) {
  const FeatureMatrix test = Matrix(2, {1, 0}, {0});
  absl::StatusOr<std::vector<KnnResult>> hot =
      RunKnn(CosineTrain(), test, 2, CosineOnly({1, 3, 5}, 1.0));
  ASSERT_TRUE(hot.ok()) << hot.status();
  ASSERT_EQ(hot->size(), 3u);
  EXPECT_EQ((*hot)[0].variant, "cosine");
  EXPECT_EQ((*hot)[0].k, 1);
  EXPECT_EQ((*hot)[0].temperature, 1.0);
  EXPECT_EQ((*hot)[0].metrics.top1, 0.0);  // a alone: class 1
  EXPECT_EQ((*hot)[1].k, 3);
  EXPECT_EQ((*hot)[1].metrics.top1, 1.0);  // 4.803 > 2.666
  EXPECT_EQ((*hot)[2].k, 5);
  EXPECT_EQ((*hot)[2].metrics.top1, 1.0);  // 5.171 > 3.666
  EXPECT_EQ((*hot)[1].metrics.top5, 1.0);  // two classes: always in top 5

  absl::StatusOr<std::vector<KnnResult>> cold =
      RunKnn(CosineTrain(), test, 2, CosineOnly({3}, 0.07));
  ASSERT_TRUE(cold.ok()) << cold.status();
  ASSERT_EQ(cold->size(), 1u);
  EXPECT_EQ((*cold)[0].metrics.top1, 0.0);  // 1.21e6 > 5.63e5: class 1
}

TEST_F(KnnTest, CosineIgnoresScaleAndUsesTheHandComputedMargin) {
  // The cosine vote does not depend on the features' norms. At T = 0.5 and
  // k = 3: class 1 exp(1.96116) = 7.107, class 0 exp(1.78885) + exp(1.71499)
  // = 5.982 + 5.556 = 11.538: class 0; at T = 0.2: class 1 134.9, class 0
  // 87.5 + 72.7 = 160.2: class 0; at T = 0.1: 18205 vs 7655 + 5287: class 1.
  FeatureMatrix scaled = CosineTrain();
  for (float& v : scaled.data) v *= 37.0f;
  const FeatureMatrix test = Matrix(2, {0.001f, 0}, {1});
  auto top1 = [&](double t) {
    absl::StatusOr<std::vector<KnnResult>> r =
        RunKnn(scaled, test, 2, CosineOnly({3}, t));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? (*r)[0].metrics.top1 : -1;
  };
  EXPECT_EQ(top1(0.5), 0.0);
  EXPECT_EQ(top1(0.2), 0.0);
  EXPECT_EQ(top1(0.1), 1.0);
}

TEST_F(KnnTest, MultipleKsFromOnePassEqualSeparateRuns) {
  const FeatureMatrix train = Random(300, 12, 6, 1);
  const FeatureMatrix test = Random(80, 12, 6, 2);
  absl::StatusOr<std::vector<KnnResult>> together =
      RunKnn(train, test, 6, CosineOnly({10, 1, 50, 200}, 0.07));
  ASSERT_TRUE(together.ok()) << together.status();
  ASSERT_EQ(together->size(), 4u);
  const int ks[] = {10, 1, 50, 200};
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<std::vector<KnnResult>> alone =
        RunKnn(train, test, 6, CosineOnly({ks[i]}, 0.07));
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ((*together)[i].k, ks[i]);
    ExpectSameMetrics((*together)[i].metrics, (*alone)[0].metrics);
  }
  EXPECT_GT((*together)[0].metrics.top1, 0.5);  // far better than 1/6
}

TEST_F(KnnTest, TemperatureSweepFromOnePassEqualsSeparateRuns) {
  const FeatureMatrix train = Random(300, 12, 6, 7);
  const FeatureMatrix test = Random(90, 12, 6, 8);
  const std::vector<int> ks = {20, 1, 50};
  const std::vector<double> temperatures = {0.02, 0.07, 0.5, 3.0};
  KnnOptions sweep = CosineOnly(ks, /*temperature=*/0.3);  // replaced
  sweep.temperatures = temperatures;
  sweep.euclidean_k = 5;
  sweep.test_chunk_rows = 32;
  sweep.train_chunk_rows = 100;
  absl::StatusOr<std::vector<KnnResult>> together =
      RunKnn(train, test, 6, sweep);
  ASSERT_TRUE(together.ok()) << together.status();
  // Temperature-major, ks in the given order, then the Euclidean result.
  ASSERT_EQ(together->size(), temperatures.size() * ks.size() + 1);
  EXPECT_EQ(together->back().variant, "euclidean");
  for (size_t ti = 0; ti < temperatures.size(); ++ti) {
    for (size_t ki = 0; ki < ks.size(); ++ki) {
      SCOPED_TRACE(::testing::Message() << "T " << temperatures[ti] << " k "
                                      << ks[ki]);
      const KnnResult& r = (*together)[ti * ks.size() + ki];
      EXPECT_EQ(r.variant, "cosine");
      EXPECT_EQ(r.k, ks[ki]);
      EXPECT_EQ(r.temperature, temperatures[ti]);
      absl::StatusOr<std::vector<KnnResult>> alone =
          RunKnn(train, test, 6, CosineOnly({ks[ki]}, temperatures[ti]));
      ASSERT_TRUE(alone.ok()) << alone.status();
      ASSERT_EQ(alone->size(), 1u);
      EXPECT_EQ((*alone)[0].temperature, temperatures[ti]);
      ExpectSameMetrics(r.metrics, (*alone)[0].metrics);
    }
  }
}

TEST_F(KnnTest, TemperatureSweepHandComputed) {
  // CosineTrain() with k = 3: class 0 wins at T = 1 and loses at T = 0.07
  // (see CosineVoteIsExpOfSimilarityOverTemperature).
  KnnOptions o = CosineOnly({3}, 1.0);
  o.temperatures = {1.0, 0.07};
  absl::StatusOr<std::vector<KnnResult>> r =
      RunKnn(CosineTrain(), Matrix(2, {1, 0}, {0}), 2, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].temperature, 1.0);
  EXPECT_EQ((*r)[0].metrics.top1, 1.0);
  EXPECT_EQ((*r)[1].temperature, 0.07);
  EXPECT_EQ((*r)[1].metrics.top1, 0.0);
}

TEST_F(KnnTest, ProgressCountsTestRowsOverBothVariants) {
  const FeatureMatrix train = Random(120, 6, 3, 9);
  const FeatureMatrix test = Random(61, 6, 3, 10);
  KnnOptions o = CosineOnly({5}, 0.07);
  o.euclidean_k = 5;
  o.test_chunk_rows = 20;
  std::vector<std::pair<int64_t, int64_t>> calls;
  absl::StatusOr<std::vector<KnnResult>> r =
      RunKnn(train, test, 3, o, [&](int64_t done, int64_t total) {
        calls.emplace_back(done, total);
        return true;
      });
  ASSERT_TRUE(r.ok()) << r.status();
  using P = std::pair<int64_t, int64_t>;
  EXPECT_THAT(calls, ElementsAre(P(20, 122), P(40, 122), P(60, 122),
                                 P(61, 122), P(81, 122), P(101, 122),
                                 P(121, 122), P(122, 122)));

  // One variant: the total counts the test rows once.
  calls.clear();
  r = RunKnn(train, test, 3, EuclideanOnly(5), [&](int64_t done,
                                                    int64_t total) {
    calls.emplace_back(done, total);
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(calls, ElementsAre(P(61, 61)));
}

TEST_F(KnnTest, ProgressReturningFalseCancelsAtTheNextBlock) {
  const FeatureMatrix train = Random(120, 6, 3, 11);
  const FeatureMatrix test = Random(61, 6, 3, 12);
  KnnOptions o = CosineOnly({5}, 0.07);
  o.euclidean_k = 5;
  o.test_chunk_rows = 20;
  // Stop during the cosine pass, during the Euclidean pass, and after the
  // last block.
  for (int stop_at : {1, 2, 5, 8}) {
    SCOPED_TRACE(stop_at);
    int calls = 0;
    absl::StatusOr<std::vector<KnnResult>> r =
        RunKnn(train, test, 3, o, [&](int64_t, int64_t) {
          return ++calls < stop_at;
        });
    EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kCancelled, "cancelled"));
    EXPECT_EQ(calls, stop_at);  // no block started after the refusal
  }
}

TEST_F(KnnTest, CosineNeighboursTieToTheLowerTrainIndex) {
  // Many exact duplicates at the k-th place: the lowest train indices win.
  // Rows 0..39 are copies of u (label 0 for even indices below 10, else 1),
  // row 40.. copies of a vector farther away. k = 5 takes rows 0..4 (labels
  // 0, 1, 0, 1, 0): class 0; the same rows in any other tie order would be
  // a majority of class 1 (30 of the 40 copies are class 1).
  FeatureMatrix train;
  train.dim = 3;
  for (int i = 0; i < 60; ++i) {
    const bool near = i < 40;
    train.data.insert(train.data.end(),
                      {1.0f, near ? 0.5f : 2.0f, 0.25f});
    train.labels.push_back(i < 10 ? (i % 2) : 1);
  }
  train.rows = 60;
  const FeatureMatrix test = Matrix(3, {1.0f, 0.5f, 0.25f}, {0});
  for (int64_t chunk : {1, 3, 7, 1000}) {
    KnnOptions o = CosineOnly({5}, 0.07);
    o.train_chunk_rows = chunk;
    absl::StatusOr<std::vector<KnnResult>> r = RunKnn(train, test, 2, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)[0].metrics.top1, 1.0) << "chunk " << chunk;
  }
}

TEST_F(KnnTest, EuclideanVotesInverseDistance) {
  // q = (0, 0), label 0. a = (1, 0) label 0: weight 1; b = (0, 3) label 1:
  // 1/3; c = (0, -2.5) label 1: 0.4. Class 1 totals 0.733 < 1: class 0,
  // although two of the three neighbours are class 1. The far point d is
  // outside k = 3.
  const FeatureMatrix train =
      Matrix(2, {1, 0, 0, 3, 0, -2.5f, 10, 10}, {0, 1, 1, 1});
  const FeatureMatrix test = Matrix(2, {0, 0}, {0});
  absl::StatusOr<std::vector<KnnResult>> r =
      RunKnn(train, test, 2, EuclideanOnly(3));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].variant, "euclidean");
  EXPECT_EQ((*r)[0].k, 3);
  EXPECT_EQ((*r)[0].metrics.top1, 1.0);
  // With k = 4 the point at distance 14.1 adds 0.0707 to class 1: 0.804 < 1.
  r = RunKnn(train, test, 2, EuclideanOnly(4));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].metrics.top1, 1.0);
}

TEST_F(KnnTest, EuclideanZeroDistanceTakesAllTheWeight) {
  // q coincides with a (label 1); b and c (label 0) are very close but get no
  // weight at all.
  const FeatureMatrix train = Matrix(2, {0.01f, 0, 0, 0, 0, 0.01f}, {0, 1, 0});
  const FeatureMatrix test = Matrix(2, {0, 0}, {1});
  absl::StatusOr<std::vector<KnnResult>> r =
      RunKnn(train, test, 2, EuclideanOnly(3));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].metrics.top1, 1.0);

  // Two zero-distance neighbours of classes 2 and 1 weigh 1 each; the close
  // class-2 point weighs 0, so the tie goes to the lowest class, 1.
  const FeatureMatrix tied = Matrix(2, {0, 0, 0, 0, 0.01f, 0}, {2, 1, 2});
  r = RunKnn(tied, test, 3, EuclideanOnly(3));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].metrics.top1, 1.0);
}

TEST_F(KnnTest, TiesGoToTheLowestClass) {
  // Equal distances to a (label 1) and b (label 0): the vote ties, class 0.
  const FeatureMatrix train = Matrix(2, {1, 0, 0, 1}, {1, 0});
  const FeatureMatrix test0 = Matrix(2, {0, 0}, {0});
  const FeatureMatrix test1 = Matrix(2, {0, 0}, {1});
  absl::StatusOr<std::vector<KnnResult>> r =
      RunKnn(train, test0, 2, EuclideanOnly(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].metrics.top1, 1.0);
  r = RunKnn(train, test1, 2, EuclideanOnly(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].metrics.top1, 0.0);
  // Cosine: q = (1, 1) is equally similar to both.
  r = RunKnn(train, Matrix(2, {1, 1}, {0}), 2, CosineOnly({2}, 0.07));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].metrics.top1, 1.0);

  EXPECT_EQ(MetricsFromScores({1, 1, 0}, {0}, 3).top1, 1.0);
  EXPECT_EQ(MetricsFromScores({1, 1, 0}, {1}, 3).top1, 0.0);
}

TEST_F(KnnTest, EquidistantNeighboursGoToTheLowestTrainIndex) {
  // 80 train points +-e_i, all at distance 1 from the origin, many more than
  // the candidate list holds. The lowest three indices are class 1, all
  // others class 0; only an exact, index-ordered choice predicts class 1.
  const int dim = 40;
  FeatureMatrix train;
  train.dim = dim;
  for (int i = 0; i < 2 * dim; ++i) {
    std::vector<float> row(dim, 0.0f);
    row[(i * 7) % dim] = (i / dim) % 2 == 0 ? 1.0f : -1.0f;
    train.data.insert(train.data.end(), row.begin(), row.end());
    train.labels.push_back(i < 3 ? 1 : 0);
  }
  train.rows = 2 * dim;
  const FeatureMatrix test = Matrix(dim, std::vector<float>(dim, 0.0f), {1});
  for (int64_t chunk : {5, 1000}) {
    KnnOptions o = EuclideanOnly(3);
    o.train_chunk_rows = chunk;
    absl::StatusOr<std::vector<KnnResult>> r = RunKnn(train, test, 2, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)[0].metrics.top1, 1.0) << "chunk " << chunk;
  }
}

// The k nearest by a float64 brute-force search: squared distances summed in
// index order, sorted by (distance, train index).
std::vector<std::vector<EuclideanNeighbour>> BruteForce(
    const FeatureMatrix& train, const FeatureMatrix& test, int k) {
  std::vector<std::vector<EuclideanNeighbour>> all;
  std::vector<EuclideanNeighbour> d(train.rows);
  for (int64_t q = 0; q < test.rows; ++q) {
    for (int64_t t = 0; t < train.rows; ++t) {
      double s = 0;
      for (int64_t i = 0; i < train.dim; ++i) {
        const double diff = double{test.data[q * test.dim + i]} -
                            double{train.data[t * train.dim + i]};
        s += diff * diff;
      }
      d[t] = {s, t};
    }
    std::partial_sort(d.begin(), d.begin() + k, d.end(),
                      [](const EuclideanNeighbour& a, const EuclideanNeighbour& b) {
                        return a.sq_distance < b.sq_distance ||
                               (a.sq_distance == b.sq_distance && a.index < b.index);
                      });
    all.emplace_back(d.begin(), d.begin() + k);
  }
  return all;
}

// scikit-learn's rule on the brute-force neighbours.
std::vector<int32_t> ReferenceEuclidean(const FeatureMatrix& train,
                                        const FeatureMatrix& test, int k,
                                        int num_classes) {
  std::vector<int32_t> predictions;
  for (const std::vector<EuclideanNeighbour>& d : BruteForce(train, test, k)) {
    std::vector<double> votes(num_classes, 0);
    bool zero = false;
    for (const EuclideanNeighbour& n : d) zero |= n.sq_distance == 0;
    for (const EuclideanNeighbour& n : d) {
      votes[train.labels[n.index]] +=
          zero ? (n.sq_distance == 0 ? 1 : 0) : 1 / std::sqrt(n.sq_distance);
    }
    predictions.push_back(static_cast<int32_t>(
        std::max_element(votes.begin(), votes.end()) - votes.begin()));
  }
  return predictions;
}

TEST_F(KnnTest, EuclideanMatchesTheNaiveReference) {
  FeatureMatrix train = Random(500, 20, 4, 3);
  // A large common offset makes float32 ||x||^2 + ||y||^2 - 2xy lossy.
  for (float& v : train.data) v += 300.0f;
  FeatureMatrix test = Random(120, 20, 4, 4);
  for (float& v : test.data) v += 300.0f;
  // Exact duplicates of train rows in the test set.
  std::copy(train.data.begin(), train.data.begin() + 20, test.data.begin());
  const std::vector<int32_t> predicted = ReferenceEuclidean(train, test, 7, 4);
  int64_t correct = 0;
  std::vector<int64_t> class_correct(4, 0), class_total(4, 0);
  for (int64_t i = 0; i < test.rows; ++i) {
    ++class_total[test.labels[i]];
    if (predicted[i] == test.labels[i]) {
      ++correct;
      ++class_correct[test.labels[i]];
    }
  }
  KnnOptions o = EuclideanOnly(7);
  o.train_chunk_rows = 64;
  o.test_chunk_rows = 50;
  absl::StatusOr<std::vector<KnnResult>> r = RunKnn(train, test, 4, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].metrics.top1, static_cast<double>(correct) / test.rows);
  for (int c = 0; c < 4; ++c) {
    EXPECT_EQ((*r)[0].metrics.per_class[c],
              static_cast<double>(class_correct[c]) / class_total[c]);
  }
}

void ExpectSameNeighbours(
    const std::vector<std::vector<EuclideanNeighbour>>& got,
    const std::vector<std::vector<EuclideanNeighbour>>& want) {
  ASSERT_EQ(got.size(), want.size());
  int64_t wrong_rows = 0;
  for (size_t q = 0; q < got.size(); ++q) {
    bool same = got[q].size() == want[q].size();
    for (size_t i = 0; same && i < got[q].size(); ++i) {
      same = got[q][i].index == want[q][i].index &&
             got[q][i].sq_distance == want[q][i].sq_distance;
    }
    if (!same && ++wrong_rows <= 3) {
      ADD_FAILURE() << "test row " << q << ": first neighbour "
                    << (got[q].empty() ? -1 : got[q][0].index) << " vs "
                    << want[q][0].index;
    }
  }
  EXPECT_EQ(wrong_rows, 0);
}

// Image-like features: most of the variance in a few directions (a random
// rotation of `rank` latent factors of decreasing scale, plus class means),
// a little spread over all others, and a large common offset that makes
// float32 ||x||^2 + ||y||^2 - 2xy lossy.
FeatureMatrix LowRank(int64_t rows, int64_t dim, int rank, int num_classes,
                      uint32_t seed) {
  std::mt19937 basis_gen(77);  // the same directions for train and test
  std::normal_distribution<float> normal;
  std::vector<float> directions(static_cast<size_t>(rank * dim));
  for (float& v : directions) v = normal(basis_gen) / std::sqrt(float(dim));
  std::vector<float> class_means(static_cast<size_t>(num_classes * rank));
  for (float& v : class_means) v = 3 * normal(basis_gen);
  std::mt19937 gen(seed);
  FeatureMatrix m;
  m.rows = rows;
  m.dim = dim;
  m.data.assign(static_cast<size_t>(rows * dim), 0.0f);
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t label = static_cast<int32_t>(gen() % num_classes);
    m.labels.push_back(label);
    float* row = m.data.data() + i * dim;
    for (int f = 0; f < rank; ++f) {
      const float c = class_means[label * rank + f] + normal(gen) * 4.0f / (1 + f);
      for (int64_t d = 0; d < dim; ++d) row[d] += c * directions[f * dim + d];
    }
    for (int64_t d = 0; d < dim; ++d) row[d] += 0.05f * normal(gen) + 40.0f;
  }
  return m;
}

TEST_F(KnnTest, ProjectedEuclideanSearchEqualsBruteForce) {
  const FeatureMatrix train = LowRank(3000, 96, 10, 5, 11);
  FeatureMatrix test = LowRank(150, 96, 10, 5, 12);
  // Exact duplicates of train rows: zero distances.
  std::copy_n(train.data.begin(), 5 * 96, test.data.begin());
  const auto want = BruteForce(train, test, 10);
  KnnOptions o = EuclideanOnly(10);
  o.test_chunk_rows = 40;
  for (int64_t train_chunk : {int64_t{16384}, int64_t{64}}) {
    SCOPED_TRACE(train_chunk);
    // The projections are kept (16384 x 96 floats hold them) or recomputed
    // per block (64 x 96 do not).
    o.train_chunk_rows = train_chunk;
    o.euclidean_projection_dim = 15;
    EuclideanSearchStats stats;
    auto got = EuclideanNeighbours(train, test, o, &stats);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameNeighbours(*got, want);
    EXPECT_EQ(stats.projection_dim, 15);
    EXPECT_GT(stats.projected_rows, test.rows / 2);
    EXPECT_GT(stats.verified, 0);
    // Far fewer exact distances than train rows per test row.
    EXPECT_LT(stats.verified, test.rows * train.rows / 10);
  }
  o.euclidean_projection_dim = 0;
  EuclideanSearchStats stats;
  auto direct = EuclideanNeighbours(train, test, o, &stats);
  ASSERT_TRUE(direct.ok()) << direct.status();
  ExpectSameNeighbours(*direct, want);
  EXPECT_EQ(stats.projection_dim, 0);
  EXPECT_EQ(stats.direct_rows, test.rows);
}

// EuclideanNeighbours equals the brute force for each projection dim given.
void ExpectBruteForceNeighbours(const FeatureMatrix& train,
                                const FeatureMatrix& test, int k,
                                std::initializer_list<int> projection_dims) {
  const auto want = BruteForce(train, test, k);
  KnnOptions o = EuclideanOnly(k);
  for (int p : projection_dims) {
    SCOPED_TRACE(p);
    o.euclidean_projection_dim = p;
    auto got = EuclideanNeighbours(train, test, o);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameNeighbours(*got, want);
  }
}

TEST_F(KnnTest, ProjectedEuclideanSearchIsExactForTinyFeatures) {
  // Features around 1e-20: squared differences are subnormal floats, where
  // float32 errors stop being relative.
  FeatureMatrix train = LowRank(2000, 64, 6, 4, 41);
  FeatureMatrix test = LowRank(100, 64, 6, 4, 42);
  for (FeatureMatrix* m : {&train, &test}) {
    for (float& v : m->data) v = (v - 40.0f) * 1e-20f;
  }
  std::copy_n(train.data.begin(), 3 * 64, test.data.begin());  // duplicates
  ExpectBruteForceNeighbours(train, test, 6, {0, 11});
}

TEST_F(KnnTest, SubnormalDistancesAreRankedExactly) {
  // From the origin, train row 1 (one coordinate 2.7386e-23: squared
  // distance 7.5e-46) is nearer than row 0 (ten coordinates of 1e-23: 1e-45),
  // but in float32 their squared distances round to 2^-149 and 0 (the
  // squares are subnormal): only a margin with an absolute part keeps row 1
  // among the candidates. The other rows are far.
  const int64_t dim = 16;
  FeatureMatrix train;
  train.dim = dim;
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> uniform(0.5f, 1.5f);
  for (int64_t i = 0; i < 300; ++i) {
    for (int64_t d = 0; d < dim; ++d) {
      float v = uniform(gen);
      if (i == 0) v = d < 10 ? 1e-23f : 0.0f;
      if (i == 1) v = d == 0 ? 2.7386e-23f : 0.0f;
      train.data.push_back(v);
    }
    train.labels.push_back(i == 1 ? 1 : 0);
  }
  train.rows = 300;
  const FeatureMatrix test = Matrix(dim, std::vector<float>(dim, 0.0f), {1});
  ASSERT_EQ(BruteForce(train, test, 1)[0][0].index, 1);
  ExpectBruteForceNeighbours(train, test, 1, {0, 3});
}

TEST_F(KnnTest, ProjectedEuclideanSearchRechecksRowsTheBoundCannotSplit) {
  // 2000 train rows share their first 8 coordinates, which carry almost all
  // the variance of the set, and differ only by +-0.1 in the other 24: the
  // bound from the principal subspace is about the same for all of them, so
  // a test row in that group has far more candidates than its list holds
  // and is searched again; the distances to the group are a few values
  // (Hamming distances), so ties must go to the lower index.
  const int64_t dim = 32;
  std::mt19937 gen(5);
  std::normal_distribution<float> normal;
  const auto make = [&](int64_t rows, int64_t group_rows) {
    FeatureMatrix m;
    m.rows = rows;
    m.dim = dim;
    for (int64_t i = 0; i < rows; ++i) {
      const bool grouped = i < group_rows;
      for (int64_t d = 0; d < dim; ++d) {
        float v;
        if (d < 8) {
          v = grouped ? 1.0f + static_cast<float>(d) : 10.0f * normal(gen);
        } else {
          v = grouped ? ((gen() & 1) ? 0.1f : -0.1f) : 0.1f * normal(gen);
        }
        m.data.push_back(v);
      }
      m.labels.push_back(m.data[i * dim + 8] > 0 ? 1 : 0);
    }
    return m;
  };
  const FeatureMatrix train = make(5000, 2000);
  const FeatureMatrix test = make(100, 6);
  const auto want = BruteForce(train, test, 5);
  KnnOptions o = EuclideanOnly(5);
  o.euclidean_projection_dim = 8;
  EuclideanSearchStats stats;
  auto got = EuclideanNeighbours(train, test, o, &stats);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameNeighbours(*got, want);
  EXPECT_GE(stats.rechecked_rows, 6);
  EXPECT_EQ(stats.direct_rows, 0);
}

TEST_F(KnnTest, ProjectedEuclideanSearchHandsUnstructuredFeaturesToDirect) {
  // Independent Gaussian coordinates: no direction dominates, the bound
  // prunes almost nothing, and the search falls back to the full product.
  const FeatureMatrix train = Random(3000, 128, 4, 21);
  const FeatureMatrix test = Random(300, 128, 4, 22);
  const auto want = BruteForce(train, test, 7);
  KnnOptions o = EuclideanOnly(7);
  o.euclidean_projection_dim = 15;
  o.test_chunk_rows = 100;
  EuclideanSearchStats stats;
  auto got = EuclideanNeighbours(train, test, o, &stats);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameNeighbours(*got, want);
  EXPECT_GT(stats.direct_rows, test.rows / 2);

  // And the Euclidean metrics of RunKnn are the same either way.
  KnnOptions off = o;
  off.euclidean_projection_dim = 0;
  const FeatureMatrix low_train = LowRank(3000, 64, 8, 4, 31);
  const FeatureMatrix low_test = LowRank(200, 64, 8, 4, 32);
  absl::StatusOr<std::vector<KnnResult>> a = RunKnn(low_train, low_test, 4, o);
  absl::StatusOr<std::vector<KnnResult>> b = RunKnn(low_train, low_test, 4, off);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectSameMetrics((*a)[0].metrics, (*b)[0].metrics);
}

TEST_F(KnnTest, TopFiveMeanPerClassAndPerClass) {
  // Seven classes; class 5 never appears in the test labels.
  //   row 0, label 0: class 0 ranks first.                 top1, top5
  //   row 1, label 1: class 1 ranks 5th (4 higher).         top5
  //   row 2, label 1: class 1 ranks 6th (5 higher).         neither
  //   row 3, label 2: class 2 ties with class 0 and 1, and
  //                   is behind 3 more: rank 5.             neither
  //   row 4, label 6: ties with class 3 for first: rank 1.  top5
  //   row 5, label 3: ties with class 6 for first: rank 0.  top1, top5
  const std::vector<float> scores = {
      9, 1, 1, 1, 1, 1, 1,  //
      5, 1, 6, 7, 8, 0, 0,  //
      5, 1, 6, 7, 8, 9, 0,  //
      2, 2, 2, 3, 3, 3, 0,  //
      0, 0, 0, 4, 0, 0, 4,  //
      0, 0, 0, 4, 0, 0, 4,  //
  };
  const ClassificationMetrics m =
      MetricsFromScores(scores, {0, 1, 1, 2, 6, 3}, 7);
  EXPECT_DOUBLE_EQ(m.top1, 2.0 / 6);
  EXPECT_DOUBLE_EQ(m.top5, 4.0 / 6);
  ASSERT_EQ(m.per_class.size(), 7u);
  EXPECT_EQ(m.per_class[0], 1.0);
  EXPECT_EQ(m.per_class[1], 0.0);
  EXPECT_EQ(m.per_class[2], 0.0);
  EXPECT_EQ(m.per_class[3], 1.0);
  EXPECT_THAT(m.per_class[4], IsNan());
  EXPECT_THAT(m.per_class[5], IsNan());
  EXPECT_EQ(m.per_class[6], 0.0);
  EXPECT_DOUBLE_EQ(m.mean_per_class, (1.0 + 0 + 0 + 1 + 0) / 5);

  // Fewer than five classes: every label is within the top 5.
  EXPECT_EQ(MetricsFromScores({0, 1, 2, 3}, {0}, 4).top5, 1.0);
}

TEST_F(KnnTest, ChunkSizesDoNotChangeResults) {
  const FeatureMatrix train = Random(257, 10, 5, 5);
  const FeatureMatrix test = Random(61, 10, 5, 6);
  KnnOptions big;
  big.ks = {1, 5, 20};
  big.euclidean_k = 20;
  KnnOptions tiny = big;
  tiny.test_chunk_rows = 3;
  tiny.train_chunk_rows = 7;
  KnnOptions one = big;
  one.test_chunk_rows = 1;
  one.train_chunk_rows = 1;
  absl::StatusOr<std::vector<KnnResult>> a = RunKnn(train, test, 5, big);
  absl::StatusOr<std::vector<KnnResult>> b = RunKnn(train, test, 5, tiny);
  absl::StatusOr<std::vector<KnnResult>> c = RunKnn(train, test, 5, one);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(a->size(), 4u);
  ASSERT_EQ(b->size(), 4u);
  ASSERT_EQ(c->size(), 4u);
  EXPECT_EQ((*a)[3].variant, "euclidean");
  for (size_t i = 0; i < a->size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ((*a)[i].k, (*b)[i].k);
    ExpectSameMetrics((*a)[i].metrics, (*b)[i].metrics);
    ExpectSameMetrics((*a)[i].metrics, (*c)[i].metrics);
  }
}

TEST_F(KnnTest, RejectsInvalidInput) {
  const FeatureMatrix train = Matrix(2, {0, 1, 1, 0, 1, 1}, {0, 1, 0});
  const FeatureMatrix test = Matrix(2, {0, 1}, {1});
  const KnnOptions k2 = CosineOnly({2}, 0.07);
  using absl::StatusCode;
  EXPECT_THAT(RunKnn(FeatureMatrix(), test, 2, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "empty"));
  EXPECT_THAT(RunKnn(train, FeatureMatrix(), 2, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "empty"));
  EXPECT_THAT(RunKnn(train, Matrix(3, {0, 1, 2}, {1}), 2, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "dim"));
  EXPECT_THAT(RunKnn(train, test, 2, CosineOnly({4}, 0.07)).status(),
              StatusIs(StatusCode::kInvalidArgument, "k = 4"));
  EXPECT_THAT(RunKnn(train, test, 2, EuclideanOnly(4)).status(),
              StatusIs(StatusCode::kInvalidArgument, "euclidean_k = 4"));
  EXPECT_THAT(RunKnn(train, test, 2, CosineOnly({0}, 0.07)).status(),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(RunKnn(train, test, 1, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "label 1"));
  EXPECT_THAT(RunKnn(train, Matrix(2, {0, 1}, {-1}), 2, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "label -1"));
  EXPECT_THAT(RunKnn(train, test, 2, CosineOnly({2}, 0.0)).status(),
              StatusIs(StatusCode::kInvalidArgument, "temperature"));
  KnnOptions sweep = CosineOnly({2}, 0.0);  // replaced by the sweep: fine
  sweep.temperatures = {0.07, 1.0};
  EXPECT_TRUE(RunKnn(train, test, 2, sweep).ok());
  sweep.temperatures = {0.07, -1.0};
  EXPECT_THAT(RunKnn(train, test, 2, sweep).status(),
              StatusIs(StatusCode::kInvalidArgument, "temperature"));
  sweep.temperatures = {std::numeric_limits<double>::infinity()};
  EXPECT_THAT(RunKnn(train, test, 2, sweep).status(),
              StatusIs(StatusCode::kInvalidArgument, "temperature"));
  EXPECT_THAT(RunKnn(train, test, 2, CosineOnly({}, 0.07)).status(),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(RunKnn(train, test, 0, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "num_classes"));
  KnnOptions projected = EuclideanOnly(1);
  projected.euclidean_projection_dim = 2;  // not below dim
  EXPECT_THAT(RunKnn(train, test, 2, projected).status(),
              StatusIs(StatusCode::kInvalidArgument, "euclidean_projection_dim"));
  projected.euclidean_projection_dim = -2;
  EXPECT_THAT(RunKnn(train, test, 2, projected).status(),
              StatusIs(StatusCode::kInvalidArgument, "euclidean_projection_dim"));
  EXPECT_THAT(EuclideanNeighbours(train, test, CosineOnly({1}, 0.07)).status(),
              StatusIs(StatusCode::kInvalidArgument, "euclidean_k"));
  EXPECT_THAT(RunKnn(Matrix(2, {0, 1, 1, 0, 1, 2e15f}, {0, 1, 0}), test, 2,
                     EuclideanOnly(1))
                  .status(),
              StatusIs(StatusCode::kInvalidArgument, "exceeds 1e15"));
  FeatureMatrix short_data = train;
  short_data.data.pop_back();
  EXPECT_THAT(RunKnn(short_data, test, 2, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "values"));
  FeatureMatrix nan = test;
  nan.data[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(RunKnn(train, nan, 2, k2).status(),
              StatusIs(StatusCode::kInvalidArgument, "not finite"));
  KnnOptions zero_chunk = k2;
  zero_chunk.train_chunk_rows = 0;
  EXPECT_THAT(RunKnn(train, test, 2, zero_chunk).status(),
              StatusIs(StatusCode::kInvalidArgument, "chunk"));
}

}  // namespace
}  // namespace sslbench::compute
