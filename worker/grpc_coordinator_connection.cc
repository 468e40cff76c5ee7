#include <chrono>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "grpcpp/grpcpp.h"
#include "sslbench/v1/worker_api.grpc.pb.h"
#include "worker/coordinator_connection.h"

namespace sslbench::worker {
namespace {

class GrpcCoordinatorConnection final : public CoordinatorConnection {
 public:
  GrpcCoordinatorConnection(std::shared_ptr<grpc::Channel> channel, const Clock& clock,
                            std::string token)
      : stub_(v1::WorkerService::NewStub(std::move(channel))),
        clock_(clock),
        authorization_(token.empty() ? "" : "Bearer " + token) {}

  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(
      const v1::RegisterWorkerRequest& request, const CallOptions& options) override {
    return Unary<v1::RegisterWorkerResponse>("RegisterWorker", options, [&](auto* c, auto* r) {
      return stub_->RegisterWorker(c, request, r);
    });
  }
  absl::StatusOr<v1::LeaseTaskResponse> LeaseTask(const v1::LeaseTaskRequest& request,
                                                  const CallOptions& options) override {
    return Unary<v1::LeaseTaskResponse>("LeaseTask", options, [&](auto* c, auto* r) {
      return stub_->LeaseTask(c, request, r);
    });
  }
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request,
                                                  const CallOptions& options) override {
    return Unary<v1::HeartbeatResponse>("Heartbeat", options, [&](auto* c, auto* r) {
      return stub_->Heartbeat(c, request, r);
    });
  }
  absl::Status CompleteTask(const v1::CompleteTaskRequest& request,
                            const CallOptions& options) override {
    return Unary<v1::CompleteTaskResponse>("CompleteTask", options, [&](auto* c, auto* r) {
             return stub_->CompleteTask(c, request, r);
           }).status();
  }
  absl::StatusOr<v1::FailTaskResponse> FailTask(const v1::FailTaskRequest& request,
                                                const CallOptions& options) override {
    return Unary<v1::FailTaskResponse>("FailTask", options, [&](auto* c, auto* r) {
      return stub_->FailTask(c, request, r);
    });
  }
  absl::Status PutFeatureChunk(const v1::PutFeatureChunkRequest& request,
                               const CallOptions& options) override {
    return Unary<v1::PutFeatureChunkResponse>("PutFeatureChunk", options, [&](auto* c, auto* r) {
             return stub_->PutFeatureChunk(c, request, r);
           }).status();
  }
  absl::StatusOr<v1::FeatureChunk> GetFeatureChunk(const v1::GetFeatureChunkRequest& request,
                                                   const CallOptions& options) override {
    return Unary<v1::FeatureChunk>("GetFeatureChunk", options, [&](auto* c, auto* r) {
      return stub_->GetFeatureChunk(c, request, r);
    });
  }
  absl::StatusOr<v1::FeatureCacheInfo> GetFeatureCache(const v1::GetFeatureCacheRequest& request,
                                                       const CallOptions& options) override {
    return Unary<v1::FeatureCacheInfo>("GetFeatureCache", options, [&](auto* c, auto* r) {
      return stub_->GetFeatureCache(c, request, r);
    });
  }
  absl::Status PutCheckpoint(const v1::PutCheckpointRequest& request,
                             const CallOptions& options) override {
    return Unary<v1::PutCheckpointResponse>("PutCheckpoint", options, [&](auto* c, auto* r) {
             return stub_->PutCheckpoint(c, request, r);
           }).status();
  }
  absl::Status PutArtifactPart(const v1::PutArtifactPartRequest& request,
                               const CallOptions& options) override {
    return Unary<v1::PutArtifactPartResponse>("PutArtifactPart", options, [&](auto* c, auto* r) {
             return stub_->PutArtifactPart(c, request, r);
           }).status();
  }
  absl::StatusOr<v1::Checkpoint> GetCheckpoint(const v1::GetCheckpointRequest& request,
                                               const CallOptions& options) override {
    return Unary<v1::Checkpoint>("GetCheckpoint", options, [&](auto* c, auto* r) {
      return stub_->GetCheckpoint(c, request, r);
    });
  }

 private:
  // One call with a fresh context per try; transient failures retried with
  // doubling backoff (200 ms up to 5 s) within the retry window.
  template <typename Response, typename Rpc>
  absl::StatusOr<Response> Unary(const char* what, const CallOptions& options, Rpc rpc) {
    absl::Duration backoff = absl::Milliseconds(200);
    const absl::Time give_up = clock_.Now() + options.retry_window;
    for (;;) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() +
                           absl::ToChronoMilliseconds(options.timeout));
      if (!authorization_.empty()) context.AddMetadata("authorization", authorization_);
      Response response;
      const absl::Status status = FromGrpcStatus(rpc(&context, &response));
      if (status.ok()) return response;
      const bool transient = absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
                             absl::IsAborted(status) || absl::IsResourceExhausted(status);
      if (!transient || clock_.Now() + backoff > give_up || (options.stop && options.stop())) {
        return status;
      }
      LogWarning("worker", what, " failed, retrying in ", absl::FormatDuration(backoff), ": ",
                 status.message());
      absl::Notification never;
      clock_.WaitForNotification(never, backoff);
      backoff = std::min(backoff * 2, absl::Seconds(5));
    }
  }

  std::unique_ptr<v1::WorkerService::Stub> stub_;
  const Clock& clock_;
  const std::string authorization_;
};

}  // namespace

std::unique_ptr<CoordinatorConnection> NewGrpcCoordinatorConnection(
    std::shared_ptr<grpc::Channel> channel, const Clock& clock, std::string token) {
  return std::make_unique<GrpcCoordinatorConnection>(std::move(channel), clock, std::move(token));
}

}  // namespace sslbench::worker
