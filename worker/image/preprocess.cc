// Pillow's bilinear resampling (libImaging/Resample.c), computed only for the
// pixels that torchvision's CenterCrop keeps. Pillow resizes in two separable
// passes, horizontal then vertical, with 22-bit fixed-point coefficients and
// the intermediate rounded to uint8; every output pixel depends only on its
// own coefficients, so computing a window of the output gives the same values
// as computing all of it and cropping.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "worker/image/image.h"

namespace sslbench::image {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

// Output positions [begin, end) of a resize from in_size to out_size:
// bounds[i] = (first input index, tap count), coefficients ksize per output.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> k;  // (end - begin) * ksize
};

Coefficients Precompute(int in_size, int out_size, int begin, int end) {
  Coefficients c;
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // bilinear: support 1
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  const int n = end - begin;
  c.first.resize(n);
  c.count.resize(n);
  c.k.assign(static_cast<size_t>(n) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int i = 0; i < n; ++i) {
    const int xx = begin + i;
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double t = (x + xmin - center + 0.5) * ss;
      if (t < 0.0) t = -t;
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    int32_t* k = &c.k[static_cast<size_t>(i) * c.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      k[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                   : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[i] = xmin;
    c.count[i] = xmax;
  }
  return c;
}

inline uint8_t Clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// One row of the horizontal pass on RGB, the same integer arithmetic as
// Pillow's per-channel sums. With SSE4.1 each tap adds k * (R, G, B, next) in
// four int32 lanes at once (the fourth lane is ignored); `available` is the
// number of bytes readable from `in`, and a tap whose 4-byte load would pass
// it is summed channel by channel.
void HorizontalRgbScalar(const uint8_t* in, const Coefficients& c, int out_w, uint8_t* o) {
  for (int i = 0; i < out_w; ++i) {
    const int32_t* k = &c.k[static_cast<size_t>(i) * c.ksize];
    const uint8_t* p = in + static_cast<size_t>(c.first[i]) * 3;
    int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
    for (int x = 0; x < c.count[i]; ++x, p += 3) {
      s0 += p[0] * k[x];
      s1 += p[1] * k[x];
      s2 += p[2] * k[x];
    }
    o[i * 3 + 0] = Clip8(s0);
    o[i * 3 + 1] = Clip8(s1);
    o[i * 3 + 2] = Clip8(s2);
  }
}

#if defined(__x86_64__)
// Output pixels [offset, offset + out_w) into o[0 ..].
__attribute__((target("sse4.1"))) void HorizontalRgbSse41(const uint8_t* in, size_t available,
                                                          const Coefficients& c, int out_w,
                                                          uint8_t* o, int offset) {
  const __m128i half = _mm_set1_epi32(1 << (kPrecisionBits - 1));
  o -= static_cast<ptrdiff_t>(offset) * 3;
  for (int i = offset; i < offset + out_w; ++i) {
    const int32_t* k = &c.k[static_cast<size_t>(i) * c.ksize];
    const int n = c.count[i];
    const size_t first = static_cast<size_t>(c.first[i]);
    const uint8_t* p = in + first * 3;
    __m128i acc = half;
    const int safe = (first + n) * 3 < available ? n : n - 1;
    int x = 0;
    for (; x < safe; ++x, p += 3) {
      int32_t word;
      std::memcpy(&word, p, 4);
      const __m128i v = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(word));
      acc = _mm_add_epi32(acc, _mm_mullo_epi32(v, _mm_set1_epi32(k[x])));
    }
    for (; x < n; ++x, p += 3) {
      const __m128i v = _mm_setr_epi32(p[0], p[1], p[2], 0);
      acc = _mm_add_epi32(acc, _mm_mullo_epi32(v, _mm_set1_epi32(k[x])));
    }
    alignas(16) int32_t lanes[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(lanes), acc);
    o[i * 3 + 0] = Clip8(lanes[0]);
    o[i * 3 + 1] = Clip8(lanes[1]);
    o[i * 3 + 2] = Clip8(lanes[2]);
  }
}

// Two taps per step: one load widens 8 bytes (the pixels of taps t and t+1,
// R G B R G B, and 2 more) to 8 int32 lanes, multiplied by
// (k_t, k_t, k_t, k_t+1, k_t+1, k_t+1, 0, 0); lanes 0-2 and 3-5 are summed at
// the end. Exact: the same products and sums as Pillow's, in another order
// (integer addition). `pairs` holds those coefficient vectors, 8 per pair of
// taps, (ksize + 1) / 2 pairs per output pixel.
__attribute__((target("avx2"))) void HorizontalRgbAvx2(const uint8_t* in, size_t available,
                                                       const Coefficients& c,
                                                       const std::vector<int32_t>& pairs,
                                                       int out_w, uint8_t* o) {
  const int per_output = (c.ksize + 1) / 2;
  const __m256i halves = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  const __m256i low_to_high = _mm256_setr_epi32(3, 4, 5, 7, 7, 7, 7, 7);
  const __m256i first_to_mid = _mm256_setr_epi32(7, 7, 7, 0, 1, 2, 7, 7);
  const __m256i second_to_mid = _mm256_setr_epi32(7, 7, 7, 3, 4, 5, 7, 7);
  int i = 0;
  // Two output pixels at a time: two independent chains of multiply-adds.
  // Steps past a pixel's own taps multiply by the zero padding of its table.
  for (; i + 1 < out_w; i += 2) {
    const int steps = (std::max(c.count[i], c.count[i + 1]) + 1) / 2;
    const size_t f0 = static_cast<size_t>(c.first[i]), f1 = static_cast<size_t>(c.first[i + 1]);
    if (steps > per_output || (std::max(f0, f1) + 2 * (steps - 1)) * 3 + 8 > available) break;
    const uint8_t* p0 = in + f0 * 3;
    const uint8_t* p1 = in + f1 * 3;
    const int32_t* k0 = &pairs[static_cast<size_t>(i) * per_output * 8];
    const int32_t* k1 = k0 + per_output * 8;
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    for (int s = 0; s < steps; ++s, p0 += 6, p1 += 6, k0 += 8, k1 += 8) {
      const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p0)));
      const __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p1)));
      a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(v0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k0))));
      a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(v1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k1))));
    }
    // Lanes 0-2 hold taps t of (R, G, B), lanes 3-5 taps t+1: add them,
    // pixel i's sums into lanes 0-2 and pixel i+1's into lanes 3-5, then
    // Clip8 as Pillow does (shift, saturate to 0..255) for all six at once.
    const __m256i s0 = _mm256_add_epi32(a0, _mm256_permutevar8x32_epi32(a0, low_to_high));
    const __m256i s1 = _mm256_add_epi32(_mm256_permutevar8x32_epi32(a1, first_to_mid),
                                        _mm256_permutevar8x32_epi32(a1, second_to_mid));
    __m256i sums = _mm256_blend_epi32(s0, s1, 0x38);
    sums = _mm256_srai_epi32(_mm256_add_epi32(sums, halves), kPrecisionBits);
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(sums),
                                          _mm256_extracti128_si256(sums, 1));
    const uint64_t bytes = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_packus_epi16(words, words)));
    std::memcpy(o + i * 3, &bytes, 6);
  }
  // The rest (the row's last pixels, where 8-byte loads could pass the end).
  if (i < out_w) HorizontalRgbSse41(in, available, c, out_w - i, o + i * 3, i);
}
#endif

