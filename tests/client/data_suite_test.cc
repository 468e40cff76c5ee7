#include "client/data_suite.h"

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"
#include "tests/worker/datasets/test_files.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/image.h"

namespace sslbench::client {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::datasets::testing::Open;
using ::sslbench::client::testing::ReadFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist";

// The decoded pixels of each record of `split`, in the reader's order, with
// their class names.
struct Decoded {
  std::vector<std::vector<uint8_t>> pixels;
  std::vector<std::string> classes;
};

Decoded DecodeSplit(const std::string& root, const std::string& split) {
  Decoded out;
  auto reader = Open("imagefolder", root);
  if (reader == nullptr) return out;
  auto listing = reader->List(split, 0);
  EXPECT_TRUE(listing.ok()) << listing.status();
  if (!listing.ok()) return out;
  for (const datasets::Record& r : listing->records) {
    auto bytes = reader->ReadRecord(r);
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    auto image = image::DecodeImage(bytes->bytes, r.key);
    EXPECT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->height, 28);
    EXPECT_EQ(image->channels, 1);
    out.pixels.push_back(image->pixels);
    out.classes.push_back(listing->class_names[r.label]);
  }
  return out;
}

TEST(DataSuiteTest, WritesEveryShiftAsAnImageFolderAndReusesIt) {
  const std::string dir = MakeTempDir("suite");
  SuiteOptions options;
  options.out = dir;
  options.train_per_domain = 40;
  options.test_per_domain = 20;
  int64_t reported = 0;
  auto domains = BuildSuite(options, [&](const std::string&, int64_t done, int64_t total) {
    EXPECT_LE(done, total);
    reported = done;
  });
  ASSERT_TRUE(domains.ok()) << domains.status();
  EXPECT_EQ(reported, 60);
  ASSERT_EQ(domains->size(), 7u);
  EXPECT_TRUE((*domains)[0].in_domain);
  for (const SuiteDomain& d : *domains) {
    SCOPED_TRACE(d.name);
    EXPECT_FALSE(d.cached);
    EXPECT_EQ(d.train, 40);
    EXPECT_EQ(d.test, 20);
    auto reader = Open("imagefolder", d.root);
    ASSERT_NE(reader, nullptr);
    auto train = reader->List("train", 0);
    ASSERT_TRUE(train.ok()) << train.status();
    EXPECT_EQ(train->records.size(), 40u);
    EXPECT_EQ(reader->List("test", 0)->records.size(), 20u);
  }
  EXPECT_THAT(ReadFile(dir + "/suite.yaml"), HasSubstr("name: fmnist-sketch\n    format: imagefolder"));

  // The source pixels and labels, by index (ImageFolder lists by class, then
  // file name; the file names are the source indexes).
  auto idx = Open("idx", kFashionMnist);
  ASSERT_NE(idx, nullptr);
  auto source = idx->List("train", 40);
  ASSERT_TRUE(source.ok());
  std::map<std::string, std::vector<uint8_t>> by_name;  // "000007.png" -> pixels
  const char* fine[] = {"0-t-shirt-top", "1-trouser", "2-pullover", "3-dress", "4-coat",
                        "5-sandal", "6-shirt", "7-sneaker", "8-bag", "9-ankle-boot"};
  std::map<std::string, std::string> fine_class;
  for (size_t i = 0; i < source->records.size(); ++i) {
    auto bytes = idx->ReadRecord(source->records[i]);
    char name[32];
    std::snprintf(name, sizeof(name), "%06zu.png", i);
    by_name[name].assign(bytes->bytes.begin(), bytes->bytes.end());
    fine_class[name] = fine[source->records[i].label];
  }
  auto listing = Open("imagefolder", dir + "/fmnist")->List("train", 0);
  const Decoded plain = DecodeSplit(dir + "/fmnist", "train");
  const Decoded inverted = DecodeSplit(dir + "/fmnist-inverted", "train");
  const Decoded lowres = DecodeSplit(dir + "/fmnist-lowres", "train");
  ASSERT_EQ(plain.pixels.size(), 40u);
  for (size_t r = 0; r < plain.pixels.size(); ++r) {
    const std::string file = std::filesystem::path(listing->records[r].key).filename();
    EXPECT_EQ(plain.pixels[r], by_name[file]) << file;
    EXPECT_EQ(plain.classes[r], fine_class[file]) << file;
    // Same source order in every domain with the fine labels.
    for (size_t p = 0; p < 28 * 28; ++p) {
      ASSERT_EQ(inverted.pixels[r][p], 255 - plain.pixels[r][p]) << file;
    }
    // 4x4 blocks of one value.
    for (int y = 0; y < 28; ++y) {
      for (int x = 0; x < 28; ++x) {
        ASSERT_EQ(lowres.pixels[r][y * 28 + x], lowres.pixels[r][(y / 4 * 4) * 28 + x / 4 * 4]);
      }
    }
  }
  auto coarse = Open("imagefolder", dir + "/fmnist-coarse")->List("train", 0);
  ASSERT_TRUE(coarse.ok());
  EXPECT_THAT(coarse->class_names,
              ElementsAre("0-upper-body", "1-trousers", "2-footwear", "3-bags"));
  for (const datasets::Record& r : coarse->records) {
    const std::string file = std::filesystem::path(r.key).filename();
    const std::string& f = fine_class[file];
    const std::string& c = coarse->class_names[r.label];
    if (f == "1-trouser") EXPECT_EQ(c, "1-trousers");
    if (f == "8-bag") EXPECT_EQ(c, "3-bags");
    if (f == "5-sandal" || f == "7-sneaker" || f == "9-ankle-boot") EXPECT_EQ(c, "2-footwear");
    if (f == "0-t-shirt-top" || f == "2-pullover" || f == "3-dress" || f == "4-coat" ||
        f == "6-shirt") {
      EXPECT_EQ(c, "0-upper-body");
    }
  }

  // Unchanged parameters: every domain reused, files untouched.
  const auto mtime = std::filesystem::last_write_time(dir + "/fmnist-noisy/.sslbench-suite");
  auto again = BuildSuite(options);
  ASSERT_TRUE(again.ok()) << again.status();
  for (const SuiteDomain& d : *again) EXPECT_TRUE(d.cached) << d.name;
  EXPECT_EQ(std::filesystem::last_write_time(dir + "/fmnist-noisy/.sslbench-suite"), mtime);
  // Another seed changes the random shifts only; they are rebuilt.
  const Decoded noisy = DecodeSplit(dir + "/fmnist-noisy", "train");
  options.seed = 1;
  auto reseeded = BuildSuite(options);
  ASSERT_TRUE(reseeded.ok()) << reseeded.status();
  EXPECT_FALSE((*reseeded)[4].cached);
  EXPECT_NE(DecodeSplit(dir + "/fmnist-noisy", "train").pixels, noisy.pixels);
  std::filesystem::remove_all(dir);
}

TEST(DataSuiteTest, MissingSourceIsNotFound) {
  const std::string dir = MakeTempDir("suite");
  SuiteOptions options;
  options.out = dir;
  options.source = dir + "/nothing-here";
  auto domains = BuildSuite(options);
  EXPECT_EQ(domains.status().code(), absl::StatusCode::kNotFound) << domains.status();
  // Nothing half-built is left behind.
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    ADD_FAILURE() << "left behind: " << entry.path();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sslbench::client
