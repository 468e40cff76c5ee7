#include "worker/worker_daemon.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/fine_tune.h"
#include "worker/compute/image_set.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/batch_loader.h"
#include "common/dataset_digest.h"
#include "worker/compute/knn.h"
#include "worker/probe_tasks.h"

namespace sslbench::worker {

struct WorkerDaemon::TaskContext {
  int64_t task_id = 0;
  int64_t token = 0;
  v1::TaskSpec spec;
  std::atomic<int64_t> work_done{0};
  std::atomic<int64_t> work_total{0};
  std::atomic<bool> cancelled{false};   // the study was cancelled
  std::atomic<bool> lease_lost{false};  // another worker owns the task now
  absl::Notification finished;
  // What an extraction wrote, for CompleteTask.
  int64_t rows = 0;
  int64_t dim = 0;
  int32_t chunks = 0;

  bool ShouldStop() const { return cancelled || lease_lost; }
};

namespace {

const char* KindLabel(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_EXTRACT: return "extract";
    case v1::TASK_KIND_KNN: return "knn";
    case v1::TASK_KIND_LINEAR: return "linear";
    case v1::TASK_KIND_LOGREG: return "logreg";
    case v1::TASK_KIND_FINETUNE: return "finetune";
    default: return "other";
  }
}

// Failures caused by the task's input do not improve with a retry.
bool Retryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kDataLoss:
      return false;
    default:
      return true;
  }
}

absl::Status Stopped(const char* why) { return absl::CancelledError(why); }

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry)
    : tasks(&prometheus::BuildCounter()
                 .Name("sslbench_worker_tasks_total")
                 .Help("Tasks run by this worker, by kind and outcome")
                 .Register(registry)),
      task_duration(&prometheus::BuildHistogram()
                         .Name("sslbench_worker_task_duration_seconds")
                         .Help("Wall time of tasks by kind")
                         .Register(registry)),
      images(&prometheus::BuildCounter()
                  .Name("sslbench_worker_images_total")
                  .Help("Images passed through a backbone")
                  .Register(registry)
                  .Add({})),
      feature_bytes_uploaded(&prometheus::BuildCounter()
                                  .Name("sslbench_worker_feature_bytes_uploaded_total")
                                  .Help("Feature bytes sent to the coordinator")
                                  .Register(registry)
                                  .Add({})),
      busy(&prometheus::BuildGauge()
                .Name("sslbench_worker_busy")
                .Help("1 while the worker runs a task")
                .Register(registry)
                .Add({})) {}

WorkerDaemon::WorkerDaemon(std::shared_ptr<grpc::Channel> channel, WorkerOptions options,
                           std::shared_ptr<prometheus::Registry> registry)
    : stub_(v1::WorkerService::NewStub(channel)),
      options_(std::move(options)),
      registry_(std::move(registry)),
      metrics_(*registry_) {}

std::unique_ptr<grpc::ClientContext> WorkerDaemon::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(options_.rpc_timeout));
  return context;
}

