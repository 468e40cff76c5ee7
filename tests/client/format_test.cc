#include "client/format.h"

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench::client {
namespace {

using ::sslbench::client::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

v1::ListResultsResponse TwoResults() {
  v1::ListResultsResponse response;
  v1::ProbeResult* r = response.add_results();
  r->set_model("identity");
  r->set_dataset("fashion-mnist");
  r->set_protocol("knn");
  r->set_variant("cosine k=20 T=0.07");
  r->set_top1(0.8551);
  r->set_top5(0.9812);
  r->set_mean_per_class(0.85);
  r->add_per_class(0.5);
  r->add_per_class(0.75);
  r->set_config_json(R"({"k":20,"metric":"cosine"})");
  r->set_task_id(11);
  r->set_study_id(3);
  v1::ProbeResult* s = response.add_results();
  s->set_model("cnn");
  s->set_dataset("fashion-mnist");
  s->set_protocol("knn");
  s->set_variant("euclidean k=20");
  s->set_top1(0.1);
  return response;
}

TEST(FormatTest, ResultsTable) {
  const std::string table = FormatResultsTable(TwoResults());
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[0], HasSubstr("model"));
  EXPECT_THAT(lines[0], HasSubstr("top1 %"));
  EXPECT_THAT(lines[0], HasSubstr("mean-per-class %"));
  EXPECT_THAT(lines[0], HasSubstr("subset"));
  EXPECT_THAT(lines[0], HasSubstr("artifact"));
  EXPECT_THAT(lines[1], HasSubstr("identity"));
  EXPECT_THAT(lines[1], HasSubstr("full"));  // no subset: the full train split
  EXPECT_EQ(lines[1].back(), '-');            // no artefact
  EXPECT_THAT(lines[1], HasSubstr("cosine k=20 T=0.07"));
  EXPECT_THAT(lines[1], HasSubstr("85.51"));
  EXPECT_THAT(lines[1], HasSubstr("98.12"));
  EXPECT_THAT(lines[2], HasSubstr("10.00"));
  // Columns line up: every row is as wide as the header.
  EXPECT_EQ(lines[1].size(), lines[0].size());
}

TEST(FormatTest, ResultsCsvQuotesAndCarriesEverything) {
  const std::string csv = FormatResultsCsv(TwoResults());
  std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0],
            "study_id,task_id,model,dataset,protocol,variant,subset,num_seeds,top1,"
            "top1_std,top5,top5_std,mean_per_class,mean_per_class_std,seed_top1,"
            "artifact_id,per_class,config_json");
  EXPECT_EQ(lines[1],
            "3,11,identity,fashion-mnist,knn,cosine k=20 T=0.07,,0,0.8551,0,0.9812,0,"
            "0.85,0,,0,0.5;0.75,\"{\"\"k\"\":20,\"\"metric\"\":\"\"cosine\"\"}\"");
}

TEST(FormatTest, ResultsJson) {
  const std::string json = FormatResultsJson(TwoResults());
  EXPECT_THAT(json, HasSubstr("\"results\""));
  EXPECT_THAT(json, HasSubstr("\"per_class\""));
  EXPECT_THAT(json, HasSubstr("\"config_json\""));
  EXPECT_THAT(json, HasSubstr("\"mean_per_class\""));
  EXPECT_THAT(json, HasSubstr("0.8551"));
}

// A linear probe on the full train split (its head kept) and a 5-shot one,
// averaged over three seeds.
v1::ListResultsResponse SeededResults() {
  v1::ListResultsResponse response;
  v1::ProbeResult* full = response.add_results();
  full->set_model("cnn");
  full->set_dataset("fashion-mnist");
  full->set_protocol("linear");
  full->set_variant("lr=0.1");
  full->set_subset("full");
  full->set_num_seeds(1);
  full->set_top1(0.9);
  full->set_top5(0.99);
  full->set_mean_per_class(0.89);
  full->set_artifact_id(42);
  v1::ProbeResult* shots = response.add_results();
  shots->set_study_id(3);
  shots->set_task_id(12);
  shots->set_model("cnn");
  shots->set_dataset("fashion-mnist");
  shots->set_protocol("linear");
  shots->set_variant("lr=0.1");
  shots->set_subset("5-shot");
  shots->set_num_seeds(3);
  shots->set_top1(0.7123);
  shots->set_top1_std(0.0045);
  shots->set_top5(0.95);
  shots->set_top5_std(0.01);
  shots->set_mean_per_class(0.7);
  shots->set_mean_per_class_std(0.005);
  shots->add_seed_top1(0.71);
  shots->add_seed_top1(0.7123);
  shots->add_seed_top1(0.7146);
  return response;
}

