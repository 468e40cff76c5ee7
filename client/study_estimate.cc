#include "client/study_estimate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/study_spec.h"
#include "server/planner.h"
#include "sslbench/v1/types.pb.h"
#include "worker/datasets/dataset_reader.h"

namespace sslbench::client {
namespace {

// Measured figures (bench/README.md, "Scale model"): one H200 node with 16
// cores; sslbench decodes ~470 images/s per core there (7,500 per node);
// PyTorch forwards ResNet-50 at 15,541 and ViT-B/16 at 6,744 images/s in
// bf16. Training (forward + backward) is taken as a third of the forward rate.
constexpr double kDecodePerNode = 7500;

// PyTorch on the same GPU, issue figures: DINO's kNN on 1,281,167 x 2048
// train and 50,000 test rows in 2.74 s; one linear-probe epoch over
// 1,281,167 x 2048 features in 1.10 s with one head, 4.82 s with 52.
constexpr double kKnnSeconds = 2.74;
constexpr double kKnnUnit = 1281167.0 * 50000.0 * 2048.0;
constexpr double kEpochSeconds = 1.10;
constexpr double kEpoch52Seconds = 4.82;
constexpr double kEpochUnit = 1281167.0 * 2048.0;
constexpr int kAssumedLbfgsIterations = 100;

std::string KindName(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_EXTRACT: return "extract";
    case v1::TASK_KIND_KNN: return "knn";
    case v1::TASK_KIND_LINEAR: return "linear";
    case v1::TASK_KIND_LOGREG: return "logreg";
    case v1::TASK_KIND_FINETUNE: return "finetune";
    default: return "other";
  }
}

std::string Count(double v) {
  // 1234567 -> "1,234,567"
  std::string digits = absl::StrFormat("%.0f", v);
  std::string out;
  const int n = static_cast<int>(digits.size());
  for (int i = 0; i < n; ++i) {
    out += digits[i];
    if (digits[i] != '-' && (n - i - 1) % 3 == 0 && i != n - 1) out += ',';
  }
  return out;
}

std::string Hours(double seconds) {
  if (seconds < 60) return absl::StrFormat("%.0f s", seconds);
  if (seconds < 3600) return absl::StrFormat("%.1f min", seconds / 60);
  return absl::StrFormat("%.1f h", seconds / 3600);
}

std::string Bytes(double b) {
  if (b < 1e9) return absl::StrFormat("%.0f MB", b / 1e6);
  if (b < 1e12) return absl::StrFormat("%.1f GB", b / 1e9);
  return absl::StrFormat("%.2f TB", b / 1e12);
}

int64_t Limited(int64_t n, int64_t limit) {
  if (n < 0) return n;
  return limit > 0 ? std::min(n, limit) : n;
}

}  // namespace

BackboneRate RateFor(const std::string& backbone, double fallback_images_per_second,
                     std::vector<std::string>* notes) {
  BackboneRate rate;
  double gpu_forward = 0;
  if (backbone == "resnet50") {
    gpu_forward = 15541;
    rate.feature_dim = 2048;
  } else if (backbone == "vit_b_16") {
    gpu_forward = 6744;
    rate.feature_dim = 768;
  }
  if (gpu_forward > 0) {
    rate.forward_images_per_second = std::min(kDecodePerNode, gpu_forward);
    rate.train_images_per_second = std::min(kDecodePerNode, gpu_forward / 3);
    return rate;
  }
  rate.forward_images_per_second = fallback_images_per_second;
  rate.train_images_per_second = fallback_images_per_second / 3;
  rate.feature_dim = 2048;
  if (notes != nullptr) {
    notes->push_back(absl::StrCat(
        "backbone \"", backbone.empty() ? "(none given)" : backbone,
        "\" has no measured rate: assumed ", Count(fallback_images_per_second),
        " images/s per node (--images_per_second) and 2048-d features"));
  }
  return rate;
}

