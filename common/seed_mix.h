#pragma once
// Derives independent seeds from (seed, index) pairs: a splitmix64-style
// finaliser over a boost-style combine. For data generators and pre-training
// runs that must be reproducible per item.

#include <cstdint>

namespace sslbench {

inline uint64_t MixSeed(uint64_t a, uint64_t b) {
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace sslbench