// Terminal columns of a UTF-8 line.
size_t Columns(const std::string& line) {
  size_t n = 0;
  for (unsigned char c : line) n += (c & 0xC0) != 0x80;
  return n;
}

TEST(FormatTest, ResultsTableShowsSubsetSeedsAndArtifact) {
  const std::string table = FormatResultsTable(SeededResults());
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[1], HasSubstr("full"));
  EXPECT_THAT(lines[1], HasSubstr("90.00"));
  EXPECT_THAT(lines[1], Not(HasSubstr("\u00b1")));  // one seed: no deviation
  EXPECT_THAT(lines[1], ::testing::EndsWith("42"));
  EXPECT_THAT(lines[2], HasSubstr("5-shot"));
  EXPECT_THAT(lines[2], HasSubstr("71.23 \u00b1 0.45"));
  EXPECT_THAT(lines[2], HasSubstr("95.00 \u00b1 1.00"));
  EXPECT_THAT(lines[2], HasSubstr("70.00 \u00b1 0.50"));
  EXPECT_EQ(lines[2].back(), '-');
  // Columns line up on a terminal, multi-byte characters and all.
  EXPECT_EQ(Columns(lines[1]), Columns(lines[0]));
  EXPECT_EQ(Columns(lines[2]), Columns(lines[0]));
  // The top1 cell ends where its header does: "0.45" and "top1 %" end in the
  // same terminal column (one column fewer than bytes for the "±" before it).
  EXPECT_EQ(Columns(lines[2].substr(0, lines[2].find(" 0.45") + 5)),
            Columns(lines[0].substr(0, lines[0].find("top1 %") + 6)));
}

TEST(FormatTest, ResultsCsvAndJsonCarryTheSeedsAndArtifact) {
  const std::string csv = FormatResultsCsv(SeededResults());
  std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1], "0,0,cnn,fashion-mnist,linear,lr=0.1,full,1,0.9,0,0.99,0,0.89,0,,42,,");
  EXPECT_EQ(lines[2],
            "3,12,cnn,fashion-mnist,linear,lr=0.1,5-shot,3,0.7123,0.0045,0.95,0.01,0.7,"
            "0.005,0.71;0.7123;0.7146,0,,");

  const std::string json = FormatResultsJson(SeededResults());
  EXPECT_THAT(json, HasSubstr("\"subset\": \"5-shot\""));
  EXPECT_THAT(json, HasSubstr("\"num_seeds\": 3"));
  EXPECT_THAT(json, HasSubstr("\"top1_std\": 0.0045"));
  EXPECT_THAT(json, HasSubstr("\"top5_std\": 0.01"));
  EXPECT_THAT(json, HasSubstr("\"mean_per_class_std\": 0.005"));
  EXPECT_THAT(json, HasSubstr("\"seed_top1\""));
  EXPECT_THAT(json, HasSubstr("0.7146"));
  EXPECT_THAT(json, HasSubstr("\"artifact_id\": \"42\""));  // int64 as a string
}

TEST(FormatTest, TaskKindNames) {
  EXPECT_EQ(TaskKindName(v1::TASK_KIND_EXTRACT), "extract");
  EXPECT_EQ(TaskKindName(v1::TASK_KIND_KNN), "knn");
  EXPECT_EQ(TaskKindName(v1::TASK_KIND_LINEAR), "linear");
  EXPECT_EQ(TaskKindName(v1::TASK_KIND_LOGREG), "logreg");
  EXPECT_EQ(TaskKindName(v1::TASK_KIND_FINETUNE), "finetune");
}

TEST(FormatTest, FormatResultsChoosesByName) {
  EXPECT_TRUE(FormatResults(TwoResults(), "table").ok());
  EXPECT_TRUE(FormatResults(TwoResults(), "csv").ok());
  EXPECT_TRUE(FormatResults(TwoResults(), "json").ok());
  EXPECT_THAT(FormatResults(TwoResults(), "xml").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "xml"));
}

