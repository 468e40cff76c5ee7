// PgStore's feature caches: chunk records in the database, chunk bytes in a
// BlobStore (by default the `blobs` table of the same database).

#include <cmath>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/study_spec.h"
#include "server/store/pg_internal.h"
#include "server/store/pg_store.h"

namespace sslbench::server {

// Blobs in a table of the store's own database. Its commits do not wait for
// the WAL flush: the chunk record that refers to a blob is committed after
// it, so the WAL's order makes the blob durable no later than its record.
class PgStore::TableBlobStore final : public BlobStore {
 public:
  explicit TableBlobStore(PgStore& store) : store_(store) {}

  absl::Status PutParts(const std::string& key,
                        absl::Span<const std::string_view> parts) override {
    std::string joined;
    std::string_view bytes = parts.empty() ? std::string_view() : parts[0];
    if (parts.size() > 1) {
      for (std::string_view part : parts) joined.append(part);
      bytes = joined;
    }
    return store_.Transact("put_blob", [&](Txn& t) -> absl::Status {
      t.work.exec0("SET LOCAL synchronous_commit TO OFF");
      t.work.exec_params(
          "INSERT INTO blobs (key, data) VALUES ($1, $2) "
          "ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data",
          key, Bytes(bytes));
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::string> Get(const std::string& key) override {
    std::string out;
    RETURN_IF_ERROR(store_.Transact("get_blob", [&](Txn& t) -> absl::Status {
      const auto r = t.work.exec_params("SELECT data FROM blobs WHERE key = $1", key);
      if (r.empty()) return absl::NotFoundError(absl::StrCat("blob ", key, " not found in postgres"));
      out = FromBytes(r[0][0]);
      return absl::OkStatus();
    }));
    return out;
  }

  absl::Status Delete(const std::string& key) override {
    return store_.Transact("delete_blob", [&](Txn& t) -> absl::Status {
      t.work.exec_params("DELETE FROM blobs WHERE key = $1", key);
      return absl::OkStatus();
    });
  }

  std::string Describe() const override { return "postgres"; }

 private:
  PgStore& store_;
};

std::shared_ptr<BlobStore> PgStore::NewTableBlobStore() {
  return std::make_shared<TableBlobStore>(*this);
}

namespace {

// Checks that task `task_id` holds its lease with `token` and fills `key`.
absl::Status CheckFence(pqxx::work& w, int64_t task_id, int64_t token,
                        const std::string& cache_key) {
  std::string fills;
  RETURN_IF_ERROR(CheckLease(w, task_id, token, &fills));
  if (fills.empty()) {  // a probe: it reads features, it stores none
    return absl::InvalidArgumentError(
        absl::StrCat("task ", task_id, " is not an extraction: it fills no feature cache"));
  }
  if (fills != cache_key) {
    return absl::InvalidArgumentError(
        absl::StrCat("task ", task_id, " fills cache ", fills, ", not ", cache_key));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PgStore::PutFeatureChunk(int64_t task_id, int64_t token,
                                      const v1::FeatureChunk& chunk) {
  if (chunk.num_rows() <= 0 || chunk.dim() <= 0 || chunk.chunk_index() < 0 ||
      chunk.row_start() < 0) {
    return absl::InvalidArgumentError(
        "chunk: num_rows and dim must be positive, chunk_index and row_start >= 0");
  }
  // Chunk c of a feature set starts at c x R rows for one R (all chunks but
  // the last hold R rows): a chunk that breaks that layout, or an index no
  // feature set reaches, is refused here, before any worker resuming the
  // extraction has to size anything by it.
  if (chunk.chunk_index() >= kMaxFeatureChunks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk_index ", chunk.chunk_index(), " is beyond the ", kMaxFeatureChunks,
        " chunks a feature set may have"));
  }
  if (chunk.chunk_index() == 0 ? chunk.row_start() != 0
                               : (chunk.row_start() % chunk.chunk_index() != 0 ||
                                  chunk.num_rows() > chunk.row_start() / chunk.chunk_index())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk ", chunk.chunk_index(), ": rows [", chunk.row_start(), ", ",
        chunk.row_start() + chunk.num_rows(),
        ") do not fit a layout of equal chunks (chunk c starts at c x R rows and holds at "
        "most R)"));
  }
  if (!chunk.dtype().empty() && chunk.dtype() != "float32" && chunk.dtype() != "float16") {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk ", chunk.chunk_index(), ": dtype \"", chunk.dtype(),
                     "\" is not float32 or float16"));
  }
  const std::string dtype = chunk.dtype().empty() ? "float32" : chunk.dtype();
  const int64_t want_features =
      int64_t{chunk.num_rows()} * chunk.dim() * (dtype == "float16" ? 2 : 4);
  if (static_cast<int64_t>(chunk.features().size()) != want_features ||
      static_cast<int64_t>(chunk.labels().size()) != int64_t{chunk.num_rows()} * 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk ", chunk.chunk_index(), ": ", chunk.features().size(),
        " feature bytes and ", chunk.labels().size(), " label bytes for ",
        chunk.num_rows(), " rows of width ", chunk.dim()));
  }
  // Non-finite features would poison every later study that reuses the
  // cache: refused, naming the row.
  const size_t width = dtype == "float16" ? 2 : 4;
  const std::string& f = chunk.features();
  for (size_t i = 0; i < f.size(); i += width) {
    bool finite;
    if (width == 2) {
      uint16_t h;
      std::memcpy(&h, f.data() + i, 2);
      finite = (h & 0x7C00) != 0x7C00;
    } else {
      float v;
      std::memcpy(&v, f.data() + i, 4);
      finite = std::isfinite(v);
    }
    if (!finite) {
      const int64_t value = static_cast<int64_t>(i / width);
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk ", chunk.chunk_index(), ": row ", chunk.row_start() + value / chunk.dim(),
          " holds a non-finite feature (NaN or infinity); the model's output is broken"));
    }
  }
  // Check the fence before writing bytes, and again with the record.
  RETURN_IF_ERROR(Transact("check_fence", [&](Txn& t) {
    return CheckFence(t.work, task_id, token, chunk.cache_key());
  }));
  // The key carries the fencing token: a writer whose lease was lost in
  // between writes a blob that no record will name, never the current one.
  const std::string key =
      absl::StrCat("features/", chunk.cache_key(), "/", chunk.chunk_index(), ".", token);
  // Features then labels, as one blob; written from the request's buffers.
  const std::string_view parts[] = {chunk.features(), chunk.labels()};
  const uint64_t blob_bytes = parts[0].size() + parts[1].size();
  const uint32_t crc = Crc32(Crc32(parts[0]), parts[1]);
  RETURN_IF_ERROR(blobs_->PutParts(key, parts));
  std::string replaced;
  const absl::Status recorded = Transact("put_feature_chunk", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    RETURN_IF_ERROR(CheckFence(w, task_id, token, chunk.cache_key()));
    const auto old = w.exec_params(
        "SELECT blob_key FROM feature_chunks WHERE cache_key = $1 AND chunk_index = $2 "
        "FOR UPDATE",
        chunk.cache_key(), chunk.chunk_index());
    replaced = old.empty() || old[0][0].is_null() ? "" : old[0][0].as<std::string>();
    if (replaced.empty()) {
      // A new chunk can be computed again, so its commit does not wait for
      // the WAL flush (one flush per chunk halved the write rate).
      // CompleteTask commits synchronously, which flushes every chunk
      // record written before it; a crash before that loses at most the
      // latest records, which the next attempt finds missing and writes
      // again. A record that replaces another waits: the old blob is deleted
      // after it.
      w.exec0("SET LOCAL synchronous_commit TO OFF");
    }
    w.exec_params(
        "INSERT INTO feature_chunks (cache_key, chunk_index, row_start, num_rows, dim, "
        "features, labels, blob_key, blob_bytes, blob_crc, dtype) "
        "VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7, $8, $9) "
        "ON CONFLICT (cache_key, chunk_index) DO UPDATE SET row_start = EXCLUDED.row_start, "
        "num_rows = EXCLUDED.num_rows, dim = EXCLUDED.dim, features = NULL, labels = NULL, "
        "blob_key = EXCLUDED.blob_key, blob_bytes = EXCLUDED.blob_bytes, "
        "blob_crc = EXCLUDED.blob_crc, dtype = EXCLUDED.dtype",
        chunk.cache_key(), chunk.chunk_index(), chunk.row_start(), chunk.num_rows(),
        chunk.dim(), key, static_cast<int64_t>(blob_bytes), static_cast<int64_t>(crc), dtype);
    return absl::OkStatus();
  });
  if (!recorded.ok()) {
    if (absl::Status s = blobs_->Delete(key); !s.ok()) {
      LogWarning("store", "orphaned blob ", key, " in ", blobs_->Describe(), ": ", s.message());
    }
    return recorded;
  }
  if (!replaced.empty() && replaced != key) {
    if (absl::Status s = blobs_->Delete(replaced); !s.ok()) {
      LogWarning("store", "orphaned blob ", replaced, " in ", blobs_->Describe(), ": ",
                 s.message());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::FeatureChunk> PgStore::GetFeatureChunk(const std::string& cache_key,
                                                          int32_t chunk_index) {
  v1::FeatureChunk chunk;
  std::string key;
  int64_t size = 0, crc = 0;
  RETURN_IF_ERROR(Transact("get_feature_chunk", [&](Txn& t) -> absl::Status {
    const auto r = t.work.exec_params(
        "SELECT row_start, num_rows, dim, blob_key, blob_bytes, blob_crc, dtype, "
        "CASE WHEN blob_key IS NULL THEN features END, "
        "CASE WHEN blob_key IS NULL THEN labels END "
        "FROM feature_chunks WHERE cache_key = $1 AND chunk_index = $2",
        cache_key, chunk_index);
    if (r.empty()) {
      return absl::NotFoundError(
          absl::StrCat("feature cache ", cache_key, " has no chunk ", chunk_index));
    }
    chunk.set_cache_key(cache_key);
    chunk.set_chunk_index(chunk_index);
    chunk.set_row_start(r[0][0].as<int64_t>());
    chunk.set_num_rows(r[0][1].as<int32_t>());
    chunk.set_dim(r[0][2].as<int32_t>());
    if (r[0][3].is_null()) {
      // Written before blob stores: the bytes are in the row.
      chunk.set_features(FromBytes(r[0][7]));
      chunk.set_labels(FromBytes(r[0][8]));
      key.clear();
    } else {
      key = r[0][3].as<std::string>();
      size = r[0][4].as<int64_t>();
      crc = r[0][5].as<int64_t>();
      chunk.set_dtype(r[0][6].as<std::string>());
    }
    return absl::OkStatus();
  }));
  if (key.empty()) return chunk;
  ASSIGN_OR_RETURN(std::string bytes, blobs_->Get(key));
  const int64_t feature_bytes =
      int64_t{chunk.num_rows()} * chunk.dim() * (chunk.dtype() == "float16" ? 2 : 4);
  if (static_cast<int64_t>(bytes.size()) != size || size != feature_bytes + chunk.num_rows() * 4 ||
      static_cast<int64_t>(Crc32(bytes)) != crc) {
    return absl::DataLossError(absl::StrCat(
        "feature cache ", cache_key, ": chunk ", chunk_index, " is damaged in ",
        blobs_->Describe(), " (blob ", key, ": ", bytes.size(), " bytes, expected ", size,
        " with CRC-32 ", crc, ")"));
  }
  // The labels copied out, the features moved: no second copy of the chunk.
  chunk.set_labels(bytes.substr(static_cast<size_t>(feature_bytes)));
  bytes.resize(static_cast<size_t>(feature_bytes));
  chunk.set_features(std::move(bytes));
  return chunk;
}

absl::StatusOr<v1::FeatureCacheInfo> PgStore::GetFeatureCache(
    const std::string& cache_key) {
  v1::FeatureCacheInfo info;
  RETURN_IF_ERROR(Transact("get_feature_cache", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    info.Clear();
    const auto r = w.exec_params(
        "SELECT complete, num_rows, dim, num_chunks, generation FROM feature_caches "
        "WHERE cache_key = $1",
        cache_key);
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("feature cache ", cache_key, " not found"));
    }
    info.set_cache_key(cache_key);
    info.set_complete(r[0][0].as<bool>());
    info.set_num_rows(r[0][1].as<int64_t>());
    info.set_dim(r[0][2].as<int32_t>());
    info.set_num_chunks(r[0][3].as<int32_t>());
    info.set_generation(r[0][4].as<int64_t>());
    const auto c = w.exec_params(
        "SELECT chunk_index FROM feature_chunks WHERE cache_key = $1 "
        "ORDER BY chunk_index",
        cache_key);
    for (const auto& row : c) info.add_present_chunks(row[0].as<int32_t>());
    const auto first = w.exec_params(
        "SELECT num_rows FROM feature_chunks WHERE cache_key = $1 AND chunk_index = 0",
        cache_key);
    if (!first.empty()) info.set_chunk_rows(first[0][0].as<int32_t>());
    return absl::OkStatus();
  }));
  return info;
}


