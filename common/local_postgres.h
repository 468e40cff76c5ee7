#pragma once
// A private PostgreSQL cluster in a folder: used by `sslbench up`/`demo` and
// by the tests. PostgreSQL refuses to run as root, so when running as root
// the cluster is created and run as the `postgres` system user, in a folder
// that user owns.

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sslbench {

struct LocalPostgresOptions {
  std::string dir;          // created if absent; holds data/, the socket, log
  int port = 0;             // 0: choose a free loopback port
  bool durable = true;      // false: fsync off (tests)
  std::string extra_options;  // more server options ("-c name=value ..."), for benchmarks
};

// OK when user `uid` can pass through every folder above `dir`;
// FAILED_PRECONDITION naming the first that it cannot. Start checks this for
// the `postgres` user, which runs the server when we are root.
absl::Status CheckServerCanReach(const std::string& dir, uid_t uid);

class LocalPostgres {
 public:
  // Initialises the cluster on first use (initdb) and starts it, waiting until
  // it accepts connections. Reuses an existing cluster in `dir`. FAILED_PRECONDITION
  // with a fix when the PostgreSQL server binaries are not installed;
  // INTERNAL with the server log's tail when start fails.
  static absl::StatusOr<std::unique_ptr<LocalPostgres>> Start(
      const LocalPostgresOptions& options);
  // Stops the server (fast shutdown) unless Release() was called.
  ~LocalPostgres();

  // libpq connection string for database `dbname` as the cluster's superuser.
  // It names the password file (mode 600), never the password.
  std::string ConnInfo(const std::string& dbname = "postgres") const;
  int port() const { return port_; }
  // The libpq password file of the superuser ("" for a cluster made before
  // passwords, which trusts local connections).
  const std::string& PassFile() const { return passfile_; }
  // Creates database `name` if absent.
  absl::Status CreateDatabase(const std::string& name);
  // Stops / starts the server on the same port (tests of database restarts).
  absl::Status Stop();
  absl::Status Restart();
  // The server's process id (from postmaster.pid) while it runs; 0 when it
  // does not (stopped, or it died).
  pid_t ServerPid() const;
  // The last lines of the server's log.
  std::string LogTail(int lines = 20) const;

 private:
  LocalPostgres() = default;
  absl::Status StartServer();

  LocalPostgresOptions options_;
  std::string bin_dir_;
  std::string data_dir_;
  std::string run_as_;  // "" or "postgres"
  std::string passfile_;  // the superuser's password, for libpq; "" with trust
  int port_ = 0;
  bool running_ = false;
};

}  // namespace sslbench
