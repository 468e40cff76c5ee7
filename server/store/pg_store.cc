#include "server/store/pg_store.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/random.h"
#include "common/status_macros.h"
#include "common/study_spec.h"
#include "server/store/call_deadline.h"
#include "server/store/migrations.h"
#include "server/store/pg_internal.h"

namespace sslbench::server {


namespace {

// Serialises the coordinators' migration steps (an arbitrary constant).
constexpr int64_t kMigrationLockId = 0x55b3e7c4;

int64_t Us(absl::Time t) { return absl::ToUnixMicros(t); }
absl::Time FromUs(int64_t us) { return absl::FromUnixMicros(us); }

std::string KindName(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_EXTRACT: return "EXTRACT";
    case v1::TASK_KIND_KNN: return "KNN";
    case v1::TASK_KIND_LINEAR: return "LINEAR";
    case v1::TASK_KIND_LOGREG: return "LOGREG";
    case v1::TASK_KIND_FINETUNE: return "FINETUNE";
    default: return "UNSPECIFIED";
  }
}
v1::TaskKind KindFromName(const std::string& name) {
  if (name == "EXTRACT") return v1::TASK_KIND_EXTRACT;
  if (name == "KNN") return v1::TASK_KIND_KNN;
  if (name == "LINEAR") return v1::TASK_KIND_LINEAR;
  if (name == "LOGREG") return v1::TASK_KIND_LOGREG;
  if (name == "FINETUNE") return v1::TASK_KIND_FINETUNE;
  return v1::TASK_KIND_UNSPECIFIED;
}
v1::StudyState StudyStateFromName(const std::string& name) {
  if (name == "RUNNING") return v1::STUDY_STATE_RUNNING;
  if (name == "SUCCEEDED") return v1::STUDY_STATE_SUCCEEDED;
  if (name == "FAILED") return v1::STUDY_STATE_FAILED;
  if (name == "CANCELLED") return v1::STUDY_STATE_CANCELLED;
  return v1::STUDY_STATE_UNSPECIFIED;
}


// The statements of the hot paths, prepared on every connection. A lease is
// one statement (a second when the scan from the mark comes up short; three
// or four in a transaction for preferred keys) and a completion batch
// three, however many tasks they carry: round trips, not rows, are what a
// busy coordinator pays for.

// The first tasks whose count says ready (PENDING, no unfinished
// dependency counted, backoff over) from a partial index; SKIP LOCKED:
// concurrent leasers each take different rows, none waits.
std::string ReadyTasks(bool gpu) {
  return absl::StrCat(
      "SELECT t.id FROM tasks t WHERE t.state = 'PENDING' AND t.blocked_deps = 0 "
      "AND t.not_before_us <= $1",
      gpu ? "" : " AND NOT t.requires_gpu");
}
// A second guard behind `blocked_deps`: no dependency of task `id` is
// unfinished. It is asked only of the rows a lease has locked, not in the
// scan: concurrent leases start from the same place and step over each
// other's locked rows, and asked there it ran for every row stepped over
// (208 subplans for 16 leases, 48 of a lease's 51 ms, seen under load).
// OFFSET 0 keeps PostgreSQL from turning it into an anti-join, which, once
// the tasks table has been analysed, it plans as a merge over every
// dependency in the database (~250 ms per lease with 60,000 tasks queued).
std::string NoUnfinishedDependency(const std::string& id) {
  return absl::StrCat(
      "NOT EXISTS (SELECT 1 FROM task_deps d JOIN tasks p ON p.id = d.depends_on "
      "WHERE d.task_id = ",
      id, " AND p.state <> 'SUCCEEDED' OFFSET 0)");
}
// A locked row of `fresh` that fails the guard would take a place of the
// LIMIT on every lease (and every one of a single-task lease) until its
// dependencies finish: its count is set to the truth, which takes it out of
// the ready index. The CTE `recounted` returns the rows set right.
const char kRecountMiscounted[] =
    "recounted AS (UPDATE tasks t SET blocked_deps = (SELECT count(*) FROM task_deps d "
    "JOIN tasks p ON p.id = d.depends_on WHERE d.task_id = t.id AND p.state <> 'SUCCEEDED') "
    "FROM fresh f WHERE t.id = f.id AND t.id NOT IN (SELECT id FROM numbered) RETURNING t.id), ";
// Probes whose features the worker holds: $1 now, $2 how many, $3 the keys.
std::string LeasePreferred(bool gpu) {
  return absl::StrCat("SELECT c.id FROM (", ReadyTasks(gpu),
                      " AND t.input_key = ANY($3::text[]) ORDER BY t.id LIMIT $2 "
                      "FOR UPDATE OF t SKIP LOCKED) c WHERE ",
                      NoUnfinishedDependency("c.id"));
}
// Leases the tasks in $2 (locked already) and up to $3 more with ids from
// $7 on, in id order, each with its own fencing token from $6: $1 now, $4
// the worker, $5 the lease deadline.
std::string LeaseTake(bool gpu) {
  return absl::StrCat(
      "WITH fresh AS (", ReadyTasks(gpu),
      " AND t.id <> ALL($2::bigint[]) AND t.id >= $7 ORDER BY t.id LIMIT $3 "
      "FOR UPDATE OF t SKIP LOCKED), "
      "picked AS (SELECT unnest($2::bigint[]) AS id UNION ALL SELECT f.id FROM fresh f WHERE ",
      NoUnfinishedDependency("f.id"),
      "), "
      "numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM picked), ",
      kRecountMiscounted,
      "leased AS (UPDATE tasks t SET state = 'LEASED', lease_token = v.token, lease_worker = $4, "
      "lease_deadline_us = $5, attempts = attempts + 1, work_done = 0, work_total = 0 "
      "FROM numbered p JOIN unnest($6::bigint[]) WITH ORDINALITY AS v(token, n) USING (n) "
      "WHERE t.id = p.id RETURNING t.id, t.lease_token, t.attempts, t.spec) "
      "SELECT l.id, l.lease_token, l.attempts, l.spec, (SELECT count(*) FROM recounted) "
      "FROM (SELECT 1) one LEFT JOIN leased l ON true");
}
// A lease as one statement, for a worker with no preferred keys: up to $2
// ready tasks with ids from $6 on, each with its own fencing token from $5,
// and the worker's row updated ($1 now, $3 the worker, $4 the lease
// deadline, $7 the lowest id this call leased before, 0 if none). Nothing
// is leased to a worker without a row, and then no row comes back; else one
// row per lease, or one row of NULLs; the last column counts the rows
// recounted (kRecountMiscounted).
std::string LeaseAloneSql(bool gpu) {
  return absl::StrCat(
      "WITH fresh AS (", ReadyTasks(gpu),
      " AND t.id >= $6 AND EXISTS (SELECT 1 FROM workers WHERE id = $3) "
      "ORDER BY t.id LIMIT $2 FOR UPDATE OF t SKIP LOCKED), "
      "numbered AS (SELECT f.id, row_number() OVER (ORDER BY f.id) AS n FROM fresh f WHERE ",
      NoUnfinishedDependency("f.id"),
      "), ",
      kRecountMiscounted,
      "leased AS (UPDATE tasks t SET state = 'LEASED', lease_token = v.token, "
      "lease_worker = $3, lease_deadline_us = $4, attempts = attempts + 1, work_done = 0, "
      "work_total = 0 FROM numbered p JOIN unnest($5::bigint[]) WITH ORDINALITY AS v(token, n) "
      "USING (n) WHERE t.id = p.id RETURNING t.id, t.lease_token, t.attempts, t.spec), "
      "seen AS (UPDATE workers SET last_seen_us = $1, current_task = "
      "COALESCE(LEAST(NULLIF($7::bigint, 0), (SELECT min(id) FROM leased)), 0) "
      "WHERE id = $3 RETURNING id) "
      "SELECT l.id, l.lease_token, l.attempts, l.spec, (SELECT count(*) FROM recounted) "
      "FROM seen LEFT JOIN leased l ON true");
}
const Statement kLeaseAlone[2] = {{"lease_alone_cpu", LeaseAloneSql(false)},
                                  {"lease_alone_gpu", LeaseAloneSql(true)}};
const Statement kLeasePreferred[2] = {{"lease_preferred_cpu", LeasePreferred(false)},
                                      {"lease_preferred_gpu", LeasePreferred(true)}};
const Statement kLeaseTake[2] = {{"lease_take_cpu", LeaseTake(false)},
                                 {"lease_take_gpu", LeaseTake(true)}};
const Statement kWorkerDevice{"worker_device", "SELECT device FROM workers WHERE id = $1"};
const Statement kLeaseWorker{
    "lease_worker",
    "UPDATE workers SET last_seen_us = $2, current_task = $3 WHERE id = $1 RETURNING id"};
const Statement kHeartbeatRead{
    "heartbeat_read",
    "SELECT state, lease_token, lease_worker FROM tasks WHERE id = $1 FOR UPDATE"};
const Statement kWorkerSeen{"worker_seen", "UPDATE workers SET last_seen_us = $2 WHERE id = $1"};
const Statement kHeartbeatExtend{
    "heartbeat_extend",
    "UPDATE tasks SET lease_deadline_us = $2, work_done = $3, work_total = $4 WHERE id = $1"};
const Statement kCompleteRead{
    "complete_read",
    "SELECT id, state, lease_token, study_id, kind, cache_key, lease_worker, spec "
    "FROM tasks WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"};
// Writes a checked batch: $1 the tasks, $2 now, $3 the worker of each task,
// $4..$13 the results' columns. Their dependents wait for fewer tasks
// (CreateStudy holds a producer FOR SHARE while it adds a dependency on it,
// so none is missed).
const Statement kCompleteWrite{
    "complete_write",
    "WITH done AS (UPDATE tasks SET state = 'SUCCEEDED', finished_us = $2, "
    "work_done = work_total WHERE id = ANY($1::bigint[]) RETURNING id), "
    "unblocked AS (UPDATE tasks t SET blocked_deps = t.blocked_deps - d.n FROM (SELECT "
    "task_id, count(*) AS n FROM task_deps WHERE depends_on = ANY($1::bigint[]) "
    "GROUP BY task_id) d WHERE t.id = d.task_id RETURNING t.id), "
    "freed AS (UPDATE workers w SET current_task = 0, last_seen_us = $2 FROM "
    "unnest($3::bigint[], $1::bigint[]) AS v(worker, task) WHERE w.id = v.worker AND "
    "w.current_task = v.task RETURNING w.id) "
    "INSERT INTO results (study_id, task_id, model, dataset, protocol, variant, "
    "top1, top5, mean_per_class, result) "
    "SELECT s, t, m, d, p, v, a, b, c, decode(r, 'hex') FROM unnest($4::bigint[], "
    "$5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::float8[], "
    "$11::float8[], $12::float8[], $13::text[]) AS x(s, t, m, d, p, v, a, b, c, r) "
    "ON CONFLICT (task_id, variant) DO NOTHING"};
// The studies' rows are locked after the writes, just before the open
// check, so that completions of one study wait for each other as briefly as
// possible; NO KEY UPDATE: serialises the refreshes without conflicting with
// KEY SHARE locks (results had a foreign key on their study until migration
// 14; with FOR UPDATE, concurrent completions deadlocked on them).
const Statement kRefreshLock{"refresh_lock",
                             "SELECT state FROM studies WHERE id = $1 FOR NO KEY UPDATE"};
const Statement kRefreshOpen{
    "refresh_open",
    "SELECT id FROM tasks WHERE study_id = $1 AND state IN ('PENDING', 'LEASED') "
    "ORDER BY id DESC LIMIT 1"};

// The leases of a lease statement's rows (id, token, attempt, spec,
// recounted; a row of NULLs leases nothing); returns how many miscounted
// tasks the statement set right. A task whose spec does not parse is left
// out, logged: its lease expires and it fails after its attempts, instead
// of failing every lease that meets it.
int64_t ReadLeases(const pqxx::result& r, absl::Time deadline, std::vector<Lease>* out) {
  int64_t recounted = 0;
  for (const auto& row : r) {
    recounted = row[4].as<int64_t>();
    if (row[0].is_null()) continue;
    Lease l;
    l.task_id = row[0].as<int64_t>();
    l.token = row[1].as<int64_t>();
    l.attempt = row[2].as<int32_t>();
    l.deadline = deadline;
    if (!l.spec.ParseFromString(FromBytes(row[3]))) {
      LogError("store", "task ", l.task_id, ": stored spec does not parse; left to expire");
      continue;
    }
    out->push_back(std::move(l));
  }
  if (recounted > 0) {
    LogWarning("store", recounted,
               " ready task(s) had unfinished dependencies their count did not show; recounted");
  }
  return recounted;
}

// Fails, transitively, the pending tasks that depend on `failed_task`.
// Returns the studies touched.
std::set<int64_t> FailDependents(pqxx::work& w, int64_t failed_task,
                                 const std::string& reason, int64_t now_us) {
  std::set<int64_t> studies;
  std::vector<int64_t> frontier = {failed_task};
  while (!frontier.empty()) {
    const int64_t id = frontier.back();
    frontier.pop_back();
    const auto r = w.exec_params(
        "UPDATE tasks SET state = 'FAILED', finished_us = $2, "
        "last_error = $3 WHERE state = 'PENDING' AND id IN "
        "(SELECT task_id FROM task_deps WHERE depends_on = $1) "
        "RETURNING id, study_id",
        id, now_us,
        absl::StrCat("dependency task ", failed_task, " failed: ", reason));
    for (const auto& row : r) {
      frontier.push_back(row[0].as<int64_t>());
      studies.insert(row[1].as<int64_t>());
    }
  }
  return studies;
}

// Recomputes a running study's state from its own tasks; the caller holds
// the study's row lock (kRefreshLock) and read its state.
void RefreshLockedStudy(pqxx::work& w, int64_t study_id, const std::string& state,
                        int64_t now_us) {
  if (state != "RUNNING") return;
  if (!Run(w, kRefreshOpen, study_id).empty()) return;
  const auto failed = w.exec_params(
      "SELECT EXISTS (SELECT 1 FROM tasks WHERE study_id = $1 AND state = 'FAILED')", study_id);
  if (failed[0][0].as<bool>()) {
    const auto e = w.exec_params(
        "SELECT id, last_error FROM tasks WHERE study_id = $1 AND "
        "state = 'FAILED' ORDER BY id LIMIT 1",
        study_id);
    w.exec_params(
        "UPDATE studies SET state = 'FAILED', finished_us = $2, error = $3 "
        "WHERE id = $1",
        study_id, now_us,
        absl::StrCat("task ", e[0][0].as<int64_t>(), ": ",
                     e[0][1].as<std::string>()));
  } else {
    w.exec_params(
        "UPDATE studies SET state = 'SUCCEEDED', finished_us = $2 WHERE id = $1",
        study_id, now_us);
  }
}

void RefreshStudy(pqxx::work& w, int64_t study_id, int64_t now_us) {
  const auto s = Run(w, kRefreshLock, study_id);
  if (!s.empty()) RefreshLockedStudy(w, study_id, s[0][0].as<std::string>(), now_us);
}

}  // namespace

