#pragma once
// Minimal structured logging to stderr: "2026-01-01T10:00:00.123Z I component: message".

#include "absl/strings/string_view.h"

#include "absl/strings/str_cat.h"

namespace sslbench {

enum class LogLevel { kInfo, kWarning, kError };

void Log(LogLevel level, absl::string_view component, absl::string_view message);

template <typename... Args>
void LogInfo(absl::string_view component, const Args&... args) {
  Log(LogLevel::kInfo, component, absl::StrCat(args...));
}
template <typename... Args>
void LogWarning(absl::string_view component, const Args&... args) {
  Log(LogLevel::kWarning, component, absl::StrCat(args...));
}
template <typename... Args>
void LogError(absl::string_view component, const Args&... args) {
  Log(LogLevel::kError, component, absl::StrCat(args...));
}

}  // namespace sslbench
