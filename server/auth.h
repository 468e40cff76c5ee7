#pragma once
// Who may call what: bearer tokens with roles, checked on every call when
// authentication is on.
//
//   worker     the worker API (RegisterWorker, LeaseTask, ...)
//   reader     reads: GetStudy, WatchStudy, ListResults, ListWorkers,
//              GetArtifact, Correlate
//   submitter  reads, SubmitStudy, CancelStudy of its own studies
//   admin      everything: tokens, cancelling any study
//
// A token is "sbt_" and 32 random hex digits; the store keeps its SHA-256
// only. Lookups are cached for `cache_ttl`, so a revoked token is refused
// within that time.

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "server/metrics.h"
#include "server/store/store.h"

namespace sslbench::server {

enum class Role { kWorker, kReader, kSubmitter, kAdmin };

// "worker", ... ; INVALID_ARGUMENT for anything else.
absl::StatusOr<Role> ParseRole(absl::string_view name);
const char* RoleName(Role role);

struct Caller {
  std::string name;  // the token's name; "" when authentication is off
  Role role = Role::kAdmin;
};

// A new token secret ("sbt_" + 128 random bits as hex) and its stored hash.
std::string NewTokenSecret();
std::string TokenHash(absl::string_view secret);

struct AuthOptions {
  bool required = false;
  absl::Duration cache_ttl = absl::Seconds(10);
};

class Authenticator {
 public:
  // `metrics` may be null.
  Authenticator(Store& store, const Clock& clock, AuthOptions options,
                CoordinatorMetrics* metrics);

  bool required() const { return options_.required; }

  // The caller behind `authorization` (the call's "authorization" metadata,
  // "Bearer TOKEN") if it may call `method` (the RPC's name):
  // UNAUTHENTICATED without a known valid token, PERMISSION_DENIED when the
  // role may not; counted in sslbench_auth_refused_total. With
  // authentication off, every call is an anonymous admin.
  absl::StatusOr<Caller> Authorize(absl::string_view authorization, absl::string_view method);

 private:
  absl::StatusOr<Caller> Identify(absl::string_view authorization);
  absl::Status Refuse(absl::Status status);

  Store& store_;
  const Clock& clock_;
  const AuthOptions options_;
  CoordinatorMetrics* metrics_;
  struct Cached {
    Caller caller;
    absl::Time expires;
  };
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Cached> cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sslbench::server
