// sslbench-load-bench: the coordinator under many workers. Starts a private
// PostgreSQL and --coordinators coordinator replicas in this process (over
// loopback gRPC, one database), submits studies of tiny tasks, then runs
// --workers simulated workers for --seconds: each leases a task, heartbeats
// once, stores one small feature chunk for an extraction, and completes it
// (a probe completes with one result). Prints completions per second and
// the lease and completion latencies (p50, p99) as one JSON line.
//
//   sslbench-load-bench --workers=200 --coordinators=1 --seconds=20

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/local_postgres.h"
#include "common/log.h"
#include "common/sha256.h"
#include "grpcpp/grpcpp.h"
#include "pqxx/pqxx"
#include "server/coordinator_server.h"
#include "sslbench/v1/client_api.grpc.pb.h"
#include "sslbench/v1/worker_api.grpc.pb.h"

ABSL_FLAG(int, workers, 200, "simulated workers (threads)");
ABSL_FLAG(int, coordinators, 1, "coordinator replicas on the one database");
ABSL_FLAG(int, seconds, 20, "measured time");
ABSL_FLAG(int, warmup_seconds, 3, "time before measuring");
ABSL_FLAG(int, tasks, 0,
          "tasks queued before the run (in studies of ~3,000); 0: enough that the queue "
          "does not run dry while measuring (an empty queue's leases walk every dead "
          "index entry and measure something else)");
ABSL_FLAG(bool, durable, false, "PostgreSQL with fsync on (default off, as the tests run it)");
ABSL_FLAG(int, batch, 0,
          "0: one task per RPC (lease, heartbeat, complete); N: LeaseTasks of up to N and one "
          "CompleteTasks for them (no heartbeat: the tasks take milliseconds)");
ABSL_FLAG(std::string, workload, "mixed",
          "mixed: extractions (one chunk each) and their probes; probes: only probes, on "
          "features a first study extracted before the measurement");
ABSL_FLAG(int, work_ms, 0,
          "mean time each worker spends on what it leased before completing it (a batch with "
          "--batch), asleep, drawn uniformly from 0.5x to 1.5x: a real worker computes between "
          "its calls, and not in lockstep with the others. 0: a closed loop that calls again at "
          "once, which measures capacity rather than latency");
ABSL_FLAG(int, idle_seconds, 0,
          "after the run, wait this long with the coordinators idle and report the process's "
          "resident memory again (rss_idle_mb): whether freed memory goes back to the system");
ABSL_FLAG(int, executor_threads, 8, "each coordinator's RPC executor threads");
ABSL_FLAG(int, db_connections, 16, "each coordinator's database connections");
ABSL_FLAG(std::string, postgres_options, "-c shared_buffers=1GB",
          "more PostgreSQL server options (\"-c name=value ...\"); the default buffer "
          "pool (128 MB) is smaller than the tasks table of a run");
ABSL_FLAG(bool, timeline, false,
          "print each second's lease count and p50/p99 latency while measuring to stderr");
ABSL_FLAG(bool, keep_dir, false, "keep the database folder (and its postgres.log) at the end");
ABSL_FLAG(int, statements, 0,
          "print the N statements that took PostgreSQL the most time while measuring "
          "(pg_stat_statements) to stderr");

namespace {

namespace v1 = sslbench::v1;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "sslbench-load-bench: %s\n", what.c_str());
  std::exit(1);
}

// One study of `models` x `datasets` x kNN: 2 extractions and 1 probe per
// pair. Studies with the same `models_of` share their models (and so, once
// extracted, their features).
v1::StudySpec Study(int index, int models_of, int models, int datasets) {
  v1::StudySpec spec;
  spec.set_name(absl::StrCat("load-", index));
  for (int m = 0; m < models; ++m) {
    auto* model = spec.add_models();
    model->set_name(absl::StrCat("m", m));
    model->set_path(absl::StrCat("/models/m", m, ".pt"));
    model->set_sha256(sslbench::Sha256Hex(absl::StrCat("study ", models_of, " model ", m)));
  }
  for (int d = 0; d < datasets; ++d) {
    auto* dataset = spec.add_datasets();
    dataset->set_name(absl::StrCat("d", d));
    dataset->set_root(absl::StrCat("/data/d", d));
    dataset->set_digest(absl::StrCat("digest-", d));
  }
  auto* knn = spec.add_protocols();
  knn->set_name(absl::StrCat("knn-", index));
  knn->mutable_knn();
  return spec;
}

