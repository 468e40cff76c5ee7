#pragma once
// The coordinator's storage: studies, the task graph, leases, results,
// workers and the feature cache. PostgreSQL (PgStore) is the implementation;
// every method is one transaction, safe to call from many threads and from
// several coordinator replicas at once.
//
// Error codes: UNAVAILABLE when the database cannot be reached (retry),
// ABORTED when a transaction kept conflicting, NOT_FOUND for unknown ids,
// FAILED_PRECONDITION for a stale fencing token or a task not in the state the
// call needs, INVALID_ARGUMENT for malformed input.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/planner.h"
#include "sslbench/v1/client_api.pb.h"
#include "sslbench/v1/types.pb.h"
#include "sslbench/v1/worker_api.pb.h"

namespace sslbench::server {

struct CreatedStudy {
  int64_t study_id = 0;
  bool existing = false;      // request_id seen before
  int64_t tasks = 0;          // tasks created
  int64_t reused_features = 0;  // extractions served by complete caches
  int64_t shared_features = 0;  // extractions already in progress elsewhere
};

struct Lease {
  int64_t task_id = 0;
  int64_t token = 0;
  int32_t attempt = 0;
  absl::Time deadline;
  v1::TaskSpec spec;
};

struct LeasedTask {
  int64_t task_id = 0;
  int64_t token = 0;
  int32_t attempts = 0;
  int32_t max_attempts = 0;
  int64_t worker_id = 0;
};

struct HeartbeatOutcome {
  bool cancelled = false;
};

// Where a released task goes: back to the queue after `not_before`, or FAILED.
struct Release {
  bool fail = false;
  absl::Time not_before;
  std::string error;
  // Set by the lease reaper: release only if the lease's deadline is still
  // before this time when the task is locked (a heartbeat may have renewed it
  // since the expired leases were listed); FAILED_PRECONDITION otherwise.
  std::optional<absl::Time> only_if_expired_at;
  // The attempt does not count towards max_attempts (a preempted worker).
  bool refund_attempt = false;
};

struct ExtractCompletion {
  int64_t rows = 0;
  int32_t dim = 0;
  int32_t chunks = 0;
};

struct TaskCompletion {
  int64_t task_id = 0;
  int64_t token = 0;
  std::vector<v1::ProbeResult> results;
  ExtractCompletion extract;
};

class Store {
 public:
  virtual ~Store() = default;

  // Creates the study and its task graph, reusing complete feature caches and
  // extractions already queued by other studies. Idempotent on request_id.
  virtual absl::StatusOr<CreatedStudy> CreateStudy(const StudyPlan& plan,
                                                   absl::Time now) = 0;
  virtual absl::StatusOr<v1::StudyStatus> GetStudyStatus(int64_t study_id,
                                                         absl::Time now) = 0;
  // Cancels unfinished tasks of the study, except extractions another running
  // study still needs.
  // `cancelled_by` (a token name, may be empty) is recorded on the study.
  virtual absl::StatusOr<v1::StudyStatus> CancelStudy(int64_t study_id, absl::Time now,
                                                      const std::string& cancelled_by) = 0;
  virtual absl::StatusOr<std::vector<v1::ProbeResult>> ListResults(
      int64_t study_id) = 0;

  virtual absl::StatusOr<int64_t> RegisterWorker(const std::string& name,
                                                 const std::string& hostname,
                                                 const std::string& device,
                                                 absl::Time now) = 0;
  virtual absl::StatusOr<std::vector<v1::WorkerInfo>> ListWorkers(
      absl::Time alive_since) = 0;

  // Leases the oldest runnable task (PENDING, backoff elapsed, dependencies
  // SUCCEEDED) with a fresh fencing token, preferring probes whose train
  // features are among `preferred_keys` (the worker holds them); nullopt
  // when none. A task of a kind the study lists in gpu_task_kinds goes only
  // to a worker registered with a CUDA device.
  virtual absl::StatusOr<std::optional<Lease>> LeaseTask(
      int64_t worker_id, absl::Time now, absl::Time deadline,
      const std::vector<std::string>& preferred_keys) = 0;
  // Up to `max_tasks` ready tasks in one transaction, each under its own
  // fencing token (LeaseTask is LeaseTasks with 1).
  virtual absl::StatusOr<std::vector<Lease>> LeaseTasks(
      int64_t worker_id, absl::Time now, absl::Time deadline,
      const std::vector<std::string>& preferred_keys, int max_tasks) = 0;
  virtual absl::StatusOr<HeartbeatOutcome> Heartbeat(
      int64_t worker_id, int64_t task_id, int64_t token, int64_t work_done,
      int64_t work_total, absl::Time now, absl::Time new_deadline) = 0;
  // The lease (attempt counts) behind (task_id, token); FAILED_PRECONDITION
  // when the token is stale or the task is no longer leased.
  virtual absl::StatusOr<LeasedTask> GetLeasedTask(int64_t task_id,
                                                   int64_t token) = 0;
  virtual absl::StatusOr<std::vector<LeasedTask>> FindExpiredLeases(
      absl::Time now, int limit) = 0;
  // Records that a coordinator reached the database at `now`. When none did
  // for longer than `max_gap` before (the database, or every coordinator, was
  // down), every lease is first extended by that gap: heartbeats that could
  // not land meanwhile must not cost a worker its task and an attempt.
  // Returns the gap bridged (zero when none).
  virtual absl::StatusOr<absl::Duration> BridgeOutage(absl::Time now,
                                                      absl::Duration max_gap) = 0;
  // Ends the lease (task_id, token) as `release` says. FAILED_PRECONDITION
  // when the token is stale. A FAILED task fails the tasks that depend on it.
  virtual absl::Status ReleaseTask(int64_t task_id, int64_t token,
                                   const Release& release, absl::Time now) = 0;
  // Marks the task SUCCEEDED. Probes: stores `results`, moving each result's
  // `artifact` bytes into an artefact and recording its id. Extractions: checks
  // that chunks 0..chunks-1 hold `rows` rows of width `dim`, then marks the
  // cache complete. Completing twice with the same token is OK.
  virtual absl::Status CompleteTask(int64_t task_id, int64_t token,
                                    const std::vector<v1::ProbeResult>& results,
                                    const ExtractCompletion& extract,
                                    absl::Time now) = 0;

