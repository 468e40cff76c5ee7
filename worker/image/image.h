#pragma once
// Decoding and preprocessing of images, as torchvision's evaluation
// transforms do on PIL: convert("RGB"), Resize(shorter side, bilinear with
// antialiasing), CenterCrop, ToTensor, Normalize. No LibTorch.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sslbench::image {

// uint8 pixels, row-major HWC; channels 1 (grey) or 3 (RGB).
struct Image {
  int height = 0;
  int width = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;
};

struct PreprocessOptions;

// Decodes a JPEG or PNG file's bytes to grey (1 channel, for grey sources)
// or RGB (3 channels, for everything else), with PIL's conversions: CMYK and
// YCCK JPEGs by PIL's cmyk2rgb (Adobe's inverted CMYK), palette PNGs through
// the palette, alpha dropped, 16-bit samples cut to their high byte.
// DATA_LOSS for a truncated or corrupt file, INVALID_ARGUMENT for an empty
// file or another format; messages start with `name`.
//
// With `only_for`, a JPEG is decoded only as far as Preprocess(only_for)
// reads it (NeededRegion, widened by a margin for chroma upsampling): the
// image keeps its full size, and pixels outside that region are unspecified.
absl::StatusOr<Image> DecodeImage(std::string_view bytes, const std::string& name,
                                  const PreprocessOptions* only_for = nullptr);

// DecodeImage into `out`, reusing its buffer (no allocation once it is large
// enough). On error `out` is unspecified.
absl::Status DecodeImageInto(std::string_view bytes, const std::string& name,
                             const PreprocessOptions* only_for, Image* out);

struct PreprocessOptions {
  int resize = 0;    // shorter side after resizing; 0 = no resize
  int crop = 0;      // centre crop side; 0 = no crop
  int channels = 3;  // 1 or 3 (grey is replicated; RGB -> luma as PIL's "L")
  std::vector<float> mean;  // one per output channel
  std::vector<float> std;
};

// The source pixels [top, bottom) x [left, right) that Preprocess reads for
// an input of the given size.
struct Region {
  int top, bottom, left, right;
};
Region NeededRegion(const PreprocessOptions& options, int height, int width);

// The output's height and width for an input of the given size.
void OutputSize(const PreprocessOptions& options, int height, int width, int* out_height,
                int* out_width);

// Resize, crop and normalise `in` into `out`, float CHW of
// [options.channels, out_height, out_width] (see OutputSize).
// Pixel values equal PIL's bilinear resize and torchvision's crop exactly
// (only the cropped part of the resized image is computed).
void Preprocess(const Image& in, const PreprocessOptions& options, float* out);

// The uint8 image before normalisation (for tests and fixed-size sets).
Image ResizeAndCrop(const Image& in, const PreprocessOptions& options);

}  // namespace sslbench::image
