#pragma once
// What a study will cost before it is submitted (`sslbench submit --dry-run`):
// its task graph as the coordinator will plan it, the images each dataset
// split holds, and the GPU time and feature storage those imply at the
// per-image rates measured in bench/README.md.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/location.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::client {

// Images of one dataset split as the study uses it (limits applied); -1 when
// neither the folder nor the study file's train_images/test_images tell.
struct SplitImages {
  int64_t train = -1;
  int64_t test = -1;
  std::string source;  // "counted", "declared", "unknown"
};

// Throughput of one backbone on one GPU node, from the measured figures.
struct BackboneRate {
  double forward_images_per_second = 0;  // extraction, decode included
  double train_images_per_second = 0;    // fine-tuning (forward + backward)
  int feature_dim = 0;
};

struct StudyEstimate {
  std::map<std::string, int64_t> tasks_by_kind;  // "extract", "knn", ...
  int64_t tasks = 0;
  std::map<std::string, SplitImages> images;  // by dataset name
  int64_t extract_images = 0;       // image forwards for feature extraction
  int64_t finetune_images = 0;      // image forward+backward passes
  double extract_seconds = 0;       // on one GPU node
  double finetune_seconds = 0;
  double probe_seconds = 0;         // kNN, linear, logistic regression on features
  double feature_bytes = 0;         // the feature store at the study's dtype
  std::vector<std::string> notes;   // assumptions and unknowns
};

// The measured rate for a backbone label (resnet50, vit_b_16, ...); unknown
// labels get `fallback_images_per_second` and a note.
BackboneRate RateFor(const std::string& backbone, double fallback_images_per_second,
                     std::vector<std::string>* notes);

// Counts images where the dataset folders can be read; otherwise uses the
// declared sizes.
std::map<std::string, SplitImages> CountImages(const v1::StudySpec& spec,
                                               const LocationRoots& locations = {});

absl::StatusOr<StudyEstimate> EstimateStudy(const v1::StudySpec& spec,
                                            const std::map<std::string, SplitImages>& images,
                                            double fallback_images_per_second);

// The human-readable table `submit --dry-run` prints.
std::string FormatEstimate(const v1::StudySpec& spec, const StudyEstimate& estimate);

}  // namespace sslbench::client
