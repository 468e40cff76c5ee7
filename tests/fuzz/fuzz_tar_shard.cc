// WebDataset tar shards: any bytes as ROOT/train/shard-0.tar must list and
// read as samples or give an error, never crash.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "worker/datasets/dataset_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = sslbench::fuzz::Scratch();
  std::filesystem::create_directories(dir + "/train");
  sslbench::fuzz::WriteFile(dir + "/train/shard-0.tar", data, size);
  sslbench::datasets::DatasetConfig config;
  config.format = "webdataset";
  config.root = dir;
  auto reader = sslbench::datasets::OpenDatasetReader(config);
  if (!reader.ok()) return 0;
  auto listing = (*reader)->List("train", 0);
  if (!listing.ok()) return 0;
  for (const auto& record : listing->records) (void)(*reader)->ReadRecord(record);
  return 0;
}
