#pragma once
// A clock tests move by hand.

#include "absl/synchronization/mutex.h"
#include "common/clock.h"

namespace sslbench::testing {

class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000)) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

  // Waits on fake time: returns when `n` is notified (true) or Advance()
  // has moved the clock past now + d (false). `n` is looked at every
  // millisecond of real time, as a Notification cannot wake this mutex.
  bool WaitForNotification(absl::Notification& n, absl::Duration d) const override {
    absl::MutexLock lock(&mu_);
    const absl::Time deadline = now_ + d;
    ++waiters_;
    auto moved = [this, deadline]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return now_ >= deadline; };
    while (!n.HasBeenNotified() && now_ < deadline) {
      mu_.AwaitWithTimeout(absl::Condition(&moved), absl::Milliseconds(1));
    }
    --waiters_;
    return n.HasBeenNotified();
  }

  // Blocks until at least `count` threads wait in WaitForNotification: a
  // test advances the clock once the component under test is waiting.
  void AwaitWaiters(int count) const {
    absl::MutexLock lock(&mu_);
    auto enough = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return waiters_ >= count; };
    mu_.Await(absl::Condition(&enough));
  }

  int waiters() const {
    absl::MutexLock lock(&mu_);
    return waiters_;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  mutable int waiters_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sslbench::testing
