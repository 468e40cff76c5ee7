#pragma once
// Versioned schema of the coordinator's database. Append only: a released
// migration is never edited; a change is a new entry.

#include <vector>

namespace sslbench::server {

struct Migration {
  int version;
  const char* description;
  const char* sql;
};

const std::vector<Migration>& Migrations();

}  // namespace sslbench::server
