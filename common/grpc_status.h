#pragma once
// The one place where absl::Status and grpc::Status are converted.

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace sslbench {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace sslbench
