#pragma once
// What the files of PgStore share: its connection and transaction types and
// small libpqxx helpers. Private to server/store.

#include <pqxx/pqxx>

#include <cstdint>
#include <string>

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

inline pqxx::binarystring Bytes(const std::string& s) {
  return pqxx::binarystring(s.data(), s.size());
}
inline std::string FromBytes(const pqxx::field& f) { return pqxx::binarystring(f).str(); }

// FAILED_PRECONDITION for a write whose fencing token no longer holds.
inline absl::Status StaleToken(int64_t task_id, int64_t token, int64_t current,
                               const std::string& state) {
  if (token != current) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease lost: task ", task_id, " has fencing token ", current,
        ", the request carries stale token ", token));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "lease lost: task ", task_id, " is ", state, ", not LEASED"));
}

}  // namespace sslbench::server
