#include "worker/probe_tasks.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/build_info.h"
#include "common/status_macros.h"
#include "worker/compute/linear_probe.h"
#include "worker/compute/logistic_regression.h"

namespace sslbench::worker {
namespace {

using Outcome = SeedOutcome;

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) return "null";
  return out;
}

std::string Doubles(const std::vector<double>& values) {
  return absl::StrCat("[", absl::StrJoin(values, ",", [](std::string* out, double v) {
                        absl::StrAppend(out, absl::StrFormat("%.10g", v));
                      }), "]");
}

// `max_k` caps every k: the smallest train set over the task's seeds, so all
// seeds report the same variants.
// Labels must number the classes 0..C-1 with every class in train: a label
// out of the dataset's range (255 in a 10-class set) would otherwise add
// empty classes that skew mean per-class accuracy. Returns the train images
// per class.
absl::StatusOr<std::vector<int64_t>> CheckLabels(const std::vector<int32_t>& train,
                                                 const std::vector<int32_t>& test,
                                                 int num_classes) {
  std::vector<int64_t> per_class(static_cast<size_t>(std::max(num_classes, 0)), 0);
  for (int32_t label : train) {
    if (label < 0) return absl::InvalidArgumentError(absl::StrCat("train label ", label, " < 0"));
    ++per_class[static_cast<size_t>(label)];
  }
  for (int32_t label : test) {
    if (label < 0) return absl::InvalidArgumentError(absl::StrCat("test label ", label, " < 0"));
  }
  std::vector<int> missing;
  for (int c = 0; c < num_classes; ++c) {
    if (per_class[static_cast<size_t>(c)] == 0) missing.push_back(c);
  }
  if (missing.empty()) return per_class;
  const int max_train = train.empty() ? -1 : *std::max_element(train.begin(), train.end());
  const int max_test = test.empty() ? -1 : *std::max_element(test.begin(), test.end());
  const size_t shown = std::min<size_t>(missing.size(), 5);
  return absl::InvalidArgumentError(absl::StrCat(
      "labels: ", missing.size(), " of the ", num_classes, " classes 0..", num_classes - 1,
      " have no train image (", absl::StrJoin(missing.begin(), missing.begin() + shown, ", "),
      missing.size() > shown ? ", ..." : "", "); the largest label is ", max_train,
      " in train and ", max_test, " in test. Labels must number the classes 0..C-1, "
      "each with train images"));
}

absl::StatusOr<std::vector<Outcome>> RunKnnOnce(const v1::KnnParams& params,
                                                const compute::FeatureMatrix& train,
                                                const compute::FeatureMatrix& test,
                                                int num_classes, int64_t max_k,
                                                const compute::ProgressFn& progress,
                                                const std::string& device) {
  compute::KnnOptions options;
  options.device = device;
  options.ks.assign(params.ks().begin(), params.ks().end());
  options.temperature = params.temperature();
  options.temperatures.assign(params.temperatures().begin(), params.temperatures().end());
  options.euclidean_k = params.euclidean_k() > 0 ? params.euclidean_k() : 0;
  options.test_chunk_rows = params.test_chunk_rows();
  options.train_chunk_rows = params.train_chunk_rows();
  // A k larger than the (few-shot) train set is refused, not clamped: a
  // clamped k would report a number under a name it does not have.
  for (int k : options.ks) {
    if (k > max_k) {
      return absl::InvalidArgumentError(absl::StrCat(
          "protocol knn: k=", k, " is larger than the ", max_k,
          " train images it would vote among; use ks of at most ", max_k));
    }
  }
  if (options.euclidean_k > max_k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "protocol knn: euclidean_k=", options.euclidean_k, " is larger than the ", max_k,
        " train images it would vote among"));
  }
  ASSIGN_OR_RETURN(auto results, compute::RunKnn(train, test, num_classes, options, progress));
  std::vector<Outcome> outcomes;
  for (auto& r : results) {
    Outcome o;
    o.variant = r.variant == "cosine" ? absl::StrFormat("cosine k=%d T=%g", r.k, r.temperature)
                                      : absl::StrFormat("euclidean k=%d", r.k);
    o.metrics = std::move(r.metrics);
    o.selected_json = absl::StrFormat(R"({"k":%d,"temperature":%s})", r.k,
                                      r.variant == "cosine" ? absl::StrFormat("%g", r.temperature)
                                                            : "null");
    outcomes.push_back(std::move(o));
  }
  return outcomes;
}

