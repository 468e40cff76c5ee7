// Fine-tuning tasks: end to end on images held in memory, checkpointed
// every epoch (or N steps) and after each seed; a new attempt resumes from
// the latest checkpoint.

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dataset_digest.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/fine_tune.h"
#include "worker/compute/image_set.h"
#include "worker/probe_tasks.h"
#include "worker/runner_util.h"
#include "worker/runners.h"

namespace sslbench::worker {
namespace {

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

// Checkpoints cross in parts of at most this many bytes, so none is limited
// by the size of one message (a ResNet-50 with its optimizer state: ~300 MB).
constexpr size_t kCheckpointPartBytes = 16 << 20;

// Stores `data` as the task's checkpoint number `sequence` (which grows with
// every checkpoint of this attempt, so parts of two checkpoints never mix).
absl::Status PutCheckpoint(TaskContext& ctx, int64_t sequence, const std::string& data) {
  const int32_t parts =
      static_cast<int32_t>(std::max<size_t>(1, (data.size() + kCheckpointPartBytes - 1) /
                                                   kCheckpointPartBytes));
  for (int32_t p = 0; p < parts; ++p) {
    if (ctx.ShouldStop()) return Stopped();
    v1::PutCheckpointRequest request;
    request.set_task_id(ctx.task_id());
    request.set_lease_token(ctx.token());
    request.set_step(sequence);
    request.set_part(p);
    request.set_num_parts(parts);
    request.set_total_bytes(static_cast<int64_t>(data.size()));
    request.set_data(data.substr(p * kCheckpointPartBytes, kCheckpointPartBytes));
    RETURN_IF_ERROR(ctx.connection().PutCheckpoint(request, ctx.rpc()));
  }
  return absl::OkStatus();
}

// The task's latest checkpoint, put together from its parts. NOT_FOUND when
// there is none.
absl::StatusOr<std::string> GetCheckpoint(TaskContext& ctx) {
  v1::GetCheckpointRequest request;
  request.set_task_id(ctx.task_id());
  ASSIGN_OR_RETURN(v1::Checkpoint first, ctx.connection().GetCheckpoint(request, ctx.rpc()));
  std::string data = std::move(*first.mutable_data());
  for (int32_t p = 1; p < first.num_parts(); ++p) {
    request.set_part(p);
    ASSIGN_OR_RETURN(v1::Checkpoint part, ctx.connection().GetCheckpoint(request, ctx.rpc()));
    if (part.step() != first.step()) {
      // A newer checkpoint replaced it while we read: start again.
      return GetCheckpoint(ctx);
    }
    data += part.data();
  }
  if (first.num_parts() > 0 && static_cast<int64_t>(data.size()) != first.total_bytes()) {
    return absl::DataLossError(absl::StrCat("task ", ctx.task_id(), ": checkpoint holds ",
                                            data.size(), " bytes, not ", first.total_bytes()));
  }
  return data;
}

class FineTuneRunner final : public TaskRunner {
 public:
  FineTuneRunner(std::string device, ReadPolicy read)
      : device_(std::move(device)), read_(std::move(read)) {}

  absl::StatusOr<TaskOutcome> Run(TaskContext& ctx) override {
    const v1::TaskSpec& spec = ctx.spec();
    const v1::FineTuneParams& params = spec.protocol().finetune();
    RETURN_IF_ERROR(VerifyModel(spec.model(), read_, [&ctx] { return ctx.ShouldStop(); }));
    RETURN_IF_ERROR(VerifyDataset(spec.dataset(), read_));
    // Images are held in memory, resized and centre-cropped to the model's
    // input once; the augmentations work from there.
    compute::ModelOptions model = ToModelOptions(spec.model());
    model.device = device_;
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
      absl::StatusOr<std::string> checkpoint = GetCheckpoint(ctx);
      const absl::Status got = checkpoint.status();
      if (got.ok()) {
        if (!saved.ParseFromString(*checkpoint)) {
          return absl::DataLossError(absl::StrCat("task ", ctx.task_id(), ": checkpoint does not parse"));
        }
        LogInfo("worker", "task ", ctx.task_id(), ": resuming from a checkpoint at seed index ",
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
    options.layer_decay = params.layer_decay();
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
    int64_t sequence = 0;  // of this attempt's checkpoints
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
        return PutCheckpoint(ctx, ++sequence, checkpoint.SerializeAsString());
      };
      auto progress = [&](int64_t done, int64_t total) {
        ctx.SetProgress(total * static_cast<int64_t>(s) + done,
                        total * static_cast<int64_t>(seeds.size()));
        return !ctx.ShouldStop();
      };
      ASSIGN_OR_RETURN(compute::FineTuneResult r,
                       compute::RunFineTune(model, *fit, test, num_classes, options, resume,
                                            sink, progress));
      SeedOutcome o;
      o.variant = variant;
      o.metrics = std::move(r.test);
      o.selected_json = absl::StrFormat(
          R"({"steps":%d,"resumed_from_step":%d,"final_train_loss":%.6g,)"
          R"("layer_decay":%.6g,"layer_decay_blocks":%d})",
          r.steps, r.resumed_from_step, r.final_train_loss,
          r.layer_decay_blocks > 0 ? options.layer_decay : 0.0, r.layer_decay_blocks);
      outcomes.push_back(std::move(o));
      // Record the finished seed, so a later preemption does not redo it.
      if (s + 1 < seeds.size()) {
        RETURN_IF_ERROR(PutCheckpoint(
            ctx, ++sequence,
            SeedCheckpoint(static_cast<int32_t>(s + 1), outcomes).SerializeAsString()));
      }
    }
    TaskOutcome outcome;
    outcome.results.push_back(AggregateSeeds(spec, variant, seeds, outcomes, rows_used, train.count,
                                             test.count, 0, num_classes));
    return outcome;
  }

 private:
  const std::string device_;
  const ReadPolicy read_;
};

}  // namespace

std::shared_ptr<TaskRunner> NewFineTuneRunner(const std::string& device, const ReadPolicy& read) {
  return std::make_shared<FineTuneRunner>(device, read);
}

}  // namespace sslbench::worker
