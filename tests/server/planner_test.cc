#include "server/planner.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/study_fixtures.h"

namespace sslbench::server {
namespace {

using ::testing::HasSubstr;

TEST(PlannerTest, ExpandsModelsTimesDatasetsIntoExtractsAndProbes) {
  const v1::StudySpec spec = testing::MakeStudy(/*models=*/2, /*datasets=*/3);
  auto plan = PlanStudy(spec, "");
  ASSERT_TRUE(plan.ok()) << plan.status();
  // 2 models x 3 datasets x {train, test} extractions, 2 x 3 x 1 protocol probes.
  EXPECT_EQ(plan->extracts.size(), 12u);
  EXPECT_EQ(plan->probes.size(), 6u);
  std::set<std::string> keys;
  for (const auto& e : plan->extracts) {
    EXPECT_EQ(e.spec.kind(), v1::TASK_KIND_EXTRACT);
    EXPECT_EQ(e.spec.cache_key(), e.cache_key);
    keys.insert(e.cache_key);
  }
  EXPECT_EQ(keys.size(), 12u);
  for (const auto& p : plan->probes) {
    EXPECT_EQ(p.spec.kind(), v1::TASK_KIND_KNN);
    EXPECT_TRUE(keys.count(p.spec.train_cache_key()));
    EXPECT_TRUE(keys.count(p.spec.test_cache_key()));
    EXPECT_NE(p.spec.train_cache_key(), p.spec.test_cache_key());
  }
}

TEST(PlannerTest, AppliesProtocolDefaults) {
  auto plan = PlanStudy(testing::MakeStudy(1, 1), "");
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto& knn = plan->probes[0].spec.protocol().knn();
  EXPECT_THAT(std::vector<int>(knn.ks().begin(), knn.ks().end()),
              ::testing::ElementsAre(10, 20, 100, 200));
  EXPECT_DOUBLE_EQ(knn.temperature(), 0.07);
  EXPECT_EQ(knn.euclidean_k(), 20);
  EXPECT_EQ(plan->spec.max_attempts(), 3);
}

TEST(PlannerTest, IdenticalModelsShareExtractions) {
  v1::StudySpec spec = testing::MakeStudy(2, 1);
  // Same bytes and preprocessing under another name: same features.
  spec.mutable_models(1)->set_sha256(spec.models(0).sha256());
  auto plan = PlanStudy(spec, "");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->extracts.size(), 2u);
  EXPECT_EQ(plan->probes.size(), 2u);
}

TEST(PlannerTest, CacheKeyChangesWithEveryInput) {
  const v1::StudySpec base = testing::MakeStudy(1, 1);
  const std::string key = PlanStudy(base, "")->extracts[0].cache_key;
  auto key_after = [&](auto mutate) {
    v1::StudySpec spec = base;
    mutate(spec);
    return PlanStudy(spec, "")->extracts[0].cache_key;
  };
  EXPECT_NE(key, key_after([](v1::StudySpec& s) { s.mutable_models(0)->set_sha256(std::string(64, 'f')); }));
  EXPECT_NE(key, key_after([](v1::StudySpec& s) { s.mutable_models(0)->set_mean(0, 0.5f); }));
  EXPECT_NE(key, key_after([](v1::StudySpec& s) { s.mutable_models(0)->set_input_size(32); }));
  EXPECT_NE(key, key_after([](v1::StudySpec& s) { s.mutable_datasets(0)->set_digest("other"); }));
  EXPECT_NE(key, key_after([](v1::StudySpec& s) { s.mutable_datasets(0)->set_train_limit(100); }));
  // Names and protocols do not change what the backbone computes.
  EXPECT_EQ(key, key_after([](v1::StudySpec& s) { s.mutable_models(0)->set_name("renamed"); }));
  EXPECT_EQ(key, key_after([](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_knn()->set_temperature(0.1); }));
}

TEST(PlannerTest, FewShotSettingsBecomeOneTaskEachWithAllSeeds) {
  v1::StudySpec spec = testing::MakeStudy(1, 1);
  auto* linear = spec.add_protocols();
  linear->set_name("linear-fs");
  linear->mutable_linear();
  linear->mutable_few_shot()->add_shots(5);
  linear->mutable_few_shot()->add_shots(10);
  linear->mutable_few_shot()->add_fractions(0.01);
  auto plan = PlanStudy(spec, "");
  ASSERT_TRUE(plan.ok()) << plan.status();
  // knn on the full split + 3 few-shot settings of the linear probe.
  ASSERT_EQ(plan->probes.size(), 4u);
  EXPECT_EQ(plan->probes[0].spec.kind(), v1::TASK_KIND_KNN);
  EXPECT_FALSE(plan->probes[0].spec.has_subset());
  for (int i = 1; i < 4; ++i) {
    const auto& task = plan->probes[i].spec;
    EXPECT_EQ(task.kind(), v1::TASK_KIND_LINEAR);
    EXPECT_EQ(task.subset().seeds_size(), 3);  // default seeds {0, 1, 2}
  }
  EXPECT_EQ(plan->probes[1].spec.subset().shots(), 5);
  EXPECT_EQ(plan->probes[2].spec.subset().shots(), 10);
  EXPECT_DOUBLE_EQ(plan->probes[3].spec.subset().fraction(), 0.01);
  // The protocol defaults of DESIGN.md.
  const auto& params = plan->probes[1].spec.protocol().linear();
  EXPECT_EQ(params.learning_rates_size(), 8);
  EXPECT_EQ(params.epochs(), 100);
  EXPECT_EQ(params.batch_size(), 1024);
  EXPECT_DOUBLE_EQ(params.momentum(), 0.9);
}

TEST(PlannerTest, ExplicitZeroIsKeptWhereZeroIsMeaningful) {
  v1::StudySpec spec = testing::MakeStudy(1, 1);
  auto* linear = spec.add_protocols();
  linear->set_name("plain-sgd");
  linear->mutable_linear()->set_momentum(0);
  linear->mutable_linear()->set_warmup_epochs(0);
  auto plan = PlanStudy(spec, "");
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto& params = plan->probes[1].spec.protocol().linear();
  EXPECT_DOUBLE_EQ(params.momentum(), 0);
  EXPECT_EQ(params.warmup_epochs(), 0);
}

TEST(PlannerTest, FineTuningAloneNeedsNoFeatureExtraction) {
  v1::StudySpec spec = testing::MakeStudy(2, 1);
  spec.mutable_protocols(0)->Clear();
  spec.mutable_protocols(0)->set_name("finetune");
  auto plan = PlanStudy(spec, "");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->extracts.empty());
  ASSERT_EQ(plan->probes.size(), 2u);
  EXPECT_EQ(plan->probes[0].spec.kind(), v1::TASK_KIND_FINETUNE);
  EXPECT_TRUE(plan->probes[0].spec.train_cache_key().empty());
  EXPECT_EQ(plan->probes[0].spec.protocol().finetune().optimizer(), "sgd");
}

