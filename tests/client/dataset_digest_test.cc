#include "common/dataset_digest.h"

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::client::testing::StatusIs;
using ::sslbench::client::testing::WriteFile;
namespace fs = std::filesystem;

const char* const kFiles[] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};

v1::DatasetSpec Spec(const std::string& format, const std::string& root) {
  v1::DatasetSpec spec;
  spec.set_format(format);
  spec.set_root(root);
  return spec;
}

std::string Digest(const v1::DatasetSpec& spec) {
  absl::StatusOr<std::string> d = DatasetDigest(spec);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : "";
}

// Rewrites a file with other bytes of the same size and the same mtime.
void SameSizeAndTime(const std::string& path, const std::string& bytes) {
  const auto mtime = fs::last_write_time(path);
  ASSERT_EQ(fs::file_size(path), bytes.size());
  WriteFile(path, bytes);
  fs::last_write_time(path, mtime);
}

class DatasetDigestTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("digest"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(DatasetDigestTest, IdxCoversEveryFilesBytesAndTimes) {
  for (const char* f : kFiles) WriteFile(dir_ + "/" + f, std::string("content of ") + f);
  const v1::DatasetSpec spec = Spec("idx", dir_);
  const std::string digest = Digest(spec);
  EXPECT_EQ(digest.size(), 64u);
  EXPECT_EQ(Digest(spec), digest);  // deterministic

  const std::string labels = dir_ + "/t10k-labels-idx1-ubyte";
  SameSizeAndTime(labels, "CONTENT OF t10k-labels-idx1-ubyte");
  const std::string edited = Digest(spec);
  EXPECT_NE(edited, digest);

  fs::last_write_time(labels, fs::last_write_time(labels) + std::chrono::seconds(5));
  EXPECT_NE(Digest(spec), edited);
}

TEST_F(DatasetDigestTest, IdxHashesThePlainFileWhenBothExist) {
  for (const char* f : kFiles) WriteFile(dir_ + "/" + f + ".gz", "gz");
  const v1::DatasetSpec spec = Spec("idx", dir_);
  const std::string gz_only = Digest(spec);
  WriteFile(dir_ + "/train-images-idx3-ubyte", "plain");
  const std::string mixed = Digest(spec);
  EXPECT_NE(mixed, gz_only);
  // The reader ignores the .gz beside a plain file, and so does the digest.
  SameSizeAndTime(dir_ + "/train-images-idx3-ubyte.gz", "GZ");
  EXPECT_EQ(Digest(spec), mixed);
}

TEST_F(DatasetDigestTest, MissingFilesAndFoldersAreNamed) {
  for (const char* f : kFiles) WriteFile(dir_ + "/" + f, "x");
  fs::remove(dir_ + "/t10k-images-idx3-ubyte");
  EXPECT_THAT(DatasetDigest(Spec("idx", dir_)).status(),
              StatusIs(absl::StatusCode::kNotFound, dir_ + "/t10k-images-idx3-ubyte[.gz]"));
  EXPECT_THAT(DatasetDigest(Spec("idx", dir_ + "/nope")).status(),
              StatusIs(absl::StatusCode::kNotFound, dir_ + "/nope does not exist"));
}

TEST_F(DatasetDigestTest, ImageFolderCoversTheFileList) {
  WriteFile(dir_ + "/train/cat/1.jpg", "cat one");
  WriteFile(dir_ + "/train/dog/1.jpg", "dog one");
  WriteFile(dir_ + "/val/cat/2.jpg", "cat two");
  WriteFile(dir_ + "/val/dog/2.jpg", "dog two");
  WriteFile(dir_ + "/train/dog/notes.txt", "not an image: not part of the split");
  const v1::DatasetSpec spec = Spec("imagefolder", dir_);
  const std::string digest = Digest(spec);

  WriteFile(dir_ + "/train/dog/readme.md", "still not an image");
  EXPECT_EQ(Digest(spec), digest);

  SameSizeAndTime(dir_ + "/val/dog/2.jpg", "DOG TWO");
  const std::string edited = Digest(spec);
  EXPECT_NE(edited, digest);

  WriteFile(dir_ + "/train/dog/3.png", "dog three");
  EXPECT_NE(Digest(spec), edited);
}

TEST_F(DatasetDigestTest, RejectsUnknownFormats) {
  EXPECT_THAT(DatasetDigest(Spec("lmdb", dir_)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "\"lmdb\" is not supported (supported: "));
}

}  // namespace
}  // namespace sslbench
