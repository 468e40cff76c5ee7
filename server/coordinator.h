#pragma once
// The coordinator's domain: what every RPC does, minus the RPC. Stateless
// apart from the store, so any number of replicas can run side by side.
// Thread-safe. Never includes grpcpp; the adapters in *_service.cc call it.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "server/auth.h"
#include "server/lease_policy.h"
#include "server/metrics.h"
#include "server/planner.h"
#include "server/store/store.h"
#include "sslbench/v1/client_api.pb.h"
#include "sslbench/v1/worker_api.pb.h"

namespace sslbench::server {

class Coordinator {
 public:
  // `metrics` may be null. All references must outlive the coordinator.
  Coordinator(Store& store, const Clock& clock, LeasePolicy policy,
              CoordinatorMetrics* metrics, PlanLimits limits = PlanLimits());

  const LeasePolicy& policy() const { return policy_; }

  // Client API.
  // `caller` is recorded as the study's submitter.
  absl::StatusOr<v1::SubmitStudyResponse> SubmitStudy(
      const v1::SubmitStudyRequest& request, const Caller& caller = Caller());
  absl::StatusOr<v1::StudyStatus> GetStudy(int64_t study_id, bool include_spec = false);
  // A submitter may cancel only its own studies (PERMISSION_DENIED).
  absl::StatusOr<v1::StudyStatus> CancelStudy(int64_t study_id, const Caller& caller = Caller());
  // Tokens (the Authenticator has checked the caller is an admin).
  absl::StatusOr<v1::CreateTokenResponse> CreateToken(const v1::CreateTokenRequest& request,
                                                      const Caller& caller);
  absl::StatusOr<v1::ListTokensResponse> ListTokens();
  absl::StatusOr<v1::ListFeatureCachesResponse> ListFeatureCaches(int64_t study_id);
  absl::StatusOr<v1::FeatureCacheSummary> DropFeatureCache(const std::string& cache_key,
                                                           const Caller& caller);
  absl::StatusOr<v1::TokenInfo> RevokeToken(int64_t token_id, const Caller& caller);
  absl::StatusOr<v1::ListResultsResponse> ListResults(int64_t study_id);
  absl::StatusOr<v1::ListWorkersResponse> ListWorkers();
  absl::StatusOr<v1::Artifact> GetArtifact(int64_t artifact_id, int64_t offset = 0,
                                           int64_t max_bytes = 0);
  // Correlations between the study's result columns (see AnalyzeStudy in
  // server/analysis/study_analysis.h). INVALID_ARGUMENT: unknown metric or
  // bootstrap_resamples outside [0, kMaxBootstrapResamples]; NOT_FOUND: no
  // such study; FAILED_PRECONDITION: fewer than 3 models have results.
  absl::StatusOr<v1::CorrelateResponse> Correlate(const v1::CorrelateRequest& request);
  static constexpr int kDefaultBootstrapResamples = 1000;
  static constexpr int kMaxBootstrapResamples = 100000;
  // Longest worker name or host name accepted at registration.
  static constexpr size_t kMaxWorkerName = 255;

  // Worker API.
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(
      const v1::RegisterWorkerRequest& request);
  absl::StatusOr<v1::LeaseTaskResponse> LeaseTask(const v1::LeaseTaskRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  // Batches (see worker_api.proto): INVALID_ARGUMENT for max_tasks outside
  // [1, 256] or more than 256 completions.
  absl::StatusOr<v1::LeaseTasksResponse> LeaseTasks(const v1::LeaseTasksRequest& request);
  absl::StatusOr<v1::CompleteTasksResponse> CompleteTasks(const v1::CompleteTasksRequest& request);
  absl::Status CompleteTask(const v1::CompleteTaskRequest& request);
  absl::StatusOr<v1::FailTaskResponse> FailTask(const v1::FailTaskRequest& request);
  absl::Status PutFeatureChunk(const v1::PutFeatureChunkRequest& request);
  absl::StatusOr<v1::FeatureChunk> GetFeatureChunk(
      const v1::GetFeatureChunkRequest& request);
  absl::StatusOr<v1::FeatureCacheInfo> GetFeatureCache(
      const v1::GetFeatureCacheRequest& request);
  absl::Status PutCheckpoint(const v1::PutCheckpointRequest& request);
  absl::Status PutArtifactPart(const v1::PutArtifactPartRequest& request);
  absl::StatusOr<v1::Checkpoint> GetCheckpoint(const v1::GetCheckpointRequest& request);

  // Returns expired leases to the queue (or fails them after max attempts).
  // Returns how many were released. Called periodically by the process.
  absl::StatusOr<int> ReapExpiredLeases();
  // Refreshes the task and worker gauges from the store: PENDING and
  // LEASED, and the finished states too when `finished_too` (a scan of
  // every task ever run).
  absl::Status RefreshGauges(bool finished_too);

 private:
  Store& store_;
  const Clock& clock_;
  const LeasePolicy policy_;
  CoordinatorMetrics* metrics_;
  const PlanLimits limits_;
};

// True for the states a study does not leave.
bool IsTerminal(v1::StudyState state);

}  // namespace sslbench::server
