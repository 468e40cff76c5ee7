#include "tests/testing/test_postgres.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/subprocess.h"

namespace sslbench::testing {
namespace {

absl::Mutex mu;
std::unique_ptr<LocalPostgres>* cluster = nullptr;  // leaked on purpose: see atexit
std::string* cluster_dir = nullptr;

void StopCluster() {
  if (cluster && *cluster) cluster->reset();
  if (cluster_dir) RunCommand({"rm", "-rf", *cluster_dir}).IgnoreError();
}

absl::StatusOr<std::string> BaseConnInfo() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
  if (const char* env = std::getenv("SSLBENCH_TEST_PG"); env && *env) return std::string(env);
  if (!cluster) {
    char dir[] = "/tmp/sslbench-test-pg-XXXXXX";
    if (!mkdtemp(dir)) return absl::InternalError("mkdtemp failed");
    cluster_dir = new std::string(dir);
    LocalPostgresOptions options;
    options.dir = dir;
    options.durable = false;
    auto started = LocalPostgres::Start(options);
    if (!started.ok()) return started.status();
    cluster = new std::unique_ptr<LocalPostgres>(*std::move(started));
    std::atexit(StopCluster);
  }
  return (*cluster)->ConnInfo("postgres");
}

}  // namespace

absl::StatusOr<std::string> FreshDatabase() {
  static std::atomic<int> counter{0};
  absl::MutexLock lock(&mu);
  auto base = BaseConnInfo();
  if (!base.ok()) return base.status();
  const std::string name = absl::StrCat("t_", getpid(), "_", counter++);
  if (cluster) {
    auto created = (*cluster)->CreateDatabase(name);
    if (!created.ok()) return created;
    return (*cluster)->ConnInfo(name);
  }
  auto r = RunCommand({"psql", *base, "-v", "ON_ERROR_STOP=1", "-qc",
                       absl::StrCat("CREATE DATABASE ", name)});
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InternalError(absl::StrCat("CREATE DATABASE ", name, ": ", r->output));
  }
  return absl::StrCat(*base, " dbname=", name);
}

}  // namespace sslbench::testing
