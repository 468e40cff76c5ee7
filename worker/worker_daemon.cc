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
#include "worker/compute/image_set.h"
#include "worker/compute/knn.h"

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
  return kind == v1::TASK_KIND_EXTRACT ? "extract" : kind == v1::TASK_KIND_KNN ? "knn" : "other";
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
    auto context = NewContext();
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
  } else if (ctx.spec.kind() == v1::TASK_KIND_KNN) {
    status = RunKnn(ctx, &results);
  } else {
    status = absl::InvalidArgumentError(absl::StrCat("task kind ", ctx.spec.kind(),
                                                     " is not supported by this worker"));
  }
  ctx.finished.Notify();
  heartbeat.join();
  metrics_.busy->Set(0);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::string outcome;
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
    auto context = NewContext();
    const absl::Status sent =
        FromGrpcStatus(stub_->CompleteTask(context.get(), request, &response));
    outcome = sent.ok() ? "succeeded" : "report_failed";
    if (!sent.ok()) {
      LogWarning("worker", "task ", ctx.task_id, ": completion not accepted: ", sent.ToString());
    } else {
      LogInfo("worker", "task ", ctx.task_id, " done in ", absl::StrFormat("%.1f", seconds), " s");
    }
  } else if (stop_.HasBeenNotified() && absl::IsCancelled(status)) {
    outcome = "interrupted";  // the lease will expire and the task requeue
  } else {
    outcome = "failed";
    LogWarning("worker", "task ", ctx.task_id, " failed: ", status.ToString());
    v1::FailTaskRequest request;
    request.set_task_id(ctx.task_id);
    request.set_lease_token(ctx.token);
    request.set_error(status.ToString());
    request.set_retryable(Retryable(status));
    v1::FailTaskResponse response;
    auto context = NewContext();
    const absl::Status sent = FromGrpcStatus(stub_->FailTask(context.get(), request, &response));
    if (!sent.ok()) LogWarning("worker", "task ", ctx.task_id, ": failure not recorded: ", sent.ToString());
  }
  metrics_.tasks->Add({{"kind", kind}, {"outcome", outcome}}).Increment();
  metrics_.task_duration
      ->Add({{"kind", kind}},
            prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200})
      .Observe(seconds);
}

