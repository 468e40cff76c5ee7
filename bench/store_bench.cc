// sslbench-store-bench: the feature store's round trip through a running
// coordinator over gRPC, as a worker sees it. Registers as a worker, leases
// an extract task (submit a study first), writes --megabytes of features in
// chunks of --chunk_mib with PutFeatureChunk under the task's fencing token,
// then reads every chunk back with GetFeatureChunk and checks its bytes.
// Prints one JSON line: put and get MB/s, and this process's peak RSS.
// bench/store_roundtrip.py drives it and watches the coordinator's memory.

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/malloc_tuning.h"
#include "grpcpp/grpcpp.h"
#include "sslbench/v1/worker_api.grpc.pb.h"

ABSL_FLAG(std::string, coordinator, "localhost:7070", "coordinator address");
ABSL_FLAG(int64_t, megabytes, 2048, "feature bytes to write and read back (MiB)");
ABSL_FLAG(int, chunk_mib, 4, "bytes per chunk (MiB)");
ABSL_FLAG(int, dim, 512, "feature width");
ABSL_FLAG(int, inflight, 4, "requests in flight (threads)");
ABSL_FLAG(std::string, token_file, "", "access token to send (a worker or admin token)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA to trust: talk TLS (needed with --token_file)");

namespace {

using sslbench::v1::WorkerService;
namespace v1 = sslbench::v1;

[[noreturn]] void Die(const char* what, const grpc::Status& s) {
  std::fprintf(stderr, "sslbench-store-bench: %s: %s\n", what, s.error_message().c_str());
  std::exit(1);
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Chunk c's features: a fixed pseudo-random block with the chunk index in
// its first word, so a chunk read back under the wrong index is caught.
void FillChunk(std::string& bytes, int32_t c) { std::memcpy(bytes.data(), &c, sizeof(c)); }

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // As the worker sets it: chunk buffers served from the heap.
  sslbench::TuneMallocForLargeBuffers(/*arenas=*/0);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // A coordinator with authentication (sslbench up): TLS, and the token
  // sent with every call.
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  auto slurp = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  };
  if (!absl::GetFlag(FLAGS_tls_ca).empty()) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = slurp(absl::GetFlag(FLAGS_tls_ca));
    credentials = grpc::SslCredentials(tls);
    if (!absl::GetFlag(FLAGS_token_file).empty()) {
      std::string token = slurp(absl::GetFlag(FLAGS_token_file));
      token.erase(token.find_last_not_of(" \n\r\t") + 1);
      credentials = grpc::CompositeChannelCredentials(credentials,
                                                      grpc::AccessTokenCredentials(token));
    }
  } else if (!absl::GetFlag(FLAGS_token_file).empty()) {
    std::fprintf(stderr, "sslbench-store-bench: --token_file needs --tls_ca\n");
    return 64;
  }
  auto channel =
      grpc::CreateCustomChannel(absl::GetFlag(FLAGS_coordinator), credentials, args);
  auto stub = WorkerService::NewStub(channel);

  v1::RegisterWorkerResponse registered;
  {
    grpc::ClientContext context;
    v1::RegisterWorkerRequest request;
    request.set_name("store-bench");
    request.set_device("cpu");
    grpc::Status s = stub->RegisterWorker(&context, request, &registered);
    if (!s.ok()) Die("RegisterWorker", s);
  }
  v1::LeaseTaskResponse lease;
  for (int attempt = 0; attempt < 100 && lease.task_id() == 0; ++attempt) {
    grpc::ClientContext context;
    v1::LeaseTaskRequest request;
    request.set_worker_id(registered.worker_id());
    grpc::Status s = stub->LeaseTask(&context, request, &lease);
    if (!s.ok()) Die("LeaseTask", s);
    if (lease.task_id() != 0 && lease.spec().kind() != v1::TASK_KIND_EXTRACT) lease.Clear();
    if (lease.task_id() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (lease.task_id() == 0) {
    std::fprintf(stderr, "sslbench-store-bench: no extract task to lease; submit a study\n");
    return 1;
  }
  // Heartbeats keep the lease while the chunks stream.
  std::atomic<bool> done{false};
  std::thread heartbeat([&] {
    while (!done) {
      grpc::ClientContext context;
      v1::HeartbeatRequest request;
      request.set_worker_id(registered.worker_id());
      request.set_task_id(lease.task_id());
      request.set_lease_token(lease.lease_token());
      v1::HeartbeatResponse response;
      stub->Heartbeat(&context, request, &response);
      for (int i = 0; i < 10 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });

  const int dim = absl::GetFlag(FLAGS_dim);
  const int64_t chunk_bytes = int64_t{absl::GetFlag(FLAGS_chunk_mib)} << 20;
  const int32_t rows = static_cast<int32_t>(chunk_bytes / (dim * 4));
  const int32_t chunks =
      static_cast<int32_t>((absl::GetFlag(FLAGS_megabytes) << 20) / (int64_t{rows} * dim * 4));
  std::string features(static_cast<size_t>(rows) * dim * 4, '\0');
  uint32_t x = 12345;
  for (size_t i = 0; i < features.size(); i += 4) {
    x = x * 1664525u + 1013904223u;
    const float v = static_cast<float>(x >> 8) / 16777216.0f;
    std::memcpy(&features[i], &v, 4);
  }
  const std::string labels(static_cast<size_t>(rows) * 4, '\0');
  const std::string& key = lease.spec().cache_key();

  // Chunks are claimed from one counter by --inflight threads, as a worker
  // with that many uploads or downloads in flight.
  const int inflight = std::max(1, absl::GetFlag(FLAGS_inflight));
  auto parallel = [&](const std::function<void(int32_t, std::string&)>& one) {
    std::atomic<int32_t> next{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < inflight; ++t) {
      threads.emplace_back([&] {
        std::string mine = features;
        for (int32_t c = next++; c < chunks; c = next++) one(c, mine);
      });
    }
    for (std::thread& t : threads) t.join();
  };
  auto start = std::chrono::steady_clock::now();
  parallel([&](int32_t c, std::string& bytes) {
    v1::PutFeatureChunkRequest put;
    put.set_task_id(lease.task_id());
    put.set_lease_token(lease.lease_token());
    v1::FeatureChunk* chunk = put.mutable_chunk();
    chunk->set_cache_key(key);
    chunk->set_chunk_index(c);
    chunk->set_row_start(int64_t{c} * rows);
    chunk->set_num_rows(rows);
    chunk->set_dim(dim);
    FillChunk(bytes, c);
    chunk->set_features(bytes);
    chunk->set_labels(labels);
    grpc::ClientContext context;
    v1::PutFeatureChunkResponse response;
    grpc::Status s = stub->PutFeatureChunk(&context, put, &response);
    if (!s.ok()) Die("PutFeatureChunk", s);
  });
  const double put_seconds = Seconds(start);

  start = std::chrono::steady_clock::now();
  std::atomic<int64_t> bad{0};
  parallel([&](int32_t c, std::string& bytes) {
    grpc::ClientContext context;
    v1::GetFeatureChunkRequest request;
    request.set_cache_key(key);
    request.set_chunk_index(c);
    v1::FeatureChunk chunk;
    grpc::Status s = stub->GetFeatureChunk(&context, request, &chunk);
    if (!s.ok()) Die("GetFeatureChunk", s);
    FillChunk(bytes, c);
    if (chunk.features() != bytes) ++bad;
  });
  const double get_seconds = Seconds(start);
  done = true;
  heartbeat.join();

  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double mb = static_cast<double>(chunks) * rows * dim * 4 / (1 << 20);
  std::printf(
      "{\"chunks\":%d,\"megabytes\":%.1f,\"put_seconds\":%.3f,\"put_mb_per_s\":%.1f,"
      "\"get_seconds\":%.3f,\"get_mb_per_s\":%.1f,\"bad_chunks\":%lld,\"peak_rss_mb\":%.1f}\n",
      chunks, mb, put_seconds, mb / put_seconds, get_seconds, mb / get_seconds,
      static_cast<long long>(bad.load()), usage.ru_maxrss / 1024.0);
  return bad == 0 ? 0 : 1;
}
