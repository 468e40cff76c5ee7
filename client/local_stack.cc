#include "client/local_stack.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/random.h"
#include "common/status_macros.h"
#include "common/tls.h"

namespace sslbench::client {
namespace {

namespace fs = std::filesystem;

constexpr char kDatabase[] = "sslbench";
// Starts each run's part of a child's (appended) log.
constexpr char kRunMarker[] = "==== ";

void Say(const std::string& line) {
  std::fprintf(stderr, "sslbench: %s\n", line.c_str());
  std::fflush(stderr);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string DescribeExit(int code) {
  return code < 0 ? std::string("was killed by a signal")
                  : absl::StrCat("exited with code ", code);
}

}  // namespace

absl::StatusOr<std::string> ExecutableDir() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot resolve /proc/self/exe: ", ec.message()));
  }
  return self.parent_path().string();
}

absl::StatusOr<std::string> FindSibling(const std::string& bin_dir,
                                        const std::string& name) {
  const std::string path = (fs::path(bin_dir) / name).string();
  if (access(path.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, " not found next to sslbench (", path,
        "); build it: cmake --build BUILD_DIR --target ", name));
  }
  return path;
}

std::string LogTail(const std::string& path, int lines) {
  std::string text = ReadFile(path);
  // Only this run's part of the log.
  const size_t marker = text.rfind(std::string("\n") + kRunMarker);
  if (marker != std::string::npos) text.erase(0, marker + 1);
  std::vector<absl::string_view> all = absl::StrSplit(text, '\n');
  while (!all.empty() && all.back().empty()) all.pop_back();
  const size_t from = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + from, all.end(), "\n");
}

absl::StatusOr<std::unique_ptr<LocalStack>> LocalStack::Start(
    LocalStackOptions options) {
  std::unique_ptr<LocalStack> stack(new LocalStack(std::move(options)));
  absl::Status status = stack->StartAll();
  if (!status.ok()) {
    absl::Status stopped = stack->Shutdown();
    if (!stopped.ok()) Say(absl::StrCat("while cleaning up: ", stopped.message()));
    return status;
  }
  return stack;
}

LocalStack::~LocalStack() {
  absl::Status status = Shutdown();
  if (!status.ok()) Say(std::string(status.message()));
}

std::string LocalStack::conninfo() const {
  return postgres_ ? postgres_->ConnInfo(kDatabase) : "";
}

