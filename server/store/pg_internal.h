#pragma once
// What the files of PgStore share: its connection and transaction types and
// small libpqxx helpers. Private to server/store.

#include <pqxx/pqxx>
#include <zlib.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/store/pg_store.h"

namespace sslbench::server {

struct PgStore::Conn {
  explicit Conn(const std::string& conninfo) : c(conninfo) {}
  pqxx::connection c;
};

// A transaction as handed to the bodies of PgStore's methods.
class PgStore::Txn {
 public:
  explicit Txn(pqxx::connection& conn) : work(conn) {}
  pqxx::work work;
};

inline pqxx::binarystring Bytes(std::string_view s) {
  return pqxx::binarystring(s.data(), s.size());
}
inline std::string FromBytes(const pqxx::field& f) { return pqxx::binarystring(f).str(); }

// FAILED_PRECONDITION for a write whose fencing token no longer holds. The
// message never names the current token: a caller that could read it could
// act for the lease's holder.
inline absl::Status StaleToken(int64_t task_id, int64_t token, int64_t current,
                               const std::string& state) {
  if (token != current) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease lost: task ", task_id,
        " was leased again; the request carries a stale token"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "lease lost: task ", task_id, " is ", state, ", not LEASED"));
}

// CRC-32 of blob bytes, as recorded beside each blob.
inline uint32_t Crc32(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

// Checks, in `w`, that task `task_id` holds its lease with `token` (locking
// the row for share); fills `cache_key` with the key the task fills.
// NOT_FOUND, or FAILED_PRECONDITION for a lost lease.
inline absl::Status CheckLease(pqxx::work& w, int64_t task_id, int64_t token,
                               std::string* cache_key = nullptr) {
  const auto r = w.exec_params(
      "SELECT state, lease_token, cache_key FROM tasks WHERE id = $1 FOR SHARE", task_id);
  if (r.empty()) return absl::NotFoundError(absl::StrCat("task ", task_id, " not found"));
  const std::string state = r[0][0].as<std::string>();
  const int64_t current = r[0][1].as<int64_t>();
  if (current != token || state != "LEASED") return StaleToken(task_id, token, current, state);
  if (cache_key != nullptr) *cache_key = r[0][2].as<std::string>();
  return absl::OkStatus();
}

}  // namespace sslbench::server
