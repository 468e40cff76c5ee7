#pragma once
// A worker's disk cache of complete feature sets, by cache key, bounded in
// bytes (least recently used sets go first) and checksummed. Feature sets
// are content-addressed and immutable once complete, so a hit is always
// valid; the coordinator's store stays the record. The keys it holds are
// sent with every lease request, so probes go to workers that have their
// features. Thread-safe.

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/compute/features.h"

namespace sslbench::worker {

// The key a set is kept under locally: the coordinator's cache key and its
// generation (FeatureCacheInfo.generation; 0 from older coordinators keeps
// the plain key). CacheKeyOf() inverts it, for the keys sent with leases.
std::string LocalCacheKey(const std::string& cache_key, int64_t generation);
std::string CacheKeyOf(const std::string& local_key);

class LocalFeatureCache {
 public:
  // Opens (creating) `dir` and indexes the sets already there, most recently
  // used first (by modification time). INVALID_ARGUMENT when `dir` cannot be
  // created or written, or max_bytes < 1.
  static absl::StatusOr<std::unique_ptr<LocalFeatureCache>> Open(const std::string& dir,
                                                                 int64_t max_bytes);

  // The set stored under `key`. NOT_FOUND when absent; a damaged file (bad
  // header, size or CRC-32) is removed and reported NOT_FOUND too.
  absl::StatusOr<compute::FeatureMatrix> Get(const std::string& key);

  // Stores a complete set, then evicts least recently used sets until the
  // cache fits max_bytes. A set larger than max_bytes is not stored.
  absl::Status Put(const std::string& key, const compute::FeatureMatrix& features);

  // Keys held, most recently used first, at most `limit`.
  std::vector<std::string> Keys(size_t limit) const;
  int64_t bytes() const;

 private:
  LocalFeatureCache(std::string dir, int64_t max_bytes)
      : dir_(std::move(dir)), max_bytes_(max_bytes) {}
  std::string Path(const std::string& key) const;
  void Touch(const std::string& key, int64_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Evict() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  const int64_t max_bytes_;
  mutable absl::Mutex mu_;
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // front: most recent
  struct Entry {
    std::list<std::string>::iterator position;
    int64_t size;
  };
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sslbench::worker
