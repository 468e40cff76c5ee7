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

std::unique_ptr<DatasetReader> Open(const std::string& root) { return testing::Open("csv", root); }

TEST(CsvManifestReaderTest, NamedLabelsAreSortedClassesInFileOrder) {
  const std::string root = MakeTempDir("named");
  WriteFile(root + "/train.csv",
            "path,label\nimg/3.jpg,dog\n\"img/with,comma.jpg\",cat\nimg/1.jpg,\"dog\"\n");
  WriteFile(root + "/val.csv", "img/v.jpg,cat\n");
  for (const char* f : {"img/3.jpg", "img/with,comma.jpg", "img/1.jpg", "img/v.jpg"}) {
    WriteFile(root + "/" + f, f);
  }
  auto reader = Open(root);
  auto train = reader->List("train", 0);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_THAT(train->class_names, ElementsAre("cat", "dog"));
  EXPECT_THAT(Keys(*train), ElementsAre("img/3.jpg:1", "img/with,comma.jpg:0", "img/1.jpg:1"));
  auto test = reader->List("test", 0);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(Keys(*test), ElementsAre("img/v.jpg:0"));

  auto bytes = reader->ReadRecord(train->records[1]);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(bytes->bytes, "img/with,comma.jpg");
  auto files = reader->SplitFiles("train");
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 4u);  // the manifest and its three images
  EXPECT_EQ((*files)[0].path, root + "/train.csv");
}

TEST(CsvManifestReaderTest, IntegerLabelsAreClassIndexesInTsvToo) {
  const std::string root = MakeTempDir("numeric");
  WriteFile(root + "/train.tsv", "a.png\t2\nb.png\t10\nc.png\t0\n");
  WriteFile(root + "/test.tsv", "d.png\t10\n");
  auto reader = Open(root);
  auto train = reader->List("train", 2);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->class_names.size(), 11u);
  EXPECT_THAT(Keys(*train), ElementsAre("a.png:2", "b.png:10"));
  auto test = reader->List("test", 0);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(Keys(*test), ElementsAre("d.png:10"));
}

TEST(CsvManifestReaderTest, OneManifestWithASplitColumn) {
  const std::string root = MakeTempDir("shared");
  WriteFile(root + "/manifest.csv",
            "path,label,split\n/abs/x.jpg,a,train\ny.jpg,b,val\nz.jpg,b,train\nw.jpg,a,test\n");
  auto reader = Open(root);
  auto train = reader->List("train", 0);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_THAT(Keys(*train), ElementsAre("/abs/x.jpg:0", "z.jpg:1"));
  auto test = reader->List("test", 0);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(Keys(*test), ElementsAre("y.jpg:1", "w.jpg:0"));
}

TEST(CsvManifestReaderTest, ErrorsNameTheFileTheLineAndTheFix) {
  const std::string root = MakeTempDir("errors");
  auto missing = Open(root)->List("train", 0);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("has no manifest for the train split"));

  WriteFile(root + "/train.csv", "a.jpg,cat\njust-a-path.jpg\n");
  auto short_row = Open(root)->List("train", 0);
  EXPECT_EQ(short_row.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_row.status().message(), HasSubstr(root + "/train.csv:2: expected 2 or 3 fields"));

  WriteFile(root + "/train.csv", "a.jpg,cat\n\"b.jpg,dog\n");
  EXPECT_THAT(Open(root)->List("train", 0).status().message(),
              HasSubstr("train.csv:2: unterminated quote"));

  WriteFile(root + "/train.csv", "a.jpg,cat\nb.jpg,dog,holdout\n");
  EXPECT_THAT(Open(root)->List("train", 0).status().message(),
              HasSubstr("split \"holdout\" is not train, val or test"));

  WriteFile(root + "/train.csv", "a.jpg,cat\nb.jpg,dog\n");
  WriteFile(root + "/val.csv", "c.jpg,cow\n");
  auto test = Open(root)->List("test", 0);
  EXPECT_EQ(test.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(test.status().message(), HasSubstr(root + "/val.csv"));
  EXPECT_THAT(test.status().message(), HasSubstr(root + "/train.csv"));
  EXPECT_THAT(test.status().message(), HasSubstr("[cow]"));

  EXPECT_EQ(Open(root)->SplitFiles("train").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sslbench::datasets