std::map<std::string, SplitImages> CountImages(const v1::StudySpec& spec,
                                               const LocationRoots& locations) {
  std::map<std::string, SplitImages> out;
  for (const v1::DatasetSpec& d : spec.datasets()) {
    SplitImages images;
    std::error_code ec;
    const std::string root = ResolveLocation(d.root(), locations).value_or("");
    if (!root.empty() && std::filesystem::is_directory(root, ec)) {
      datasets::DatasetConfig config;
      config.format = d.format();
      config.root = root;
      absl::StatusOr<std::unique_ptr<datasets::DatasetReader>> reader =
          datasets::OpenDatasetReader(config);
      if (reader.ok()) {
        absl::StatusOr<datasets::SplitListing> train = (*reader)->List("train", d.train_limit());
        absl::StatusOr<datasets::SplitListing> test = (*reader)->List("test", d.test_limit());
        if (train.ok() && test.ok()) {
          images.train = static_cast<int64_t>(train->records.size());
          images.test = static_cast<int64_t>(test->records.size());
          images.source = "counted";
        }
      }
    }
    if (images.source.empty() && d.train_images() > 0 && d.test_images() > 0) {
      images.train = Limited(d.train_images(), d.train_limit());
      images.test = Limited(d.test_images(), d.test_limit());
      images.source = "declared";
    }
    if (images.source.empty()) images.source = "unknown";
    out[d.name()] = images;
  }
  return out;
}

absl::StatusOr<StudyEstimate> EstimateStudy(const v1::StudySpec& spec,
                                            const std::map<std::string, SplitImages>& images,
                                            double fallback_images_per_second) {
  ASSIGN_OR_RETURN(server::StudyPlan plan, server::PlanStudy(spec, ""));
  StudyEstimate e;
  e.images = images;
  std::set<std::string> unknown_backbones;
  std::set<std::string> unknown_datasets;
  auto rate_of = [&](const v1::ModelSpec& m) {
    std::vector<std::string> notes;
    BackboneRate rate = RateFor(m.backbone(), fallback_images_per_second, &notes);
    if (!notes.empty() && unknown_backbones.insert(m.backbone()).second) {
      e.notes.insert(e.notes.end(), notes.begin(), notes.end());
    }
    return rate;
  };
  auto split_images = [&](const v1::DatasetSpec& d, bool train) -> int64_t {
    auto it = images.find(d.name());
    const int64_t n = it == images.end() ? -1 : (train ? it->second.train : it->second.test);
    if (n < 0 && unknown_datasets.insert(d.name()).second) {
      e.notes.push_back(absl::StrCat("dataset \"", d.name(),
                                     "\": size unknown (folder not readable here and no "
                                     "train_images/test_images): left out of the estimate"));
    }
    return std::max<int64_t>(n, 0);
  };
  const double dtype_bytes = plan.spec.feature_dtype() == "float16" ? 2 : 4;

  for (const server::PlannedExtract& x : plan.extracts) {
    const v1::TaskSpec& t = x.spec;
    ++e.tasks_by_kind["extract"];
    const BackboneRate rate = rate_of(t.model());
    const int64_t n = split_images(t.dataset(), t.split() == "train");
    e.extract_images += n;
    e.extract_seconds += n / rate.forward_images_per_second;
    e.feature_bytes += static_cast<double>(n) * rate.feature_dim * dtype_bytes;
  }
  bool assumed_classes = false;
  for (const server::PlannedProbe& p : plan.probes) {
    const v1::TaskSpec& t = p.spec;
    ++e.tasks_by_kind[KindName(t.kind())];
    const BackboneRate rate = rate_of(t.model());
    const int64_t train = split_images(t.dataset(), true);
    const int64_t test = split_images(t.dataset(), false);
    // Rows a probe trains on, summed over its seeds.
    double rows = static_cast<double>(train);
    int runs = 1;
    if (t.has_subset()) {
      runs = std::max(1, t.subset().seeds_size());
      if (t.subset().fraction() > 0) {
        rows = train * t.subset().fraction();
      } else {
        rows = std::min<double>(train, t.subset().shots() * 1000.0);
        assumed_classes = true;
      }
    }
    const double dim = rate.feature_dim;
    const v1::ProtocolSpec& protocol = t.protocol();
    switch (t.kind()) {
      case v1::TASK_KIND_KNN:
        e.probe_seconds += runs * kKnnSeconds * rows * test * dim / kKnnUnit;
        break;
      case v1::TASK_KIND_LINEAR: {
        const int heads = std::max(1, protocol.linear().learning_rates_size());
        const double per_epoch =
            kEpochSeconds + (kEpoch52Seconds - kEpochSeconds) * (heads - 1) / 51.0;
        e.probe_seconds +=
            runs * protocol.linear().epochs() * per_epoch * rows * dim / kEpochUnit;
        break;
      }
      case v1::TASK_KIND_LOGREG: {
        const int cs = protocol.logreg().cs_size() > 0 ? protocol.logreg().cs_size()
                                                       : protocol.logreg().num_cs();
        const int iterations =
            std::min(protocol.logreg().max_iterations(), kAssumedLbfgsIterations);
        e.probe_seconds += runs * cs * iterations * kEpochSeconds * rows * dim / kEpochUnit;
        break;
      }
      case v1::TASK_KIND_FINETUNE: {
        const double passes = runs * protocol.finetune().epochs() * rows;
        e.finetune_images += static_cast<int64_t>(passes);
        e.finetune_seconds += passes / rate.train_images_per_second +
                              runs * static_cast<double>(test) / rate.forward_images_per_second;
        break;
      }
      default:
        break;
    }
  }
  for (const auto& [kind, n] : e.tasks_by_kind) e.tasks += n;
  if (assumed_classes) {
    e.notes.push_back("few-shot by images per class: 1,000 classes assumed for the estimate");
  }
  if (e.tasks_by_kind.count("logreg") > 0) {
    e.notes.push_back(absl::StrCat(
        "logistic regression: ", kAssumedLbfgsIterations,
        " L-BFGS iterations per C assumed, each costing one linear-probe epoch"));
  }
  std::set<std::string> backbones;
  for (const v1::ModelSpec& m : spec.models()) backbones.insert(m.backbone());
  for (const std::string& b : backbones) {
    if (unknown_backbones.count(b) > 0) continue;
    const BackboneRate rate = RateFor(b, fallback_images_per_second, nullptr);
    e.notes.push_back(absl::StrFormat(
        "%s: extraction %s images/s (the smaller of 16-core decode and the GPU's forward), "
        "fine-tuning %s images/s (a third of the forward), %d-d features",
        b, Count(rate.forward_images_per_second), Count(rate.train_images_per_second),
        rate.feature_dim));
  }
  return e;
}

