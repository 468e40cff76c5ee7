#pragma once
// Time source, injected so that leases and expiry are testable without sleeps.

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sslbench {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Waits until `n` is notified or `d` has passed on this clock; true when
  // notified. Every timed wait of a component that takes a Clock goes
  // through here, so a fake clock drives them.
  virtual bool WaitForNotification(absl::Notification& n, absl::Duration d) const {
    return n.WaitForNotificationWithTimeout(d);
  }
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace sslbench
