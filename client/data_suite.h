#pragma once
// `sslbench data build`: a domain-shift suite made from Fashion-MNIST (the
// Debian package dataset-fashion-mnist), written as ImageFolder PNG datasets
// so studies exercise the image path. The in-domain set is Fashion-MNIST
// itself; each out-of-domain set applies one shift the field measures:
//
//   fmnist           in-domain: the images as they are
//   fmnist-sketch    Sobel edge magnitude, dark strokes on white (sketches)
//   fmnist-inverted  inverted contrast
//   fmnist-lowres    4x box-downsampled, then blown up (low resolution)
//   fmnist-noisy     Gaussian blur, then Gaussian noise (sensor degradation)
//   fmnist-rotated   rotated by a random angle in [-60, 60] degrees
//   fmnist-coarse    the images with 4 coarser labels (upper body, trousers,
//                    footwear, bags): a label-granularity shift
//
// Every domain uses the same source images (the first N of each split), so
// the shift is the only difference. Deterministic for a seed; each domain is
// written to a temporary folder and renamed into place with a stamp of its
// parameters, so a rerun with the same parameters reuses it and an
// interrupted build never leaves a partial domain behind.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sslbench::client {

struct SuiteOptions {
  std::string source = "/usr/share/datasets/fashion-mnist";  // IDX files
  std::string out;                   // folder of the domains
  int64_t train_per_domain = 6000;   // first N train images
  int64_t test_per_domain = 1000;    // first N test images
  uint64_t seed = 0;
};

struct SuiteDomain {
  std::string name;      // folder under SuiteOptions::out
  std::string root;      // absolute
  bool in_domain = false;
  int classes = 0;
  int64_t train = 0;
  int64_t test = 0;
  bool cached = false;   // reused from an earlier build
};

// (domain, images written, images in the domain)
using SuiteProgress = std::function<void(const std::string&, int64_t, int64_t)>;

// Builds (or reuses) every domain; writes OUT/suite.yaml, the `datasets:`
// entries of a study file for them. NOT_FOUND when the source is missing.
absl::StatusOr<std::vector<SuiteDomain>> BuildSuite(const SuiteOptions& options,
                                                    const SuiteProgress& progress = nullptr);

// The domain names, in-domain first.
std::vector<std::string> SuiteDomainNames();

}  // namespace sslbench::client
