#include "common/metrics_server.h"

#include <atomic>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "tests/testing/http_get.h"

namespace sslbench {
namespace {

using ::sslbench::testing::HttpGet;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::shared_ptr<prometheus::Registry> RegistryWithCounter() {
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("sslbench_test_events_total")
      .Help("Events seen by the test.")
      .Register(*registry)
      .Add({})
      .Increment(3);
  return registry;
}

TEST(MetricsServerTest, ServesMetricsHealthAndNotFound) {
  auto server = MetricsServer::Start("127.0.0.1:0", RegistryWithCounter());
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);

  absl::StatusOr<std::string> metrics = HttpGet(port, "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, StartsWith("HTTP/1.1 200 OK"));
  EXPECT_THAT(*metrics, HasSubstr("\nsslbench_test_events_total 3"));

  absl::StatusOr<std::string> health = HttpGet(port, "/healthz");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_THAT(*health, StartsWith("HTTP/1.1 200 OK"));
  EXPECT_THAT(*health, HasSubstr("\r\n\r\nok\n"));

  absl::StatusOr<std::string> other = HttpGet(port, "/other");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_THAT(*other, StartsWith("HTTP/1.1 404 Not Found"));
}

// Health probes answer what their check says: 200 with its text, or 503.
TEST(MetricsServerTest, ChecksAnswerTheirProbes) {
  auto server = MetricsServer::Start("127.0.0.1:0", RegistryWithCounter());
  ASSERT_TRUE(server.ok()) << server.status();
  std::atomic<bool> ready{false};
  (*server)->SetCheck("/readyz", [&] {
    return std::make_pair(ready.load(), std::string(ready ? "leasing" : "not registered yet"));
  });
  absl::StatusOr<std::string> refused = HttpGet((*server)->port(), "/readyz");
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_THAT(*refused, StartsWith("HTTP/1.1 503 Service Unavailable"));
  EXPECT_THAT(*refused, HasSubstr("\r\n\r\nnot registered yet\n"));
  ready = true;
  absl::StatusOr<std::string> answered = HttpGet((*server)->port(), "/readyz?verbose=1");
  ASSERT_TRUE(answered.ok()) << answered.status();
  EXPECT_THAT(*answered, StartsWith("HTTP/1.1 200 OK"));
  EXPECT_THAT(*answered, HasSubstr("leasing"));
  // A prefix of a checked path is not that path.
  absl::StatusOr<std::string> prefix = HttpGet((*server)->port(), "/ready");
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_THAT(*prefix, StartsWith("HTTP/1.1 404"));
}

TEST(MetricsServerTest, AStalledClientDoesNotHoldUpOthers) {
  auto server = MetricsServer::Start("127.0.0.1:0", RegistryWithCounter());
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  // A client that sends half a request head and then nothing.
  const int stalled = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(stalled, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string partial = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  ASSERT_EQ(send(stalled, partial.data(), partial.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(partial.size()));

  // Another client is answered at once...
  absl::StatusOr<std::string> health = HttpGet(port, "/healthz");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_THAT(*health, StartsWith("HTTP/1.1 200 OK"));

  // ...while the stalled one is still connected and unanswered: a server that
  // served one connection at a time would have had to drop it first.
  char byte;
  const ssize_t n = recv(stalled, &byte, 1, MSG_DONTWAIT);
  const int err = errno;
  EXPECT_EQ(n, -1);
  EXPECT_TRUE(err == EAGAIN || err == EWOULDBLOCK) << err;
  close(stalled);
}

TEST(MetricsServerTest, RejectsMalformedAddresses) {
  for (const char* address : {"9464", "127.0.0.1:99999", "example.com:9464",
                              "127.0.0.1:port"}) {
    EXPECT_EQ(MetricsServer::Start(address, RegistryWithCounter()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << address;
  }
}

}  // namespace
}  // namespace sslbench