namespace {

// Summary columns of a feature_caches row `c`, with the stored chunks and
// bytes and the unfinished tasks that fill (the producer) or read it.
constexpr char kCacheSummary[] =
    "SELECT c.cache_key, c.model, c.dataset, c.split, c.complete, c.num_rows, c.dim, "
    "c.created_us, "
    "(SELECT count(*) FROM feature_chunks k WHERE k.cache_key = c.cache_key), "
    "(SELECT coalesce(sum(coalesce(k.blob_bytes, 0) + coalesce(octet_length(k.features), 0) + "
    "coalesce(octet_length(k.labels), 0)), 0) FROM feature_chunks k "
    "WHERE k.cache_key = c.cache_key), "
    "(SELECT count(*) FROM tasks t WHERE t.state IN ('PENDING', 'LEASED') AND "
    "(t.id = c.producer_task OR t.input_key = c.cache_key OR t.test_key = c.cache_key)) "
    "FROM feature_caches c ";

v1::FeatureCacheSummary SummaryOf(const pqxx::row& r) {
  v1::FeatureCacheSummary s;
  s.set_cache_key(r[0].as<std::string>());
  s.set_model(r[1].as<std::string>());
  s.set_dataset(r[2].as<std::string>());
  s.set_split(r[3].as<std::string>());
  s.set_complete(r[4].as<bool>());
  s.set_num_rows(r[5].as<int64_t>());
  s.set_dim(r[6].as<int32_t>());
  s.set_created_unix(static_cast<double>(r[7].as<int64_t>()) / 1e6);
  s.set_num_chunks(r[8].as<int32_t>());
  s.set_bytes(r[9].as<int64_t>());
  s.set_readers(r[10].as<int64_t>());
  return s;
}

}  // namespace

