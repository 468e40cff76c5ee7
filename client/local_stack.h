#pragma once
// The local stack of `sslbench up` and `sslbench demo`: a private PostgreSQL,
// one coordinator and N workers as child processes, all under one state
// folder (pg/, logs/, coordinator.addr).

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/local_postgres.h"
#include "common/subprocess.h"

namespace sslbench::client {

struct LocalStackOptions {
  std::string state_dir = ".sslbench";
  int workers = 1;
  int worker_threads = 1;
  int port = 0;          // the coordinator's; 0: any free loopback port
  std::string bin_dir;   // holds sslbench-coordinator/-worker; "": ExecutableDir()
  std::string blob_store = "postgres";  // the coordinator's --blob_store
  absl::Duration start_timeout = absl::Seconds(120);
  // A worker that exits is started again after this, doubled for each exit in
  // a row (up to restart_backoff_max); a worker that ran for 5 minutes starts
  // the count afresh.
  absl::Duration restart_backoff = absl::Seconds(1);
  absl::Duration restart_backoff_max = absl::Minutes(1);
  // Polled while waiting for the coordinator; true aborts the start
  // (CANCELLED), e.g. on a pending SIGINT.
  std::function<bool()> interrupted;
};

// Folder of the running executable (from /proc/self/exe).
absl::StatusOr<std::string> ExecutableDir();
// `bin_dir`/`name` if it is an executable file; FAILED_PRECONDITION naming it
// and how to build it otherwise.
absl::StatusOr<std::string> FindSibling(const std::string& bin_dir,
                                        const std::string& name);
// The last `lines` lines of a text file ("" if unreadable).
std::string LogTail(const std::string& path, int lines = 20);

// Not thread-safe; one thread drives it.
class LocalStack {
 public:
  // Starts PostgreSQL in STATE/pg (durable), creates database "sslbench",
  // starts the coordinator and waits until it listens (its port file), then
  // starts the workers, and writes STATE/coordinator.addr. Progress goes to
  // stderr. On error, whatever was started is stopped again.
  static absl::StatusOr<std::unique_ptr<LocalStack>> Start(LocalStackOptions options);
  // Shutdown().
  ~LocalStack();

  const std::string& address() const { return address_; }     // 127.0.0.1:PORT
  // The stack runs with authentication on: this admin token (also in
  // STATE/token, mode 600) for the CLI; the workers use STATE/worker.token.
  const std::string& admin_token() const { return admin_token_; }
  // The CA of the coordinator's TLS certificate (STATE/tls/ca.pem).
  std::string ca_path() const { return state_dir_ + "/tls/ca.pem"; }
  std::string conninfo() const;
  const std::string& state_dir() const { return state_dir_; }  // absolute
  std::string log_dir() const { return state_dir_ + "/logs"; }

  // Supervises the children; call it every second or so. A worker that
  // exited is reported (its exit status and log tail on stderr) and started
  // again after its backoff; the coordinator or PostgreSQL not running is an
  // INTERNAL error naming it, with the tail of its log.
  absl::Status CheckChildren();
  // The workers' process ids (0 for one waiting to be restarted).
  std::vector<pid_t> worker_pids() const;
  // PostgreSQL's server process (0 when it does not run).
  pid_t postgres_pid() const { return postgres_ ? postgres_->ServerPid() : 0; }
  // How many times workers were started again.
  int worker_restarts() const { return worker_restarts_; }
  // Stops the workers, the coordinator, then PostgreSQL; removes
  // coordinator.addr. Idempotent.
  absl::Status Shutdown();

 private:
  struct Child {
    std::string name;
    std::string log_path;
    std::vector<std::string> argv;
    std::unique_ptr<Subprocess> process;  // null while waiting to restart
    absl::Time started;
    int exits_in_a_row = 0;
    absl::Time restart_at;
  };

  explicit LocalStack(LocalStackOptions options) : options_(std::move(options)) {}
  absl::Status StartAll();
  // Writes STATE/tokens (the coordinator's bootstrap file), STATE/token and
  // STATE/worker.token, reusing the tokens of an earlier run.
  absl::Status PrepareTokens();
  absl::StatusOr<Child> StartChild(const std::string& name,
                                   const std::vector<std::string>& argv);
  absl::StatusOr<int> WaitForPortFile(const std::string& path, Child& coordinator);

  LocalStackOptions options_;
  std::string state_dir_;
  std::string address_;
  std::string admin_token_;
  std::unique_ptr<LocalPostgres> postgres_;
  std::vector<Child> coordinator_;  // zero or one
  std::vector<Child> workers_;
  bool shut_down_ = false;
  int worker_restarts_ = 0;
};

}  // namespace sslbench::client
