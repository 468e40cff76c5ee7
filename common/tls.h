#pragma once
// TLS for every gRPC connection: server and client credentials from PEM
// files, and a development CA for `sslbench up`.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace sslbench {

struct TlsServerFiles {
  std::string cert;       // PEM certificate chain; empty: no TLS (insecure)
  std::string key;        // PEM private key
  std::string client_ca;  // when set, clients must present a certificate it signed
};

struct TlsClientFiles {
  std::string ca;    // PEM roots to trust; empty: no TLS (insecure)
  std::string cert;  // client certificate for mutual TLS (optional)
  std::string key;
};

// Insecure credentials when `files.cert` (server) or `files.ca` (client) is
// empty. NOT_FOUND / INVALID_ARGUMENT naming a file that cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const TlsServerFiles& files);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientCredentials(
    const TlsClientFiles& files);

// A development CA and a certificate signed by it for localhost and
// 127.0.0.1 (ECDSA P-256, 10 years), written to DIR/ca.pem, DIR/server.pem,
// DIR/server.key (mode 600). Kept when all three exist already.
absl::Status MakeDevCertificates(const std::string& dir);

}  // namespace sslbench