std::string FormatEstimate(const v1::StudySpec& spec, const StudyEstimate& e) {
  std::string out;
  absl::StrAppend(&out, "study \"", spec.name(), "\": ", spec.models_size(), " models x ",
                  spec.datasets_size(), " datasets x ", spec.protocols_size(),
                  " protocols\n");
  absl::StrAppend(&out, "tasks: ", Count(static_cast<double>(e.tasks)));
  std::string sep = " (";
  for (const auto& [kind, n] : e.tasks_by_kind) {
    absl::StrAppend(&out, sep, kind, " ", Count(static_cast<double>(n)));
    sep = ", ";
  }
  absl::StrAppend(&out, ")\n\nimages per dataset (as the study uses them):\n");
  for (const v1::DatasetSpec& d : spec.datasets()) {
    auto it = e.images.find(d.name());
    if (it == e.images.end() || it->second.train < 0) {
      absl::StrAppend(&out, absl::StrFormat("  %-22s unknown\n", d.name()));
      continue;
    }
    absl::StrAppend(&out, absl::StrFormat("  %-22s train %12s  test %10s  (%s)\n", d.name(),
                                          Count(static_cast<double>(it->second.train)),
                                          Count(static_cast<double>(it->second.test)),
                                          it->second.source));
  }
  const double total = e.extract_seconds + e.finetune_seconds + e.probe_seconds;
  absl::StrAppend(&out, "\nestimated cost on one GPU node (H200, 16 cores; bench/README.md):\n");
  absl::StrAppend(&out, absl::StrFormat("  %-32s %16s images  %10s\n", "feature extraction",
                                        Count(static_cast<double>(e.extract_images)),
                                        Hours(e.extract_seconds)));
  absl::StrAppend(&out, absl::StrFormat("  %-32s %16s images  %10s\n",
                                        "fine-tuning (forward+backward)",
                                        Count(static_cast<double>(e.finetune_images)),
                                        Hours(e.finetune_seconds)));
  absl::StrAppend(&out, absl::StrFormat("  %-32s %16s         %10s\n",
                                        "probes on features", "", Hours(e.probe_seconds)));
  absl::StrAppend(&out, absl::StrFormat("  %-32s %16s         %10s  (%.1f h on 10 nodes)\n",
                                        "total", "", Hours(total), total / 3600 / 10));
  absl::StrAppend(&out, absl::StrFormat("  %-32s %16s\n",
                                        absl::StrCat("feature store (",
                                                     spec.feature_dtype().empty()
                                                         ? "float32"
                                                         : spec.feature_dtype(),
                                                     ")"),
                                        Bytes(e.feature_bytes)));
  if (!e.notes.empty()) {
    absl::StrAppend(&out, "\nassumptions:\n");
    for (const std::string& note : e.notes) absl::StrAppend(&out, "  - ", note, "\n");
  }
  return out;
}

}  // namespace sslbench::client
