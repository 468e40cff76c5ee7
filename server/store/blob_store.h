#pragma once
// Where the bytes of feature chunks live. The database keeps the record of
// which chunks exist (index, rows, width, blob key, size, checksum) under the
// lease's fence; a BlobStore keeps the bytes under a key. PostgreSQL (a table
// of blobs, PgStore) is the default; a folder (FileBlobStore, on a local disk
// or a volume shared by the coordinator replicas) is the second, and an
// object store is the next. Every implementation passes
// tests/server/blob_store_test.cc.
//
// Keys are [A-Za-z0-9._/-]+; the store never interprets them. Thread-safe.

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sslbench::server {

class BlobStore {
 public:
  virtual ~BlobStore() = default;

  // Stores the concatenation of `parts` under `key`, replacing what was
  // there; durable once it returns OK. UNAVAILABLE when the backend cannot be
  // reached, RESOURCE_EXHAUSTED when it is full, INTERNAL otherwise. Parts
  // spare the caller a copy of multi-megabyte values into one buffer.
  virtual absl::Status PutParts(const std::string& key,
                                absl::Span<const std::string_view> parts) = 0;
  absl::Status Put(const std::string& key, std::string_view bytes) {
    return PutParts(key, {bytes});
  }

  // NOT_FOUND naming the key when absent.
  virtual absl::StatusOr<std::string> Get(const std::string& key) = 0;

  // Removes the blob; OK when it was already absent.
  virtual absl::Status Delete(const std::string& key) = 0;

  // For logs and errors: "postgres", "file:///var/lib/sslbench/blobs".
  virtual std::string Describe() const = 0;
};

// A blob store in a folder: one file per key, written to a temporary name,
// fsynced and renamed, so a reader never sees a partial blob. INVALID_ARGUMENT
// when `root` cannot be created or written.
absl::StatusOr<std::unique_ptr<BlobStore>> NewFileBlobStore(const std::string& root);

}  // namespace sslbench::server