absl::StatusOr<std::vector<Outcome>> RunLinearOnce(const v1::LinearParams& params, int64_t seed,
                                                   const compute::FeatureMatrix& train,
                                                   const compute::FeatureMatrix& test,
                                                   int num_classes,
                                                   const compute::ProgressFn& progress,
                                                   const std::string& device) {
  compute::LinearProbeOptions options;
  options.device = device;
  options.learning_rates.assign(params.learning_rates().begin(), params.learning_rates().end());
  options.batch_norm = params.batch_norm();
  options.standardize = params.standardize();
  options.epochs = params.epochs();
  options.batch_size = static_cast<int>(std::min<int64_t>(params.batch_size(), train.rows));
  options.warmup_epochs = std::min(params.warmup_epochs(), std::max(0, params.epochs() - 1));
  options.momentum = params.momentum();
  options.weight_decay = params.weight_decay();
  options.grad_clip = params.grad_clip();
  options.init_std = params.init_std();
  options.val_fraction = params.val_fraction();
  options.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(auto r, compute::RunLinearProbe(train, test, num_classes, options, progress));
  Outcome o;
  o.variant = params.batch_norm() ? "linear bn" : "linear";
  o.metrics = std::move(r.test);
  o.selected_json = absl::StrFormat(R"({"learning_rate":%.10g,"held_out_top1":%s})",
                                    r.best_learning_rate, Doubles(r.held_out_top1));
  o.head = EncodeHead(
      absl::StrFormat(
          R"({"format":"sslbench-linear-head/1","num_classes":%d,"dim":%d,"batch_norm":%s,)"
          R"("standardize":%s,"layout":["weight[num_classes,dim]","bias[num_classes]"%s%s]})",
          num_classes, r.dim, params.batch_norm() ? "true" : "false",
          params.standardize() ? "true" : "false",
          params.batch_norm() ? R"(,"bn_running_mean[dim]","bn_running_var[dim]")" : "",
          params.standardize() ? R"(,"standardize_mean[dim]","standardize_std[dim]")" : ""),
      r.head);
  return std::vector<Outcome>{std::move(o)};
}

absl::StatusOr<std::vector<Outcome>> RunLogRegOnce(const v1::LogRegParams& params, int64_t seed,
                                                   const compute::FeatureMatrix& train,
                                                   const compute::FeatureMatrix& test,
                                                   int num_classes,
                                                   const compute::ProgressFn& progress,
                                                   const std::string& device) {
  compute::LogisticRegressionOptions options;
  options.device = device;
  options.cs.assign(params.cs().begin(), params.cs().end());
  options.num_cs = params.num_cs();
  options.c_min = params.c_min();
  options.c_max = params.c_max();
  options.val_fraction = params.val_fraction();
  options.max_iterations = params.max_iterations();
  options.tolerance = params.tolerance();
  options.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(auto r,
                   compute::RunLogisticRegression(train, test, num_classes, options, progress));
  Outcome o;
  o.variant = "logreg";
  o.metrics = std::move(r.test);
  o.selected_json = absl::StrFormat(R"({"c":%.10g,"cs":%s,"held_out_top1":%s,"iterations":%d})",
                                    r.best_c, Doubles(r.cs), Doubles(r.held_out_top1),
                                    r.iterations);
  o.head = EncodeHead(
      absl::StrFormat(R"({"format":"sslbench-linear-head/1","num_classes":%d,"dim":%d,)"
                      R"("batch_norm":false,"standardize":false,)"
                      R"("layout":["weight[num_classes,dim]","bias[num_classes]"]})",
                      num_classes, r.dim),
      r.head);
  return std::vector<Outcome>{std::move(o)};
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

// Sample standard deviation (n - 1); 0 for a single value.
double Std(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = Mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

}  // namespace

std::string SubsetName(const v1::Subset& subset) {
  if (subset.shots() > 0) return absl::StrCat(subset.shots(), "-shot");
  if (subset.fraction() > 0) return absl::StrFormat("%g%%", subset.fraction() * 100);
  return "full";
}

compute::FeatureMatrix SelectRows(const compute::FeatureMatrix& m,
                                  const std::vector<int64_t>& rows) {
  compute::FeatureMatrix out;
  out.rows = static_cast<int64_t>(rows.size());
  out.dim = m.dim;
  out.data.resize(static_cast<size_t>(out.rows * out.dim));
  out.labels.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(out.data.data() + i * m.dim, m.data.data() + rows[i] * m.dim,
                static_cast<size_t>(m.dim) * sizeof(float));
    out.labels[i] = m.labels[rows[i]];
  }
  return out;
}

std::string EncodeHead(const std::string& header_json, const std::vector<float>& values) {
  std::string out = header_json + "\n";
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return out;
}

