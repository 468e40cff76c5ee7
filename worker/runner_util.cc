#include "worker/runner_util.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/dataset_digest.h"
#include "common/path_guard.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace sslbench::worker {

absl::Status LocalizeSpec(v1::TaskSpec& spec, const LocationRoots& roots) {
  // Replaces `*location` (of the model or dataset `what`) by its local path.
  auto localize = [&roots](const std::string& what, std::string* location) -> absl::Status {
    if (location->empty()) return absl::OkStatus();
    absl::StatusOr<std::string> local = ResolveLocation(*location, roots);
    if (!local.ok()) {
      return absl::Status(local.status().code(),
                          absl::StrCat(what, ": ", local.status().message()));
    }
    *location = *std::move(local);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(localize(absl::StrCat("model \"", spec.model().name(), "\""),
                           spec.mutable_model()->mutable_path()));
  return localize(absl::StrCat("dataset \"", spec.dataset().name(), "\""),
                  spec.mutable_dataset()->mutable_root());
}

absl::Status VerifyModel(const v1::ModelSpec& model, const ReadPolicy& policy,
                         const std::function<bool()>& stop) {
  RETURN_IF_ERROR(CheckUnderRoots(model.path(), policy.model_roots,
                                  absl::StrCat("model \"", model.name(), "\": file")));
  HashFileOptions hashing;
  hashing.max_bytes = policy.max_model_bytes;
  hashing.cancelled = stop;
  absl::StatusOr<std::string> sha = Sha256File(model.path(), hashing);
  if (!sha.ok()) {
    return absl::Status(sha.status().code(), absl::StrCat("model \"", model.name(), "\": ",
                                                          sha.status().message()));
  }
  if (*sha != model.sha256()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model \"", model.name(), "\": file ", model.path(),
        " changed since the study was submitted (sha256 ", sha->substr(0, 12), " != ",
        model.sha256().substr(0, 12), "); resubmit the study"));
  }
  return absl::OkStatus();
}

absl::Status VerifyDataset(const v1::DatasetSpec& dataset, const ReadPolicy& policy) {
  RETURN_IF_ERROR(CheckUnderRoots(dataset.root(), policy.data_roots,
                                  absl::StrCat("dataset \"", dataset.name(), "\": folder")));
  ASSIGN_OR_RETURN(const std::string digest, DatasetDigest(dataset));
  if (digest != dataset.digest()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset \"", dataset.name(), "\": the files in ", dataset.root(),
        " changed since the study was submitted (digest ", digest.substr(0, 12), " != ",
        dataset.digest().substr(0, 12), "); resubmit the study"));
  }
  return absl::OkStatus();
}

compute::ModelOptions ToModelOptions(const v1::ModelSpec& model) {
  compute::ModelOptions options;
  options.path = model.path();
  options.input_size = model.input_size();
  options.resize_size = model.resize_size();
  options.channels = model.channels();
  options.mean.assign(model.mean().begin(), model.mean().end());
  options.std.assign(model.std().begin(), model.std().end());
  return options;
}

}  // namespace sslbench::worker