struct Latencies {
  std::mutex mu;
  std::vector<double> lease_ms, complete_ms;
  std::vector<std::pair<double, double>> lease_at;  // (seconds into the measurement, ms)
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

double Ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

// The machine's CPU time so far, from /proc/stat: {busy, steal, total} in
// ticks. Steal is time the hypervisor gave this VM's cores to another:
// latency here that no code of ours can remove.
std::array<uint64_t, 3> CpuTicks() {
  std::ifstream stat("/proc/stat");
  std::string cpu;
  uint64_t v[8] = {};  // user nice system idle iowait irq softirq steal
  stat >> cpu;
  for (uint64_t& x : v) stat >> x;
  const uint64_t total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
  return {total - v[3] - v[4] - v[7], v[7], total};
}

// This process's resident memory (VmRSS), in MiB.
double RssMb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // Debian builds Abseil with the mutex deadlock detector on: a lock-order
  // graph updated on every lock (2.6% of the load bench's CPU in perf). The
  // tests keep it; the programs run without it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const int workers = absl::GetFlag(FLAGS_workers);
  const int replicas = absl::GetFlag(FLAGS_coordinators);

  char dir[] = "/tmp/sslbench-load-XXXXXX";
  if (mkdtemp(dir) == nullptr) Die("mkdtemp failed");
  sslbench::LocalPostgresOptions pg_options;
  pg_options.dir = dir;
  pg_options.durable = absl::GetFlag(FLAGS_durable);
  const int statements = absl::GetFlag(FLAGS_statements);
  pg_options.extra_options = absl::GetFlag(FLAGS_postgres_options);
  if (statements > 0) {
    absl::StrAppend(&pg_options.extra_options,
                    " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all");
  }
  auto pg = sslbench::LocalPostgres::Start(pg_options);
  if (!pg.ok()) Die(pg.status().ToString());
  if (auto s = (*pg)->CreateDatabase("load"); !s.ok()) Die(s.ToString());
  std::unique_ptr<pqxx::connection> stats;
  if (statements > 0) {
    stats = std::make_unique<pqxx::connection>((*pg)->ConnInfo("load"));
    pqxx::nontransaction(*stats).exec("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
  }

  std::vector<std::unique_ptr<sslbench::server::CoordinatorServer>> servers;
  for (int r = 0; r < replicas; ++r) {
    sslbench::server::CoordinatorServerOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "";
    options.database = (*pg)->ConnInfo("load");
    options.executor_threads = absl::GetFlag(FLAGS_executor_threads);
    options.db_connections = absl::GetFlag(FLAGS_db_connections);
    auto server = sslbench::server::CoordinatorServer::Start(options);
    if (!server.ok()) Die(server.status().ToString());
    servers.push_back(*std::move(server));
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (auto& s : servers) {
    // A few channels per replica: one HTTP/2 connection serialises frames.
    for (int c = 0; c < 4; ++c) {
      grpc::ChannelArguments args;
      args.SetInt("grpc.channel_id", c);  // distinct channels, distinct connections
      channels.push_back(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", s->port()),
                                                   grpc::InsecureChannelCredentials(), args));
    }
  }

  auto studies = v1::StudyService::NewStub(channels[0]);
  auto submit = [&](int index, int models_of) {
    grpc::ClientContext context;
    v1::SubmitStudyRequest request;
    *request.mutable_spec() = Study(index, models_of, 100, 10);
    v1::SubmitStudyResponse response;
    const grpc::Status s = studies->SubmitStudy(&context, request, &response);
    if (!s.ok()) Die("submit: " + s.error_message());
    return static_cast<int>(response.tasks());
  };
  const bool probes_only = absl::GetFlag(FLAGS_workload) == "probes";
  if (!probes_only && absl::GetFlag(FLAGS_workload) != "mixed") Die("--workload: mixed or probes");
  // Probes only: study 0's tasks (its extractions among them) run before
  // the measurement; the studies after it reuse its features.
  int setup_tasks = probes_only ? submit(0, 0) : 0;
  const auto submit_start = Clock::now();
  int queued = 0;
  int to_queue = absl::GetFlag(FLAGS_tasks);
  if (to_queue <= 0) {
    to_queue = (absl::GetFlag(FLAGS_warmup_seconds) + absl::GetFlag(FLAGS_seconds) + 10) *
               (absl::GetFlag(FLAGS_batch) > 0 ? 5000 : 1000);
  }
  for (int i = 1; queued < to_queue; ++i) queued += submit(i, probes_only ? 0 : i);
  const double submit_s = Ms(submit_start) / 1000;

  {
    // Planned as a long-running database is: with statistics (autovacuum
    // would analyse the tables only after its first minute).
    pqxx::connection c((*pg)->ConnInfo("load"));
    pqxx::nontransaction(c).exec("ANALYZE");
  }
  const double rss_start_mb = RssMb();
  std::atomic<bool> measuring{false}, stop{false};
  std::atomic<Clock::time_point> measure_start{Clock::now()};
  std::atomic<int64_t> completions{0}, empty_leases{0}, errors{0};
  Latencies latencies;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      auto stub = v1::WorkerService::NewStub(channels[static_cast<size_t>(w) % channels.size()]);
      v1::RegisterWorkerRequest reg;
      reg.set_name(absl::StrCat("sim-", w));
      reg.set_device("cpu");
      v1::RegisterWorkerResponse registered;
      {
        grpc::ClientContext context;
        if (!stub->RegisterWorker(&context, reg, &registered).ok()) {
          ++errors;
          return;
        }
      }
      std::vector<double> lease_ms, complete_ms;
      std::vector<std::pair<double, double>> lease_at;
      const int batch = absl::GetFlag(FLAGS_batch);
      const int work_ms = absl::GetFlag(FLAGS_work_ms);
      std::minstd_rand rng(static_cast<uint32_t>(w + 1));
      std::uniform_real_distribution<double> spread(0.5, 1.5);
      auto work = [&] {
        if (work_ms > 0) {
          std::this_thread::sleep_for(
              std::chrono::duration<double, std::milli>(work_ms * spread(rng)));
        }
      };
      auto put_chunk = [&](const v1::LeaseTaskResponse& lease, v1::CompleteTaskRequest* complete) {
        grpc::ClientContext context;
        v1::PutFeatureChunkRequest put;
        put.set_task_id(lease.task_id());
        put.set_lease_token(lease.lease_token());
        auto* chunk = put.mutable_chunk();
        chunk->set_cache_key(lease.spec().cache_key());
        chunk->set_num_rows(4);
        chunk->set_dim(2);
        chunk->set_features(std::string(4 * 2 * 4, '\0'));
        chunk->set_labels(std::string(4 * 4, '\0'));
        v1::PutFeatureChunkResponse response;
        if (!stub->PutFeatureChunk(&context, put, &response).ok()) return false;
        complete->set_feature_rows(4);
        complete->set_feature_dim(2);
        complete->set_feature_chunks(1);
        return true;
      };
      auto add_result = [](const v1::LeaseTaskResponse& lease, v1::CompleteTaskRequest* complete) {
        auto* result = complete->add_results();
        result->set_model(lease.spec().model().name());
        result->set_dataset(lease.spec().dataset().name());
        result->set_protocol(lease.spec().protocol().name());
        result->set_variant("cosine k=20 T=0.07");
        result->set_top1(0.5);
      };
      while (batch > 0 && !stop.load()) {
        v1::LeaseTasksRequest lease_request;
        lease_request.set_worker_id(registered.worker_id());
        lease_request.set_max_tasks(batch);
        v1::LeaseTasksResponse leases;
        auto t0 = Clock::now();
        {
          grpc::ClientContext context;
          if (!stub->LeaseTasks(&context, lease_request, &leases).ok()) {
            ++errors;
            continue;
          }
        }
        if (measuring.load()) {
          lease_ms.push_back(Ms(t0));
          lease_at.emplace_back(Ms(measure_start.load()) / 1000, lease_ms.back());
        }
        if (leases.leases_size() == 0) {
          if (measuring.load()) ++empty_leases;
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          continue;
        }
        work();
        v1::CompleteTasksRequest completes;
        for (const auto& lease : leases.leases()) {
          v1::CompleteTaskRequest* complete = completes.add_tasks();
          complete->set_task_id(lease.task_id());
          complete->set_lease_token(lease.lease_token());
          if (lease.spec().kind() == v1::TASK_KIND_EXTRACT) {
            if (!put_chunk(lease, complete)) ++errors;
          } else {
            add_result(lease, complete);
          }
        }
        t0 = Clock::now();
        grpc::ClientContext context;
        v1::CompleteTasksResponse response;
        if (!stub->CompleteTasks(&context, completes, &response).ok()) {
          ++errors;
          continue;
        }
        int ok = 0;
        for (const auto& outcome : response.outcomes()) {
          if (outcome.code() == 0) ++ok; else ++errors;
        }
        if (measuring.load()) {
          complete_ms.push_back(Ms(t0));
          completions += ok;
        }
      }
      while (batch == 0 && !stop.load()) {
        v1::LeaseTaskRequest lease_request;
        lease_request.set_worker_id(registered.worker_id());
        v1::LeaseTaskResponse lease;
        auto t0 = Clock::now();
        {
          grpc::ClientContext context;
          if (!stub->LeaseTask(&context, lease_request, &lease).ok()) {
            ++errors;
            continue;
          }
        }
        if (measuring.load()) lease_ms.push_back(Ms(t0));
        if (lease.task_id() == 0) {
          if (measuring.load()) ++empty_leases;
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          continue;
        }
        {
          grpc::ClientContext context;
          v1::HeartbeatRequest hb;
          hb.set_worker_id(registered.worker_id());
          hb.set_task_id(lease.task_id());
          hb.set_lease_token(lease.lease_token());
          v1::HeartbeatResponse response;
          if (!stub->Heartbeat(&context, hb, &response).ok()) ++errors;
        }
        work();
        v1::CompleteTaskRequest complete;
        complete.set_task_id(lease.task_id());
        complete.set_lease_token(lease.lease_token());
        if (lease.spec().kind() == v1::TASK_KIND_EXTRACT) {
          if (!put_chunk(lease, &complete)) {
            ++errors;
            continue;
          }
        } else {
          add_result(lease, &complete);
        }
        t0 = Clock::now();
        grpc::ClientContext context;
        v1::CompleteTaskResponse response;
        if (!stub->CompleteTask(&context, complete, &response).ok()) {
          ++errors;
          continue;
        }
        if (measuring.load()) {
          complete_ms.push_back(Ms(t0));
          ++completions;
        }
      }
      std::lock_guard<std::mutex> lock(latencies.mu);
      latencies.lease_ms.insert(latencies.lease_ms.end(), lease_ms.begin(), lease_ms.end());
      latencies.complete_ms.insert(latencies.complete_ms.end(), complete_ms.begin(),
                                   complete_ms.end());
      latencies.lease_at.insert(latencies.lease_at.end(), lease_at.begin(), lease_at.end());
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(absl::GetFlag(FLAGS_warmup_seconds)));
  if (probes_only) {
    // Study 0 (the extractions) must be done before measuring.
    for (;;) {
      grpc::ClientContext context;
      v1::GetStudyRequest get;
      get.set_study_id(1);
      v1::StudyStatus status;
      if (studies->GetStudy(&context, get, &status).ok() &&
          status.state() != v1::STUDY_STATE_RUNNING) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  if (stats != nullptr) pqxx::nontransaction(*stats).exec("SELECT pg_stat_statements_reset()");
  measure_start = Clock::now();
  sslbench::LogInfo("load-bench", "measuring");
  measuring = true;
  const auto start = Clock::now();
  const auto cpu_start = CpuTicks();
  std::this_thread::sleep_for(std::chrono::seconds(absl::GetFlag(FLAGS_seconds)));
  measuring = false;
  const auto cpu_end = CpuTicks();
  const double cpu_ticks = std::max<double>(1, cpu_end[2] - cpu_start[2]);
  const double busy_pct = 100.0 * (cpu_end[0] - cpu_start[0]) / cpu_ticks;
  const double steal_pct = 100.0 * (cpu_end[1] - cpu_start[1]) / cpu_ticks;
  const double elapsed = Ms(start) / 1000;
  stop = true;
  for (auto& t : threads) t.join();
  const int64_t done = completions.load();
  if (stats != nullptr) {
    pqxx::nontransaction n(*stats);
    std::fprintf(stderr, "%10s %10s %8s %10s  statement\n", "calls", "total_ms", "mean_ms", "rows");
    for (const auto& row : n.exec_params(
             "SELECT calls, total_exec_time, mean_exec_time, rows, "
             "regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements "
             "ORDER BY total_exec_time DESC LIMIT $1",
             statements)) {
      std::fprintf(stderr, "%10lld %10.0f %8.3f %10lld  %.300s\n", row[0].as<long long>(),
                   row[1].as<double>(), row[2].as<double>(), row[3].as<long long>(),
                   row[4].c_str());
    }
  }
  if (absl::GetFlag(FLAGS_timeline)) {
    std::vector<std::vector<double>> by_second;
    for (const auto& [at, ms] : latencies.lease_at) {
      const size_t second = static_cast<size_t>(std::max(0.0, at));
      if (by_second.size() <= second) by_second.resize(second + 1);
      by_second[second].push_back(ms);
    }
    for (size_t i = 0; i < by_second.size(); ++i) {
      std::fprintf(stderr, "second %2zu: %5zu leases, p50 %7.1f ms, p99 %7.1f ms, max %7.1f ms\n", i,
                   by_second[i].size(), Percentile(by_second[i], 0.5),
                   Percentile(by_second[i], 0.99),
                   *std::max_element(by_second[i].begin(), by_second[i].end()));
    }
  }
  const double rss_end_mb = RssMb();
  std::this_thread::sleep_for(std::chrono::seconds(absl::GetFlag(FLAGS_idle_seconds)));
  const double rss_idle_mb = RssMb();

  std::printf(
      "{\"coordinators\": %d, \"workers\": %d, \"batch\": %d, \"workload\": \"%s\", "
      "\"work_ms\": %d, \"cores\": %u, \"durable\": %s, \"queued_tasks\": %d, \"setup_tasks\": %d, "
      "\"submit_s\": %.1f, \"completions\": %lld, \"completions_per_s\": %.0f, "
      "\"lease_p50_ms\": %.2f, \"lease_p99_ms\": %.2f, \"complete_p50_ms\": %.2f, "
      "\"complete_p99_ms\": %.2f, \"empty_leases\": %lld, \"errors\": %lld, "
      "\"cpu_busy_pct\": %.0f, \"cpu_steal_pct\": %.1f, "
      "\"rss_start_mb\": %.0f, \"rss_end_mb\": %.0f, \"rss_idle_mb\": %.0f}\n",
      replicas, workers, absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_workload).c_str(),
      absl::GetFlag(FLAGS_work_ms), std::thread::hardware_concurrency(), absl::GetFlag(FLAGS_durable) ? "true" : "false",
      queued, setup_tasks, submit_s,
      static_cast<long long>(done), static_cast<double>(done) / elapsed,
      Percentile(latencies.lease_ms, 0.5), Percentile(latencies.lease_ms, 0.99),
      Percentile(latencies.complete_ms, 0.5), Percentile(latencies.complete_ms, 0.99),
      static_cast<long long>(empty_leases.load()), static_cast<long long>(errors.load()),
      busy_pct, steal_pct, rss_start_mb, rss_end_mb, rss_idle_mb);
  servers.clear();
  pg->reset();
  if (absl::GetFlag(FLAGS_keep_dir)) {
    std::fprintf(stderr, "kept %s\n", dir);
  } else {
    std::filesystem::remove_all(dir);
  }
  return 0;
}
