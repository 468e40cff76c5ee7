#include "common/location.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sslbench {
namespace {

using ::testing::HasSubstr;

TEST(LocationTest, PathsStayAndFileUrisResolveUnderTheRoot) {
  LocationRoots roots;
  EXPECT_EQ(ResolveLocation("/models/a.pt", roots).value(), "/models/a.pt");
  EXPECT_EQ(ResolveLocation("file:///models/a.pt", roots).value(), "/models/a.pt");
  roots.file_root = "/mnt/share";
  EXPECT_EQ(ResolveLocation("file:///models/a.pt", roots).value(), "/mnt/share/models/a.pt");
  EXPECT_EQ(ResolveLocation("file:///models/./a.pt", roots).value(), "/mnt/share/models/a.pt");
  // A plain path is not re-rooted.
  EXPECT_EQ(ResolveLocation("/models/a.pt", roots).value(), "/models/a.pt");
}

TEST(LocationTest, RefusesWhatCannotBeResolved) {
  const LocationRoots roots{"/mnt/share"};
  const auto climbing = ResolveLocation("file:///models/../../etc/passwd", roots);
  EXPECT_EQ(climbing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(climbing.status().message()), HasSubstr("climbs out"));
  EXPECT_EQ(ResolveLocation("file://host/models/a.pt", roots).status().code(),
            absl::StatusCode::kInvalidArgument);
  const auto unknown = ResolveLocation("s3://bucket/models/a.pt", roots);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("no resolver for s3://"));
  EXPECT_EQ(ResolveLocation("models/a.pt", roots).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckLocation("file:///models/a.pt").ok());
  EXPECT_TRUE(CheckLocation("/models/a.pt").ok());
  EXPECT_THAT(std::string(CheckLocation("s3://bucket/a.pt").message()), HasSubstr("known: file://"));
  EXPECT_FALSE(CheckLocation("relative/a.pt").ok());
  EXPECT_EQ(LocationScheme("file:///a"), "file");
  EXPECT_EQ(LocationScheme("/a://b"), "");
  EXPECT_EQ(LocationScheme("3x://b"), "");
}

// The extension point: a scheme registered at start-up resolves to a local
// path (an object store would fetch into a cache there).
TEST(LocationTest, ARegisteredSchemeResolves) {
  RegisterLocationScheme("cache", [](const std::string& location, const LocationRoots&) {
    return absl::StatusOr<std::string>("/var/cache/sslbench/" +
                                       location.substr(std::string("cache://").size()));
  });
  EXPECT_TRUE(CheckLocation("cache://bucket/a.pt").ok());
  EXPECT_EQ(ResolveLocation("cache://bucket/a.pt", LocationRoots()).value(),
            "/var/cache/sslbench/bucket/a.pt");
}

}  // namespace
}  // namespace sslbench