absl::Status LocalStack::StartAll() {
  if (options_.workers < 0 || options_.workers > 256) {
    return absl::InvalidArgumentError("--workers must be in [0, 256]");
  }
  if (options_.worker_threads < 1 || options_.worker_threads > 1024) {
    return absl::InvalidArgumentError("--worker_threads must be in [1, 1024]");
  }
  if (options_.port < 0 || options_.port > 65535) {
    return absl::InvalidArgumentError("--port must be in [0, 65535]");
  }
  std::string bin_dir = options_.bin_dir;
  if (bin_dir.empty()) {
    ASSIGN_OR_RETURN(bin_dir, ExecutableDir());
  }
  ASSIGN_OR_RETURN(const std::string coordinator_bin,
                   FindSibling(bin_dir, "sslbench-coordinator"));
  std::string worker_bin;
  if (options_.workers > 0) {
    ASSIGN_OR_RETURN(worker_bin, FindSibling(bin_dir, "sslbench-worker"));
  }

  std::error_code ec;
  state_dir_ = fs::absolute(options_.state_dir, ec).lexically_normal().string();
  if (state_dir_.size() > 1 && state_dir_.back() == '/') state_dir_.pop_back();
  fs::create_directories(log_dir(), ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", log_dir(), ": ", ec.message()));
  }
  // The database server may run as another user: it must reach STATE/pg.
  chmod(state_dir_.c_str(), 0755);

  Say(absl::StrCat("starting PostgreSQL in ", state_dir_, "/pg"));
  LocalPostgresOptions pg_options;
  pg_options.dir = state_dir_ + "/pg";
  pg_options.durable = true;
  ASSIGN_OR_RETURN(postgres_, LocalPostgres::Start(pg_options));
  RETURN_IF_ERROR(postgres_->CreateDatabase(kDatabase));

  RETURN_IF_ERROR(PrepareTokens());
  // TLS with a CA of its own: the certificate names localhost and 127.0.0.1.
  fs::create_directories(state_dir_ + "/tls", ec);
  RETURN_IF_ERROR(MakeDevCertificates(state_dir_ + "/tls"));
  const std::string port_file = state_dir_ + "/coordinator.port";
  fs::remove(port_file, ec);
  Say("starting the coordinator");
  ASSIGN_OR_RETURN(
      Child coordinator,
      StartChild("coordinator",
                 {coordinator_bin, absl::StrCat("--listen=127.0.0.1:", options_.port),
                  "--port_file=" + port_file, "--database=" + conninfo(),
                  "--metrics_listen=127.0.0.1:0", "--blob_store=" + options_.blob_store,
                  "--auth=required", "--bootstrap_tokens=" + state_dir_ + "/tokens",
                  "--tls_cert=" + state_dir_ + "/tls/server.pem",
                  "--tls_key=" + state_dir_ + "/tls/server.key"}));
  coordinator_.push_back(std::move(coordinator));
  ASSIGN_OR_RETURN(const int port, WaitForPortFile(port_file, coordinator_.front()));
  address_ = absl::StrCat("127.0.0.1:", port);

  for (int i = 1; i <= options_.workers; ++i) {
    const std::string name = absl::StrCat("worker-", i);
    ASSIGN_OR_RETURN(
        Child worker,
        StartChild(name, {worker_bin, "--coordinator=" + address_, "--name=" + name,
                          absl::StrCat("--threads=", options_.worker_threads),
                          "--metrics_listen=127.0.0.1:0",
                          "--token_file=" + state_dir_ + "/worker.token",
                          "--tls_ca=" + ca_path()}));
    workers_.push_back(std::move(worker));
  }
  Say(absl::StrCat("started ", options_.workers, " worker(s)"));
  RETURN_IF_ERROR(WriteFileAtomically(state_dir_ + "/coordinator.addr", address_ + "\n"));
  return absl::OkStatus();
}

absl::Status LocalStack::PrepareTokens() {
  // Kept between runs, so that shells holding the token go on working.
  const std::string bootstrap = state_dir_ + "/tokens";
  std::string worker_token;
  {
    std::ifstream in(bootstrap);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream fields(line.substr(0, line.find('#')));
      std::string role, name, token;
      if (!(fields >> role >> name >> token)) continue;
      if (role == "admin") admin_token_ = token;
      if (role == "worker") worker_token = token;
    }
  }
  if (admin_token_.empty() || worker_token.empty()) {
    admin_token_ = "sbt_" + RandomHex(16);
    worker_token = "sbt_" + RandomHex(16);
  }
  // Mode 600 from the start: the coordinator refuses a bootstrap file others
  // can read.
  const std::string lines =
      absl::StrCat("# ROLE NAME TOKEN, read by the coordinator\n", "admin local-admin ",
                   admin_token_, "\n", "worker local-workers ", worker_token, "\n");
  RETURN_IF_ERROR(WriteFileAtomically(bootstrap, lines, 0600));
  RETURN_IF_ERROR(WriteFileAtomically(state_dir_ + "/token", admin_token_ + "\n", 0600));
  return WriteFileAtomically(state_dir_ + "/worker.token", worker_token + "\n", 0600);
}

absl::StatusOr<LocalStack::Child> LocalStack::StartChild(
    const std::string& name, const std::vector<std::string>& argv) {
  Child child;
  child.name = name;
  child.log_path = absl::StrCat(log_dir(), "/", name, ".log");
  {
    // A marker, so the log of this run is told apart from earlier ones.
    std::ofstream log(child.log_path, std::ios::app);
    log << kRunMarker
        << absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone()) << " "
        << absl::StrJoin(argv, " ") << "\n";
  }
  ASSIGN_OR_RETURN(child.process, Subprocess::Start(argv, child.log_path));
  child.argv = argv;
  child.started = absl::Now();
  return child;
}