absl::Status WorkerDaemon::RunExtract(TaskContext& ctx) {
  const v1::TaskSpec& spec = ctx.spec;
  // The cache key promises these exact bytes: refuse a file changed since
  // the study was submitted rather than store features under a wrong key.
  ASSIGN_OR_RETURN(std::string sha, Sha256File(spec.model().path()));
  if (sha != spec.model().sha256()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model \"", spec.model().name(), "\": file ", spec.model().path(),
        " changed since the study was submitted (sha256 ", sha.substr(0, 12),
        " != ", spec.model().sha256().substr(0, 12), "); resubmit the study"));
  }
  const int64_t limit =
      spec.split() == "train" ? spec.dataset().train_limit() : spec.dataset().test_limit();
  ASSIGN_OR_RETURN(compute::ImageSet images,
                   compute::ReadIdxSplit(spec.dataset().root(), spec.split(), limit));
  if (ctx.ShouldStop() || stop_.HasBeenNotified()) return Stopped("stopped");
  compute::ModelOptions model_options;
  model_options.path = spec.model().path();
  model_options.input_size = spec.model().input_size();
  model_options.channels = spec.model().channels();
  model_options.mean.assign(spec.model().mean().begin(), spec.model().mean().end());
  model_options.std.assign(spec.model().std().begin(), spec.model().std().end());
  ASSIGN_OR_RETURN(auto extractor, compute::FeatureExtractor::Load(model_options));

  // Chunks already stored by an earlier attempt are kept (a preempted worker
  // loses at most one chunk of work).
  std::vector<bool> present;
  int64_t stored_chunk_rows = 0;
  {
    v1::GetFeatureCacheRequest request;
    request.set_cache_key(spec.cache_key());
    v1::FeatureCacheInfo info;
    auto context = NewContext();
    RETURN_IF_ERROR(FromGrpcStatus(stub_->GetFeatureCache(context.get(), request, &info)));
    stored_chunk_rows = info.chunk_rows();
    for (int32_t index : info.present_chunks()) {
      if (index >= static_cast<int32_t>(present.size())) present.resize(index + 1, false);
      present[index] = true;
    }
  }
  // The chunk layout depends only on the feature width: probe it on one image.
  int64_t dim = 0;
  RETURN_IF_ERROR(extractor->Extract(images, 0, 1, 1, &dim).status());
  // Keep the layout of chunks an earlier attempt stored; without chunk 0,
  // start afresh (stray later chunks are overwritten).
  const int64_t rows_per_chunk =
      stored_chunk_rows > 0 ? stored_chunk_rows
                            : std::clamp<int64_t>(options_.chunk_bytes / (dim * 4), 1, 1 << 16);
  if (stored_chunk_rows == 0) present.clear();
  const int64_t n = images.count;
  const int32_t num_chunks = static_cast<int32_t>((n + rows_per_chunk - 1) / rows_per_chunk);
  ctx.work_total = n;
  int64_t reused = 0;
  for (int32_t c = 0; c < num_chunks; ++c) {
    if (ctx.ShouldStop() || stop_.HasBeenNotified()) return Stopped("stopped");
    const int64_t begin = c * rows_per_chunk;
    const int64_t end = std::min(n, begin + rows_per_chunk);
    if (c < static_cast<int32_t>(present.size()) && present[c]) {
      reused += end - begin;
      ctx.work_done += end - begin;
      continue;
    }
    int64_t chunk_dim = 0;
    ASSIGN_OR_RETURN(std::vector<float> features,
                     extractor->Extract(images, begin, end, spec.batch_size(), &chunk_dim));
    if (chunk_dim != dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model \"", spec.model().name(), "\" returned ", chunk_dim,
          " features per image after ", dim, " at first"));
    }
    v1::PutFeatureChunkRequest request;
    request.set_task_id(ctx.task_id);
    request.set_lease_token(ctx.token);
    v1::FeatureChunk* chunk = request.mutable_chunk();
    chunk->set_cache_key(spec.cache_key());
    chunk->set_chunk_index(c);
    chunk->set_row_start(begin);
    chunk->set_num_rows(static_cast<int32_t>(end - begin));
    chunk->set_dim(static_cast<int32_t>(dim));
    chunk->set_features(std::string(reinterpret_cast<const char*>(features.data()),
                                    features.size() * sizeof(float)));
    chunk->set_labels(std::string(reinterpret_cast<const char*>(images.labels.data() + begin),
                                  (end - begin) * sizeof(int32_t)));
    v1::PutFeatureChunkResponse response;
    auto context = NewContext();
    RETURN_IF_ERROR(FromGrpcStatus(stub_->PutFeatureChunk(context.get(), request, &response)));
    metrics_.images->Increment(static_cast<double>(end - begin));
    metrics_.feature_bytes_uploaded->Increment(static_cast<double>(features.size() * 4));
    ctx.work_done += end - begin;
  }
  if (reused > 0) {
    LogInfo("worker", "task ", ctx.task_id, ": resumed, ", reused, " of ", n,
            " rows were already stored");
  }
  ctx.rows = n;
  ctx.dim = dim;
  ctx.chunks = num_chunks;
  return absl::OkStatus();
}

