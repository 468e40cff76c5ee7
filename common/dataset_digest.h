#pragma once
// Content digest of a dataset's files: part of every feature-cache key, so
// changed data never reuses stale features.

#include <string>

#include "absl/status/statusor.h"
#include "sslbench/v1/types.pb.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench {

// How many files per split have their bytes hashed.
inline constexpr size_t kDigestSampledFiles = 64;

// The reader configuration of a dataset spec.
datasets::DatasetConfig ToDatasetConfig(const v1::DatasetSpec& dataset);

// SHA-256 over the format and, for each split, the files that define it (as
// the dataset's reader names them: path relative to the root, size and
// modification time) plus the SHA-256 of the bytes of up to
// kDigestSampledFiles files per split, evenly spaced (every file of a small
// split); of a file over 64 MiB (a tar shard), 16 blocks of 64 KiB spread
// over it. A million-image split costs one stat per file.
// NOT_FOUND naming the dataset root or the missing file; INVALID_ARGUMENT
// for an unknown format or a malformed dataset; INTERNAL on read errors.
absl::StatusOr<std::string> DatasetDigest(const v1::DatasetSpec& dataset);

}  // namespace sslbench
