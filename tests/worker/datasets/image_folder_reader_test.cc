#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/datasets/test_files.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench::datasets {
namespace {

using ::sslbench::datasets::testing::Keys;
using ::sslbench::datasets::testing::MakeTempDir;
using ::sslbench::datasets::testing::WriteFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<DatasetReader> Open(const std::string& root) { return testing::Open("imagefolder", root); }

TEST(ImageFolderReaderTest, ListsLikeTorchvision) {
  const std::string root = MakeTempDir("order");
  // Classes are sorted folder names; files are walked as
  // sorted(os.walk(class_dir)) with sorted names, any depth, extensions
  // compared case-insensitively.
  for (const char* f : {"train/b/z.jpg", "train/b/a.JPEG", "train/b/sub/x.png", "train/b/sub-2/y.png",
                        "train/a/1.png", "train/a/notes.txt", "train/C/q.webp", "val/a/v.jpg",
                        "val/b/w.jpg", "val/C/u.jpg"}) {
    WriteFile(root + "/" + f, "bytes");
  }
  auto reader = Open(root);
  ASSERT_NE(reader, nullptr);
  auto train = reader->List("train", 0);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_THAT(train->class_names, ElementsAre("C", "a", "b"));
  EXPECT_THAT(Keys(*train), ElementsAre("train/C/q.webp:0", "train/a/1.png:1", "train/b/a.JPEG:2",
                                        "train/b/z.jpg:2", "train/b/sub/x.png:2",
                                        "train/b/sub-2/y.png:2"));
  auto test = reader->List("test", 0);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(Keys(*test), ElementsAre("val/C/u.jpg:0", "val/a/v.jpg:1", "val/b/w.jpg:2"));
  auto limited = reader->List("train", 2);
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->records.size(), 2u);

  auto bytes = reader->ReadRecord(train->records[0]);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(bytes->bytes, "bytes");
  EXPECT_FALSE(bytes->raw());
  auto files = reader->SplitFiles("train");
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(files->size(), 6u);
  EXPECT_EQ((*files)[0].path, root + "/train/C/q.webp");
  EXPECT_EQ((*files)[0].size, 5);
}

TEST(ImageFolderReaderTest, TestSplitFallsBackToTestFolder) {
  const std::string root = MakeTempDir("testdir");
  WriteFile(root + "/train/a/1.jpg", "x");
  WriteFile(root + "/test/a/2.jpg", "x");
  auto test = Open(root)->List("test", 0);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(Keys(*test), ElementsAre("test/a/2.jpg:0"));
}

TEST(ImageFolderReaderTest, ClassSetsMustAgreeAndTheErrorNamesBoth) {
  const std::string root = MakeTempDir("mismatch");
  WriteFile(root + "/train/cat/1.jpg", "x");
  WriteFile(root + "/train/dog/1.jpg", "x");
  WriteFile(root + "/val/cat/1.jpg", "x");
  WriteFile(root + "/val/cow/1.jpg", "x");
  auto test = Open(root)->List("test", 0);
  ASSERT_EQ(test.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(test.status().message(), HasSubstr(root + "/val"));
  EXPECT_THAT(test.status().message(), HasSubstr(root + "/train"));
  EXPECT_THAT(test.status().message(), HasSubstr("only in " + root + "/train: [dog]"));
  EXPECT_THAT(test.status().message(), HasSubstr("only in " + root + "/val: [cow]"));
}

TEST(ImageFolderReaderTest, LayoutErrorsNameTheFolderAndTheFix) {
  const std::string root = MakeTempDir("errors");
  EXPECT_EQ(OpenDatasetReader({"imagefolder", root + "/missing"}).status().code(),
            absl::StatusCode::kNotFound);
  auto none = Open(root)->List("train", 0);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr("has no train subfolder"));

  WriteFile(root + "/train/loose.jpg", "x");
  auto flat = Open(root)->List("train", 0);
  EXPECT_EQ(flat.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(flat.status().message(), HasSubstr("has no class subfolders"));

  WriteFile(root + "/train/empty/readme.txt", "x");
  auto empty = Open(root)->List("train", 0);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr(root + "/train/empty has no image files"));

  EXPECT_EQ(Open(root)->List("validation", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Open(root)->ReadRecord({"train/nope.jpg", 0}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(RegistryTest, KnowsItsFormatsAndRejectsOthers) {
  EXPECT_TRUE(IsKnownFormat("imagefolder"));
  EXPECT_TRUE(IsKnownFormat(kDefaultFormat));
  EXPECT_FALSE(IsKnownFormat("lmdb"));
  auto unknown = OpenDatasetReader({"lmdb", "/tmp"});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("supported: "));
  EXPECT_EQ(ParseBadImagePolicy("skip").value(), BadImagePolicy::kSkip);
  EXPECT_EQ(ParseBadImagePolicy("").value(), BadImagePolicy::kFail);
  EXPECT_EQ(ParseBadImagePolicy("ignore").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sslbench::datasets
