#pragma once
// The whole coordinator process minus main(): store, domain, gRPC services
// (health and reflection on), the metrics endpoint and the lease reaper.
// Tests start it in-process on port 0.

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/metrics_server.h"
#include "common/thread_pool.h"
#include "grpcpp/grpcpp.h"
#include "server/coordinator.h"
#include "server/metrics.h"
#include "server/store/pg_store.h"
#include "server/study_service.h"
#include "common/tls.h"
#include "server/worker_service.h"

namespace sslbench::server {

struct CoordinatorServerOptions {
  std::string listen = "0.0.0.0:7070";       // port 0 picks a free port
  std::string database;                      // libpq connection string
  std::string metrics_listen = "0.0.0.0:9464";  // empty: no metrics endpoint
  LeasePolicy policy;
  PlanLimits plan_limits;
  // Authentication (see server/auth.h). Off: anyone who reaches the port may
  // do anything (a warning is logged).
  AuthOptions auth;
  // Tokens registered at start: lines "ROLE NAME TOKEN" ('#' comments), e.g.
  // the first admin token from a secret. Must not be readable by others.
  std::string bootstrap_tokens_file;
  // TLS on the gRPC port (empty cert: plaintext).
  TlsServerFiles tls;
  int executor_threads = 8;
  // Calls waiting for an executor thread beyond this are refused with
  // RESOURCE_EXHAUSTED (callers back off).
  int max_queued_calls = 1000;
  int db_connections = 8;
  // "postgres" or "file:///PATH" (see BlobStore).
  std::string blob_store = "postgres";
  absl::Duration reap_interval = absl::Seconds(2);
  // How often the task gauges are counted in the database (a count walks
  // every queued task; Prometheus scrapes every 15-30 s anyway).
  absl::Duration gauge_interval = absl::Seconds(15);
  const Clock* clock = nullptr;              // default: the real clock
};

class CoordinatorServer {
 public:
  // UNAVAILABLE when the database is unreachable or the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      CoordinatorServerOptions options);
  ~CoordinatorServer();  // Shutdown()

  int port() const { return port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  Coordinator& coordinator() { return *coordinator_; }

  // Stops accepting calls, lets running ones finish (up to `grace`), stops
  // the reaper and the metrics endpoint. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(10));
  // Blocks until Shutdown() has been called.
  void Wait();

 private:
  CoordinatorServer() = default;
  void ReapLoop();

  CoordinatorServerOptions options_;
  RealClock real_clock_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<CoordinatorMetrics> metrics_registry_;
  std::unique_ptr<PgStore> store_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<StudyServiceImpl> study_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsServer> metrics_;
  absl::Notification stop_;
  std::thread reaper_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace sslbench::server
