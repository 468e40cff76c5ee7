#include "server/lease_policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sslbench::server {

absl::Duration RetryBackoff(const LeasePolicy& policy, int attempts) {
  absl::Duration backoff = policy.backoff_base;
  for (int i = 1; i < attempts && backoff < policy.backoff_max; ++i) backoff *= 2;
  return std::min(backoff, policy.backoff_max);
}

Release DecideRelease(const LeasePolicy& policy, int attempts, int max_attempts,
                      bool retryable, const std::string& error, absl::Time now) {
  Release release;
  if (!retryable) {
    release.fail = true;
    release.error = error;
  } else if (attempts >= max_attempts) {
    release.fail = true;
    release.error = absl::StrCat("gave up after ", attempts, " attempts; last error: ", error);
  } else {
    release.not_before = now + RetryBackoff(policy, attempts);
    release.error = error;
  }
  return release;
}

}  // namespace sslbench::server
