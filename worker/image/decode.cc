// JPEG through libjpeg(-turbo), PNG through libpng; both report errors by
// longjmp, so each decoder keeps its C++ objects outside the jump's scope.

// jpeglib.h needs FILE and size_t declared first.
#include <algorithm>
#include <csetjmp>
#include <cstddef>
#include <cstdio>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/image/image.h"

namespace sslbench::image {
namespace {

// Pillow's limit: it refuses images of more than twice its
// MAX_IMAGE_PIXELS (89,478,485) as decompression bombs. A few hundred bytes
// of JPEG or PNG can claim 65,500 x 65,500 pixels (12.9 GB of RGB).
constexpr uint64_t kMaxImagePixels = 178956970;

absl::Status CheckPixels(const std::string& name, uint64_t width, uint64_t height) {
  if (width * height <= kMaxImagePixels) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      name, ": ", width, " x ", height, " pixels is more than the ", kMaxImagePixels,
      " an image may have (a decompression bomb, or not a photograph)"));
}

// ---- JPEG ------------------------------------------------------------------

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings are ignored as PIL ignores them, except running out of data:
// PIL refuses a truncated file ("image file is truncated"), and libjpeg would
// otherwise pad it with grey.
void JpegEmitMessage(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    err->truncated = true;
    (*cinfo->err->format_message)(cinfo, err->message);
    std::longjmp(err->jump, 1);
  }
}

// PIL's cmyk2rgb on Adobe-inverted CMYK ("CMYK;I": PIL assumes Adobe's
// convention for every 4-channel JPEG).
inline uint8_t CmykChannel(int inverted_c, int inverted_k) {
  const int c = 255 - inverted_c;
  const int nk = inverted_k;  // 255 - k
  int tmp = c * nk + 128;
  const int muldiv = ((tmp >> 8) + tmp) >> 8;
  const int v = nk - muldiv;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Extra decoded pixels around the needed region: chroma upsampling reads
// neighbouring samples, so the region's own pixels come out exactly as in a
// full decode.
constexpr int kRegionMargin = 16;

absl::Status DecodeJpeg(std::string_view bytes, const std::string& name, Image* out,
                        std::vector<uint8_t>* row_buffer,
                        const PreprocessOptions* only_for) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  err.truncated = false;
  err.message[0] = 0;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = &JpegErrorExit;
  err.mgr.emit_message = &JpegEmitMessage;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    if (err.truncated) {
      return absl::DataLossError(absl::StrCat(name, ": JPEG file is truncated"));
    }
    return absl::DataLossError(absl::StrCat(name, ": corrupt JPEG: ", err.message));
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (absl::Status size = CheckPixels(name, cinfo.image_width, cinfo.image_height); !size.ok()) {
    jpeg_destroy_decompress(&cinfo);
    return size;
  }
  bool cmyk = false;
  switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
      cinfo.out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      cinfo.out_color_space = JCS_CMYK;
      cmyk = true;
      break;
    default:
      cinfo.out_color_space = JCS_RGB;
      break;
  }
  jpeg_start_decompress(&cinfo);
  out->height = static_cast<int>(cinfo.output_height);
  out->width = static_cast<int>(cinfo.output_width);
  out->channels = cinfo.out_color_space == JCS_GRAYSCALE ? 1 : 3;
  out->pixels.resize(static_cast<size_t>(out->height) * out->width * out->channels);
  // Rows [row_begin, row_end) and columns [col_begin, col_begin + cols) are
  // decoded; the rest is skipped (rows) or never converted (columns).
  JDIMENSION row_begin = 0, row_end = cinfo.output_height;
  JDIMENSION col_begin = 0, cols = cinfo.output_width;
  if (only_for != nullptr) {
    const Region r = NeededRegion(*only_for, out->height, out->width);
    row_begin = static_cast<JDIMENSION>(std::max(0, r.top - kRegionMargin));
    row_end = static_cast<JDIMENSION>(std::min(out->height, r.bottom + kRegionMargin));
    const int left = std::max(0, r.left - kRegionMargin);
    const int right = std::min(out->width, r.right + kRegionMargin);
    if (right - left < out->width) {
      col_begin = static_cast<JDIMENSION>(left);
      cols = static_cast<JDIMENSION>(right - left);
      jpeg_crop_scanline(&cinfo, &col_begin, &cols);  // widened to iMCU boundaries
    }
  }
  const bool cropped = cols != static_cast<JDIMENSION>(out->width);
  const size_t in_channels = cmyk ? 4 : static_cast<size_t>(out->channels);
  if (cmyk || cropped) row_buffer->resize(static_cast<size_t>(cols) * in_channels);
  if (row_begin > 0) jpeg_skip_scanlines(&cinfo, row_begin);
  while (cinfo.output_scanline < row_end) {
    const size_t y = cinfo.output_scanline;
    uint8_t* row = out->pixels.data() + (y * out->width + col_begin) * out->channels;
    JSAMPROW target = cmyk || cropped ? row_buffer->data() : row;
    if (jpeg_read_scanlines(&cinfo, &target, 1) != 1) break;
    if (cmyk) {
      const uint8_t* in = row_buffer->data();
      for (JDIMENSION x = 0; x < cols; ++x, in += 4, row += 3) {
        row[0] = CmykChannel(in[0], in[3]);
        row[1] = CmykChannel(in[1], in[3]);
        row[2] = CmykChannel(in[2], in[3]);
      }
    } else if (cropped) {
      std::memcpy(row, row_buffer->data(), static_cast<size_t>(cols) * in_channels);
    }
  }
  if (row_end < cinfo.output_height) {
    // The rest of the file is not needed.
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return absl::OkStatus();
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return absl::OkStatus();
}

