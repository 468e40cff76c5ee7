#include "client/coordinator_client.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/artifact.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench::client {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::client::testing::ReadFile;
using ::sslbench::client::testing::StatusIs;
using ::sslbench::client::testing::WriteFile;
using ::testing::HasSubstr;

TEST(ResolveCoordinatorAddressTest, FlagThenEnvThenFileThenDefault) {
  const std::string dir = MakeTempDir("addr");
  const std::string file = dir + "/coordinator.addr";
  EXPECT_EQ(ResolveCoordinatorAddress("", nullptr, file), "localhost:7070");
  WriteFile(file, "127.0.0.1:4242\n");
  EXPECT_EQ(ResolveCoordinatorAddress("", nullptr, file), "127.0.0.1:4242");
  EXPECT_EQ(ResolveCoordinatorAddress("", "", file), "127.0.0.1:4242");
  EXPECT_EQ(ResolveCoordinatorAddress("", "env:1", file), "env:1");
  EXPECT_EQ(ResolveCoordinatorAddress("flag:2", "env:1", file), "flag:2");
  std::filesystem::remove_all(dir);
}

TEST(FormatErrorTest, NamesTheCodeAndForUnavailableTheFix) {
  EXPECT_EQ(FormatError(absl::NotFoundError("no study 9"), "h:1"),
            "sslbench: NOT_FOUND: no study 9");
  const std::string unavailable = FormatError(absl::UnavailableError("refused"), "h:1");
  EXPECT_THAT(unavailable, HasSubstr("sslbench: UNAVAILABLE: refused"));
  EXPECT_THAT(unavailable, HasSubstr("h:1"));
  EXPECT_THAT(unavailable, HasSubstr("sslbench up"));
}

TEST(CoordinatorClientTest, NobodyListeningIsUnavailable) {
  // Port 1 on loopback: nothing listens there.
  CoordinatorClient client("127.0.0.1:1", absl::Seconds(5));
  EXPECT_THAT(client.GetStudy(1).status(), StatusIs(absl::StatusCode::kUnavailable));
}

// A coordinator stand-in: streams a scripted sequence of statuses and serves
// the artefacts it holds.
class FakeStudyService final : public v1::StudyService::Service {
 public:
  std::vector<v1::StudyStatus> script;
  bool hang_after_script = false;
  absl::Notification streaming;
  // With hang_after_script, the stream stays open until this is notified.
  absl::Notification release;
  std::map<int64_t, v1::Artifact> artifacts;

  grpc::Status GetArtifact(grpc::ServerContext*, const v1::GetArtifactRequest* request,
                           v1::Artifact* response) override {
    auto it = artifacts.find(request->artifact_id());
    if (it == artifacts.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "no artifact " + std::to_string(request->artifact_id()));
    }
    // Pages, as the coordinator answers them.
    *response = it->second;
    const std::string& data = it->second.data();
    const size_t offset = std::min<size_t>(request->offset(), data.size());
    const size_t n = request->max_bytes() == 0 ? data.size() - offset
                                              : std::min<size_t>(request->max_bytes(),
                                                                 data.size() - offset);
    response->set_data(data.substr(offset, n));
    response->set_offset(static_cast<int64_t>(offset));
    response->set_total_bytes(static_cast<int64_t>(data.size()));
    ++artifact_pages;
    return grpc::Status::OK;
  }
  std::atomic<int> artifact_pages{0};

  // SubmitStudy: the first call commits only after the client has given up
  // (as a coordinator did with a 131k-task study); later calls with a key
  // already committed return that study.
  // Held through a call, as the coordinator holds the key's lock through its
  // transaction: a retry waits for the first call's commit.
  absl::Mutex submit_mu;
  std::vector<std::string> submit_keys;
  std::map<std::string, int64_t> committed;
  grpc::Status SubmitStudy(grpc::ServerContext* context, const v1::SubmitStudyRequest* request,
                           v1::SubmitStudyResponse* response) override {
    absl::MutexLock lock(&submit_mu);
    submit_keys.push_back(request->request_id());
    auto it = committed.find(request->request_id());
    if (it != committed.end()) {
      response->set_study_id(it->second);
      response->set_existing(true);
      return grpc::Status::OK;
    }
    if (submit_keys.size() == 1) {
      const absl::Time limit = absl::Now() + absl::Seconds(30);
      while (!context->IsCancelled() && absl::Now() < limit) absl::SleepFor(absl::Milliseconds(5));
    }
    const int64_t id = static_cast<int64_t>(committed.size()) + 1;
    committed[request->request_id()] = id;
    response->set_study_id(id);
    return grpc::Status::OK;
  }

  grpc::Status GetStudy(grpc::ServerContext*, const v1::GetStudyRequest* request,
                        v1::StudyStatus* response) override {
    if (request->study_id() != 7) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no study");
    }
    response->set_study_id(7);
    return grpc::Status::OK;
  }

  grpc::Status WatchStudy(grpc::ServerContext* /*context*/,
                          const v1::WatchStudyRequest* request,
                          grpc::ServerWriter<v1::StudyStatus>* writer) override {
    if (request->study_id() != 7) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no study");
    }
    for (const auto& s : script) writer->Write(s);
    if (!streaming.HasBeenNotified()) streaming.Notify();
    if (hang_after_script) {
      // Open until the test has seen the client give up (the watcher's
      // Cancel ends the call on the client side at once).
      release.WaitForNotificationWithTimeout(absl::Seconds(60));
      return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    return grpc::Status::OK;
  }
};

