#pragma once
// The format implementations behind OpenDatasetReader (registry.cc). Private
// to this folder: everything else goes through the registry.

#include <memory>

#include "absl/status/statusor.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench::datasets {

absl::StatusOr<std::unique_ptr<DatasetReader>> NewCsvManifestReader(
    const DatasetConfig& config);
absl::StatusOr<std::unique_ptr<DatasetReader>> NewIdxReader(
    const DatasetConfig& config);
absl::StatusOr<std::unique_ptr<DatasetReader>> NewImageFolderReader(
    const DatasetConfig& config);
absl::StatusOr<std::unique_ptr<DatasetReader>> NewTarShardReader(
    const DatasetConfig& config);

}  // namespace sslbench::datasets
