#pragma once
// Content digest of a dataset's files: part of every feature-cache key, so
// changed data never reuses stale features.

#include <string>

#include "absl/status/statusor.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench {

// For format "idx": SHA-256 over "NAME=SHA256\n" lines of the four files
// ROOT/{train,t10k}-{images-idx3,labels-idx1}-ubyte, each taken plain or,
// when the plain file is absent, with ".gz" (the reader's order). NAME is the
// file name as found. Reads every byte of the files.
// NOT_FOUND naming the dataset root and the missing file; INVALID_ARGUMENT
// for an unsupported format; INTERNAL on read errors.
absl::StatusOr<std::string> DatasetDigest(const v1::DatasetSpec& dataset);

}  // namespace sslbench
