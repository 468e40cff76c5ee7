#pragma once
// `sslbench artifact`: fetches a stored artefact (such as a trained linear
// head) and writes its bytes to a file or a stream.

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/statusor.h"
#include "client/coordinator_client.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::client {

// Fetches artefact `artifact_id` and writes its bytes to `path`, or to `out`
// when `path` is empty or "-". A file is written next to its final name and
// renamed into place, so an interrupted download never leaves a truncated
// file under that name. Returns the artefact (bytes included).
// NOT_FOUND: no such artefact, or the folder of `path` does not exist;
// INVALID_ARGUMENT: `path` is a folder; INTERNAL: a write failed (the message
// names the file); the client's codes otherwise (UNAVAILABLE, ...).
absl::StatusOr<v1::Artifact> DownloadArtifact(CoordinatorClient& client,
                                              int64_t artifact_id,
                                              const std::string& path, std::FILE* out);

// Writes `data` to `path` as above, with the same error codes.
absl::Status WriteFileAtomically(const std::string& path, const std::string& data);

// One line for stderr: `artifact 4 "resnet50/imagenet/linear/full"
// (application/x-sslbench-head, 1,234 bytes) of study 3, task 11 -> head.bin`.
std::string DescribeArtifact(const v1::Artifact& artifact, const std::string& destination);

}  // namespace sslbench::client
