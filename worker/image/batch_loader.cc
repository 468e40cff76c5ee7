#include "worker/image/batch_loader.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sslbench::image {

BatchLoader::BatchLoader(datasets::DatasetReader* reader,
                         const std::vector<datasets::Record>* records, std::vector<BatchJob> jobs,
                         PreprocessOptions options, datasets::BadImagePolicy policy, int threads,
                         int max_ready)
    : reader_(reader),
      records_(records),
      jobs_(std::move(jobs)),
      options_(std::move(options)),
      policy_(policy),
      max_ready_(std::max(1, max_ready)) {
  const int n = std::max(1, std::min<int>(threads, static_cast<int>(jobs_.size())));
  for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Work(); });
}

BatchLoader::~BatchLoader() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void BatchLoader::Work() {
  for (;;) {
    int64_t job;
    {
      absl::MutexLock lock(&mu_);
      // Wait for room: no more than max_ready_ batches ahead of the consumer.
      auto may_start = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || next_job_ >= static_cast<int64_t>(jobs_.size()) ||
               next_job_ < next_out_ + max_ready_;
      };
      mu_.Await(absl::Condition(&may_start));
      if (stopping_ || next_job_ >= static_cast<int64_t>(jobs_.size())) return;
      job = next_job_++;
    }
    Slot slot;
    slot.status = Fill(job, &slot.batch);
    absl::MutexLock lock(&mu_);
    ready_.emplace(job, std::move(slot));
  }
}

absl::Status BatchLoader::Fill(int64_t job, Batch* batch) {
  const BatchJob& j = jobs_[static_cast<size_t>(job)];
  batch->job = job;
  batch->first = j.first;
  batch->n = j.count;
  batch->channels = options_.channels;
  batch->labels.assign(static_cast<size_t>(j.count), 0);
  size_t floats = 0;
  for (int64_t i = 0; i < j.count; ++i) {
    const datasets::Record& record = (*records_)[static_cast<size_t>(j.first + i)];
    batch->labels[static_cast<size_t>(i)] = record.label;
    absl::StatusOr<datasets::RecordBytes> bytes = reader_->ReadRecord(record);
    if (!bytes.ok()) return bytes.status();
    thread_local Image img;
    if (bytes->raw()) {
      img.height = bytes->raw_height;
      img.width = bytes->raw_width;
      img.channels = bytes->raw_channels;
      img.pixels.assign(bytes->bytes.begin(), bytes->bytes.end());
    } else {
      const absl::Status decoded = DecodeImageInto(bytes->bytes, record.key, &options_, &img);
      if (!decoded.ok()) {
        if (policy_ != datasets::BadImagePolicy::kSkip) return decoded;
        batch->skipped.push_back(std::string(decoded.message()));
        batch->labels[static_cast<size_t>(i)] = -1;
        continue;
      }
    }
    int h = 0, w = 0;
    OutputSize(options_, img.height, img.width, &h, &w);
    if (batch->height == 0) {
      absl::MutexLock lock(&mu_);
      if (fixed_height_ == 0) {
        fixed_height_ = h;
        fixed_width_ = w;
      }
      batch->height = fixed_height_;
      batch->width = fixed_width_;
      floats = static_cast<size_t>(batch->channels) * batch->height * batch->width;
      batch->data.assign(floats * static_cast<size_t>(j.count), 0.0f);
    }
    if (h != batch->height || w != batch->width) {
      return absl::InvalidArgumentError(absl::StrCat(
          record.key, " becomes ", w, "x", h, " but other images become ", batch->width, "x",
          batch->height, "; give the model an input_size (centre crop) so every image has one size"));
    }
    Preprocess(img, options_, batch->data.data() + static_cast<size_t>(i) * floats);
  }
  if (batch->height == 0) {
    // Every image of the batch was skipped: its rows carry label -1 only.
    absl::MutexLock lock(&mu_);
    batch->height = fixed_height_;
    batch->width = fixed_width_;
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> BatchLoader::Next(Batch* out) {
  absl::MutexLock lock(&mu_);
  if (next_out_ >= static_cast<int64_t>(jobs_.size())) return false;
  auto has_next = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ready_.count(next_out_) > 0;
  };
  mu_.Await(absl::Condition(&has_next));
  auto it = ready_.find(next_out_);
  Slot slot = std::move(it->second);
  ready_.erase(it);
  ++next_out_;
  if (!slot.status.ok()) {
    // No further batches after an error.
    next_out_ = static_cast<int64_t>(jobs_.size());
    stopping_ = true;
    return slot.status;
  }
  *out = std::move(slot.batch);
  return true;
}

}  // namespace sslbench::image