// The coefficient vectors HorizontalRgbAvx2 multiplies by: for each output
// pixel and pair of taps (t, t+1), (k_t x3, k_t+1 x3, 0, 0).
std::vector<int32_t> PairCoefficients(const Coefficients& c, int out_w) {
  const int per_output = (c.ksize + 1) / 2;
  std::vector<int32_t> pairs(static_cast<size_t>(out_w) * per_output * 8, 0);
  for (int i = 0; i < out_w; ++i) {
    const int32_t* k = &c.k[static_cast<size_t>(i) * c.ksize];
    int32_t* v = &pairs[static_cast<size_t>(i) * per_output * 8];
    for (int t = 0; t < c.count[i]; ++t) {
      int32_t* lane = v + (t / 2) * 8 + (t % 2) * 3;
      lane[0] = lane[1] = lane[2] = k[t];
    }
  }
  return pairs;
}

bool HasAvx2() {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
#else
  return false;
#endif
}

void HorizontalRgb(const uint8_t* in, size_t available, const Coefficients& c,
                   const std::vector<int32_t>& pairs, int out_w, uint8_t* o) {
#if defined(__x86_64__)
  static const bool sse41 = __builtin_cpu_supports("sse4.1");
  if (!pairs.empty()) return HorizontalRgbAvx2(in, available, c, pairs, out_w, o);
  if (sse41) return HorizontalRgbSse41(in, available, c, out_w, o, 0);
#endif
  (void)available;
  HorizontalRgbScalar(in, c, out_w, o);
}

