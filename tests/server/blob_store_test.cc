// The conformance suite every BlobStore passes (PostgreSQL's table and a
// folder), and the feature store on each of them through PgStore.

#include "server/store/blob_store.h"

#include <pqxx/pqxx>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/coordinator.h"
#include "server/store/pg_store.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/study_fixtures.h"
#include "tests/testing/test_postgres.h"

namespace sslbench::server {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string TempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const fs::path dir = fs::path(::testing::TempDir()) /
                       absl::StrCat("sslbench_blobs_", ::getpid(), "_", name, "_", counter++);
  fs::remove_all(dir);
  return dir.string();
}

// One backend under test: the store, and a way to damage a stored blob
// behind the store's back.
struct Backend {
  std::string conninfo;
  std::unique_ptr<PgStore> pg;  // owns the table store; null for the folder
  std::shared_ptr<BlobStore> store;
  std::string folder;
  std::function<void(const std::string& key, const std::string& bytes)> overwrite;
};

using BackendFactory = std::function<Backend()>;

Backend Table() {
  Backend b;
  auto db = testing::FreshDatabase();
  EXPECT_TRUE(db.ok()) << db.status();
  b.conninfo = *db;
  PgStoreOptions options;
  options.conninfo = b.conninfo;
  auto pg = PgStore::Create(options);
  EXPECT_TRUE(pg.ok()) << pg.status();
  b.pg = *std::move(pg);
  // Not owning: the table store lives as long as b.pg.
  b.store = std::shared_ptr<BlobStore>(std::shared_ptr<void>(), &b.pg->blobs());
  const std::string conninfo = b.conninfo;
  b.overwrite = [conninfo](const std::string& key, const std::string& bytes) {
    pqxx::connection c(conninfo);
    pqxx::work w(c);
    w.exec_params("UPDATE blobs SET data = $2 WHERE key = $1", key,
                  pqxx::binarystring(bytes.data(), bytes.size()));
    w.commit();
  };
  return b;
}

Backend Folder() {
  Backend b;
  b.folder = TempDir("folder");
  auto store = NewFileBlobStore(b.folder);
  EXPECT_TRUE(store.ok()) << store.status();
  b.store = *std::move(store);
  const std::string folder = b.folder;
  b.overwrite = [folder](const std::string& key, const std::string& bytes) {
    std::ofstream(folder + "/" + key, std::ios::binary | std::ios::trunc) << bytes;
  };
  return b;
}

class BlobStoreConformance : public ::testing::TestWithParam<std::pair<std::string, BackendFactory>> {
 protected:
  void SetUp() override { backend_ = GetParam().second(); }
  BlobStore& store() { return *backend_.store; }
  Backend backend_;
};

TEST_P(BlobStoreConformance, PutThenGetReturnsTheBytes) {
  std::string big(9 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 + 7);
  ASSERT_TRUE(store().Put("features/abc/0.1", big).ok());
  ASSERT_TRUE(store().Put("features/abc/1.1", "").ok());
  ASSERT_TRUE(store().Put("x", std::string("\0\1\2", 3)).ok());
  auto got = store().Get("features/abc/0.1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got == big);
  EXPECT_EQ(store().Get("features/abc/1.1").value(), "");
  EXPECT_EQ(store().Get("x").value(), std::string("\0\1\2", 3));
}

TEST_P(BlobStoreConformance, PutPartsStoresTheirConcatenation) {
  std::string big(5 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 17 + 3);
  const std::string_view parts[] = {"", std::string_view(big).substr(0, 3 << 20), "",
                                    std::string_view(big).substr(3 << 20), "tail"};
  ASSERT_TRUE(store().PutParts("features/abc/2.1", parts).ok());
  auto got = store().Get("features/abc/2.1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got == big + "tail");
  ASSERT_TRUE(store().PutParts("features/abc/3.1", {}).ok());
  EXPECT_EQ(store().Get("features/abc/3.1").value(), "");
}

TEST_P(BlobStoreConformance, PutReplaces) {
  ASSERT_TRUE(store().Put("k", "first").ok());
  ASSERT_TRUE(store().Put("k", "second, longer").ok());
  EXPECT_EQ(store().Get("k").value(), "second, longer");
}

TEST_P(BlobStoreConformance, MissingIsNotFoundNamingTheKey) {
  auto got = store().Get("features/none/3.9");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("features/none/3.9"));
}

TEST_P(BlobStoreConformance, DeleteRemovesAndIsIdempotent) {
  ASSERT_TRUE(store().Put("gone", "bytes").ok());
  EXPECT_TRUE(store().Delete("gone").ok());
  EXPECT_EQ(store().Get("gone").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store().Delete("gone").ok());
  EXPECT_TRUE(store().Delete("never-there").ok());
}

TEST_P(BlobStoreConformance, ConcurrentWritersOfDistinctKeysAllLand) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 8; ++i) {
        const std::string key = absl::StrCat("c/", t, "/", i);
        if (!store().Put(key, std::string(1000 + t * 10 + i, static_cast<char>('a' + t))).ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  for (int t = 0; t < 6; ++t) {
    for (int i = 0; i < 8; ++i) {
      auto got = store().Get(absl::StrCat("c/", t, "/", i));
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->size(), static_cast<size_t>(1000 + t * 10 + i));
    }
  }
}

