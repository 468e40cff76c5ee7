#pragma once
// Study files: the YAML a user writes, turned into the StudySpec that
// `sslbench submit` sends.
//
//   name: fmnist-knn
//   max_attempts: 3              # optional
//   extract_batch_size: 256      # optional
//   models:
//     - name: identity
//       path: models/identity.pt # relative to the study file; ${VAR} is
//                                # replaced by the environment variable VAR
//       backbone: resnet50       # optional labels for grouping results and
//       method: dino             # for cost estimates
//       family: distillation
//       input_size: 28           # optional, 0 = keep the dataset's size
//       channels: 1              # optional, 1 or 3 (default 1)
//       mean: [0.0]              # optional, one per channel or one for all
//       std: [1.0]
//   datasets:
//     - name: fashion-mnist
//       format: idx              # optional (default idx)
//       root: /usr/share/datasets/fashion-mnist  # ${VAR} as for paths
//       role: in-domain          # optional: in-domain | out-of-domain
//       train_limit: 0           # optional, 0 = all
//       test_limit: 0
//       train_images: 60000      # optional: the full split's size, checked
//       test_images: 10000       # at submit; --dry-run estimates from it
//   protocols:                   # kind-specific keys are the fields of the
//                                # kind's params in types.proto; every one is
//                                # optional (DESIGN.md defaults)
//     - name: knn
//       kind: knn                # optional when the name is a kind
//       ks: [10, 20, 100, 200]
//       temperature: 0.07
//       temperatures: [0.02, 0.07, 0.2]  # a sweep; replaces temperature
//       euclidean_k: 20          # -1 disables the Euclidean variant
//       test_chunk_rows: 1024
//       train_chunk_rows: 16384
//     - name: linear
//       learning_rates: [0.01, 0.1]
//       batch_norm: true         # BatchNorm1d(affine=False) before the head
//       standardize: false       # z-score features with train statistics
//       epochs: 100
//       batch_size: 1024
//       warmup_epochs: 5
//       momentum: 0.9
//       weight_decay: 0
//       grad_clip: 0             # 0 = off
//       val_fraction: 0.1
//       seed: 0
//       init_std: 0.01
//     - name: logreg-wide
//       kind: logreg
//       cs: [0.01, 1, 100]       # or a log grid: num_cs values in [c_min, c_max]
//       num_cs: 45
//       c_min: 1e-6
//       c_max: 1e5
//       val_fraction: 0.1
//       max_iterations: 1000
//       tolerance: 1e-6
//       seed: 0
//     - name: finetune           # the fields of FineTuneParams: optimizer
//                                # (sgd | adamw), learning_rate, epochs, ...
//       few_shot:                # any kind; absent: the full train split
//         shots: [1, 5, 10]      # images per class
//         fractions: [0.01, 0.1] # class-balanced fractions of train
//         seeds: [0, 1, 2]       # optional (default 0, 1, 2)
//
// A complete example: client/examples/study-all-protocols.yaml.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/location.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::client {

struct StudyFileOptions {
  // false (a dry run): model files and dataset folders are neither hashed
  // nor required; placeholders stand in for hashes and digests, and each
  // missing file or folder is added to `notes`.
  bool read_files = true;
  std::vector<std::string>* notes = nullptr;
  // Where file:// model paths and dataset roots are found here (the spec
  // keeps the URI; each worker resolves it under its own --file_root).
  LocationRoots locations;
};

// Parses `yaml_text`, resolves relative model paths and dataset roots against
// `base_dir` (made absolute), fills each model's sha256 and each dataset's
// digest from the files (so it reads them all), applies the protocol defaults
// and validates the result.
// Errors name the field path, e.g.
//   models[0].input_size: "abc" is not an integer (line 7)
//   protocols[1].ks: unknown key for a linear protocol (known: ...)
// INVALID_ARGUMENT for malformed YAML, unknown keys, wrong types, missing
// required fields and impossible values (including an explicit 0 where the
// spec reads 0 as "the default", such as momentum: 0); NOT_FOUND for a
// missing model file, dataset folder or dataset file.
absl::StatusOr<v1::StudySpec> ParseStudyYaml(const std::string& yaml_text,
                                             const std::string& base_dir,
                                             const StudyFileOptions& options = {});

// Reads the file at `path` and parses it with its folder as base; error
// messages start with `path: `. NOT_FOUND when the file does not exist.
absl::StatusOr<v1::StudySpec> LoadStudyFile(const std::string& path,
                                            const StudyFileOptions& options = {});

}  // namespace sslbench::client