absl::Status WorkerDaemon::Call(const TaskContext* ctx, const char* what,
                                const std::function<grpc::Status(grpc::ClientContext*)>& rpc) {
  // Transient failures (a coordinator restarting, a replica going away) are
  // retried for a while, so a task survives them; the lease outlives the gap.
  absl::Duration backoff = absl::Milliseconds(200);
  const absl::Time give_up = absl::Now() + options_.rpc_retry_window;
  for (;;) {
    auto context = NewContext();
    const absl::Status status = FromGrpcStatus(rpc(context.get()));
    const bool transient = absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
                           absl::IsAborted(status);
    if (!transient || absl::Now() + backoff > give_up || stop_.HasBeenNotified() ||
        (ctx != nullptr && ctx->ShouldStop())) {
      return status;
    }
    LogWarning("worker", what, " failed, retrying in ", absl::FormatDuration(backoff), ": ",
               status.message());
    stop_.WaitForNotificationWithTimeout(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

void WorkerDaemon::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
}

absl::Status WorkerDaemon::Register() {
  v1::RegisterWorkerRequest request;
  request.set_name(options_.name);
  request.set_hostname(Hostname());
  request.set_device(options_.device);
  // The coordinator may still be starting: retry unavailability with backoff.
  absl::Duration backoff = absl::Milliseconds(200);
  while (!stop_.HasBeenNotified()) {
    v1::RegisterWorkerResponse response;
    auto context = NewContext();
    const absl::Status status =
        FromGrpcStatus(stub_->RegisterWorker(context.get(), request, &response));
    if (status.ok()) {
      worker_id_ = response.worker_id();
      if (response.heartbeat_interval_ms() > 0) {
        heartbeat_interval_ = absl::Milliseconds(response.heartbeat_interval_ms());
      }
      LogInfo("worker", "registered as worker ", worker_id_, " (", options_.name, ")");
      return absl::OkStatus();
    }
    if (!absl::IsUnavailable(status) && !absl::IsDeadlineExceeded(status)) return status;
    LogWarning("worker", "coordinator unavailable, retrying: ", status.message());
    stop_.WaitForNotificationWithTimeout(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
  return Stopped("stopped before registering");
}

absl::Status WorkerDaemon::Run() {
  compute::SetComputeThreads(options_.compute_threads);
  RETURN_IF_ERROR(Register());
  absl::Duration backoff = options_.idle_poll;
  while (!stop_.HasBeenNotified()) {
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker_id_);
    v1::LeaseTaskResponse lease;
    auto context = NewContext();
    const absl::Status status =
        FromGrpcStatus(stub_->LeaseTask(context.get(), request, &lease));
    if (absl::IsNotFound(status)) {
      // The coordinator's database forgot us (e.g. it was reset): register again.
      RETURN_IF_ERROR(Register());
      continue;
    }
    if (!status.ok()) {
      LogWarning("worker", "lease failed, retrying: ", status.ToString());
      stop_.WaitForNotificationWithTimeout(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(10));
      continue;
    }
    backoff = options_.idle_poll;
    if (lease.task_id() == 0) {
      stop_.WaitForNotificationWithTimeout(options_.idle_poll);
      continue;
    }
    RunTask(lease);
  }
  LogInfo("worker", "stopped");
  return absl::OkStatus();
}

void WorkerDaemon::HeartbeatLoop(TaskContext& ctx) {
  while (!ctx.finished.WaitForNotificationWithTimeout(heartbeat_interval_)) {
    v1::HeartbeatRequest request;
    request.set_worker_id(worker_id_);
    request.set_task_id(ctx.task_id);
    request.set_lease_token(ctx.token);
    request.set_work_done(ctx.work_done);
    request.set_work_total(ctx.work_total);
    v1::HeartbeatResponse response;
    // A heartbeat stuck on an unresponsive replica must not outlast the
    // lease: give it no longer than the interval, then try again.
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(heartbeat_interval_));
    const absl::Status status =
        FromGrpcStatus(stub_->Heartbeat(context.get(), request, &response));
    if (absl::IsFailedPrecondition(status) || absl::IsNotFound(status)) {
      LogWarning("worker", "task ", ctx.task_id, ": ", status.message(), "; abandoning it");
      ctx.lease_lost = true;
      return;
    }
    if (!status.ok()) {
      // Transient: the lease outlives a few missed heartbeats.
      LogWarning("worker", "heartbeat for task ", ctx.task_id, " failed: ", status.ToString());
      continue;
    }
    if (response.cancelled()) {
      LogInfo("worker", "task ", ctx.task_id, " was cancelled");
      ctx.cancelled = true;
      return;
    }
  }
}

void WorkerDaemon::RunTask(const v1::LeaseTaskResponse& lease) {
  TaskContext ctx;
  ctx.task_id = lease.task_id();
  ctx.token = lease.lease_token();
  ctx.spec = lease.spec();
  const char* kind = KindLabel(ctx.spec.kind());
  LogInfo("worker", "task ", ctx.task_id, " (", kind, ", attempt ", lease.attempt(),
          ", model ", ctx.spec.model().name(), ", dataset ", ctx.spec.dataset().name(),
          ctx.spec.split().empty() ? "" : absl::StrCat(", ", ctx.spec.split()), ")");
  metrics_.busy->Set(1);
  const auto start = std::chrono::steady_clock::now();
  std::thread heartbeat([&] { HeartbeatLoop(ctx); });

  absl::Status status;
  std::vector<v1::ProbeResult> results;
  if (ctx.spec.kind() == v1::TASK_KIND_EXTRACT) {
    status = RunExtract(ctx);
  } else if (ctx.spec.kind() == v1::TASK_KIND_FINETUNE) {
    status = RunFineTuneTask(ctx, &results);
  } else if (ctx.spec.kind() == v1::TASK_KIND_KNN ||
             ctx.spec.kind() == v1::TASK_KIND_LINEAR ||
             ctx.spec.kind() == v1::TASK_KIND_LOGREG) {
    status = RunProbe(ctx, &results);
  } else {
    status = absl::InvalidArgumentError(absl::StrCat("task kind ", ctx.spec.kind(),
                                                     " is not supported by this worker"));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Heartbeats go on until the outcome is acknowledged: reporting may retry
  // through a coordinator restart, and the lease must outlive that.
  std::string outcome;
  auto report_failure = [&](const absl::Status& failure, bool retryable,
                            bool preempted = false) {
    v1::FailTaskRequest request;
    request.set_task_id(ctx.task_id);
    request.set_lease_token(ctx.token);
    request.set_error(failure.ToString());
    request.set_retryable(retryable);
    request.set_preempted(preempted);
    v1::FailTaskResponse response;
    const absl::Status sent = Call(&ctx, "FailTask", [&](grpc::ClientContext* c) {
      return stub_->FailTask(c, request, &response);
    });
    if (!sent.ok()) {
      LogWarning("worker", "task ", ctx.task_id, ": failure not recorded: ", sent.ToString());
    }
  };
  if (ctx.lease_lost) {
    outcome = "lease_lost";
  } else if (ctx.cancelled) {
    outcome = "cancelled";
  } else if (status.ok()) {
    v1::CompleteTaskRequest request;
    request.set_task_id(ctx.task_id);
    request.set_lease_token(ctx.token);
    for (auto& r : results) *request.add_results() = std::move(r);
    if (ctx.spec.kind() == v1::TASK_KIND_EXTRACT) {
      request.set_feature_rows(ctx.rows);
      request.set_feature_dim(static_cast<int32_t>(ctx.dim));
      request.set_feature_chunks(ctx.chunks);
    }
    v1::CompleteTaskResponse response;
    const absl::Status sent = Call(&ctx, "CompleteTask", [&](grpc::ClientContext* c) {
      return stub_->CompleteTask(c, request, &response);
    });
    outcome = sent.ok() ? "succeeded" : "report_failed";
    if (!sent.ok()) {
      LogWarning("worker", "task ", ctx.task_id, ": completion not accepted: ", sent.ToString());
      // A rejection other than a lost lease is the task's real error: record
      // it rather than let the lease expire and hide it.
      if (!absl::IsFailedPrecondition(sent) && !absl::IsUnavailable(sent) &&
          !absl::IsDeadlineExceeded(sent)) {
        report_failure(sent, Retryable(sent));
      }
    } else {
      LogInfo("worker", "task ", ctx.task_id, " done in ", absl::StrFormat("%.1f", seconds), " s");
    }
  } else if (stop_.HasBeenNotified() && absl::IsCancelled(status)) {
    // Shutting down: hand the task back now instead of letting the lease
    // expire (which would cost an attempt and the lease's duration).
    outcome = "interrupted";
    report_failure(absl::CancelledError("worker shutting down"), true, /*preempted=*/true);
  } else {
    outcome = "failed";
    LogWarning("worker", "task ", ctx.task_id, " failed: ", status.ToString());
    report_failure(status, Retryable(status));
  }
  ctx.finished.Notify();
  heartbeat.join();
  metrics_.busy->Set(0);
  metrics_.tasks->Add({{"kind", kind}, {"outcome", outcome}}).Increment();
  metrics_.task_duration
      ->Add({{"kind", kind}},
            prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200})
      .Observe(seconds);
}

namespace {

// The cache key and the results promise these exact bytes: refuse a file
// changed since the study was submitted.
absl::Status VerifyModel(const v1::ModelSpec& model) {
  ASSIGN_OR_RETURN(std::string sha, Sha256File(model.path()));
  if (sha != model.sha256()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model \"", model.name(), "\": file ", model.path(),
        " changed since the study was submitted (sha256 ", sha.substr(0, 12), " != ",
        model.sha256().substr(0, 12), "); resubmit the study"));
  }
  return absl::OkStatus();
}

// A fine-tuning checkpoint for seed `seed_index`, carrying the seeds done.
v1::FineTuneCheckpoint SeedCheckpoint(int32_t seed_index,
                                      const std::vector<SeedOutcome>& done) {
  v1::FineTuneCheckpoint checkpoint;
  checkpoint.set_seed_index(seed_index);
  for (const SeedOutcome& o : done) {
    v1::ProbeResult* p = checkpoint.add_completed();
    p->set_variant(o.variant);
    p->set_top1(o.metrics.top1);
    p->set_top5(o.metrics.top5);
    p->set_mean_per_class(o.metrics.mean_per_class);
    for (double a : o.metrics.per_class) p->add_per_class(a);
    p->set_config_json(o.selected_json);
  }
  return checkpoint;
}

compute::ModelOptions ToModelOptions(const v1::ModelSpec& model) {
  compute::ModelOptions options;
  options.path = model.path();
  options.input_size = model.input_size();
  options.resize_size = model.resize_size();
  options.channels = model.channels();
  options.mean.assign(model.mean().begin(), model.mean().end());
  options.std.assign(model.std().begin(), model.std().end());
  return options;
}

}  // namespace

