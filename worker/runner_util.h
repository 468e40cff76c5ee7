#pragma once
// Helpers the runners share.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/location.h"
#include "sslbench/v1/types.pb.h"
#include "worker/compute/feature_extractor.h"

namespace sslbench::worker {

// What a worker may read for a task (flags --model_roots, --data_roots,
// --max_model_bytes).
// Replaces the spec's model path and dataset root, which may be URIs
// (file:///models/x.pt), by their local paths on this worker (see
// common/location.h). INVALID_ARGUMENT / UNIMPLEMENTED naming the field.
absl::Status LocalizeSpec(v1::TaskSpec& spec, const LocationRoots& roots);

struct ReadPolicy {
  std::vector<std::string> model_roots;  // empty: anywhere
  std::vector<std::string> data_roots;   // empty: anywhere
  int64_t max_model_bytes = int64_t{64} << 30;
};

// The model file must lie under the policy's model roots, be a regular file
// (not /dev/zero) within max_model_bytes, and hash to the sha256 the study
// was submitted with (the cache key and the results promise these bytes):
// PERMISSION_DENIED, FAILED_PRECONDITION otherwise. Hashing polls `stop` and
// returns CANCELLED when it says so.
absl::Status VerifyModel(const v1::ModelSpec& model, const ReadPolicy& policy = ReadPolicy(),
                         const std::function<bool()>& stop = nullptr);
// The dataset's folder must lie under the policy's data roots
// (PERMISSION_DENIED), and its files must still have the digest the study
// was submitted with: FAILED_PRECONDITION when they changed since (their
// features would be cached under a key that no longer describes them).
absl::Status VerifyDataset(const v1::DatasetSpec& dataset, const ReadPolicy& policy);

compute::ModelOptions ToModelOptions(const v1::ModelSpec& model);

// A stop requested through the task's context.
inline absl::Status Stopped() { return absl::CancelledError("stopped"); }

}  // namespace sslbench::worker