std::vector<int64_t> TaskSeeds(const v1::TaskSpec& spec) {
  const v1::ProtocolSpec& protocol = spec.protocol();
  std::vector<int64_t> seeds;
  if (spec.subset().shots() > 0 || spec.subset().fraction() > 0) {
    seeds.assign(spec.subset().seeds().begin(), spec.subset().seeds().end());
    if (seeds.empty()) seeds.push_back(0);
  } else {
    seeds.push_back(protocol.has_linear()     ? protocol.linear().seed()
                    : protocol.has_logreg()   ? protocol.logreg().seed()
                    : protocol.has_finetune() ? protocol.finetune().seed()
                                              : 0);
  }
  return seeds;
}

compute::ImageSet SelectImages(const compute::ImageSet& images, const std::vector<int64_t>& rows) {
  compute::ImageSet out;
  out.count = static_cast<int64_t>(rows.size());
  out.channels = images.channels;
  out.height = images.height;
  out.width = images.width;
  out.num_classes = images.num_classes;
  const int64_t bytes = images.image_bytes();
  out.pixels.resize(static_cast<size_t>(out.count * bytes));
  out.labels.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(out.pixels.data() + i * bytes, images.pixels.data() + rows[i] * bytes,
                static_cast<size_t>(bytes));
    out.labels[i] = images.labels[rows[i]];
  }
  return out;
}

v1::ProbeResult AggregateSeeds(const v1::TaskSpec& spec, const std::string& variant,
                               const std::vector<int64_t>& seeds,
                               const std::vector<SeedOutcome>& runs,
                               const std::vector<int64_t>& train_rows_used,
                               int64_t train_rows, int64_t test_rows, int64_t dim,
                               int num_classes, const SkippedImages& skipped) {
  const v1::ProtocolSpec& protocol = spec.protocol();
  std::vector<double> top1, top5, mpc;
  for (const auto& o : runs) {
    top1.push_back(o.metrics.top1);
    top5.push_back(o.metrics.top5);
    mpc.push_back(o.metrics.mean_per_class);
  }
  v1::ProbeResult result;
  result.set_model(spec.model().name());
  result.set_dataset(spec.dataset().name());
  result.set_protocol(protocol.name());
  result.set_variant(variant);
  result.set_subset(SubsetName(spec.subset()));
  result.set_num_seeds(static_cast<int32_t>(runs.size()));
  result.set_top1(Mean(top1));
  result.set_top5(Mean(top5));
  result.set_mean_per_class(Mean(mpc));
  result.set_top1_std(Std(top1));
  result.set_top5_std(Std(top5));
  result.set_mean_per_class_std(Std(mpc));
  for (double t : top1) result.add_seed_top1(t);
  // Per-class accuracy: mean over seeds (NaN stays NaN for absent classes).
  const size_t classes = runs.empty() ? 0 : runs[0].metrics.per_class.size();
  for (size_t c = 0; c < classes; ++c) {
    double sum = 0;
    for (const auto& o : runs) sum += o.metrics.per_class[c];
    result.add_per_class(sum / static_cast<double>(runs.size()));
  }
  // The head of the first seed is kept as the task's artefact.
  if (!runs.empty() && !runs[0].head.empty()) result.set_artifact(runs[0].head);
  std::vector<std::string> selected;
  for (const auto& o : runs) selected.push_back(o.selected_json);
  std::vector<double> rows_used(train_rows_used.begin(), train_rows_used.end());
  const bool few_shot = spec.subset().shots() > 0 || spec.subset().fraction() > 0;
  result.set_config_json(absl::StrCat(
      "{\"protocol\":", Json(protocol), ",\"variant\":\"", variant, "\",\"subset\":",
      few_shot ? Json(spec.subset()) : std::string("null"), ",\"seeds\":[",
      absl::StrJoin(seeds, ","), "],\"selected\":[", absl::StrJoin(selected, ","),
      "],\"train_rows_used\":", Doubles(rows_used), ",\"train_rows\":", train_rows,
      ",\"test_rows\":", test_rows,
      skipped.train + skipped.test > 0
          ? absl::StrCat(",\"skipped_images\":{\"train\":", skipped.train, ",\"test\":",
                         skipped.test, "}")
          : std::string(),
      ",\"dim\":", dim, ",\"num_classes\":", num_classes,
      ",\"model\":", Json(spec.model()), ",\"dataset\":", Json(spec.dataset()),
      ",\"train_cache\":\"", spec.train_cache_key(), "\",\"test_cache\":\"",
      spec.test_cache_key(), "\",\"versions\":{\"sslbench\":\"", kSslbenchVersion,
      "\",\"libtorch\":\"", kLibTorchVersion, "\",\"protobuf\":\"", kProtobufVersion,
      "\",\"grpc\":\"", kGrpcVersion, "\",\"compiler\":\"", kCompilerVersion, "\"}}"));
  return result;
}

