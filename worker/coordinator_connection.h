#pragma once
// The worker's side of the WorkerService, as an interface: the daemon and
// the task runners talk to the coordinator only through it, so they are
// tested against a fake. The gRPC implementation owns deadlines, retries and
// backoff.

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sslbench/v1/worker_api.pb.h"

namespace grpc {
class Channel;
}

namespace sslbench {
class Clock;
}

namespace sslbench::worker {

// How one call behaves. Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED,
// ABORTED: a coordinator restarting, a replica going away) are retried with
// backoff for up to `retry_window`, unless `stop` returns true.
struct CallOptions {
  absl::Duration timeout = absl::Seconds(60);
  absl::Duration retry_window = absl::ZeroDuration();  // zero: one try
  std::function<bool()> stop;                           // may be empty
};

class CoordinatorConnection {
 public:
  virtual ~CoordinatorConnection() = default;
  // Each returns the coordinator's answer or its error as documented in
  // proto/sslbench/v1/worker_api.proto.
  virtual absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(
      const v1::RegisterWorkerRequest& request, const CallOptions& options) = 0;
  virtual absl::StatusOr<v1::LeaseTaskResponse> LeaseTask(const v1::LeaseTaskRequest& request,
                                                          const CallOptions& options) = 0;
  virtual absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request,
                                                          const CallOptions& options) = 0;
  virtual absl::Status CompleteTask(const v1::CompleteTaskRequest& request,
                                    const CallOptions& options) = 0;
  virtual absl::StatusOr<v1::FailTaskResponse> FailTask(const v1::FailTaskRequest& request,
                                                        const CallOptions& options) = 0;
  virtual absl::Status PutFeatureChunk(const v1::PutFeatureChunkRequest& request,
                                       const CallOptions& options) = 0;
  virtual absl::StatusOr<v1::FeatureChunk> GetFeatureChunk(
      const v1::GetFeatureChunkRequest& request, const CallOptions& options) = 0;
  virtual absl::StatusOr<v1::FeatureCacheInfo> GetFeatureCache(
      const v1::GetFeatureCacheRequest& request, const CallOptions& options) = 0;
  virtual absl::Status PutCheckpoint(const v1::PutCheckpointRequest& request,
                                     const CallOptions& options) = 0;
  virtual absl::Status PutArtifactPart(const v1::PutArtifactPartRequest& request,
                                       const CallOptions& options) = 0;
  virtual absl::StatusOr<v1::Checkpoint> GetCheckpoint(const v1::GetCheckpointRequest& request,
                                                       const CallOptions& options) = 0;
};

// The gRPC implementation over `channel`. Backoff waits run on `clock`
// (which must outlive the connection). `token`, when not empty, is sent as
// the bearer access token with every call.
std::unique_ptr<CoordinatorConnection> NewGrpcCoordinatorConnection(
    std::shared_ptr<grpc::Channel> channel, const Clock& clock, std::string token = "");

}  // namespace sslbench::worker
