#include "common/crc32.h"

#include <zlib.h>

#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "gtest/gtest.h"

namespace sslbench {
namespace {

uint32_t Zlib(uint32_t crc, std::string_view s) {
  return static_cast<uint32_t>(
      crc32_z(crc, reinterpret_cast<const Bytef*>(s.data()), s.size()));
}

// Every length around the folding path's block sizes, at several alignments
// and starting values, equals zlib's CRC-32: the values already recorded
// beside stored blobs stay valid.
TEST(Crc32Test, EqualsZlibAtEveryLengthAndAlignment) {
  std::mt19937_64 rng(7);
  std::string bytes(70000, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  for (size_t offset : {0, 1, 3, 8, 15}) {
    for (size_t len = 0; len <= 600; ++len) {
      const std::string_view s(bytes.data() + offset, len);
      ASSERT_EQ(Crc32(s), Zlib(0, s)) << "length " << len << " offset " << offset;
      ASSERT_EQ(Crc32(0xdeadbeef, s), Zlib(0xdeadbeef, s))
          << "length " << len << " offset " << offset;
    }
  }
  const std::string_view all(bytes.data() + 5, bytes.size() - 5);
  EXPECT_EQ(Crc32(all), Zlib(0, all));
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);  // the polynomial's check value
}

TEST(Crc32Test, ContinuesAcrossParts) {
  std::string bytes(5000, '\0');
  std::mt19937 rng(3);
  for (char& c : bytes) c = static_cast<char>(rng());
  for (size_t cut : {0, 1, 63, 64, 65, 1000, 4999, 5000}) {
    const std::string_view s(bytes);
    EXPECT_EQ(Crc32(Crc32(s.substr(0, cut)), s.substr(cut)), Crc32(s)) << "cut at " << cut;
  }
}

TEST(Crc32Test, OneFlippedBitChangesTheValue) {
  std::string bytes(4096, 'x');
  const uint32_t before = Crc32(bytes);
  for (size_t at : {0, 100, 2047, 4095}) {
    std::string damaged = bytes;
    damaged[at] ^= 0x10;
    EXPECT_NE(Crc32(damaged), before) << "bit flipped at byte " << at;
  }
}

}  // namespace
}  // namespace sslbench
