#pragma once
// Helpers the runners share.

#include "absl/status/status.h"
#include "sslbench/v1/types.pb.h"
#include "worker/compute/feature_extractor.h"

namespace sslbench::worker {

// The cache key and the results promise these exact bytes: FAILED_PRECONDITION
// for a model file changed since the study was submitted.
absl::Status VerifyModel(const v1::ModelSpec& model);

compute::ModelOptions ToModelOptions(const v1::ModelSpec& model);

// A stop requested through the task's context.
inline absl::Status Stopped() { return absl::CancelledError("stopped"); }

}  // namespace sslbench::worker