// One output row of the vertical pass: o[b] = Clip8(half + sum_t
// base[t * row_bytes + b] * k[t]) for b in [0, row_bytes).
void VerticalRowScalar(const uint8_t* base, int row_bytes, const int32_t* k, int n, uint8_t* o,
                       int from) {
  for (int b = from; b < row_bytes; ++b) {
    int32_t a = int32_t{1} << (kPrecisionBits - 1);
    for (int t = 0; t < n; ++t) a += base[static_cast<size_t>(t) * row_bytes + b] * k[t];
    o[b] = Clip8(a);
  }
}

#if defined(__x86_64__)
// 32 bytes of the row at a time, all taps summed in registers, then shifted
// and saturated to 0..255 by the packs (Clip8's arithmetic exactly).
__attribute__((target("avx2"))) void VerticalRowAvx2(const uint8_t* base, int row_bytes,
                                                     const int32_t* k, int n, uint8_t* o) {
  const __m256i halves = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  int b = 0;
  for (; b + 32 <= row_bytes; b += 32) {
    __m256i a0 = halves, a1 = halves, a2 = halves, a3 = halves;
    const uint8_t* p = base + b;
    for (int t = 0; t < n; ++t, p += row_bytes) {
      const __m256i kt = _mm256_set1_epi32(k[t]);
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
      a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(lo), kt));
      a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)), kt));
      a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(hi), kt));
      a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)), kt));
    }
    // packs works within 128-bit halves: the permute puts bytes back in order.
    const __m256i w01 = _mm256_packs_epi32(_mm256_srai_epi32(a0, kPrecisionBits),
                                           _mm256_srai_epi32(a1, kPrecisionBits));
    const __m256i w23 = _mm256_packs_epi32(_mm256_srai_epi32(a2, kPrecisionBits),
                                           _mm256_srai_epi32(a3, kPrecisionBits));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w01, w23),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + b), bytes);
  }
  VerticalRowScalar(base, row_bytes, k, n, o, b);
}
#endif

void VerticalRow(const uint8_t* base, int row_bytes, const int32_t* k, int n, uint8_t* o) {
#if defined(__x86_64__)
  if (HasAvx2()) return VerticalRowAvx2(base, row_bytes, k, n, o);
#endif
  VerticalRowScalar(base, row_bytes, k, n, o, 0);
}

// Python's round() for x.5 rounds to even.
int RoundHalfEven(double x) { return static_cast<int>(std::nearbyint(x)); }

struct Geometry {
  int resized_h, resized_w;  // after Resize
  int out_h, out_w;          // after CenterCrop
  int top, left;             // crop origin in the resized image (may be < 0: padding)
};

Geometry Plan(const PreprocessOptions& o, int h, int w) {
  Geometry g;
  g.resized_h = h;
  g.resized_w = w;
  if (o.resize > 0) {
    // torchvision's _compute_resized_output_size for an int size.
    const int short_side = std::min(h, w), long_side = std::max(h, w);
    const int new_long = static_cast<int>(static_cast<double>(int64_t{o.resize} * long_side) /
                                          short_side);
    if (w <= h) {
      g.resized_w = o.resize;
      g.resized_h = new_long;
    } else {
      g.resized_h = o.resize;
      g.resized_w = new_long;
    }
  }
  g.out_h = o.crop > 0 ? o.crop : g.resized_h;
  g.out_w = o.crop > 0 ? o.crop : g.resized_w;
  // torchvision's center_crop: pad symmetrically when the crop is larger,
  // then take the rounded centre.
  auto origin = [](int size, int crop) {
    if (crop > size) return -((crop - size) / 2);
    return RoundHalfEven((size - crop) / 2.0);
  };
  g.top = origin(g.resized_h, g.out_h);
  g.left = origin(g.resized_w, g.out_w);
  return g;
}

