#include "common/dataset_digest.h"

#include <filesystem>

#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::client::testing::StatusIs;
using ::sslbench::client::testing::WriteFile;

const char* const kFiles[] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};

v1::DatasetSpec Idx(const std::string& root) {
  v1::DatasetSpec spec;
  spec.set_format("idx");
  spec.set_root(root);
  return spec;
}

class DatasetDigestTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("digest"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(DatasetDigestTest, HashesNamesAndContentsOfTheFourFiles) {
  std::string lines;
  for (const char* f : kFiles) {
    WriteFile(dir_ + "/" + f, std::string("content of ") + f);
    lines += std::string(f) + "=" + Sha256Hex(std::string("content of ") + f) + "\n";
  }
  absl::StatusOr<std::string> digest = DatasetDigest(Idx(dir_));
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Hex(lines));

  WriteFile(dir_ + "/t10k-labels-idx1-ubyte", "changed");
  absl::StatusOr<std::string> changed = DatasetDigest(Idx(dir_));
  ASSERT_TRUE(changed.ok());
  EXPECT_NE(*changed, *digest);
}

TEST_F(DatasetDigestTest, PrefersThePlainFileLikeTheReader) {
  for (const char* f : kFiles) WriteFile(dir_ + "/" + f + ".gz", "gz");
  absl::StatusOr<std::string> gz_only = DatasetDigest(Idx(dir_));
  ASSERT_TRUE(gz_only.ok()) << gz_only.status();
  std::string lines;
  for (const char* f : kFiles) lines += std::string(f) + ".gz=" + Sha256Hex("gz") + "\n";
  EXPECT_EQ(*gz_only, Sha256Hex(lines));

  WriteFile(dir_ + "/train-images-idx3-ubyte", "plain");
  absl::StatusOr<std::string> mixed = DatasetDigest(Idx(dir_));
  ASSERT_TRUE(mixed.ok());
  lines = std::string("train-images-idx3-ubyte=") + Sha256Hex("plain") + "\n";
  for (int i = 1; i < 4; ++i) {
    lines += std::string(kFiles[i]) + ".gz=" + Sha256Hex("gz") + "\n";
  }
  EXPECT_EQ(*mixed, Sha256Hex(lines));
}

TEST_F(DatasetDigestTest, MissingFileNamesFileAndRoot) {
  for (const char* f : kFiles) WriteFile(dir_ + "/" + f, "x");
  std::filesystem::remove(dir_ + "/t10k-images-idx3-ubyte");
  EXPECT_THAT(DatasetDigest(Idx(dir_)).status(),
              StatusIs(absl::StatusCode::kNotFound,
                       dir_ + " has no t10k-images-idx3-ubyte[.gz]"));
  EXPECT_THAT(DatasetDigest(Idx(dir_ + "/nope")).status(),
              StatusIs(absl::StatusCode::kNotFound, dir_ + "/nope"));
}

TEST_F(DatasetDigestTest, RejectsUnknownFormats) {
  v1::DatasetSpec spec = Idx(dir_);
  spec.set_format("webdataset");
  EXPECT_THAT(DatasetDigest(spec).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "webdataset"));
}

}  // namespace
}  // namespace sslbench
