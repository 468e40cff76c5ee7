// The coordinator's handling of arbitrary worker-API messages, on a real
// PostgreSQL: each input is a sequence of calls (which call, then its
// serialized request) from up to three workers against studies kept queued,
// so that leases, heartbeats, chunks, completions and failures all reach
// the store. A call may be refused with any clean status; a crash, a
// sanitizer report, or an INTERNAL or UNKNOWN answer (a case nobody
// handled) is a finding.
//
// To reach past the fence, a call's flag byte can swap in a real worker id,
// a task it holds and that task's token (a fuzzer cannot guess 63-bit
// tokens, and should not need to), and give a chunk a consistent shape or a
// probe's completion a result under its task's names; the other fields stay
// as the input has them.
//
// Every other study queued reuses the features of a seed study whose
// extractions the harness completed at start: its probes are ready at
// once, so that inputs reach probe completions (and the study's end)
// without first having to extract both splits of a pair.

#include <fuzzer/FuzzedDataProvider.h>
#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/local_postgres.h"
#include "server/coordinator.h"
#include "server/store/pg_store.h"
#include "tests/testing/study_fixtures.h"

namespace {

namespace v1 = sslbench::v1;
using sslbench::server::Coordinator;

struct Held {
  int64_t worker = 0;
  int64_t task = 0;
  int64_t token = 0;
  v1::TaskSpec spec;
};

struct World {
  std::unique_ptr<sslbench::LocalPostgres> pg;
  std::unique_ptr<sslbench::server::PgStore> store;
  sslbench::RealClock clock;
  std::unique_ptr<Coordinator> coordinator;
  std::vector<int64_t> workers;
  std::vector<Held> held;  // the latest leases
  int studies = 0;
  std::string dir;
  // What the harness stored per cache key: chunks, rows, width.
  struct Stored {
    int chunks = 0;
    int64_t rows = 0;
    int dim = 0;
  };
  std::map<std::string, Stored> stored;
  // Calls answered OK, by kind: how deep the inputs reach.
  int64_t leased = 0, heartbeats = 0, chunks = 0, completed = 0, probes_completed = 0,
          failed = 0;
};

World* world = nullptr;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "fuzz_worker_api: %s\n", what.c_str());
  std::abort();
}

// A study of 2 models x 2 datasets x kNN: 4 extractions and 4 probes, or,
// reusing the seed study's features, the 4 probes alone.
void QueueStudy(bool reuse_seed) {
  v1::SubmitStudyRequest request;
  *request.mutable_spec() =
      sslbench::testing::MakeStudy(2, 2, absl::StrCat("fuzz-", world->studies++));
  // Else a new model hash per study: nothing is served from the cache.
  const uint32_t tag = reuse_seed ? 0xffffffff : static_cast<uint32_t>(world->studies);
  for (auto& model : *request.mutable_spec()->mutable_models()) {
    model.set_sha256(absl::StrCat(model.sha256().substr(0, 56), absl::Hex(tag, absl::kZeroPad8)));
  }
  const auto submitted = world->coordinator->SubmitStudy(request);
  if (!submitted.ok()) Die(absl::StrCat("submit: ", submitted.status().ToString()));
}

// The seed study's extractions, leased and completed by the harness (its
// probes are left for the inputs).
void ExtractSeed() {
  QueueStudy(/*reuse_seed=*/true);
  v1::LeaseTasksRequest request;
  request.set_worker_id(world->workers[0]);
  request.set_max_tasks(16);
  const auto leases = world->coordinator->LeaseTasks(request);
  if (!leases.ok()) Die(absl::StrCat("seed lease: ", leases.status().ToString()));
  int extracted = 0;
  for (const auto& lease : leases->leases()) {
    if (lease.spec().kind() != v1::TASK_KIND_EXTRACT) Die("seed lease: not an extraction");
    v1::PutFeatureChunkRequest put;
    put.set_task_id(lease.task_id());
    put.set_lease_token(lease.lease_token());
    v1::FeatureChunk& chunk = *put.mutable_chunk();
    chunk.set_cache_key(lease.spec().cache_key());
    chunk.set_num_rows(4);
    chunk.set_dim(2);
    chunk.set_features(std::string(4 * 2 * 4, '\0'));
    chunk.set_labels(std::string(4 * 4, '\0'));
    if (absl::Status s = world->coordinator->PutFeatureChunk(put); !s.ok()) {
      Die(absl::StrCat("seed chunk: ", s.ToString()));
    }
    v1::CompleteTaskRequest complete;
    complete.set_task_id(lease.task_id());
    complete.set_lease_token(lease.lease_token());
    complete.set_feature_chunks(1);
    complete.set_feature_rows(4);
    complete.set_feature_dim(2);
    if (absl::Status s = world->coordinator->CompleteTask(complete); !s.ok()) {
      Die(absl::StrCat("seed completion: ", s.ToString()));
    }
    ++extracted;
  }
  if (extracted != 4) Die(absl::StrCat("seed study: ", extracted, " extractions, not 4"));
}