absl::StatusOr<std::vector<v1::ProbeResult>> RunProbeTask(
    const v1::TaskSpec& spec, const compute::FeatureMatrix& train,
    const compute::FeatureMatrix& test, const compute::ProgressFn& progress,
    const SkippedImages& skipped, const std::string& device) {
  const v1::ProtocolSpec& protocol = spec.protocol();
  const bool kind_fits = (spec.kind() == v1::TASK_KIND_KNN && protocol.has_knn()) ||
                         (spec.kind() == v1::TASK_KIND_LINEAR && protocol.has_linear()) ||
                         (spec.kind() == v1::TASK_KIND_LOGREG && protocol.has_logreg());
  if (!kind_fits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task kind ", v1::TaskKind_Name(spec.kind()), " does not fit protocol \"",
        protocol.name(), "\""));
  }
  int num_classes = 0;
  for (int32_t label : train.labels) num_classes = std::max(num_classes, label + 1);
  for (int32_t label : test.labels) num_classes = std::max(num_classes, label + 1);
  ASSIGN_OR_RETURN(const std::vector<int64_t> train_per_class,
                   CheckLabels(train.labels, test.labels, num_classes));

  const bool few_shot = spec.subset().shots() > 0 || spec.subset().fraction() > 0;
  const std::vector<int64_t> seeds = TaskSeeds(spec);

  // variant -> per-seed outcomes, in seed order.
  std::map<std::string, std::vector<Outcome>> by_variant;
  std::vector<std::string> order;
  std::vector<int64_t> train_rows_used;
  std::vector<std::vector<int64_t>> subset_rows(seeds.size());
  int64_t max_k = train.rows;
  if (const int shots = spec.subset().shots(); shots > 0) {
    const auto fewest = std::min_element(train_per_class.begin(), train_per_class.end());
    if (*fewest < shots) {
      return absl::InvalidArgumentError(absl::StrCat(
          shots, "-shot needs ", shots, " train images of every class; class ",
          fewest - train_per_class.begin(), " has ", *fewest));
    }
  }
  if (few_shot) {
    for (size_t s = 0; s < seeds.size(); ++s) {
      subset_rows[s] = compute::SelectFewShot(train.labels, num_classes, spec.subset().shots(),
                                              spec.subset().fraction(),
                                              static_cast<uint64_t>(seeds[s]));
      max_k = std::min<int64_t>(max_k, static_cast<int64_t>(subset_rows[s].size()));
    }
  }
  for (size_t s = 0; s < seeds.size(); ++s) {
    const compute::FeatureMatrix* fit = &train;
    compute::FeatureMatrix subset;
    if (few_shot) {
      subset = SelectRows(train, subset_rows[s]);
      fit = &subset;
    }
    train_rows_used.push_back(fit->rows);
    // Progress across seeds: each seed is an equal share.
    compute::ProgressFn seed_progress = nullptr;
    if (progress) {
      seed_progress = [&, s](int64_t done, int64_t total) {
        const int64_t scale = 1000;
        return progress(static_cast<int64_t>(s) * scale + (total > 0 ? done * scale / total : 0),
                        static_cast<int64_t>(seeds.size()) * scale);
      };
    }
    absl::StatusOr<std::vector<Outcome>> outcomes;
    if (protocol.has_knn()) {
      outcomes = RunKnnOnce(protocol.knn(), *fit, test, num_classes, max_k, seed_progress, device);
    } else if (protocol.has_linear()) {
      outcomes = RunLinearOnce(protocol.linear(), seeds[s], *fit, test, num_classes, seed_progress,
                               device);
    } else {
      outcomes = RunLogRegOnce(protocol.logreg(), seeds[s], *fit, test, num_classes, seed_progress,
                               device);
    }
    if (!outcomes.ok()) return outcomes.status();
    for (auto& o : *outcomes) {
      if (!by_variant.count(o.variant)) order.push_back(o.variant);
      by_variant[o.variant].push_back(std::move(o));
    }
  }

  std::vector<v1::ProbeResult> results;
  for (const std::string& variant : order) {
    results.push_back(AggregateSeeds(spec, variant, seeds, by_variant[variant], train_rows_used,
                                     train.rows, test.rows, train.dim, num_classes, skipped));
  }
  return results;
}

}  // namespace sslbench::worker
