// The extract task: features of one (model, dataset, split), computed by
// decode threads and the model, uploaded in chunks; an attempt resumes after
// the chunks an earlier one stored.

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dataset_digest.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/study_spec.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/half.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/batch_loader.h"
#include "worker/runner_util.h"
#include "worker/runners.h"

namespace sslbench::worker {
namespace {

class ExtractRunner final : public TaskRunner {
 public:
  ExtractRunner(RunnerOptions options, WorkerMetrics* metrics)
      : options_(options), metrics_(metrics) {}

  absl::StatusOr<TaskOutcome> Run(TaskContext& ctx) override {
    const v1::TaskSpec& spec = ctx.spec();
    RETURN_IF_ERROR(VerifyModel(spec.model(), options_.read, [&ctx] { return ctx.ShouldStop(); }));
    RETURN_IF_ERROR(VerifyDataset(spec.dataset(), options_.read));
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
    if (ctx.ShouldStop()) return Stopped();
    compute::ModelOptions model = ToModelOptions(spec.model());
    model.device = options_.device;
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
      ASSIGN_OR_RETURN(info, ctx.connection().GetFeatureCache(request, ctx.rpc()));
      stored_chunk_rows = info.chunk_rows();
      for (int32_t index : info.present_chunks()) {
        // The coordinator refuses such indexes; a worker never sizes by one.
        if (index < 0 || index >= kMaxFeatureChunks) continue;
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
    ctx.SetTotal(n);

    // Batches never straddle chunks, so each chunk is sent once its last
    // batch is through the model.
    const int64_t batch_size = std::max(1, spec.batch_size());
    const bool half = spec.feature_dtype() == "float16";
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
    ctx.AddDone(reused);
    image::BatchLoader loader(reader.get(), &records, std::move(jobs), preprocess,
                              config.on_bad_image, options_.decode_threads,
                              /*max_ready=*/std::max(2, 2 * options_.decode_threads));
    std::vector<float> features;
    std::vector<int32_t> labels;
    int64_t chunk_begin = -1;
    int64_t skipped = 0;
    // The features of `batch` (started on the extractor when it has images)
    // join the chunk; a full chunk is uploaded.
    auto finish = [&](const image::Batch& batch) -> absl::Status {
      if (chunk_begin < 0) chunk_begin = batch.first;
      std::vector<float> rows;
      if (batch.height > 0) {
        int64_t batch_dim = 0;
        ASSIGN_OR_RETURN(rows, extractor->Collect(&batch_dim));
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
        LogWarning("worker", "task ", ctx.task_id(), ": skipping an undecodable image: ", why);
      }
      skipped += static_cast<int64_t>(batch.skipped.size());
      features.insert(features.end(), rows.begin(), rows.end());
      labels.insert(labels.end(), batch.labels.begin(), batch.labels.end());
      if (metrics_ != nullptr) metrics_->images->Increment(static_cast<double>(batch.n));
      ctx.AddDone(batch.n);
      const int64_t chunk_end = batch.first + batch.n;
      if (chunk_end % rows_per_chunk != 0 && chunk_end != n) return absl::OkStatus();

      const int32_t c = static_cast<int32_t>(chunk_begin / rows_per_chunk);
      const int64_t chunk_rows = chunk_end - chunk_begin;
      v1::PutFeatureChunkRequest request;
      request.set_task_id(ctx.task_id());
      request.set_lease_token(ctx.token());
      v1::FeatureChunk* chunk = request.mutable_chunk();
      chunk->set_cache_key(spec.cache_key());
      chunk->set_chunk_index(c);
      chunk->set_row_start(chunk_begin);
      chunk->set_num_rows(static_cast<int32_t>(chunk_rows));
      chunk->set_dim(static_cast<int32_t>(dim));
      if (half) {
        // Stored as IEEE half: half the bytes; probes widen it again.
        std::string bytes(features.size() * 2, '\0');
        for (size_t i = 0; i < features.size(); ++i) {
          const uint16_t h = compute::FloatToHalf(features[i]);
          std::memcpy(&bytes[i * 2], &h, 2);
        }
        chunk->set_features(std::move(bytes));
        chunk->set_dtype("float16");
      } else {
        chunk->set_features(std::string(reinterpret_cast<const char*>(features.data()),
                                        features.size() * sizeof(float)));
      }
      chunk->set_labels(std::string(reinterpret_cast<const char*>(labels.data()),
                                    labels.size() * sizeof(int32_t)));
      RETURN_IF_ERROR(ctx.connection().PutFeatureChunk(request, ctx.rpc()));
      if (metrics_ != nullptr) {
        metrics_->feature_bytes_uploaded->Increment(static_cast<double>(features.size() * 4));
      }
      features.clear();
      labels.clear();
      chunk_begin = -1;
      return absl::OkStatus();
    };
    // One batch in flight: batch i + 1 is decoded and started on the device
    // before batch i's features are collected and uploaded.
    image::Batch batch, previous;
    bool in_flight = false;
    for (;;) {
      if (ctx.ShouldStop()) return Stopped();
      ASSIGN_OR_RETURN(bool got, loader.Next(&batch));
      if (!got) break;
      if (batch.height > 0) {
        RETURN_IF_ERROR(extractor->Start(batch.data.data(), batch.n, batch.height, batch.width));
      }
      if (in_flight) RETURN_IF_ERROR(finish(previous));
      std::swap(batch, previous);
      in_flight = true;
    }
    if (in_flight) RETURN_IF_ERROR(finish(previous));
    if (reused > 0) {
      LogInfo("worker", "task ", ctx.task_id(), ": resumed, ", reused, " of ", n,
              " rows were already stored");
    }
    if (skipped > 0) {
      LogWarning("worker", "task ", ctx.task_id(), ": ", skipped, " of ", n,
                 " images could not be decoded and were skipped (on_bad_image: skip)");
    }
    TaskOutcome outcome;
    outcome.feature_rows = n;
    outcome.feature_dim = static_cast<int32_t>(dim);
    outcome.feature_chunks = num_chunks;
    return outcome;
  }

 private:
  const RunnerOptions options_;
  WorkerMetrics* const metrics_;
};

}  // namespace

std::shared_ptr<TaskRunner> NewExtractRunner(const RunnerOptions& options,
                                             WorkerMetrics* metrics) {
  return std::make_shared<ExtractRunner>(options, metrics);
}

}  // namespace sslbench::worker
