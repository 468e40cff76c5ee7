// JPEG and PNG decoding, whole and for a crop (the partial-decode path),
// then the resize and crop: an image or an error, never a crash.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "worker/image/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto image = sslbench::image::DecodeImage(bytes, "fuzz");
  if (!image.ok() || image->width * image->height > (1 << 22)) return 0;
  sslbench::image::PreprocessOptions crop;
  crop.resize = 40;
  crop.crop = 32;
  auto partial = sslbench::image::DecodeImage(bytes, "fuzz", &crop);
  if (!partial.ok()) return 0;
  (void)sslbench::image::ResizeAndCrop(*partial, crop);
  return 0;
}
