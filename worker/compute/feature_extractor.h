#pragma once
// Runs a TorchScript backbone over images. The header is LibTorch-free so the
// worker daemon does not pay for torch headers; only the .cc includes them.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/compute/image_set.h"
#include "worker/image/image.h"

namespace sslbench::compute {

struct ModelOptions {
  std::string path;          // TorchScript file (torch.jit.save / Module::save)
  int input_size = 0;        // centre crop side the model expects; 0 = keep size
  int resize_size = 0;       // shorter side before the crop; 0 = input_size
  int channels = 1;          // channels the model expects (1 or 3)
  std::vector<float> mean;   // per model channel (size 1 or `channels`)
  std::vector<float> std;    // per model channel
  // Freeze the module and optimise it for inference (BatchNorm folded into
  // convolutions, oneDNN kernels): outputs equal the plain forward's up to
  // float rounding (~1e-6 relative).
  bool optimize = true;
  // Where the model runs: "cpu", "cuda", "cuda:N" or "auto" (device.h).
  std::string device = "cpu";
  // Arithmetic of the forward pass: "auto" (bf16 autocast on CUDA, fp32 on
  // the CPU), "fp32", "bf16", "fp16" (device.h's ResolvePrecision).
  std::string precision = "auto";
  // Convolution weights and input batches in channels-last layout (faster
  // convolutions on tensor cores): "auto" (on for CUDA), "on", "off".
  std::string channels_last = "auto";
};

// Thread-compatible: one extractor per thread.
class FeatureExtractor {
 public:
  // Loads the model. INVALID_ARGUMENT "failed to load model 'PATH': ..." for a
  // corrupt or non-TorchScript file; NOT_FOUND when the file does not exist;
  // INVALID_ARGUMENT when mean/std sizes do not fit `channels`.
  static absl::StatusOr<std::unique_ptr<FeatureExtractor>> Load(
      const ModelOptions& options);
  virtual ~FeatureExtractor() = default;

  // Preprocesses images [begin, end) of `images` as PreprocessOptionsFor()
  // says (grey replicated when the model wants 3 channels; resize and centre
  // crop as PIL and torchvision do; scale to [0,1]; normalise), runs forward under inference mode in
  // batches of `batch_size`, flattens each output to one row and returns the
  // rows as row-major float32 [end-begin, *dim]. INVALID_ARGUMENT if the
  // model's output is not a tensor, or its width changes between calls;
  // INTERNAL for an exception thrown by the model ("model 'PATH' failed: ...").
  virtual absl::StatusOr<std::vector<float>> Extract(const ImageSet& images,
                                                     int64_t begin,
                                                     int64_t end,
                                                     int batch_size,
                                                     int64_t* dim) = 0;

  // Runs forward on `n` preprocessed images, float32 row-major
  // [n, channels, height, width] as image::Preprocess writes them, and
  // returns the rows as Extract does. Same errors. On a CUDA device the
  // batch goes through a pinned staging buffer; when the device runs out of
  // memory the batch is split in halves (and later batches are split to the
  // size that fitted), RESOURCE_EXHAUSTED if one image does not fit.
  // Thread-compatible, and the result is complete on the host on return.
  virtual absl::StatusOr<std::vector<float>> Forward(const float* batch, int64_t n, int height,
                                                     int width, int64_t* dim) = 0;

  // Forward in two halves, so that the host prepares batch i + 1 while the
  // device runs batch i: Start queues a batch (on a CUDA device: copied to a
  // pinned buffer, sent, run, its features queued back to pinned memory,
  // nothing waited for; elsewhere it runs at once) and Collect returns the
  // rows of the oldest started batch, waiting for them. At most two batches
  // in flight (FAILED_PRECONDITION for a third, or a Collect with none);
  // errors of a batch come from its Collect, as Forward's. Results equal
  // Forward's.
  virtual absl::Status Start(const float* batch, int64_t n, int height, int width) = 0;
  virtual absl::StatusOr<std::vector<float>> Collect(int64_t* dim) = 0;

  // The canonical device ("cpu", "cuda:N") and precision ("fp32", "bf16",
  // "fp16") the model runs in, and the largest batch that fitted so far
  // (0 until a batch was split for memory).
  virtual const std::string& device() const = 0;
  virtual const std::string& precision() const = 0;
  virtual int64_t max_batch_rows() const = 0;
};

// The preprocessing a model asks for (resize, centre crop, channels,
// mean/std), as image::Preprocess takes it.
image::PreprocessOptions PreprocessOptionsFor(const ModelOptions& options);

// Sets the number of intra-op threads LibTorch uses in this process.
void SetComputeThreads(int num_threads);

}  // namespace sslbench::compute
