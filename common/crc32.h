#pragma once
// CRC-32 (the zlib/gzip polynomial, as zlib's crc32() computes it), with a
// carry-less multiplication path on x86-64 CPUs that have PCLMULQDQ: about
// ten times zlib's table-driven rate, which on a chunk of features is the
// difference between a checksum that costs a noticeable share of a transfer
// and one that does not. Same values as zlib everywhere.

#include <cstdint>
#include <string_view>

namespace sslbench {

// Continues `crc` (0 to start) over `bytes`.
uint32_t Crc32(uint32_t crc, std::string_view bytes);
inline uint32_t Crc32(std::string_view bytes) { return Crc32(0, bytes); }

// Whether Crc32 takes the carry-less multiplication path on this CPU.
bool Crc32IsAccelerated();

}  // namespace sslbench
