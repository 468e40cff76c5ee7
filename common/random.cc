#include "common/random.h"

#include <openssl/rand.h>

#include <cstdlib>
#include <vector>

#include "common/log.h"

namespace sslbench {
namespace {

void Fill(unsigned char* out, int n) {
  if (RAND_bytes(out, n) != 1) {
    // Without entropy no token is safe to hand out: stop rather than guessable.
    LogError("random", "the system's random generator failed");
    std::abort();
  }
}

}  // namespace

int64_t RandomPositiveInt64() {
  for (;;) {
    unsigned char b[8];
    Fill(b, sizeof(b));
    uint64_t v = 0;
    for (unsigned char c : b) v = (v << 8) | c;
    v >>= 1;  // 63 bits
    if (v != 0) return static_cast<int64_t>(v);
  }
}

std::string RandomHex(int bytes) {
  std::vector<unsigned char> b(static_cast<size_t>(bytes));
  if (bytes > 0) Fill(b.data(), bytes);
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(b.size() * 2);
  for (unsigned char c : b) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

}  // namespace sslbench