TEST(PlannerTest, RejectsMalformedSpecsNamingTheField) {
  struct Case {
    std::function<void(v1::StudySpec&)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](v1::StudySpec& s) { s.set_name(""); }, "name"},
      {[](v1::StudySpec& s) { s.clear_models(); }, "models"},
      {[](v1::StudySpec& s) { s.mutable_models(0)->set_path("relative.pt"); }, "models[0].path"},
      {[](v1::StudySpec& s) { s.mutable_models(0)->set_channels(2); }, "models[0].channels"},
      {[](v1::StudySpec& s) { s.mutable_models(0)->add_std(1.0f); s.mutable_models(0)->add_std(1.0f); }, "models[0].std"},
      {[](v1::StudySpec& s) { s.mutable_models(0)->set_std(0, 0.0f); }, "models[0].std"},
      {[](v1::StudySpec& s) { *s.add_models() = s.models(0); }, "models[1].name"},
      {[](v1::StudySpec& s) { s.mutable_datasets(0)->set_format("lmdb"); }, "datasets[0].format"},
      {[](v1::StudySpec& s) { s.mutable_datasets(0)->set_train_limit(-1); }, "datasets[0].train_limit"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_knn()->set_temperature(-1); }, "protocols[0].temperature"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_knn()->add_ks(0); }, "protocols[0].ks"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->clear_knn(); s.mutable_protocols(0)->set_name("svm"); }, "protocols[0]"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_linear()->add_learning_rates(-1); }, "protocols[0].learning_rates"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_linear()->set_val_fraction(1.5); }, "protocols[0].val_fraction"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_logreg()->add_cs(0); }, "protocols[0].cs"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_finetune()->set_optimizer("lamb"); }, "protocols[0].optimizer"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_few_shot()->add_shots(0); }, "protocols[0].few_shot.shots"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_few_shot()->add_fractions(2); }, "protocols[0].few_shot.fractions"},
      {[](v1::StudySpec& s) { s.mutable_protocols(0)->mutable_few_shot(); }, "protocols[0].few_shot"},
  };
  for (const auto& c : cases) {
    v1::StudySpec spec = testing::MakeStudy(1, 1);
    c.mutate(spec);
    auto plan = PlanStudy(spec, "");
    ASSERT_FALSE(plan.ok()) << "expected an error naming " << c.field;
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr(c.field + ":"));
  }
}

}  // namespace
}  // namespace sslbench::server