TEST(FormatTest, Durations) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(42.4), "42s");
  EXPECT_EQ(FormatDuration(185), "3:05");
  EXPECT_EQ(FormatDuration(3723), "1:02:03");
  EXPECT_EQ(FormatDuration(-1), "--");
}

TEST(FormatTest, WorkersTable) {
  v1::ListWorkersResponse workers;
  EXPECT_EQ(FormatWorkersTable(workers, 100), "no workers registered\n");
  v1::WorkerInfo* w = workers.add_workers();
  w->set_worker_id(1);
  w->set_name("worker-1");
  w->set_hostname("host-a");
  w->set_device("cpu");
  w->set_alive(true);
  w->set_last_seen_unix(95);
  w->set_current_task_id(17);
  const std::string table = FormatWorkersTable(workers, 100);
  EXPECT_THAT(table, HasSubstr("worker-1"));
  EXPECT_THAT(table, HasSubstr("host-a"));
  EXPECT_THAT(table, HasSubstr("5s ago"));
  EXPECT_THAT(table, HasSubstr("17"));
}

v1::StudyStatus Running(int64_t done, int64_t leased, int64_t work_done,
                        int64_t work_total) {
  v1::StudyStatus status;
  status.set_study_id(5);
  status.set_name("s");
  status.set_state(v1::STUDY_STATE_RUNNING);
  v1::TaskProgress* extract = status.add_progress();
  extract->set_kind(v1::TASK_KIND_EXTRACT);
  extract->set_total(4);
  extract->set_succeeded(done);
  extract->set_leased(leased);
  extract->set_pending(4 - done - leased);
  extract->set_work_done(work_done);
  extract->set_work_total(work_total);
  v1::TaskProgress* knn = status.add_progress();
  knn->set_kind(v1::TASK_KIND_KNN);
  knn->set_total(2);
  knn->set_pending(2);
  return status;
}

TEST(FormatTest, ProgressFractionCountsRunningWork) {
  const v1::StudyStatus s = Running(1, 2, 50, 100);
  // (1 done + 2 running at half) of 4.
  EXPECT_DOUBLE_EQ(ProgressBars::Fraction(s.progress(0)), 0.5);
  EXPECT_DOUBLE_EQ(ProgressBars::Fraction(s.progress(1)), 0.0);
}

TEST(FormatTest, ProgressBarsEstimateTheRemainingTime) {
  ProgressBars bars(10);
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  std::vector<std::string> lines = bars.Lines(Running(0, 1, 0, 100), t0);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr("extract"));
  EXPECT_THAT(lines[0], HasSubstr("0/4 done"));
  EXPECT_THAT(lines[0], HasSubstr("ETA --"));
  EXPECT_THAT(lines[1], HasSubstr("knn"));
  EXPECT_THAT(lines[1], HasSubstr("waiting"));

  // A quarter of the work in 10 s: 30 s to go.
  lines = bars.Lines(Running(1, 0, 0, 0), t0 + absl::Seconds(10));
  EXPECT_THAT(lines[0], HasSubstr("[##........]"));
  EXPECT_THAT(lines[0], HasSubstr("1/4 done"));
  EXPECT_THAT(lines[0], HasSubstr("ETA 30s"));

  lines = bars.Lines(Running(2, 1, 30, 60), t0 + absl::Seconds(25));
  EXPECT_THAT(lines[0], HasSubstr("work 30/60"));
  EXPECT_THAT(lines[0], HasSubstr("1 running"));

  lines = bars.Lines(Running(4, 0, 0, 0), t0 + absl::Seconds(40));
  EXPECT_THAT(lines[0], HasSubstr("[##########] 100%"));
  EXPECT_THAT(lines[0], Not(HasSubstr("ETA")));
}

TEST(FormatTest, StudyStatus) {
  v1::StudyStatus s = Running(1, 1, 1000, 60000);
  s.set_state(v1::STUDY_STATE_FAILED);
  s.set_error("task 3: model file is corrupt");
  s.set_elapsed_seconds(75);
  const std::string text = FormatStudyStatus(s);
  EXPECT_THAT(text, HasSubstr("study 5 \"s\": FAILED after 1:15"));
  EXPECT_THAT(text, HasSubstr("extract 1/4 done, 1 running, 2 pending"));
  EXPECT_THAT(text, HasSubstr("running work 1,000/60,000"));
  EXPECT_THAT(text, HasSubstr("error: task 3: model file is corrupt"));
}

}  // namespace
}  // namespace sslbench::client
