#include "client/study_estimate.h"

#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/study_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench::client {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::client::testing::StatusIs;
using ::sslbench::client::testing::WriteFile;
using ::testing::HasSubstr;

constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist";

// The seed study validates where neither its models nor its datasets exist
// (a dry run), and plans the task graph the coordinator will run.
TEST(StudyEstimateTest, SeedStudyValidatesInADryRunAndCountsItsTasks) {
  ASSERT_EQ(setenv("SSLBENCH_DATA", "/nonexistent/data", 1), 0);
  std::vector<std::string> missing;
  StudyFileOptions options;
  options.read_files = false;
  options.notes = &missing;
  absl::StatusOr<v1::StudySpec> spec =
      LoadStudyFile(SSLBENCH_SOURCE_DIR "/studies/closer-look.yaml", options);
  unsetenv("SSLBENCH_DATA");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->models_size(), 26);
  ASSERT_EQ(spec->datasets_size(), 11);
  EXPECT_EQ(spec->datasets(0).root(), "/nonexistent/data/imagenet");
  EXPECT_EQ(spec->datasets(0).train_images(), 1281167);
  int resnets = 0, vits = 0;
  for (const v1::ModelSpec& m : spec->models()) {
    resnets += m.backbone() == "resnet50";
    vits += m.backbone() == "vit_b_16";
    EXPECT_FALSE(m.family().empty()) << m.name();
    EXPECT_EQ(m.resize_size(), 256);
    EXPECT_EQ(m.input_size(), 224);
  }
  EXPECT_EQ(resnets, 17);
  EXPECT_EQ(vits, 9);
  EXPECT_EQ(missing.size(), 26u + 11u);

  absl::StatusOr<StudyEstimate> e = EstimateStudy(*spec, CountImages(*spec), 7000);
  ASSERT_TRUE(e.ok()) << e.status();
  // 26 models x 11 datasets = 286 pairs: train and test features of each;
  // kNN; linear with and without BatchNorm; fine-tuning on all of train and
  // on 1% and 10%.
  EXPECT_EQ(e->tasks_by_kind["extract"], 572);
  EXPECT_EQ(e->tasks_by_kind["knn"], 286);
  EXPECT_EQ(e->tasks_by_kind["linear"], 572);
  EXPECT_EQ(e->tasks_by_kind["finetune"], 858);
  EXPECT_EQ(e->tasks, 572 + 286 + 572 + 858);
  // Every image of every split once per model.
  int64_t images = 0;
  for (const v1::DatasetSpec& d : spec->datasets()) images += d.train_images() + d.test_images();
  EXPECT_EQ(e->extract_images, 26 * images);
  // float16: ResNet-50 2048-d, ViT-B/16 768-d.
  EXPECT_DOUBLE_EQ(e->feature_bytes, static_cast<double>(images) * (17 * 2048 + 9 * 768) * 2);
  EXPECT_GT(e->finetune_seconds, e->extract_seconds);
  EXPECT_GT(e->probe_seconds, 0);
  const std::string table = FormatEstimate(*spec, *e);
  EXPECT_THAT(table, HasSubstr("tasks: 2,288"));
  EXPECT_THAT(table, HasSubstr("imagenet"));
}

TEST(StudyEstimateTest, UnsetVariableIsNamed) {
  unsetenv("SSLBENCH_TEST_UNSET");
  const std::string yaml = R"(name: s
models: [{name: a, path: "${SSLBENCH_TEST_UNSET}/a.pt"}]
datasets: [{name: d, root: /tmp}]
protocols: [{name: knn}]
)";
  StudyFileOptions options;
  options.read_files = false;
  EXPECT_THAT(ParseStudyYaml(yaml, "/tmp", options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "models[0].path: \"${SSLBENCH_TEST_UNSET}/a.pt\": the "
                       "environment variable SSLBENCH_TEST_UNSET is not set"));
}

// Declared split sizes are checked against the folder when a study is
// submitted, and counted (limits applied) for the estimate.
TEST(StudyEstimateTest, DeclaredSizesAreCheckedAndCounted) {
  const std::string dir = MakeTempDir("estimate");
  WriteFile(dir + "/m.pt", "model bytes");
  auto yaml = [&](int64_t train_images) {
    return absl::StrCat(R"(name: s
models: [{name: a, path: m.pt, backbone: resnet50}]
datasets:
  - name: fmnist
    root: )", kFashionMnist, R"(
    train_limit: 1000
    train_images: )", train_images, R"(
    test_images: 10000
protocols: [{name: knn}]
)");
  };
  absl::StatusOr<v1::StudySpec> spec = ParseStudyYaml(yaml(60000), dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_THAT(ParseStudyYaml(yaml(60001), dir).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "datasets[0].train_images: the train split of " +
                           std::string(kFashionMnist) + " holds 60000 images, not 60001"));

  const std::map<std::string, SplitImages> counted = CountImages(*spec);
  ASSERT_EQ(counted.count("fmnist"), 1u);
  EXPECT_EQ(counted.at("fmnist").train, 1000);
  EXPECT_EQ(counted.at("fmnist").test, 10000);
  EXPECT_EQ(counted.at("fmnist").source, "counted");
  absl::StatusOr<StudyEstimate> e = EstimateStudy(*spec, counted, 7000);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->tasks, 3);
  EXPECT_EQ(e->extract_images, 11000);
  EXPECT_NEAR(e->extract_seconds, 11000 / 7500.0, 1e-9);  // ResNet-50: decode-bound
}

}  // namespace
}  // namespace sslbench::client
