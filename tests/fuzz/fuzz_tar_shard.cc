// WebDataset tar shards: any bytes as ROOT/train/shard-0.tar must list and
// read as samples or give an error, never crash.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = sslbench::fuzz::Scratch();
  std::filesystem::create_directories(dir + "/train");
  sslbench::fuzz::WriteFile(dir + "/train/shard-0.tar", data, size);
  sslbench::fuzz::ListAndReadAll("webdataset", dir);
  return 0;
}
