// sslbench-worker: leases tasks from the coordinator and runs them with
// LibTorch (feature extraction, probes).

#include <algorithm>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/malloc_tuning.h"
#include "common/metrics_server.h"
#include "common/path_guard.h"
#include "common/tls.h"
#include "grpcpp/grpcpp.h"
#include "worker/compute/device.h"
#include "worker/compute/feature_extractor.h"
#include "worker/runner_util.h"
#include "worker/runners.h"
#include "worker/worker_daemon.h"

ABSL_FLAG(std::string, coordinator, "localhost:7070", "coordinator gRPC address");
ABSL_FLAG(std::string, name, "", "worker name (default: worker-PID)");
ABSL_FLAG(int, threads, 1, "LibTorch intra-op threads");
ABSL_FLAG(std::string, device, "auto",
          "where extraction, kNN and linear probes run: auto (cuda:0 when a CUDA "
          "device is visible, else cpu), cpu, cuda or cuda:N; run one worker per GPU");
ABSL_FLAG(int, decode_threads, 0,
          "threads decoding and preprocessing images during extraction (0: --threads on "
          "the CPU; on a GPU every core but one, to keep the GPU fed)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9465",
          "Prometheus /metrics address; empty disables it");
ABSL_FLAG(std::string, metrics_port_file, "",
          "write the bound metrics port here (for port 0)");
ABSL_FLAG(int, chunk_kib, 4096, "target size of one uploaded feature chunk");
ABSL_FLAG(std::string, feature_cache_dir, "",
          "keep downloaded feature sets in this folder (empty: no disk cache)");
ABSL_FLAG(std::string, model_roots, "",
          "comma-separated folders model files must lie in (links and .. resolved); "
          "empty: anywhere. Set it on shared clusters");
ABSL_FLAG(std::string, data_roots, "",
          "comma-separated folders dataset folders must lie in; empty: anywhere");
ABSL_FLAG(double, max_model_gib, 64, "model files larger than this are refused");
ABSL_FLAG(std::string, token_file, "",
          "file holding this worker's access token (a worker-role token; default: "
          "$SSLBENCH_TOKEN, else none)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA to trust: talk to the coordinator over TLS (default: $SSLBENCH_TLS_CA)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, file_root, "/",
          "where file:///PATH model paths and dataset roots of a study are found on this "
          "worker: file:///models/x.pt reads FILE_ROOT/models/x.pt");
ABSL_FLAG(int, drain_seconds, 30,
          "on SIGTERM, hand back the running task within this time, then exit even if it "
          "has not reached a checkpoint (its lease expires and another worker resumes it); "
          "keep it below the pod's terminationGracePeriodSeconds");
ABSL_FLAG(int, artifact_part_kib, 8192,
          "artefacts (trained heads) larger than this go to the coordinator in parts of this "
          "size before the completion, instead of inside it (at most 16384)");
ABSL_FLAG(int, ready_window_seconds, 60,
          "/readyz fails when the coordinator has not answered a lease or heartbeat for this long");
ABSL_FLAG(int, live_window_seconds, 300,
          "/livez fails when the lease loop has not gone round for this long");
ABSL_FLAG(double, feature_cache_gib, 20, "size limit of the feature cache, least recently used go first");

