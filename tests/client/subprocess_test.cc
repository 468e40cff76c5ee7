#include "common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>
#include <system_error>
#include <thread>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::client::testing::ReadFile;
using ::sslbench::client::testing::StatusIs;
using ::testing::HasSubstr;

// Reads what a child writes into the FIFO `path`, waiting up to `timeout`
// for it to open the FIFO and write (or close it).
std::string ReadFifo(const std::string& path, absl::Duration timeout) {
  // Non-blocking open: a reader may open a FIFO before any writer has; poll
  // then blocks until data arrives.
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return "";
  std::string got;
  const absl::Time deadline = absl::Now() + timeout;
  while (got.find('\n') == std::string::npos) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(ms)) <= 0) break;
    char buf[64];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) got.append(buf, static_cast<size_t>(n));
    if (n == 0) break;  // the writer closed it
  }
  close(fd);
  return got;
}

TEST(RunCommandTest, CapturesStdoutAndStderrAndExitCode) {
  absl::StatusOr<CommandResult> r =
      RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_THAT(r->output, HasSubstr("out\n"));
  EXPECT_THAT(r->output, HasSubstr("err\n"));
}

TEST(RunCommandTest, LargeOutputDoesNotDeadlock) {
  absl::StatusOr<CommandResult> r =
      RunCommand({"sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->output.size(), 1000000u);
}

TEST(RunCommandTest, SignalDeathIsMinusOne) {
  absl::StatusOr<CommandResult> r = RunCommand({"sh", "-c", "kill -9 $$"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, -1);
}

TEST(RunCommandTest, MissingProgramIsInternal) {
  EXPECT_THAT(RunCommand({"/nonexistent/program", "x"}).status(),
              StatusIs(absl::StatusCode::kInternal, "/nonexistent/program"));
  EXPECT_THAT(RunCommand({"no-such-program-in-path"}).status(),
              StatusIs(absl::StatusCode::kInternal, "no-such-program-in-path"));
}

// The pipes this process holds open ("pipe:[inode]"), by inode: other
// threads of the test binary may open and close other descriptors meanwhile,
// so a leak is a pipe that was not there before, not a change in the count.
std::set<std::string> OpenPipes() {
  std::set<std::string> pipes;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind("pipe:", 0) == 0) pipes.insert(target);
  }
  return pipes;
}

TEST(RunCommandTest, StdinIsEmptyAndNoDescriptorLeaks) {
  const std::set<std::string> before = OpenPipes();
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<CommandResult> r = RunCommand({"cat"});  // reads /dev/null
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->exit_code, 0);
    EXPECT_EQ(r->output, "");
  }
  EXPECT_THAT(RunCommand({"/nonexistent"}).status(),
              StatusIs(absl::StatusCode::kInternal));
  for (const std::string& pipe : OpenPipes()) {
    EXPECT_TRUE(before.count(pipe) > 0) << "leaked " << pipe;
  }
}

TEST(RunCommandTest, ChildInheritsNoDescriptorsOfOurs) {
  // Descriptors this process holds without close-on-exec (e.g. from the test
  // runner) are inherited legitimately; the pipes RunCommand makes must not be.
  int inheritable = 0;
  for (int fd = 3; fd < 1024; ++fd) {
    const int flags = fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) ++inheritable;
  }
  absl::StatusOr<CommandResult> r =
      RunCommand({"sh", "-c", "ls /proc/self/fd | wc -l"});
  ASSERT_TRUE(r.ok()) << r.status();
  // 0, 1, 2, the inherited ones and the descriptor ls reads the folder with.
  EXPECT_EQ(std::stoi(r->output), 3 + inheritable + 1) << r->output;
}

class SubprocessTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("subprocess"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(SubprocessTest, WritesToTheLogAndReportsTheExitCode) {
  const std::string log = dir_ + "/child.log";
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start({"sh", "-c", "echo hello; echo oops >&2; exit 7"}, log);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_GT((*p)->pid(), 0);
  ASSERT_TRUE((*p)->Wait(absl::Seconds(10)));
  EXPECT_EQ((*p)->Stop(), 7);
  EXPECT_EQ((*p)->Stop(), 7);  // idempotent
  EXPECT_EQ(ReadFile(log), "hello\noops\n");

  // A second run appends.
  p = Subprocess::Start({"sh", "-c", "echo again"}, log);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE((*p)->Wait(absl::Seconds(10)));
  EXPECT_EQ((*p)->Stop(), 0);
  EXPECT_EQ(ReadFile(log), "hello\noops\nagain\n");
}

TEST_F(SubprocessTest, StopTerminatesPromptly) {
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start({"sleep", "60"}, dir_ + "/sleep.log");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->Running());
  EXPECT_FALSE((*p)->Wait(absl::Milliseconds(20)));  // still running
  const absl::Time start = absl::Now();
  EXPECT_EQ((*p)->Stop(absl::Seconds(30)), -1);  // killed by SIGTERM
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_FALSE((*p)->Running());
}

TEST_F(SubprocessTest, StopEscalatesToSigkill) {
  const std::string log = dir_ + "/stubborn.log";
  const std::string ready = dir_ + "/ready";
  ASSERT_EQ(mkfifo(ready.c_str(), 0600), 0);
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
      {"sh", "-c", "trap '' TERM; echo ready > \"$0\"; exec sleep 60", ready}, log);
  ASSERT_TRUE(p.ok()) << p.status();
  // SIGTERM is ignored only once the trap ran.
  ASSERT_EQ(ReadFifo(ready, absl::Seconds(10)), "ready\n");
  const absl::Time start = absl::Now();
  EXPECT_EQ((*p)->Stop(absl::Milliseconds(300)), -1);
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(10));
  EXPECT_FALSE((*p)->Running());
}

TEST_F(SubprocessTest, ChildDoesNotInheritBlockedSignals) {
  // `sslbench up` blocks SIGINT/SIGTERM to sigwait for them; its children
  // must still die on SIGTERM.
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, &old);
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start({"sleep", "60"}, dir_ + "/blocked.log");
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  const absl::Time start = absl::Now();
  EXPECT_EQ((*p)->Stop(absl::Seconds(30)), -1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST_F(SubprocessTest, KillSimulatesACrash) {
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start({"sleep", "60"}, "");
  ASSERT_TRUE(p.ok()) << p.status();
  (*p)->Kill();
  EXPECT_FALSE((*p)->Running());
  EXPECT_EQ((*p)->Stop(), -1);
}

TEST_F(SubprocessTest, DestructorStopsTheChild) {
  pid_t pid;
  {
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start({"sleep", "60"}, "");
    ASSERT_TRUE(p.ok()) << p.status();
    pid = (*p)->pid();
  }
  // Reaped: the pid no longer exists (not even as a zombie).
  EXPECT_EQ(kill(pid, 0), -1);
}

TEST_F(SubprocessTest, StartErrors) {
  EXPECT_THAT(Subprocess::Start({"/nonexistent/binary"}, dir_ + "/x.log").status(),
              StatusIs(absl::StatusCode::kInternal, "/nonexistent/binary"));
  EXPECT_THAT(Subprocess::Start({"sleep", "1"}, dir_ + "/no/such/folder/x.log").status(),
              StatusIs(absl::StatusCode::kInternal, "cannot open log file"));
}

}  // namespace
}  // namespace sslbench
