#pragma once
// One real PostgreSQL server per test process, and a fresh database per test.
//
// If SSLBENCH_TEST_PG is set (a libpq connection string, without dbname, to a
// server where the user may CREATE DATABASE), it is used; otherwise a private
// cluster is started in a temporary folder (fsync off) on first use and
// stopped when the process exits.

#include <string>

#include "absl/status/statusor.h"
#include "common/local_postgres.h"

namespace sslbench::testing {

// Creates a new, empty database and returns its connection string.
absl::StatusOr<std::string> FreshDatabase();

}  // namespace sslbench::testing
