#include "server/coordinator.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/analysis/study_analysis.h"
#include "server/planner.h"

namespace sslbench::server {

bool IsTerminal(v1::StudyState state) {
  return state == v1::STUDY_STATE_SUCCEEDED || state == v1::STUDY_STATE_FAILED ||
         state == v1::STUDY_STATE_CANCELLED;
}

Coordinator::Coordinator(Store& store, const Clock& clock, LeasePolicy policy,
                         CoordinatorMetrics* metrics, PlanLimits limits)
    : store_(store), clock_(clock), policy_(std::move(policy)), metrics_(metrics),
      limits_(limits) {}

absl::StatusOr<v1::SubmitStudyResponse> Coordinator::SubmitStudy(
    const v1::SubmitStudyRequest& request, const Caller& caller) {
  ASSIGN_OR_RETURN(StudyPlan plan, PlanStudy(request.spec(), request.request_id(), limits_));
  plan.submitted_by = caller.name;
  ASSIGN_OR_RETURN(CreatedStudy created, store_.CreateStudy(plan, clock_.Now()));
  v1::SubmitStudyResponse response;
  response.set_study_id(created.study_id);
  response.set_existing(created.existing);
  response.set_tasks(created.tasks);
  response.set_reused_features(created.reused_features);
  if (!created.existing) {
    if (metrics_) metrics_->StudySubmitted();
    LogInfo("coordinator", "study ", created.study_id, " \"", plan.spec.name(), "\"",
            caller.name.empty() ? "" : absl::StrCat(" from ", caller.name), ": ",
            created.tasks, " tasks, ", created.reused_features,
            " feature sets reused from the cache, ", created.shared_features,
            " shared with running studies");
  }
  return response;
}

absl::StatusOr<v1::StudyStatus> Coordinator::GetStudy(int64_t study_id, bool include_spec) {
  ASSIGN_OR_RETURN(v1::StudyStatus status, store_.GetStudyStatus(study_id, clock_.Now()));
  if (include_spec) {
    ASSIGN_OR_RETURN(*status.mutable_spec(), store_.GetStudySpec(study_id));
  }
  return status;
}

absl::StatusOr<v1::StudyStatus> Coordinator::CancelStudy(int64_t study_id,
                                                         const Caller& caller) {
  if (caller.role != Role::kAdmin) {
    ASSIGN_OR_RETURN(v1::StudyStatus status, store_.GetStudyStatus(study_id, clock_.Now()));
    if (status.submitted_by() != caller.name) {
      return absl::PermissionDeniedError(absl::StrCat(
          "study ", study_id, " was submitted by \"", status.submitted_by(), "\"; token \"",
          caller.name, "\" may cancel only its own studies (an admin may cancel any)"));
    }
  }
  ASSIGN_OR_RETURN(v1::StudyStatus status, store_.CancelStudy(study_id, clock_.Now(), caller.name));
  LogInfo("coordinator", "study ", study_id, " cancelled",
          caller.name.empty() ? "" : absl::StrCat(" by ", caller.name));
  return status;
}

absl::StatusOr<v1::CreateTokenResponse> Coordinator::CreateToken(
    const v1::CreateTokenRequest& request, const Caller& caller) {
  const std::string& name = request.name();
  if (name.empty() || name.size() > 128 ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-") !=
          std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: \"", name.substr(0, 128), "\" must be 1-128 of [A-Za-z0-9_.@-]"));
  }
  ASSIGN_OR_RETURN(Role role, ParseRole(request.role()));
  v1::CreateTokenResponse response;
  response.set_token(NewTokenSecret());
  ASSIGN_OR_RETURN(*response.mutable_info(),
                   store_.CreateToken(name, RoleName(role), TokenHash(response.token()),
                                      caller.name, clock_.Now()));
  LogInfo("coordinator", "token ", response.info().token_id(), " \"", name, "\" (",
          RoleName(role), ") created", caller.name.empty() ? "" : absl::StrCat(" by ", caller.name));
  return response;
}

absl::StatusOr<v1::ListFeatureCachesResponse> Coordinator::ListFeatureCaches(
    int64_t study_id) {
  if (study_id < 0) return absl::InvalidArgumentError("study_id: must not be negative");
  ASSIGN_OR_RETURN(std::vector<v1::FeatureCacheSummary> caches,
                   store_.ListFeatureCaches(study_id, /*limit=*/10000));
  v1::ListFeatureCachesResponse response;
  for (auto& c : caches) *response.add_caches() = std::move(c);
  return response;
}

