// sslbench-coordinator: accepts studies, plans task graphs, leases tasks to
// workers and keeps every state in PostgreSQL.

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/malloc_tuning.h"
#include "server/coordinator_server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:7070", "gRPC address; port 0 picks a free port");
ABSL_FLAG(std::string, database, "",
          "libpq connection string (default: $SSLBENCH_DATABASE_URL)");
ABSL_FLAG(std::string, database_password_file, "",
          "file holding the database password (not readable by others; default: "
          "$SSLBENCH_DATABASE_PASSWORD_FILE); libpq's PGPASSFILE and ~/.pgpass work too. A "
          "password inside --database is refused: every local user can read command lines");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9464",
          "Prometheus /metrics address; empty disables it");
ABSL_FLAG(std::string, port_file, "",
          "write the bound gRPC port here once serving (for port 0)");
ABSL_FLAG(int, lease_seconds, 30, "lease duration; workers heartbeat well within it");
ABSL_FLAG(int, heartbeat_ms, 5000, "heartbeat interval asked of workers");
ABSL_FLAG(int64_t, max_tasks_per_study, 250000,
          "larger studies are refused at submit (split them)");
ABSL_FLAG(std::string, auth, "off",
          "required: every call needs a bearer token with a role (see `sslbench tokens`); "
          "off: no authentication (a warning is logged)");
ABSL_FLAG(std::string, bootstrap_tokens, "",
          "file of tokens registered at start, lines \"ROLE NAME TOKEN\" (mode 600), e.g. "
          "the first admin token from a secret");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA: require client certificates it signed (mutual TLS)");
ABSL_FLAG(int, token_cache_seconds, 10, "how long a token lookup is cached (revocation delay)");
ABSL_FLAG(int, max_queued_calls, 1000,
          "calls waiting for an executor thread beyond this are refused (RESOURCE_EXHAUSTED)");
ABSL_FLAG(int, database_wait_seconds, 600,
          "at start, wait this long for PostgreSQL (retrying with backoff) before giving up; "
          "0: fail at once");
ABSL_FLAG(int, malloc_arenas, 2,
          "glibc malloc arenas (0: glibc's default, 8 per core; $MALLOC_ARENA_MAX wins): "
          "chunks of megabytes freed on many threads otherwise stay in per-thread arenas "
          "(idle RSS after 2 GiB of chunks: 121 MB with the default, ~50 MB with 2); "
          "chunk-sized buffers are served from the heap, trimmed every 10 s");
ABSL_FLAG(int, executor_threads, 8, "threads running database work for RPCs");
ABSL_FLAG(int, db_connections, 8, "pooled database connections");
ABSL_FLAG(std::string, blob_store, "postgres",
          "where feature chunk bytes go: postgres (a table of --database) or "
          "file:///PATH (a folder every coordinator replica mounts)");