const std::vector<const Statement*>& PreparedStatements() {
  static const auto* statements = new std::vector<const Statement*>{
      &kLeasePreferred[0], &kLeasePreferred[1], &kLeaseTake[0], &kLeaseTake[1],
      &kLeaseAlone[0], &kLeaseAlone[1],
      &kWorkerDevice, &kLeaseWorker, &kHeartbeatRead, &kWorkerSeen, &kHeartbeatExtend,
      &kCompleteRead, &kCompleteWrite, &kRefreshLock, &kRefreshOpen};
  return *statements;
}

absl::StatusOr<std::unique_ptr<PgStore>> PgStore::Create(PgStoreOptions options) {
  std::unique_ptr<PgStore> store(new PgStore(std::move(options)));
  RETURN_IF_ERROR(store->Migrate());
  return store;
}

PgStore::PgStore(PgStoreOptions options)
    : options_(std::move(options)), blobs_(options_.blobs) {
  if (blobs_ == nullptr) blobs_ = NewTableBlobStore();
}
PgStore::~PgStore() = default;

std::unique_ptr<PgStore::Conn> PgStore::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](PgStore* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
          return !s->idle_.empty() || s->open_ < s->options_.max_connections;
        },
        this));
    if (!idle_.empty()) {
      auto conn = std::move(idle_.back());
      idle_.pop_back();
      return conn;
    }
    ++open_;
  }
  return nullptr;  // the caller opens a new connection in the slot it holds
}

void PgStore::DropIdleConnections() {
  absl::MutexLock lock(&mu_);
  open_ -= static_cast<int>(idle_.size());
  idle_.clear();
}

void PgStore::CloseIdleConnections(absl::Duration idle_for) {
  const absl::Time cutoff = absl::Now() - idle_for;
  std::vector<std::unique_ptr<Conn>> closing;
  {
    absl::MutexLock lock(&mu_);
    // The stack's bottom has been idle longest.
    auto kept = std::stable_partition(idle_.begin(), idle_.end(), [&](const auto& c) {
      return c->idle_since > cutoff;
    });
    for (auto it = kept; it != idle_.end(); ++it) closing.push_back(std::move(*it));
    idle_.erase(kept, idle_.end());
    open_ -= static_cast<int>(closing.size());
  }
  // Closed outside the lock (each says goodbye to the server).
  closing.clear();
}

void PgStore::Return(std::unique_ptr<Conn> conn) {
  absl::MutexLock lock(&mu_);
  if (conn && conn->c.is_open()) {
    conn->idle_since = absl::Now();
    idle_.push_back(std::move(conn));
  } else {
    --open_;
  }
}

// Sleeps 1-2 ms, then 2-4, 4-8, ... before retry number attempt + 1.
void PgStore::BackOff(int attempt) {
  thread_local std::minstd_rand rng(static_cast<uint32_t>(
      std::hash<std::thread::id>()(std::this_thread::get_id())));
  const double base_ms = static_cast<double>(1 << std::min(attempt, 8));
  std::uniform_real_distribution<double> jitter(1.0, 2.0);
  std::this_thread::sleep_for(
      std::chrono::duration<double, std::milli>(base_ms * jitter(rng)));
}

absl::Status PgStore::Transact(absl::string_view op,
                               const std::function<absl::Status(Txn&)>& fn) {
  return TransactAs<Txn>(op, fn);
}