// PIL's "L" from RGB (ITU-R 601-2 luma in 16-bit fixed point).
Image ToGrey(const Image& in) {
  Image out;
  out.height = in.height;
  out.width = in.width;
  out.channels = 1;
  out.pixels.resize(static_cast<size_t>(in.height) * in.width);
  const uint8_t* p = in.pixels.data();
  for (size_t i = 0; i < out.pixels.size(); ++i, p += 3) {
    out.pixels[i] = static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
  }
  return out;
}

// The window [top, top+out_h) x [left, left+out_w) of the resized image, as
// uint8 HWC with the source's channel count; pixels outside the resized
// image (crop padding) are 0.
// The window [top, top+out_h) x [left, left+out_w) of the resized image,
// row by row: sink(out_y, out_x, pixels, n) receives n pixels (source
// channels, interleaved) of window row out_y starting at column out_x. Rows
// and columns outside the resized image (crop padding) are never sent.
template <typename Sink>
void ResizeRows(const Image& src, const Geometry& g, Sink&& sink) {
  const int ch = src.channels;
  // The part of the window inside the resized image.
  const int y0 = std::max(0, g.top), y1 = std::min(g.resized_h, g.top + g.out_h);
  const int x0 = std::max(0, g.left), x1 = std::min(g.resized_w, g.left + g.out_w);
  if (y0 >= y1 || x0 >= x1) return;
  const bool need_h = g.resized_w != src.width;
  const bool need_v = g.resized_h != src.height;

  // Horizontal pass over the source rows the vertical pass will read.
  Coefficients vert;
  int row_first = y0, row_last = y1;  // source rows needed
  if (need_v) {
    vert = Precompute(src.height, g.resized_h, y0, y1);
    row_first = vert.first.front();
    row_last = vert.first.back() + vert.count.back();
    for (int i = 0; i < y1 - y0; ++i) row_first = std::min(row_first, vert.first[i]);
    for (int i = 0; i < y1 - y0; ++i) row_last = std::max(row_last, vert.first[i] + vert.count[i]);
  }
  const int tmp_w = x1 - x0;
  const int tmp_h = row_last - row_first;
  // Reused between images: a fresh buffer of this size costs page faults.
  thread_local std::vector<uint8_t> tmp;
  tmp.resize(static_cast<size_t>(tmp_h) * tmp_w * ch);
  if (need_h) {
    const Coefficients horiz = Precompute(src.width, g.resized_w, x0, x1);
    const std::vector<int32_t> pairs =
        ch == 3 && HasAvx2() ? PairCoefficients(horiz, tmp_w) : std::vector<int32_t>();
    const size_t total = src.pixels.size();
    for (int y = 0; y < tmp_h; ++y) {
      const size_t row_offset = static_cast<size_t>(row_first + y) * src.width * ch;
      uint8_t* o = tmp.data() + static_cast<size_t>(y) * tmp_w * ch;
      if (ch == 3) {
        HorizontalRgb(src.pixels.data() + row_offset, total - row_offset, horiz, pairs, tmp_w, o);
      } else {
        const uint8_t* in = src.pixels.data() + row_offset;
        for (int i = 0; i < tmp_w; ++i) {
          const int32_t* k = &horiz.k[static_cast<size_t>(i) * horiz.ksize];
          const uint8_t* p = in + horiz.first[i];
          int32_t s0 = 1 << (kPrecisionBits - 1);
          for (int x = 0; x < horiz.count[i]; ++x) s0 += p[x] * k[x];
          o[i] = Clip8(s0);
        }
      }
    }
  } else {
    for (int y = 0; y < tmp_h; ++y) {
      const uint8_t* in = src.pixels.data() +
                          (static_cast<size_t>(row_first + y) * src.width + x0) * ch;
      std::copy(in, in + static_cast<size_t>(tmp_w) * ch,
                tmp.begin() + static_cast<ptrdiff_t>(y) * tmp_w * ch);
    }
  }

  // Vertical pass, written into the window: taps outermost, so the inner
  // loop runs over contiguous bytes and vectorises.
  const int row_bytes = tmp_w * ch;
  thread_local std::vector<uint8_t> row;
  row.resize(static_cast<size_t>(row_bytes));
  for (int y = y0; y < y1; ++y) {
    if (!need_v) {
      sink(y - g.top, x0 - g.left, tmp.data() + static_cast<size_t>(y - row_first) * row_bytes, tmp_w);
      continue;
    }
    uint8_t* o = row.data();
    const int i = y - y0;
    const uint8_t* base = tmp.data() + static_cast<size_t>(vert.first[i] - row_first) * row_bytes;
    VerticalRow(base, row_bytes, &vert.k[static_cast<size_t>(i) * vert.ksize], vert.count[i], o);
    sink(y - g.top, x0 - g.left, o, tmp_w);
  }
}

