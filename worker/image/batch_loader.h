#pragma once
// Decode threads that fill batches of preprocessed images while the caller
// runs the model on the previous ones. Bounded: at most `max_ready` batches
// are decoded ahead of the consumer. No LibTorch.

#include <cstdint>
#include <map>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/image/image.h"

namespace sslbench::image {

// Records [first, first + count) of the listing form one batch.
struct BatchJob {
  int64_t first = 0;
  int64_t count = 0;
};

struct Batch {
  int64_t job = 0;   // index into the jobs
  int64_t first = 0;  // first record
  int64_t n = 0;
  int channels = 0;
  int height = 0;
  int width = 0;
  std::vector<float> data;      // [n, channels, height, width]
  std::vector<int32_t> labels;  // n; -1 for an image skipped as undecodable
  std::vector<std::string> skipped;  // their keys, with the reason
};

class BatchLoader {
 public:
  // `reader` and `records` must outlive the loader. Images are preprocessed
  // by `options`; an image that cannot be decoded fails its batch (kFail,
  // with the record's key) or gets label -1 and zero pixels (kSkip).
  BatchLoader(datasets::DatasetReader* reader, const std::vector<datasets::Record>* records,
              std::vector<BatchJob> jobs, PreprocessOptions options,
              datasets::BadImagePolicy policy, int threads, int max_ready);
  ~BatchLoader();  // stops the threads; batches not taken are dropped
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch in job order into `out`; false once all were taken. The
  // first error (a read error, a bad image under kFail, images of different
  // sizes without a crop) is returned for the batch it happened in.
  absl::StatusOr<bool> Next(Batch* out);

 private:
  struct Slot {
    absl::Status status;
    Batch batch;
  };
  void Work();
  absl::Status Fill(int64_t job, Batch* batch);

  datasets::DatasetReader* const reader_;
  const std::vector<datasets::Record>* const records_;
  const std::vector<BatchJob> jobs_;
  const PreprocessOptions options_;
  const datasets::BadImagePolicy policy_;
  const int max_ready_;

  absl::Mutex mu_;
  int64_t next_job_ ABSL_GUARDED_BY(mu_) = 0;   // next job a thread takes
  int64_t next_out_ ABSL_GUARDED_BY(mu_) = 0;   // next job Next() returns
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int64_t, Slot> ready_ ABSL_GUARDED_BY(mu_);
  // Output size fixed by the first image when there is no crop.
  int fixed_height_ ABSL_GUARDED_BY(mu_) = 0;
  int fixed_width_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> threads_;
};

}  // namespace sslbench::image
