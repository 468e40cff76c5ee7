#pragma once
// Small helpers shared by the developer tools in this folder.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

#include "worker/compute/features.h"
#include "worker/datasets/dataset_reader.h"
#include "worker/compute/image_set.h"

namespace sslbench::tools {

// A number for a JSON line: `digits` significant digits (17 round-trips a
// double), null when not finite.
inline std::string JsonNumber(double v, int digits = 17) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
  return buf;
}

// The raw pixels / 255 as features: the same arithmetic as numpy's
// `uint8_array.astype(np.float32) / 255`, so reference scripts see the same
// floats.
inline compute::FeatureMatrix PixelFeatures(const compute::ImageSet& set) {
  compute::FeatureMatrix m;
  m.rows = set.count;
  m.dim = set.image_bytes();
  m.data.resize(set.pixels.size());
  for (size_t i = 0; i < set.pixels.size(); ++i) {
    m.data[i] = static_cast<float>(set.pixels[i]) / 255.0f;
  }
  m.labels = set.labels;
  return m;
}

// "0.485,0.456,0.406" -> floats; exits with status 2 on a bad number.
inline std::vector<float> ParseFloats(const std::string& csv) {
  std::vector<float> out;
  for (absl::string_view part : absl::StrSplit(csv, ',', absl::SkipEmpty())) {
    float v = 0;
    if (!absl::SimpleAtof(part, &v)) {
      std::fprintf(stderr, "not a number: %s\n", std::string(part).c_str());
      std::exit(2);
    }
    out.push_back(v);
  }
  return out;
}

// Prints "TOOL: STATUS" and exits with status 1.
[[noreturn]] inline void Die(const char* tool, const absl::Status& s) {
  std::fprintf(stderr, "%s: %s\n", tool, s.ToString().c_str());
  std::exit(1);
}

// A dataset's reader and one split's listing.
struct OpenedSplit {
  std::unique_ptr<datasets::DatasetReader> reader;
  datasets::SplitListing listing;
};

// Opens `split` of the dataset at `root`; prints the error and exits with
// status 1 when it cannot.
inline OpenedSplit OpenSplitOrDie(const char* tool, const std::string& format,
                                  const std::string& root, const std::string& split,
                                  int64_t limit) {
  datasets::DatasetConfig config;
  config.format = format;
  config.root = root;
  auto reader = datasets::OpenDatasetReader(config);
  if (!reader.ok()) Die(tool, reader.status());
  auto listing = (*reader)->List(split, limit);
  if (!listing.ok()) Die(tool, listing.status());
  return OpenedSplit{*std::move(reader), *std::move(listing)};
}

}  // namespace sslbench::tools