absl::Status WorkerDaemon::RunKnn(TaskContext& ctx, std::vector<v1::ProbeResult>* results) {
  const v1::TaskSpec& spec = ctx.spec;
  if (!spec.protocol().has_knn()) {
    return absl::InvalidArgumentError(
        absl::StrCat("protocol \"", spec.protocol().name(), "\" carries no kNN parameters"));
  }
  const v1::KnnParams& params = spec.protocol().knn();

  // Downloads one complete feature cache into memory.
  auto fetch = [&](const std::string& key, compute::FeatureMatrix* out) -> absl::Status {
    v1::GetFeatureCacheRequest request;
    request.set_cache_key(key);
    v1::FeatureCacheInfo info;
    auto context = NewContext();
    RETURN_IF_ERROR(FromGrpcStatus(stub_->GetFeatureCache(context.get(), request, &info)));
    if (!info.complete()) {
      return absl::UnavailableError(absl::StrCat("feature cache ", key, " is not complete yet"));
    }
    out->rows = info.num_rows();
    out->dim = info.dim();
    out->data.assign(static_cast<size_t>(info.num_rows() * info.dim()), 0.0f);
    out->labels.assign(static_cast<size_t>(info.num_rows()), 0);
    ctx.work_total += info.num_chunks();
    int64_t filled = 0;
    for (int32_t c = 0; c < info.num_chunks(); ++c) {
      if (ctx.ShouldStop() || stop_.HasBeenNotified()) return Stopped("stopped");
      v1::GetFeatureChunkRequest chunk_request;
      chunk_request.set_cache_key(key);
      chunk_request.set_chunk_index(c);
      v1::FeatureChunk chunk;
      auto chunk_context = NewContext();
      RETURN_IF_ERROR(
          FromGrpcStatus(stub_->GetFeatureChunk(chunk_context.get(), chunk_request, &chunk)));
      const int64_t start = chunk.row_start();
      if (chunk.dim() != info.dim() || start < 0 || start + chunk.num_rows() > info.num_rows() ||
          chunk.features().size() != static_cast<size_t>(chunk.num_rows()) * chunk.dim() * 4 ||
          chunk.labels().size() != static_cast<size_t>(chunk.num_rows()) * 4) {
        return absl::DataLossError(
            absl::StrCat("feature cache ", key, ": chunk ", c, " is malformed"));
      }
      std::memcpy(out->data.data() + start * info.dim(), chunk.features().data(),
                  chunk.features().size());
      std::memcpy(out->labels.data() + start, chunk.labels().data(), chunk.labels().size());
      filled += chunk.num_rows();
      ctx.work_done += 1;
    }
    if (filled != info.num_rows()) {
      return absl::DataLossError(absl::StrCat("feature cache ", key, ": chunks hold ", filled,
                                              " rows, expected ", info.num_rows()));
    }
    return absl::OkStatus();
  };

  compute::FeatureMatrix train, test;
  RETURN_IF_ERROR(fetch(spec.train_cache_key(), &train));
  RETURN_IF_ERROR(fetch(spec.test_cache_key(), &test));
  int num_classes = 0;
  for (int32_t label : train.labels) num_classes = std::max(num_classes, label + 1);
  for (int32_t label : test.labels) num_classes = std::max(num_classes, label + 1);

  compute::KnnOptions options;
  options.ks.assign(params.ks().begin(), params.ks().end());
  options.temperature = params.temperature();
  options.euclidean_k = params.euclidean_k() > 0 ? params.euclidean_k() : 0;
  options.test_chunk_rows = params.test_chunk_rows();
  options.train_chunk_rows = params.train_chunk_rows();
  // A k larger than the train set is clamped, and said so in the config.
  for (int& k : options.ks) k = static_cast<int>(std::min<int64_t>(k, train.rows));
  options.euclidean_k = static_cast<int>(std::min<int64_t>(options.euclidean_k, train.rows));
  ctx.work_total += 1;
  ASSIGN_OR_RETURN(auto knn, compute::RunKnn(train, test, num_classes, options));
  ctx.work_done += 1;

  for (const auto& r : knn) {
    v1::ProbeResult result;
    result.set_model(spec.model().name());
    result.set_dataset(spec.dataset().name());
    result.set_protocol(spec.protocol().name());
    const bool cosine = r.variant == "cosine";
    result.set_variant(cosine ? absl::StrFormat("cosine k=%d T=%g", r.k, r.temperature)
                              : absl::StrFormat("euclidean k=%d", r.k));
    result.set_top1(r.metrics.top1);
    result.set_top5(r.metrics.top5);
    result.set_mean_per_class(r.metrics.mean_per_class);
    for (double a : r.metrics.per_class) result.add_per_class(a);
    result.set_config_json(absl::StrFormat(
        R"({"protocol":"knn","metric":"%s","k":%d,"temperature":%s,"vote":"%s",)"
        R"("l2_normalize":%s,"train_rows":%d,"test_rows":%d,"dim":%d,"num_classes":%d,)"
        R"("model":"%s","model_sha256":"%s","dataset":"%s","dataset_digest":"%s",)"
        R"("train_limit":%d,"test_limit":%d,"train_cache":"%s","test_cache":"%s",)"
        R"("extractor_version":"1","sslbench_version":"0.1.0"})",
        cosine ? "cosine" : "euclidean", r.k, cosine ? absl::StrFormat("%g", r.temperature) : "null",
        cosine ? "exp(sim/T)" : "1/distance", cosine ? "true" : "false", train.rows, test.rows,
        train.dim, num_classes, spec.model().name(), spec.model().sha256(),
        spec.dataset().name(), spec.dataset().digest(), spec.dataset().train_limit(),
        spec.dataset().test_limit(), spec.train_cache_key(), spec.test_cache_key()));
    results->push_back(std::move(result));
  }
  return absl::OkStatus();
}

}  // namespace sslbench::worker
