#include "worker/feature_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/crc32.h"
#include "common/log.h"

namespace sslbench::worker {

std::string LocalCacheKey(const std::string& cache_key, int64_t generation) {
  return generation == 0 ? cache_key : absl::StrCat(cache_key, "-g", generation);
}

std::string CacheKeyOf(const std::string& local_key) {
  const size_t at = local_key.rfind("-g");
  if (at == std::string::npos || at + 2 >= local_key.size()) return local_key;
  for (size_t i = at + 2; i < local_key.size(); ++i) {
    if (local_key[i] < '0' || local_key[i] > '9') return local_key;
  }
  return local_key.substr(0, at);
}
namespace {

using ::sslbench::Crc32;

namespace fs = std::filesystem;

constexpr char kMagic[8] = {'S', 'S', 'L', 'B', 'F', 'C', '0', '1'};
constexpr char kSuffix[] = ".features";

// Header: magic, rows, dim, CRC-32 of the payload (features then labels).
struct Header {
  char magic[8];
  int64_t rows;
  int64_t dim;
  uint32_t crc;
  uint32_t reserved;
};

// A hex cache key, with or without its generation ("-g" and digits).
bool ValidKey(const std::string& local_key) {
  if (local_key.size() > 160) return false;
  const std::string key = CacheKeyOf(local_key);
  if (key.empty() || key.size() > 128) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
}

uint32_t Crc(const compute::FeatureMatrix& m) {
  const uint32_t crc = Crc32(std::string_view(reinterpret_cast<const char*>(m.data.data()),
                                               m.data.size() * 4));
  return Crc32(crc, std::string_view(reinterpret_cast<const char*>(m.labels.data()),
                                     m.labels.size() * 4));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalFeatureCache>> LocalFeatureCache::Open(const std::string& dir,
                                                                           int64_t max_bytes) {
  if (max_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("feature cache size must be positive, got ", max_bytes));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || ::access(dir.c_str(), W_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("feature cache folder ", dir,
                                                   " cannot be created or written"));
  }
  std::unique_ptr<LocalFeatureCache> cache(new LocalFeatureCache(dir, max_bytes));
  std::vector<std::pair<fs::file_time_type, std::pair<std::string, int64_t>>> found;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t suffix = name.size() - std::strlen(kSuffix);
    if (name.size() <= std::strlen(kSuffix) || name.compare(suffix, std::string::npos, kSuffix) != 0) {
      continue;
    }
    const std::string key = name.substr(0, suffix);
    if (!ValidKey(key)) continue;
    std::error_code stat_ec;
    const auto size = fs::file_size(e.path(), stat_ec);
    const auto mtime = fs::last_write_time(e.path(), stat_ec);
    if (!stat_ec) found.push_back({mtime, {key, static_cast<int64_t>(size)}});
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  absl::MutexLock lock(&cache->mu_);
  for (const auto& [mtime, entry] : found) {
    cache->lru_.push_back(entry.first);
    cache->entries_[entry.first] = Entry{std::prev(cache->lru_.end()), entry.second};
    cache->bytes_ += entry.second;
  }
  cache->Evict();
  return cache;
}

std::string LocalFeatureCache::Path(const std::string& key) const {
  return absl::StrCat(dir_, "/", key, kSuffix);
}

void LocalFeatureCache::Touch(const std::string& key, int64_t size) {
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    bytes_ -= it->second.size;
    lru_.erase(it->second.position);
  }
  lru_.push_front(key);
  entries_[key] = Entry{lru_.begin(), size};
  bytes_ += size;
}

void LocalFeatureCache::Forget(const std::string& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  bytes_ -= it->second.size;
  lru_.erase(it->second.position);
  entries_.erase(it);
}

void LocalFeatureCache::Evict() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    const std::string victim = lru_.back();
    Forget(victim);
    std::error_code ec;
    fs::remove(Path(victim), ec);
  }
}

absl::StatusOr<compute::FeatureMatrix> LocalFeatureCache::Get(const std::string& key) {
  if (!ValidKey(key)) return absl::NotFoundError(absl::StrCat("no cached features ", key));
  {
    absl::MutexLock lock(&mu_);
    if (entries_.count(key) == 0) return absl::NotFoundError(absl::StrCat("no cached features ", key));
  }
  const std::string path = Path(key);
  std::ifstream in(path, std::ios::binary);
  Header h{};
  compute::FeatureMatrix m;
  bool good = in.read(reinterpret_cast<char*>(&h), sizeof(h)) &&
              std::memcmp(h.magic, kMagic, sizeof(kMagic)) == 0 && h.rows >= 0 && h.dim >= 0 &&
              h.rows < (int64_t{1} << 32) && h.dim < (1 << 20);
  std::error_code ec;
  if (good) {
    good = static_cast<int64_t>(fs::file_size(path, ec)) ==
           static_cast<int64_t>(sizeof(h)) + h.rows * h.dim * 4 + h.rows * 4;
  }
  if (good) {
    m.rows = h.rows;
    m.dim = h.dim;
    m.data.resize(static_cast<size_t>(h.rows * h.dim));
    m.labels.resize(static_cast<size_t>(h.rows));
    good = in.read(reinterpret_cast<char*>(m.data.data()), static_cast<std::streamsize>(m.data.size() * 4)) &&
           in.read(reinterpret_cast<char*>(m.labels.data()), static_cast<std::streamsize>(m.labels.size() * 4)) &&
           Crc(m) == h.crc;
  }
  absl::MutexLock lock(&mu_);
  if (!good) {
    LogWarning("worker", "feature cache: ", path, " is damaged; removed");
    Forget(key);
    fs::remove(path, ec);
    return absl::NotFoundError(absl::StrCat("cached features ", key, " were damaged"));
  }
  // Recently used: first in line to stay, also after a restart.
  Touch(key, static_cast<int64_t>(sizeof(Header)) + m.rows * m.dim * 4 + m.rows * 4);
  fs::last_write_time(path, fs::file_time_type::clock::now(), ec);
  return m;
}

absl::Status LocalFeatureCache::Put(const std::string& key, const compute::FeatureMatrix& m) {
  if (!ValidKey(key)) return absl::InvalidArgumentError(absl::StrCat("bad cache key \"", key, "\""));
  const int64_t size = static_cast<int64_t>(sizeof(Header)) + m.rows * m.dim * 4 + m.rows * 4;
  if (size > max_bytes_) return absl::OkStatus();  // would evict everything
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.rows = m.rows;
  h.dim = m.dim;
  h.crc = Crc(m);
  const std::string path = Path(key);
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(&h), sizeof(h));
    out.write(reinterpret_cast<const char*>(m.data.data()), static_cast<std::streamsize>(m.data.size() * 4));
    out.write(reinterpret_cast<const char*>(m.labels.data()), static_cast<std::streamsize>(m.labels.size() * 4));
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      return absl::ResourceExhaustedError(absl::StrCat("cannot write ", tmp, " (disk full?)"));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  absl::MutexLock lock(&mu_);
  Touch(key, size);
  Evict();
  return absl::OkStatus();
}

std::vector<std::string> LocalFeatureCache::Keys(size_t limit) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> keys;
  for (const std::string& k : lru_) {
    if (keys.size() >= limit) break;
    keys.push_back(k);
  }
  return keys;
}

int64_t LocalFeatureCache::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

}  // namespace sslbench::worker
