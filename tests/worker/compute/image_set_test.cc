#include "worker/compute/image_set.h"

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/compute/test_util.h"

namespace sslbench::compute {
namespace {

using ::sslbench::compute::testing::MakeTempDir;
using ::sslbench::compute::testing::StatusIs;
using ::testing::ElementsAre;

void PutBigEndian(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(v >> 24);
  out.push_back((v >> 16) & 0xFF);
  out.push_back((v >> 8) & 0xFF);
  out.push_back(v & 0xFF);
}

std::vector<uint8_t> ImagesFile(uint32_t count, uint32_t rows, uint32_t cols,
                                const std::vector<uint8_t>& pixels) {
  std::vector<uint8_t> out;
  PutBigEndian(out, 0x00000803);
  PutBigEndian(out, count);
  PutBigEndian(out, rows);
  PutBigEndian(out, cols);
  out.insert(out.end(), pixels.begin(), pixels.end());
  return out;
}

std::vector<uint8_t> LabelsFile(uint32_t count,
                                const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> out;
  PutBigEndian(out, 0x00000801);
  PutBigEndian(out, count);
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

void WritePlain(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  ASSERT_TRUE(f.good()) << path;
}

void WriteGz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, bytes.data(), bytes.size()),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

// Three 2x3 images with pixels 0..17 and labels 0, 2, 1.
const std::vector<uint8_t>& Pixels() {
  static const auto* p = [] {
    auto* v = new std::vector<uint8_t>(18);
    for (int i = 0; i < 18; ++i) (*v)[i] = static_cast<uint8_t>(i * 10);
    return v;
  }();
  return *p;
}

void WriteSplit(const std::string& dir, const std::string& prefix, bool gz) {
  const auto images = ImagesFile(3, 2, 3, Pixels());
  const auto labels = LabelsFile(3, {0, 2, 1});
  const std::string base = dir + "/" + prefix;
  if (gz) {
    WriteGz(base + "-images-idx3-ubyte.gz", images);
    WriteGz(base + "-labels-idx1-ubyte.gz", labels);
  } else {
    WritePlain(base + "-images-idx3-ubyte", images);
    WritePlain(base + "-labels-idx1-ubyte", labels);
  }
}

TEST(ReadIdxSplitTest, ReadsPlainFiles) {
  const std::string dir = MakeTempDir("plain");
  WriteSplit(dir, "train", /*gz=*/false);
  absl::StatusOr<ImageSet> set = ReadIdxSplit(dir, "train");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->count, 3);
  EXPECT_EQ(set->channels, 1);
  EXPECT_EQ(set->height, 2);
  EXPECT_EQ(set->width, 3);
  EXPECT_EQ(set->image_bytes(), 6);
  EXPECT_EQ(set->pixels, Pixels());
  EXPECT_THAT(set->labels, ElementsAre(0, 2, 1));
  EXPECT_EQ(set->num_classes, 3);
}

TEST(ReadIdxSplitTest, ReadsGzipFilesAndTestSplitName) {
  const std::string dir = MakeTempDir("gz");
  WriteSplit(dir, "t10k", /*gz=*/true);
  absl::StatusOr<ImageSet> set = ReadIdxSplit(dir, "test");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->count, 3);
  EXPECT_EQ(set->pixels, Pixels());
  EXPECT_THAT(set->labels, ElementsAre(0, 2, 1));

  auto reader = datasets::OpenDatasetReader({"idx", dir});
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto files = (*reader)->SplitFiles("test");
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[0].path, dir + "/t10k-images-idx3-ubyte.gz");
  EXPECT_EQ((*files)[1].path, dir + "/t10k-labels-idx1-ubyte.gz");
}

TEST(ReadIdxSplitTest, LimitKeepsTheFirstImages) {
  const std::string dir = MakeTempDir("limit");
  WriteSplit(dir, "train", /*gz=*/true);
  absl::StatusOr<ImageSet> set = ReadIdxSplit(dir, "train", 2);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->count, 2);
  EXPECT_EQ(set->pixels,
            std::vector<uint8_t>(Pixels().begin(), Pixels().begin() + 12));
  EXPECT_THAT(set->labels, ElementsAre(0, 2));
  EXPECT_EQ(set->num_classes, 3);
}