TEST_P(BlobStoreConformance, DescribesItself) { EXPECT_FALSE(store().Describe().empty()); }

INSTANTIATE_TEST_SUITE_P(
    AllBackends, BlobStoreConformance,
    ::testing::Values(std::make_pair(std::string("postgres"), BackendFactory(&Table)),
                      std::make_pair(std::string("folder"), BackendFactory(&Folder))),
    [](const auto& info) { return info.param.first; });

TEST(FileBlobStoreTest, RejectsKeysThatLeaveTheFolderAndBadRoots) {
  const std::string folder = TempDir("keys");
  auto store = NewFileBlobStore(folder);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Put("../escape", "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->Put("/abs", "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewFileBlobStore("relative/dir").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewFileBlobStore("/proc/sslbench-cannot-create").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The feature store through PgStore, on each backend: chunks round-trip, a
// damaged blob is DATA_LOSS naming the chunk, and a writer whose lease was
// lost leaves no blob behind.
class FeatureStoreOnBlobsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto db = testing::FreshDatabase();
    ASSERT_TRUE(db.ok()) << db.status();
    conninfo_ = *db;
    PgStoreOptions options;
    options.conninfo = conninfo_;
    if (GetParam() == "folder") {
      folder_ = TempDir("features");
      auto blobs = NewFileBlobStore(folder_);
      ASSERT_TRUE(blobs.ok());
      options.blobs = *std::move(blobs);
    }
    auto store = PgStore::Create(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    policy_.lease_duration = absl::Seconds(30);
    coordinator_ = std::make_unique<Coordinator>(*store_, clock_, policy_, nullptr);
    v1::SubmitStudyRequest submit;
    *submit.mutable_spec() = testing::MakeStudy(1, 1);
    ASSERT_TRUE(coordinator_->SubmitStudy(submit).ok());
    v1::RegisterWorkerRequest reg;
    reg.set_name("w");
    worker_ = coordinator_->RegisterWorker(reg)->worker_id();
    v1::LeaseTaskRequest lease;
    lease.set_worker_id(worker_);
    lease_ = *coordinator_->LeaseTask(lease);
    ASSERT_EQ(lease_.spec().kind(), v1::TASK_KIND_EXTRACT);
  }

  absl::Status Put(int32_t index, int64_t token, char fill) {
    v1::PutFeatureChunkRequest put;
    put.set_task_id(lease_.task_id());
    put.set_lease_token(token);
    auto* chunk = put.mutable_chunk();
    chunk->set_cache_key(lease_.spec().cache_key());
    chunk->set_chunk_index(index);
    chunk->set_row_start(index * 3);
    chunk->set_num_rows(3);
    chunk->set_dim(4);
    chunk->set_features(std::string(48, fill));
    chunk->set_labels(std::string(12, '\1'));
    return coordinator_->PutFeatureChunk(put);
  }

  absl::StatusOr<v1::FeatureChunk> Get(int32_t index) {
    v1::GetFeatureChunkRequest get;
    get.set_cache_key(lease_.spec().cache_key());
    get.set_chunk_index(index);
    return coordinator_->GetFeatureChunk(get);
  }

  int64_t BlobCount() {
    if (GetParam() == "folder") {
      int64_t n = 0;
      for (const auto& e : fs::recursive_directory_iterator(folder_)) n += e.is_regular_file();
      return n;
    }
    pqxx::connection c(conninfo_);
    pqxx::work w(c);
    return w.exec1("SELECT count(*) FROM blobs")[0].as<int64_t>();
  }

  std::string conninfo_;
  std::string folder_;
  std::unique_ptr<PgStore> store_;
  testing::FakeClock clock_;
  LeasePolicy policy_;
  std::unique_ptr<Coordinator> coordinator_;
  int64_t worker_ = 0;
  v1::LeaseTaskResponse lease_;
};

TEST_P(FeatureStoreOnBlobsTest, ChunksRoundTripAndRewritesKeepOneBlob) {
  ASSERT_TRUE(Put(0, lease_.lease_token(), 'a').ok());
  ASSERT_TRUE(Put(1, lease_.lease_token(), 'b').ok());
  ASSERT_TRUE(Put(1, lease_.lease_token(), 'c').ok());  // a retried upload
  auto one = Get(1);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->features(), std::string(48, 'c'));
  EXPECT_EQ(one->labels(), std::string(12, '\1'));
  EXPECT_EQ(one->row_start(), 3);
  EXPECT_EQ(BlobCount(), 2);
  EXPECT_EQ(Get(2).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(FeatureStoreOnBlobsTest, DamagedBlobIsDataLossNamingTheChunk) {
  ASSERT_TRUE(Put(0, lease_.lease_token(), 'a').ok());
  const std::string key =
      absl::StrCat("features/", lease_.spec().cache_key(), "/0.", lease_.lease_token());
  std::string damaged(60, 'a');
  damaged[5] = 'X';
  if (GetParam() == "folder") {
    std::ofstream(folder_ + "/" + key, std::ios::binary | std::ios::trunc) << damaged;
  } else {
    pqxx::connection c(conninfo_);
    pqxx::work w(c);
    w.exec_params("UPDATE blobs SET data = $2 WHERE key = $1", key,
                  pqxx::binarystring(damaged.data(), damaged.size()));
    w.commit();
  }
  auto got = Get(0);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("chunk 0 is damaged"));
}

TEST_P(FeatureStoreOnBlobsTest, StaleWriterLeavesNoBlob) {
  const absl::Status stale = Put(0, lease_.lease_token() + 1000, 'z');
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(BlobCount(), 0);
}

// Checkpoints cross in parts; one becomes the task's latest when its last
// part arrives, whatever the order, and the parts of the one it replaces go.
TEST_P(FeatureStoreOnBlobsTest, CheckpointsInPartsReplaceTheLatestWhenComplete) {
  auto put = [&](int64_t step, int32_t part, int32_t parts, const std::string& data,
                 int64_t total, int64_t token) {
    v1::PutCheckpointRequest r;
    r.set_task_id(lease_.task_id());
    r.set_lease_token(token);
    r.set_step(step);
    r.set_part(part);
    r.set_num_parts(parts);
    r.set_total_bytes(total);
    r.set_data(data);
    return coordinator_->PutCheckpoint(r);
  };
  auto get = [&](int32_t part) {
    v1::GetCheckpointRequest r;
    r.set_task_id(lease_.task_id());
    r.set_part(part);
    return coordinator_->GetCheckpoint(r);
  };
  const int64_t token = lease_.lease_token();
  EXPECT_EQ(get(0).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(put(1, 0, 1, "one message", 0, token).ok());
  EXPECT_EQ(get(0)->data(), "one message");
  EXPECT_EQ(get(0)->num_parts(), 1);

  const std::string a(5 << 20, 'a'), b(5 << 20, 'b'), c(123, 'c');
  const int64_t total = static_cast<int64_t>(a.size() + b.size() + c.size());
  ASSERT_TRUE(put(2, 2, 3, c, total, token).ok());
  ASSERT_TRUE(put(2, 0, 3, a, total, token).ok());
  EXPECT_EQ(get(0)->data(), "one message");  // not complete yet
  ASSERT_TRUE(put(2, 1, 3, b, total, token).ok());
  auto first = get(0);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->step(), 2);
  EXPECT_EQ(first->num_parts(), 3);
  EXPECT_EQ(first->total_bytes(), total);
  EXPECT_TRUE(first->data() == a);
  EXPECT_TRUE(get(1)->data() == b);
  EXPECT_EQ(get(2)->data(), c);
  EXPECT_EQ(get(3).status().code(), absl::StatusCode::kNotFound);
  // The one-message checkpoint's blob is gone; the three parts remain.
  EXPECT_EQ(BlobCount(), 3);

  EXPECT_EQ(put(3, 0, 2, "x", 10, token + 7).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(put(3, 2, 2, "x", 10, token).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(put(4, 0, 2, "12345", 10, token).ok());
  EXPECT_EQ(put(4, 1, 2, "123", 10, token).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(AllBackends, FeatureStoreOnBlobsTest,
                         ::testing::Values(std::string("postgres"), std::string("folder")),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace sslbench::server
