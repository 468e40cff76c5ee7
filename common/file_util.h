#pragma once
// Writing small files so that readers never see half of one.

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sslbench {

// Writes `text` to a temporary file created with `mode` (so a secret is
// never readable by others, not even briefly), then renames it over `path`.
// INTERNAL naming the path on failure.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view text,
                                 mode_t mode = 0644);

}  // namespace sslbench
