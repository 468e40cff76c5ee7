#pragma once
// What the files of PgStore share: its connection and transaction types and
// small libpqxx helpers. Private to server/store.

#include <pqxx/pqxx>

#include "absl/time/time.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/crc32.h"
#include "server/store/pg_store.h"

namespace sslbench::server {

// A statement on a hot path (lease, heartbeat, complete), prepared on each
// connection: PostgreSQL parses and plans it once per connection instead of
// on every call (a fifth of the database's time under load went there).
struct Statement {
  std::string name;
  std::string sql;
};
// Every Statement the store runs with Run(), prepared (lazily) per connection.
const std::vector<const Statement*>& PreparedStatements();

template <typename... Args>
pqxx::result Run(pqxx::transaction_base& w, const Statement& statement, Args&&... args) {
  return w.exec_prepared(statement.name, std::forward<Args>(args)...);
}

struct PgStore::Conn {
  explicit Conn(const std::string& conninfo) : c(conninfo) {
    for (const Statement* s : PreparedStatements()) c.prepare(s->name, s->sql);
  }
  pqxx::connection c;
  // The statement_timeout this session has (set from call deadlines), in
  // milliseconds; 0 when it has the server's default.
  int64_t timeout_ms = 0;
  // When it was last returned to the pool.
  absl::Time idle_since;
};

// A transaction as handed to the bodies of PgStore's methods.
class PgStore::Txn {
 public:
  static constexpr bool kAutocommit = false;
  explicit Txn(pqxx::connection& conn) : work(conn) {}
  pqxx::work work;
};

// No transaction: each statement commits by itself. For a call that is one
// statement (or statements each of which stands alone): no BEGIN and COMMIT
// round trips, each a wake-up of the server process and of the caller's
// thread, which on busy cores is where a call's time goes.
class PgStore::Autocommit {
 public:
  static constexpr bool kAutocommit = true;
  explicit Autocommit(pqxx::connection& conn) : work(conn) {}
  pqxx::nontransaction work;
};

inline pqxx::binarystring Bytes(std::string_view s) {
  return pqxx::binarystring(s.data(), s.size());
}
inline std::string FromBytes(const pqxx::field& f) { return pqxx::binarystring(f).str(); }

// FAILED_PRECONDITION for a write whose fencing token no longer holds. The
// message never names the current token: a caller that could read it could
// act for the lease's holder.
// Array literals for one-statement bulk reads and writes (unnest, ANY):
// one round trip for a whole batch instead of one per row.
inline std::string PgArray(const std::vector<int64_t>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) absl::StrAppend(&out, i ? "," : "", values[i]);
  out += "}";
  return out;
}
// Every element quoted, `"` and `\` escaped: any text survives.
inline std::string PgArray(const std::vector<std::string>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += '"';
    for (char c : values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += "}";
  return out;
}
// Shortest text that reads back as the same double.
inline std::string PgArray(const std::vector<double>& values) {
  std::string out = "{";
  char buffer[32];
  for (size_t i = 0; i < values.size(); ++i) {
    std::snprintf(buffer, sizeof(buffer), "%.17g", values[i]);
    absl::StrAppend(&out, i ? "," : "", buffer);
  }
  out += "}";
  return out;
}
// Bytes as hex text, for `decode(x, 'hex')` over a text[] parameter.
inline std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

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

// CRC-32 of blob bytes, as recorded beside each blob (zlib's values).
using ::sslbench::Crc32;

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