namespace sslbench::server {
namespace {

// No field may carry megabytes into every task: a 2 MB path, a list of
// thousands of values or an oversized spec is refused, naming the field.
TEST(PlannerTest, OversizedFieldsAreRefusedNamingTheField) {
  v1::StudySpec path = testing::MakeStudy(1, 1);
  path.mutable_models(0)->set_path("/" + std::string(2 << 20, 'a'));
  auto plan = PlanStudy(path, "");
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("spec:"));

  v1::StudySpec label = testing::MakeStudy(1, 1);
  label.mutable_models(0)->set_family(std::string(5000, 'f'));
  plan = PlanStudy(label, "");
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("models[0].family: 5000 bytes"));

  v1::StudySpec ks = testing::MakeStudy(1, 1);
  auto* knn = ks.mutable_protocols(0)->mutable_knn();
  for (int k = 1; k <= 2000; ++k) knn->add_ks(k);
  plan = PlanStudy(ks, "");
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("protocols[0].knn.ks: 2000 entries"));
}

TEST(PlannerTest, StudiesOverTheLimitsAreRefusedBeforeExpansion) {
  // 3 models x 2 datasets x (2 extractions + 1 probe) = 18 tasks.
  const v1::StudySpec spec = testing::MakeStudy(3, 2);
  PlanLimits limits;
  limits.max_tasks = 18;
  EXPECT_TRUE(PlanStudy(spec, "", limits).ok());
  limits.max_tasks = 17;
  auto plan = PlanStudy(spec, "", limits);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("18 tasks"));
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("at most 17"));

  // Paths of 4 KB are allowed once, but not copied into 18 tasks past a
  // 64 KiB budget.
  v1::StudySpec long_paths = spec;
  for (auto& m : *long_paths.mutable_models()) m.set_path("/" + std::string(4000, 'p'));
  limits = PlanLimits();
  limits.max_task_bytes = 64 << 10;
  plan = PlanStudy(long_paths, "", limits);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("task specs"));
  limits.max_task_bytes = 1 << 20;
  EXPECT_TRUE(PlanStudy(long_paths, "", limits).ok());
}

}  // namespace
}  // namespace sslbench::server

namespace sslbench::server {
namespace {

// The coordinator checks the shape of paths itself (the CLI is not the only
// caller): no device files, no `..`.
TEST(PlannerTest, PathsIntoDevicesOrWithDotDotAreRefused) {
  const struct {
    const char* path;
    const char* error;
  } cases[] = {{"/dev/zero", "is under /dev"},
               {"/proc/self/environ", "is under /proc"},
               {"/models/../etc/shadow", "must not contain . or .. components"},
               {"models/m.pt", "must be an absolute path"}};
  for (const auto& c : cases) {
    v1::StudySpec spec = testing::MakeStudy(1, 1);
    spec.mutable_models(0)->set_path(c.path);
    auto plan = PlanStudy(spec, "");
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << c.path;
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr(c.error)) << c.path;
  }
  v1::StudySpec root = testing::MakeStudy(1, 1);
  root.mutable_datasets(0)->set_root("/sys/kernel");
  EXPECT_THAT(std::string(PlanStudy(root, "").status().message()),
              HasSubstr("datasets[0].root"));
}

}  // namespace
}  // namespace sslbench::server
