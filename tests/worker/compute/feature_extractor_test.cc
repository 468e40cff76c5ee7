#include "worker/compute/feature_extractor.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/compute/test_util.h"
#include "worker/compute/device.h"
#include "worker/compute/image_set.h"
#include "worker/compute/model_zoo.h"

namespace sslbench::compute {
namespace {

using ::sslbench::compute::testing::MakeTempDir;
using ::sslbench::compute::testing::StatusIs;

// `count` grey images of `size` x `size` with varied pixels.
ImageSet GreyImages(int count, int size) {
  ImageSet set;
  set.count = count;
  set.height = size;
  set.width = size;
  set.pixels.resize(set.count * set.image_bytes());
  for (size_t i = 0; i < set.pixels.size(); ++i) {
    set.pixels[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  }
  for (int i = 0; i < count; ++i) set.labels.push_back(i % 2);
  set.num_classes = 2;
  return set;
}

class FeatureExtractorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetComputeThreads(2);
    dir_ = new std::string(MakeTempDir("models"));
    ASSERT_TRUE(WriteIdentityModel(Identity()).ok());
    ASSERT_TRUE(WriteRandomCnnModel(Cnn(7), 7).ok());
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string Identity() { return *dir_ + "/identity.pt"; }
  static std::string Cnn(uint64_t seed) {
    return *dir_ + "/cnn_" + std::to_string(seed) + ".pt";
  }

  static std::unique_ptr<FeatureExtractor> MustLoad(const ModelOptions& o) {
    absl::StatusOr<std::unique_ptr<FeatureExtractor>> e =
        FeatureExtractor::Load(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }

  static std::string* dir_;
};

std::string* FeatureExtractorTest::dir_ = nullptr;

TEST_F(FeatureExtractorTest, IdentityReturnsScaledPixels) {
  ModelOptions o;
  o.path = Identity();
  auto extractor = MustLoad(o);
  ASSERT_NE(extractor, nullptr);
  const ImageSet images = GreyImages(5, 4);
  int64_t dim = 0;
  absl::StatusOr<std::vector<float>> out =
      extractor->Extract(images, 1, 5, /*batch_size=*/3, &dim);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(dim, 16);
  ASSERT_EQ(out->size(), 4u * 16);
  for (size_t i = 0; i < out->size(); ++i) {
    EXPECT_EQ((*out)[i], static_cast<float>(images.pixels[16 + i]) / 255.0f)
        << i;
  }
}

TEST_F(FeatureExtractorTest, NormalisesWithMeanAndStd) {
  ModelOptions o;
  o.path = Identity();
  o.mean = {0.5f};
  o.std = {0.25f};
  auto extractor = MustLoad(o);
  ASSERT_NE(extractor, nullptr);
  const ImageSet images = GreyImages(2, 3);
  int64_t dim = 0;
  absl::StatusOr<std::vector<float>> out =
      extractor->Extract(images, 0, 2, 8, &dim);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 18u);
  for (size_t i = 0; i < out->size(); ++i) {
    const float expected =
        (static_cast<float>(images.pixels[i]) / 255.0f - 0.5f) / 0.25f;
    EXPECT_FLOAT_EQ((*out)[i], expected) << i;
  }
}

TEST_F(FeatureExtractorTest, ReplicatesGreyToThreeChannels) {
  ModelOptions o;
  o.path = Identity();
  o.channels = 3;
  o.mean = {0.1f, 0.2f, 0.3f};
  o.std = {1.0f, 2.0f, 4.0f};
  auto extractor = MustLoad(o);
  ASSERT_NE(extractor, nullptr);
  const ImageSet images = GreyImages(2, 3);
  int64_t dim = 0;
  absl::StatusOr<std::vector<float>> out =
      extractor->Extract(images, 0, 2, 1, &dim);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(dim, 27);
  for (int n = 0; n < 2; ++n) {
    for (int c = 0; c < 3; ++c) {
      for (int p = 0; p < 9; ++p) {
        const float x = static_cast<float>(images.pixels[n * 9 + p]) / 255.0f;
        EXPECT_FLOAT_EQ((*out)[n * 27 + c * 9 + p], (x - o.mean[c]) / o.std[c])
            << n << " " << c << " " << p;
      }
    }
  }
}

TEST_F(FeatureExtractorTest, ResizesAsPilBilinear) {
  ModelOptions o;
  o.path = Identity();
  o.input_size = 4;
  auto extractor = MustLoad(o);
  ASSERT_NE(extractor, nullptr);
  // One 2x2 image whose columns are 0 and 255, resized to 4x4 as PIL does:
  // output x samples source x = 0.25, 0.75, 1.25, 1.75 with a triangle of
  // support 1 over the pixels inside the image, rounded to uint8 per pass.
  ImageSet image;
  image.count = 1;
  image.height = 2;
  image.width = 2;
  image.pixels = {0, 255, 0, 255};
  image.labels = {0};
  image.num_classes = 1;
  int64_t dim = 0;
  absl::StatusOr<std::vector<float>> out =
      extractor->Extract(image, 0, 1, 1, &dim);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(dim, 16);
  const float row[4] = {0.0f, 64 / 255.0f, 191 / 255.0f, 1.0f};
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) {
      EXPECT_FLOAT_EQ((*out)[y * 4 + x], row[x]) << y << " " << x;
    }
  }
}

