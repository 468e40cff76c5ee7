#include "worker/compute/pretrain_zoo.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/compute/test_util.h"
#include "worker/compute/feature_extractor.h"

namespace sslbench::compute {
namespace {

using ::sslbench::compute::testing::MakeTempDir;
using ::testing::HasSubstr;

ZooOptions Tiny(const std::string& out) {
  ZooOptions o;
  o.fmnist_root = SSLBENCH_FASHION_MNIST_DIR;
  o.out = out;
  o.steps = 4;
  o.batch_size = 16;
  o.train_images = 256;
  return o;
}

// Features of one fixed batch of 28x28 grey inputs.
std::vector<float> FeaturesOf(const std::string& path, int64_t* dim) {
  ModelOptions m;
  m.path = path;
  m.channels = 1;
  m.mean = {0.286f};
  m.std = {0.353f};
  auto extractor = FeatureExtractor::Load(m);
  EXPECT_TRUE(extractor.ok()) << extractor.status();
  if (!extractor.ok()) return {};
  std::vector<float> batch(2 * 28 * 28);
  for (size_t i = 0; i < batch.size(); ++i) batch[i] = std::sin(0.01f * static_cast<float>(i));
  auto out = (*extractor)->Forward(batch.data(), 2, 28, 28, dim);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : std::vector<float>{};
}

TEST(PretrainZooTest, BuildsEveryMethodLoadableByTheWorkerAndReusesIt) {
  const std::string dir = MakeTempDir("zoo");
  std::vector<std::string> seen;
  auto zoo = BuildZoo(Tiny(dir), [&](const std::string& model, int step, int steps) {
    EXPECT_LE(step, steps);
    if (seen.empty() || seen.back() != model) seen.push_back(model);
  });
  ASSERT_TRUE(zoo.ok()) << zoo.status();
  ASSERT_EQ(zoo->size(), ZooModelNames().size());
  // Every method but random reports progress.
  EXPECT_EQ(seen.size(), ZooModelNames().size() - 2);
  for (const ZooModel& m : *zoo) {
    SCOPED_TRACE(m.name);
    EXPECT_FALSE(m.cached);
    EXPECT_TRUE(std::isfinite(m.final_loss));
    if (m.method == "random") {
      EXPECT_EQ(m.final_loss, 0.0);
    } else {
      EXPECT_GT(m.final_loss, 0.0);
    }
    int64_t dim = 0;
    const std::vector<float> f = FeaturesOf(m.path, &dim);
    EXPECT_EQ(dim, 64);
    EXPECT_EQ(f.size(), 128u);
    for (float v : f) ASSERT_TRUE(std::isfinite(v));
  }
  std::ifstream in(dir + "/zoo.yaml");
  const std::string yaml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(yaml, HasSubstr("name: vit-mae\n"));
  EXPECT_THAT(yaml, HasSubstr("family: masked-image-modeling\n"));

  // Unchanged options: reused, untouched.
  const auto mtime = std::filesystem::last_write_time(dir + "/resnet-dino.pt");
  auto again = BuildZoo(Tiny(dir));
  ASSERT_TRUE(again.ok()) << again.status();
  for (const ZooModel& m : *again) EXPECT_TRUE(m.cached) << m.name;
  EXPECT_EQ(std::filesystem::last_write_time(dir + "/resnet-dino.pt"), mtime);
  EXPECT_EQ((*again)[4].final_loss, (*zoo)[4].final_loss);
  std::filesystem::remove_all(dir);
}

TEST(PretrainZooTest, SameSeedSameModelAnotherSeedAnother) {
  const std::string a = MakeTempDir("zoo_a"), b = MakeTempDir("zoo_b"), c = MakeTempDir("zoo_c");
  SetComputeThreads(1);
  ZooOptions o = Tiny(a);
  o.only = {"vit-dino"};
  ASSERT_TRUE(BuildZoo(o).ok());
  o.out = b;
  ASSERT_TRUE(BuildZoo(o).ok());
  o.out = c;
  o.seed = 1;
  ASSERT_TRUE(BuildZoo(o).ok());
  SetComputeThreads(2);
  int64_t dim = 0;
  const std::vector<float> fa = FeaturesOf(a + "/vit-dino.pt", &dim);
  EXPECT_EQ(fa, FeaturesOf(b + "/vit-dino.pt", &dim));
  EXPECT_NE(fa, FeaturesOf(c + "/vit-dino.pt", &dim));
  for (const auto& d : {a, b, c}) std::filesystem::remove_all(d);
}

TEST(PretrainZooTest, BadOptionsAreInvalidArgument) {
  ZooOptions o = Tiny(MakeTempDir("zoo_bad"));
  o.only = {"resnet-magic"};
  EXPECT_EQ(BuildZoo(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.only.clear();
  o.batch_size = 1;
  EXPECT_EQ(BuildZoo(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.batch_size = 16;
  o.fmnist_root = "/nonexistent";
  EXPECT_EQ(BuildZoo(o).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::remove_all(o.out);
}

}  // namespace
}  // namespace sslbench::compute
