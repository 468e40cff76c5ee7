#include "worker/image/batch_loader.h"

#include <cstdio>
#include <jpeglib.h>
#include <zlib.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/datasets/test_files.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/image.h"

namespace sslbench::image {
namespace {

using ::sslbench::datasets::testing::MakeTempDir;
using ::sslbench::datasets::testing::WriteFile;
using ::testing::HasSubstr;

// A baseline JPEG of a flat colour.
std::string Jpeg(int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* out = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &out, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 95, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  std::vector<uint8_t> row(static_cast<size_t>(width) * 3);
  for (int x = 0; x < width; ++x) {
    row[x * 3] = r;
    row[x * 3 + 1] = g;
    row[x * 3 + 2] = b;
  }
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW p = row.data();
    jpeg_write_scanlines(&cinfo, &p, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string bytes(reinterpret_cast<char*>(out), size);
  jpeg_destroy_compress(&cinfo);
  std::free(out);
  return bytes;
}

PreprocessOptions Options() {
  PreprocessOptions o;
  o.resize = 20;
  o.crop = 16;
  o.channels = 3;
  o.mean = {0.0f};
  o.std = {1.0f};
  return o;
}

class BatchLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("loader");
    // 10 images per class; class "a" is dark, "b" bright.
    for (int i = 0; i < 10; ++i) {
      WriteFile(root_ + "/train/a/" + std::to_string(i) + ".jpg", Jpeg(40 + i, 30, 10, 20, 30));
      WriteFile(root_ + "/train/b/" + std::to_string(i) + ".jpg", Jpeg(30, 40 + i, 200, 210, 220));
    }
  }

  std::vector<Batch> LoadAll(datasets::BadImagePolicy policy, int threads, absl::Status* error) {
    auto reader = datasets::OpenDatasetReader({"imagefolder", root_});
    EXPECT_TRUE(reader.ok());
    auto listing = (*reader)->List("train", 0);
    EXPECT_TRUE(listing.ok()) << listing.status();
    std::vector<BatchJob> jobs;
    for (int64_t b = 0; b < static_cast<int64_t>(listing->records.size()); b += 3) {
      jobs.push_back({b, std::min<int64_t>(3, listing->records.size() - b)});
    }
    BatchLoader loader(reader->get(), &listing->records, jobs, Options(), policy, threads, 2);
    std::vector<Batch> out;
    for (;;) {
      Batch batch;
      absl::StatusOr<bool> got = loader.Next(&batch);
      if (!got.ok()) {
        *error = got.status();
        break;
      }
      if (!*got) break;
      out.push_back(std::move(batch));
    }
    return out;
  }

  std::string root_;
};

TEST_F(BatchLoaderTest, BatchesComeInOrderWithLabelsAndPixels) {
  for (int threads : {1, 3}) {
    absl::Status error;
    const std::vector<Batch> batches = LoadAll(datasets::BadImagePolicy::kFail, threads, &error);
    ASSERT_TRUE(error.ok()) << error;
    ASSERT_EQ(batches.size(), 7u);  // 20 images in batches of 3
    int64_t next = 0;
    for (const Batch& b : batches) {
      EXPECT_EQ(b.first, next);
      next += b.n;
      EXPECT_EQ(b.height, 16);
      EXPECT_EQ(b.width, 16);
      ASSERT_EQ(b.data.size(), static_cast<size_t>(b.n) * 3 * 16 * 16);
      for (int64_t i = 0; i < b.n; ++i) {
        const int label = b.labels[i];
        EXPECT_EQ(label, (b.first + i) < 10 ? 0 : 1);
        // Red channel, centre pixel: the flat colour survives resizing.
        const float red = b.data[i * 3 * 256 + 8 * 16 + 8];
        EXPECT_NEAR(red, label == 0 ? 10 / 255.0f : 200 / 255.0f, 3 / 255.0f);
      }
    }
    EXPECT_EQ(next, 20);
  }
}

TEST_F(BatchLoaderTest, BadImagesFailNamingTheFileOrAreSkipped) {
  WriteFile(root_ + "/train/a/3.jpg", "");                                 // zero bytes
  WriteFile(root_ + "/train/b/5.jpg", Jpeg(64, 64, 1, 2, 3).substr(0, 300));  // truncated
  WriteFile(root_ + "/train/b/6.jpg", "not an image at all");             // another format

  absl::Status error;
  LoadAll(datasets::BadImagePolicy::kFail, 2, &error);
  EXPECT_EQ(error.code(), absl::StatusCode::kInvalidArgument) << error;
  EXPECT_THAT(error.message(), HasSubstr("train/a/3.jpg: empty file"));

  error = absl::OkStatus();
  const std::vector<Batch> batches = LoadAll(datasets::BadImagePolicy::kSkip, 2, &error);
  ASSERT_TRUE(error.ok()) << error;
  std::vector<std::string> skipped;
  int64_t marked = 0, rows = 0;
  for (const Batch& b : batches) {
    skipped.insert(skipped.end(), b.skipped.begin(), b.skipped.end());
    for (int32_t label : b.labels) marked += label < 0;
    rows += b.n;
  }
  EXPECT_EQ(rows, 20);  // one row per record, whatever was skipped
  EXPECT_EQ(marked, 3);
  ASSERT_EQ(skipped.size(), 3u);
  EXPECT_THAT(skipped[0], HasSubstr("train/a/3.jpg: empty file"));
  EXPECT_THAT(skipped[1], HasSubstr("train/b/5.jpg: JPEG file is truncated"));
  EXPECT_THAT(skipped[2], HasSubstr("train/b/6.jpg: not a JPEG or PNG file"));
}

TEST_F(BatchLoaderTest, ImagesOfManySizesNeedACrop) {
  auto reader = datasets::OpenDatasetReader({"imagefolder", root_});
  ASSERT_TRUE(reader.ok());
  auto listing = (*reader)->List("train", 0);
  ASSERT_TRUE(listing.ok());
  PreprocessOptions keep = Options();
  keep.resize = 0;
  keep.crop = 0;
  BatchLoader loader(reader->get(), &listing->records, {{0, 20}}, keep,
                     datasets::BadImagePolicy::kFail, 1, 1);
  Batch batch;
  const absl::StatusOr<bool> got = loader.Next(&batch);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), HasSubstr("give the model an input_size"));
}