void ResizeWindow(const Image& src, const Geometry& g, Image& out) {
  const int ch = src.channels;
  out.height = g.out_h;
  out.width = g.out_w;
  out.channels = ch;
  out.pixels.assign(static_cast<size_t>(g.out_h) * g.out_w * ch, 0);
  ResizeRows(src, g, [&](int oy, int ox, const uint8_t* p, int n) {
    std::memcpy(out.pixels.data() + (static_cast<size_t>(oy) * g.out_w + ox) * ch, p,
                static_cast<size_t>(n) * ch);
  });
}

}  // namespace

namespace {

// The input positions [first, last) that outputs [begin, end) of a resize
// from in_size to out_size read (all of [begin, end) when sizes are equal).
std::pair<int, int> InputSpan(int in_size, int out_size, int begin, int end) {
  if (in_size == out_size) return {begin, end};
  const Coefficients c = Precompute(in_size, out_size, begin, end);
  int first = in_size, last = 0;
  for (size_t i = 0; i < c.first.size(); ++i) {
    first = std::min(first, c.first[i]);
    last = std::max(last, c.first[i] + c.count[i]);
  }
  return {first, last};
}

}  // namespace

Region NeededRegion(const PreprocessOptions& options, int height, int width) {
  const Geometry g = Plan(options, height, width);
  const int y0 = std::max(0, g.top), y1 = std::min(g.resized_h, g.top + g.out_h);
  const int x0 = std::max(0, g.left), x1 = std::min(g.resized_w, g.left + g.out_w);
  if (y0 >= y1 || x0 >= x1) return Region{0, height, 0, width};
  const auto [top, bottom] = InputSpan(height, g.resized_h, y0, y1);
  const auto [left, right] = InputSpan(width, g.resized_w, x0, x1);
  return Region{top, bottom, left, right};
}

void OutputSize(const PreprocessOptions& options, int height, int width, int* out_height,
                int* out_width) {
  const Geometry g = Plan(options, height, width);
  *out_height = g.out_h;
  *out_width = g.out_w;
}

namespace {

void ResizeAndCropInto(const Image& in, const PreprocessOptions& options, Image& out) {
  const Geometry g = Plan(options, in.height, in.width);
  // PIL converts to the model's mode before resizing: RGB -> L for grey
  // models. Grey sources are resized as grey and replicated afterwards.
  if (options.channels == 1 && in.channels == 3) return ResizeWindow(ToGrey(in), g, out);
  ResizeWindow(in, g, out);
}

}  // namespace

Image ResizeAndCrop(const Image& in, const PreprocessOptions& options) {
  Image out;
  ResizeAndCropInto(in, options, out);
  return out;
}