absl::Status WorkerDaemon::RunExtract(TaskContext& ctx) {
  const v1::TaskSpec& spec = ctx.spec;
  RETURN_IF_ERROR(VerifyModel(spec.model()));
  const datasets::DatasetConfig config = ToDatasetConfig(spec.dataset());
  ASSIGN_OR_RETURN(std::unique_ptr<datasets::DatasetReader> reader,
                   datasets::OpenDatasetReader(config));
  const int64_t limit =
      spec.split() == "train" ? spec.dataset().train_limit() : spec.dataset().test_limit();
  ASSIGN_OR_RETURN(datasets::SplitListing listing, reader->List(spec.split(), limit));
  const std::vector<datasets::Record>& records = listing.records;
  if (records.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("dataset \"", spec.dataset().name(),
                                                   "\": the ", spec.split(), " split is empty"));
  }
  if (ctx.ShouldStop() || stop_.HasBeenNotified()) return Stopped("stopped");
  const compute::ModelOptions model = ToModelOptions(spec.model());
  ASSIGN_OR_RETURN(auto extractor, compute::FeatureExtractor::Load(model));
  const image::PreprocessOptions preprocess = compute::PreprocessOptionsFor(model);

  // Chunks already stored by an earlier attempt are kept (a preempted worker
  // loses at most one chunk of work).
  std::vector<bool> present;
  int64_t stored_chunk_rows = 0;
  {
    v1::GetFeatureCacheRequest request;
    request.set_cache_key(spec.cache_key());
    v1::FeatureCacheInfo info;
    RETURN_IF_ERROR(Call(&ctx, "GetFeatureCache", [&](grpc::ClientContext* c) {
      return stub_->GetFeatureCache(c, request, &info);
    }));
    stored_chunk_rows = info.chunk_rows();
    for (int32_t index : info.present_chunks()) {
      if (index >= static_cast<int32_t>(present.size())) present.resize(index + 1, false);
      present[index] = true;
    }
  }
  // The chunk layout depends only on the feature width: probe it on the
  // first image that decodes.
  int64_t dim = 0;
  {
    const int64_t probe = std::min<int64_t>(static_cast<int64_t>(records.size()), 64);
    image::BatchLoader loader(reader.get(), &records, {{0, probe}}, preprocess,
                              datasets::BadImagePolicy::kSkip, 1, 1);
    image::Batch batch;
    ASSIGN_OR_RETURN(bool got, loader.Next(&batch));
    int64_t first_good = -1;
    for (int64_t i = 0; got && i < batch.n; ++i) {
      if (batch.labels[i] >= 0) {
        first_good = i;
        break;
      }
    }
    if (first_good < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset \"", spec.dataset().name(), "\": none of the first ", probe, " images of the ",
          spec.split(), " split decodes (first: ",
          batch.skipped.empty() ? "?" : batch.skipped.front(), ")"));
    }
    const size_t floats = static_cast<size_t>(batch.channels) * batch.height * batch.width;
    RETURN_IF_ERROR(extractor
                        ->Forward(batch.data.data() + first_good * floats, 1, batch.height,
                                  batch.width, &dim)
                        .status());
  }
  // Keep the layout of chunks an earlier attempt stored; without chunk 0,
  // start afresh (stray later chunks are overwritten).
  const int64_t rows_per_chunk =
      stored_chunk_rows > 0 ? stored_chunk_rows
                            : std::clamp<int64_t>(options_.chunk_bytes / (dim * 4), 1, 1 << 16);
  if (stored_chunk_rows == 0) present.clear();
  const int64_t n = static_cast<int64_t>(records.size());
  const int32_t num_chunks = static_cast<int32_t>((n + rows_per_chunk - 1) / rows_per_chunk);
  ctx.work_total = n;

  // Batches never straddle chunks, so each chunk is sent once its last
  // batch is through the model.
  const int64_t batch_size = std::max(1, spec.batch_size());
  std::vector<image::BatchJob> jobs;
  int64_t reused = 0;
  for (int32_t c = 0; c < num_chunks; ++c) {
    const int64_t begin = c * rows_per_chunk;
    const int64_t end = std::min(n, begin + rows_per_chunk);
    if (c < static_cast<int32_t>(present.size()) && present[c]) {
      reused += end - begin;
      continue;
    }
    for (int64_t b = begin; b < end; b += batch_size) jobs.push_back({b, std::min(batch_size, end - b)});
  }
  ctx.work_done += reused;
  image::BatchLoader loader(reader.get(), &records, std::move(jobs), preprocess,
                            config.on_bad_image, options_.decode_threads,
                            /*max_ready=*/std::max(2, 2 * options_.decode_threads));
  std::vector<float> features;
  std::vector<int32_t> labels;
  int64_t chunk_begin = -1;
  int64_t skipped = 0;
  image::Batch batch;
  for (;;) {
    if (ctx.ShouldStop() || stop_.HasBeenNotified()) return Stopped("stopped");
    ASSIGN_OR_RETURN(bool got, loader.Next(&batch));
    if (!got) break;
    if (chunk_begin < 0) chunk_begin = batch.first;
    std::vector<float> rows;
    if (batch.height > 0) {
      int64_t batch_dim = 0;
      ASSIGN_OR_RETURN(rows, extractor->Forward(batch.data.data(), batch.n, batch.height,
                                                batch.width, &batch_dim));
      if (batch_dim != dim) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model \"", spec.model().name(), "\" returned ", batch_dim,
            " features per image after ", dim, " at first"));
      }
    } else {
      rows.assign(static_cast<size_t>(batch.n * dim), 0.0f);
    }
    // A skipped image keeps its row, zeroed, with label -1: the layout stays
    // one row per record, and probes leave such rows out.
    for (int64_t i = 0; i < batch.n; ++i) {
      if (batch.labels[i] < 0) std::fill_n(rows.begin() + i * dim, dim, 0.0f);
    }
    for (const std::string& why : batch.skipped) {
      LogWarning("worker", "task ", ctx.task_id, ": skipping an undecodable image: ", why);
    }
    skipped += static_cast<int64_t>(batch.skipped.size());
    features.insert(features.end(), rows.begin(), rows.end());
    labels.insert(labels.end(), batch.labels.begin(), batch.labels.end());
    metrics_.images->Increment(static_cast<double>(batch.n));
    ctx.work_done += batch.n;
    const int64_t chunk_end = batch.first + batch.n;
    if (chunk_end % rows_per_chunk != 0 && chunk_end != n) continue;

    const int32_t c = static_cast<int32_t>(chunk_begin / rows_per_chunk);
    const int64_t chunk_rows = chunk_end - chunk_begin;
    v1::PutFeatureChunkRequest request;
    request.set_task_id(ctx.task_id);
    request.set_lease_token(ctx.token);
    v1::FeatureChunk* chunk = request.mutable_chunk();
    chunk->set_cache_key(spec.cache_key());
    chunk->set_chunk_index(c);
    chunk->set_row_start(chunk_begin);
    chunk->set_num_rows(static_cast<int32_t>(chunk_rows));
    chunk->set_dim(static_cast<int32_t>(dim));
    chunk->set_features(std::string(reinterpret_cast<const char*>(features.data()),
                                    features.size() * sizeof(float)));
    chunk->set_labels(std::string(reinterpret_cast<const char*>(labels.data()),
                                  labels.size() * sizeof(int32_t)));
    v1::PutFeatureChunkResponse response;
    RETURN_IF_ERROR(Call(&ctx, "PutFeatureChunk", [&](grpc::ClientContext* c) {
      return stub_->PutFeatureChunk(c, request, &response);
    }));
    metrics_.feature_bytes_uploaded->Increment(static_cast<double>(features.size() * 4));
    features.clear();
    labels.clear();
    chunk_begin = -1;
  }
  if (reused > 0) {
    LogInfo("worker", "task ", ctx.task_id, ": resumed, ", reused, " of ", n,
            " rows were already stored");
  }
  if (skipped > 0) {
    LogWarning("worker", "task ", ctx.task_id, ": ", skipped, " of ", n,
               " images could not be decoded and were skipped (on_bad_image: skip)");
  }
  ctx.rows = n;
  ctx.dim = dim;
  ctx.chunks = num_chunks;
  return absl::OkStatus();
}

