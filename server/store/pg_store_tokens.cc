// PgStore: access tokens (see Store::CreateToken).

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/store/pg_internal.h"
#include "server/store/pg_store.h"

namespace sslbench::server {
namespace {

constexpr char kColumns[] = "id, name, role, created_us, created_by, revoked_us";

v1::TokenInfo ToInfo(const pqxx::row& row) {
  v1::TokenInfo info;
  info.set_token_id(row[0].as<int64_t>());
  info.set_name(row[1].as<std::string>());
  info.set_role(row[2].as<std::string>());
  info.set_created_unix(static_cast<double>(row[3].as<int64_t>()) / 1e6);
  info.set_created_by(row[4].as<std::string>());
  info.set_revoked_unix(static_cast<double>(row[5].as<int64_t>()) / 1e6);
  return info;
}

}  // namespace

absl::StatusOr<v1::TokenInfo> PgStore::CreateToken(const std::string& name,
                                                   const std::string& role,
                                                   const std::string& secret_hash,
                                                   const std::string& created_by,
                                                   absl::Time now) {
  v1::TokenInfo info;
  RETURN_IF_ERROR(Transact("create_token", [&](Txn& t) -> absl::Status {
    const auto r = t.work.exec_params(
        absl::StrCat("INSERT INTO access_tokens (name, role, secret_hash, created_us, created_by) "
                     "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (secret_hash) DO NOTHING "
                     "RETURNING ", kColumns),
        name, role, secret_hash, absl::ToUnixMicros(now), created_by);
    if (r.empty()) return absl::AlreadyExistsError("a token with this secret exists");
    info = ToInfo(r[0]);
    return absl::OkStatus();
  }));
  return info;
}

absl::Status PgStore::EnsureToken(const std::string& name, const std::string& role,
                                  const std::string& secret_hash, absl::Time now) {
  return Transact("ensure_token", [&](Txn& t) -> absl::Status {
    t.work.exec_params(
        "INSERT INTO access_tokens (name, role, secret_hash, created_us, created_by) "
        "VALUES ($1, $2, $3, $4, 'bootstrap file') ON CONFLICT (secret_hash) DO NOTHING",
        name, role, secret_hash, absl::ToUnixMicros(now));
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<v1::TokenInfo>> PgStore::ListTokens() {
  std::vector<v1::TokenInfo> tokens;
  RETURN_IF_ERROR(Transact("list_tokens", [&](Txn& t) -> absl::Status {
    tokens.clear();
    for (const auto& row :
         t.work.exec(absl::StrCat("SELECT ", kColumns, " FROM access_tokens ORDER BY id"))) {
      tokens.push_back(ToInfo(row));
    }
    return absl::OkStatus();
  }));
  return tokens;
}

absl::StatusOr<v1::TokenInfo> PgStore::RevokeToken(int64_t token_id, absl::Time now) {
  v1::TokenInfo info;
  RETURN_IF_ERROR(Transact("revoke_token", [&](Txn& t) -> absl::Status {
    const auto r = t.work.exec_params(
        absl::StrCat("UPDATE access_tokens SET revoked_us = CASE WHEN revoked_us = 0 THEN $2 "
                     "ELSE revoked_us END WHERE id = $1 RETURNING ", kColumns),
        token_id, absl::ToUnixMicros(now));
    if (r.empty()) return absl::NotFoundError(absl::StrCat("token ", token_id, " not found"));
    info = ToInfo(r[0]);
    return absl::OkStatus();
  }));
  return info;
}

absl::StatusOr<std::optional<v1::TokenInfo>> PgStore::FindToken(const std::string& secret_hash) {
  std::optional<v1::TokenInfo> found;
  RETURN_IF_ERROR(Transact("find_token", [&](Txn& t) -> absl::Status {
    found.reset();
    const auto r = t.work.exec_params(
        absl::StrCat("SELECT ", kColumns,
                     " FROM access_tokens WHERE secret_hash = $1 AND revoked_us = 0"),
        secret_hash);
    if (!r.empty()) found = ToInfo(r[0]);
    return absl::OkStatus();
  }));
  return found;
}

}  // namespace sslbench::server