template <typename T>
absl::Status PgStore::TransactAs(absl::string_view op,
                                 const std::function<absl::Status(T&)>& fn) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status result;
  bool reconnected = false;
  for (int attempt = 0;; ++attempt) {
    std::unique_ptr<Conn> conn = Acquire();
    bool retry = false;
    bool back_off = false;
    try {
      if (!conn) conn = std::make_unique<Conn>(options_.conninfo);
      // The call's deadline as statement_timeout, rounded down to a power of
      // two milliseconds (so consecutive calls seldom need a SET; the limit
      // is at least half of what is left), or the server's default.
      int64_t timeout_ms = 0;
      const absl::Time deadline = CallDeadline::Current();
      if (deadline != absl::InfiniteFuture()) {
        const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
        if (left_ms < 1) {
          result = absl::DeadlineExceededError(
              absl::StrCat(op, ": the call's deadline passed before the database was asked"));
          Return(std::move(conn));
          break;
        }
        timeout_ms = int64_t{1} << (63 - __builtin_clzll(static_cast<uint64_t>(left_ms)));
      }
      const int64_t session_timeout = conn->timeout_ms;
      conn->timeout_ms = -1;  // unknown until the transaction commits
      T txn(conn->c);
      if (timeout_ms != session_timeout) {
        // Session-wide, so it outlives this transaction (and is undone if
        // the transaction aborts: hence unknown until commit).
        txn.work.exec0(timeout_ms == 0 ? std::string("RESET statement_timeout")
                                       : absl::StrCat("SET statement_timeout = ", timeout_ms));
      }
      if constexpr (T::kAutocommit) conn->timeout_ms = timeout_ms;  // set, whatever follows
      result = fn(txn);
      if (result.ok()) {
        txn.work.commit();
        conn->timeout_ms = timeout_ms;
      } else {
        txn.work.abort();
      }
    } catch (const pqxx::in_doubt_error& e) {
      conn.reset();
      result = absl::UnavailableError(absl::StrCat(
          op, ": connection lost during commit; outcome unknown: ", e.what()));
    } catch (const pqxx::broken_connection& e) {
      conn.reset();
      // A restarted database drops every pooled connection: forget the idle
      // ones too, and retry once on a fresh one before reporting the
      // database unreachable.
      DropIdleConnections();
      // Autocommitted statements may have committed before the break: not
      // run again (the caller learns the outcome is unknown).
      if (!reconnected && !T::kAutocommit) {
        reconnected = true;
        retry = true;
      }
      result = absl::UnavailableError(
          absl::StrCat(op, ": database unavailable: ", e.what()));
    } catch (const pqxx::transaction_rollback& e) {
      // Serialization failure or deadlock: the whole transaction may retry,
      // after a jittered, growing pause so that the transactions that
      // collided do not collide again in lockstep.
      retry = attempt < 5;
      result = absl::AbortedError(
          absl::StrCat(op, ": transaction conflict, retry: ", e.what()));
      back_off = retry;
    } catch (const pqxx::unique_violation& e) {
      result = absl::AlreadyExistsError(absl::StrCat(op, ": ", e.what()));
    } catch (const pqxx::sql_error& e) {
      // Class 57 (operator intervention, e.g. admin_shutdown) and 08
      // (connection exception): the server went away mid-session; 57014 is
      // statement_timeout, set from the call's deadline.
      const std::string& state = e.sqlstate();
      if (state == "57014") {
        result = absl::DeadlineExceededError(absl::StrCat(
            op, ": the call's deadline passed while the database was working on it"));
      } else if (state.rfind("57", 0) == 0 || state.rfind("08", 0) == 0) {
        conn.reset();
        DropIdleConnections();
        retry = !reconnected && !T::kAutocommit;
        reconnected = true;
        result = absl::UnavailableError(
            absl::StrCat(op, ": database unavailable: ", e.what()));
      } else {
        result = absl::InternalError(
            absl::StrCat(op, ": database error: ", e.what(), " (query: ",
                         e.query().substr(0, 200), ")"));
      }
    } catch (const std::exception& e) {
      result = absl::InternalError(absl::StrCat(op, ": ", e.what()));
    }
    Return(std::move(conn));
    if (!retry) break;
    if (back_off) BackOff(attempt);
  }
  if (options_.observer) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    options_.observer(op, seconds, result.ok());
  }
  return result;
}