absl::StatusOr<int> LocalStack::WaitForPortFile(const std::string& path,
                                                Child& coordinator) {
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  absl::Duration nap = absl::Milliseconds(5);
  while (true) {
    // The coordinator writes "PORT\n" atomically once it listens.
    const std::string text = ReadFile(path);
    int port = 0;
    if (!text.empty() && text.back() == '\n' &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) && port > 0 &&
        port < 65536) {
      return port;
    }
    if (!coordinator.process->Running()) {
      return absl::InternalError(absl::StrCat(
          "the coordinator ", DescribeExit(coordinator.process->Stop()),
          " before it listened; last lines of ", coordinator.log_path, ":\n",
          LogTail(coordinator.log_path)));
    }
    if (options_.interrupted && options_.interrupted()) {
      return absl::CancelledError("interrupted while starting the coordinator");
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the coordinator did not listen within ",
          absl::FormatDuration(options_.start_timeout), "; last lines of ",
          coordinator.log_path, ":\n", LogTail(coordinator.log_path)));
    }
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(nap));
    nap = std::min(nap * 2, absl::Milliseconds(100));
  }
}

absl::Status LocalStack::CheckChildren() {
  for (Child& c : coordinator_) {
    if (c.process->Running()) continue;
    return absl::InternalError(absl::StrCat(
        c.name, " ", DescribeExit(c.process->Stop()), "; last lines of ", c.log_path, ":\n",
        LogTail(c.log_path)));
  }
  if (postgres_ != nullptr && postgres_->ServerPid() == 0) {
    return absl::InternalError(absl::StrCat(
        "PostgreSQL in ", state_dir_, "/pg is no longer running (out of disk space? killed?); "
        "last lines of its log:\n", postgres_->LogTail()));
  }
  const absl::Time now = absl::Now();
  for (Child& w : workers_) {
    if (w.process != nullptr && w.process->Running()) continue;
    if (w.process != nullptr) {
      // Exited: report it, and start it again after the backoff. A worker
      // crashing on one task must not stop the stack; the coordinator gives
      // the task to another attempt.
      const std::string exit = DescribeExit(w.process->Stop());
      w.process.reset();
      w.exits_in_a_row = now - w.started >= absl::Minutes(5) ? 1 : w.exits_in_a_row + 1;
      absl::Duration backoff = options_.restart_backoff;
      for (int i = 1; i < w.exits_in_a_row && backoff < options_.restart_backoff_max; ++i) {
        backoff *= 2;
      }
      backoff = std::min(backoff, options_.restart_backoff_max);
      w.restart_at = now + backoff;
      Say(absl::StrCat(w.name, " ", exit, "; starting it again in ", absl::FormatDuration(backoff),
                       "; last lines of ", w.log_path, ":\n", LogTail(w.log_path, 10)));
    }
    if (now < w.restart_at) continue;
    ASSIGN_OR_RETURN(Child restarted, StartChild(w.name, w.argv));
    w.process = std::move(restarted.process);
    w.started = restarted.started;
    ++worker_restarts_;
    Say(absl::StrCat(w.name, " started again (pid ", w.process->pid(), ")"));
  }
  return absl::OkStatus();
}

std::vector<pid_t> LocalStack::worker_pids() const {
  std::vector<pid_t> pids;
  for (const Child& w : workers_) pids.push_back(w.process ? w.process->pid() : 0);
  return pids;
}

absl::Status LocalStack::Shutdown() {
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  if (!workers_.empty()) {
    Say("stopping the workers");
    // All at once, so that they wind down in parallel; Stop() then waits.
    for (Child& w : workers_) {
      if (w.process != nullptr && w.process->Running()) kill(w.process->pid(), SIGTERM);
    }
    for (Child& w : workers_) {
      if (w.process != nullptr) w.process->Stop(absl::Seconds(15));
    }
    workers_.clear();
  }
  if (!coordinator_.empty()) {
    Say("stopping the coordinator");
    coordinator_.front().process->Stop(absl::Seconds(15));
    coordinator_.clear();
  }
  std::error_code ec;
  if (!state_dir_.empty()) {
    fs::remove(state_dir_ + "/coordinator.addr", ec);
    fs::remove(state_dir_ + "/coordinator.port", ec);
  }
  absl::Status status;
  if (postgres_ != nullptr) {
    Say("stopping PostgreSQL");
    status = postgres_->Stop();
    postgres_.reset();
  }
  return status;
}

}  // namespace sslbench::client