TEST(DecodeImageTest, RejectsWhatIsNotAnImage) {
  EXPECT_EQ(DecodeImage("", "x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeImage("\xFF\xD8\xFF\xE0garbage", "y.jpg").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeImage("\x89PNG\r\n\x1a\n\0\0", "z.png").status().code(),
            absl::StatusCode::kDataLoss);
}

// A few hundred bytes claiming billions of pixels are refused from the
// header, before any pixel memory is asked for (Pillow's limit).
TEST(DecodeImageTest, RefusesDecompressionBombsFromTheHeader) {
  // JPEG: a real 8x8 file whose frame header claims 65,000 x 65,000.
  std::string jpeg = Jpeg(8, 8, 10, 20, 30);
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  for (size_t at : {sof + 5, sof + 7}) {  // height, then width, big-endian
    jpeg[at] = static_cast<char>(65000 >> 8);
    jpeg[at + 1] = static_cast<char>(65000 & 255);
  }
  const auto big_jpeg = DecodeImage(jpeg, "bomb.jpg");
  EXPECT_EQ(big_jpeg.status().code(), absl::StatusCode::kInvalidArgument) << big_jpeg.status();
  EXPECT_THAT(std::string(big_jpeg.status().message()),
              ::testing::HasSubstr("bomb.jpg: 65000 x 65000 pixels"));
  // PNG: the signature, an IHDR of 100,000 x 100,000 and an empty IDAT.
  auto chunk = [](const std::string& type, const std::string& data) {
    std::string out;
    for (int shift : {24, 16, 8, 0}) out += static_cast<char>((data.size() >> shift) & 255);
    const std::string body = type + data;
    out += body;
    const uint32_t crc = static_cast<uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size())));
    for (int shift : {24, 16, 8, 0}) out += static_cast<char>((crc >> shift) & 255);
    return out;
  };
  std::string ihdr;
  for (uint32_t v : {100000u, 100000u}) {
    for (int shift : {24, 16, 8, 0}) ihdr += static_cast<char>((v >> shift) & 255);
  }
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, no interlace
  const std::string png = std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) +
                          chunk("IDAT", "");
  const auto big_png = DecodeImage(png, "bomb.png");
  EXPECT_EQ(big_png.status().code(), absl::StatusCode::kInvalidArgument) << big_png.status();
  EXPECT_THAT(std::string(big_png.status().message()),
              ::testing::HasSubstr("bomb.png: 100000 x 100000 pixels"));
  // At the limit's scale, ordinary photographs pass.
  EXPECT_TRUE(DecodeImage(Jpeg(640, 480, 1, 2, 3), "fine.jpg").ok());
}

}  // namespace
}  // namespace sslbench::image
