#include "client/coordinator_client.h"

#include <cstdio>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench::client {
namespace {

using ::sslbench::client::testing::MakeTempDir;
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

// A coordinator stand-in: streams a scripted sequence of statuses.
class FakeStudyService final : public v1::StudyService::Service {
 public:
  std::vector<v1::StudyStatus> script;
  bool hang_after_script = false;
  absl::Notification streaming;

  grpc::Status GetStudy(grpc::ServerContext*, const v1::GetStudyRequest* request,
                        v1::StudyStatus* response) override {
    if (request->study_id() != 7) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no study");
    }
    response->set_study_id(7);
    return grpc::Status::OK;
  }

  grpc::Status WatchStudy(grpc::ServerContext* context,
                          const v1::WatchStudyRequest* request,
                          grpc::ServerWriter<v1::StudyStatus>* writer) override {
    if (request->study_id() != 7) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no study");
    }
    for (const auto& s : script) writer->Write(s);
    if (!streaming.HasBeenNotified()) streaming.Notify();
    if (hang_after_script) {
      // Until the client goes away (the watcher's Cancel).
      while (!context->IsCancelled()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
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
  canceller.join();
  std::fclose(out);
}

}  // namespace
}  // namespace sslbench::client