absl::StatusOr<v1::FeatureCacheSummary> Coordinator::DropFeatureCache(
    const std::string& cache_key, const Caller& caller) {
  if (cache_key.empty() || cache_key.size() > 256) {
    return absl::InvalidArgumentError("cache_key: missing or longer than 256 characters");
  }
  ASSIGN_OR_RETURN(v1::FeatureCacheSummary dropped, store_.DropFeatureCache(cache_key));
  LogWarning("coordinator", "feature cache ", cache_key, " (", dropped.model(), "/",
             dropped.dataset(), "/", dropped.split(), ") dropped by ",
             caller.name.empty() ? "an unauthenticated caller" : caller.name);
  return dropped;
}

absl::StatusOr<v1::ListTokensResponse> Coordinator::ListTokens() {
  ASSIGN_OR_RETURN(std::vector<v1::TokenInfo> tokens, store_.ListTokens());
  v1::ListTokensResponse response;
  for (auto& t : tokens) *response.add_tokens() = std::move(t);
  return response;
}

absl::StatusOr<v1::TokenInfo> Coordinator::RevokeToken(int64_t token_id, const Caller& caller) {
  ASSIGN_OR_RETURN(v1::TokenInfo info, store_.RevokeToken(token_id, clock_.Now()));
  LogInfo("coordinator", "token ", token_id, " \"", info.name(), "\" revoked",
          caller.name.empty() ? "" : absl::StrCat(" by ", caller.name));
  return info;
}

absl::StatusOr<v1::ListResultsResponse> Coordinator::ListResults(int64_t study_id) {
  ASSIGN_OR_RETURN(auto results, store_.ListResults(study_id));
  v1::ListResultsResponse response;
  for (auto& r : results) *response.add_results() = std::move(r);
  return response;
}

absl::StatusOr<v1::ListWorkersResponse> Coordinator::ListWorkers() {
  ASSIGN_OR_RETURN(auto workers,
                   store_.ListWorkers(clock_.Now() - policy_.worker_alive_window));
  v1::ListWorkersResponse response;
  for (auto& w : workers) *response.add_workers() = std::move(w);
  return response;
}

absl::StatusOr<v1::Artifact> Coordinator::GetArtifact(int64_t artifact_id, int64_t offset,
                                                      int64_t max_bytes) {
  if (offset < 0 || max_bytes < 0) {
    return absl::InvalidArgumentError("artifact page: offset and max_bytes must be >= 0");
  }
  return store_.GetArtifact(artifact_id, offset, max_bytes);
}

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(
    const v1::RegisterWorkerRequest& request) {
  if (request.name().empty()) {
    return absl::InvalidArgumentError("name: a worker needs a name");
  }
  // Bounded: they are stored, logged and listed by `sslbench workers`.
  if (request.name().size() > kMaxWorkerName) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: ", request.name().size(), " bytes; at most ", kMaxWorkerName));
  }
  if (request.hostname().size() > kMaxWorkerName) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hostname: ", request.hostname().size(), " bytes; at most ", kMaxWorkerName));
  }
  if (request.device().size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("device: ", request.device().size(), " bytes; at most 64"));
  }
  ASSIGN_OR_RETURN(int64_t id, store_.RegisterWorker(request.name(), request.hostname(),
                                                     request.device(), clock_.Now()));
  LogInfo("coordinator", "worker ", id, " \"", request.name(), "\" registered from ",
          request.hostname(), " (", request.device(), ")");
  v1::RegisterWorkerResponse response;
  response.set_worker_id(id);
  response.set_heartbeat_interval_ms(absl::ToInt64Milliseconds(policy_.heartbeat_interval));
  response.set_lease_duration_ms(absl::ToInt64Milliseconds(policy_.lease_duration));
  return response;
}

