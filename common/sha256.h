#pragma once
// SHA-256 of bytes and files, as lowercase hex.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sslbench {

std::string Sha256Hex(std::string_view bytes);

// NOT_FOUND when the file does not exist; INTERNAL on a read error.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace sslbench
