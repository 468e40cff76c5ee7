#pragma once
// Unpredictable values from the operating system's CSPRNG (OpenSSL's
// RAND_bytes): fencing tokens, idempotency keys, access tokens. Never use a
// seeded generator for anything a caller could gain by guessing.

#include <cstdint>
#include <string>

namespace sslbench {

// A uniformly random integer in [1, 2^63 - 1].
int64_t RandomPositiveInt64();

// `bytes` random bytes as 2 * `bytes` lowercase hex digits.
std::string RandomHex(int bytes);

}  // namespace sslbench
