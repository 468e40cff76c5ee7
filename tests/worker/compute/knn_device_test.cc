// The candidate search (knn_device.cc), run on the CPU: it must find the
// tile search's neighbours and metrics exactly, whatever the tile size,
// candidate precision or number of near-equal scores; and a device request
// this build cannot serve fails before any work.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/compute/test_util.h"
#include "worker/compute/device.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/knn.h"

namespace sslbench::compute {
namespace {

using testing::Blobs;
using testing::ExpectSameMetrics;
using testing::StatusIs;

class KnnDeviceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetComputeThreads(2); }
};

KnnOptions Cosine(const std::string& search) {
  KnnOptions o;
  o.ks = {1, 10, 20, 100};
  o.temperatures = {0.07, 0.5};
  o.euclidean_k = 0;
  o.search = search;
  return o;
}

TEST_F(KnnDeviceTest, ResolvesDeviceNames) {
  EXPECT_EQ(*ResolveDevice("cpu"), "cpu");
  if (CudaDeviceCount() > 0) {
    EXPECT_EQ(*ResolveDevice("auto"), "cuda:0");
    EXPECT_EQ(*ResolveDevice(""), "cuda:0");
    EXPECT_EQ(*ResolveDevice("cuda"), "cuda:0");
    EXPECT_THAT(ResolveDevice("cuda:99").status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, "CUDA device(s)"));
  } else {
    // Debian's LibTorch has no CUDA.
    EXPECT_EQ(*ResolveDevice("auto"), "cpu");
    EXPECT_EQ(*ResolveDevice(""), "cpu");
    EXPECT_THAT(ResolveDevice("cuda").status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, "CUDA is not available"));
    EXPECT_THAT(ResolveDevice("cuda:1").status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, "CUDA is not available"));
  }
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:1x"}) {
    EXPECT_THAT(ResolveDevice(bad).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, "is not one of"))
        << bad;
  }
  EXPECT_TRUE(IsCudaDevice("cuda:3"));
  EXPECT_FALSE(IsCudaDevice("cpu"));
}

TEST_F(KnnDeviceTest, ResolvesPrecision) {
  EXPECT_EQ(*ResolvePrecision("auto", "cpu"), "fp32");
  EXPECT_EQ(*ResolvePrecision("", "cuda:0"), "bf16");
  EXPECT_EQ(*ResolvePrecision("bf16", "cpu"), "bf16");
  EXPECT_EQ(*ResolvePrecision("fp16", "cuda:1"), "fp16");
  EXPECT_THAT(ResolvePrecision("fp16", "cpu").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "needs a CUDA device"));
  EXPECT_THAT(ResolvePrecision("half", "cpu").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "not one of"));
}

// A CUDA request fails before any work where CUDA is missing, and gives the
// CPU's metrics where it is present; bad options fail everywhere.
TEST_F(KnnDeviceTest, CudaRequestRunsOrFailsBeforeAnyWork) {
  const FeatureMatrix train = Blobs(200, 8, 4, 3.0, 1);
  const FeatureMatrix test = Blobs(50, 8, 4, 3.0, 2);
  KnnOptions o = Cosine("auto");
  o.device = "cuda";
  if (CudaDeviceCount() > 0) {
    const auto on_cuda = RunKnn(train, test, 4, o);
    const auto on_cpu = RunKnn(train, test, 4, Cosine("tiles"));
    ASSERT_TRUE(on_cuda.ok() && on_cpu.ok());
    for (size_t i = 0; i < on_cpu->size(); ++i) {
      ExpectSameMetrics((*on_cuda)[i].metrics, (*on_cpu)[i].metrics);
    }
    o.search = "tiles";
    EXPECT_THAT(RunKnn(train, test, 4, o).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, "CPU only"));
  } else {
    EXPECT_THAT(RunKnn(train, test, 4, o).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, "CUDA is not available"));
    o.search = "tiles";
    EXPECT_THAT(RunKnn(train, test, 4, o).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, "CUDA is not available"));
  }
  o.device = "cpu";
  o.search = "fastest";
  EXPECT_THAT(RunKnn(train, test, 4, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "search must be"));
  o.search = "candidates";
  o.candidate_precision = "fp8";
  EXPECT_THAT(RunKnn(train, test, 4, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "candidate_precision"));
}

// Tiles of 700 train rows (not a multiple of the 32-column groups, the last
// one short) and a test block that is not a multiple of anything.
TEST_F(KnnDeviceTest, CosineCandidatesEqualTilesAtEveryPrecision) {
  const FeatureMatrix train = Blobs(5000, 48, 10, 1.5, 11);
  const FeatureMatrix test = Blobs(700, 48, 10, 1.5, 12);
  const auto tiles = RunKnn(train, test, 10, Cosine("tiles"));
  ASSERT_TRUE(tiles.ok()) << tiles.status();
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    KnnOptions o = Cosine("candidates");
    o.candidate_precision = precision;
    o.device_tile_rows = 700;
    o.device_memory_mib = 1;  // 1 MiB of scores: blocks of ~250 test rows
    const auto candidates = RunKnn(train, test, 10, o);
    ASSERT_TRUE(candidates.ok()) << candidates.status();
    ASSERT_EQ(candidates->size(), tiles->size());
    for (size_t i = 0; i < tiles->size(); ++i) {
      EXPECT_EQ((*candidates)[i].k, (*tiles)[i].k);
      EXPECT_EQ((*candidates)[i].temperature, (*tiles)[i].temperature);
      ExpectSameMetrics((*candidates)[i].metrics, (*tiles)[i].metrics);
    }
  }
}

