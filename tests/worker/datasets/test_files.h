#pragma once
// Helpers for the dataset reader tests: temp folders and files.

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench::datasets::testing {

inline std::string MakeTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      absl::StrCat("sslbench_datasets_", ::getpid(), "_", name, "_", counter.fetch_add(1));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

inline void WriteFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

// "KEY:LABEL" for each record, to compare listings in one assertion.
inline std::vector<std::string> Keys(const SplitListing& listing) {
  std::vector<std::string> keys;
  for (const Record& r : listing.records) keys.push_back(r.key + ":" + std::to_string(r.label));
  return keys;
}

// A reader of `format` at `root`; null (and a test failure) when it cannot open.
inline std::unique_ptr<DatasetReader> Open(const std::string& format, const std::string& root) {
  auto reader = OpenDatasetReader({format, root});
  EXPECT_TRUE(reader.ok()) << reader.status();
  return reader.ok() ? *std::move(reader) : nullptr;
}

}  // namespace sslbench::datasets::testing
