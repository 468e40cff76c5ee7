#pragma once
// The coordinator's Prometheus metrics, built once and handed to components.

#include <memory>
#include "absl/strings/string_view.h"

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace sslbench::server {

class CoordinatorMetrics {
 public:
  explicit CoordinatorMetrics(std::shared_ptr<prometheus::Registry> registry);

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  void ObserveRpc(absl::string_view method, absl::string_view code, double seconds);
  void ObserveDb(absl::string_view op, double seconds, bool ok);
  void SetTasks(absl::string_view state, double count);
  void SetWorkersAlive(double count);
  void LeaseGranted() { leases_granted_->Increment(); }
  void LeaseExpired() { leases_expired_->Increment(); }
  void StudySubmitted() { studies_submitted_->Increment(); }
  // A call refused by authentication: `code` is "UNAUTHENTICATED" or
  // "PERMISSION_DENIED".
  void AuthRefused(absl::string_view code);
  // A task attempt ended: "succeeded", "retried" (failed, queued again),
  // "failed" (for good) or "preempted" (handed back by a stopping worker).
  void TaskOutcome(absl::string_view outcome);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* rpc_duration_;
  prometheus::Family<prometheus::Histogram>* db_duration_;
  prometheus::Family<prometheus::Counter>* db_errors_;
  prometheus::Family<prometheus::Gauge>* tasks_;
  prometheus::Gauge* workers_alive_;
  prometheus::Counter* leases_granted_;
  prometheus::Counter* leases_expired_;
  prometheus::Counter* studies_submitted_;
  prometheus::Family<prometheus::Counter>* auth_refused_;
  prometheus::Family<prometheus::Counter>* task_outcomes_;
};

}  // namespace sslbench::server
