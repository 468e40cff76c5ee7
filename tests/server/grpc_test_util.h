#pragma once
// A coordinator on a loopback port (0: any free one) over a fresh database of
// the test PostgreSQL, for tests of the gRPC surface.

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/coordinator_server.h"
#include "tests/testing/test_postgres.h"

namespace sslbench::testing {

// `customize` may change the options (authentication, limits) first.
inline absl::StatusOr<std::unique_ptr<server::CoordinatorServer>> StartTestCoordinator(
    const std::function<void(server::CoordinatorServerOptions&)>& customize = nullptr) {
  absl::StatusOr<std::string> db = FreshDatabase();
  if (!db.ok()) return db.status();
  server::CoordinatorServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.database = *db;
  if (customize) customize(options);
  return server::CoordinatorServer::Start(options);
}

// An insecure channel to that coordinator.
inline std::shared_ptr<grpc::Channel> ChannelTo(const server::CoordinatorServer& server) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()),
                             grpc::InsecureChannelCredentials());
}

}  // namespace sslbench::testing