namespace {

// ToTensor and Normalize on one row of n RGB pixels into three planes:
// (v / 255 - mean) / std in float, the same IEEE operations as torchvision's
// (and as the table the scalar path reads), so the floats are identical.
void NormaliseRgbRowScalar(const uint8_t* p, int n, const float (*lut)[256], float* r, float* g,
                           float* b) {
  for (int i = 0; i < n; ++i, p += 3) {
    r[i] = lut[0][p[0]];
    g[i] = lut[1][p[1]];
    b[i] = lut[2][p[2]];
  }
}

#if defined(__x86_64__)
// 16 pixels at a time: three shuffles per channel gather its 16 bytes from
// the 48 interleaved ones.
__attribute__((target("avx2"))) void NormaliseRgbRowAvx2(const uint8_t* p, int n,
                                                         const float* mean, const float* std,
                                                         const float (*lut)[256], float* r,
                                                         float* g, float* b) {
  const __m128i pick[3][3] = {
      {_mm_setr_epi8(0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1),
       _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 2, 5, 8, 11, 14, -1, -1, -1, -1, -1),
       _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 1, 4, 7, 10, 13)},
      {_mm_setr_epi8(1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1),
       _mm_setr_epi8(-1, -1, -1, -1, -1, 0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1),
       _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 2, 5, 8, 11, 14)},
      {_mm_setr_epi8(2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1),
       _mm_setr_epi8(-1, -1, -1, -1, -1, 1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1),
       _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 3, 6, 9, 12, 15)}};
  const __m256i d255 = _mm256_castps_si256(_mm256_set1_ps(255.0f));
  float* planes[3] = {r, g, b};
  int i = 0;
  for (; i + 16 <= n; i += 16, p += 48) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i m = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
    const __m128i z = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32));
    for (int c = 0; c < 3; ++c) {
      const __m128i v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, pick[c][0]),
                                                  _mm_shuffle_epi8(m, pick[c][1])),
                                     _mm_shuffle_epi8(z, pick[c][2]));
      const __m256 mc = _mm256_set1_ps(mean[c]), sc = _mm256_set1_ps(std[c]);
      for (int half = 0; half < 2; ++half) {
        const __m256 f = _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(half == 0 ? v : _mm_srli_si128(v, 8)));
        const __m256 y = _mm256_div_ps(
            _mm256_sub_ps(_mm256_div_ps(f, _mm256_castsi256_ps(d255)), mc), sc);
        _mm256_storeu_ps(planes[c] + i + half * 8, y);
      }
    }
  }
  NormaliseRgbRowScalar(p, n - i, lut, r + i, g + i, b + i);
}
#endif

}  // namespace

void Preprocess(const Image& in, const PreprocessOptions& options, float* out) {
  // PIL converts to the model's mode before resizing (RGB -> L for grey
  // models); grey sources are resized as grey and replicated.
  thread_local Image grey;
  const Image* src = &in;
  if (options.channels == 1 && in.channels == 3) {
    grey = ToGrey(in);
    src = &grey;
  }
  const Geometry g = Plan(options, src->height, src->width);
  const int channels = options.channels;
  const size_t plane = static_cast<size_t>(g.out_h) * g.out_w;
  // ToTensor divides by 255 in float; Normalize subtracts, then divides.
  float lut[3][256];
  float means[3] = {0, 0, 0}, stds[3] = {1, 1, 1};
  for (int c = 0; c < channels; ++c) {
    const float mean = options.mean.empty() ? 0.0f : options.mean[options.mean.size() == 1 ? 0 : c];
    const float std = options.std.empty() ? 1.0f : options.std[options.std.size() == 1 ? 0 : c];
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.0f - mean) / std;
    means[c] = mean;
    stds[c] = std;
  }
  // Crop padding (a crop larger than the resized image) is black.
  const bool padded = g.top < 0 || g.left < 0 || g.top + g.out_h > g.resized_h ||
                      g.left + g.out_w > g.resized_w;
  if (padded) {
    for (int c = 0; c < channels; ++c) std::fill(out + c * plane, out + (c + 1) * plane, lut[c][0]);
  }
  // Rows go straight from the vertical pass into the normalised planes.
  const int src_channels = src->channels;
  ResizeRows(*src, g, [&](int oy, int ox, const uint8_t* p, int n) {
    const size_t at = static_cast<size_t>(oy) * g.out_w + ox;
    if (src_channels == 1) {
      for (int c = 0; c < channels; ++c) {
        float* o = out + c * plane + at;
        for (int i = 0; i < n; ++i) o[i] = lut[c][p[i]];
      }
      return;
    }
    float* r = out + at;
#if defined(__x86_64__)
    if (HasAvx2()) return NormaliseRgbRowAvx2(p, n, means, stds, lut, r, r + plane, r + 2 * plane);
#endif
    NormaliseRgbRowScalar(p, n, lut, r, r + plane, r + 2 * plane);
  });
}

}  // namespace sslbench::image
