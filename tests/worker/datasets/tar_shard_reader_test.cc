#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
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

// A ustar archive of (name, contents), as Python's tarfile writes one.
std::string Tar(const std::vector<std::pair<std::string, std::string>>& files) {
  std::string out;
  for (const auto& [name, data] : files) {
    char h[512] = {0};
    std::snprintf(h, 100, "%s", name.c_str());
    std::snprintf(h + 100, 8, "%07o", 0644);
    std::snprintf(h + 108, 8, "%07o", 0);
    std::snprintf(h + 116, 8, "%07o", 0);
    std::snprintf(h + 124, 12, "%011o", static_cast<unsigned>(data.size()));
    std::snprintf(h + 136, 12, "%011o", 0);
    h[156] = '0';
    std::memcpy(h + 257, "ustar\0" "00", 8);
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    std::snprintf(h + 148, 8, "%06o", sum);
    out.append(h, 512);
    out.append(data);
    out.append((512 - data.size() % 512) % 512, '\0');
  }
  out.append(1024, '\0');
  return out;
}

std::unique_ptr<DatasetReader> Open(const std::string& root) { return testing::Open("webdataset", root); }

TEST(TarShardReaderTest, SamplesInShardOrderWithTheirClasses) {
  const std::string root = MakeTempDir("shards");
  WriteFile(root + "/train/shard-000001.tar",
            Tar({{"b.cls", "0\n"}, {"b.jpg", "BBBB"}, {"a.jpg", "AAAAA"}, {"a.cls", "2"},
                 {"a.json", "{}"}}));
  WriteFile(root + "/train/shard-000000.tar",
            Tar({{"dir/x.y.png", std::string(700, 'x')}, {"dir/x.y.cls", "1"}}));
  WriteFile(root + "/val/shard-0.tar", Tar({{"v.jpeg", "V"}, {"v.cls", "1"}}));
  auto reader = Open(root);
  auto train = reader->List("train", 0);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_THAT(Keys(*train), ElementsAre("train/shard-000000.tar/dir/x:1",
                                        "train/shard-000001.tar/b:0",
                                        "train/shard-000001.tar/a:2"));
  EXPECT_EQ(train->class_names.size(), 3u);
  auto big = reader->ReadRecord(train->records[0]);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(big->bytes, std::string(700, 'x'));
  EXPECT_EQ(reader->ReadRecord(train->records[2])->bytes, "AAAAA");
  auto test = reader->List("test", 0);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(Keys(*test), ElementsAre("val/shard-0.tar/v:1"));
  auto files = reader->SplitFiles("train");
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[0].path, root + "/train/shard-000000.tar");
}

TEST(TarShardReaderTest, ErrorsNameTheShardAndTheSample) {
  const std::string root = MakeTempDir("bad");
  EXPECT_EQ(Open(root)->List("train", 0).status().code(), absl::StatusCode::kNotFound);

  WriteFile(root + "/train/s.tar", Tar({{"a.jpg", "A"}}));
  auto no_class = Open(root)->List("train", 0);
  EXPECT_EQ(no_class.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_class.status().message(), HasSubstr("s.tar: sample \"a\" has an image but no a.cls"));

  WriteFile(root + "/train/s.tar", Tar({{"a.jpg", "A"}, {"a.cls", "cat"}}));
  EXPECT_THAT(Open(root)->List("train", 0).status().message(),
              HasSubstr("a.cls holds \"cat\", not a class index"));

  const std::string whole = Tar({{"a.jpg", std::string(2000, 'a')}, {"a.cls", "0"}});
  WriteFile(root + "/train/s.tar", whole.substr(0, 1500));
  EXPECT_EQ(Open(root)->List("train", 0).status().code(), absl::StatusCode::kDataLoss);

  WriteFile(root + "/train/s.tar", std::string(2048, 'z'));
  EXPECT_THAT(Open(root)->List("train", 0).status().message(), HasSubstr("not a tar archive"));
}

}  // namespace
}  // namespace sslbench::datasets