absl::Status PgStore::Migrate() {
  return Transact("migrate", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    w.exec_params("SELECT pg_advisory_xact_lock($1)", kMigrationLockId);
    w.exec0(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INT PRIMARY KEY, description TEXT NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())");
    const int current =
        w.exec1("SELECT COALESCE(max(version), 0) FROM schema_migrations")[0]
            .as<int>();
    const auto& migrations = Migrations();
    if (!migrations.empty() && current > migrations.back().version) {
      return absl::FailedPreconditionError(absl::StrCat(
          "database schema version ", current,
          " is newer than this coordinator knows (",
          migrations.back().version, "): upgrade the coordinator"));
    }
    for (const auto& m : migrations) {
      if (m.version <= current) continue;
      w.exec0(m.sql);
      w.exec_params(
          "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
          m.version, std::string(m.description));
      LogInfo("store", "applied schema migration ", m.version, ": ", m.description);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int> PgStore::SchemaVersion() {
  int version = 0;
  RETURN_IF_ERROR(Transact("schema_version", [&](Txn& t) -> absl::Status {
    version = t.work.exec1("SELECT COALESCE(max(version), 0) FROM schema_migrations")[0]
                  .as<int>();
    return absl::OkStatus();
  }));
  return version;
}

absl::StatusOr<CreatedStudy> PgStore::CreateStudy(const StudyPlan& plan,
                                                  absl::Time now) {
  CreatedStudy created;
  const int64_t now_us = Us(now);
  RETURN_IF_ERROR(Transact("create_study", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    created = CreatedStudy{};
    if (!plan.request_id.empty()) {
      // Serialise submissions that share a request id.
      w.exec_params("SELECT pg_advisory_xact_lock(hashtext($1))", plan.request_id);
      const auto r = w.exec_params(
          "SELECT id, spec FROM studies WHERE request_id = $1", plan.request_id);
      if (!r.empty()) {
        v1::StudySpec stored;
        stored.ParseFromString(FromBytes(r[0][1]));
        if (stored.SerializeAsString() != plan.spec.SerializeAsString()) {
          return absl::AlreadyExistsError(absl::StrCat(
              "request_id \"", plan.request_id, "\" was used for study ",
              r[0][0].as<int64_t>(), " with a different spec"));
        }
        created.study_id = r[0][0].as<int64_t>();
        created.existing = true;
        return absl::OkStatus();
      }
    }
    const std::string spec_bytes = plan.spec.SerializeAsString();
    const auto inserted = w.exec_params(
        "INSERT INTO studies (request_id, name, spec, state, created_us, submitted_by) "
        "VALUES (NULLIF($1, ''), $2, $3, 'RUNNING', $4, $5) RETURNING id",
        plan.request_id, plan.spec.name(), Bytes(spec_bytes), now_us, plan.submitted_by);
    const int64_t study_id = inserted[0][0].as<int64_t>();
    created.study_id = study_id;

    const auto& gpu_kinds = plan.spec.gpu_task_kinds();
    auto requires_gpu = [&](const v1::TaskSpec& spec) {
      return std::find(gpu_kinds.begin(), gpu_kinds.end(), spec.kind()) != gpu_kinds.end();
    };

    // The feature caches the study reads: the missing ones are created, all
    // are locked in key order (concurrent submissions sharing caches lock
    // them in the same order), one statement each for the whole study.
    std::vector<const PlannedExtract*> extracts;
    for (const auto& extract : plan.extracts) extracts.push_back(&extract);
    std::sort(extracts.begin(), extracts.end(),
              [](const PlannedExtract* a, const PlannedExtract* b) {
                return a->cache_key < b->cache_key;
              });
    std::vector<std::string> keys, models, datasets, splits;
    for (const PlannedExtract* e : extracts) {
      keys.push_back(e->cache_key);
      models.push_back(e->spec.model().name());
      datasets.push_back(e->spec.dataset().name());
      splits.push_back(e->spec.split());
    }
    const std::string key_array = PgArray(keys);
    struct Cache {
      bool complete = false;
      int64_t producer = 0;
      std::string producer_state;
    };
    std::map<std::string, Cache> caches;
    if (!extracts.empty()) {
      w.exec_params(
          "INSERT INTO feature_caches (cache_key, model, dataset, split, created_us, generation) "
          "SELECT k, m, d, s, $5, 1 + floor(random() * 9007199254740990)::bigint "
          "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
          "AS x(k, m, d, s) ORDER BY k ON CONFLICT (cache_key) DO NOTHING",
          key_array, PgArray(models), PgArray(datasets), PgArray(splits), now_us);
      std::vector<int64_t> running;
      for (const auto& row : w.exec_params(
               "SELECT c.cache_key, c.complete, c.producer_task, COALESCE(t.state, '') "
               "FROM feature_caches c LEFT JOIN tasks t ON t.id = c.producer_task "
               "WHERE c.cache_key = ANY($1::text[]) ORDER BY c.cache_key FOR UPDATE OF c",
               key_array)) {
        Cache& cache = caches[row[0].as<std::string>()];
        cache.complete = row[1].as<bool>();
        cache.producer = row[2].as<int64_t>();
        cache.producer_state = row[3].as<std::string>();
        if (cache.producer != 0 && !cache.complete) running.push_back(cache.producer);
      }
      if (!running.empty()) {
        // Lock the producers so a concurrent CancelStudy waits for this
        // transaction (and then sees the dependencies on them), and read
        // their states as of that lock.
        std::map<int64_t, std::string> states;
        for (const auto& row : w.exec_params(
                 "SELECT id, state FROM tasks WHERE id = ANY($1::bigint[]) ORDER BY id FOR SHARE",
                 PgArray(running))) {
          states[row[0].as<int64_t>()] = row[1].as<std::string>();
        }
        for (auto& [key, cache] : caches) {
          if (cache.producer != 0 && !cache.complete) cache.producer_state = states[cache.producer];
        }
      }
    }

    // cache key -> producing task (0 when the cache is complete), and
    // whether that task has SUCCEEDED already.
    std::map<std::string, int64_t> producers;
    std::set<int64_t> succeeded;
    std::vector<const PlannedExtract*> to_extract;  // in the plan's order
    for (const auto& extract : plan.extracts) {
      const Cache& cache = caches.at(extract.cache_key);
      if (cache.complete) {
        producers[extract.cache_key] = 0;
        ++created.reused_features;
      } else if (cache.producer != 0 &&
                 (cache.producer_state == "PENDING" || cache.producer_state == "LEASED" ||
                  cache.producer_state == "SUCCEEDED")) {
        producers[extract.cache_key] = cache.producer;
        if (cache.producer_state == "SUCCEEDED") succeeded.insert(cache.producer);
        ++created.shared_features;
      } else {
        to_extract.push_back(&extract);
      }
    }
    // Task ids up front, so that tasks and their dependencies go in as a few
    // multi-row statements rather than one statement per row.
    const int64_t count = static_cast<int64_t>(to_extract.size() + plan.probes.size());
    std::vector<int64_t> ids;
    if (count > 0) {
      for (const auto& row : w.exec_params(
               "SELECT nextval(pg_get_serial_sequence('tasks', 'id')) "
               "FROM generate_series(1, $1)",
               count)) {
        ids.push_back(row[0].as<int64_t>());
      }
      std::sort(ids.begin(), ids.end());
    }
    struct NewTask {
      const v1::TaskSpec* spec;
      int blocked_deps;
    };
    std::vector<NewTask> rows;
    std::vector<std::string> produced_keys;
    std::vector<int64_t> producer_ids, dep_task, dep_on;
    for (const PlannedExtract* extract : to_extract) {
      const int64_t id = ids[rows.size()];
      rows.push_back(NewTask{&extract->spec, 0});
      producers[extract->cache_key] = id;
      produced_keys.push_back(extract->cache_key);
      producer_ids.push_back(id);
    }
    for (const auto& probe : plan.probes) {
      const int64_t id = ids[rows.size()];
      std::set<int64_t> deps;
      for (const std::string* key :
           {&probe.spec.train_cache_key(), &probe.spec.test_cache_key()}) {
        if (key->empty()) continue;  // fine-tuning reads images, not features
        const int64_t producer = producers.at(*key);
        if (producer != 0) deps.insert(producer);
      }
      int blocked = 0;
      for (int64_t dep : deps) {
        blocked += succeeded.count(dep) ? 0 : 1;
        dep_task.push_back(id);
        dep_on.push_back(dep);
      }
      rows.push_back(NewTask{&probe.spec, blocked});
    }
    constexpr size_t kRowsPerStatement = 1000;
    for (size_t begin = 0; begin < rows.size(); begin += kRowsPerStatement) {
      const size_t end = std::min(rows.size(), begin + kRowsPerStatement);
      std::vector<int64_t> task_ids, blocked;
      std::vector<std::string> kinds, specs, cache_keys, input_keys, test_keys, gpu;
      for (size_t k = begin; k < end; ++k) {
        const v1::TaskSpec& spec = *rows[k].spec;
        task_ids.push_back(ids[k]);
        kinds.push_back(KindName(spec.kind()));
        specs.push_back(Hex(spec.SerializeAsString()));
        cache_keys.push_back(spec.cache_key());
        input_keys.push_back(spec.train_cache_key());
        test_keys.push_back(spec.test_cache_key());
        gpu.push_back(requires_gpu(spec) ? "t" : "f");
        blocked.push_back(rows[k].blocked_deps);
      }
      w.exec_params(
          "INSERT INTO tasks (id, study_id, kind, state, spec, cache_key, max_attempts, "
          "created_us, input_key, test_key, requires_gpu, blocked_deps) "
          "SELECT i, $1, k, 'PENDING', decode(s, 'hex'), c, $2, $3, n, e, g, b FROM "
          "unnest($4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], "
          "$9::text[], $10::boolean[], $11::int[]) AS x(i, k, s, c, n, e, g, b)",
          study_id, plan.spec.max_attempts(), now_us, PgArray(task_ids), PgArray(kinds),
          PgArray(specs), PgArray(cache_keys), PgArray(input_keys), PgArray(test_keys),
          PgArray(gpu), PgArray(blocked));
    }
    created.tasks = static_cast<int64_t>(rows.size());
    if (!produced_keys.empty()) {
      w.exec_params(
          "UPDATE feature_caches c SET producer_task = v.id FROM unnest($1::text[], "
          "$2::bigint[]) AS v(k, id) WHERE c.cache_key = v.k",
          PgArray(produced_keys), PgArray(producer_ids));
    }
    for (size_t begin = 0; begin < dep_task.size(); begin += 10 * kRowsPerStatement) {
      const size_t end = std::min(dep_task.size(), begin + 10 * kRowsPerStatement);
      w.exec_params(
          "INSERT INTO task_deps (task_id, depends_on) "
          "SELECT * FROM unnest($1::bigint[], $2::bigint[])",
          PgArray(std::vector<int64_t>(dep_task.begin() + begin, dep_task.begin() + end)),
          PgArray(std::vector<int64_t>(dep_on.begin() + begin, dep_on.begin() + end)));
    }
    w.exec_params("UPDATE studies SET reused_features = $2 WHERE id = $1",
                  study_id, created.reused_features);
    return absl::OkStatus();
  }));
  return created;
}

absl::StatusOr<v1::StudyStatus> PgStore::GetStudyStatus(int64_t study_id,
                                                        absl::Time now) {
  v1::StudyStatus status;
  RETURN_IF_ERROR(Transact("get_study", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    status.Clear();
    const auto s = w.exec_params(
        "SELECT name, state, error, created_us, finished_us, reused_features, "
        "submitted_by, cancelled_by FROM studies WHERE id = $1",
        study_id);
    if (s.empty()) {
      return absl::NotFoundError(absl::StrCat("study ", study_id, " not found"));
    }
    status.set_study_id(study_id);
    status.set_name(s[0][0].as<std::string>());
    status.set_state(StudyStateFromName(s[0][1].as<std::string>()));
    status.set_error(s[0][2].as<std::string>());
    status.set_submitted_by(s[0][6].as<std::string>());
    status.set_cancelled_by(s[0][7].as<std::string>());
    const int64_t created_us = s[0][3].as<int64_t>();
    const int64_t finished_us = s[0][4].as<int64_t>();
    status.set_created_unix(static_cast<double>(created_us) / 1e6);
    status.set_elapsed_seconds(
        static_cast<double>((finished_us > 0 ? finished_us : Us(now)) - created_us) / 1e6);
    // The study's own tasks plus the extractions it borrows from other
    // studies, each found through an index: as one `study_id = $1 OR id IN
    // (...)` PostgreSQL scanned every task and every dependency ever stored
    // (120 ms with 140,000 tasks, on every poll of a progress display); the
    // OFFSET 0 keeps the dependencies read per task of the study.
    const auto r = w.exec_params(
        "SELECT kind, state, count(*), COALESCE(sum(work_done), 0), "
        "COALESCE(sum(work_total), 0) FROM ("
        "SELECT kind, state, work_done, work_total FROM tasks WHERE study_id = $1 "
        "UNION ALL SELECT t.kind, t.state, t.work_done, t.work_total FROM tasks t "
        "WHERE t.study_id <> $1 AND t.id IN (SELECT d.depends_on FROM tasks p CROSS JOIN "
        "LATERAL (SELECT depends_on FROM task_deps WHERE task_id = p.id OFFSET 0) d "
        "WHERE p.study_id = $1)) x GROUP BY kind, state ORDER BY kind",
        study_id);
    std::map<v1::TaskKind, v1::TaskProgress> by_kind;
    by_kind[v1::TASK_KIND_EXTRACT].set_kind(v1::TASK_KIND_EXTRACT);
    by_kind[v1::TASK_KIND_EXTRACT].set_reused(s[0][5].as<int64_t>());
    for (const auto& row : r) {
      const v1::TaskKind kind = KindFromName(row[0].as<std::string>());
      auto& p = by_kind[kind];
      p.set_kind(kind);
      const std::string state = row[1].as<std::string>();
      const int64_t n = row[2].as<int64_t>();
      p.set_total(p.total() + n);
      if (state == "PENDING") p.set_pending(p.pending() + n);
      if (state == "LEASED") {
        p.set_leased(p.leased() + n);
        p.set_work_done(p.work_done() + row[3].as<int64_t>());
        p.set_work_total(p.work_total() + row[4].as<int64_t>());
      }
      if (state == "SUCCEEDED") p.set_succeeded(p.succeeded() + n);
      if (state == "FAILED") p.set_failed(p.failed() + n);
      if (state == "CANCELLED") p.set_cancelled(p.cancelled() + n);
    }
    for (auto& [kind, p] : by_kind) *status.add_progress() = p;
    return absl::OkStatus();
  }));
  return status;
}

absl::StatusOr<v1::StudyStatus> PgStore::CancelStudy(int64_t study_id, absl::Time now,
                                                     const std::string& cancelled_by) {
  const int64_t now_us = Us(now);
  RETURN_IF_ERROR(Transact("cancel_study", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    const auto s = w.exec_params(
        "SELECT state FROM studies WHERE id = $1 FOR NO KEY UPDATE", study_id);
    if (s.empty()) {
      return absl::NotFoundError(absl::StrCat("study ", study_id, " not found"));
    }
    if (s[0][0].as<std::string>() != "RUNNING") return absl::OkStatus();
    // Lock the study's unfinished tasks first: a CreateStudy that is adding
    // a dependency on one of them holds it FOR SHARE, so this waits for it to
    // commit, and the UPDATE below (a new statement, a new snapshot in READ
    // COMMITTED) then sees that dependency.
    w.exec_params(
        "SELECT id FROM tasks WHERE study_id = $1 AND state IN ('PENDING', 'LEASED') "
        "ORDER BY id FOR UPDATE",
        study_id);
    // Keep extractions that a task of another running study waits for.
    w.exec_params(
        "UPDATE tasks t SET state = 'CANCELLED', finished_us = $2, "
        "last_error = 'study cancelled' WHERE t.study_id = $1 AND "
        "t.state IN ('PENDING', 'LEASED') AND NOT EXISTS ("
        " SELECT 1 FROM task_deps d JOIN tasks o ON o.id = d.task_id "
        " WHERE d.depends_on = t.id AND o.study_id <> $1 "
        " AND o.state IN ('PENDING', 'LEASED'))",
        study_id, now_us);
    // Extractions of other studies that are no longer running, kept only
    // for this one: with it cancelled nothing waits for them. Locked first,
    // as above, so that a CreateStudy borrowing one of them right now
    // commits before the UPDATE (a new snapshot) decides.
    constexpr const char* kBorrowed =
        "t.study_id <> $1 AND t.state IN ('PENDING', 'LEASED') AND t.id IN ("
        " SELECT d.depends_on FROM task_deps d JOIN tasks o ON o.id = d.task_id"
        " WHERE o.study_id = $1)";
    w.exec_params(absl::StrCat("SELECT t.id FROM tasks t WHERE ", kBorrowed,
                               " ORDER BY t.id FOR UPDATE"),
                  study_id);
    w.exec_params(
        absl::StrCat(
            "UPDATE tasks t SET state = 'CANCELLED', finished_us = $2, "
            "last_error = 'study cancelled' WHERE ", kBorrowed,
            " AND NOT EXISTS (SELECT 1 FROM studies s WHERE s.id = t.study_id"
            " AND s.state = 'RUNNING') AND NOT EXISTS ("
            " SELECT 1 FROM task_deps d JOIN tasks o ON o.id = d.task_id"
            " WHERE d.depends_on = t.id AND o.state IN ('PENDING', 'LEASED'))"),
        study_id, now_us);
    w.exec_params(
        "UPDATE studies SET state = 'CANCELLED', finished_us = $2, cancelled_by = $3 "
        "WHERE id = $1",
        study_id, now_us, cancelled_by);
    return absl::OkStatus();
  }));
  return GetStudyStatus(study_id, now);
}

