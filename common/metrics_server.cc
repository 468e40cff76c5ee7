#include "common/metrics_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "prometheus/text_serializer.h"

namespace sslbench {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry) {
  const auto colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", address, "\" is not HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.empty() || host == "localhost") host = "127.0.0.1";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address \"", address, "\": host must be an IPv4 address"));
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd, 16) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on ", address, ": ", std::strerror(err)));
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(fd, ntohs(addr.sin_port), std::move(registry)));
}

MetricsServer::MetricsServer(int fd, int port,
                             std::shared_ptr<prometheus::Registry> registry)
    : fd_(fd), port_(port), registry_(std::move(registry)) {
  thread_ = std::thread([this] { Serve(); });
}

MetricsServer::~MetricsServer() {
  stopping_ = true;
  thread_.join();
  close(fd_);
}

namespace {

// One client connection: its request head so far, then the response left to
// send, and when it is dropped if still unfinished.
struct Connection {
  int fd;
  std::string request;
  std::string response;
  size_t sent = 0;
  std::chrono::steady_clock::time_point deadline;
};

constexpr size_t kMaxConnections = 32;
constexpr size_t kMaxRequestBytes = 16384;
constexpr auto kConnectionTimeout = std::chrono::seconds(2);

}  // namespace

void MetricsServer::SetCheck(const std::string& path, Check check) {
  absl::MutexLock lock(&checks_mu_);
  checks_[path] = std::move(check);
}

std::string MetricsServer::Respond(const std::string& request) {
  std::string status = "200 OK";
  std::string body;
  const std::string type = "text/plain; version=0.0.4; charset=utf-8";
  // "GET /path?query HTTP/1.1": the path alone.
  std::string path;
  if (request.rfind("GET ", 0) == 0) {
    path = request.substr(4, request.find_first_of(" ?\r\n", 4) - 4);
  }
  Check check;
  {
    absl::MutexLock lock(&checks_mu_);
    if (auto it = checks_.find(path); it != checks_.end()) check = it->second;
  }
  if (check) {
    auto [ok, text] = check();
    if (!ok) status = "503 Service Unavailable";
    body = text + "\n";
  } else if (request.rfind("GET /metrics", 0) == 0) {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry_->Collect());
    body = out.str();
  } else if (request.rfind("GET /healthz", 0) == 0) {
    body = "ok\n";
  } else {
    status = "404 Not Found";
    body = "try /metrics\n";
  }
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                      "\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", body);
}

// One thread, non-blocking sockets multiplexed with poll(): a client that
// connects and sends nothing, or reads slowly, holds only its own
// connection (dropped after kConnectionTimeout), never the others.
void MetricsServer::Serve() {
  std::vector<Connection> conns;
  std::vector<pollfd> fds;
  while (!stopping_) {
    const auto now = std::chrono::steady_clock::now();
    // Drop connections past their deadline.
    for (size_t i = 0; i < conns.size();) {
      if (now >= conns[i].deadline) {
        close(conns[i].fd);
        conns[i] = std::move(conns.back());
        conns.pop_back();
      } else {
        ++i;
      }
    }
    fds.clear();
    // Accept more only while under the connection limit.
    fds.push_back({fd_, static_cast<short>(conns.size() < kMaxConnections ? POLLIN : 0), 0});
    for (const Connection& c : conns) {
      fds.push_back({c.fd, static_cast<short>(c.response.empty() ? POLLIN : POLLOUT), 0});
    }
    if (poll(fds.data(), fds.size(), 100) <= 0) continue;  // wakes to check stopping_
    // Connections first (their indices match fds[1...]), then new ones.
    for (size_t i = conns.size(); i-- > 0;) {
      Connection& c = conns[i];
      const short revents = fds[i + 1].revents;
      if (revents == 0) continue;
      bool done = (revents & (POLLERR | POLLNVAL)) != 0;
      if (!done && c.response.empty() && (revents & (POLLIN | POLLHUP))) {
        char buf[2048];
        const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
        if (n > 0) {
          c.request.append(buf, static_cast<size_t>(n));
        }
        if (n == 0 || c.request.find("\r\n\r\n") != std::string::npos ||
            c.request.size() >= kMaxRequestBytes) {
          // Only the request line matters; answer what has arrived.
          c.response = Respond(c.request);
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          done = true;
        }
      } else if (!done && !c.response.empty() && (revents & POLLOUT)) {
        const ssize_t n = send(c.fd, c.response.data() + c.sent,
                               c.response.size() - c.sent, MSG_NOSIGNAL);
        if (n > 0) c.sent += static_cast<size_t>(n);
        done = c.sent == c.response.size() ||
               (n < 0 && errno != EAGAIN && errno != EINTR);
      } else if (revents & POLLHUP) {
        done = true;
      }
      if (done) {
        close(c.fd);
        conns[i] = std::move(conns.back());
        conns.pop_back();
      }
    }
    if (fds[0].revents & POLLIN) {
      const int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (conn >= 0) {
        conns.push_back({conn, {}, {}, 0, now + kConnectionTimeout});
      }
    }
  }
  for (const Connection& c : conns) close(c.fd);
}

}  // namespace sslbench