class WatcherTest : public ::testing::Test {
 protected:
  void StartServer() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override {
    if (!service_.release.HasBeenNotified()) service_.release.Notify();
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  static v1::StudyStatus Status(v1::StudyState state, int64_t done) {
    v1::StudyStatus s;
    s.set_study_id(7);
    s.set_state(state);
    v1::TaskProgress* p = s.add_progress();
    p->set_kind(v1::TASK_KIND_EXTRACT);
    p->set_total(2);
    p->set_succeeded(done);
    p->set_pending(2 - done);
    return s;
  }

  FakeStudyService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(WatcherTest, FollowsTheStudyToItsEnd) {
  service_.script = {Status(v1::STUDY_STATE_RUNNING, 0), Status(v1::STUDY_STATE_RUNNING, 1),
                     Status(v1::STUDY_STATE_FAILED, 1)};
  service_.script.back().set_error("boom");
  StartServer();
  CoordinatorClient client(address_);
  std::FILE* out = std::tmpfile();
  StudyWatcher watcher(&client, 7, out, /*tty=*/false);
  absl::StatusOr<v1::StudyStatus> final_status = watcher.Run();
  ASSERT_TRUE(final_status.ok()) << final_status.status();
  EXPECT_EQ(final_status->state(), v1::STUDY_STATE_FAILED);
  EXPECT_EQ(final_status->error(), "boom");
  EXPECT_EQ(ExitCodeForState(final_status->state()), 1);
  EXPECT_EQ(ExitCodeForState(v1::STUDY_STATE_SUCCEEDED), 0);
  EXPECT_EQ(ExitCodeForState(v1::STUDY_STATE_CANCELLED), 2);

  std::rewind(out);
  char buffer[4096] = {};
  const size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, out);
  std::fclose(out);
  const std::string printed(buffer, n);
  EXPECT_THAT(printed, HasSubstr("0/2 done"));
  EXPECT_THAT(printed, HasSubstr("1/2 done"));
  EXPECT_EQ(printed.find('\x1b'), std::string::npos);  // no terminal codes
}

TEST_F(WatcherTest, UnknownStudyIsNotFound) {
  StartServer();
  CoordinatorClient client(address_);
  std::FILE* out = std::tmpfile();
  StudyWatcher watcher(&client, 8, out, /*tty=*/true);
  EXPECT_THAT(watcher.Run().status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client.GetStudy(8).status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(client.GetStudy(7).ok());
  std::fclose(out);
}

TEST_F(WatcherTest, CancelEndsTheWatch) {
  service_.script = {Status(v1::STUDY_STATE_RUNNING, 0)};
  service_.hang_after_script = true;
  StartServer();
  CoordinatorClient client(address_);
  std::FILE* out = std::tmpfile();
  StudyWatcher watcher(&client, 7, out, /*tty=*/true);
  std::thread canceller([&] {
    service_.streaming.WaitForNotificationWithTimeout(absl::Seconds(30));
    watcher.Cancel();
  });
  EXPECT_THAT(watcher.Run().status(), StatusIs(absl::StatusCode::kCancelled));
  service_.release.Notify();
  canceller.join();
  std::fclose(out);
}

class ArtifactTest : public WatcherTest {
 protected:
  void SetUp() override {
    v1::Artifact head;
    head.set_artifact_id(4);
    head.set_study_id(3);
    head.set_task_id(11);
    head.set_name("cnn/fashion-mnist/linear/full");
    head.set_content_type("application/x-sslbench-head");
    // Binary, with zero bytes and more than one read's worth.
    for (int i = 0; i < 70000; ++i) head.mutable_data()->push_back(static_cast<char>(i % 251));
    service_.artifacts[4] = head;
    StartServer();
    dir_ = MakeTempDir("artifact");
  }
  void TearDown() override {
    WatcherTest::TearDown();
    std::filesystem::remove_all(dir_);
  }

  std::string dir_;
};

TEST_F(ArtifactTest, WritesTheBytesToAFile) {
  CoordinatorClient client(address_);
  const std::string path = dir_ + "/head.bin";
  WriteFile(path, "an older download, replaced");
  absl::StatusOr<v1::Artifact> artifact = DownloadArtifact(client, 4, path, nullptr);
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(artifact->name(), "cnn/fashion-mnist/linear/full");
  EXPECT_EQ(ReadFile(path), service_.artifacts[4].data());
  // Nothing left beside it.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_),
                          std::filesystem::directory_iterator()),
            1);
  EXPECT_EQ(DescribeArtifact(*artifact, path),
            "artifact 4 \"cnn/fashion-mnist/linear/full\" (application/x-sslbench-head, "
            "70,000 bytes) of study 3, task 11 -> " + path);
}

