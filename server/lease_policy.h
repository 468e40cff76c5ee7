#pragma once
// The lease state machine's decisions, as pure functions of the clock:
// when a lease ends, when a failed attempt may run again, when to give up.

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "server/store/store.h"

namespace sslbench::server {

struct LeasePolicy {
  absl::Duration lease_duration = absl::Seconds(30);
  absl::Duration heartbeat_interval = absl::Seconds(5);
  absl::Duration backoff_base = absl::Seconds(1);
  absl::Duration backoff_max = absl::Minutes(2);
  // A worker unseen for this long is shown as dead.
  absl::Duration worker_alive_window = absl::Seconds(60);
  // When no coordinator reached the database for longer than this (an
  // outage), leases are extended by the outage before any expires. Zero:
  // never (the reaper must then run without pause). CoordinatorServer sets
  // it from its reap interval.
  absl::Duration outage_bridge_after = absl::ZeroDuration();
};

// Backoff before attempt `attempts + 1`: base * 2^(attempts - 1), capped.
absl::Duration RetryBackoff(const LeasePolicy& policy, int attempts);

// What happens to a task whose attempt `attempts` (1-based, of max_attempts)
// ended without success: requeued after the backoff, or FAILED when the
// failure is permanent or the attempts are used up.
Release DecideRelease(const LeasePolicy& policy, int attempts, int max_attempts,
                      bool retryable, const std::string& error, absl::Time now);

}  // namespace sslbench::server
