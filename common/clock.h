#pragma once
// Time source, injected so that leases and expiry are testable without sleeps.

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sslbench {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace sslbench