// An artefact larger than one message is read in pages of 8 MiB.
TEST_F(ArtifactTest, ReadsALargeArtifactInPages) {
  v1::Artifact big = service_.artifacts[4];
  big.set_artifact_id(5);
  std::string data(17 << 20, '\0');
  for (size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<char>(i / 4096);
  big.set_data(data);
  service_.artifacts[5] = big;
  CoordinatorClient client(address_);
  const std::string path = dir_ + "/big.bin";
  absl::StatusOr<v1::Artifact> artifact = DownloadArtifact(client, 5, path, nullptr);
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_EQ(service_.artifact_pages.load(), 3);
  EXPECT_TRUE(ReadFile(path) == data);
}

TEST_F(ArtifactTest, WritesTheBytesToAStream) {
  CoordinatorClient client(address_);
  for (const std::string path : {"", "-"}) {
    std::FILE* out = std::tmpfile();
    absl::StatusOr<v1::Artifact> artifact = DownloadArtifact(client, 4, path, out);
    ASSERT_TRUE(artifact.ok()) << artifact.status();
    std::rewind(out);
    std::string read(100000, '\0');
    read.resize(std::fread(read.data(), 1, read.size(), out));
    std::fclose(out);
    EXPECT_EQ(read, service_.artifacts[4].data()) << "path \"" << path << "\"";
  }
}

TEST_F(ArtifactTest, UnknownArtifactIsNotFoundAndWritesNothing) {
  CoordinatorClient client(address_);
  const std::string path = dir_ + "/head.bin";
  EXPECT_THAT(DownloadArtifact(client, 5, path, nullptr).status(),
              StatusIs(absl::StatusCode::kNotFound, "no artifact 5"));
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(ArtifactTest, BadDestinationsNameThePath) {
  CoordinatorClient client(address_);
  const std::string missing = dir_ + "/no/such/folder/head.bin";
  EXPECT_THAT(DownloadArtifact(client, 4, missing, nullptr).status(),
              StatusIs(absl::StatusCode::kNotFound,
                       "cannot write " + missing + ": folder " + dir_ +
                           "/no/such/folder does not exist"));
  EXPECT_THAT(DownloadArtifact(client, 4, dir_, nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "cannot write " + dir_ + ": it is a folder"));
  if (::geteuid() != 0) {
    // A folder that cannot be written to.
    const std::string locked = dir_ + "/locked";
    std::filesystem::create_directories(locked);
    std::filesystem::permissions(locked, std::filesystem::perms::owner_read |
                                             std::filesystem::perms::owner_exec);
    EXPECT_THAT(DownloadArtifact(client, 4, locked + "/head.bin", nullptr).status(),
                StatusIs(absl::StatusCode::kInternal,
                         "cannot write " + locked + "/head.bin: Permission denied"));
    std::filesystem::permissions(locked, std::filesystem::perms::owner_all);
  }
}

TEST_F(ArtifactTest, EmptyArtifactMakesAnEmptyFile) {
  v1::Artifact empty;
  empty.set_artifact_id(6);
  empty.set_name("empty");
  service_.artifacts[6] = empty;
  CoordinatorClient client(address_);
  const std::string path = dir_ + "/empty.bin";
  absl::StatusOr<v1::Artifact> artifact = DownloadArtifact(client, 6, path, nullptr);
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_EQ(std::filesystem::file_size(path), 0u);
  EXPECT_THAT(DescribeArtifact(*artifact, path), HasSubstr("(no content type, 0 bytes)"));
}

}  // namespace
}  // namespace sslbench::client

namespace sslbench::client {
namespace {

// The submit timed out while the coordinator went on to commit: the retry
// carries the same idempotency key and gets that study, not a second one.
TEST_F(WatcherTest, SubmitRetriesUnderOneKeyAndNeverDuplicates) {
  StartServer();
  CoordinatorClient client(address_, absl::Milliseconds(300));
  client.submit_backoff = absl::Milliseconds(10);
  std::string key;
  auto response = client.SubmitStudy(v1::StudySpec(), "", &key);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->study_id(), 1);
  EXPECT_TRUE(response->existing());
  ASSERT_EQ(service_.submit_keys.size(), 2u);
  EXPECT_EQ(service_.submit_keys[0], key);
  EXPECT_EQ(service_.submit_keys[1], key);
  EXPECT_EQ(key.size(), 36u);  // "cli-" and 128 random bits
  EXPECT_EQ(service_.committed.size(), 1u);

  // Another submit is another study: a fresh key.
  std::string second;
  ASSERT_TRUE(client.SubmitStudy(v1::StudySpec(), "", &second).ok());
  EXPECT_NE(second, key);
  EXPECT_EQ(service_.committed.size(), 2u);
  // A key the user gives is used as it is.
  std::string given;
  ASSERT_TRUE(client.SubmitStudy(v1::StudySpec(), "nightly-2026-11-30", &given).ok());
  EXPECT_EQ(given, "nightly-2026-11-30");
  EXPECT_EQ(service_.submit_keys.back(), "nightly-2026-11-30");
}

}  // namespace
}  // namespace sslbench::client