absl::StatusOr<std::vector<v1::ProbeResult>> PgStore::ListResults(int64_t study_id) {
  std::vector<v1::ProbeResult> results;
  RETURN_IF_ERROR(Transact("list_results", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    results.clear();
    if (w.exec_params("SELECT 1 FROM studies WHERE id = $1", study_id).empty()) {
      return absl::NotFoundError(absl::StrCat("study ", study_id, " not found"));
    }
    const auto r = w.exec_params(
        "SELECT result FROM results WHERE study_id = $1 ORDER BY id", study_id);
    for (const auto& row : r) {
      v1::ProbeResult result;
      if (!result.ParseFromString(FromBytes(row[0]))) {
        return absl::DataLossError("a stored result does not parse");
      }
      results.push_back(std::move(result));
    }
    return absl::OkStatus();
  }));
  return results;
}

absl::StatusOr<int64_t> PgStore::RegisterWorker(const std::string& name,
                                                const std::string& hostname,
                                                const std::string& device,
                                                absl::Time now) {
  int64_t id = 0;
  RETURN_IF_ERROR(Transact("register_worker", [&](Txn& t) -> absl::Status {
    id = t.work
             .exec_params(
                 "INSERT INTO workers (name, hostname, device, registered_us, "
                 "last_seen_us) VALUES ($1, $2, $3, $4, $4) RETURNING id",
                 name, hostname, device, Us(now))[0][0]
             .as<int64_t>();
    return absl::OkStatus();
  }));
  return id;
}

absl::StatusOr<std::vector<v1::WorkerInfo>> PgStore::ListWorkers(
    absl::Time alive_since) {
  std::vector<v1::WorkerInfo> workers;
  RETURN_IF_ERROR(Transact("list_workers", [&](Txn& t) -> absl::Status {
    workers.clear();
    const auto r = t.work.exec(
        "SELECT id, name, hostname, device, last_seen_us, current_task "
        "FROM workers ORDER BY id");
    for (const auto& row : r) {
      v1::WorkerInfo info;
      info.set_worker_id(row[0].as<int64_t>());
      info.set_name(row[1].as<std::string>());
      info.set_hostname(row[2].as<std::string>());
      info.set_device(row[3].as<std::string>());
      const int64_t seen = row[4].as<int64_t>();
      info.set_last_seen_unix(static_cast<double>(seen) / 1e6);
      info.set_alive(seen >= Us(alive_since));
      info.set_current_task_id(row[5].as<int64_t>());
      workers.push_back(std::move(info));
    }
    return absl::OkStatus();
  }));
  return workers;
}

absl::StatusOr<std::optional<Lease>> PgStore::LeaseTask(
    int64_t worker_id, absl::Time now, absl::Time deadline,
    const std::vector<std::string>& preferred_keys) {
  ASSIGN_OR_RETURN(std::vector<Lease> leases,
                   LeaseTasks(worker_id, now, deadline, preferred_keys, 1));
  if (leases.empty()) return std::nullopt;
  return std::move(leases.front());
}

// The scan of the ready index starts where the last one found the first
// ready task, not at the index's head: leased and finished tasks leave dead
// entries there that every scan would step over (and cannot always mark dead
// while the page keeps changing) until a vacuum, so that a lease cost more
// with every task leased since. From the head again when the scan comes up
// short (tasks requeued, or made ready by a completion, below the mark), and
// at least once a second, so no ready task waits longer than that for a scan
// to reach it. Returns where to scan from (0: the head).
int64_t PgStore::ScanFrom(int device, absl::Time now) {
  absl::MutexLock lock(&scan_mu_);
  absl::Time& last_full = last_full_scan_[device];
  if (now - last_full >= absl::Seconds(1) || now < last_full) {
    last_full = now;
    return 0;
  }
  return scan_from_[device];
}

// A scan from `from` found its first ready task at `first_found` (0: none).
void PgStore::ScanFound(int device, int64_t from, int64_t first_found, absl::Time now) {
  absl::MutexLock lock(&scan_mu_);
  if (from == 0) last_full_scan_[device] = now;
  // A scan from the head says where the ready tasks begin; one from the mark
  // only moves it on (a concurrent lease may have moved it further).
  if (from == 0 || first_found > scan_from_[device]) scan_from_[device] = first_found;
}

