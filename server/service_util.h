#pragma once
// The one pattern every unary RPC adapter follows: hand the domain call to
// the executor (never block a reaction), convert its status once, record the
// latency metric, finish the reactor.

#include <chrono>
#include "absl/strings/string_view.h"
#include <utility>

#include "absl/status/statusor.h"
#include "common/grpc_status.h"
#include "common/thread_pool.h"
#include "grpcpp/grpcpp.h"
#include "server/metrics.h"

namespace sslbench::server {

inline const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::INTERNAL: return "INTERNAL";
    default: return "OTHER";
  }
}

// `fn` returns absl::Status or absl::StatusOr<Response>.
template <typename Response, typename Fn>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context,
                                   absl::string_view method, ThreadPool& pool,
                                   CoordinatorMetrics* metrics, Response* response,
                                   Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const auto start = std::chrono::steady_clock::now();
  pool.Schedule([=]() mutable {
    grpc::Status status;
    if (context->IsCancelled()) {
      status = grpc::Status(grpc::CANCELLED, "cancelled before it ran");
    } else {
      auto result = fn();
      if constexpr (std::is_same_v<decltype(result), absl::Status>) {
        status = ToGrpcStatus(result);
      } else {
        if (result.ok()) *response = std::move(result).value();
        status = ToGrpcStatus(result.status());
      }
    }
    if (metrics) {
      metrics->ObserveRpc(method, CodeName(status.error_code()),
                          std::chrono::duration<double>(
                              std::chrono::steady_clock::now() - start).count());
    }
    reactor->Finish(status);
  });
  return reactor;
}

}  // namespace sslbench::server