absl::Status WorkerDaemon::FetchFeatures(TaskContext& ctx, const std::string& key,
                                         compute::FeatureMatrix* out) {
  v1::GetFeatureCacheRequest request;
  request.set_cache_key(key);
  v1::FeatureCacheInfo info;
  RETURN_IF_ERROR(Call(&ctx, "GetFeatureCache", [&](grpc::ClientContext* c) {
    return stub_->GetFeatureCache(c, request, &info);
  }));
  if (!info.complete()) {
    return absl::UnavailableError(absl::StrCat("feature cache ", key, " is not complete yet"));
  }
  out->rows = info.num_rows();
  out->dim = info.dim();
  out->data.assign(static_cast<size_t>(info.num_rows() * info.dim()), 0.0f);
  out->labels.assign(static_cast<size_t>(info.num_rows()), 0);
  int64_t filled = 0;
  for (int32_t c = 0; c < info.num_chunks(); ++c) {
    if (ctx.ShouldStop() || stop_.HasBeenNotified()) return Stopped("stopped");
    v1::GetFeatureChunkRequest chunk_request;
    chunk_request.set_cache_key(key);
    chunk_request.set_chunk_index(c);
    v1::FeatureChunk chunk;
    RETURN_IF_ERROR(Call(&ctx, "GetFeatureChunk", [&](grpc::ClientContext* c) {
      return stub_->GetFeatureChunk(c, chunk_request, &chunk);
    }));
    const int64_t start = chunk.row_start();
    if (chunk.dim() != info.dim() || start < 0 || start + chunk.num_rows() > info.num_rows() ||
        chunk.features().size() != static_cast<size_t>(chunk.num_rows()) * chunk.dim() * 4 ||
        chunk.labels().size() != static_cast<size_t>(chunk.num_rows()) * 4) {
      return absl::DataLossError(absl::StrCat("feature cache ", key, ": chunk ", c, " is malformed"));
    }
    std::memcpy(out->data.data() + start * info.dim(), chunk.features().data(),
                chunk.features().size());
    std::memcpy(out->labels.data() + start, chunk.labels().data(), chunk.labels().size());
    filled += chunk.num_rows();
  }
  if (filled != info.num_rows()) {
    return absl::DataLossError(absl::StrCat("feature cache ", key, ": chunks hold ", filled,
                                            " rows, expected ", info.num_rows()));
  }
  // Rows of images skipped as undecodable carry label -1: leave them out.
  int64_t kept = 0;
  for (int64_t r = 0; r < out->rows; ++r) {
    if (out->labels[r] < 0) continue;
    if (kept != r) {
      std::memmove(out->data.data() + kept * out->dim, out->data.data() + r * out->dim,
                   static_cast<size_t>(out->dim) * sizeof(float));
      out->labels[kept] = out->labels[r];
    }
    ++kept;
  }
  if (kept < out->rows) {
    LogInfo("worker", "task ", ctx.task_id, ": feature cache ", key, ": ", out->rows - kept,
            " rows of skipped images left out");
    out->rows = kept;
    out->data.resize(static_cast<size_t>(kept * out->dim));
    out->labels.resize(static_cast<size_t>(kept));
  }
  return absl::OkStatus();
}

