// Probe tasks (kNN, linear probe, logistic regression): download the cached
// train and test features, run the protocol, report its results.

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "worker/compute/half.h"
#include "worker/feature_cache.h"
#include "worker/probe_tasks.h"
#include "worker/runner_util.h"
#include "worker/runners.h"

namespace sslbench::worker {
namespace {

// Downloads a complete feature cache (described by `info`), every row.
absl::Status Download(TaskContext& ctx, const v1::FeatureCacheInfo& info,
                      compute::FeatureMatrix* out) {
  const std::string& key = info.cache_key();
  if (!info.complete()) {
    return absl::UnavailableError(absl::StrCat("feature cache ", key, " is not complete yet"));
  }
  out->rows = info.num_rows();
  out->dim = info.dim();
  out->data.assign(static_cast<size_t>(info.num_rows() * info.dim()), 0.0f);
  out->labels.assign(static_cast<size_t>(info.num_rows()), 0);
  int64_t filled = 0;
  for (int32_t c = 0; c < info.num_chunks(); ++c) {
    if (ctx.ShouldStop()) return Stopped();
    v1::GetFeatureChunkRequest chunk_request;
    chunk_request.set_cache_key(key);
    chunk_request.set_chunk_index(c);
    ASSIGN_OR_RETURN(v1::FeatureChunk chunk,
                     ctx.connection().GetFeatureChunk(chunk_request, ctx.rpc()));
    const int64_t start = chunk.row_start();
    const bool half = chunk.dtype() == "float16";
    const size_t values = static_cast<size_t>(chunk.num_rows()) * chunk.dim();
    if (chunk.dim() != info.dim() || start < 0 || start + chunk.num_rows() > info.num_rows() ||
        chunk.features().size() != values * (half ? 2 : 4) ||
        chunk.labels().size() != static_cast<size_t>(chunk.num_rows()) * 4) {
      return absl::DataLossError(absl::StrCat("feature cache ", key, ": chunk ", c, " is malformed"));
    }
    float* dst = out->data.data() + start * info.dim();
    if (half) {
      const char* src = chunk.features().data();
      for (size_t i = 0; i < values; ++i) {
        uint16_t h;
        std::memcpy(&h, src + i * 2, 2);
        dst[i] = compute::HalfToFloat(h);
      }
    } else {
      std::memcpy(dst, chunk.features().data(), chunk.features().size());
    }
    std::memcpy(out->labels.data() + start, chunk.labels().data(), chunk.labels().size());
    filled += chunk.num_rows();
  }
  if (filled != info.num_rows()) {
    return absl::DataLossError(absl::StrCat("feature cache ", key, ": chunks hold ", filled,
                                            " rows, expected ", info.num_rows()));
  }
  return absl::OkStatus();
}

// Leaves out the rows of images skipped as undecodable (label -1); returns
// how many there were.
int64_t DropSkipped(compute::FeatureMatrix* out) {
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
  const int64_t skipped = out->rows - kept;
  out->rows = kept;
  out->data.resize(static_cast<size_t>(kept * out->dim));
  out->labels.resize(static_cast<size_t>(kept));
  return skipped;
}

// A complete feature set, from the worker's disk cache when it holds it
// (else downloaded, then kept there), without the rows of skipped images.
absl::Status FetchFeatures(TaskContext& ctx, LocalFeatureCache* cache, const std::string& key,
                           compute::FeatureMatrix* out, int64_t* skipped) {
  v1::GetFeatureCacheRequest request;
  request.set_cache_key(key);
  v1::FeatureCacheInfo info;
  ASSIGN_OR_RETURN(info, ctx.connection().GetFeatureCache(request, ctx.rpc()));
  // A cache dropped and extracted again has a new generation: a local copy
  // of the old one is never used.
  const std::string local_key = LocalCacheKey(key, info.generation());
  absl::StatusOr<compute::FeatureMatrix> cached =
      cache != nullptr ? cache->Get(local_key) : absl::NotFoundError("no cache");
  if (cached.ok()) {
    *out = *std::move(cached);
    LogInfo("worker", "task ", ctx.task_id(), ": features ", key.substr(0, 12),
            " from the local cache");
  } else {
    RETURN_IF_ERROR(Download(ctx, info, out));
    if (cache != nullptr) {
      if (absl::Status s = cache->Put(local_key, *out); !s.ok()) {
        LogWarning("worker", "feature cache: ", s.message());
      }
    }
  }
  *skipped = DropSkipped(out);
  return absl::OkStatus();
}

class ProbeRunner final : public TaskRunner {
 public:
  ProbeRunner(LocalFeatureCache* cache, std::string device)
      : cache_(cache), device_(std::move(device)) {}

  absl::StatusOr<TaskOutcome> Run(TaskContext& ctx) override {
    compute::FeatureMatrix train, test;
    SkippedImages skipped;
    RETURN_IF_ERROR(FetchFeatures(ctx, cache_, ctx.spec().train_cache_key(), &train, &skipped.train));
    RETURN_IF_ERROR(FetchFeatures(ctx, cache_, ctx.spec().test_cache_key(), &test, &skipped.test));
    // Progress is reported in the protocol's own units; returning false stops it.
    auto progress = [&](int64_t done, int64_t total) {
      ctx.SetProgress(done, total);
      return !ctx.ShouldStop();
    };
    TaskOutcome outcome;
    ASSIGN_OR_RETURN(outcome.results, RunProbeTask(ctx.spec(), train, test, progress, skipped, device_));
    return outcome;
  }

 private:
  LocalFeatureCache* const cache_;
  const std::string device_;
};

}  // namespace

std::shared_ptr<TaskRunner> NewProbeRunner(LocalFeatureCache* cache,
                                           const std::string& device) {
  return std::make_shared<ProbeRunner>(cache, device);
}

}  // namespace sslbench::worker