namespace {

// Cache keys are 64 hex digits; anything else cannot match and is dropped.
std::vector<std::string> PreferredKeys(const google::protobuf::RepeatedPtrField<std::string>& keys) {
  std::vector<std::string> preferred;
  for (const std::string& key : keys) {
    if (preferred.size() >= 1000) break;
    if (key.size() == 64 && key.find_first_not_of("0123456789abcdef") == std::string::npos) {
      preferred.push_back(key);
    }
  }
  return preferred;
}

v1::LeaseTaskResponse ToResponse(Lease lease) {
  v1::LeaseTaskResponse response;
  response.set_task_id(lease.task_id);
  response.set_lease_token(lease.token);
  response.set_attempt(lease.attempt);
  response.set_lease_deadline_unix_ms(absl::ToUnixMillis(lease.deadline));
  *response.mutable_spec() = std::move(lease.spec);
  return response;
}

}  // namespace

absl::StatusOr<v1::LeaseTaskResponse> Coordinator::LeaseTask(
    const v1::LeaseTaskRequest& request) {
  const absl::Time now = clock_.Now();
  ASSIGN_OR_RETURN(std::optional<Lease> lease,
                   store_.LeaseTask(request.worker_id(), now, now + policy_.lease_duration,
                                    PreferredKeys(request.cached_feature_keys())));
  if (!lease) return v1::LeaseTaskResponse();
  if (metrics_) metrics_->LeaseGranted();
  return ToResponse(*std::move(lease));
}


