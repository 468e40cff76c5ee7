#include "server/metrics.h"

#include <string>

namespace sslbench::server {
namespace {

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* kBuckets = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *kBuckets;
}

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)) {
  rpc_duration_ = &prometheus::BuildHistogram()
                       .Name("sslbench_rpc_duration_seconds")
                       .Help("Coordinator RPC latency by method and status code")
                       .Register(*registry_);
  db_duration_ = &prometheus::BuildHistogram()
                      .Name("sslbench_db_duration_seconds")
                      .Help("Database transaction latency by operation")
                      .Register(*registry_);
  db_errors_ = &prometheus::BuildCounter()
                    .Name("sslbench_db_errors_total")
                    .Help("Database transactions that failed, by operation")
                    .Register(*registry_);
  tasks_ = &prometheus::BuildGauge()
                .Name("sslbench_tasks")
                .Help("Tasks by state (the finished states refreshed once a minute)")
                .Register(*registry_);
  workers_alive_ = &prometheus::BuildGauge()
                        .Name("sslbench_workers_alive")
                        .Help("Workers seen within the liveness window")
                        .Register(*registry_)
                        .Add({});
  leases_granted_ = &prometheus::BuildCounter()
                         .Name("sslbench_leases_granted_total")
                         .Help("Task leases granted")
                         .Register(*registry_)
                         .Add({});
  leases_expired_ = &prometheus::BuildCounter()
                         .Name("sslbench_leases_expired_total")
                         .Help("Task leases that expired without a heartbeat")
                         .Register(*registry_)
                         .Add({});
  studies_submitted_ = &prometheus::BuildCounter()
                            .Name("sslbench_studies_submitted_total")
                            .Help("Studies accepted")
                            .Register(*registry_)
                            .Add({});
  auth_refused_ = &prometheus::BuildCounter()
                       .Name("sslbench_auth_refused_total")
                       .Help("Calls refused for a missing or unknown token (UNAUTHENTICATED) "
                             "or a role that may not make them (PERMISSION_DENIED)")
                       .Register(*registry_);
  task_outcomes_ = &prometheus::BuildCounter()
                        .Name("sslbench_task_attempts_total")
                        .Help("Task attempts that ended, by outcome: succeeded, retried (failed, "
                              "queued again), failed (for good), preempted (handed back)")
                        .Register(*registry_);
  // Exported from the start, so alerts see 0 rather than no series.
  for (const char* outcome : {"succeeded", "retried", "failed", "preempted"}) {
    task_outcomes_->Add({{"outcome", outcome}});
  }
  for (const char* code : {"UNAUTHENTICATED", "PERMISSION_DENIED"}) {
    auth_refused_->Add({{"code", code}});
  }
  for (const char* op : {"create_study", "lease_task", "heartbeat", "put_feature_chunk",
                         "complete_tasks", "release_task", "find_expired_leases",
                         "get_feature_chunk", "get_study", "list_results"}) {
    db_errors_->Add({{"op", op}});
  }
}

void CoordinatorMetrics::AuthRefused(absl::string_view code) {
  auth_refused_->Add({{"code", std::string(code)}}).Increment();
}

void CoordinatorMetrics::TaskOutcome(absl::string_view outcome) {
  task_outcomes_->Add({{"outcome", std::string(outcome)}}).Increment();
}

void CoordinatorMetrics::ObserveRpc(absl::string_view method, absl::string_view code,
                                    double seconds) {
  rpc_duration_
      ->Add({{"method", std::string(method)}, {"code", std::string(code)}},
            LatencyBuckets())
      .Observe(seconds);
}

void CoordinatorMetrics::ObserveDb(absl::string_view op, double seconds, bool ok) {
  db_duration_->Add({{"op", std::string(op)}}, LatencyBuckets()).Observe(seconds);
  if (!ok) db_errors_->Add({{"op", std::string(op)}}).Increment();
}

void CoordinatorMetrics::SetTasks(absl::string_view state, double count) {
  tasks_->Add({{"state", std::string(state)}}).Set(count);
}

void CoordinatorMetrics::SetWorkersAlive(double count) { workers_alive_->Set(count); }

}  // namespace sslbench::server
