#pragma once
// Helpers of the fuzz targets: a private scratch folder per process.

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "worker/datasets/dataset_reader.h"

namespace sslbench::fuzz {

// A folder under /tmp made once per process (libFuzzer runs one input at a
// time in a process).
inline const std::string& Scratch() {
  static const std::string* dir = [] {
    char pattern[] = "/tmp/sslbench-fuzz-XXXXXX";
    return new std::string(mkdtemp(pattern));
  }();
  return *dir;
}

// Lists the train split of the dataset at `root` and reads every record;
// errors are fine, crashes are findings.
inline void ListAndReadAll(const std::string& format, const std::string& root) {
  datasets::DatasetConfig config;
  config.format = format;
  config.root = root;
  auto reader = datasets::OpenDatasetReader(config);
  if (!reader.ok()) return;
  auto listing = (*reader)->List("train", 0);
  if (!listing.ok()) return;
  for (const auto& record : listing->records) (void)(*reader)->ReadRecord(record);
}

inline void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace sslbench::fuzz
