#include "common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace sslbench {
namespace {

// argv as the exec family wants it; built before fork() because the child of
// a multi-threaded parent may only call async-signal-safe functions.
class CArgv {
 public:
  explicit CArgv(const std::vector<std::string>& argv) {
    for (const auto& arg : argv) pointers_.push_back(const_cast<char*>(arg.c_str()));
    pointers_.push_back(nullptr);
  }
  char* const* get() { return pointers_.data(); }

 private:
  std::vector<char*> pointers_;
};

void CloseIfOpen(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

int ExitCodeOf(int wait_status) {
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
}

// Runs in the child between fork() and exec: only async-signal-safe calls.
// The parent may have blocked or ignored signals (the local stack blocks
// SIGINT/SIGTERM to sigwait for them; gRPC ignores SIGPIPE); both survive
// exec, so restore the defaults for the child. On failure, errno goes to
// `error_fd` (close-on-exec, so the parent reads EOF when exec succeeds).
// With `parent` set, the child gets SIGTERM when that process dies, so a
// crashed test or CLI leaves no coordinator or worker behind.
[[noreturn]] void ExecChild(char* const* argv, int stdin_fd, int out_fd,
                            int error_fd, pid_t parent = 0) {
  if (parent != 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGCHLD, SIGHUP, SIGQUIT}) {
    sigaction(sig, &dfl, nullptr);
  }
  if (stdin_fd >= 0 && dup2(stdin_fd, STDIN_FILENO) < 0) goto fail;
  if (out_fd >= 0) {
    if (dup2(out_fd, STDOUT_FILENO) < 0) goto fail;
    if (dup2(out_fd, STDERR_FILENO) < 0) goto fail;
  }
  execvp(argv[0], argv);
fail:
  const int err = errno;
  ssize_t ignored = write(error_fd, &err, sizeof(err));
  (void)ignored;
  _exit(127);
}

// Reads the exec error (if any) that the child reported on `error_fd`.
// Returns 0 when exec succeeded.
int ReadExecError(int error_fd) {
  int err = 0;
  ssize_t n;
  do {
    n = read(error_fd, &err, sizeof(err));
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(sizeof(err)) ? err : 0;
}

pid_t WaitPid(pid_t pid, int* status, int options) {
  pid_t r;
  do {
    r = waitpid(pid, status, options);
  } while (r < 0 && errno == EINTR);
  return r;
}

absl::Status SpawnError(const std::vector<std::string>& argv, int err) {
  return absl::InternalError(absl::StrCat("cannot start '", absl::StrJoin(argv, " "),
                                          "': ", std::strerror(err)));
}

}  // namespace

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InternalError("RunCommand: empty argv");
  CArgv cargv(argv);
  int out[2] = {-1, -1};
  int err_pipe[2] = {-1, -1};
  if (pipe2(out, O_CLOEXEC) != 0) return SpawnError(argv, errno);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    CloseIfOpen(out[0]);
    CloseIfOpen(out[1]);
    return SpawnError(argv, e);
  }
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t pid = fork();
  if (pid == 0) {
    ExecChild(cargv.get(), devnull, out[1], err_pipe[1]);
  }
  const int fork_errno = errno;
  if (devnull >= 0) close(devnull);
  CloseIfOpen(out[1]);
  CloseIfOpen(err_pipe[1]);
  if (pid < 0) {
    CloseIfOpen(out[0]);
    CloseIfOpen(err_pipe[0]);
    return SpawnError(argv, fork_errno);
  }
  const int exec_error = ReadExecError(err_pipe[0]);
  CloseIfOpen(err_pipe[0]);

  CommandResult result;
  char buffer[8192];
  while (true) {
    const ssize_t n = read(out[0], buffer, sizeof(buffer));
    if (n > 0) {
      result.output.append(buffer, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  CloseIfOpen(out[0]);
  int status = 0;
  if (WaitPid(pid, &status, 0) < 0) {
    return absl::InternalError(absl::StrCat("waitpid for '", argv[0],
                                            "' failed: ", std::strerror(errno)));
  }
  if (exec_error != 0) return SpawnError(argv, exec_error);
  result.exit_code = ExitCodeOf(status);
  return result;
}

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(
    const std::vector<std::string>& argv, const std::string& log_path) {
  if (argv.empty()) return absl::InternalError("Subprocess::Start: empty argv");
  CArgv cargv(argv);
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      return absl::InternalError(absl::StrCat("cannot open log file ", log_path,
                                              ": ", std::strerror(errno)));
    }
  }
  int err_pipe[2] = {-1, -1};
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    CloseIfOpen(log_fd);
    return SpawnError(argv, e);
  }
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    ExecChild(cargv.get(), devnull, log_fd, err_pipe[1], parent);
  }
  const int fork_errno = errno;
  if (devnull >= 0) close(devnull);
  CloseIfOpen(log_fd);
  CloseIfOpen(err_pipe[1]);
  if (pid < 0) {
    CloseIfOpen(err_pipe[0]);
    return SpawnError(argv, fork_errno);
  }
  const int exec_error = ReadExecError(err_pipe[0]);
  CloseIfOpen(err_pipe[0]);
  if (exec_error != 0) {
    int status;
    WaitPid(pid, &status, 0);
    return SpawnError(argv, exec_error);
  }
  return std::unique_ptr<Subprocess>(new Subprocess(pid));
}

Subprocess::~Subprocess() {
  if (!reaped_) Stop();
}

bool Subprocess::Running() {
  if (reaped_) return false;
  int status = 0;
  const pid_t r = WaitPid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  reaped_ = true;
  // r < 0 (ECHILD): someone else reaped it; the exit code is unknown.
  exit_code_ = r == pid_ ? ExitCodeOf(status) : -1;
  return false;
}

bool Subprocess::Wait(absl::Duration timeout) {
  if (!Running()) return true;
  // A pidfd becomes readable when the child exits: a blocking wait with a
  // deadline, no polling.
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (fd < 0) {
    // Kernels before 5.3: fall back to short, growing naps.
    const absl::Time deadline = absl::Now() + timeout;
    absl::Duration nap = absl::Milliseconds(1);
    while (Running() && absl::Now() < deadline) {
      std::this_thread::sleep_for(
          absl::ToChronoNanoseconds(std::min(nap, deadline - absl::Now())));
      nap = std::min(nap * 2, absl::Milliseconds(50));
    }
    return !Running();
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (Running()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    pollfd p{fd, POLLIN, 0};
    const int ms = static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
    if (poll(&p, 1, ms) < 0 && errno != EINTR) break;
  }
  close(fd);
  return !Running();
}

int Subprocess::Stop(absl::Duration grace) {
  if (!Running()) return exit_code_;
  kill(pid_, SIGTERM);
  if (!Wait(grace)) Kill();
  return exit_code_;
}

void Subprocess::Kill() {
  if (reaped_) return;
  kill(pid_, SIGKILL);
  int status = 0;
  const pid_t r = WaitPid(pid_, &status, 0);
  reaped_ = true;
  exit_code_ = r == pid_ ? ExitCodeOf(status) : -1;
}

}  // namespace sslbench
