#include "server/auth.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/random.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace sslbench::server {
namespace {

// The least role each method needs; admin passes everywhere.
struct MethodRule {
  const char* method;
  Role role;
};
constexpr MethodRule kRules[] = {
    // Worker API.
    {"RegisterWorker", Role::kWorker},
    {"LeaseTask", Role::kWorker},
    {"LeaseTasks", Role::kWorker},
    {"CompleteTasks", Role::kWorker},
    {"Heartbeat", Role::kWorker},
    {"CompleteTask", Role::kWorker},
    {"FailTask", Role::kWorker},
    {"PutFeatureChunk", Role::kWorker},
    {"PutArtifactPart", Role::kWorker},
    {"GetFeatureChunk", Role::kWorker},
    {"GetFeatureCache", Role::kWorker},
    {"PutCheckpoint", Role::kWorker},
    {"GetCheckpoint", Role::kWorker},
    // Reads.
    {"GetStudy", Role::kReader},
    {"WatchStudy", Role::kReader},
    {"ListResults", Role::kReader},
    {"ListWorkers", Role::kReader},
    {"GetArtifact", Role::kReader},
    {"Correlate", Role::kReader},
    {"ListFeatureCaches", Role::kReader},
    // Writes.
    {"SubmitStudy", Role::kSubmitter},
    {"CancelStudy", Role::kSubmitter},  // own studies; the coordinator checks
    {"CreateToken", Role::kAdmin},
    {"ListTokens", Role::kAdmin},
    {"RevokeToken", Role::kAdmin},
    {"DropFeatureCache", Role::kAdmin},
};

bool Allows(Role have, Role need) {
  if (have == Role::kAdmin) return true;
  if (need == Role::kWorker || have == Role::kWorker) return have == need;
  // reader < submitter
  return need == Role::kReader || have == need;
}

}  // namespace

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  if (name == "worker") return Role::kWorker;
  if (name == "reader") return Role::kReader;
  if (name == "submitter") return Role::kSubmitter;
  if (name == "admin") return Role::kAdmin;
  return absl::InvalidArgumentError(absl::StrCat(
      "role \"", name, "\" is not worker, reader, submitter or admin"));
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kWorker: return "worker";
    case Role::kReader: return "reader";
    case Role::kSubmitter: return "submitter";
    case Role::kAdmin: return "admin";
  }
  return "?";
}

std::string NewTokenSecret() { return "sbt_" + RandomHex(16); }

std::string TokenHash(absl::string_view secret) {
  return Sha256Hex(std::string_view(secret.data(), secret.size()));
}

Authenticator::Authenticator(Store& store, const Clock& clock, AuthOptions options,
                             CoordinatorMetrics* metrics)
    : store_(store), clock_(clock), options_(options), metrics_(metrics) {}

absl::Status Authenticator::Refuse(absl::Status status) {
  if (metrics_ != nullptr) metrics_->AuthRefused(absl::StatusCodeToString(status.code()));
  return status;
}

absl::StatusOr<Caller> Authenticator::Identify(absl::string_view authorization) {
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWith(authorization, kBearer)) {
    return Refuse(absl::UnauthenticatedError(
        "this coordinator requires an access token (authorization: Bearer TOKEN); "
        "give one with --token_file or SSLBENCH_TOKEN"));
  }
  const std::string hash = TokenHash(authorization.substr(kBearer.size()));
  const absl::Time now = clock_.Now();
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(hash);
    if (it != cache_.end() && it->second.expires > now) return it->second.caller;
  }
  ASSIGN_OR_RETURN(std::optional<v1::TokenInfo> token, store_.FindToken(hash));
  if (!token) {
    return Refuse(absl::UnauthenticatedError("the access token is unknown or revoked"));
  }
  ASSIGN_OR_RETURN(Role role, ParseRole(token->role()));
  Caller caller{token->name(), role};
  if (options_.cache_ttl > absl::ZeroDuration()) {
    absl::MutexLock lock(&mu_);
    if (cache_.size() > 10000) cache_.clear();  // bounded, whatever callers send
    cache_[hash] = Cached{caller, now + options_.cache_ttl};
  }
  return caller;
}

absl::StatusOr<Caller> Authenticator::Authorize(absl::string_view authorization,
                                                absl::string_view method) {
  if (!options_.required) return Caller{"", Role::kAdmin};
  ASSIGN_OR_RETURN(Caller caller, Identify(authorization));
  for (const MethodRule& rule : kRules) {
    if (method != rule.method) continue;
    if (Allows(caller.role, rule.role)) return caller;
    return Refuse(absl::PermissionDeniedError(
        absl::StrCat("token \"", caller.name, "\" (", RoleName(caller.role), ") may not call ",
                     method, "; it needs ", rule.role == Role::kAdmin ? "an " : "a ", RoleName(rule.role), " token")));
  }
  return Refuse(absl::PermissionDeniedError(absl::StrCat("unknown method ", method)));
}

}  // namespace sslbench::server
