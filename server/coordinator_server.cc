#include "server/coordinator_server.h"


#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/malloc_tuning.h"
#include "common/status_macros.h"

namespace sslbench::server {
namespace {

// Registers the tokens of a bootstrap file ("ROLE NAME TOKEN" per line).
absl::Status LoadBootstrapTokens(const std::string& path, Store& store, const Clock& clock) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("bootstrap token file ", path, " not found"));
  }
  // Group-readable is fine (a Kubernetes Secret mounted with fsGroup);
  // readable by everyone is not.
  if ((st.st_mode & 007) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "bootstrap token file ", path, " is readable by others; chmod o-rwx it"));
  }
  std::ifstream in(path);
  std::string line;
  int line_number = 0, loaded = 0;
  while (std::getline(in, line)) {
    ++line_number;
    const std::vector<std::string> fields =
        absl::StrSplit(line.substr(0, line.find('#')), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() != 3 || fields[2].size() < 20) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", line_number, ": expected ROLE NAME TOKEN (a token of at least 20 characters)"));
    }
    absl::StatusOr<Role> role = ParseRole(fields[0]);
    if (!role.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": ",
                                                     role.status().message()));
    }
    RETURN_IF_ERROR(store.EnsureToken(fields[1], RoleName(*role), TokenHash(fields[2]), clock.Now()));
    ++loaded;
  }
  LogInfo("coordinator", loaded, " bootstrap tokens from ", path);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    CoordinatorServerOptions options) {
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->options_ = std::move(options);
  const Clock& clock = s->options_.clock ? *s->options_.clock : s->real_clock_;
  s->registry_ = std::make_shared<prometheus::Registry>();
  s->metrics_registry_ = std::make_unique<CoordinatorMetrics>(s->registry_);
  CoordinatorMetrics* metrics = s->metrics_registry_.get();

  PgStoreOptions store_options;
  store_options.conninfo = s->options_.database;
  store_options.max_connections = s->options_.db_connections;
  store_options.observer = [metrics](absl::string_view op, double seconds, bool ok) {
    metrics->ObserveDb(op, seconds, ok);
  };
  const std::string& blobs = s->options_.blob_store;
  if (blobs.rfind("file://", 0) == 0) {
    ASSIGN_OR_RETURN(store_options.blobs, NewFileBlobStore(blobs.substr(7)));
  } else if (!blobs.empty() && blobs != "postgres") {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob store \"", blobs, "\" is not postgres or file:///PATH"));
  }
  ASSIGN_OR_RETURN(s->store_, PgStore::Create(std::move(store_options)));
  LogInfo("coordinator", "feature chunk bytes go to ", s->store_->blobs().Describe());
  LeasePolicy policy = s->options_.policy;
  if (policy.outage_bridge_after == absl::ZeroDuration()) {
    // The reaper ticks every reap interval; several missed ticks mean that
    // no coordinator could reach the database.
    policy.outage_bridge_after = std::max(absl::Seconds(10), 5 * s->options_.reap_interval);
  }
  s->coordinator_ = std::make_unique<Coordinator>(*s->store_, clock, policy, metrics,
                                                  s->options_.plan_limits);
  s->auth_ = std::make_unique<Authenticator>(*s->store_, clock, s->options_.auth, metrics);
  if (!s->options_.bootstrap_tokens_file.empty()) {
    RETURN_IF_ERROR(LoadBootstrapTokens(s->options_.bootstrap_tokens_file, *s->store_, clock));
  }
  if (!s->options_.auth.required) {
    LogWarning("coordinator", "authentication is off: anyone who reaches this port can "
               "submit, cancel and act as a worker (--auth=required turns it on)");
  }
  s->pool_ = std::make_unique<ThreadPool>(s->options_.executor_threads,
                                          static_cast<size_t>(s->options_.max_queued_calls));
  s->study_service_ =
      std::make_unique<StudyServiceImpl>(*s->coordinator_, *s->pool_, metrics, *s->auth_);
  s->worker_service_ =
      std::make_unique<WorkerServiceImpl>(*s->coordinator_, *s->pool_, metrics, *s->auth_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   ServerCredentials(s->options_.tls));
  builder.AddListeningPort(s->options_.listen, credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(s->study_service_.get());
  builder.RegisterService(s->worker_service_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", s->options_.listen));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  if (!s->options_.metrics_listen.empty()) {
    ASSIGN_OR_RETURN(s->metrics_,
                     MetricsServer::Start(s->options_.metrics_listen, s->registry_));
  }
  s->reaper_ = std::thread([raw = s.get()] { raw->ReapLoop(); });
  LogInfo("coordinator", "serving on port ", s->port_,
          s->options_.tls.cert.empty() ? " (plaintext)"
          : s->options_.tls.client_ca.empty() ? " (TLS)" : " (mutual TLS)",
          s->metrics_ ? absl::StrCat(", metrics on port ", s->metrics_->port()) : "");
  return s;
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

void CoordinatorServer::ReapLoop() {
  absl::Time last_trim = absl::Now();
  // Task gauges: the queued and leased counts every gauge_interval, the
  // finished ones (a scan of every task ever run) once a minute.
  absl::Time last_gauges = absl::InfinitePast();
  absl::Time last_finished_gauges = absl::InfinitePast();
  while (!stop_.WaitForNotificationWithTimeout(options_.reap_interval)) {
    auto reaped = coordinator_->ReapExpiredLeases();
    if (!reaped.ok()) LogWarning("coordinator", "lease reaper: ", reaped.status().ToString());
    if (const absl::Time now = absl::Now(); now - last_gauges >= options_.gauge_interval) {
      const bool finished_too = now - last_finished_gauges >= absl::Minutes(1);
      const absl::Status gauges = coordinator_->RefreshGauges(finished_too);
      if (!gauges.ok()) LogWarning("coordinator", "metrics refresh: ", gauges.ToString());
      last_gauges = now;
      if (finished_too) last_finished_gauges = now;
    }
    // Feature chunks and checkpoints pass through as multi-megabyte
    // messages on many threads and database connections: connections idle
    // for 30 s are closed (their buffers, and their server processes, go),
    // and glibc hands back what the threads freed. A coordinator idle after
    // a busy spell does not hold its peak memory.
    if (absl::Now() - last_trim >= absl::Seconds(10)) {
      store_->CloseIdleConnections(absl::Seconds(30));
      ReleaseFreeMemory();
      last_trim = absl::Now();
    }
  }
}

void CoordinatorServer::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
  }
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (reaper_.joinable()) reaper_.join();
  pool_.reset();  // runs what is queued, then joins
  metrics_.reset();
}

void CoordinatorServer::Wait() { stop_.WaitForNotification(); }

}  // namespace sslbench::server