absl::StatusOr<std::vector<Lease>> PgStore::LeaseTasks(
    int64_t worker_id, absl::Time now, absl::Time deadline,
    const std::vector<std::string>& preferred_keys, int max_tasks) {
  if (preferred_keys.empty()) {
    if (const std::optional<bool> has_gpu = WorkerHasGpu(worker_id)) {
      return LeaseAlone(worker_id, *has_gpu, now, deadline, max_tasks);
    }
  }
  // The keys are hex digits (the coordinator checks).
  const std::string preferred = PgArray(preferred_keys);
  std::vector<Lease> leases;
  RETURN_IF_ERROR(Transact("lease_task", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    leases.clear();
    // The device the worker registered with ("cpu", "cuda:N"); a worker id
    // never changes device, so it is read once per coordinator.
    std::optional<bool> has_gpu = WorkerHasGpu(worker_id);
    if (!has_gpu) {
      const auto r = Run(w, kWorkerDevice, worker_id);
      if (r.empty()) {
        return absl::NotFoundError(
            absl::StrCat("worker ", worker_id, " is not registered; register again"));
      }
      has_gpu = r[0][0].as<std::string>().rfind("cuda", 0) == 0;
      RememberWorkerDevice(worker_id, *has_gpu);
    }
    // Probes whose features this worker holds go first.
    std::vector<int64_t> preferred_ids;
    if (!preferred_keys.empty()) {
      for (const auto& row :
           Run(w, kLeasePreferred[*has_gpu], Us(now), max_tasks, preferred)) {
        preferred_ids.push_back(row[0].as<int64_t>());
      }
    }
    const int device = *has_gpu ? 1 : 0;
    int64_t from = ScanFrom(device, now);
    int64_t first_found = 0;  // the lowest id a scan took (0: none)
    auto take = [&](std::vector<int64_t> locked, int more, int64_t from_id) -> absl::Status {
      std::vector<int64_t> tokens;
      for (size_t k = 0; k < locked.size() + static_cast<size_t>(more); ++k) {
        tokens.push_back(RandomPositiveInt64());
      }
      const size_t before = leases.size();
      ReadLeases(Run(w, kLeaseTake[*has_gpu], Us(now), PgArray(locked), more, worker_id,
                     Us(deadline), PgArray(tokens), from_id),
                 deadline, &leases);
      for (size_t k = before; k < leases.size(); ++k) {
        const int64_t id = leases[k].task_id;
        if (std::find(locked.begin(), locked.end(), id) == locked.end() &&
            (first_found == 0 || id < first_found)) {
          first_found = id;
        }
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(take(preferred_ids, max_tasks - static_cast<int>(preferred_ids.size()), from));
    if (from > 0 && static_cast<int>(leases.size()) < max_tasks) {
      // This transaction's own leases are no longer PENDING to it.
      RETURN_IF_ERROR(take({}, max_tasks - static_cast<int>(leases.size()), 0));
      from = 0;
    }
    ScanFound(device, from, first_found, now);
    std::sort(leases.begin(), leases.end(),
              [](const Lease& a, const Lease& b) { return a.task_id < b.task_id; });
    // Seen now, working on its first task; a worker whose row is gone
    // leases nothing.
    if (Run(w, kLeaseWorker, worker_id, Us(now), leases.empty() ? 0 : leases.front().task_id)
            .empty()) {
      ForgetWorkerDevice(worker_id);
      leases.clear();
      return absl::NotFoundError(
          absl::StrCat("worker ", worker_id, " is not registered; register again"));
    }
    return absl::OkStatus();
  }));
  return leases;
}

// A lease without preferred keys, by a worker whose device is known: one
// statement that commits by itself (three round trips fewer than in a
// transaction: BEGIN, the worker's row, COMMIT), and a second when the scan
// from the mark comes up short or set miscounted tasks right. The second
// one's failure does not undo the first's leases: they are answered. A
// statement whose connection breaks is not retried (TransactAs): it may have
// leased, and a retry would lease more while those wait to expire.
absl::StatusOr<std::vector<Lease>> PgStore::LeaseAlone(int64_t worker_id, bool has_gpu,
                                                       absl::Time now, absl::Time deadline,
                                                       int max_tasks) {
  const int device = has_gpu ? 1 : 0;
  std::vector<Lease> leases;
  int64_t first_found = 0;  // the lowest id leased (0: none)
  int64_t recounted = 0;
  auto take = [&](const char* op, int more, int64_t from_id) -> absl::Status {
    std::vector<Lease> taken;
    RETURN_IF_ERROR(TransactAs<Autocommit>(op, [&](Autocommit& t) -> absl::Status {
      taken.clear();
      std::vector<int64_t> tokens;
      for (int k = 0; k < more; ++k) tokens.push_back(RandomPositiveInt64());
      const auto r = Run(t.work, kLeaseAlone[device], Us(now), more, worker_id, Us(deadline),
                         PgArray(tokens), from_id, first_found);
      if (r.empty()) {  // no row of the worker's: nothing was leased
        ForgetWorkerDevice(worker_id);
        return absl::NotFoundError(
            absl::StrCat("worker ", worker_id, " is not registered; register again"));
      }
      recounted = ReadLeases(r, deadline, &taken);
      return absl::OkStatus();
    }));
    for (auto& l : taken) {
      if (first_found == 0 || l.task_id < first_found) first_found = l.task_id;
      leases.push_back(std::move(l));
    }
    return absl::OkStatus();
  };
  int64_t from = ScanFrom(device, now);
  RETURN_IF_ERROR(take("lease_task", max_tasks, from));
  if ((from > 0 || recounted > 0) && static_cast<int>(leases.size()) < max_tasks) {
    const absl::Status s = take("lease_task_again", max_tasks - static_cast<int>(leases.size()), 0);
    if (!s.ok() && leases.empty()) return s;
    if (s.ok()) from = 0;
  }
  ScanFound(device, from, first_found, now);
  std::sort(leases.begin(), leases.end(),
            [](const Lease& a, const Lease& b) { return a.task_id < b.task_id; });
  return leases;
}

std::optional<bool> PgStore::WorkerHasGpu(int64_t worker_id) {
  absl::MutexLock lock(&devices_mu_);
  const auto it = worker_gpu_.find(worker_id);
  if (it == worker_gpu_.end()) return std::nullopt;
  return it->second;
}

void PgStore::RememberWorkerDevice(int64_t worker_id, bool has_gpu) {
  absl::MutexLock lock(&devices_mu_);
  // Bounded: workers register anew on every start.
  if (worker_gpu_.size() >= 100000) worker_gpu_.clear();
  worker_gpu_[worker_id] = has_gpu;
}

void PgStore::ForgetWorkerDevice(int64_t worker_id) {
  absl::MutexLock lock(&devices_mu_);
  worker_gpu_.erase(worker_id);
}

absl::StatusOr<HeartbeatOutcome> PgStore::Heartbeat(
    int64_t worker_id, int64_t task_id, int64_t token, int64_t work_done,
    int64_t work_total, absl::Time now, absl::Time new_deadline) {
  HeartbeatOutcome outcome;
  RETURN_IF_ERROR(Transact("heartbeat", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    outcome = HeartbeatOutcome{};
    const auto r = Run(w, kHeartbeatRead, task_id);
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("task ", task_id, " not found"));
    }
    const std::string state = r[0][0].as<std::string>();
    const int64_t current = r[0][1].as<int64_t>();
    if (current == token && r[0][2].as<int64_t>() != worker_id) {
      // The token alone is not enough: the lease belongs to one worker.
      return absl::FailedPreconditionError(absl::StrCat(
          "lease lost: task ", task_id, " is not leased to worker ", worker_id));
    }
    Run(w, kWorkerSeen, worker_id, Us(now));
    if (current == token && state == "CANCELLED") {
      outcome.cancelled = true;
      return absl::OkStatus();
    }
    if (current != token || state != "LEASED") {
      return StaleToken(task_id, token, current, state);
    }
    Run(w, kHeartbeatExtend, task_id, Us(new_deadline), work_done, work_total);
    return absl::OkStatus();
  }));
  return outcome;
}

absl::StatusOr<LeasedTask> PgStore::GetLeasedTask(int64_t task_id, int64_t token) {
  LeasedTask leased;
  RETURN_IF_ERROR(Transact("get_leased_task", [&](Txn& t) -> absl::Status {
    const auto r = t.work.exec_params(
        "SELECT state, lease_token, attempts, max_attempts, lease_worker "
        "FROM tasks WHERE id = $1",
        task_id);
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("task ", task_id, " not found"));
    }
    const std::string state = r[0][0].as<std::string>();
    const int64_t current = r[0][1].as<int64_t>();
    if (current != token || state != "LEASED") {
      return StaleToken(task_id, token, current, state);
    }
    leased = LeasedTask{task_id, token, r[0][2].as<int32_t>(),
                        r[0][3].as<int32_t>(), r[0][4].as<int64_t>()};
    return absl::OkStatus();
  }));
  return leased;
}

absl::StatusOr<std::vector<LeasedTask>> PgStore::FindExpiredLeases(absl::Time now,
                                                                   int limit) {
  std::vector<LeasedTask> expired;
  RETURN_IF_ERROR(Transact("find_expired_leases", [&](Txn& t) -> absl::Status {
    expired.clear();
    const auto r = t.work.exec_params(
        "SELECT id, lease_token, attempts, max_attempts, lease_worker FROM tasks "
        "WHERE state = 'LEASED' AND lease_deadline_us < $1 "
        "ORDER BY lease_deadline_us LIMIT $2",
        Us(now), limit);
    for (const auto& row : r) {
      expired.push_back(LeasedTask{row[0].as<int64_t>(), row[1].as<int64_t>(),
                                   row[2].as<int32_t>(), row[3].as<int32_t>(),
                                   row[4].as<int64_t>()});
    }
    return absl::OkStatus();
  }));
  return expired;
}

absl::StatusOr<absl::Duration> PgStore::BridgeOutage(absl::Time now,
                                                     absl::Duration max_gap) {
  absl::Duration bridged;
  RETURN_IF_ERROR(Transact("bridge_outage", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    bridged = absl::ZeroDuration();
    w.exec_params(
        "INSERT INTO lease_clock (id, last_tick_us) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        Us(now));
    const auto r = w.exec("SELECT last_tick_us FROM lease_clock WHERE id = 1 FOR UPDATE");
    const int64_t gap_us = Us(now) - r[0][0].as<int64_t>();
    if (gap_us > absl::ToInt64Microseconds(max_gap)) {
      const auto extended = w.exec_params(
          "UPDATE tasks SET lease_deadline_us = lease_deadline_us + $1 WHERE state = 'LEASED'",
          gap_us);
      bridged = absl::Microseconds(gap_us);
      LogWarning("coordinator", "no coordinator reached the database for ",
                 absl::FormatDuration(bridged), "; ", extended.affected_rows(),
                 " leases extended by that long");
    }
    // Replicas' clocks differ a little: the tick only moves forward.
    w.exec_params("UPDATE lease_clock SET last_tick_us = GREATEST(last_tick_us, $1) WHERE id = 1",
                  Us(now));
    return absl::OkStatus();
  }));
  return bridged;
}

