// Where workers may read, and hashing that cannot be wedged by a device file.

#include "common/path_guard.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sslbench {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class PathGuardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/sslbench-guard-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    fs::create_directories(dir_ + "/models/sub");
    fs::create_directories(dir_ + "/elsewhere");
    std::ofstream(dir_ + "/models/sub/m.pt") << "model bytes";
    std::ofstream(dir_ + "/elsewhere/secret") << "not for studies";
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(PathGuardTest, PathsMustResolveUnderARoot) {
  const std::vector<std::string> roots = {dir_ + "/models"};
  EXPECT_TRUE(CheckUnderRoots(dir_ + "/models/sub/m.pt", roots, "model").ok());
  EXPECT_TRUE(CheckUnderRoots(dir_ + "/models", roots, "model").ok());
  EXPECT_TRUE(CheckUnderRoots("/etc/passwd", {}, "model").ok()) << "no roots: no confinement";

  // `..` and a link inside the root that points out of it are both resolved.
  absl::Status up = CheckUnderRoots(dir_ + "/models/../elsewhere/secret", roots, "model file");
  EXPECT_EQ(up.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(up.message()), HasSubstr("resolves to " + dir_ + "/elsewhere/secret"));
  fs::create_symlink(dir_ + "/elsewhere/secret", dir_ + "/models/link.pt");
  absl::Status link = CheckUnderRoots(dir_ + "/models/link.pt", roots, "model file");
  EXPECT_EQ(link.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(link.message()), HasSubstr("outside the folders this worker may read"));
  // A sibling whose name starts like the root is not under it.
  fs::create_directories(dir_ + "/models-old");
  std::ofstream(dir_ + "/models-old/m.pt") << "x";
  EXPECT_EQ(CheckUnderRoots(dir_ + "/models-old/m.pt", roots, "model").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckUnderRoots(dir_ + "/models/none.pt", roots, "model").code(),
            absl::StatusCode::kNotFound);

  std::vector<std::string> parsed;
  EXPECT_TRUE(ParseRoots(dir_ + "/models," + dir_ + "/elsewhere", &parsed).ok());
  EXPECT_EQ(parsed.size(), 2u);
  EXPECT_EQ(ParseRoots("relative/dir", &parsed).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRoots(dir_ + "/missing", &parsed).code(), absl::StatusCode::kInvalidArgument);
}

// /dev/zero never ends and a FIFO blocks: both are refused at once (a worker
// used to hash /dev/zero forever while heartbeating, wedging the pool).
TEST_F(PathGuardTest, HashingRefusesDevicesAndFifosAndHonoursLimits) {
  absl::StatusOr<std::string> zero = Sha256File("/dev/zero");
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(zero.status().message()), HasSubstr("not a regular file"));
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(Sha256File(fifo).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Sha256File(dir_ + "/models").status().code(), absl::StatusCode::kFailedPrecondition);

  HashFileOptions small;
  small.max_bytes = 4;
  EXPECT_EQ(Sha256File(dir_ + "/models/sub/m.pt", small).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // 3 MiB, cancelled after the first MiB.
  const std::string big = dir_ + "/big";
  std::ofstream(big) << std::string(3 << 20, 'b');
  int polls = 0;
  HashFileOptions cancel;
  cancel.cancelled = [&polls] { return ++polls >= 1; };
  EXPECT_EQ(Sha256File(big, cancel).status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(polls, 1);
  // Unlimited and not cancelled: the plain digest.
  EXPECT_EQ(*Sha256File(dir_ + "/models/sub/m.pt"), Sha256Hex("model bytes"));
}

}  // namespace
}  // namespace sslbench
