#pragma once
// Small, valid study specs for tests that do not touch files.

#include <string>

#include "absl/strings/str_cat.h"
#include "sslbench/v1/types.pb.h"

namespace sslbench::testing {

// `models` x `datasets` x one kNN protocol, with made-up content hashes.
inline v1::StudySpec MakeStudy(int models, int datasets, const std::string& name = "study") {
  v1::StudySpec spec;
  spec.set_name(name);
  for (int m = 0; m < models; ++m) {
    auto* model = spec.add_models();
    model->set_name(absl::StrCat("model", m));
    model->set_path(absl::StrCat("/models/model", m, ".pt"));
    model->set_channels(1);
    model->add_mean(0.0f);
    model->add_std(1.0f);
    model->set_sha256(std::string(63, 'a') + static_cast<char>('0' + m % 10));
  }
  for (int d = 0; d < datasets; ++d) {
    auto* dataset = spec.add_datasets();
    dataset->set_name(absl::StrCat("dataset", d));
    dataset->set_format("idx");
    dataset->set_root(absl::StrCat("/data/dataset", d));
    dataset->set_digest(absl::StrCat("digest", d));
  }
  auto* protocol = spec.add_protocols();
  protocol->set_name("knn");
  protocol->mutable_knn();
  return spec;
}

}  // namespace sslbench::testing
