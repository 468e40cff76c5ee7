#pragma once
// Store on PostgreSQL through libpqxx. Schema migrations are applied by
// Create() under an advisory lock, so coordinators starting together are safe.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/store/blob_store.h"
#include "server/store/store.h"

namespace sslbench::server {

struct PgStoreOptions {
  std::string conninfo;   // libpq connection string
  int max_connections = 8;
  // Where feature chunk bytes go; null: a table of this database.
  std::shared_ptr<BlobStore> blobs;
  // Called after every transaction with its name, duration and success.
  std::function<void(absl::string_view op, double seconds, bool ok)> observer;
};

class PgStore final : public Store {
 public:
  // Connects and migrates. UNAVAILABLE when the database is unreachable.
  static absl::StatusOr<std::unique_ptr<PgStore>> Create(PgStoreOptions options);
  ~PgStore() override;

  // Applies missing schema migrations; safe to call again and concurrently.
  absl::Status Migrate();
  // The schema version after Migrate().
  absl::StatusOr<int> SchemaVersion();

  absl::StatusOr<CreatedStudy> CreateStudy(const StudyPlan& plan,
                                           absl::Time now) override;
  absl::StatusOr<v1::StudyStatus> GetStudyStatus(int64_t study_id,
                                                 absl::Time now) override;
  absl::StatusOr<v1::StudyStatus> CancelStudy(int64_t study_id, absl::Time now,
                                              const std::string& cancelled_by) override;
  absl::StatusOr<v1::TokenInfo> CreateToken(const std::string& name, const std::string& role,
                                            const std::string& secret_hash,
                                            const std::string& created_by,
                                            absl::Time now) override;
  absl::Status EnsureToken(const std::string& name, const std::string& role,
                           const std::string& secret_hash, absl::Time now) override;
  absl::StatusOr<std::vector<v1::TokenInfo>> ListTokens() override;
  absl::StatusOr<v1::TokenInfo> RevokeToken(int64_t token_id, absl::Time now) override;
  absl::StatusOr<std::optional<v1::TokenInfo>> FindToken(const std::string& secret_hash) override;
  absl::StatusOr<std::vector<v1::ProbeResult>> ListResults(
      int64_t study_id) override;
  absl::StatusOr<int64_t> RegisterWorker(const std::string& name,
                                         const std::string& hostname,
                                         const std::string& device,
                                         absl::Time now) override;
  absl::StatusOr<std::vector<v1::WorkerInfo>> ListWorkers(
      absl::Time alive_since) override;
  absl::StatusOr<std::vector<Lease>> LeaseTasks(int64_t worker_id, absl::Time now,
                                                absl::Time deadline,
                                                const std::vector<std::string>& preferred_keys,
                                                int max_tasks) override;
  absl::StatusOr<std::vector<absl::Status>> CompleteTasks(const std::vector<TaskCompletion>& tasks,
                                                          absl::Time now) override;
  absl::StatusOr<std::optional<Lease>> LeaseTask(
      int64_t worker_id, absl::Time now, absl::Time deadline,
      const std::vector<std::string>& preferred_keys) override;
  absl::StatusOr<HeartbeatOutcome> Heartbeat(int64_t worker_id, int64_t task_id,
                                             int64_t token, int64_t work_done,
                                             int64_t work_total, absl::Time now,
                                             absl::Time new_deadline) override;
  absl::StatusOr<LeasedTask> GetLeasedTask(int64_t task_id,
                                           int64_t token) override;
  absl::StatusOr<std::vector<LeasedTask>> FindExpiredLeases(absl::Time now,
                                                            int limit) override;
  absl::StatusOr<absl::Duration> BridgeOutage(absl::Time now, absl::Duration max_gap) override;
  absl::Status ReleaseTask(int64_t task_id, int64_t token,
                           const Release& release, absl::Time now) override;
  absl::Status CompleteTask(int64_t task_id, int64_t token,
                            const std::vector<v1::ProbeResult>& results,
                            const ExtractCompletion& extract,
                            absl::Time now) override;
  absl::Status PutFeatureChunk(int64_t task_id, int64_t token,
                               const v1::FeatureChunk& chunk) override;
  absl::StatusOr<v1::FeatureChunk> GetFeatureChunk(const std::string& cache_key,
                                                   int32_t chunk_index) override;
  absl::StatusOr<v1::FeatureCacheInfo> GetFeatureCache(
      const std::string& cache_key) override;
  absl::StatusOr<std::vector<v1::FeatureCacheSummary>> ListFeatureCaches(
      int64_t study_id, int limit) override;
  absl::StatusOr<v1::FeatureCacheSummary> DropFeatureCache(
      const std::string& cache_key) override;
  absl::StatusOr<v1::Artifact> GetArtifact(int64_t artifact_id, int64_t offset,
                                           int64_t max_bytes) override;
  absl::Status PutArtifactPart(const v1::PutArtifactPartRequest& part) override;
  absl::Status PutCheckpoint(const v1::PutCheckpointRequest& part, absl::Time now) override;
  absl::StatusOr<v1::Checkpoint> GetCheckpoint(int64_t task_id, int32_t part) override;
  absl::StatusOr<absl::flat_hash_map<std::string, int64_t>> CountTasksByState(bool open_only)
      override;
  absl::StatusOr<v1::StudySpec> GetStudySpec(int64_t study_id) override;