TEST_F(FeatureExtractorTest, RandomCnnIsDeterministicPerSeed) {
  ASSERT_TRUE(WriteRandomCnnModel(Cnn(8), 8).ok());
  const std::string again = *dir_ + "/cnn_7_again.pt";
  ASSERT_TRUE(WriteRandomCnnModel(again, 7).ok());
  const ImageSet images = GreyImages(6, 28);
  auto features = [&](const std::string& path, int batch_size) {
    ModelOptions o;
    o.path = path;
    o.input_size = 28;
    o.mean = {0.2860f};
    o.std = {0.3530f};
    auto extractor = MustLoad(o);
    int64_t dim = 0;
    absl::StatusOr<std::vector<float>> out =
        extractor->Extract(images, 0, images.count, batch_size, &dim);
    EXPECT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(dim, kRandomCnnDim);
    return out.ok() ? *out : std::vector<float>();
  };
  const std::vector<float> a = features(Cnn(7), 4);
  ASSERT_EQ(a.size(), 6u * kRandomCnnDim);
  EXPECT_EQ(a, features(again, 4));
  EXPECT_NE(a, features(Cnn(8), 4));
  const std::vector<float> one_by_one = features(Cnn(7), 1);
  ASSERT_EQ(one_by_one.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(one_by_one[i], a[i], 1e-5f * (1 + std::abs(a[i]))) << i;
  }
  bool any_positive = false;
  for (float v : a) any_positive |= v > 0;
  EXPECT_TRUE(any_positive);
}

// The GPU settings, exercised on the CPU: channels-last weights and inputs
// change nothing but rounding; bfloat16 autocast changes features by about
// bfloat16's precision and really runs (the features differ); the resolved
// device and precision are reported.
TEST_F(FeatureExtractorTest, ChannelsLastAndBFloat16Autocast) {
  const ImageSet images = GreyImages(6, 28);
  auto features = [&](const std::string& precision, const std::string& channels_last,
                      std::string* resolved) {
    ModelOptions o;
    o.path = Cnn(7);
    o.input_size = 28;
    o.precision = precision;
    o.channels_last = channels_last;
    auto extractor = MustLoad(o);
    if (extractor == nullptr) return std::vector<float>();
    EXPECT_EQ(extractor->device(), "cpu");
    *resolved = extractor->precision();
    int64_t dim = 0;
    absl::StatusOr<std::vector<float>> out =
        extractor->Extract(images, 0, images.count, 3, &dim);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : std::vector<float>();
  };
  std::string precision;
  const std::vector<float> base = features("auto", "auto", &precision);
  EXPECT_EQ(precision, "fp32");
  ASSERT_EQ(base.size(), 6u * kRandomCnnDim);
  const std::vector<float> nhwc = features("fp32", "on", &precision);
  ASSERT_EQ(nhwc.size(), base.size());
  for (size_t i = 0; i < base.size(); ++i) {
    EXPECT_NEAR(nhwc[i], base[i], 1e-5f * (1 + std::abs(base[i]))) << i;
  }
  const std::vector<float> bf16 = features("bf16", "off", &precision);
  EXPECT_EQ(precision, "bf16");
  ASSERT_EQ(bf16.size(), base.size());
  double max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    max_abs = std::max<double>(max_abs, std::abs(base[i]));
    max_diff = std::max<double>(max_diff, std::abs(bf16[i] - base[i]));
  }
  EXPECT_GT(max_diff, 0.0);
  EXPECT_LT(max_diff, 0.05 * max_abs);
}

