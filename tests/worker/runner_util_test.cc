// What a worker checks before it reads a task's model and dataset.

#include "worker/runner_util.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/dataset_digest.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sslbench::worker {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

TEST(VerifyModelTest, RefusesDevicesPathsOutsideTheRootsAndStopsWhenAsked) {
  char dir[] = "/tmp/sslbench-verify-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string root = dir;
  fs::create_directories(root + "/models");
  const std::string path = root + "/models/m.pt";
  const std::string bytes(3 << 20, 'm');
  std::ofstream(path) << bytes;
  v1::ModelSpec model;
  model.set_name("m");
  model.set_path(path);
  model.set_sha256(Sha256Hex(bytes));
  EXPECT_TRUE(VerifyModel(model).ok());

  ReadPolicy policy;
  policy.model_roots = {root + "/models"};
  policy.data_roots = {root + "/data"};
  EXPECT_TRUE(VerifyModel(model, policy).ok());

  // A study naming /dev/zero (as a hostile submitter did): refused at once.
  v1::ModelSpec zero = model;
  zero.set_path("/dev/zero");
  const absl::Status device = VerifyModel(zero);
  EXPECT_EQ(device.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(device.message()), HasSubstr("model \"m\": /dev/zero is not a regular file"));
  EXPECT_EQ(VerifyModel(zero, policy).code(), absl::StatusCode::kPermissionDenied);

  // Cancelled (study cancelled, lease lost, SIGTERM): the hashing stops.
  int polls = 0;
  const absl::Status stopped = VerifyModel(model, policy, [&polls] { return ++polls > 1; });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(polls, 2);

  policy.max_model_bytes = 1 << 20;
  EXPECT_EQ(VerifyModel(model, policy).code(), absl::StatusCode::kFailedPrecondition);

  v1::DatasetSpec dataset;
  dataset.set_name("d");
  dataset.set_root(root + "/models");
  const absl::Status outside = VerifyDataset(dataset, policy);
  EXPECT_EQ(outside.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(outside.message()), HasSubstr("dataset \"d\": folder"));
  fs::remove_all(root);
}

// A dataset whose files changed since the study was submitted is refused
// before its features are extracted under the old key.
TEST(VerifyDatasetTest, ChangedFilesAreRefused) {
  char dir[] = "/tmp/sslbench-dataset-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string root = dir;
  for (const char* split : {"train", "val"}) {
    for (const char* cls : {"cat", "dog"}) {
      fs::create_directories(root + "/" + split + "/" + cls);
      std::ofstream(root + "/" + split + "/" + cls + "/1.png") << split << cls;
    }
  }
  v1::DatasetSpec dataset;
  dataset.set_name("pets");
  dataset.set_format("imagefolder");
  dataset.set_root(root);
  absl::StatusOr<std::string> digest = DatasetDigest(dataset);
  ASSERT_TRUE(digest.ok()) << digest.status();
  dataset.set_digest(*digest);
  EXPECT_TRUE(VerifyDataset(dataset, ReadPolicy()).ok());

  std::ofstream(root + "/train/dog/2.png") << "a new image";
  const absl::Status changed = VerifyDataset(dataset, ReadPolicy());
  EXPECT_EQ(changed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(changed.message()), HasSubstr("changed since the study was submitted"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace sslbench::worker