  // The blob store in use (the options' or the database's own table).
  BlobStore& blobs() { return *blobs_; }

  // Closes the pooled connections idle for at least `idle_for`; they are
  // opened again when needed. Each holds buffers as large as the largest
  // message it carried (a 4 MiB feature chunk), here and in its server
  // process, so a pool that grew under load gives them back when calm.
  void CloseIdleConnections(absl::Duration idle_for);

  class Txn;
  class Autocommit;

 private:
  class TableBlobStore;  // blobs in this database (pg_store_features.cc)
  struct Conn;  // a libpqxx connection; kept out of this header
  // Runs `fn` in one transaction on a pooled connection, mapping libpqxx
  // exceptions to statuses; retries serialization failures and deadlocks, and
  // reconnects once after a lost connection. `fn` may run more than once: it
  // must reset whatever it fills.
  absl::Status Transact(absl::string_view op,
                        const std::function<absl::Status(Txn&)>& fn);
  // Transact with T = Txn; with T = Autocommit, `fn`'s statements each
  // commit by themselves: an error `fn` returns undoes nothing, and a
  // broken connection is not retried (a statement may have committed).
  template <typename T>
  absl::Status TransactAs(absl::string_view op, const std::function<absl::Status(T&)>& fn);
  explicit PgStore(PgStoreOptions options);
  std::shared_ptr<BlobStore> NewTableBlobStore();
  std::unique_ptr<Conn> Acquire();
  void Return(std::unique_ptr<Conn> conn);
  // Closes the idle pooled connections (after the server went away).
  void DropIdleConnections();
  static void BackOff(int attempt);

  const PgStoreOptions options_;
  std::shared_ptr<BlobStore> blobs_;
  // Whether each worker leasing here registered a GPU (a worker id keeps its
  // device for life).
  std::optional<bool> WorkerHasGpu(int64_t worker_id);
  absl::StatusOr<std::vector<Lease>> LeaseAlone(int64_t worker_id, bool has_gpu,
                                                absl::Time now, absl::Time deadline,
                                                int max_tasks);
  int64_t ScanFrom(int device, absl::Time now);
  void ScanFound(int device, int64_t from, int64_t first_found, absl::Time now);
  void RememberWorkerDevice(int64_t worker_id, bool has_gpu);
  void ForgetWorkerDevice(int64_t worker_id);
  absl::Mutex devices_mu_;
  absl::flat_hash_map<int64_t, bool> worker_gpu_ ABSL_GUARDED_BY(devices_mu_);
  // Where lease scans start (see ScanFrom), for CPU and for GPU workers
  // (they read different ready indexes): the lowest task id the last scan
  // found ready, and when a scan last started from the queue's head.
  absl::Mutex scan_mu_;
  int64_t scan_from_[2] ABSL_GUARDED_BY(scan_mu_) = {0, 0};
  absl::Time last_full_scan_[2] ABSL_GUARDED_BY(scan_mu_) = {absl::InfinitePast(),
                                                             absl::InfinitePast()};

  absl::Mutex mu_;
  std::vector<std::unique_ptr<Conn>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sslbench::server