// Start/Collect (the overlapped path) returns Forward's rows, in order, and
// holds at most two batches.
TEST_F(FeatureExtractorTest, StartAndCollectEqualForward) {
  ModelOptions o;
  o.path = Cnn(7);
  o.input_size = 28;
  auto extractor = MustLoad(o);
  ASSERT_NE(extractor, nullptr);
  std::vector<float> a(3 * 28 * 28), b(2 * 28 * 28);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 37) % 101) / 50.0f - 1;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 11) % 97) / 40.0f - 1;
  int64_t dim = 0;
  const auto fa = extractor->Forward(a.data(), 3, 28, 28, &dim);
  const auto fb = extractor->Forward(b.data(), 2, 28, 28, &dim);
  ASSERT_TRUE(fa.ok() && fb.ok());

  EXPECT_THAT(extractor->Collect(&dim).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_TRUE(extractor->Start(a.data(), 3, 28, 28).ok());
  ASSERT_TRUE(extractor->Start(b.data(), 2, 28, 28).ok());
  EXPECT_THAT(extractor->Start(a.data(), 3, 28, 28),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  dim = 0;
  const auto ca = extractor->Collect(&dim);
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_EQ(dim, kRandomCnnDim);
  EXPECT_EQ(*ca, *fa);
  const auto cb = extractor->Collect(&dim);
  ASSERT_TRUE(cb.ok()) << cb.status();
  EXPECT_EQ(*cb, *fb);
}

TEST_F(FeatureExtractorTest, RejectsDevicesAndPrecisionsItCannotServe) {
  ModelOptions o;
  o.path = Cnn(7);
  o.precision = "fp16";
  EXPECT_THAT(FeatureExtractor::Load(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "needs a CUDA device"));
  o.precision = "auto";
  o.channels_last = "yes";
  EXPECT_THAT(FeatureExtractor::Load(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "channels_last"));
  o.channels_last = "auto";
  o.device = "cuda:0";
  if (CudaDeviceCount() == 0) {
    EXPECT_THAT(FeatureExtractor::Load(o).status(),
                StatusIs(absl::StatusCode::kFailedPrecondition, "CUDA is not available"));
  }
}

TEST_F(FeatureExtractorTest, ModelFailureIsInternalNamingTheModel) {
  ModelOptions o;
  o.path = Cnn(7);
  o.channels = 3;  // the CNN's first convolution takes one channel
  auto extractor = MustLoad(o);
  ASSERT_NE(extractor, nullptr);
  int64_t dim = 0;
  EXPECT_THAT(
      extractor->Extract(GreyImages(2, 28), 0, 2, 2, &dim).status(),
      StatusIs(absl::StatusCode::kInternal, "model '" + Cnn(7) + "' failed"));
}

TEST_F(FeatureExtractorTest, CorruptFileIsInvalidArgumentNamingThePath) {
  const std::string path = MakeTempDir("corrupt") + "/garbage.pt";
  {
    std::ofstream f(path, std::ios::binary);
    f << "this is not a TorchScript archive\x01\x02\x03";
  }
  ModelOptions o;
  o.path = path;
  EXPECT_THAT(FeatureExtractor::Load(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "failed to load model '" + path + "'"));
}

TEST_F(FeatureExtractorTest, MissingFileIsNotFound) {
  ModelOptions o;
  o.path = *dir_ + "/missing.pt";
  EXPECT_THAT(FeatureExtractor::Load(o).status(),
              StatusIs(absl::StatusCode::kNotFound, o.path));
}

TEST_F(FeatureExtractorTest, RejectsBadOptionsAndRanges) {
  ModelOptions o;
  o.path = Identity();
  o.channels = 3;
  o.mean = {0.1f, 0.2f};
  EXPECT_THAT(FeatureExtractor::Load(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "mean"));
  o.mean = {};
  o.std = {1.0f, 0.0f, 1.0f};
  EXPECT_THAT(FeatureExtractor::Load(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "std"));
  o.std = {};
  o.channels = 2;
  EXPECT_THAT(FeatureExtractor::Load(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "channels"));

  ModelOptions ok;
  ok.path = Identity();
  auto extractor = MustLoad(ok);
  ASSERT_NE(extractor, nullptr);
  int64_t dim = 0;
  const ImageSet images = GreyImages(3, 2);
  EXPECT_THAT(extractor->Extract(images, 2, 4, 1, &dim).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(extractor->Extract(images, 0, 3, 0, &dim).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // The identity's width follows the image size: a second call with other
  // images must be refused rather than mixing widths.
  ASSERT_TRUE(extractor->Extract(images, 0, 3, 2, &dim).ok());
  EXPECT_THAT(extractor->Extract(GreyImages(1, 3), 0, 1, 1, &dim).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "features"));
}

}  // namespace
}  // namespace sslbench::compute
