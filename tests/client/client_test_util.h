#pragma once
// Helpers shared by the client tests.

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sslbench::client::testing {

// A fresh folder under /tmp (traversable by every user, as a private
// PostgreSQL run as `postgres` needs), one per call.
inline std::string MakeTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const std::filesystem::path dir =
      std::filesystem::path("/tmp") /
      absl::StrCat("sslbench_client_", ::getpid(), "_", name, "_", counter.fetch_add(1));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::permissions(dir, std::filesystem::perms(0755));
  return dir.string();
}

inline void WriteFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
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

}  // namespace sslbench::client::testing
