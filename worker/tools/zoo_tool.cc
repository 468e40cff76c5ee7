// sslbench-zoo: builds the model zoo (worker/compute/pretrain_zoo.h); run by
// `sslbench zoo build`, which finds it beside itself.
//
//   sslbench-zoo --out=DIR [--steps=300] [--batch_size=64]
//       [--train_images=20000] [--seed=0] [--threads=2] [--only=a,b]
//
// Prints progress on stderr and one line per model on stdout.

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "worker/compute/feature_extractor.h"
#include "worker/compute/pretrain_zoo.h"
#include "worker/tools/tool_util.h"

ABSL_FLAG(std::string, out, "", "folder of the models");
ABSL_FLAG(std::string, fmnist, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX folder");
ABSL_FLAG(int, steps, 300, "optimizer steps per model");
ABSL_FLAG(int, batch_size, 64, "images per step");
ABSL_FLAG(int64_t, train_images, 20000, "first N train images");
ABSL_FLAG(uint64_t, seed, 0, "seed of every run");
ABSL_FLAG(int, threads, 2, "LibTorch threads");
ABSL_FLAG(std::string, only, "", "comma-separated model names (default: all)");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using namespace sslbench;
  compute::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  compute::ZooOptions o;
  o.out = absl::GetFlag(FLAGS_out);
  o.fmnist_root = absl::GetFlag(FLAGS_fmnist);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.batch_size = absl::GetFlag(FLAGS_batch_size);
  o.train_images = absl::GetFlag(FLAGS_train_images);
  o.seed = absl::GetFlag(FLAGS_seed);
  const std::string only = absl::GetFlag(FLAGS_only);
  if (!only.empty()) o.only = absl::StrSplit(only, ',', absl::SkipEmpty());
  auto zoo = compute::BuildZoo(o, [](const std::string& model, int step, int steps) {
    std::fprintf(stderr, "\rsslbench: zoo: %-18s step %4d / %d", model.c_str(), step, steps);
    if (step == steps) std::fprintf(stderr, "\n");
  });
  if (!zoo.ok()) tools::Die("sslbench-zoo", zoo.status());
  for (const compute::ZooModel& m : *zoo) {
    std::printf("%-18s %-12s %-10s %-22s loss %8.4f  %s\n", m.name.c_str(), m.backbone.c_str(),
                m.method.c_str(), m.family.c_str(), m.final_loss,
                m.cached ? "(reused)" : (std::to_string(static_cast<int>(m.seconds + 0.5)) + " s").c_str());
  }
  return 0;
}
