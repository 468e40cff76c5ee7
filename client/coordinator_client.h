#pragma once
// The CLI's side of the StudyService: one channel to a coordinator, unary
// calls with deadlines, and a watcher that draws progress bars.

#include <cstdio>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/format.h"
#include "grpcpp/grpcpp.h"
#include "sslbench/v1/client_api.grpc.pb.h"

namespace sslbench::client {

inline constexpr char kDefaultCoordinator[] = "localhost:7070";

// The coordinator to talk to: `flag_value` if not empty, else `env_value`
// (SSLBENCH_COORDINATOR) if set and not empty, else the first line of
// `addr_file` (written by `sslbench up`) if it exists, else localhost:7070.
std::string ResolveCoordinatorAddress(const std::string& flag_value,
                                      const char* env_value,
                                      const std::string& addr_file);

// The access token: read from `token_file` when given (NOT_FOUND /
// INVALID_ARGUMENT when unreadable or empty), else `env_value`
// (SSLBENCH_TOKEN), else the contents of `default_file` (the local stack's
// admin token) when it exists, else "" (no token).
absl::StatusOr<std::string> ResolveToken(const std::string& token_file, const char* env_value,
                                         const std::string& default_file);

// "sslbench: CODE: message"; for UNAVAILABLE, adds the address and how to
// start a local stack.
std::string FormatError(const absl::Status& status, const std::string& address);

// Thread-compatible; Watcher::Cancel may be called from any thread.
class CoordinatorClient {
 public:
  // `token`: the access token sent with every call ("" for none).
  // `credentials`: TLS (see common/tls.h); null for plaintext.
  explicit CoordinatorClient(const std::string& address,
                             absl::Duration rpc_timeout = absl::Seconds(30),
                             std::string token = "",
                             std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

  const std::string& address() const { return address_; }
  v1::StudyService::Stub* stub() { return stub_.get(); }
  // Sets the deadline (rpc_timeout from now) and the access token.
  void Prepare(grpc::ClientContext& context) const;
  // Only the access token (streams set their own deadlines).
  void Authorize(grpc::ClientContext& context) const;

  absl::StatusOr<v1::CreateTokenResponse> CreateToken(const std::string& name,
                                                      const std::string& role);
  absl::StatusOr<v1::ListTokensResponse> ListTokens();
  absl::StatusOr<v1::TokenInfo> RevokeToken(int64_t token_id);
  absl::StatusOr<v1::ListFeatureCachesResponse> ListFeatureCaches(int64_t study_id);
  absl::StatusOr<v1::FeatureCacheSummary> DropFeatureCache(const std::string& cache_key);

  // Submits under an idempotency key: `request_id`, or a random one when it
  // is empty (written to `*used_request_id` when given). A call that times
  // out or finds no coordinator is sent again with the same key, up to
  // `submit_attempts` times with a backoff doubling from `submit_backoff`:
  // a study the coordinator committed after the client gave up is then
  // returned (existing = true), never created twice.
  absl::StatusOr<v1::SubmitStudyResponse> SubmitStudy(const v1::StudySpec& spec,
                                                      const std::string& request_id,
                                                      std::string* used_request_id = nullptr);
  int submit_attempts = 4;
  absl::Duration submit_backoff = absl::Seconds(2);
  absl::StatusOr<v1::StudyStatus> GetStudy(int64_t study_id, bool include_spec = false);
  absl::StatusOr<v1::StudyStatus> CancelStudy(int64_t study_id);
  absl::StatusOr<v1::ListResultsResponse> ListResults(int64_t study_id);
  absl::StatusOr<v1::ListWorkersResponse> ListWorkers();
  // NOT_FOUND: no such artefact.
  absl::StatusOr<v1::Artifact> GetArtifact(int64_t artifact_id);

 private:
  std::string address_;
  absl::Duration rpc_timeout_;
  std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StudyService::Stub> stub_;
};

// Follows a study through WatchStudy until it ends, drawing one progress bar
// per task kind to `out`: redrawn in place when `tty`, else a plain line set
// whenever the counts change (and at least every 30 s). Survives coordinator
// restarts (UNAVAILABLE) for up to a minute.
class StudyWatcher {
 public:
  StudyWatcher(CoordinatorClient* client, int64_t study_id, std::FILE* out, bool tty)
      : client_(client), study_id_(study_id), out_(out), tty_(tty) {}

  // The final status (state != RUNNING). CANCELLED if Cancel() was called.
  absl::StatusOr<v1::StudyStatus> Run();
  // Thread-safe: ends Run() promptly.
  void Cancel();

 private:
  void Draw(const v1::StudyStatus& status, bool final);

  CoordinatorClient* client_;
  int64_t study_id_;
  std::FILE* out_;
  bool tty_;
  ProgressBars bars_;
  int drawn_lines_ = 0;
  std::string last_counts_;
  absl::Time last_print_ = absl::InfinitePast();

  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// Exit status of `sslbench watch`: 0 SUCCEEDED, 1 FAILED, 2 CANCELLED.
int ExitCodeForState(v1::StudyState state);

// StudyService.Correlate. Bootstrap intervals take time on large studies, so
// the call has its own deadline, `timeout` from now. NOT_FOUND: no such
// study; INVALID_ARGUMENT: unknown metric; FAILED_PRECONDITION: fewer than 3
// models have results.
absl::StatusOr<v1::CorrelateResponse> Correlate(CoordinatorClient& client,
                                                const v1::CorrelateRequest& request,
                                                absl::Duration timeout = absl::Minutes(5));

}  // namespace sslbench::client