// ---- PNG -------------------------------------------------------------------

struct PngSource {
  const uint8_t* data;
  size_t size;
  size_t offset;
  char message[256];
};

void PngRead(png_structp png, png_bytep out, png_size_t length) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (src->size - src->offset < length) {
    png_error(png, "file is truncated");
  }
  std::memcpy(out, src->data + src->offset, length);
  src->offset += length;
}

void PngError(png_structp png, png_const_charp message) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof(src->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}

absl::Status DecodePng(std::string_view bytes, const std::string& name, Image* out,
                       std::vector<png_bytep>* rows) {
  PngSource src{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, {0}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, &PngError, &PngWarning);
  if (png == nullptr) return absl::ResourceExhaustedError("libpng: out of memory");
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return absl::ResourceExhaustedError("libpng: out of memory");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::DataLossError(absl::StrCat(name, ": corrupt PNG: ", src.message));
  }
  png_set_read_fn(png, &src, &PngRead);
  png_read_info(png, info);
  if (absl::Status size =
          CheckPixels(name, png_get_image_width(png, info), png_get_image_height(png, info));
      !size.ok()) {
    png_destroy_read_struct(&png, &info, nullptr);
    return size;
  }
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  out->width = static_cast<int>(png_get_image_width(png, info));
  out->height = static_cast<int>(png_get_image_height(png, info));
  out->channels = static_cast<int>(png_get_channels(png, info));
  if (out->channels != 1 && out->channels != 3) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": PNG with ", out->channels, " channels after conversion"));
  }
  out->pixels.resize(static_cast<size_t>(out->height) * out->width * out->channels);
  rows->resize(static_cast<size_t>(out->height));
  for (int y = 0; y < out->height; ++y) {
    (*rows)[y] = out->pixels.data() + static_cast<size_t>(y) * out->width * out->channels;
  }
  png_read_image(png, rows->data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeImageInto(std::string_view bytes, const std::string& name,
                             const PreprocessOptions* only_for, Image* out) {
  if (bytes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": empty file (0 bytes)"));
  }
  absl::Status status;
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  if (bytes.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) {
    thread_local std::vector<uint8_t> row_buffer;
    status = DecodeJpeg(bytes, name, out, &row_buffer, only_for);
  } else if (bytes.size() >= 8 && png_sig_cmp(b, 0, 8) == 0) {
    thread_local std::vector<png_bytep> rows;
    status = DecodePng(bytes, name, out, &rows);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": not a JPEG or PNG file (sslbench decodes JPEG and PNG)"));
  }
  if (!status.ok()) return status;
  if (out->height <= 0 || out->width <= 0) {
    return absl::DataLossError(absl::StrCat(name, ": image has no pixels"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Image> DecodeImage(std::string_view bytes, const std::string& name,
                                  const PreprocessOptions* only_for) {
  Image out;
  absl::Status status = DecodeImageInto(bytes, name, only_for, &out);
  if (!status.ok()) return status;
  return out;
}

}  // namespace sslbench::image
