// The local stack of `sslbench up` supervising its children: the real
// coordinator and worker binaries, a private PostgreSQL.

#include "client/local_stack.h"

#include <sys/stat.h>

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/coordinator_client.h"
#include "common/local_postgres.h"
#include "common/subprocess.h"
#include "common/tls.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/http_get.h"

namespace sslbench::client {
namespace {

using ::testing::HasSubstr;

// Blocks until process `pid` (any process) has exited; false after 60 s.
bool AwaitExit(pid_t pid) {
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;  // already gone
  pollfd p{fd, POLLIN, 0};
  const int ready = poll(&p, 1, 60000);
  close(fd);
  return ready == 1;
}

TEST(LocalStackTest, RestartsAWorkerThatDiesAndNoticesADeadDatabase) {
  char dir[] = "/tmp/sslbench-up-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  LocalStackOptions options;
  options.state_dir = dir;
  options.workers = 2;
  options.bin_dir = SSLBENCH_BIN_DIR;
  options.restart_backoff = absl::ZeroDuration();
  auto stack = LocalStack::Start(options);
  ASSERT_TRUE(stack.ok()) << stack.status();
  const std::vector<pid_t> before = (*stack)->worker_pids();
  ASSERT_EQ(before.size(), 2u);

  // The stack runs with authentication: no token, no answer; the workers
  // registered with theirs.
  // ... over TLS with the stack's own CA: a plaintext client gets nowhere.
  auto tls = ClientCredentials(TlsClientFiles{(*stack)->ca_path(), "", ""});
  ASSERT_TRUE(tls.ok()) << tls.status();
  CoordinatorClient plaintext((*stack)->address(), absl::Seconds(5), (*stack)->admin_token());
  EXPECT_EQ(plaintext.ListWorkers().status().code(), absl::StatusCode::kUnavailable);
  CoordinatorClient anonymous((*stack)->address(), absl::Seconds(10), "", *tls);
  EXPECT_EQ(anonymous.ListWorkers().status().code(), absl::StatusCode::kUnauthenticated);
  CoordinatorClient admin((*stack)->address(), absl::Seconds(10), (*stack)->admin_token(), *tls);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  int registered = 0;
  while (registered < 2 && absl::Now() < deadline) {
    absl::StatusOr<v1::ListWorkersResponse> workers = admin.ListWorkers();
    ASSERT_TRUE(workers.ok()) << workers.status();
    registered = workers->workers_size();
    if (registered < 2) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(registered, 2) << "the workers did not register with their token";
  struct stat token_file;
  ASSERT_EQ(stat((std::string(dir) + "/token").c_str(), &token_file), 0);
  EXPECT_EQ(token_file.st_mode & 077, 0u) << "the admin token is readable by others";

  // A worker crashes (as one did on a poisoned task): the stack goes on and
  // the worker comes back; its sibling is left alone.
  ASSERT_EQ(kill(before[0], SIGKILL), 0);
  ASSERT_TRUE(AwaitExit(before[0]));
  const absl::Status supervised = (*stack)->CheckChildren();
  EXPECT_TRUE(supervised.ok()) << supervised;
  EXPECT_EQ((*stack)->worker_restarts(), 1);
  const std::vector<pid_t> after = (*stack)->worker_pids();
  ASSERT_EQ(after.size(), 2u);
  EXPECT_NE(after[0], before[0]);
  EXPECT_GT(after[0], 0);
  EXPECT_EQ(kill(after[0], 0), 0) << "the restarted worker is not running";
  EXPECT_EQ(after[1], before[1]);

  // PostgreSQL dies (a full disk stops it): reported, naming it.
  const pid_t pg = (*stack)->postgres_pid();
  ASSERT_GT(pg, 0);
  ASSERT_EQ(kill(pg, SIGQUIT), 0);
  ASSERT_TRUE(AwaitExit(pg));
  const absl::Status dead = (*stack)->CheckChildren();
  EXPECT_EQ(dead.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(dead.message()), HasSubstr("PostgreSQL"));
  EXPECT_THAT(std::string(dead.message()), HasSubstr("no longer running"));

  EXPECT_TRUE((*stack)->Shutdown().ok());
  stack->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sslbench::client

namespace sslbench::client {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Polls `done` every 20 ms for up to a minute (the other process gives no
// event to wait on but its files).
bool Eventually(const std::function<bool()>& done) {
  const absl::Time deadline = absl::Now() + absl::Minutes(1);
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

// A folder made from `pattern` (mkdtemp) that the database server, which
// may run as another user, can enter, and a cluster started in DIR/pg.
absl::StatusOr<std::unique_ptr<LocalPostgres>> StartClusterIn(std::string pattern,
                                                              std::string* dir) {
  if (mkdtemp(pattern.data()) == nullptr) return absl::InternalError("mkdtemp failed");
  chmod(pattern.c_str(), 0755);
  *dir = pattern;
  LocalPostgresOptions options;
  options.dir = pattern + "/pg";
  options.durable = false;
  return LocalPostgres::Start(options);
}

// A coordinator started before its database (a first deploy) waits for it
// with backoff instead of exiting, then serves.
TEST(CoordinatorStartTest, WaitsForItsDatabase) {
  std::string dir;
  auto pg = StartClusterIn("/tmp/sslbench-wait-XXXXXX", &dir);
  ASSERT_TRUE(pg.ok()) << pg.status();
  ASSERT_TRUE((*pg)->Stop().ok());

  const std::string log = std::string(dir) + "/coordinator.log";
  const std::string port_file = std::string(dir) + "/port";
  auto coordinator = Subprocess::Start(
      {std::string(SSLBENCH_BIN_DIR) + "/sslbench-coordinator", "--listen=127.0.0.1:0",
       "--metrics_listen=", "--port_file=" + port_file, "--database=" + (*pg)->ConnInfo(),
       "--database_wait_seconds=120"},
      log);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  ASSERT_TRUE(Eventually([&] {
    return Slurp(log).find("cannot start yet") != std::string::npos || !(*coordinator)->Running();
  }));
  EXPECT_TRUE((*coordinator)->Running()) << "the coordinator gave up at once:\n" << Slurp(log);

  ASSERT_TRUE((*pg)->Restart().ok());
  ASSERT_TRUE(Eventually([&] {
    return Slurp(port_file).find('\n') != std::string::npos || !(*coordinator)->Running();
  })) << Slurp(log);
  ASSERT_TRUE((*coordinator)->Running()) << Slurp(log);
  CoordinatorClient client("127.0.0.1:" + Slurp(port_file).substr(0, Slurp(port_file).find('\n')),
                           absl::Seconds(10));
  EXPECT_TRUE(client.ListWorkers().ok());
  EXPECT_EQ((*coordinator)->Stop(), 0);
  pg->reset();
  std::filesystem::remove_all(dir);
}

// The worker's probes: /readyz and /healthz fail until it has registered and
// the coordinator answers its leases; /livez holds while the lease loop goes
// round; SIGTERM ends an idle worker at once with exit code 0.
TEST(WorkerProbesTest, ReadyOnlyOnceRegisteredAndLeasing) {
  std::string dir;
  auto pg = StartClusterIn("/tmp/sslbench-probes-XXXXXX", &dir);
  ASSERT_TRUE(pg.ok()) << pg.status();
  auto start_worker = [&](const std::string& coordinator, const std::string& name) {
    return Subprocess::Start(
        {std::string(SSLBENCH_BIN_DIR) + "/sslbench-worker", "--coordinator=" + coordinator,
         "--name=" + name, "--metrics_listen=127.0.0.1:0",
         "--metrics_port_file=" + dir + "/" + name + ".port", "--drain_seconds=5"},
        dir + "/" + name + ".log");
  };
  auto get = [&](const std::string& name, const std::string& path) -> std::string {
    const std::string port = Slurp(dir + "/" + name + ".port");
    if (port.find('\n') == std::string::npos) return "";
    absl::StatusOr<std::string> r = testing::HttpGet(std::stoi(port), path);
    return r.ok() ? *r : "";
  };

  // No coordinator: live, never ready.
  auto lonely = start_worker("127.0.0.1:1", "lonely");
  ASSERT_TRUE(lonely.ok()) << lonely.status();
  ASSERT_TRUE(Eventually([&] { return !get("lonely", "/readyz").empty(); }))
      << Slurp(dir + "/lonely.log");
  EXPECT_THAT(get("lonely", "/readyz"), HasSubstr("503 Service Unavailable"));
  EXPECT_THAT(get("lonely", "/readyz"), HasSubstr("not registered yet"));
  EXPECT_THAT(get("lonely", "/healthz"), HasSubstr("503 Service Unavailable"));
  EXPECT_THAT(get("lonely", "/livez"), HasSubstr("200 OK"));
  EXPECT_EQ((*lonely)->Stop(), 0) << Slurp(dir + "/lonely.log");

  // With a coordinator: ready once it leases.
  const std::string port_file = dir + "/coordinator.port";
  auto coordinator = Subprocess::Start(
      {std::string(SSLBENCH_BIN_DIR) + "/sslbench-coordinator", "--listen=127.0.0.1:0",
       "--metrics_listen=", "--port_file=" + port_file, "--database=" + (*pg)->ConnInfo()},
      dir + "/coordinator.log");
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  ASSERT_TRUE(Eventually([&] { return Slurp(port_file).find('\n') != std::string::npos; }))
      << Slurp(dir + "/coordinator.log");
  const std::string address =
      "127.0.0.1:" + Slurp(port_file).substr(0, Slurp(port_file).find('\n'));
  auto worker = start_worker(address, "leasing");
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE(Eventually([&] {
    return get("leasing", "/readyz").find("200 OK") != std::string::npos;
  })) << get("leasing", "/readyz") << Slurp(dir + "/leasing.log");
  EXPECT_THAT(get("leasing", "/readyz"), HasSubstr("leasing"));
  EXPECT_THAT(get("leasing", "/livez"), HasSubstr("200 OK"));
  const absl::Time stop = absl::Now();
  EXPECT_EQ((*worker)->Stop(), 0) << Slurp(dir + "/leasing.log");
  EXPECT_LT(absl::Now() - stop, absl::Seconds(5));
  EXPECT_EQ((*coordinator)->Stop(), 0);
  pg->reset();
  std::filesystem::remove_all(dir);
}

// The database password comes from a private file, never from the command
// line (where every local user can read it); the local PostgreSQL refuses
// connections without it.
TEST(CoordinatorStartTest, DatabasePasswordFromAFileNeverTheCommandLine) {
  std::string dir;
  auto pg = StartClusterIn("/tmp/sslbench-password-XXXXXX", &dir);
  ASSERT_TRUE(pg.ok()) << pg.status();
  const std::string line = Slurp((*pg)->PassFile());
  const std::string password =
      line.substr(line.rfind(':') + 1, line.find('\n') - line.rfind(':') - 1);
  ASSERT_EQ(password.size(), 32u) << line;
  const std::string bare = absl::StrCat("host=127.0.0.1 port=", (*pg)->port(),
                                        " user=sslbench dbname=postgres");
  const std::string bin = std::string(SSLBENCH_BIN_DIR) + "/sslbench-coordinator";
  std::string log;  // each run its own
  int runs = 0;
  const std::string port_file = std::string(dir) + "/port";
  auto run = [&](std::vector<std::string> extra) {
    log = absl::StrCat(dir, "/coordinator-", runs++, ".log");
    std::vector<std::string> argv = {bin, "--listen=127.0.0.1:0", "--metrics_listen=",
                                     "--port_file=" + port_file, "--database_wait_seconds=0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return Subprocess::Start(argv, log);
  };
  auto exit_code = [&](std::vector<std::string> extra) {
    auto p = run(std::move(extra));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return -1;
    EXPECT_TRUE((*p)->Wait(absl::Seconds(60))) << Slurp(log);
    return (*p)->Stop();
  };
  // A password on the command line is refused before anything connects.
  EXPECT_EQ(exit_code({"--database=" + bare + " password=" + password}), 64);
  EXPECT_THAT(Slurp(log), ::testing::HasSubstr("command line"));
  EXPECT_EQ(exit_code({"--database=postgresql://sslbench:" + password + "@127.0.0.1/postgres"}),
            64);
  // No password: the database says no.
  EXPECT_EQ(exit_code({"--database=" + bare}), 1);
  EXPECT_THAT(Slurp(log), ::testing::HasSubstr("password"));
  // A password file others can read is refused.
  const std::string file = std::string(dir) + "/db-password";
  {
    std::ofstream(file) << password << "\n";
  }
  chmod(file.c_str(), 0644);
  EXPECT_EQ(exit_code({"--database=" + bare, "--database_password_file=" + file}), 2);
  EXPECT_THAT(Slurp(log), ::testing::HasSubstr("readable by others"));
  // A private one works.
  chmod(file.c_str(), 0600);
  auto coordinator = run({"--database=" + bare, "--database_password_file=" + file});
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  ASSERT_TRUE(Eventually([&] {
    return Slurp(port_file).find('\n') != std::string::npos || !(*coordinator)->Running();
  })) << Slurp(log);
  ASSERT_TRUE((*coordinator)->Running()) << Slurp(log);
  CoordinatorClient client("127.0.0.1:" + Slurp(port_file).substr(0, Slurp(port_file).find('\n')),
                           absl::Seconds(10));
  EXPECT_TRUE(client.ListWorkers().ok());
  EXPECT_EQ((*coordinator)->Stop(), 0);
  for (int r = 0; r < runs; ++r) {
    EXPECT_THAT(Slurp(absl::StrCat(dir, "/coordinator-", r, ".log")),
                ::testing::Not(::testing::HasSubstr(password)));
  }
  pg->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sslbench::client

namespace sslbench::client {
namespace {

// The stack's tokens survive a restart (shells holding the admin token go
// on working), and their files stay private.
TEST(LocalStackTest, TokensAreKeptBetweenRuns) {
  char dir[] = "/tmp/sslbench-up-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  LocalStackOptions options;
  options.state_dir = dir;
  options.workers = 0;
  options.bin_dir = SSLBENCH_BIN_DIR;
  std::string first;
  {
    auto stack = LocalStack::Start(options);
    ASSERT_TRUE(stack.ok()) << stack.status();
    first = (*stack)->admin_token();
  }
  auto again = LocalStack::Start(options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->admin_token(), first);
  EXPECT_EQ(first.size(), 36u);
  for (const char* name : {"/tokens", "/token", "/worker.token", "/tls/server.key"}) {
    struct stat st;
    ASSERT_EQ(stat((std::string(dir) + name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 077, 0u) << name;
  }
  again->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sslbench::client
