#include "common/local_postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/subprocess.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::client::testing::ReadFile;
using ::sslbench::client::testing::StatusIs;

std::string Psql() {
  return std::filesystem::exists("/usr/lib/postgresql/15/bin/psql")
             ? "/usr/lib/postgresql/15/bin/psql"
             : "/usr/bin/psql";
}

// Runs one statement through psql over TCP, with the cluster's password
// file unless `password` is false; returns its trimmed output.
absl::StatusOr<std::string> Query(const LocalPostgres& pg, const std::string& db,
                                  const std::string& sql, bool password = true) {
  absl::StatusOr<CommandResult> r = RunCommand(
      {"/usr/bin/env", password ? "PGPASSFILE=" + pg.PassFile() : "PGPASSFILE=/nonexistent",
       "PGPASSWORD=", Psql(), "-X", "-w", "-h", "127.0.0.1", "-p", absl::StrCat(pg.port()),
       "-U", "sslbench", "-d", db, "-tAc", sql});
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) return absl::UnavailableError(r->output);
  return std::string(absl::StripAsciiWhitespace(r->output));
}

class LocalPostgresTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // scripts/install-deps.sh installs it: its absence is a broken setup.
    ASSERT_TRUE(std::filesystem::exists("/usr/lib/postgresql"))
        << "PostgreSQL server not installed (apt-get install postgresql)";
    dir_ = MakeTempDir("pg");
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(LocalPostgresTest, StartCreateConnectRestartStop) {
  LocalPostgresOptions options;
  options.dir = dir_ + "/cluster";
  options.durable = false;
  absl::StatusOr<std::unique_ptr<LocalPostgres>> pg = LocalPostgres::Start(options);
  ASSERT_TRUE(pg.ok()) << pg.status();
  const int port = (*pg)->port();
  EXPECT_GT(port, 0);
  // A password, from a file only this user reads, never in the string.
  const std::string passfile = options.dir + "/passfile";
  EXPECT_EQ((*pg)->PassFile(), passfile);
  EXPECT_EQ((*pg)->ConnInfo("x"), absl::StrCat("host=127.0.0.1 port=", port,
                                               " user=sslbench dbname=x passfile='", passfile,
                                               "'"));
  struct stat st;
  ASSERT_EQ(stat(passfile.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_THAT(ReadFile(passfile), ::testing::MatchesRegex("\\*:\\*:\\*:sslbench:[0-9a-f]{32}\n"));
  EXPECT_FALSE(std::filesystem::exists(options.dir + "/initdb.pw"));
  EXPECT_EQ(ReadFile(options.dir + "/port"), absl::StrCat(port, "\n"));
  EXPECT_THAT(Query(**pg, "postgres", "SELECT 1", /*password=*/false).status(),
              StatusIs(absl::StatusCode::kUnavailable, "password"));

  ASSERT_TRUE((*pg)->CreateDatabase("sslbench").ok());
  ASSERT_TRUE((*pg)->CreateDatabase("sslbench").ok());  // idempotent
  EXPECT_THAT((*pg)->CreateDatabase("bad'name"),
              StatusIs(absl::StatusCode::kInvalidArgument, "bad'name"));

  absl::StatusOr<std::string> value = Query(**pg, "sslbench", "SELECT 40 + 2");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "42");
  ASSERT_TRUE(Query(**pg, "sslbench", "CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
                  .ok());
  // Not durable, as asked.
  EXPECT_EQ(*Query(**pg, "sslbench", "SHOW fsync"), "off");

  ASSERT_TRUE((*pg)->Stop().ok());
  EXPECT_THAT(Query(**pg, "sslbench", "SELECT 1").status(),
              StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_TRUE((*pg)->Stop().ok());  // stopping a stopped server is fine

  ASSERT_TRUE((*pg)->Restart().ok());
  EXPECT_EQ((*pg)->port(), port);
  EXPECT_EQ(*Query(**pg, "sslbench", "SELECT v FROM t"), "7");
  ASSERT_TRUE((*pg)->Restart().ok());  // restart of a running server
  EXPECT_EQ(*Query(**pg, "sslbench", "SELECT v FROM t"), "7");

  // The destructor stops the server; a new Start reuses the cluster, its
  // data and its port.
  pg->reset();
  pg = LocalPostgres::Start(options);
  ASSERT_TRUE(pg.ok()) << pg.status();
  EXPECT_EQ((*pg)->port(), port);
  EXPECT_EQ(*Query(**pg, "sslbench", "SELECT v FROM t"), "7");
  ASSERT_TRUE((*pg)->Stop().ok());
}

TEST_F(LocalPostgresTest, DurableByDefault) {
  LocalPostgresOptions options;
  options.dir = dir_ + "/durable";
  absl::StatusOr<std::unique_ptr<LocalPostgres>> pg = LocalPostgres::Start(options);
  ASSERT_TRUE(pg.ok()) << pg.status();
  EXPECT_EQ(*Query(**pg, "postgres", "SHOW fsync"), "on");
  // Only loopback TCP.
  EXPECT_EQ(*Query(**pg, "postgres", "SHOW listen_addresses"), "127.0.0.1");
}

TEST_F(LocalPostgresTest, FolderTheServerUserCannotEnter) {
  // A folder only its owner (us) may enter: another user (the `postgres`
  // server user, when we are root) cannot reach a cluster inside it.
  const std::string closed = dir_ + "/closed";
  std::filesystem::create_directories(closed + "/pg");
  ASSERT_EQ(chmod(closed.c_str(), 0700), 0);
  const uid_t other = geteuid() + 4242;
  EXPECT_THAT(CheckServerCanReach(closed + "/pg", other),
              StatusIs(absl::StatusCode::kFailedPrecondition, closed));
  EXPECT_TRUE(CheckServerCanReach(closed + "/pg", geteuid()).ok());
  ASSERT_EQ(chmod(closed.c_str(), 0711), 0);
  EXPECT_TRUE(CheckServerCanReach(closed + "/pg", other).ok());
}

}  // namespace
}  // namespace sslbench
