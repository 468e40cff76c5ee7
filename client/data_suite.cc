#include "client/data_suite.h"

#include <png.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/seed_mix.h"
#include "common/status_macros.h"
#include "worker/datasets/files.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench::client {
namespace {

namespace fs = std::filesystem;

constexpr int kSide = 28;
constexpr char kStampName[] = ".sslbench-suite";

const std::array<const char*, 10> kFineClasses = {
    "0-t-shirt-top", "1-trouser", "2-pullover", "3-dress", "4-coat",
    "5-sandal",      "6-shirt",   "7-sneaker",  "8-bag",   "9-ankle-boot"};
const std::array<const char*, 4> kCoarseClasses = {"0-upper-body", "1-trousers", "2-footwear",
                                                   "3-bags"};
// Fashion-MNIST label -> coarse label.
const std::array<int, 10> kCoarseOf = {0, 1, 0, 0, 0, 2, 0, 2, 3, 2};

enum class Shift { kNone, kSketch, kInverted, kLowRes, kNoisy, kRotated, kCoarse };

struct DomainDef {
  const char* name;
  Shift shift;
};

const std::array<DomainDef, 7> kDomains = {{{"fmnist", Shift::kNone},
                                            {"fmnist-sketch", Shift::kSketch},
                                            {"fmnist-inverted", Shift::kInverted},
                                            {"fmnist-lowres", Shift::kLowRes},
                                            {"fmnist-noisy", Shift::kNoisy},
                                            {"fmnist-rotated", Shift::kRotated},
                                            {"fmnist-coarse", Shift::kCoarse}}};

using Pixels = std::array<uint8_t, kSide * kSide>;

uint8_t Clamp(double v) { return static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L)); }

Pixels Sketch(const Pixels& in) {
  auto at = [&](int y, int x) -> double {
    if (y < 0 || y >= kSide || x < 0 || x >= kSide) return 0;
    return in[y * kSide + x];
  };
  std::array<double, kSide * kSide> magnitude{};
  double peak = 0;
  for (int y = 0; y < kSide; ++y) {
    for (int x = 0; x < kSide; ++x) {
      const double gx = at(y - 1, x + 1) + 2 * at(y, x + 1) + at(y + 1, x + 1) - at(y - 1, x - 1) -
                        2 * at(y, x - 1) - at(y + 1, x - 1);
      const double gy = at(y + 1, x - 1) + 2 * at(y + 1, x) + at(y + 1, x + 1) - at(y - 1, x - 1) -
                        2 * at(y - 1, x) - at(y - 1, x + 1);
      magnitude[y * kSide + x] = std::sqrt(gx * gx + gy * gy);
      peak = std::max(peak, magnitude[y * kSide + x]);
    }
  }
  Pixels out;
  for (int i = 0; i < kSide * kSide; ++i) {
    out[i] = Clamp(255.0 - (peak > 0 ? 255.0 * magnitude[i] / peak : 0.0));
  }
  return out;
}

Pixels LowRes(const Pixels& in) {
  constexpr int kFactor = 4;
  Pixels out;
  for (int by = 0; by < kSide; by += kFactor) {
    for (int bx = 0; bx < kSide; bx += kFactor) {
      int sum = 0;
      for (int y = by; y < by + kFactor; ++y) {
        for (int x = bx; x < bx + kFactor; ++x) sum += in[y * kSide + x];
      }
      const uint8_t mean = Clamp(sum / double{kFactor * kFactor});
      for (int y = by; y < by + kFactor; ++y) {
        for (int x = bx; x < bx + kFactor; ++x) out[y * kSide + x] = mean;
      }
    }
  }
  return out;
}

Pixels Noisy(const Pixels& in, std::mt19937_64& rng) {
  // Separable [1 2 1] / 4 blur with clamped edges, then N(0, 40) noise.
  std::array<double, kSide * kSide> tmp{};
  auto clamp_index = [](int i) { return std::clamp(i, 0, kSide - 1); };
  for (int y = 0; y < kSide; ++y) {
    for (int x = 0; x < kSide; ++x) {
      tmp[y * kSide + x] = (in[y * kSide + clamp_index(x - 1)] + 2.0 * in[y * kSide + x] +
                            in[y * kSide + clamp_index(x + 1)]) /
                           4.0;
    }
  }
  std::normal_distribution<double> noise(0.0, 40.0);
  Pixels out;
  for (int y = 0; y < kSide; ++y) {
    for (int x = 0; x < kSide; ++x) {
      const double blurred = (tmp[clamp_index(y - 1) * kSide + x] + 2.0 * tmp[y * kSide + x] +
                              tmp[clamp_index(y + 1) * kSide + x]) /
                             4.0;
      out[y * kSide + x] = Clamp(blurred + noise(rng));
    }
  }
  return out;
}

