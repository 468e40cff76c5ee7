#pragma once
// Child processes: run-to-completion commands and long-lived services.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sslbench {

struct CommandResult {
  int exit_code = -1;   // -1 if killed by a signal
  std::string output;   // stdout and stderr, interleaved
};

// Runs argv[0] (looked up in PATH) to completion, capturing its output.
// INTERNAL if it cannot be started.
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv);

// A long-lived child. Its stdout/stderr go to `log_path` (appended) or are
// inherited when log_path is empty. The destructor stops it (SIGTERM, then
// SIGKILL after 10 s). If the parent process dies first, the child receives
// SIGTERM (PR_SET_PDEATHSIG): nothing is left running after a crash.
class Subprocess {
 public:
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(
      const std::vector<std::string>& argv, const std::string& log_path);
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // Non-blocking: true while the child runs.
  bool Running();
  // Blocks until the child exits or `timeout` passes; true if it exited
  // (its exit code is then Stop()'s).
  bool Wait(absl::Duration timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit code (-1 for
  // a signal).
  int Stop(absl::Duration grace = absl::Seconds(10));
  // SIGKILL without grace (tests use it to simulate a crash).
  void Kill();

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool reaped_ = false;
  int exit_code_ = -1;
};

}  // namespace sslbench
