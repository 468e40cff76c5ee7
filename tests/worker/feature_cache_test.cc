#include "worker/feature_cache.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sslbench::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;

std::string Key(char c) { return std::string(64, c); }

compute::FeatureMatrix Features(int64_t rows, int64_t dim, float base) {
  compute::FeatureMatrix m;
  m.rows = rows;
  m.dim = dim;
  for (int64_t i = 0; i < rows * dim; ++i) m.data.push_back(base + static_cast<float>(i));
  for (int64_t r = 0; r < rows; ++r) m.labels.push_back(static_cast<int32_t>(r % 3) - (r == 0));
  return m;
}

std::string Dir(const std::string& name) {
  const std::string dir =
      (fs::path(::testing::TempDir()) / absl::StrCat("sslbench_fcache_", getpid(), "_", name)).string();
  fs::remove_all(dir);
  return dir;
}

constexpr int64_t kHeader = 32;

TEST(LocalFeatureCacheTest, RoundTripsAndEvictsLeastRecentlyUsed) {
  const std::string dir = Dir("lru");
  const int64_t one = kHeader + 10 * 4 * 4 + 10 * 4;  // 10 rows x 4 features
  auto cache = LocalFeatureCache::Open(dir, 2 * one);
  ASSERT_TRUE(cache.ok()) << cache.status();
  ASSERT_TRUE((*cache)->Put(Key('a'), Features(10, 4, 0)).ok());
  ASSERT_TRUE((*cache)->Put(Key('b'), Features(10, 4, 100)).ok());
  auto a = (*cache)->Get(Key('a'));  // a is now the most recent
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->data, Features(10, 4, 0).data);
  EXPECT_EQ(a->labels, Features(10, 4, 0).labels);
  ASSERT_TRUE((*cache)->Put(Key('c'), Features(10, 4, 200)).ok());  // evicts b
  EXPECT_THAT((*cache)->Keys(10), ElementsAre(Key('c'), Key('a')));
  EXPECT_EQ((*cache)->Get(Key('b')).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir + "/" + Key('b') + ".features"));
  EXPECT_EQ((*cache)->bytes(), 2 * one);

  // Too large for the cache: not stored, nothing evicted.
  ASSERT_TRUE((*cache)->Put(Key('d'), Features(100, 4, 0)).ok());
  EXPECT_THAT((*cache)->Keys(10), ElementsAre(Key('c'), Key('a')));

  // A restart finds the sets, most recently used first.
  cache->reset();
  auto again = LocalFeatureCache::Open(dir, 2 * one);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Keys(10).size(), 2u);
  EXPECT_EQ((*again)->Get(Key('c'))->data, Features(10, 4, 200).data);
}

// A set is kept under its cache key and generation: the set of a dropped
// cache (an older generation) is never served for the new one, and the
// plain keys go with lease requests.
TEST(LocalFeatureCacheTest, GenerationsKeepDroppedCachesApart) {
  EXPECT_EQ(LocalCacheKey(Key('a'), 0), Key('a'));
  EXPECT_EQ(LocalCacheKey(Key('a'), 42), Key('a') + "-g42");
  EXPECT_EQ(CacheKeyOf(Key('a') + "-g42"), Key('a'));
  EXPECT_EQ(CacheKeyOf(Key('a')), Key('a'));
  EXPECT_EQ(CacheKeyOf(Key('a') + "-gx"), Key('a') + "-gx");

  const std::string dir = Dir("generations");
  auto cache = LocalFeatureCache::Open(dir, 1 << 20);
  ASSERT_TRUE(cache.ok()) << cache.status();
  ASSERT_TRUE((*cache)->Put(LocalCacheKey(Key('a'), 7), Features(4, 2, 0)).ok());
  EXPECT_TRUE((*cache)->Get(LocalCacheKey(Key('a'), 7)).ok());
  EXPECT_EQ((*cache)->Get(LocalCacheKey(Key('a'), 8)).status().code(),
            absl::StatusCode::kNotFound);
  // Reopened, the generation-qualified set is found again.
  cache->reset();
  auto again = LocalFeatureCache::Open(dir, 1 << 20);
  ASSERT_TRUE(again.ok());
  EXPECT_THAT((*again)->Keys(10), ElementsAre(LocalCacheKey(Key('a'), 7)));
}

TEST(LocalFeatureCacheTest, DamagedFileIsDroppedNotServed) {
  const std::string dir = Dir("damage");
  auto cache = LocalFeatureCache::Open(dir, 1 << 20);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->Put(Key('e'), Features(5, 3, 1)).ok());
  const std::string path = dir + "/" + Key('e') + ".features";
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(kHeader + 7);
    f.put('\x7f');
  }
  EXPECT_EQ((*cache)->Get(Key('e')).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE((*cache)->Keys(10).empty());
  EXPECT_EQ((*cache)->Put("../escape", Features(1, 1, 0)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LocalFeatureCache::Open(dir, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sslbench::worker
