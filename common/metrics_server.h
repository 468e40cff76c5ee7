#pragma once
// Serves the Prometheus text exposition of a registry at GET /metrics.
//
// prometheus-cpp's own exposer (civetweb) starts its threads with a fixed
// 100 KiB stack, which fails in processes that also load LibTorch/OpenBLAS
// (their thread-local storage leaves too little). This server runs on one
// ordinary std::thread instead and is used by every sslbench process. It
// multiplexes up to 32 connections, so a stalled client cannot hold up a
// health check or a scrape.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/registry.h"

namespace sslbench {

class MetricsServer {
 public:
  // Listens on `address` ("127.0.0.1:0", "0.0.0.0:9464"; port 0 picks a free
  // port). INVALID_ARGUMENT for a malformed address, UNAVAILABLE when the port
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsServer();  // stops serving

  int port() const { return port_; }

  // Answers GET `path` with 200 and the check's text when it passes, 503
  // Service Unavailable when it does not (health probes: /readyz, /livez).
  // Replaces an earlier check of the same path; /healthz answers 200 "ok"
  // unless a check replaces it. Safe while serving.
  using Check = std::function<std::pair<bool, std::string>()>;
  void SetCheck(const std::string& path, Check check);

 private:
  MetricsServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry);
  void Serve();
  std::string Respond(const std::string& request);

  int fd_;
  int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<bool> stopping_{false};
  absl::Mutex checks_mu_;
  std::map<std::string, Check> checks_ ABSL_GUARDED_BY(checks_mu_);
  std::thread thread_;
};

}  // namespace sslbench