absl::StatusOr<v1::LeaseTasksResponse> Coordinator::LeaseTasks(
    const v1::LeaseTasksRequest& request) {
  if (request.max_tasks() < 1 || request.max_tasks() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tasks: ", request.max_tasks(), " is not in [1, 256]"));
  }
  const absl::Time now = clock_.Now();
  ASSIGN_OR_RETURN(std::vector<Lease> leases,
                   store_.LeaseTasks(request.worker_id(), now, now + policy_.lease_duration,
                                     PreferredKeys(request.cached_feature_keys()),
                                     request.max_tasks()));
  v1::LeaseTasksResponse response;
  for (Lease& lease : leases) {
    if (metrics_) metrics_->LeaseGranted();
    *response.add_leases() = ToResponse(std::move(lease));
  }
  return response;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(
    const v1::HeartbeatRequest& request) {
  const absl::Time now = clock_.Now();
  const absl::Time deadline = now + policy_.lease_duration;
  ASSIGN_OR_RETURN(HeartbeatOutcome outcome,
                   store_.Heartbeat(request.worker_id(), request.task_id(),
                                    request.lease_token(), request.work_done(),
                                    request.work_total(), now, deadline));
  v1::HeartbeatResponse response;
  response.set_cancelled(outcome.cancelled);
  response.set_lease_deadline_unix_ms(absl::ToUnixMillis(deadline));
  return response;
}

namespace {

// A metric must be a finite fraction: a result outside [0, 1] or NaN comes
// from a broken or forged worker and is never stored.
absl::Status CheckFraction(const v1::ProbeResult& r, int index, const char* what, double v) {
  if (std::isfinite(v) && v >= 0 && v <= 1) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("result ", index, " (", r.protocol(), " of ",
                                                 r.model(), " on ", r.dataset(), "): ", what, " ", v,
                                                 " is not a fraction in [0, 1]"));
}

absl::Status CheckResult(const v1::ProbeResult& r, int index) {
  RETURN_IF_ERROR(CheckFraction(r, index, "top1", r.top1()));
  RETURN_IF_ERROR(CheckFraction(r, index, "top5", r.top5()));
  RETURN_IF_ERROR(CheckFraction(r, index, "mean_per_class", r.mean_per_class()));
  RETURN_IF_ERROR(CheckFraction(r, index, "top1_std", r.top1_std()));
  RETURN_IF_ERROR(CheckFraction(r, index, "top5_std", r.top5_std()));
  RETURN_IF_ERROR(CheckFraction(r, index, "mean_per_class_std", r.mean_per_class_std()));
  for (double v : r.per_class()) RETURN_IF_ERROR(CheckFraction(r, index, "per_class", v));
  for (double v : r.seed_top1()) RETURN_IF_ERROR(CheckFraction(r, index, "seed_top1", v));
  if (r.num_seeds() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("result ", index, ": num_seeds ", r.num_seeds(), " < 0"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Coordinator::CompleteTask(const v1::CompleteTaskRequest& request) {
  for (int i = 0; i < request.results_size(); ++i) {
    RETURN_IF_ERROR(CheckResult(request.results(i), i));
  }
  std::vector<v1::ProbeResult> results(request.results().begin(), request.results().end());
  ExtractCompletion extract{request.feature_rows(), request.feature_dim(),
                            request.feature_chunks()};
  RETURN_IF_ERROR(store_.CompleteTask(request.task_id(), request.lease_token(), results,
                                      extract, clock_.Now()));
  if (metrics_) metrics_->TaskOutcome("succeeded");
  return absl::OkStatus();
}

absl::StatusOr<v1::CompleteTasksResponse> Coordinator::CompleteTasks(
    const v1::CompleteTasksRequest& request) {
  if (request.tasks_size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("tasks: ", request.tasks_size(), " completions; at most 256 per call"));
  }
  // Results are checked here, per task; the store checks each token.
  std::vector<TaskCompletion> valid;
  std::vector<absl::Status> outcomes(static_cast<size_t>(request.tasks_size()));
  std::vector<size_t> where;
  for (int i = 0; i < request.tasks_size(); ++i) {
    const v1::CompleteTaskRequest& task = request.tasks(i);
    absl::Status checked;
    for (int k = 0; k < task.results_size() && checked.ok(); ++k) {
      checked = CheckResult(task.results(k), k);
    }
    if (!checked.ok()) {
      outcomes[static_cast<size_t>(i)] = checked;
      continue;
    }
    valid.push_back(TaskCompletion{
        task.task_id(), task.lease_token(),
        std::vector<v1::ProbeResult>(task.results().begin(), task.results().end()),
        ExtractCompletion{task.feature_rows(), task.feature_dim(), task.feature_chunks()}});
    where.push_back(static_cast<size_t>(i));
  }
  if (!valid.empty()) {
    ASSIGN_OR_RETURN(std::vector<absl::Status> stored, store_.CompleteTasks(valid, clock_.Now()));
    for (size_t k = 0; k < stored.size(); ++k) {
      outcomes[where[k]] = stored[k];
      if (stored[k].ok() && metrics_) metrics_->TaskOutcome("succeeded");
    }
  }
  v1::CompleteTasksResponse response;
  for (int i = 0; i < request.tasks_size(); ++i) {
    auto* outcome = response.add_outcomes();
    outcome->set_task_id(request.tasks(i).task_id());
    outcome->set_code(static_cast<int>(outcomes[static_cast<size_t>(i)].code()));
    outcome->set_message(std::string(outcomes[static_cast<size_t>(i)].message()));
  }
  return response;
}

absl::StatusOr<v1::FailTaskResponse> Coordinator::FailTask(
    const v1::FailTaskRequest& request) {
  ASSIGN_OR_RETURN(LeasedTask leased,
                   store_.GetLeasedTask(request.task_id(), request.lease_token()));
  const absl::Time now = clock_.Now();
  const std::string error =
      request.error().empty() ? std::string("worker reported a failure") : request.error();
  Release release;
  if (request.preempted()) {
    // A worker shutting down (rolling restart, node drain) is not the task's
    // fault: back to the queue now, and the attempt is not counted.
    release.not_before = now;
    release.error = absl::StrCat("preempted: ", error);
    release.refund_attempt = true;
  } else {
    release = DecideRelease(policy_, leased.attempts, leased.max_attempts,
                            request.retryable(), error, now);
  }
  RETURN_IF_ERROR(store_.ReleaseTask(request.task_id(), request.lease_token(), release, now));
  if (metrics_) {
    metrics_->TaskOutcome(request.preempted() ? "preempted" : release.fail ? "failed" : "retried");
  }
  LogWarning("coordinator", "task ", request.task_id(), " attempt ", leased.attempts,
             " failed", release.fail ? " for good" : ", will retry", ": ", error);
  v1::FailTaskResponse response;
  response.set_state(release.fail ? v1::TASK_STATE_FAILED : v1::TASK_STATE_PENDING);
  return response;
}

absl::Status Coordinator::PutFeatureChunk(const v1::PutFeatureChunkRequest& request) {
  return store_.PutFeatureChunk(request.task_id(), request.lease_token(), request.chunk());
}

absl::StatusOr<v1::FeatureChunk> Coordinator::GetFeatureChunk(
    const v1::GetFeatureChunkRequest& request) {
  return store_.GetFeatureChunk(request.cache_key(), request.chunk_index());
}

absl::StatusOr<v1::FeatureCacheInfo> Coordinator::GetFeatureCache(
    const v1::GetFeatureCacheRequest& request) {
  return store_.GetFeatureCache(request.cache_key());
}

absl::Status Coordinator::PutCheckpoint(const v1::PutCheckpointRequest& request) {
  return store_.PutCheckpoint(request, clock_.Now());
}

absl::Status Coordinator::PutArtifactPart(const v1::PutArtifactPartRequest& request) {
  return store_.PutArtifactPart(request);
}

absl::StatusOr<v1::Checkpoint> Coordinator::GetCheckpoint(const v1::GetCheckpointRequest& request) {
  return store_.GetCheckpoint(request.task_id(), request.part());
}

absl::StatusOr<int> Coordinator::ReapExpiredLeases() {
  const absl::Time now = clock_.Now();
  if (policy_.outage_bridge_after > absl::ZeroDuration()) {
    RETURN_IF_ERROR(store_.BridgeOutage(now, policy_.outage_bridge_after).status());
  }
  ASSIGN_OR_RETURN(auto expired, store_.FindExpiredLeases(now, 100));
  int released = 0;
  for (const LeasedTask& lease : expired) {
    const Release release = DecideRelease(
        policy_, lease.attempts, lease.max_attempts, /*retryable=*/true,
        absl::StrCat("lease expired: worker ", lease.worker_id,
                     " stopped sending heartbeats"),
        now);
    Release checked = release;
    checked.only_if_expired_at = now;
    const absl::Status status = store_.ReleaseTask(lease.task_id, lease.token, checked, now);
    // Another replica got there, or a heartbeat renewed the lease meanwhile.
    if (absl::IsFailedPrecondition(status)) continue;
    RETURN_IF_ERROR(status);
    ++released;
    if (metrics_) metrics_->LeaseExpired();
    LogWarning("coordinator", "task ", lease.task_id, ": ", release.error,
               release.fail ? "; task failed" : "; requeued");
  }
  return released;
}

absl::Status Coordinator::RefreshGauges(bool finished_too) {
  if (!metrics_) return absl::OkStatus();
  ASSIGN_OR_RETURN(auto counts, store_.CountTasksByState(/*open_only=*/!finished_too));
  for (const char* state : {"PENDING", "LEASED", "SUCCEEDED", "FAILED", "CANCELLED"}) {
    const bool open = absl::string_view(state) == "PENDING" || absl::string_view(state) == "LEASED";
    if (!finished_too && !open) continue;
    auto it = counts.find(state);
    metrics_->SetTasks(state, it == counts.end() ? 0 : static_cast<double>(it->second));
  }
  ASSIGN_OR_RETURN(auto workers,
                   store_.ListWorkers(clock_.Now() - policy_.worker_alive_window));
  int alive = 0;
  for (const auto& w : workers) alive += w.alive() ? 1 : 0;
  metrics_->SetWorkersAlive(alive);
  return absl::OkStatus();
}

absl::StatusOr<v1::CorrelateResponse> Coordinator::Correlate(
    const v1::CorrelateRequest& request) {
  analysis::AnalysisOptions options;
  ASSIGN_OR_RETURN(options.metric, analysis::ParseMetric(request.metric()));
  options.bootstrap_resamples = request.has_bootstrap_resamples()
                                    ? request.bootstrap_resamples()
                                    : kDefaultBootstrapResamples;
  if (options.bootstrap_resamples < 0 ||
      options.bootstrap_resamples > kMaxBootstrapResamples) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bootstrap_resamples: ", options.bootstrap_resamples, " is not in [0, ",
        kMaxBootstrapResamples, "]"));
  }
  options.seed = request.seed();
  options.group_by = request.group_by();
  ASSIGN_OR_RETURN(v1::StudySpec spec, store_.GetStudySpec(request.study_id()));
  ASSIGN_OR_RETURN(std::vector<v1::ProbeResult> results,
                   store_.ListResults(request.study_id()));
  absl::StatusOr<v1::CorrelateResponse> response =
      analysis::AnalyzeStudy(spec, results, options);
  if (!response.ok()) {
    return absl::Status(response.status().code(),
                        absl::StrCat("study ", request.study_id(), ": ",
                                     response.status().message()));
  }
  response->set_study_id(request.study_id());
  return response;
}

}  // namespace sslbench::server
