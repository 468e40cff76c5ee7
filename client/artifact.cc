#include "client/artifact.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sslbench::client {
namespace {

namespace fs = std::filesystem;

std::string WithThousands(uint64_t n) {
  const std::string digits = absl::StrCat(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

absl::Status WriteAll(std::FILE* file, const std::string& data, const std::string& name) {
  if (!data.empty() && std::fwrite(data.data(), 1, data.size(), file) != data.size()) {
    return absl::InternalError(
        absl::StrCat("cannot write ", name, ": ", std::strerror(errno)));
  }
  if (std::fflush(file) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot write ", name, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, const std::string& data) {
  const fs::path target(path);
  const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) {
    return absl::NotFoundError(
        absl::StrCat("cannot write ", path, ": folder ", folder.string(), " does not exist"));
  }
  if (fs::is_directory(target, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write ", path, ": it is a folder; name a file"));
  }
  // Same folder, so the rename is atomic.
  const std::string partial = absl::StrCat(path, ".partial-", ::getpid());
  std::FILE* file = std::fopen(partial.c_str(), "wb");
  if (file == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  absl::Status written = WriteAll(file, data, path);
  if (std::fclose(file) != 0 && written.ok()) {
    written = absl::InternalError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  if (written.ok()) {
    fs::rename(partial, target, ec);
    if (ec) {
      written = absl::InternalError(
          absl::StrCat("cannot write ", path, ": ", ec.message()));
    }
  }
  if (!written.ok()) fs::remove(partial, ec);
  return written;
}

absl::StatusOr<v1::Artifact> DownloadArtifact(CoordinatorClient& client,
                                              int64_t artifact_id,
                                              const std::string& path, std::FILE* out) {
  ASSIGN_OR_RETURN(v1::Artifact artifact, client.GetArtifact(artifact_id));
  if (path.empty() || path == "-") {
    RETURN_IF_ERROR(WriteAll(out, artifact.data(), "standard output"));
  } else {
    RETURN_IF_ERROR(WriteFileAtomically(path, artifact.data()));
  }
  return artifact;
}

std::string DescribeArtifact(const v1::Artifact& artifact,
                             const std::string& destination) {
  return absl::StrCat(
      "artifact ", artifact.artifact_id(), " \"", artifact.name(), "\" (",
      artifact.content_type().empty() ? "no content type" : artifact.content_type(), ", ",
      WithThousands(artifact.data().size()), " bytes) of study ", artifact.study_id(),
      ", task ", artifact.task_id(), " -> ", destination);
}

}  // namespace sslbench::client