void Check(const char* call, const absl::Status& status) {
  if (status.code() == absl::StatusCode::kInternal || status.code() == absl::StatusCode::kUnknown) {
    Die(absl::StrCat(call, " answered ", status.ToString()));
  }
}

void Remember(int64_t worker, const v1::LeaseTaskResponse& lease) {
  if (lease.task_id() == 0) return;
  world->held.push_back(Held{worker, lease.task_id(), lease.lease_token(), lease.spec()});
  if (world->held.size() > 8) world->held.erase(world->held.begin());
}

}  // namespace

// At exit: what the run reached, in libFuzzer's "stat::" form, and the
// database server stopped and removed.
void Finish() {
  std::fprintf(stderr,
               "stat::worker_api_tasks_leased: %lld\nstat::worker_api_heartbeats_ok: %lld\n"
               "stat::worker_api_chunks_stored: %lld\nstat::worker_api_tasks_completed: %lld\n"
               "stat::worker_api_probes_completed: %lld\n"
               "stat::worker_api_tasks_failed: %lld\nstat::worker_api_studies_queued: %d\n",
               static_cast<long long>(world->leased), static_cast<long long>(world->heartbeats),
               static_cast<long long>(world->chunks), static_cast<long long>(world->completed),
               static_cast<long long>(world->probes_completed),
               static_cast<long long>(world->failed), world->studies);
  world->coordinator.reset();
  world->store.reset();
  world->pg.reset();  // stops the server
  std::filesystem::remove_all(world->dir);
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  world = new World;
  char dir[] = "/tmp/sslbench-fuzz-pg-XXXXXX";
  if (mkdtemp(dir) == nullptr) Die("mkdtemp failed");
  world->dir = dir;
  std::atexit(Finish);
  sslbench::LocalPostgresOptions options;
  options.dir = dir;
  options.durable = false;
  auto pg = sslbench::LocalPostgres::Start(options);
  if (!pg.ok()) Die(pg.status().ToString());
  world->pg = *std::move(pg);
  if (absl::Status s = world->pg->CreateDatabase("fuzz"); !s.ok()) Die(s.ToString());
  sslbench::server::PgStoreOptions store_options;
  store_options.conninfo = world->pg->ConnInfo("fuzz");
  auto store = sslbench::server::PgStore::Create(store_options);
  if (!store.ok()) Die(store.status().ToString());
  world->store = *std::move(store);
  sslbench::server::LeasePolicy policy;
  policy.lease_duration = absl::Seconds(30);
  world->coordinator =
      std::make_unique<Coordinator>(*world->store, world->clock, policy, nullptr);
  for (int w = 0; w < 3; ++w) {
    v1::RegisterWorkerRequest request;
    request.set_name(absl::StrCat("fuzz-", w));
    request.set_device("cpu");
    const auto registered = world->coordinator->RegisterWorker(request);
    if (!registered.ok()) Die(registered.status().ToString());
    world->workers.push_back(registered->worker_id());
  }
  ExtractSeed();
  QueueStudy(/*reuse_seed=*/false);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider input(data, size);
  Coordinator& c = *world->coordinator;
  for (int calls = 0; calls < 16 && input.remaining_bytes() > 0; ++calls) {
    const int which = input.ConsumeIntegralInRange(0, 11);
    const uint8_t flags = input.ConsumeIntegral<uint8_t>();
    const std::string bytes = input.ConsumeRandomLengthString(2048);
    // Flags: bit 0 a real worker, bit 1 a held task and its token.
    const int64_t worker = world->workers[flags % world->workers.size()];
    const Held held = world->held.empty() ? Held{} : world->held[(flags >> 2) % world->held.size()];
    const bool real_worker = flags & 1;
    const bool real_task = (flags & 2) && held.task != 0;
    auto fix = [&](auto* request) {
      if (real_worker) request->set_worker_id(real_task ? held.worker : worker);
    };
    auto fix_task = [&](auto* request) {
      if (real_task) {
        request->set_task_id(held.task);
        request->set_lease_token(held.token);
      }
    };
    switch (which) {
      case 0: {
        v1::LeaseTaskRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix(&request);
        const auto lease = c.LeaseTask(request);
        Check("LeaseTask", lease.status());
        if (lease.ok()) {
          if (lease->task_id() == 0 && real_worker) QueueStudy(world->studies % 2 == 0);
          if (lease->task_id() != 0) ++world->leased;
          Remember(request.worker_id(), *lease);
        }
        break;
      }
      case 1: {
        v1::LeaseTasksRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix(&request);
        const auto leases = c.LeaseTasks(request);
        Check("LeaseTasks", leases.status());
        if (leases.ok()) {
          world->leased += leases->leases_size();
          for (const auto& lease : leases->leases()) Remember(request.worker_id(), lease);
        }
        break;
      }
      case 2: {
        v1::HeartbeatRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix(&request);
        fix_task(&request);
        const auto beat = c.Heartbeat(request);
        Check("Heartbeat", beat.status());
        if (beat.ok()) ++world->heartbeats;
        break;
      }
      case 3: {
        v1::PutFeatureChunkRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix_task(&request);
        if (real_task && (flags & 64)) {
          // The next chunk of what this harness stored under the key.
          World::Stored& so_far = world->stored[held.spec.cache_key()];
          v1::FeatureChunk& chunk = *request.mutable_chunk();
          chunk.set_cache_key(held.spec.cache_key());
          const int rows = 1 + (flags >> 4) % 4;
          const int dim = so_far.dim > 0 ? so_far.dim : 1 + (flags >> 2) % 3;
          chunk.set_chunk_index(so_far.chunks);
          chunk.set_row_start(so_far.rows);
          chunk.set_num_rows(rows);
          chunk.set_dim(dim);
          chunk.set_features(std::string(static_cast<size_t>(rows * dim) * 4, '\0'));
          chunk.set_labels(std::string(static_cast<size_t>(rows) * 4, '\0'));
          chunk.clear_dtype();
        }
        const absl::Status stored = c.PutFeatureChunk(request);
        Check("PutFeatureChunk", stored);
        if (stored.ok()) {
          ++world->chunks;
          const v1::FeatureChunk& chunk = request.chunk();
          World::Stored& so_far = world->stored[chunk.cache_key()];
          if (chunk.chunk_index() == so_far.chunks && chunk.row_start() == so_far.rows) {
            ++so_far.chunks;
            so_far.rows += chunk.num_rows();
            so_far.dim = chunk.dim();
          }
        }
        break;
      }
      case 4: {
        v1::CompleteTaskRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix_task(&request);
        if (real_task && (flags & 64) && held.spec.kind() == v1::TASK_KIND_EXTRACT) {
          const World::Stored& so_far = world->stored[held.spec.cache_key()];
          request.set_feature_chunks(so_far.chunks);
          request.set_feature_rows(so_far.rows);
          request.set_feature_dim(so_far.dim);
        } else if (real_task && (flags & 64)) {
          v1::ProbeResult& result =
              request.results_size() > 0 ? *request.mutable_results(0) : *request.add_results();
          result.set_model(held.spec.model().name());
          result.set_dataset(held.spec.dataset().name());
          result.set_protocol(held.spec.protocol().name());
        }
        const absl::Status done = c.CompleteTask(request);
        Check("CompleteTask", done);
        if (done.ok()) {
          ++world->completed;
          if (real_task && held.spec.kind() != v1::TASK_KIND_EXTRACT) ++world->probes_completed;
        }
        break;
      }
      case 5: {
        v1::CompleteTasksRequest request;
        if (!request.ParseFromString(bytes)) break;
        if (real_task && request.tasks_size() > 0) fix_task(request.mutable_tasks(0));
        const auto outcomes = c.CompleteTasks(request);
        Check("CompleteTasks", outcomes.status());
        if (outcomes.ok()) {
          for (const auto& o : outcomes->outcomes()) {
            Check("CompleteTasks outcome", absl::Status(static_cast<absl::StatusCode>(o.code()),
                                                        o.message()));
            if (o.code() == 0) ++world->completed;
          }
        }
        break;
      }
      case 6: {
        v1::FailTaskRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix_task(&request);
        const auto failed = c.FailTask(request);
        Check("FailTask", failed.status());
        if (failed.ok()) ++world->failed;
        break;
      }
      case 7: {
        v1::GetFeatureCacheRequest request;
        if (!request.ParseFromString(bytes)) break;
        if (real_task) request.set_cache_key(held.spec.cache_key());
        Check("GetFeatureCache", c.GetFeatureCache(request).status());
        break;
      }
      case 8: {
        v1::GetFeatureChunkRequest request;
        if (!request.ParseFromString(bytes)) break;
        if (real_task) request.set_cache_key(held.spec.cache_key());
        Check("GetFeatureChunk", c.GetFeatureChunk(request).status());
        break;
      }
      case 9: {
        v1::PutCheckpointRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix_task(&request);
        Check("PutCheckpoint", c.PutCheckpoint(request));
        break;
      }
      case 10: {
        v1::PutArtifactPartRequest request;
        if (!request.ParseFromString(bytes)) break;
        fix_task(&request);
        Check("PutArtifactPart", c.PutArtifactPart(request));
        break;
      }
      default: {
        v1::RegisterWorkerRequest request;
        if (!request.ParseFromString(bytes)) break;
        Check("RegisterWorker", c.RegisterWorker(request).status());
        break;
      }
    }
  }
  return 0;
}
