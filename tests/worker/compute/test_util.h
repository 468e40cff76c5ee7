#pragma once
// Helpers shared by the compute tests.

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sslbench::compute::testing {

// A fresh folder under the test temp dir, one per call.
inline std::string MakeTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      absl::StrCat("sslbench_compute_", ::getpid(), "_", name, "_",
                   counter.fetch_add(1));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

MATCHER_P(StatusIs, code, "") {
  if (arg.code() == code) return true;
  *result_listener << "status is " << arg.ToString();
  return false;
}

MATCHER_P2(StatusIs, code, substring, "") {
  if (arg.code() == code &&
      arg.message().find(std::string(substring)) != std::string::npos) {
    return true;
  }
  *result_listener << "status is " << arg.ToString();
  return false;
}

}  // namespace sslbench::compute::testing