// Tiles large enough for the selection by group maxima (32-column groups,
// the best k + 64 groups, then the best of their scores), with 10 columns
// left over outside whole groups; the last tile is small enough for a plain
// top-k.
TEST_F(KnnDeviceTest, GroupMaximaSelectionKeepsTheBestScores) {
  const FeatureMatrix train = Blobs(30000, 24, 10, 1.0, 41);
  const FeatureMatrix test = Blobs(300, 24, 10, 1.0, 42);
  KnnOptions tiles = Cosine("tiles");
  tiles.ks = {1, 5, 10};
  KnnOptions candidates = tiles;
  candidates.search = "candidates";
  candidates.device_tile_rows = 12010;
  const auto a = RunKnn(train, test, 10, tiles);
  const auto b = RunKnn(train, test, 10, candidates);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < a->size(); ++i) {
    ExpectSameMetrics((*b)[i].metrics, (*a)[i].metrics);
  }
  EXPECT_EQ(b->front().exhaustive_rows, 0);
}

// Every train row duplicated 200 times: at k = 100 the candidate lists
// (k + 64) cannot hold every row tied with the k-th, so rows fall back to the
// exhaustive search, whose ties still go to the lower train index.
TEST_F(KnnDeviceTest, TiesBeyondTheCandidateListFallBackToExhaustive) {
  const FeatureMatrix base = Blobs(12, 16, 3, 2.0, 21);
  FeatureMatrix train;
  train.dim = base.dim;
  for (int copy = 0; copy < 200; ++copy) {
    for (int64_t r = 0; r < base.rows; ++r) {
      train.data.insert(train.data.end(), base.data.begin() + r * base.dim,
                        base.data.begin() + (r + 1) * base.dim);
      // Copies get rotating labels, so which tied rows vote matters.
      train.labels.push_back(static_cast<int32_t>((base.labels[r] + copy) % 3));
      ++train.rows;
    }
  }
  const FeatureMatrix test = Blobs(90, 16, 3, 2.0, 22);
  const auto tiles = RunKnn(train, test, 3, Cosine("tiles"));
  ASSERT_TRUE(tiles.ok()) << tiles.status();
  KnnOptions o = Cosine("candidates");
  o.device_tile_rows = 1000;
  const auto candidates = RunKnn(train, test, 3, o);
  ASSERT_TRUE(candidates.ok()) << candidates.status();
  EXPECT_GT(candidates->front().exhaustive_rows, 0);
  for (size_t i = 0; i < tiles->size(); ++i) {
    ExpectSameMetrics((*candidates)[i].metrics, (*tiles)[i].metrics);
  }
}

TEST_F(KnnDeviceTest, EuclideanCandidatesFindTheExactNeighbours) {
  // Non-centred, scaled features: the error bound grows with the norms.
  const FeatureMatrix train = Blobs(4000, 40, 8, 1.0, 31, 3.0, 5.0);
  const FeatureMatrix test = Blobs(300, 40, 8, 1.0, 32, 3.0, 5.0);
  KnnOptions tiles = Cosine("tiles");
  tiles.ks = {};
  tiles.euclidean_k = 20;
  tiles.euclidean_projection_dim = 0;
  KnnOptions candidates = tiles;
  candidates.search = "candidates";
  candidates.device_tile_rows = 999;
  const auto expected = EuclideanNeighbours(train, test, tiles);
  ASSERT_TRUE(expected.ok()) << expected.status();
  EuclideanSearchStats stats;
  const auto found = EuclideanNeighbours(train, test, candidates, &stats);
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->size(), expected->size());
  for (size_t r = 0; r < found->size(); ++r) {
    ASSERT_EQ((*found)[r].size(), 20u);
    for (size_t j = 0; j < 20; ++j) {
      EXPECT_EQ((*found)[r][j].index, (*expected)[r][j].index) << r << " " << j;
      EXPECT_NEAR((*found)[r][j].sq_distance, (*expected)[r][j].sq_distance,
                  1e-12 * (*expected)[r][j].sq_distance);
    }
  }
  const auto a = RunKnn(train, test, 8, tiles);
  const auto b = RunKnn(train, test, 8, candidates);
  ASSERT_TRUE(a.ok() && b.ok());
  ExpectSameMetrics(b->front().metrics, a->front().metrics);
}

}  // namespace
}  // namespace sslbench::compute
