#pragma once
// The deadline of the call the current thread is serving. The RPC layer
// sets it for the duration of a call; the store turns what is left of it
// into PostgreSQL's statement_timeout, so that work for a caller who has
// given up stops in the database too (a lock wait included).

#include "absl/time/time.h"

namespace sslbench::server {

class CallDeadline {
 public:
  // Sets this thread's deadline until destruction (scopes nest).
  explicit CallDeadline(absl::Time deadline) : previous_(current_) { current_ = deadline; }
  ~CallDeadline() { current_ = previous_; }
  CallDeadline(const CallDeadline&) = delete;
  CallDeadline& operator=(const CallDeadline&) = delete;

  // absl::InfiniteFuture() outside any call, or for a call without one.
  static absl::Time Current() { return current_; }

 private:
  absl::Time previous_;
  static thread_local inline absl::Time current_ = absl::InfiniteFuture();
};

}  // namespace sslbench::server
