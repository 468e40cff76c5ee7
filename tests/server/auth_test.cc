// Authentication and roles over real gRPC (loopback) with a real PostgreSQL:
// every unauthenticated or wrong-role call is refused and counted, studies
// record who submitted and cancelled them.

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/tls.h"
#include "server/auth.h"
#include "sslbench/v1/client_api.grpc.pb.h"
#include "sslbench/v1/worker_api.grpc.pb.h"
#include "tests/server/grpc_test_util.h"
#include "tests/testing/http_get.h"
#include "tests/testing/study_fixtures.h"

namespace sslbench::server {
namespace {

using ::testing::HasSubstr;

constexpr char kAdminToken[] = "sbt_bootstrap_admin_secret_0123456789";

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char path[] = "/tmp/sslbench-tokens-XXXXXX";
    const int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    tokens_file_ = path;
    std::ofstream(tokens_file_) << "# role name token\nadmin ops " << kAdminToken << "\n";
    auto server = testing::StartTestCoordinator([this](CoordinatorServerOptions& o) {
      o.auth.required = true;
      o.auth.cache_ttl = absl::ZeroDuration();  // revocation takes effect at once
      o.bootstrap_tokens_file = tokens_file_;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto channel = testing::ChannelTo(*server_);
    studies_ = v1::StudyService::NewStub(channel);
    workers_ = v1::WorkerService::NewStub(channel);
  }
  void TearDown() override { std::remove(tokens_file_.c_str()); }

  // A context carrying `token` ("" for none).
  static std::unique_ptr<grpc::ClientContext> As(const std::string& token) {
    auto context = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  }

  std::string Create(const std::string& name, const std::string& role) {
    v1::CreateTokenRequest request;
    request.set_name(name);
    request.set_role(role);
    v1::CreateTokenResponse response;
    const grpc::Status s = studies_->CreateToken(As(kAdminToken).get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(response.info().role(), role);
    EXPECT_EQ(response.info().created_by(), "ops");
    return response.token();
  }

  grpc::Status Submit(const std::string& token, int64_t* id, const std::string& name = "study") {
    v1::SubmitStudyRequest request;
    *request.mutable_spec() = testing::MakeStudy(1, 1, name);
    v1::SubmitStudyResponse response;
    grpc::Status s = studies_->SubmitStudy(As(token).get(), request, &response);
    *id = response.study_id();
    return s;
  }

  grpc::Status Cancel(const std::string& token, int64_t id, v1::StudyStatus* status) {
    v1::CancelStudyRequest request;
    request.set_study_id(id);
    return studies_->CancelStudy(As(token).get(), request, status);
  }

  grpc::Status ListWorkers(const std::string& token) {
    v1::ListWorkersResponse response;
    return studies_->ListWorkers(As(token).get(), v1::ListWorkersRequest(), &response);
  }

  grpc::Status Register(const std::string& token) {
    v1::RegisterWorkerRequest request;
    request.set_name("w");
    v1::RegisterWorkerResponse response;
    return workers_->RegisterWorker(As(token).get(), request, &response);
  }

  double Refused(const std::string& code) {
    const absl::StatusOr<std::string> got = testing::HttpGet(server_->metrics_port(), "/metrics");
    if (!got.ok()) return -2;
    const std::string& text = *got;
    const std::string key = "sslbench_auth_refused_total{code=\"" + code + "\"} ";
    const size_t at = text.find(key);
    return at == std::string::npos ? -1 : std::stod(text.substr(at + key.size()));
  }

  std::string tokens_file_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<v1::StudyService::Stub> studies_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

// The series alerts read exist before the first event: a rate over no
// series is no alert at all.
TEST_F(AuthTest, ErrorCountersAreExportedFromTheStart) {
  const absl::StatusOr<std::string> got = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(got.ok()) << got.status();
  for (const char* op : {"create_study", "lease_task", "heartbeat", "complete_tasks"}) {
    EXPECT_THAT(*got, ::testing::HasSubstr(absl::StrCat("sslbench_db_errors_total{op=\"", op,
                                                        "\"} 0")));
  }
  EXPECT_THAT(*got, ::testing::HasSubstr("sslbench_auth_refused_total{code=\"UNAUTHENTICATED\"} 0"));
}

// Listing feature caches is reading; dropping one is an admin's act.
TEST_F(AuthTest, OnlyAnAdminDropsAFeatureCache) {
  const std::string reader = Create("analyst", "reader");
  const std::string submitter = Create("alice", "submitter");
  int64_t id = 0;
  ASSERT_TRUE(Submit(submitter, &id).ok());
  v1::ListFeatureCachesRequest list;
  list.set_study_id(id);
  v1::ListFeatureCachesResponse caches;
  const grpc::Status listed = studies_->ListFeatureCaches(As(reader).get(), list, &caches);
  ASSERT_TRUE(listed.ok()) << listed.error_message();
  ASSERT_EQ(caches.caches_size(), 2);  // train and test of one model and dataset
  v1::DropFeatureCacheRequest drop;
  drop.set_cache_key(caches.caches(0).cache_key());
  v1::FeatureCacheSummary dropped;
  for (const std::string& token : {reader, submitter}) {
    EXPECT_EQ(studies_->DropFeatureCache(As(token).get(), drop, &dropped).error_code(),
              grpc::PERMISSION_DENIED);
  }
  // The admin may, but the study's tasks still need it.
  const grpc::Status in_use = studies_->DropFeatureCache(As(kAdminToken).get(), drop, &dropped);
  EXPECT_EQ(in_use.error_code(), grpc::FAILED_PRECONDITION) << in_use.error_message();
}

TEST_F(AuthTest, EveryCallNeedsAKnownTokenWhoseRoleAllowsIt) {
  EXPECT_EQ(Refused("UNAUTHENTICATED"), 0);
  EXPECT_EQ(Refused("PERMISSION_DENIED"), 0);

  // No token, a malformed header, an unknown token: UNAUTHENTICATED, for the
  // client API, the worker API and the stream alike.
  int64_t id = 0;
  EXPECT_EQ(Submit("", &id).error_code(), grpc::UNAUTHENTICATED);
  EXPECT_EQ(Register("").error_code(), grpc::UNAUTHENTICATED);
  EXPECT_EQ(Register("sbt_00000000000000000000000000000000").error_code(), grpc::UNAUTHENTICATED);
  {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("authorization", kAdminToken);  // no "Bearer "
    v1::ListWorkersResponse response;
    EXPECT_EQ(studies_->ListWorkers(context.get(), v1::ListWorkersRequest(), &response)
                  .error_code(),
              grpc::UNAUTHENTICATED);
  }
  {
    v1::WatchStudyRequest watch;
    watch.set_study_id(1);
    auto context = As("");
    auto reader = studies_->WatchStudy(context.get(), watch);
    v1::StudyStatus status;
    EXPECT_FALSE(reader->Read(&status));
    EXPECT_EQ(reader->Finish().error_code(), grpc::UNAUTHENTICATED);
  }
  EXPECT_EQ(Refused("UNAUTHENTICATED"), 5);

  const std::string worker = Create("gpu-node-1", "worker");
  const std::string reader = Create("dashboard", "reader");
  const std::string alice = Create("alice", "submitter");
  const std::string bob = Create("bob", "submitter");
  EXPECT_THAT(worker, ::testing::StartsWith("sbt_"));
  EXPECT_EQ(worker.size(), 36u);

  // Wrong roles: PERMISSION_DENIED, naming what the call needs.
  grpc::Status denied = Submit(worker, &id);
  EXPECT_EQ(denied.error_code(), grpc::PERMISSION_DENIED);
  EXPECT_THAT(denied.error_message(), HasSubstr("needs a submitter token"));
  EXPECT_EQ(ListWorkers(worker).error_code(), grpc::PERMISSION_DENIED);
  EXPECT_EQ(Submit(reader, &id).error_code(), grpc::PERMISSION_DENIED);
  EXPECT_EQ(Register(reader).error_code(), grpc::PERMISSION_DENIED);
  EXPECT_EQ(Register(alice).error_code(), grpc::PERMISSION_DENIED);
  {
    v1::CreateTokenRequest request;
    request.set_name("mallory");
    request.set_role("admin");
    v1::CreateTokenResponse response;
    EXPECT_EQ(studies_->CreateToken(As(alice).get(), request, &response).error_code(),
              grpc::PERMISSION_DENIED);
  }
  // Right roles.
  EXPECT_TRUE(Register(worker).ok());
  EXPECT_TRUE(ListWorkers(reader).ok());
  EXPECT_TRUE(ListWorkers(alice).ok());
  EXPECT_EQ(Refused("PERMISSION_DENIED"), 6);

  // Submitters own their studies: bob may not cancel alice's; an admin may
  // cancel anyone's. The study records both names.
  int64_t a1 = 0, a2 = 0;
  ASSERT_TRUE(Submit(alice, &a1, "a1").ok());
  ASSERT_TRUE(Submit(alice, &a2, "a2").ok());
  v1::StudyStatus status;
  const grpc::Status not_yours = Cancel(bob, a1, &status);
  EXPECT_EQ(not_yours.error_code(), grpc::PERMISSION_DENIED);
  EXPECT_THAT(not_yours.error_message(), HasSubstr("submitted by \"alice\""));
  ASSERT_TRUE(Cancel(alice, a1, &status).ok());
  EXPECT_EQ(status.state(), v1::STUDY_STATE_CANCELLED);
  EXPECT_EQ(status.submitted_by(), "alice");
  EXPECT_EQ(status.cancelled_by(), "alice");
  ASSERT_TRUE(Cancel(kAdminToken, a2, &status).ok());
  EXPECT_EQ(status.cancelled_by(), "ops");

  // Listing shows names and roles, never secrets; a revoked token is refused.
  v1::ListTokensResponse listed;
  ASSERT_TRUE(studies_->ListTokens(As(kAdminToken).get(), v1::ListTokensRequest(), &listed).ok());
  ASSERT_EQ(listed.tokens_size(), 5);
  EXPECT_EQ(listed.tokens(0).name(), "ops");
  EXPECT_EQ(listed.tokens(0).created_by(), "bootstrap file");
  EXPECT_THAT(listed.DebugString(), ::testing::Not(HasSubstr(reader)));
  v1::RevokeTokenRequest revoke;
  for (const auto& t : listed.tokens()) {
    if (t.name() == "dashboard") revoke.set_token_id(t.token_id());
  }
  v1::TokenInfo revoked;
  ASSERT_TRUE(studies_->RevokeToken(As(kAdminToken).get(), revoke, &revoked).ok());
  EXPECT_GT(revoked.revoked_unix(), 0);
  EXPECT_EQ(ListWorkers(reader).error_code(), grpc::UNAUTHENTICATED);
}

TEST(AuthUnitTest, RolesAndSecrets) {
  EXPECT_EQ(*ParseRole("submitter"), Role::kSubmitter);
  EXPECT_EQ(ParseRole("root").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string a = NewTokenSecret(), b = NewTokenSecret();
  EXPECT_NE(a, b);
  EXPECT_EQ(TokenHash(a).size(), 64u);
  EXPECT_NE(TokenHash(a), TokenHash(b));
}

}  // namespace
}  // namespace sslbench::server

namespace sslbench::server {
namespace {

std::string TempDir() {
  char dir[] = "/tmp/sslbench-tls-XXXXXX";
  return mkdtemp(dir) != nullptr ? std::string(dir) : std::string();
}

grpc::Status ListWorkersOver(const CoordinatorServer& server,
                             std::shared_ptr<grpc::ChannelCredentials> credentials) {
  auto stub = v1::StudyService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()), credentials));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListWorkersResponse response;
  return stub->ListWorkers(&context, v1::ListWorkersRequest(), &response);
}

// TLS with a development CA: only clients that trust it get through;
// with a client CA, only clients holding a certificate it signed.
TEST(TlsTest, OnlyClientsTrustingTheCaAndWithACertificateWhenAskedGetThrough) {
  const std::string dir = TempDir(), other = TempDir();
  ASSERT_TRUE(MakeDevCertificates(dir).ok());
  ASSERT_TRUE(MakeDevCertificates(other).ok());
  struct stat key;
  ASSERT_EQ(stat((dir + "/server.key").c_str(), &key), 0);
  EXPECT_EQ(key.st_mode & 077, 0u);

  auto server = testing::StartTestCoordinator([&](CoordinatorServerOptions& o) {
    o.tls.cert = dir + "/server.pem";
    o.tls.key = dir + "/server.key";
  });
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE(ListWorkersOver(**server, *ClientCredentials({dir + "/ca.pem", "", ""})).ok());
  EXPECT_EQ(ListWorkersOver(**server, grpc::InsecureChannelCredentials()).error_code(),
            grpc::UNAVAILABLE);
  EXPECT_EQ(ListWorkersOver(**server, *ClientCredentials({other + "/ca.pem", "", ""})).error_code(),
            grpc::UNAVAILABLE);
  EXPECT_EQ(ClientCredentials({dir + "/missing.pem", "", ""}).status().code(),
            absl::StatusCode::kNotFound);

  auto mutual = testing::StartTestCoordinator([&](CoordinatorServerOptions& o) {
    o.tls.cert = dir + "/server.pem";
    o.tls.key = dir + "/server.key";
    o.tls.client_ca = dir + "/ca.pem";
  });
  ASSERT_TRUE(mutual.ok()) << mutual.status();
  EXPECT_EQ(ListWorkersOver(**mutual, *ClientCredentials({dir + "/ca.pem", "", ""})).error_code(),
            grpc::UNAVAILABLE);
  EXPECT_TRUE(ListWorkersOver(**mutual, *ClientCredentials({dir + "/ca.pem", dir + "/server.pem",
                                                            dir + "/server.key"}))
                  .ok());
  // A certificate of another CA is refused.
  EXPECT_EQ(ListWorkersOver(**mutual, *ClientCredentials({dir + "/ca.pem", other + "/server.pem",
                                                          other + "/server.key"}))
                .error_code(),
            grpc::UNAVAILABLE);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(other);
}

}  // namespace
}  // namespace sslbench::server