absl::Status PgStore::ReleaseTask(int64_t task_id, int64_t token,
                                  const Release& release, absl::Time now) {
  const int64_t now_us = Us(now);
  return Transact("release_task", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    const auto r = w.exec_params(
        "SELECT state, lease_token, study_id, lease_worker, lease_deadline_us FROM tasks "
        "WHERE id = $1 FOR UPDATE",
        task_id);
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("task ", task_id, " not found"));
    }
    const std::string state = r[0][0].as<std::string>();
    const int64_t current = r[0][1].as<int64_t>();
    if (current != token || state != "LEASED") {
      return StaleToken(task_id, token, current, state);
    }
    if (release.only_if_expired_at &&
        r[0][4].as<int64_t>() >= Us(*release.only_if_expired_at)) {
      return absl::FailedPreconditionError(
          absl::StrCat("task ", task_id, ": lease was renewed; not expired"));
    }
    const int64_t study_id = r[0][2].as<int64_t>();
    w.exec_params(
        "UPDATE workers SET current_task = 0 WHERE id = $1 AND current_task = $2",
        r[0][3].as<int64_t>(), task_id);
    if (!release.fail) {
      w.exec_params(
          "UPDATE tasks SET state = 'PENDING', lease_worker = 0, "
          "not_before_us = $2, last_error = $3, "
          "attempts = GREATEST(attempts - $4, 0) WHERE id = $1",
          task_id, Us(release.not_before), release.error, release.refund_attempt ? 1 : 0);
      return absl::OkStatus();
    }
    w.exec_params(
        "UPDATE tasks SET state = 'FAILED', lease_worker = 0, finished_us = $2, "
        "last_error = $3 WHERE id = $1",
        task_id, now_us, release.error);
    std::set<int64_t> studies = FailDependents(w, task_id, release.error, now_us);
    studies.insert(study_id);
    for (int64_t s : studies) RefreshStudy(w, s, now_us);
    return absl::OkStatus();
  });
}

namespace {

// A task as a completion reads it, locked.
struct CompletingTask {
  std::string state;
  int64_t token = 0;
  int64_t study_id = 0;
  std::string kind;
  std::string cache_key;
  int64_t lease_worker = 0;
  std::string spec;
};

// Results must be of this task: its model, dataset and protocol (a forged
// or confused worker cannot file results under other names). A probe
// completes with at least one result, an extraction with none.
absl::Status CheckResultsBelong(int64_t task_id, const CompletingTask& task,
                                const std::vector<v1::ProbeResult>& results) {
  if (task.kind == "EXTRACT") {
    if (results.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("task ", task_id, ": an extraction completes without results"));
  }
  v1::TaskSpec spec;
  if (!spec.ParseFromString(task.spec)) {
    return absl::DataLossError(absl::StrCat("task ", task_id, ": spec does not parse"));
  }
  if (results.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("task ", task_id, ": a probe completes with at least one result"));
  }
  for (const auto& result : results) {
    if (result.model() != spec.model().name() || result.dataset() != spec.dataset().name() ||
        result.protocol() != spec.protocol().name()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "task ", task_id, " is ", spec.protocol().name(), " of ", spec.model().name(), " on ",
          spec.dataset().name(), "; a result for ", result.protocol(), " of ", result.model(),
          " on ", result.dataset(), " does not belong to it"));
    }
  }
  return absl::OkStatus();
}

// An extraction's chunks must be the ones the worker reports storing, and
// must tile the rows: each starts where the previous one ended.
absl::Status CheckChunks(pqxx::work& w, int64_t task_id, const std::string& cache_key,
                         const ExtractCompletion& extract) {
  const auto c = w.exec_params(
      "SELECT count(*), COALESCE(sum(num_rows), 0), COALESCE(min(dim), 0), "
      "COALESCE(max(dim), 0), COALESCE(max(chunk_index), -1), "
      "(SELECT count(*) FROM (SELECT row_start, COALESCE(sum(num_rows) OVER ("
      "ORDER BY chunk_index ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) "
      "AS expected FROM feature_chunks WHERE cache_key = $1) x WHERE row_start <> expected) "
      "FROM feature_chunks WHERE cache_key = $1",
      cache_key);
  const int64_t chunks = c[0][0].as<int64_t>();
  const int64_t rows = c[0][1].as<int64_t>();
  const int min_dim = c[0][2].as<int>();
  const int max_dim = c[0][3].as<int>();
  const int64_t max_index = c[0][4].as<int64_t>();
  const int64_t gaps = c[0][5].as<int64_t>();
  if (gaps != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", task_id, ": ", gaps, " feature chunks do not start where the previous chunk ends"));
  }
  if (chunks < extract.chunks && max_index < extract.chunks) {
    // Chunks the worker stored are gone (a database crash lost their
    // asynchronous commits): the extraction must run again, resuming after
    // the chunks that survived.
    return absl::AbortedError(absl::StrCat(
        "task ", task_id, ": the feature cache holds ", chunks, " of the ", extract.chunks,
        " chunks the worker stored; the extraction will run again for the rest"));
  }
  if (chunks != extract.chunks || rows != extract.rows || max_index != chunks - 1 ||
      min_dim != max_dim || min_dim != extract.dim || chunks == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", task_id, ": the feature cache holds ", chunks, " chunks with ", rows,
        " rows of width ", min_dim, "..", max_dim, "; the worker reported ", extract.chunks,
        " chunks, ", extract.rows, " rows of width ", extract.dim));
  }
  return absl::OkStatus();
}

// Results whose artefact went up in parts: every part of 0..n-1 stored under
// this lease, nothing inline beside them.
absl::Status CheckArtifactParts(pqxx::work& w, const TaskCompletion& c) {
  for (size_t i = 0; i < c.results.size(); ++i) {
    const v1::ProbeResult& r = c.results[i];
    if (r.artifact_parts() == 0) continue;
    if (r.artifact_parts() < 0 || r.artifact_parts() > Store::kMaxArtifactParts ||
        !r.artifact().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "task ", c.task_id, ", result ", i, ": artifact_parts ", r.artifact_parts(),
          r.artifact().empty() ? "" : " beside an inline artefact", " (at most ",
          Store::kMaxArtifactParts, " parts)"));
    }
    const auto n = w.exec_params(
        "SELECT count(*) FROM artifact_parts WHERE task_id = $1 AND lease_token = $2 "
        "AND result_index = $3 AND part < $4",
        c.task_id, c.token, static_cast<int>(i), r.artifact_parts());
    if (n[0][0].as<int64_t>() != r.artifact_parts()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "task ", c.task_id, ", result ", i, ": ", n[0][0].as<int64_t>(), " of the ",
          r.artifact_parts(), " artefact parts were stored under this lease"));
    }
  }
  return absl::OkStatus();
}

