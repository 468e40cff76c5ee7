#pragma once
// Validation, defaults and content keys of study specifications, shared by the
// CLI (before submitting) and the coordinator (before planning).

#include <string>

#include "absl/status/status.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench {

// Version of the feature extractor; part of every cache key, so a change in
// preprocessing or extraction code invalidates old caches by construction.
inline constexpr char kExtractorVersion[] = "2";

// The most chunks one feature set may have (ImageNet train at 2048-d float32
// in 4 MiB chunks is ~2,500): the coordinator refuses larger indexes and a
// worker resuming an extraction ignores them.
inline constexpr int32_t kMaxFeatureChunks = 1 << 20;

// Size bounds of a study spec, so that no field can make the coordinator
// copy megabytes into every task: every string (paths, labels, digests) at
// most kMaxSpecStringBytes, every list at most kMaxSpecListEntries, the whole
// spec at most kMaxSpecBytes serialised.
inline constexpr int kMaxSpecStringBytes = 4096;
inline constexpr int kMaxSpecListEntries = 1024;
inline constexpr int kMaxSpecBytes = 1 << 20;

// Fills unset optional fields with the protocol defaults of DESIGN.md.
void ApplyStudyDefaults(v1::StudySpec& spec);

// Checks a (defaulted) spec. INVALID_ARGUMENT naming the offending field,
// e.g. `models[1].mean: 2 values for 1 channel`. Does not touch the file
// system (the coordinator may not see the workers' paths).
absl::Status ValidateStudySpec(const v1::StudySpec& spec);

// Content address of the features of (model, dataset, split): hashes the
// model's bytes (sha256), the dataset's digest and split limits, the
// preprocessing, the output layer, the dtype and the extractor version.
std::string FeatureCacheKey(const v1::ModelSpec& model,
                            const v1::DatasetSpec& dataset,
                            const std::string& split,
                            const std::string& dtype = "float32");

}  // namespace sslbench
