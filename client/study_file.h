#pragma once
// Study files: the YAML a user writes, turned into the StudySpec that
// `sslbench submit` sends.
//
//   name: fmnist-knn
//   max_attempts: 3              # optional
//   extract_batch_size: 256      # optional
//   models:
//     - name: identity
//       path: models/identity.pt # relative to the study file
//       input_size: 28           # optional, 0 = keep the dataset's size
//       channels: 1              # optional, 1 or 3 (default 1)
//       mean: [0.0]              # optional, one per channel or one for all
//       std: [1.0]
//   datasets:
//     - name: fashion-mnist
//       format: idx              # optional (default idx)
//       root: /usr/share/datasets/fashion-mnist
//       role: in-domain          # optional: in-domain | out-of-domain
//       train_limit: 0           # optional, 0 = all
//       test_limit: 0
//   protocols:
//     - name: knn
//       kind: knn                # optional when the name is a kind
//       ks: [10, 20, 100, 200]   # every parameter optional (DESIGN.md defaults)
//       temperature: 0.07
//       euclidean_k: 20          # -1 disables the Euclidean variant
//       test_chunk_rows: 1024
//       train_chunk_rows: 16384

#include <string>

#include "absl/status/statusor.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::client {

// Parses `yaml_text`, resolves relative model paths and dataset roots against
// `base_dir` (made absolute), fills each model's sha256 and each dataset's
// digest from the files (so it reads them all), applies the protocol defaults
// and validates the result.
// Errors name the field path, e.g.
//   models[0].input_size: "abc" is not an integer (line 7)
// INVALID_ARGUMENT for malformed YAML, unknown keys, wrong types, missing
// required fields and impossible values; NOT_FOUND for a missing model file,
// dataset folder or dataset file.
absl::StatusOr<v1::StudySpec> ParseStudyYaml(const std::string& yaml_text,
                                             const std::string& base_dir);

// Reads the file at `path` and parses it with its folder as base; error
// messages start with `path: `. NOT_FOUND when the file does not exist.
absl::StatusOr<v1::StudySpec> LoadStudyFile(const std::string& path);

}  // namespace sslbench::client
