#pragma once
// Small helpers shared by the developer tools in this folder.

#include <cmath>
#include <cstdio>
#include <string>

#include "worker/compute/features.h"
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

}  // namespace sslbench::tools
