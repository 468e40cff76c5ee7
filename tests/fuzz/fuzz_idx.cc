// IDX files: the input is split into an image file and a label file (its
// first byte says where); listing and reading every record must give records
// or an error, never a crash or an allocation the files cannot back.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t split = std::min<size_t>(size - 1, data[0] * 4u);
  const std::string& dir = sslbench::fuzz::Scratch();
  sslbench::fuzz::WriteFile(dir + "/train-images-idx3-ubyte", data + 1, split);
  sslbench::fuzz::WriteFile(dir + "/train-labels-idx1-ubyte", data + 1 + split, size - 1 - split);
  sslbench::fuzz::ListAndReadAll("idx", dir);
  return 0;
}