TEST(ReadIdxSplitTest, MissingFileIsNotFoundNamingThePath) {
  const std::string dir = MakeTempDir("missing");
  EXPECT_THAT(
      ReadIdxSplit(dir, "train").status(),
      StatusIs(absl::StatusCode::kNotFound, dir + "/train-images-idx3-ubyte"));
  WritePlain(dir + "/train-images-idx3-ubyte", ImagesFile(3, 2, 3, Pixels()));
  EXPECT_THAT(
      ReadIdxSplit(dir, "train").status(),
      StatusIs(absl::StatusCode::kNotFound, dir + "/train-labels-idx1-ubyte"));
  auto reader = datasets::OpenDatasetReader({"idx", dir});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_THAT((*reader)->SplitFiles("train").status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(ReadIdxSplit("/nonexistent/sslbench", "test").status(),
              StatusIs(absl::StatusCode::kNotFound,
                       "dataset folder /nonexistent/sslbench does not exist"));
}

TEST(ReadIdxSplitTest, TruncatedPlainFileIsDataLoss) {
  const std::string dir = MakeTempDir("truncated");
  std::vector<uint8_t> images = ImagesFile(3, 2, 3, Pixels());
  images.resize(images.size() - 4);
  WritePlain(dir + "/train-images-idx3-ubyte", images);
  WritePlain(dir + "/train-labels-idx1-ubyte", LabelsFile(3, {0, 2, 1}));
  EXPECT_THAT(ReadIdxSplit(dir, "train").status(),
              StatusIs(absl::StatusCode::kDataLoss, "truncated"));
}

TEST(ReadIdxSplitTest, TruncatedGzipFileIsDataLoss) {
  const std::string dir = MakeTempDir("truncated_gz");
  WriteSplit(dir, "train", /*gz=*/true);
  const std::string path = dir + "/train-images-idx3-ubyte.gz";
  std::vector<uint8_t> bytes = ReadAll(path);
  bytes.resize(bytes.size() / 2);
  WritePlain(path, bytes);
  absl::Status status = ReadIdxSplit(dir, "train").status();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kDataLoss, path));
}

TEST(ReadIdxSplitTest, CountMismatchIsInvalidArgument) {
  const std::string dir = MakeTempDir("mismatch");
  WritePlain(dir + "/train-images-idx3-ubyte", ImagesFile(3, 2, 3, Pixels()));
  WritePlain(dir + "/train-labels-idx1-ubyte", LabelsFile(2, {0, 1}));
  EXPECT_THAT(ReadIdxSplit(dir, "train").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "has 3 images but"));
}

TEST(ReadIdxSplitTest, WrongMagicIsInvalidArgument) {
  const std::string dir = MakeTempDir("magic");
  // The label file where the image file belongs.
  WritePlain(dir + "/train-images-idx3-ubyte", LabelsFile(3, {0, 2, 1}));
  WritePlain(dir + "/train-labels-idx1-ubyte", LabelsFile(3, {0, 2, 1}));
  EXPECT_THAT(
      ReadIdxSplit(dir, "train").status(),
      StatusIs(absl::StatusCode::kInvalidArgument, "not an IDX image file"));
}

TEST(ReadIdxSplitTest, UnknownSplitIsInvalidArgument) {
  EXPECT_THAT(ReadIdxSplit("/tmp", "validation").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "validation"));
  EXPECT_THAT(ReadIdxSplit("/tmp", "train", -1).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(FashionMnistTest, ReadsBothSplits) {
  absl::StatusOr<ImageSet> train =
      ReadIdxSplit(SSLBENCH_FASHION_MNIST_DIR, "train");
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->count, 60000);
  EXPECT_EQ(train->channels, 1);
  EXPECT_EQ(train->height, 28);
  EXPECT_EQ(train->width, 28);
  EXPECT_EQ(train->pixels.size(), 60000u * 28 * 28);
  EXPECT_EQ(train->num_classes, 10);
  std::vector<int> per_class(10, 0);
  for (int32_t l : train->labels) {
    ASSERT_GE(l, 0);
    ASSERT_LT(l, 10);
    ++per_class[l];
  }
  for (int c = 0; c < 10; ++c) EXPECT_EQ(per_class[c], 6000) << c;

  absl::StatusOr<ImageSet> test =
      ReadIdxSplit(SSLBENCH_FASHION_MNIST_DIR, "test");
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ(test->count, 10000);
  EXPECT_EQ(test->labels.size(), 10000u);
  EXPECT_EQ(test->num_classes, 10);
}

}  // namespace
}  // namespace sslbench::compute

namespace sslbench::compute {
namespace {

// A header claiming 2^31 images of 28x28 with a few bytes behind it: refused
// from the file's size, before anything is allocated or read (the reader
// used to size its buffers from the header).
TEST(ReadIdxSplitTest, HeaderClaimingBillionsOfImagesIsDataLoss) {
  for (const bool gz : {false, true}) {
    const std::string dir = MakeTempDir(gz ? "claims_gz" : "claims");
    const auto images = ImagesFile(0x80000000u, 28, 28, std::vector<uint8_t>(784 * 3, 7));
    const auto labels = LabelsFile(0x80000000u, {0, 1, 2});
    if (gz) {
      WriteGz(dir + "/train-images-idx3-ubyte.gz", images);
      WriteGz(dir + "/train-labels-idx1-ubyte.gz", labels);
    } else {
      WritePlain(dir + "/train-images-idx3-ubyte", images);
      WritePlain(dir + "/train-labels-idx1-ubyte", labels);
    }
    EXPECT_THAT(ReadIdxSplit(dir, "train").status(),
                StatusIs(absl::StatusCode::kDataLoss, "claims 2147483648 images"))
        << (gz ? "gzip" : "plain");
  }
}

}  // namespace
}  // namespace sslbench::compute