Pixels Rotated(const Pixels& in, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> angle(-60.0, 60.0);
  const double theta = angle(rng) * M_PI / 180.0;
  const double c = std::cos(theta), s = std::sin(theta);
  constexpr double kCentre = (kSide - 1) / 2.0;
  Pixels out;
  for (int y = 0; y < kSide; ++y) {
    for (int x = 0; x < kSide; ++x) {
      // Inverse mapping: the source point that lands on (x, y); bilinear,
      // black outside.
      const double dx = x - kCentre, dy = y - kCentre;
      const double sx = c * dx + s * dy + kCentre;
      const double sy = -s * dx + c * dy + kCentre;
      const int x0 = static_cast<int>(std::floor(sx)), y0 = static_cast<int>(std::floor(sy));
      const double fx = sx - x0, fy = sy - y0;
      auto at = [&](int yy, int xx) -> double {
        if (yy < 0 || yy >= kSide || xx < 0 || xx >= kSide) return 0;
        return in[yy * kSide + xx];
      };
      const double v = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
                       fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
      out[y * kSide + x] = Clamp(v);
    }
  }
  return out;
}

absl::Status WritePng(const std::string& path, const Pixels& pixels) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::InternalError(absl::StrCat("cannot create ", path));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (png == nullptr || info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
    return absl::InternalError(absl::StrCat("cannot write PNG ", path));
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, kSide, kSide, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < kSide; ++y) {
    png_write_row(png, const_cast<png_bytep>(pixels.data() + y * kSide));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fclose(f) != 0) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

struct Source {
  std::vector<Pixels> images;
  std::vector<int> labels;
};

absl::StatusOr<Source> ReadSource(datasets::DatasetReader& reader, const std::string& split,
                                  int64_t limit, const std::string& root) {
  ASSIGN_OR_RETURN(datasets::SplitListing listing, reader.List(split, limit));
  Source source;
  for (const datasets::Record& record : listing.records) {
    ASSIGN_OR_RETURN(datasets::RecordBytes bytes, reader.ReadRecord(record));
    if (!bytes.raw() || bytes.raw_height != kSide || bytes.raw_width != kSide ||
        bytes.raw_channels != 1 || record.label < 0 || record.label > 9) {
      return absl::InvalidArgumentError(absl::StrCat(
          root, " is not Fashion-MNIST: expected 28x28 grey images with labels 0-9"));
    }
    Pixels p;
    std::copy(bytes.bytes.begin(), bytes.bytes.end(), p.begin());
    source.images.push_back(p);
    source.labels.push_back(record.label);
  }
  return source;
}

std::string Stamp(const SuiteOptions& o, const std::string& domain) {
  return absl::StrCat("sslbench data suite 1\ndomain=", domain, "\nsource=", o.source,
                      "\ntrain=", o.train_per_domain, "\ntest=", o.test_per_domain,
                      "\nseed=", o.seed, "\n");
}

}  // namespace

std::vector<std::string> SuiteDomainNames() {
  std::vector<std::string> names;
  for (const DomainDef& d : kDomains) names.push_back(d.name);
  return names;
}

