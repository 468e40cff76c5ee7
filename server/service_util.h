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
#include "server/auth.h"
#include "server/metrics.h"
#include "server/store/call_deadline.h"

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
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    default: return "OTHER";
  }
}

// The call's "authorization" metadata ("" when absent).
inline std::string AuthorizationOf(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

// `fn` returns absl::Status or absl::StatusOr<Response>; it takes the
// authorised Caller, or nothing. `method` is the RPC's name, as the
// Authenticator knows it.
template <typename Response, typename Fn>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context,
                                   absl::string_view method, ThreadPool& pool,
                                   CoordinatorMetrics* metrics, Authenticator& auth,
                                   Response* response, Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const auto start = std::chrono::steady_clock::now();
  const bool queued = pool.TrySchedule([=, &auth, authorization = AuthorizationOf(*context)]() mutable {
    grpc::Status status;
    absl::StatusOr<Caller> caller;
    // What is left of the caller's deadline bounds the database work too.
    const auto deadline = context->deadline();
    CallDeadline scope(deadline == std::chrono::system_clock::time_point::max()
                           ? absl::InfiniteFuture()
                           : absl::FromChrono(deadline));
    if (context->IsCancelled()) {
      status = grpc::Status(grpc::CANCELLED, "cancelled before it ran");
    } else if (caller = auth.Authorize(authorization, method); !caller.ok()) {
      status = ToGrpcStatus(caller.status());
    } else {
      auto result = [&] {
        if constexpr (std::is_invocable_v<Fn&, const Caller&>) {
          return fn(*caller);
        } else {
          return fn();
        }
      }();
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
  if (!queued) {
    // Bounded: a coordinator that cannot keep up says so at once, and the
    // caller backs off, instead of queueing calls past their deadlines.
    if (metrics) metrics->ObserveRpc(method, "RESOURCE_EXHAUSTED", 0);
    reactor->Finish(grpc::Status(grpc::RESOURCE_EXHAUSTED,
                                 "the coordinator is overloaded (its call queue is full); retry "
                                 "with backoff"));
  }
  return reactor;
}

}  // namespace sslbench::server
