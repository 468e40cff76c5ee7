#pragma once
// SHA-256 of bytes and files, as lowercase hex.

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sslbench {

std::string Sha256Hex(std::string_view bytes);

struct HashFileOptions {
  // Larger files are refused (FAILED_PRECONDITION) before reading; 0: no limit.
  int64_t max_bytes = 0;
  // Polled every MiB; true stops the hashing with CANCELLED.
  std::function<bool()> cancelled;
};

// Regular files only: a device (/dev/zero) or FIFO would be read forever, so
// it is FAILED_PRECONDITION. NOT_FOUND when the file does not exist; INTERNAL
// on a read error.
absl::StatusOr<std::string> Sha256File(const std::string& path,
                                       const HashFileOptions& options = HashFileOptions());

}  // namespace sslbench