absl::StatusOr<std::vector<SuiteDomain>> BuildSuite(const SuiteOptions& options,
                                                    const SuiteProgress& progress) {
  if (options.out.empty()) return absl::InvalidArgumentError("data build: no output folder");
  if (options.train_per_domain < 1 || options.test_per_domain < 1) {
    return absl::InvalidArgumentError("data build: image counts must be at least 1");
  }
  std::error_code ec;
  const fs::path out = fs::absolute(options.out, ec).lexically_normal();
  fs::create_directories(out, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out.string(), ": ", ec.message()));

  std::vector<SuiteDomain> domains;
  std::unique_ptr<datasets::DatasetReader> reader;
  Source train, test;
  for (size_t d = 0; d < kDomains.size(); ++d) {
    const DomainDef& def = kDomains[d];
    SuiteDomain domain;
    domain.name = def.name;
    domain.root = (out / def.name).string();
    domain.in_domain = def.shift == Shift::kNone;
    domain.classes = def.shift == Shift::kCoarse ? 4 : 10;
    const std::string stamp = Stamp(options, def.name);
    const std::string existing =
        datasets::ReadWholeFile(domain.root + "/" + kStampName).value_or("");
    if (existing.rfind(stamp, 0) == 0 &&
        std::sscanf(existing.c_str() + stamp.size(), "images=%lld %lld",
                    reinterpret_cast<long long*>(&domain.train),
                    reinterpret_cast<long long*>(&domain.test)) == 2) {
      domain.cached = true;
      domains.push_back(domain);
      continue;
    }
    if (reader == nullptr) {
      datasets::DatasetConfig config;
      config.format = "idx";
      config.root = options.source;
      ASSIGN_OR_RETURN(reader, datasets::OpenDatasetReader(config));
      ASSIGN_OR_RETURN(train, ReadSource(*reader, "train", options.train_per_domain, options.source));
      ASSIGN_OR_RETURN(test, ReadSource(*reader, "test", options.test_per_domain, options.source));
    }
    // Written aside, then renamed: a domain folder is complete or absent.
    const fs::path tmp = out / absl::StrCat(".", def.name, ".partial");
    fs::remove_all(tmp, ec);
    fs::remove_all(domain.root, ec);
    const int64_t total = static_cast<int64_t>(train.images.size() + test.images.size());
    int64_t done = 0;
    for (const auto& [split, source] : {std::pair<const char*, const Source*>{"train", &train},
                                        std::pair<const char*, const Source*>{"test", &test}}) {
      for (int c = 0; c < domain.classes; ++c) {
        const char* name = def.shift == Shift::kCoarse ? kCoarseClasses[c] : kFineClasses[c];
        fs::create_directories(tmp / split / name, ec);
        if (ec) {
          return absl::InternalError(
              absl::StrCat("cannot create ", (tmp / split / name).string(), ": ", ec.message()));
        }
      }
      for (size_t i = 0; i < source->images.size(); ++i) {
        std::mt19937_64 rng(MixSeed(MixSeed(options.seed, d), MixSeed(std::string(split) == "train", i)));
        const Pixels& in = source->images[i];
        Pixels pixels = in;
        switch (def.shift) {
          case Shift::kSketch: pixels = Sketch(in); break;
          case Shift::kInverted:
            for (auto& p : pixels) p = static_cast<uint8_t>(255 - p);
            break;
          case Shift::kLowRes: pixels = LowRes(in); break;
          case Shift::kNoisy: pixels = Noisy(in, rng); break;
          case Shift::kRotated: pixels = Rotated(in, rng); break;
          default: break;
        }
        const int label = source->labels[i];
        const char* cls =
            def.shift == Shift::kCoarse ? kCoarseClasses[kCoarseOf[label]] : kFineClasses[label];
        char file[32];
        std::snprintf(file, sizeof(file), "%06zu.png", i);
        RETURN_IF_ERROR(WritePng((tmp / split / cls / file).string(), pixels));
        ++done;
        if (progress && (done % 2000 == 0 || done == total)) progress(def.name, done, total);
      }
    }
    {
      std::ofstream s(tmp / kStampName);
      s << stamp << "images=" << train.images.size() << " " << test.images.size() << "\n";
      if (!s) return absl::InternalError(absl::StrCat("cannot write ", (tmp / kStampName).string()));
    }
    fs::rename(tmp, domain.root, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot rename ", tmp.string(), " to ", domain.root, ": ", ec.message()));
    }
    domain.train = static_cast<int64_t>(train.images.size());
    domain.test = static_cast<int64_t>(test.images.size());
    domains.push_back(domain);
  }

  std::string yaml =
      "# The domain-shift suite (sslbench data build): paste under a study's datasets:\n"
      "datasets:\n";
  for (const SuiteDomain& d : domains) {
    absl::StrAppend(&yaml, "  - name: ", d.name, "\n    format: imagefolder\n    root: ", d.root,
                    "\n    role: ", d.in_domain ? "in-domain" : "out-of-domain",
                    "\n    train_images: ", d.train, "\n    test_images: ", d.test, "\n");
  }
  std::ofstream y(out / "suite.yaml");
  y << yaml;
  if (!y) return absl::InternalError(absl::StrCat("cannot write ", (out / "suite.yaml").string()));
  return domains;
}

}  // namespace sslbench::client