int main(int argc, char** argv) {
  // OpenMP threads that spin while waiting for work take cores from
  // everything else on a shared or oversubscribed node (measured: 6-12x
  // slower training with 2 threads on a loaded 2-core machine). libgomp reads
  // the policy when it is loaded, so set it and start again.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);
    // If exec fails, carry on with the default policy.
  }
  absl::SetProgramUsageMessage("sslbench-worker --coordinator=HOST:PORT");
  absl::ParseCommandLine(argc, argv);
  // Feature chunks are multi-megabyte buffers, uploaded and fetched on
  // several threads; freed memory is handed back after each task.
  sslbench::TuneMallocForLargeBuffers(/*arenas=*/0);
  // Debian builds Abseil with the mutex deadlock detector on: a lock-order
  // graph updated on every lock (2.6% of the load bench's CPU in perf). The
  // tests keep it; the programs run without it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const absl::StatusOr<std::string> device =
      sslbench::compute::ResolveDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "sslbench-worker: --device: %s\n",
                 std::string(device.status().message()).c_str());
    return 64;
  }

  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<sslbench::MetricsServer> metrics;
  const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (!metrics_listen.empty()) {
    auto started = sslbench::MetricsServer::Start(metrics_listen, registry);
    if (!started.ok()) {
      std::fprintf(stderr, "sslbench-worker: %s\n", started.status().ToString().c_str());
      return 1;
    }
    metrics = *std::move(started);
  }

  sslbench::worker::WorkerOptions options;
  options.name = absl::GetFlag(FLAGS_name);
  if (options.name.empty()) options.name = "worker-" + std::to_string(getpid());
  options.device = *device;
  const int threads = absl::GetFlag(FLAGS_threads);
  sslbench::compute::SetComputeThreads(threads);
  sslbench::worker::RunnerOptions runner_options;
  // On a GPU the model is fast and decoding is the bottleneck: every core
  // but the one driving the GPU decodes. On the CPU they share the cores.
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  runner_options.decode_threads =
      absl::GetFlag(FLAGS_decode_threads) > 0 ? absl::GetFlag(FLAGS_decode_threads)
      : sslbench::compute::IsCudaDevice(*device) ? std::max(1, cores - 1)
                                                 : std::max(1, threads);
  runner_options.chunk_bytes = int64_t{absl::GetFlag(FLAGS_chunk_kib)} * 1024;
  runner_options.device = *device;
  auto parse_roots = [](const char* flag, const std::string& list,
                        std::vector<std::string>* roots) {
    const absl::Status s = sslbench::ParseRoots(list, roots);
    if (!s.ok()) std::fprintf(stderr, "sslbench-worker: --%s: %s\n", flag, std::string(s.message()).c_str());
    return s.ok();
  };
  if (!parse_roots("model_roots", absl::GetFlag(FLAGS_model_roots), &runner_options.read.model_roots) ||
      !parse_roots("data_roots", absl::GetFlag(FLAGS_data_roots), &runner_options.read.data_roots)) {
    return 64;
  }
  runner_options.read.max_model_bytes =
      static_cast<int64_t>(absl::GetFlag(FLAGS_max_model_gib) * (1 << 30));
  sslbench::LogInfo("worker", "compute device ", *device, " (", threads, " compute threads, ",
                    runner_options.decode_threads, " decode threads)");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  sslbench::TlsClientFiles tls{absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
                               absl::GetFlag(FLAGS_tls_key)};
  if (const char* env = std::getenv("SSLBENCH_TLS_CA"); tls.ca.empty() && env != nullptr) {
    tls.ca = env;
  }
  const absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      sslbench::ClientCredentials(tls);
  if (!credentials.ok()) {
    std::fprintf(stderr, "sslbench-worker: %s\n", std::string(credentials.status().message()).c_str());
    return 64;
  }
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_coordinator), *credentials, args);
  std::unique_ptr<sslbench::worker::LocalFeatureCache> feature_cache;
  if (!absl::GetFlag(FLAGS_feature_cache_dir).empty()) {
    auto opened = sslbench::worker::LocalFeatureCache::Open(
        absl::GetFlag(FLAGS_feature_cache_dir),
        static_cast<int64_t>(absl::GetFlag(FLAGS_feature_cache_gib) * (1 << 30)));
    if (!opened.ok()) {
      std::fprintf(stderr, "sslbench-worker: %s\n", opened.status().ToString().c_str());
      return 1;
    }
    feature_cache = *std::move(opened);
    runner_options.feature_cache = feature_cache.get();
    options.cached_feature_keys = [cache = feature_cache.get()] {
      std::vector<std::string> keys = cache->Keys(1000);
      for (std::string& key : keys) key = sslbench::worker::CacheKeyOf(key);
      return keys;
    };
  }
  std::string token;
  if (const std::string file = absl::GetFlag(FLAGS_token_file); !file.empty()) {
    std::ifstream in(file);
    if (!in || !std::getline(in, token) || token.empty()) {
      std::fprintf(stderr, "sslbench-worker: --token_file: cannot read a token from %s\n",
                   file.c_str());
      return 64;
    }
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  } else if (const char* env = std::getenv("SSLBENCH_TOKEN"); env != nullptr) {
    token = env;
  }
  const sslbench::RealClock clock;
  std::unique_ptr<sslbench::worker::CoordinatorConnection> connection =
      sslbench::worker::NewGrpcCoordinatorConnection(channel, clock, token);
  sslbench::LocationRoots locations;
  locations.file_root = absl::GetFlag(FLAGS_file_root);
  options.localize = [locations](sslbench::v1::TaskSpec& spec) {
    return sslbench::worker::LocalizeSpec(spec, locations);
  };
  const absl::Duration drain = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));
  options.drain_timeout = drain;
  options.ready_window = absl::Seconds(absl::GetFlag(FLAGS_ready_window_seconds));
  options.live_window = absl::Seconds(absl::GetFlag(FLAGS_live_window_seconds));
  if (absl::GetFlag(FLAGS_artifact_part_kib) < 1 || absl::GetFlag(FLAGS_artifact_part_kib) > 16384) {
    std::fprintf(stderr, "sslbench-worker: --artifact_part_kib must be in [1, 16384]\n");
    return 64;
  }
  options.artifact_part_bytes = int64_t{absl::GetFlag(FLAGS_artifact_part_kib)} * 1024;
  sslbench::worker::WorkerMetrics worker_metrics(*registry);
  sslbench::worker::WorkerDaemon daemon(
      *connection, sslbench::worker::DefaultTaskRunners(runner_options, &worker_metrics),
      options, clock, &worker_metrics);

  if (metrics != nullptr) {
    // Readiness: registered and leasing; liveness: the lease loop goes round.
    auto ready = [&daemon] {
      const sslbench::worker::WorkerHealth h = daemon.Health();
      return std::make_pair(h.ready, h.detail);
    };
    metrics->SetCheck("/readyz", ready);
    metrics->SetCheck("/healthz", ready);
    metrics->SetCheck("/livez", [&daemon] {
      const sslbench::worker::WorkerHealth h = daemon.Health();
      return std::make_pair(h.live, h.detail);
    });
    // Announced only now: a probe that reads the port file finds every
    // check in place (before, /readyz could answer 404 for a moment).
    const std::string port_file = absl::GetFlag(FLAGS_metrics_port_file);
    if (!port_file.empty()) {
      const std::string tmp = port_file + ".tmp";
      { std::ofstream(tmp) << metrics->port() << "\n"; }
      std::rename(tmp.c_str(), port_file.c_str());
    }
  }

  absl::Notification run_finished;
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (run_finished.HasBeenNotified()) return;
    sslbench::LogInfo("worker", "signal ", sig, ": stopping (handing back within ",
                      absl::FormatDuration(drain), ")");
    daemon.Stop();
    if (!run_finished.WaitForNotificationWithTimeout(drain)) {
      sslbench::LogWarning("worker", "the running task did not stop within ",
                           absl::FormatDuration(drain),
                           "; exiting: its lease expires and another worker resumes it");
      std::_Exit(1);
    }
  });
  absl::Status status = daemon.Run();
  run_finished.Notify();
  // Stopped before it registered: a clean stop all the same.
  if (absl::IsCancelled(status)) {
    sslbench::LogInfo("worker", "stopped before registering");
    status = absl::OkStatus();
  }
  if (!status.ok()) {
    std::fprintf(stderr, "sslbench-worker: %s\n", status.ToString().c_str());
  }
  // Wake the signal thread if Run() ended on its own.
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  metrics.reset();  // its checks read the daemon
  return status.ok() ? 0 : 1;
}