// Completes a batch inside one transaction, with a fixed number of
// statements for the probes however many there are: the tasks are locked
// and read with one statement (in id order, as leases lock them), every
// check comes before the first write so that a refused task writes
// nothing, and the accepted ones are written together. Extractions add two
// statements each (their chunks are checked one cache at a time).
std::vector<absl::Status> CompleteBatch(pqxx::work& w, const std::vector<TaskCompletion>& tasks,
                                        int64_t now_us) {
  std::vector<absl::Status> outcomes(tasks.size());
  std::vector<int64_t> ids;
  for (const TaskCompletion& c : tasks) ids.push_back(c.task_id);
  std::map<int64_t, CompletingTask> rows;
  for (const auto& row : Run(w, kCompleteRead, PgArray(ids))) {
    CompletingTask& t = rows[row[0].as<int64_t>()];
    t.state = row[1].as<std::string>();
    t.token = row[2].as<int64_t>();
    t.study_id = row[3].as<int64_t>();
    t.kind = row[4].as<std::string>();
    t.cache_key = row[5].as<std::string>();
    t.lease_worker = row[6].as<int64_t>();
    t.spec = FromBytes(row[7]);
  }
  std::vector<size_t> accepted;
  std::set<int64_t> seen;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const TaskCompletion& c = tasks[i];
    const auto it = rows.find(c.task_id);
    if (it == rows.end()) {
      outcomes[i] = absl::NotFoundError(absl::StrCat("task ", c.task_id, " not found"));
      continue;
    }
    if (!seen.insert(c.task_id).second) {
      outcomes[i] = absl::InvalidArgumentError(
          absl::StrCat("task ", c.task_id, " is completed twice in one call"));
      continue;
    }
    const CompletingTask& t = it->second;
    if (t.token == c.token && t.state == "SUCCEEDED") continue;  // a retried completion
    if (t.token != c.token || t.state != "LEASED") {
      outcomes[i] = StaleToken(c.task_id, c.token, t.token, t.state);
      continue;
    }
    outcomes[i] = CheckResultsBelong(c.task_id, t, c.results);
    if (outcomes[i].ok()) outcomes[i] = CheckArtifactParts(w, c);
    if (outcomes[i].ok() && t.kind == "EXTRACT") {
      outcomes[i] = CheckChunks(w, c.task_id, t.cache_key, c.extract);
    }
    if (outcomes[i].ok()) accepted.push_back(i);
  }
  if (accepted.empty()) return outcomes;

  std::set<int64_t> studies;
  std::vector<int64_t> done, workers, r_study, r_task;
  std::vector<std::string> r_model, r_dataset, r_protocol, r_variant, r_bytes;
  std::vector<double> r_top1, r_top5, r_mpc;
  for (size_t i : accepted) {
    const TaskCompletion& c = tasks[i];
    const CompletingTask& t = rows.at(c.task_id);
    done.push_back(c.task_id);
    workers.push_back(t.lease_worker);
    studies.insert(t.study_id);
    if (t.kind == "EXTRACT") {
      w.exec_params(
          "UPDATE feature_caches SET complete = true, num_rows = $2, dim = $3, "
          "num_chunks = $4, completed_us = $5 WHERE cache_key = $1",
          t.cache_key, c.extract.rows, c.extract.dim, c.extract.chunks, now_us);
    }
    bool joined_parts = false;
    for (size_t index = 0; index < c.results.size(); ++index) {
      v1::ProbeResult stored = c.results[index];
      stored.set_task_id(c.task_id);
      stored.set_study_id(t.study_id);
      // Named only when it keeps an artefact (most results keep none).
      auto name = [&stored] {
        return absl::StrCat(stored.model(), "/", stored.dataset(), "/", stored.protocol(), "/",
                            stored.variant(), stored.subset().empty() ? "" : "/",
                            stored.subset());
      };
      if (!stored.artifact().empty()) {
        // Heads live apart from the results, so listing results stays cheap.
        const auto a = w.exec_params(
            "INSERT INTO artifacts (study_id, task_id, name, content_type, data, created_us) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            t.study_id, c.task_id, name(), std::string("application/x-sslbench-head"),
            Bytes(stored.artifact()), now_us);
        stored.set_artifact_id(a[0][0].as<int64_t>());
        stored.clear_artifact();
      } else if (stored.artifact_parts() > 0) {
        // Joined in the database, in part order (checked complete above).
        const auto a = w.exec_params(
            "INSERT INTO artifacts (study_id, task_id, name, content_type, data, created_us) "
            "SELECT $1, $2, $3, $4, string_agg(data, ''::bytea ORDER BY part), $5 "
            "FROM artifact_parts WHERE task_id = $2 AND lease_token = $6 "
            "AND result_index = $7 AND part < $8 RETURNING id",
            t.study_id, c.task_id, name(), std::string("application/x-sslbench-head"), now_us,
            c.token, static_cast<int>(index), stored.artifact_parts());
        stored.set_artifact_id(a[0][0].as<int64_t>());
        stored.clear_artifact_parts();
        joined_parts = true;
      }
      r_study.push_back(t.study_id);
      r_task.push_back(c.task_id);
      r_model.push_back(stored.model());
      r_dataset.push_back(stored.dataset());
      r_protocol.push_back(stored.protocol());
      r_variant.push_back(stored.variant());
      r_top1.push_back(stored.top1());
      r_top5.push_back(stored.top5());
      r_mpc.push_back(stored.mean_per_class());
      r_bytes.push_back(Hex(stored.SerializeAsString()));
    }
    // The parts are joined; those of earlier attempts go too.
    if (joined_parts) w.exec_params("DELETE FROM artifact_parts WHERE task_id = $1", c.task_id);
  }
  Run(w, kCompleteWrite, PgArray(done), now_us, PgArray(workers), PgArray(r_study),
      PgArray(r_task), PgArray(r_model), PgArray(r_dataset), PgArray(r_protocol),
      PgArray(r_variant), PgArray(r_top1), PgArray(r_top5), PgArray(r_mpc), PgArray(r_bytes));
  for (int64_t study : studies) RefreshStudy(w, study, now_us);  // in id order
  return outcomes;
}

}  // namespace

absl::Status PgStore::CompleteTask(int64_t task_id, int64_t token,
                                   const std::vector<v1::ProbeResult>& results,
                                   const ExtractCompletion& extract,
                                   absl::Time now) {
  ASSIGN_OR_RETURN(std::vector<absl::Status> outcomes,
                   CompleteTasks({TaskCompletion{task_id, token, results, extract}}, now));
  return outcomes.front();
}

absl::StatusOr<std::vector<absl::Status>> PgStore::CompleteTasks(
    const std::vector<TaskCompletion>& tasks, absl::Time now) {
  const int64_t now_us = Us(now);
  std::vector<absl::Status> outcomes;
  RETURN_IF_ERROR(Transact("complete_tasks", [&](Txn& t) -> absl::Status {
    outcomes = CompleteBatch(t.work, tasks, now_us);
    return absl::OkStatus();
  }));
  return outcomes;
}

absl::StatusOr<v1::Artifact> PgStore::GetArtifact(int64_t artifact_id, int64_t offset,
                                                  int64_t max_bytes) {
  v1::Artifact artifact;
  RETURN_IF_ERROR(Transact("get_artifact", [&](Txn& t) -> absl::Status {
    const auto r = t.work.exec_params(
        "SELECT study_id, task_id, name, content_type, octet_length(data) FROM artifacts "
        "WHERE id = $1",
        artifact_id);
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("artifact ", artifact_id, " not found"));
    }
    const int64_t total = r[0][4].as<int64_t>();
    if (max_bytes == 0 && total > kMaxWholeArtifact) {
      return absl::OutOfRangeError(absl::StrCat(
          "artifact ", artifact_id, " holds ", total, " bytes, more than one answer carries (",
          kMaxWholeArtifact, "): read it in pages (offset, max_bytes)"));
    }
    const int64_t begin = std::min(offset, total);
    const int64_t length = max_bytes == 0 ? total - begin : std::min(max_bytes, total - begin);
    artifact.set_artifact_id(artifact_id);
    artifact.set_study_id(r[0][0].as<int64_t>());
    artifact.set_task_id(r[0][1].as<int64_t>());
    artifact.set_name(r[0][2].as<std::string>());
    artifact.set_content_type(r[0][3].as<std::string>());
    artifact.set_offset(begin);
    artifact.set_total_bytes(total);
    if (length > 0) {
      // Stored uncompressed out of line: only the pages asked for are read.
      const auto d = t.work.exec_params(
          "SELECT substring(data FROM $2 FOR $3) FROM artifacts WHERE id = $1", artifact_id,
          begin + 1, length);
      artifact.set_data(FromBytes(d[0][0]));
    } else {
      artifact.clear_data();
    }
    return absl::OkStatus();
  }));
  return artifact;
}

absl::Status PgStore::PutArtifactPart(const v1::PutArtifactPartRequest& part) {
  if (part.result_index() < 0 || part.result_index() >= kMaxSpecListEntries ||
      part.part() < 0 || part.part() >= kMaxArtifactParts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "artifact part ", part.part(), " of result ", part.result_index(), ": parts are 0..",
        kMaxArtifactParts - 1, " of a result in 0..", kMaxSpecListEntries - 1));
  }
  if (part.data().empty() || static_cast<int64_t>(part.data().size()) > kMaxArtifactPartBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "artifact part ", part.part(), ": ", part.data().size(), " bytes (1 to ",
        kMaxArtifactPartBytes, ")"));
  }
  return Transact("put_artifact_part", [&](Txn& t) -> absl::Status {
    RETURN_IF_ERROR(CheckLease(t.work, part.task_id(), part.lease_token()));
    t.work.exec_params(
        "INSERT INTO artifact_parts (task_id, lease_token, result_index, part, data) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (task_id, lease_token, result_index, part) "
        "DO UPDATE SET data = EXCLUDED.data",
        part.task_id(), part.lease_token(), part.result_index(), part.part(), Bytes(part.data()));
    return absl::OkStatus();
  });
}

absl::StatusOr<absl::flat_hash_map<std::string, int64_t>> PgStore::CountTasksByState(bool open_only) {
  absl::flat_hash_map<std::string, int64_t> counts;
  RETURN_IF_ERROR(Transact("count_tasks", [&](Txn& t) -> absl::Status {
    counts.clear();
    const auto r = t.work.exec(
        open_only ? "SELECT 'PENDING', count(*) FROM tasks WHERE state = 'PENDING' UNION ALL "
                    "SELECT 'LEASED', count(*) FROM tasks WHERE state = 'LEASED'"
                  : "SELECT state, count(*) FROM tasks GROUP BY state");
    for (const auto& row : r) counts[row[0].as<std::string>()] = row[1].as<int64_t>();
    return absl::OkStatus();
  }));
  return counts;
}

absl::StatusOr<v1::StudySpec> PgStore::GetStudySpec(int64_t study_id) {
  v1::StudySpec spec;
  RETURN_IF_ERROR(Transact("get_study_spec", [&](Txn& t) -> absl::Status {
    spec.Clear();
    const auto r = t.work.exec_params("SELECT spec FROM studies WHERE id = $1", study_id);
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("study ", study_id, " not found"));
    }
    if (!spec.ParseFromString(FromBytes(r[0][0]))) {
      return absl::DataLossError(
          absl::StrCat("study ", study_id, ": stored spec does not parse"));
    }
    return absl::OkStatus();
  }));
  return spec;
}

}  // namespace sslbench::server
