#include "common/location.h"

#include <filesystem>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sslbench {
namespace {

constexpr char kSeparator[] = "://";

absl::StatusOr<std::string> ResolveFile(const std::string& location, const LocationRoots& roots) {
  const std::string rest = location.substr(std::string("file://").size());
  if (rest.empty() || rest[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", location, "\": a file URI names a path from its root (file:///dir/file); "
        "hosts are not supported"));
  }
  const std::filesystem::path relative = std::filesystem::path(rest).lexically_normal();
  for (const auto& part : std::filesystem::path(rest)) {
    if (part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", location, "\" climbs out of the file root"));
    }
  }
  const std::string root = roots.file_root.empty() ? "/" : roots.file_root;
  return (std::filesystem::path(root) / relative.relative_path()).lexically_normal().string();
}

std::map<std::string, LocationResolver>& Resolvers() {
  static auto* resolvers = new std::map<std::string, LocationResolver>{{"file", ResolveFile}};
  return *resolvers;
}

std::string KnownSchemes() {
  std::vector<std::string> names;
  for (const auto& [name, resolver] : Resolvers()) names.push_back(name + "://");
  return absl::StrJoin(names, ", ");
}

}  // namespace

std::string LocationScheme(const std::string& location) {
  const size_t at = location.find(kSeparator);
  if (at == std::string::npos || at == 0) return "";
  for (size_t i = 0; i < at; ++i) {
    const char c = location[i];
    const bool ok = (c >= 'a' && c <= 'z') || (i > 0 && ((c >= '0' && c <= '9') || c == '+' ||
                                                          c == '-' || c == '.'));
    if (!ok) return "";
  }
  return location.substr(0, at);
}

absl::Status CheckLocation(const std::string& location) {
  const std::string scheme = LocationScheme(location);
  if (scheme.empty()) {
    if (location.empty() || location[0] != '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", location, "\" must be an absolute path or a URI (", KnownSchemes(), ")"));
    }
    return absl::OkStatus();
  }
  if (Resolvers().count(scheme) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", location, "\": no resolver for ", scheme, ":// (known: ", KnownSchemes(), ")"));
  }
  if (scheme == "file") return ResolveFile(location, LocationRoots()).status();
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResolveLocation(const std::string& location,
                                            const LocationRoots& roots) {
  const std::string scheme = LocationScheme(location);
  if (scheme.empty()) {
    if (location.empty() || location[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", location, "\" must be an absolute path"));
    }
    return location;
  }
  auto it = Resolvers().find(scheme);
  if (it == Resolvers().end()) {
    return absl::UnimplementedError(absl::StrCat("\"", location, "\": no resolver for ", scheme,
                                                 ":// here (known: ", KnownSchemes(), ")"));
  }
  return it->second(location, roots);
}

void RegisterLocationScheme(const std::string& scheme, LocationResolver resolver) {
  Resolvers()[scheme] = std::move(resolver);
}

}  // namespace sslbench