absl::StatusOr<std::vector<v1::FeatureCacheSummary>> PgStore::ListFeatureCaches(
    int64_t study_id, int limit) {
  std::vector<v1::FeatureCacheSummary> out;
  RETURN_IF_ERROR(Transact("list_feature_caches", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    out.clear();
    pqxx::result rows;
    if (study_id == 0) {
      rows = w.exec_params(absl::StrCat(kCacheSummary, "ORDER BY c.created_us DESC LIMIT $1"),
                           limit);
    } else {
      if (w.exec_params("SELECT 1 FROM studies WHERE id = $1", study_id).empty()) {
        return absl::NotFoundError(absl::StrCat("study ", study_id, " not found"));
      }
      rows = w.exec_params(
          absl::StrCat(kCacheSummary,
                       "WHERE c.cache_key IN (SELECT k FROM tasks t, "
                       "unnest(ARRAY[t.cache_key, t.input_key, t.test_key]) AS k "
                       "WHERE t.study_id = $1 AND k <> '') "
                       "ORDER BY c.model, c.dataset, c.split LIMIT $2"),
          study_id, limit);
    }
    for (const auto& r : rows) out.push_back(SummaryOf(r));
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<v1::FeatureCacheSummary> PgStore::DropFeatureCache(const std::string& cache_key) {
  v1::FeatureCacheSummary dropped;
  std::vector<std::string> blob_keys;
  RETURN_IF_ERROR(Transact("drop_feature_cache", [&](Txn& t) -> absl::Status {
    auto& w = t.work;
    blob_keys.clear();
    // The row lock orders this against a study being planned on the cache.
    const auto locked = w.exec_params(
        "SELECT producer_task FROM feature_caches WHERE cache_key = $1 FOR UPDATE", cache_key);
    if (locked.empty()) {
      return absl::NotFoundError(absl::StrCat("feature cache ", cache_key, " not found"));
    }
    const auto readers = w.exec_params(
        "SELECT id FROM tasks WHERE state IN ('PENDING', 'LEASED') AND "
        "(id = $2 OR input_key = $1 OR test_key = $1) ORDER BY id LIMIT 5",
        cache_key, locked[0][0].as<int64_t>());
    if (!readers.empty()) {
      std::vector<std::string> ids;
      for (const auto& r : readers) ids.push_back(r[0].as<std::string>());
      return absl::FailedPreconditionError(absl::StrCat(
          "feature cache ", cache_key, " is in use by unfinished tasks (", absl::StrJoin(ids, ", "),
          readers.size() == 5 ? ", ..." : "", "); cancel their studies first"));
    }
    dropped = SummaryOf(w.exec_params(absl::StrCat(kCacheSummary, "WHERE c.cache_key = $1"),
                                      cache_key)[0]);
    for (const auto& r : w.exec_params(
             "SELECT blob_key FROM feature_chunks WHERE cache_key = $1 AND blob_key IS NOT NULL",
             cache_key)) {
      blob_keys.push_back(r[0].as<std::string>());
    }
    w.exec_params("DELETE FROM feature_chunks WHERE cache_key = $1", cache_key);
    w.exec_params("DELETE FROM feature_caches WHERE cache_key = $1", cache_key);
    return absl::OkStatus();
  }));
  // The record is gone; the bytes follow. A failure leaves an unreferenced
  // blob (logged), never a record without its bytes.
  for (const std::string& key : blob_keys) {
    if (absl::Status s = blobs_->Delete(key); !s.ok()) {
      LogWarning("store", "feature cache ", cache_key, ": blob ", key,
                 " not deleted: ", s.message());
    }
  }
  LogInfo("store", "dropped feature cache ", cache_key, " (", dropped.model(), "/",
          dropped.dataset(), "/", dropped.split(), ", ", dropped.num_chunks(), " chunks, ",
          dropped.bytes(), " bytes)");
  return dropped;
}

}  // namespace sslbench::server