absl::Status WorkerDaemon::RunProbe(TaskContext& ctx, std::vector<v1::ProbeResult>* results) {
  compute::FeatureMatrix train, test;
  RETURN_IF_ERROR(FetchFeatures(ctx, ctx.spec.train_cache_key(), &train));
  RETURN_IF_ERROR(FetchFeatures(ctx, ctx.spec.test_cache_key(), &test));
  // Progress is reported in the protocol's own units; returning false stops it.
  auto progress = [&](int64_t done, int64_t total) {
    ctx.work_total = total;
    ctx.work_done = done;
    return !ctx.ShouldStop() && !stop_.HasBeenNotified();
  };
  ASSIGN_OR_RETURN(*results, RunProbeTask(ctx.spec, train, test, progress));
  return absl::OkStatus();
}

absl::Status WorkerDaemon::RunFineTuneTask(TaskContext& ctx,
                                           std::vector<v1::ProbeResult>* results) {
  const v1::TaskSpec& spec = ctx.spec;
  const v1::FineTuneParams& params = spec.protocol().finetune();
  RETURN_IF_ERROR(VerifyModel(spec.model()));
  // Images are held in memory, resized and centre-cropped to the model's
  // input once; the augmentations work from there.
  const compute::ModelOptions model = ToModelOptions(spec.model());
  const image::PreprocessOptions geometry = compute::PreprocessOptionsFor(model);
  const image::PreprocessOptions* resize = model.input_size > 0 ? &geometry : nullptr;
  const datasets::DatasetConfig config = ToDatasetConfig(spec.dataset());
  ASSIGN_OR_RETURN(compute::ImageSet train,
                   compute::LoadImageSet(config, "train", spec.dataset().train_limit(), resize));
  ASSIGN_OR_RETURN(compute::ImageSet test,
                   compute::LoadImageSet(config, "test", spec.dataset().test_limit(), resize));
  const int num_classes = std::max(train.num_classes, test.num_classes);

  // An earlier attempt's checkpoint: the seeds it finished and the state of
  // the one it was running.
  v1::FineTuneCheckpoint saved;
  {
    v1::GetCheckpointRequest request;
    request.set_task_id(ctx.task_id);
    v1::Checkpoint checkpoint;
    const absl::Status got = Call(&ctx, "GetCheckpoint", [&](grpc::ClientContext* c) {
      return stub_->GetCheckpoint(c, request, &checkpoint);
    });
    if (got.ok()) {
      if (!saved.ParseFromString(checkpoint.data())) {
        return absl::DataLossError(absl::StrCat("task ", ctx.task_id, ": checkpoint does not parse"));
      }
      LogInfo("worker", "task ", ctx.task_id, ": resuming from a checkpoint at seed index ",
              saved.seed_index(), ", step ", saved.step(), " (", saved.completed_size(),
              " seeds done)");
    } else if (!absl::IsNotFound(got)) {
      return got;
    }
  }

  compute::FineTuneOptions options;
  options.optimizer = params.optimizer();
  options.learning_rate = params.learning_rate();
  options.weight_decay = params.weight_decay();
  options.momentum = params.momentum();
  options.epochs = params.epochs();
  options.batch_size = params.batch_size();
  options.warmup_epochs = std::min(params.warmup_epochs(), std::max(0, params.epochs() - 1));
  options.label_smoothing = params.label_smoothing();
  options.batch_norm = params.batch_norm();
  options.min_scale = params.min_scale();
  options.flip = !params.no_flip();
  options.checkpoint_every_steps = params.checkpoint_every_steps();

  const std::vector<int64_t> seeds = TaskSeeds(spec);
  const bool few_shot = spec.subset().shots() > 0 || spec.subset().fraction() > 0;
  std::vector<SeedOutcome> outcomes;
  std::vector<int64_t> rows_used;
  for (const auto& done : saved.completed()) {
    SeedOutcome o;
    o.variant = done.variant();
    o.metrics.top1 = done.top1();
    o.metrics.top5 = done.top5();
    o.metrics.mean_per_class = done.mean_per_class();
    o.metrics.per_class.assign(done.per_class().begin(), done.per_class().end());
    o.selected_json = done.config_json();
    outcomes.push_back(std::move(o));
  }
  const std::string variant = params.batch_norm() ? "finetune bn" : "finetune";
  for (size_t s = 0; s < seeds.size(); ++s) {
    compute::ImageSet subset;
    const compute::ImageSet* fit = &train;
    if (few_shot) {
      subset = SelectImages(train, compute::SelectFewShot(
                                       train.labels, num_classes, spec.subset().shots(),
                                       spec.subset().fraction(), static_cast<uint64_t>(seeds[s])));
      fit = &subset;
    }
    rows_used.push_back(fit->count);
    if (s < outcomes.size()) continue;  // finished by an earlier attempt
    options.seed = static_cast<uint64_t>(seeds[s]);
    const std::string resume =
        static_cast<int>(s) == saved.seed_index() ? saved.state() : std::string();
    auto sink = [&](int64_t step, const std::string& bytes) -> absl::Status {
      v1::FineTuneCheckpoint checkpoint =
          SeedCheckpoint(static_cast<int32_t>(s), outcomes);
      checkpoint.set_step(step);
      checkpoint.set_state(bytes);
      return PutCheckpoint(ctx, step, checkpoint.SerializeAsString());
    };
    auto progress = [&](int64_t done, int64_t total) {
      ctx.work_total = total * static_cast<int64_t>(seeds.size());
      ctx.work_done = total * static_cast<int64_t>(s) + done;
      return !ctx.ShouldStop() && !stop_.HasBeenNotified();
    };
    ASSIGN_OR_RETURN(compute::FineTuneResult r,
                     compute::RunFineTune(ToModelOptions(spec.model()), *fit, test, num_classes,
                                          options, resume, sink, progress));
    SeedOutcome o;
    o.variant = variant;
    o.metrics = std::move(r.test);
    o.selected_json = absl::StrFormat(
        R"({"steps":%d,"resumed_from_step":%d,"final_train_loss":%.6g})", r.steps,
        r.resumed_from_step, r.final_train_loss);
    outcomes.push_back(std::move(o));
    // Record the finished seed, so a later preemption does not redo it.
    if (s + 1 < seeds.size()) {
      RETURN_IF_ERROR(PutCheckpoint(
          ctx, 0, SeedCheckpoint(static_cast<int32_t>(s + 1), outcomes).SerializeAsString()));
    }
  }
  results->push_back(AggregateSeeds(spec, variant, seeds, outcomes, rows_used, train.count,
                                    test.count, 0, num_classes));
  return absl::OkStatus();
}

absl::Status WorkerDaemon::PutCheckpoint(TaskContext& ctx, int64_t step, std::string data) {
  v1::PutCheckpointRequest request;
  request.set_task_id(ctx.task_id);
  request.set_lease_token(ctx.token);
  request.set_step(step);
  request.set_data(std::move(data));
  v1::PutCheckpointResponse response;
  return Call(&ctx, "PutCheckpoint", [&](grpc::ClientContext* c) {
    return stub_->PutCheckpoint(c, request, &response);
  });
}

}  // namespace sslbench::worker