  // CompleteTask for many tasks in one transaction; one status per task, in
  // order (a refused task writes nothing; the others are completed).
  virtual absl::StatusOr<std::vector<absl::Status>> CompleteTasks(
      const std::vector<TaskCompletion>& tasks, absl::Time now) = 0;

  virtual absl::Status PutFeatureChunk(int64_t task_id, int64_t token,
                                       const v1::FeatureChunk& chunk) = 0;
  virtual absl::StatusOr<v1::FeatureChunk> GetFeatureChunk(
      const std::string& cache_key, int32_t chunk_index) = 0;
  virtual absl::StatusOr<v1::FeatureCacheInfo> GetFeatureCache(
      const std::string& cache_key) = 0;
  // The caches the study's tasks fill or read (all when study_id is 0,
  // newest first, at most `limit`). NOT_FOUND for an unknown study.
  virtual absl::StatusOr<std::vector<v1::FeatureCacheSummary>> ListFeatureCaches(
      int64_t study_id, int limit) = 0;
  // Deletes the cache's record, chunks and blobs. NOT_FOUND for an unknown
  // key; FAILED_PRECONDITION, naming tasks, while unfinished tasks fill or
  // read it. Returns what was dropped.
  virtual absl::StatusOr<v1::FeatureCacheSummary> DropFeatureCache(
      const std::string& cache_key) = 0;

  // Bytes [offset, offset + max_bytes) of an artefact, with its size;
  // max_bytes 0: the whole artefact, OUT_OF_RANGE above kMaxWholeArtifact.
  // NOT_FOUND for an unknown id.
  virtual absl::StatusOr<v1::Artifact> GetArtifact(int64_t artifact_id, int64_t offset = 0,
                                                   int64_t max_bytes = 0) = 0;
  static constexpr int64_t kMaxWholeArtifact = int64_t{32} << 20;

  // Part of the artefact of a leased task's result, fenced by the lease;
  // joined when the task completes with ProbeResult.artifact_parts set. See
  // PutArtifactPart in worker_api.proto.
  virtual absl::Status PutArtifactPart(const v1::PutArtifactPartRequest& part) = 0;
  static constexpr int64_t kMaxArtifactPartBytes = int64_t{16} << 20;
  static constexpr int32_t kMaxArtifactParts = 32;

  // One checkpoint per task, replaced when every part of a newer one is
  // stored (fenced by the lease); see PutCheckpoint in worker_api.proto.
  virtual absl::Status PutCheckpoint(const v1::PutCheckpointRequest& part, absl::Time now) = 0;
  // Part `part` of the latest complete checkpoint. NOT_FOUND when the task
  // has none, or no such part.
  virtual absl::StatusOr<v1::Checkpoint> GetCheckpoint(int64_t task_id, int32_t part) = 0;

  // For metrics: tasks by state name ("PENDING", ...). `open_only`: only
  // PENDING and LEASED, read from their partial indexes (the other states
  // cost a scan of every task ever run).
  virtual absl::StatusOr<absl::flat_hash_map<std::string, int64_t>>
  CountTasksByState(bool open_only) = 0;

  // Access tokens, by the SHA-256 of their secret (the secret is never
  // stored). CreateToken: ALREADY_EXISTS for a hash already known.
  virtual absl::StatusOr<v1::TokenInfo> CreateToken(const std::string& name,
                                                    const std::string& role,
                                                    const std::string& secret_hash,
                                                    const std::string& created_by,
                                                    absl::Time now) = 0;
  // Registers a token from the coordinator's bootstrap file unless its hash
  // is known already (a token revoked since stays revoked).
  virtual absl::Status EnsureToken(const std::string& name, const std::string& role,
                                   const std::string& secret_hash, absl::Time now) = 0;
  virtual absl::StatusOr<std::vector<v1::TokenInfo>> ListTokens() = 0;
  // NOT_FOUND for an unknown id; revoking twice keeps the first time.
  virtual absl::StatusOr<v1::TokenInfo> RevokeToken(int64_t token_id, absl::Time now) = 0;
  // The valid (not revoked) token with this hash, or nullopt.
  virtual absl::StatusOr<std::optional<v1::TokenInfo>> FindToken(
      const std::string& secret_hash) = 0;

  // The spec the study was submitted with (as planned, defaults filled in).
  // NOT_FOUND for an unknown id; DATA_LOSS when the stored spec does not parse.
  virtual absl::StatusOr<v1::StudySpec> GetStudySpec(int64_t study_id) = 0;
};

}  // namespace sslbench::server