namespace {

// Whether a libpq connection string (key=value or URI) carries a password.
bool HasPassword(const std::string& conninfo) {
  if (absl::StartsWith(conninfo, "postgres://") || absl::StartsWith(conninfo, "postgresql://")) {
    const absl::string_view rest = absl::string_view(conninfo).substr(conninfo.find("//") + 2);
    const absl::string_view authority = rest.substr(0, rest.find_first_of("/?"));
    const size_t at = authority.rfind('@');
    return (at != absl::string_view::npos &&
            authority.substr(0, at).find(':') != absl::string_view::npos) ||
           conninfo.find("password=") != std::string::npos;
  }
  for (absl::string_view word : absl::StrSplit(conninfo, absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
    if (absl::StartsWith(absl::StripLeadingAsciiWhitespace(word), "password")) return true;
  }
  return false;
}

// The password in `path`, for libpq (through PGPASSWORD, which only this
// process and root can read), or why not.
absl::Status UsePasswordFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("database password file ", path, " not found"));
  }
  if ((st.st_mode & 007) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "database password file ", path, " is readable by others; chmod o-rwx it"));
  }
  if (st.st_size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("database password file ", path, " holds ", st.st_size, " bytes, not a password"));
  }
  std::ifstream in(path);
  std::string password((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) {
    password.pop_back();
  }
  if (password.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("database password file ", path, " is empty"));
  }
  setenv("PGPASSWORD", password.c_str(), 1);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sslbench-coordinator --database=CONNINFO [--listen=HOST:PORT]");
  absl::ParseCommandLine(argc, argv);
  // Before any thread starts allocating.
  sslbench::TuneMallocForLargeBuffers(absl::GetFlag(FLAGS_malloc_arenas));
  // Debian builds Abseil with the mutex deadlock detector on: a lock-order
  // graph updated on every lock (2.6% of the load bench's CPU in perf). The
  // tests keep it; the programs run without it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block the termination signals before any thread starts, so only the
  // sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  sslbench::server::CoordinatorServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.database = absl::GetFlag(FLAGS_database);
  options.blob_store = absl::GetFlag(FLAGS_blob_store);
  if (HasPassword(options.database)) {
    std::fprintf(stderr,
                 "sslbench-coordinator: --database carries a password, which every local user "
                 "can read on the command line; put it in --database_password_file, PGPASSFILE "
                 "or $SSLBENCH_DATABASE_URL instead\n");
    return 64;
  }
  std::string password_file = absl::GetFlag(FLAGS_database_password_file);
  if (password_file.empty()) {
    const char* env = std::getenv("SSLBENCH_DATABASE_PASSWORD_FILE");
    if (env) password_file = env;
  }
  if (!password_file.empty()) {
    if (absl::Status s = UsePasswordFile(password_file); !s.ok()) {
      std::fprintf(stderr, "sslbench-coordinator: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (options.database.empty()) {
    const char* env = std::getenv("SSLBENCH_DATABASE_URL");
    if (env) options.database = env;
  }
  if (options.database.empty()) {
    std::fprintf(stderr,
                 "sslbench-coordinator: no database: pass --database=CONNINFO or "
                 "set SSLBENCH_DATABASE_URL\n");
    return 2;
  }
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.policy.lease_duration = absl::Seconds(absl::GetFlag(FLAGS_lease_seconds));
  options.policy.heartbeat_interval = absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_ms));
  options.executor_threads = absl::GetFlag(FLAGS_executor_threads);
  options.max_queued_calls = absl::GetFlag(FLAGS_max_queued_calls);
  options.plan_limits.max_tasks = absl::GetFlag(FLAGS_max_tasks_per_study);
  const std::string auth = absl::GetFlag(FLAGS_auth);
  if (auth != "off" && auth != "required") {
    std::fprintf(stderr, "sslbench-coordinator: --auth must be off or required, not \"%s\"\n",
                 auth.c_str());
    return 64;
  }
  options.auth.required = auth == "required";
  options.auth.cache_ttl = absl::Seconds(absl::GetFlag(FLAGS_token_cache_seconds));
  options.bootstrap_tokens_file = absl::GetFlag(FLAGS_bootstrap_tokens);
  options.tls.cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key = absl::GetFlag(FLAGS_tls_key);
  options.tls.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (options.tls.cert.empty() != options.tls.key.empty()) {
    std::fprintf(stderr, "sslbench-coordinator: --tls_cert and --tls_key go together\n");
    return 64;
  }
  options.db_connections = absl::GetFlag(FLAGS_db_connections);

  // PostgreSQL may start after the coordinator (a first deploy, a database
  // restart): retry with backoff instead of exiting into a crash loop. Until
  // then nothing listens, so readiness fails. SIGTERM ends the wait.
  const absl::Time give_up = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_database_wait_seconds));
  absl::Duration backoff = absl::Seconds(1);
  auto server = sslbench::server::CoordinatorServer::Start(options);
  while (!server.ok() && absl::IsUnavailable(server.status()) && absl::Now() + backoff < give_up) {
    sslbench::LogWarning("coordinator", "cannot start yet: ", server.status().message(),
                         "; retrying in ", absl::FormatDuration(backoff));
    const timespec wait = absl::ToTimespec(backoff);
    if (sigtimedwait(&signals, nullptr, &wait) > 0) {
      sslbench::LogInfo("coordinator", "stopped while waiting for the database");
      return 1;
    }
    backoff = std::min(backoff * 2, absl::Seconds(30));
    server = sslbench::server::CoordinatorServer::Start(options);
  }
  if (!server.ok()) {
    std::fprintf(stderr, "sslbench-coordinator: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << (*server)->port() << "\n";
    }
    std::rename(tmp.c_str(), port_file.c_str());
  }
  int sig = 0;
  sigwait(&signals, &sig);
  sslbench::LogInfo("coordinator", "signal ", sig, ": shutting down");
  (*server)->Shutdown();
  sslbench::LogInfo("coordinator", "stopped");
  return 0;
}
