// End to end with the real binaries over loopback: sslbench-coordinator,
// sslbench-worker and the sslbench CLI, a real PostgreSQL, real LibTorch, and
// Fashion-MNIST as Debian ships it.

#include <grpcpp/grpcpp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sys/inotify.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/subprocess.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sslbench/v1/client_api.grpc.pb.h"
#include "sslbench/v1/worker_api.grpc.pb.h"
#include "tests/testing/http_get.h"
#include "tests/testing/test_postgres.h"
#include "worker/compute/knn.h"

namespace sslbench {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kBinDir[] = SSLBENCH_BIN_DIR;
constexpr char kSourceDir[] = SSLBENCH_SOURCE_DIR;
constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist";

std::string Bin(const std::string& name) { return absl::StrCat(kBinDir, "/", name); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Waits for `path` to hold a port number written by a child, failing early
// if the child dies: woken by inotify when a file in its folder is written,
// and by the child's exit (Wait), with a deadline.
absl::StatusOr<int> WaitForPortFile(const std::string& path, Subprocess& child,
                                    const std::string& log) {
  const int watch = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (watch < 0) return absl::InternalError("inotify_init1 failed");
  inotify_add_watch(watch, fs::path(path).parent_path().c_str(),
                    IN_CLOSE_WRITE | IN_MOVED_TO | IN_MODIFY);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  absl::StatusOr<int> result =
      absl::DeadlineExceededError(absl::StrCat("no port in ", path));
  while (absl::Now() < deadline) {
    int port = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(path)), &port) && port > 0) {
      result = port;
      break;
    }
    // Until something in the folder is written; at most a second, so that a
    // child that died is noticed.
    pollfd p{watch, POLLIN, 0};
    poll(&p, 1, static_cast<int>(std::min<int64_t>(
                    absl::ToInt64Milliseconds(deadline - absl::Now()) + 1, 1000)));
    char events[4096];
    while (read(watch, events, sizeof(events)) > 0) {
    }
    if (!child.Running()) {
      result = absl::InternalError(absl::StrCat("process exited early; log:\n", ReadFile(log)));
      break;
    }
  }
  close(watch);
  return result;
}

// Waits until the file at `path` contains `text` (woken by inotify when its
// folder changes, at least every second), up to `timeout`.
bool WaitForFileToContain(const std::string& path, const std::string& text,
                          absl::Duration timeout) {
  const int watch = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (watch < 0) return false;
  inotify_add_watch(watch, fs::path(path).parent_path().c_str(),
                    IN_CLOSE_WRITE | IN_MOVED_TO | IN_MODIFY);
  const absl::Time deadline = absl::Now() + timeout;
  bool found = false;
  while (!(found = ReadFile(path).find(text) != std::string::npos) && absl::Now() < deadline) {
    pollfd p{watch, POLLIN, 0};
    poll(&p, 1, 1000);
    char events[4096];
    while (read(watch, events, sizeof(events)) > 0) {
    }
  }
  close(watch);
  return found;
}

class EndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // scripts/install-deps.sh installs it: its absence is a broken setup.
    ASSERT_TRUE(fs::exists(absl::StrCat(kFashionMnist, "/train-images-idx3-ubyte.gz")))
        << "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)";
    char dir[] = "/tmp/sslbench-e2e-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    auto db = testing::FreshDatabase();
    ASSERT_TRUE(db.ok()) << db.status();
    database_ = *db;
    auto made = RunCommand({Bin("sslbench-make-models"), dir_ + "/models"});
    ASSERT_TRUE(made.ok() && made->exit_code == 0) << (made.ok() ? made->output : "");
  }

  void TearDown() override {
    for (auto& w : workers_) w->Stop();
    workers_.clear();
    if (coordinator_) coordinator_->Stop();
    if (!dir_.empty() && !HasFailure()) fs::remove_all(dir_);
  }

  // `name` names its log (NAME.log) and port file: replicas each their own.
  void StartCoordinator(std::vector<std::string> extra = {},
                        const std::string& name = "coordinator") {
    const std::string port_file = absl::StrCat(dir_, "/", name, ".port");
    const std::string log = absl::StrCat(dir_, "/", name, ".log");
    std::vector<std::string> argv = {Bin("sslbench-coordinator"),
                                     "--listen=" + listen_host_ + ":0",
                                     "--metrics_listen=127.0.0.1:0", "--port_file=" + port_file,
                                     "--database=" + database_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto started = Subprocess::Start(argv, log);
    ASSERT_TRUE(started.ok()) << started.status();
    coordinator_ = *std::move(started);
    auto port = WaitForPortFile(port_file, *coordinator_, log);
    ASSERT_TRUE(port.ok()) << port.status();
    address_ = absl::StrCat(listen_host_, ":", *port);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    auto channel = grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
    studies_ = v1::StudyService::NewStub(channel);
    worker_api_ = v1::WorkerService::NewStub(channel);
  }

  // Returns the worker's metrics port.
  int StartWorker(const std::string& name, std::vector<std::string> extra = {}) {
    const std::string port_file = absl::StrCat(dir_, "/", name, ".metrics-port");
    const std::string log = absl::StrCat(dir_, "/", name, ".log");
    std::vector<std::string> argv = {Bin("sslbench-worker"), "--coordinator=" + address_,
                                     "--name=" + name, "--threads=2",
                                     "--metrics_listen=127.0.0.1:0",
                                     "--metrics_port_file=" + port_file};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto started = Subprocess::Start(argv, log);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return 0;
    workers_.push_back(*std::move(started));
    auto port = WaitForPortFile(port_file, *workers_.back(), log);
    EXPECT_TRUE(port.ok()) << port.status();
    return port.ok() ? *port : 0;
  }

  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), {Bin("sslbench"), "--coordinator=" + address_});
    auto r = RunCommand(args);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CommandResult{};
  }

  std::string WriteStudy(const std::string& name, const std::string& models_yaml,
                         int64_t train_limit, int64_t test_limit,
                         const std::string& protocols_yaml = "  - name: knn\n    ks: [10, 20]\n") {
    const std::string path = absl::StrCat(dir_, "/", name, ".yaml");
    std::ofstream(path) << "name: " << name << "\nmodels:\n" << models_yaml
                        << "datasets:\n  - name: fashion-mnist\n    format: idx\n"
                        << "    root: " << kFashionMnist << "\n    role: in-domain\n"
                        << "    train_limit: " << train_limit << "\n    test_limit: " << test_limit
                        << "\nprotocols:\n" << protocols_yaml;
    return path;
  }

  absl::StatusOr<v1::Artifact> Artifact(int64_t id) {
    grpc::ClientContext context;
    v1::GetArtifactRequest request;
    request.set_artifact_id(id);
    v1::Artifact artifact;
    const grpc::Status status = studies_->GetArtifact(&context, request, &artifact);
    if (!status.ok()) return absl::UnknownError(status.error_message());
    return artifact;
  }

  // Follows the study's status stream (WatchStudy, an update every 50 ms)
  // until `done` holds for an update; false if the study ends first or
  // `timeout` passes.
  bool WatchUntil(int64_t study, const std::function<bool(const v1::StudyStatus&)>& done,
                  absl::Duration timeout = absl::Minutes(2)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    v1::WatchStudyRequest request;
    request.set_study_id(study);
    request.set_interval_ms(50);
    std::unique_ptr<grpc::ClientReader<v1::StudyStatus>> stream =
        studies_->WatchStudy(&context, request);
    v1::StudyStatus status;
    bool reached = false;
    while (!reached && stream->Read(&status)) reached = done(status);
    context.TryCancel();
    stream->Finish().IgnoreError();
    return reached;
  }

  // Until a running extraction reports more than `rows` images done: the
  // moment to interrupt something.
  bool WaitForExtractedRows(int64_t study, int64_t rows) {
    return WatchUntil(study, [rows](const v1::StudyStatus& status) {
      for (const auto& p : status.progress()) {
        if (p.kind() == v1::TASK_KIND_EXTRACT && p.work_done() > rows) return true;
      }
      return false;
    });
  }

  bool HasCheckpoint(int64_t task_id) {
    grpc::ClientContext context;
    v1::GetCheckpointRequest request;
    request.set_task_id(task_id);
    v1::Checkpoint checkpoint;
    return worker_api_->GetCheckpoint(&context, request, &checkpoint).ok();
  }

  static std::string TwoModels() {
    return "  - name: identity\n    path: models/identity.pt\n    channels: 1\n"
           "    mean: [0.0]\n    std: [1.0]\n"
           "  - name: cnn\n    path: models/cnn.pt\n    channels: 1\n"
           "    mean: [0.2860]\n    std: [0.3530]\n";
  }

  int64_t Submit(const std::string& study) {
    const CommandResult r = Cli({"submit", study});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    int64_t id = 0;
    for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &id)) break;
    }
    EXPECT_GT(id, 0) << r.output;
    return id;
  }

  v1::ListResultsResponse Results(int64_t study) {
    grpc::ClientContext context;
    v1::ListResultsRequest request;
    request.set_study_id(study);
    v1::ListResultsResponse response;
    EXPECT_TRUE(studies_->ListResults(&context, request, &response).ok());
    return response;
  }

  // Downloads a complete feature cache through the worker API.
  compute::FeatureMatrix Features(const std::string& key) {
    compute::FeatureMatrix m;
    grpc::ClientContext context;
    v1::GetFeatureCacheRequest request;
    request.set_cache_key(key);
    v1::FeatureCacheInfo info;
    EXPECT_TRUE(worker_api_->GetFeatureCache(&context, request, &info).ok());
    EXPECT_TRUE(info.complete());
    m.rows = info.num_rows();
    m.dim = info.dim();
    m.data.resize(m.rows * m.dim);
    m.labels.resize(m.rows);
    for (int c = 0; c < info.num_chunks(); ++c) {
      grpc::ClientContext chunk_context;
      v1::GetFeatureChunkRequest chunk_request;
      chunk_request.set_cache_key(key);
      chunk_request.set_chunk_index(c);
      v1::FeatureChunk chunk;
      EXPECT_TRUE(worker_api_->GetFeatureChunk(&chunk_context, chunk_request, &chunk).ok());
      std::memcpy(m.data.data() + chunk.row_start() * m.dim, chunk.features().data(),
                  chunk.features().size());
      std::memcpy(m.labels.data() + chunk.row_start(), chunk.labels().data(),
                  chunk.labels().size());
    }
    return m;
  }

  std::string dir_;
  std::string database_;
  std::string listen_host_ = "127.0.0.1";  // the coordinators' address
  std::string address_;
  std::unique_ptr<Subprocess> coordinator_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::unique_ptr<v1::StudyService::Stub> studies_;
  std::unique_ptr<v1::WorkerService::Stub> worker_api_;
};

// Two models x full Fashion-MNIST x kNN, through the CLI, the coordinator and
// a worker; results checked against independent computations; a second
// identical study served from the feature cache.
TEST_F(EndToEndTest, StudyCompletesMatchesReferencesAndReusesFeatures) {
  StartCoordinator();
  const int metrics_port = StartWorker("worker-1");
  const std::string study_file = WriteStudy("fmnist", TwoModels(), 0, 0);
  const int64_t study = Submit(study_file);

  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output;

  const auto results = Results(study);
  // Per model: cosine k=10, k=20, Euclidean k=20.
  ASSERT_EQ(results.results_size(), 6);
  std::map<std::string, v1::ProbeResult> by_name;
  for (const auto& r : results.results()) by_name[r.model() + "/" + r.variant()] = r;
  ASSERT_TRUE(by_name.count("identity/euclidean k=20"));
  ASSERT_TRUE(by_name.count("cnn/cosine k=20 T=0.07"));
  const auto& identity = by_name["identity/euclidean k=20"];
  EXPECT_THAT(identity.config_json(), HasSubstr("\"train_rows\":60000"));
  EXPECT_EQ(identity.per_class_size(), 10);

  // The identity model's Euclidean kNN equals scikit-learn's on raw pixels.
  const std::string python = "/usr/bin/python3";
  auto sklearn = RunCommand({python, absl::StrCat(kSourceDir, "/bench/knn_sklearn_parity.py"),
                             "--root", kFashionMnist});
  ASSERT_TRUE(sklearn.ok());
  ASSERT_EQ(sklearn->exit_code, 0) << sklearn->output;
  const auto pos = sklearn->output.find("\"sklearn_euclidean_k20_top1\": ");
  ASSERT_NE(pos, std::string::npos) << sklearn->output;
  double sklearn_top1 = 0;
  ASSERT_TRUE(absl::SimpleAtod(
      sklearn->output.substr(pos + 30, sklearn->output.find_first_of(",}", pos + 30) - pos - 30),
      &sklearn_top1))
      << sklearn->output;
  EXPECT_DOUBLE_EQ(identity.top1(), sklearn_top1)
      << "service " << identity.top1() << " vs scikit-learn " << sklearn_top1;
  std::printf("identity euclidean k=20 top-1: service %.4f, scikit-learn %.4f\n",
              identity.top1(), sklearn_top1);

  // The CNN's accuracies equal an in-process computation on the stored features.
  const std::string cnn_config = by_name["cnn/cosine k=20 T=0.07"].config_json();
  auto key_of = [&](const std::string& field) {
    const auto p = cnn_config.find("\"" + field + "\":\"");
    const auto start = p + field.size() + 4;
    return cnn_config.substr(start, cnn_config.find('"', start) - start);
  };
  const auto train = Features(key_of("train_cache"));
  const auto test = Features(key_of("test_cache"));
  EXPECT_EQ(train.rows, 60000);
  EXPECT_EQ(test.rows, 10000);
  compute::KnnOptions options;
  options.ks = {10, 20};
  auto local = compute::RunKnn(train, test, 10, options);
  ASSERT_TRUE(local.ok()) << local.status();
  for (const auto& r : *local) {
    const std::string name = r.variant == "cosine"
                                 ? absl::StrCat("cnn/cosine k=", r.k, " T=0.07")
                                 : absl::StrCat("cnn/euclidean k=", r.k);
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_DOUBLE_EQ(by_name[name].top1(), r.metrics.top1) << name;
    EXPECT_DOUBLE_EQ(by_name[name].top5(), r.metrics.top5) << name;
    EXPECT_DOUBLE_EQ(by_name[name].mean_per_class(), r.metrics.mean_per_class) << name;
  }

  // The worker serves Prometheus metrics beside LibTorch.
  auto scraped = testing::HttpGet(metrics_port, "/metrics");
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  EXPECT_THAT(*scraped, HasSubstr("sslbench_worker_images_total 140000"));
  EXPECT_THAT(*scraped,
              HasSubstr("sslbench_worker_tasks_total{kind=\"extract\",outcome=\"succeeded\"} 4"));

  // The same study again: every feature set comes from the cache.
  const std::string again_file = WriteStudy("fmnist-again", TwoModels(), 0, 0);
  const CommandResult again = Cli({"submit", again_file});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("4 feature extractions reused"));
  int64_t again_id = 0;
  for (absl::string_view line : absl::StrSplit(again.output, '\n')) {
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &again_id)) break;
  }
  ASSERT_GT(again_id, 0);
  ASSERT_EQ(Cli({"watch", absl::StrCat(again_id)}).exit_code, 0);
  const auto again_results = Results(again_id);
  ASSERT_EQ(again_results.results_size(), 6);
  for (const auto& r : again_results.results()) {
    EXPECT_DOUBLE_EQ(r.top1(), by_name[r.model() + "/" + r.variant()].top1());
  }
  scraped = testing::HttpGet(metrics_port, "/metrics");
  ASSERT_TRUE(scraped.ok());
  EXPECT_THAT(*scraped, HasSubstr("sslbench_worker_images_total 140000"))
      << "features were extracted again";

  const CommandResult table = Cli({"results", absl::StrCat(study)});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_THAT(table.output, HasSubstr("identity"));
  EXPECT_THAT(table.output, HasSubstr("euclidean k=20"));
}

// A corrupt model file fails its extraction for good with a clear message;
// the study fails and `watch` says why.
TEST_F(EndToEndTest, CorruptModelFailsTheStudyWithAClearError) {
  StartCoordinator();
  StartWorker("worker-1");
  std::ofstream(dir_ + "/models/broken.pt") << "this is not a TorchScript archive";
  const std::string study_file = WriteStudy(
      "broken",
      "  - name: broken\n    path: models/broken.pt\n    channels: 1\n", 500, 100);
  const int64_t study = Submit(study_file);
  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  EXPECT_EQ(watched.exit_code, 1) << watched.output;
  EXPECT_THAT(watched.output, HasSubstr("failed to load model"));
  EXPECT_THAT(watched.output, HasSubstr("broken.pt"));
}

// A study names its files by file:// URIs: the CLI finds them under its
// --file_root, the worker under its own (another folder), and the spec keeps
// the URIs. A worker whose root holds other bytes refuses the model.
TEST_F(EndToEndTest, ClientAndWorkersFindFilesUnderTheirOwnRoots) {
  namespace fs = std::filesystem;
  for (const char* root : {"client-root", "worker-root", "stale-root"}) {
    fs::create_directories(dir_ + "/" + root + "/models");
    fs::create_directories(dir_ + "/" + root + "/data");
    fs::copy_file(dir_ + "/models/identity.pt", dir_ + "/" + root + "/models/identity.pt");
    fs::create_directory_symlink(kFashionMnist, dir_ + "/" + root + "/data/fashion-mnist");
  }
  std::ofstream(dir_ + "/stale-root/models/identity.pt", std::ios::app) << "appended";
  const std::string study_file = dir_ + "/uris.yaml";
  std::ofstream(study_file)
      << "name: uris\nmodels:\n  - name: identity\n    path: file:///models/identity.pt\n"
      << "    channels: 1\ndatasets:\n  - name: fashion-mnist\n"
      << "    root: file:///data/fashion-mnist\n    train_limit: 2000\n    test_limit: 500\n"
      << "protocols:\n  - name: knn\n    ks: [10]\n    euclidean_k: -1\n";
  StartCoordinator();

  // Not found where the CLI looks: the error names the local path.
  const CommandResult elsewhere = Cli({"submit", study_file, "--file_root=" + dir_ + "/nowhere"});
  EXPECT_EQ(elsewhere.exit_code, 1);
  EXPECT_THAT(elsewhere.output, HasSubstr(dir_ + "/nowhere/models/identity.pt"));

  const CommandResult submitted =
      Cli({"submit", study_file, "--file_root=" + dir_ + "/client-root"});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;
  const int64_t study = std::stoll(submitted.output);
  StartWorker("stale", {"--file_root=" + dir_ + "/stale-root"});
  const CommandResult stale = Cli({"watch", absl::StrCat(study)});
  EXPECT_EQ(stale.exit_code, 1) << stale.output;
  EXPECT_THAT(stale.output, HasSubstr("changed since the study was submitted"));

  // The same study again, served by a worker whose root has the right bytes.
  workers_.clear();
  const CommandResult again = Cli({"submit", study_file, "--file_root=" + dir_ + "/client-root"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  const int64_t good = std::stoll(again.output);
  StartWorker("rooted", {"--file_root=" + dir_ + "/worker-root"});
  const CommandResult watched = Cli({"watch", absl::StrCat(good)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output;
  const v1::ListResultsResponse results = Results(good);
  ASSERT_EQ(results.results_size(), 1);
  EXPECT_GT(results.results(0).top1(), 0.5);
  grpc::ClientContext context;
  v1::GetStudyRequest request;
  request.set_study_id(good);
  request.set_include_spec(true);
  v1::StudyStatus status;
  ASSERT_TRUE(studies_->GetStudy(&context, request, &status).ok());
  EXPECT_EQ(status.spec().models(0).path(), "file:///models/identity.pt");
  EXPECT_EQ(status.spec().datasets(0).root(), "file:///data/fashion-mnist");

  // The study's feature caches, listed and one dropped by its key prefix
  // (authentication is off here, so the caller acts as an admin).
  const CommandResult listed = Cli({"cache", "list", absl::StrCat(good)});
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  std::vector<std::string> rows;
  for (absl::string_view line : absl::StrSplit(listed.output, '\n')) {
    if (absl::StrContains(line, "identity")) rows.emplace_back(line);
  }
  ASSERT_EQ(rows.size(), 2u) << listed.output;
  EXPECT_THAT(rows[0], HasSubstr("complete"));
  EXPECT_THAT(rows[0], HasSubstr("0 task(s)"));
  const std::string prefix = rows[0].substr(0, 16);
  const CommandResult dropped = Cli({"cache", "drop", prefix});
  EXPECT_EQ(dropped.exit_code, 0) << dropped.output;
  EXPECT_THAT(dropped.output, HasSubstr("dropped feature cache " + prefix));
  const CommandResult after = Cli({"cache", "list", absl::StrCat(good)});
  EXPECT_THAT(after.output, Not(HasSubstr(prefix))) << after.output;
}

// The coordinator is killed mid-study and restarted on the same database:
// the worker rides out the gap and the study completes with nothing lost.
TEST_F(EndToEndTest, CoordinatorRestartMidStudyLosesNothing) {
  // A fixed port, so the worker finds the restarted coordinator.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string listen = absl::StrCat("--listen=127.0.0.1:", ntohs(addr.sin_port));
  close(fd);

  StartCoordinator({listen, "--lease_seconds=10", "--heartbeat_ms=500"});
  StartWorker("worker-1", {"--chunk_kib=64", "--threads=1"});
  const int64_t study = Submit(WriteStudy(
      "restart", "  - name: cnn\n    path: models/cnn.pt\n    channels: 1\n", 30000, 2000));
  const bool progressed = WaitForExtractedRows(study, 2000);
  ASSERT_TRUE(progressed);
  coordinator_->Kill();
  fs::remove(dir_ + "/coordinator.port");
  StartCoordinator({listen, "--lease_seconds=10", "--heartbeat_ms=500"});

  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output << ReadFile(dir_ + "/worker-1.log");
  EXPECT_EQ(Results(study).results_size(), 3);
  EXPECT_THAT(ReadFile(dir_ + "/worker-1.log"), HasSubstr("retrying"));
}

// Two coordinator replicas on one database, one SIGKILLed mid-study while
// its worker extracts: the other replica reaps the lease that died with it,
// its own worker finishes, and every result is stored once.
TEST_F(EndToEndTest, TwoReplicasOneKilledMidStudyLoseNothing) {
  StartCoordinator({"--lease_seconds=3", "--heartbeat_ms=500"}, "replica-a");
  std::unique_ptr<Subprocess> replica_a = std::move(coordinator_);
  StartWorker("worker-a", {"--chunk_kib=64", "--threads=1"});
  const int64_t study = Submit(WriteStudy("replicas", TwoModels(), 20000, 2000));
  ASSERT_TRUE(WaitForExtractedRows(study, 2000)) << ReadFile(dir_ + "/worker-a.log");
  StartCoordinator({"--lease_seconds=3", "--heartbeat_ms=500"}, "replica-b");
  StartWorker("worker-b", {"--chunk_kib=64", "--threads=1"});
  replica_a->Kill();

  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output << ReadFile(dir_ + "/replica-b.log");
  const v1::ListResultsResponse results = Results(study);
  std::set<std::string> distinct;
  for (const auto& r : results.results()) {
    distinct.insert(absl::StrCat(r.model(), "/", r.protocol(), "/", r.variant()));
    EXPECT_GT(r.top1(), 0.3) << r.model() << " " << r.variant();  // chance is 0.1
  }
  EXPECT_EQ(results.results_size(), 6);  // 2 models x kNN x 3 variants
  EXPECT_EQ(distinct.size(), 6u);
  EXPECT_THAT(ReadFile(dir_ + "/replica-b.log"), HasSubstr("lease expired"));
  // The same study again, undisturbed, on the features the first one stored:
  // the same figures.
  const int64_t again = Submit(WriteStudy("replicas-again", TwoModels(), 20000, 2000));
  ASSERT_EQ(Cli({"watch", absl::StrCat(again)}).exit_code, 0);
  std::map<std::string, double> first, second;
  for (const auto& r : results.results()) first[r.model() + "/" + r.variant()] = r.top1();
  const v1::ListResultsResponse undisturbed = Results(again);
  for (const auto& r : undisturbed.results()) second[r.model() + "/" + r.variant()] = r.top1();
  EXPECT_EQ(first, second);
}

// Runs `argv`; a failed command fails the test with its output.
void Must(const std::vector<std::string>& argv) {
  auto r = RunCommand(argv);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->exit_code, 0) << absl::StrJoin(argv, " ") << ":\n" << r->output;
}

// A network namespace joined to this one by a veth pair, with a /30 of its
// own: nothing in it reaches anything but the test's two addresses (and its
// own loopback). Removed, with the pair, on destruction.
class Partition {
 public:
  Partition() {
    const int n = static_cast<int>(getpid() % 250) + 1;
    name_ = absl::StrCat("sbpart", getpid());
    host_if_ = absl::StrCat("sbh", getpid() % 1000000);
    host_ip_ = absl::StrCat("10.213.", n, ".1");
    inner_ip_ = absl::StrCat("10.213.", n, ".2");
    inner_if_ = absl::StrCat("sbn", getpid() % 1000000);
    const std::string& inner_if = inner_if_;
    Must({"ip", "netns", "add", name_});
    Must({"ip", "link", "add", host_if_, "type", "veth", "peer", "name", inner_if});
    Must({"ip", "link", "set", inner_if, "netns", name_});
    Must({"ip", "addr", "add", host_ip_ + "/30", "dev", host_if_});
    Must({"ip", "link", "set", host_if_, "up"});
    Must({"ip", "netns", "exec", name_, "ip", "addr", "add", inner_ip_ + "/30", "dev", inner_if});
    Must({"ip", "netns", "exec", name_, "ip", "link", "set", inner_if, "up"});
    Must({"ip", "netns", "exec", name_, "ip", "link", "set", "lo", "up"});
  }
  ~Partition() {
    RunCommand({"ip", "netns", "del", name_}).IgnoreError();  // takes the pair with it
    RunCommand({"ip", "link", "del", host_if_}).IgnoreError();
  }
  // The link down on the namespace's side (packets dropped, no reset: a
  // cable pulled; this side keeps its address) or up again.
  void Cut() { Must(Inside({"ip", "link", "set", inner_if_, "down"})); }
  void Heal() { Must(Inside({"ip", "link", "set", inner_if_, "up"})); }
  // `argv` run inside the namespace.
  std::vector<std::string> Inside(std::vector<std::string> argv) const {
    argv.insert(argv.begin(), {"ip", "netns", "exec", name_});
    return argv;
  }
  const std::string& host_ip() const { return host_ip_; }

 private:
  std::string name_, host_if_, inner_if_, host_ip_, inner_ip_;
};

// A worker in its own network namespace is cut off mid-extraction: its lease
// expires, a worker on the other side finishes the study, and when the link
// comes back the cut-off worker's late calls are refused by the fence.
TEST_F(EndToEndTest, WorkerCutOffByAPartitionIsFencedOut) {
  Partition partition;
  listen_host_ = partition.host_ip();  // reachable from both sides
  StartCoordinator({"--lease_seconds=3", "--heartbeat_ms=500"});
  const std::string victim_log = dir_ + "/cut-off.log";
  auto victim = Subprocess::Start(
      partition.Inside({Bin("sslbench-worker"), "--coordinator=" + address_, "--name=cut-off",
                        "--threads=1", "--metrics_listen=", "--chunk_kib=64"}),
      victim_log);
  ASSERT_TRUE(victim.ok()) << victim.status();
  const int64_t study = Submit(WriteStudy(
      "partition", "  - name: cnn\n    path: models/cnn.pt\n    channels: 1\n", 60000, 2000));
  ASSERT_TRUE(WaitForExtractedRows(study, 2000)) << ReadFile(victim_log);
  partition.Cut();
  StartWorker("rescuer", {"--chunk_kib=64"});
  // The coordinator gives the cut-off worker's task to the other worker,
  // which resumes it from the chunks already stored (the link stays cut
  // until then, so the cut-off worker cannot take its task back)...
  ASSERT_TRUE(WaitForFileToContain(dir_ + "/rescuer.log", "resumed", absl::Minutes(2)))
      << ReadFile(dir_ + "/coordinator.log") << ReadFile(dir_ + "/rescuer.log");
  EXPECT_THAT(ReadFile(dir_ + "/coordinator.log"), HasSubstr("lease expired"));
  // ... and when the link returns, the cut-off worker learns it lost it.
  partition.Heal();
  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output << ReadFile(dir_ + "/coordinator.log");
  EXPECT_EQ(Results(study).results_size(), 3);
  EXPECT_TRUE(WaitForFileToContain(victim_log, "lease lost", absl::Minutes(1)))
      << ReadFile(victim_log);
  (*victim)->Stop();
}

// A worker killed mid-extraction: its lease expires, another worker resumes
// from the chunks already stored, and the study completes.
TEST_F(EndToEndTest, WorkerKilledMidTaskIsReplacedWithoutLosingChunks) {
  StartCoordinator({"--lease_seconds=3", "--heartbeat_ms=500"});
  const std::string worker_log = dir_ + "/victim.log";
  auto victim = Subprocess::Start({Bin("sslbench-worker"), "--coordinator=" + address_,
                                   "--name=victim", "--threads=1", "--metrics_listen=",
                                   "--chunk_kib=64"},
                                  worker_log);
  ASSERT_TRUE(victim.ok());
  const std::string study_file = WriteStudy(
      "preempted",
      "  - name: cnn\n    path: models/cnn.pt\n    channels: 1\n", 20000, 2000);
  const int64_t study = Submit(study_file);

  // Wait until the victim has stored some chunks of its extraction.
  const bool progressed = WaitForExtractedRows(study, 2000);
  ASSERT_TRUE(progressed) << ReadFile(worker_log);
  (*victim)->Kill();

  StartWorker("rescuer");
  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output << ReadFile(dir_ + "/coordinator.log");
  EXPECT_EQ(Results(study).results_size(), 3);
  EXPECT_THAT(ReadFile(dir_ + "/coordinator.log"), HasSubstr("lease expired"));
  EXPECT_THAT(ReadFile(dir_ + "/rescuer.log"), HasSubstr("resumed"));
}

// Every protocol through the service on one model: kNN (full and few-shot),
// linear probe, logistic regression and fine-tuning; the stored linear head
// reproduces the reported accuracy; fine-tuning beats the frozen linear probe.
TEST_F(EndToEndTest, AllProtocolsRunAndKeepTheirHeads) {
  StartCoordinator();
  // Heads go up in parts of 1 KiB (PutArtifactPart), joined by the store.
  StartWorker("worker-1", {"--artifact_part_kib=1"});
  const std::string study_file = WriteStudy(
      "all-protocols", "  - name: cnn\n    path: models/cnn.pt\n    channels: 1\n"
                       "    mean: [0.2860]\n    std: [0.3530]\n",
      10000, 2000,
      "  - name: knn\n    ks: [10]\n    euclidean_k: -1\n"
      "  - name: knn-fewshot\n    kind: knn\n    ks: [5]\n    euclidean_k: -1\n"
      "    few_shot: {shots: [10], seeds: [0, 1]}\n"
      "  - name: linear\n    epochs: 20\n    batch_size: 256\n    warmup_epochs: 2\n"
      "    learning_rates: [0.1, 0.3, 1.0]\n    standardize: true\n"
      "  - name: logreg\n    cs: [0.1, 1.0, 10.0]\n"
      "  - name: finetune\n    epochs: 6\n    learning_rate: 0.4\n    batch_size: 64\n"
      "    batch_norm: true\n    min_scale: 0.6\n    no_flip: true\n");
  const int64_t study = Submit(study_file);
  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output << ReadFile(dir_ + "/worker-1.log");

  std::map<std::string, v1::ProbeResult> by_protocol;
  const v1::ListResultsResponse all = Results(study);
  for (const auto& r : all.results()) by_protocol[r.protocol()] = r;
  ASSERT_EQ(by_protocol.size(), 5u);
  const auto& fewshot = by_protocol["knn-fewshot"];
  EXPECT_EQ(fewshot.subset(), "10-shot");
  EXPECT_EQ(fewshot.num_seeds(), 2);
  EXPECT_EQ(fewshot.seed_top1_size(), 2);
  EXPECT_NEAR(fewshot.top1(), (fewshot.seed_top1(0) + fewshot.seed_top1(1)) / 2, 1e-12);
  EXPECT_LT(fewshot.top1(), by_protocol["knn"].top1()) << "10 images per class beat 10,000";

  // The linear head is stored and reproduces the reported test accuracy.
  const auto& linear = by_protocol["linear"];
  ASSERT_GT(linear.artifact_id(), 0);
  EXPECT_THAT(linear.config_json(), HasSubstr("\"learning_rate\""));
  EXPECT_THAT(linear.config_json(), HasSubstr("\"libtorch\""));
  auto artifact = Artifact(linear.artifact_id());
  ASSERT_TRUE(artifact.ok()) << artifact.status();
  const std::string& data = artifact->data();
  EXPECT_GT(data.size(), 1024u) << "more than one part of 1 KiB";
  EXPECT_EQ(artifact->total_bytes(), static_cast<int64_t>(data.size()));
  const size_t newline = data.find('\n');
  ASSERT_NE(newline, std::string::npos);
  const std::string header = data.substr(0, newline);
  EXPECT_THAT(header, HasSubstr("\"standardize\":true"));
  const std::string config = linear.config_json();
  const auto key_start = config.find("\"test_cache\":\"") + 14;
  const auto test = Features(config.substr(key_start, config.find('"', key_start) - key_start));
  const int64_t classes = 10, dim = test.dim;
  const size_t values = (data.size() - newline - 1) / sizeof(float);
  ASSERT_EQ(values, static_cast<size_t>(classes * dim + classes + 2 * dim)) << header;
  std::vector<float> head(values);
  std::memcpy(head.data(), data.data() + newline + 1, values * sizeof(float));
  const float* weight = head.data();
  const float* bias = weight + classes * dim;
  const float* mean = bias + classes;
  const float* stddev = mean + dim;
  int64_t correct = 0;
  for (int64_t i = 0; i < test.rows; ++i) {
    int best = 0;
    double best_score = -1e300;
    for (int c = 0; c < classes; ++c) {
      double score = bias[c];
      for (int64_t d = 0; d < dim; ++d) {
        score += static_cast<double>(weight[c * dim + d]) *
                 ((test.data[i * dim + d] - mean[d]) / stddev[d]);
      }
      if (score > best_score) best_score = score, best = c;
    }
    correct += best == test.labels[i];
  }
  EXPECT_NEAR(static_cast<double>(correct) / test.rows, linear.top1(), 2.0 / test.rows);

  ASSERT_GT(by_protocol["logreg"].artifact_id(), 0);
  EXPECT_THAT(by_protocol["logreg"].config_json(), HasSubstr("\"c\":"));
  const auto& finetune = by_protocol["finetune"];
  std::printf("cnn on 10000/2000 Fashion-MNIST: knn %.4f, linear %.4f, logreg %.4f, "
              "finetune %.4f\n",
              by_protocol["knn"].top1(), linear.top1(), by_protocol["logreg"].top1(),
              finetune.top1());
  EXPECT_GT(finetune.top1(), linear.top1()) << "fine-tuning should beat the frozen probe";

  const CommandResult table = Cli({"results", absl::StrCat(study)});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_THAT(table.output, HasSubstr("10-shot"));
}

// A fine-tuning task whose worker is killed after a checkpoint resumes from
// it on another worker.
TEST_F(EndToEndTest, FineTuningResumesFromItsCheckpointAfterAWorkerDies) {
  StartCoordinator({"--lease_seconds=3", "--heartbeat_ms=500"});
  const std::string worker_log = dir_ + "/victim.log";
  auto victim = Subprocess::Start({Bin("sslbench-worker"), "--coordinator=" + address_,
                                   "--name=victim", "--threads=1", "--metrics_listen="},
                                  worker_log);
  ASSERT_TRUE(victim.ok());
  const std::string study_file = WriteStudy(
      "finetune-preempted", "  - name: cnn\n    path: models/cnn.pt\n    channels: 1\n",
      20000, 1000,
      "  - name: finetune\n    epochs: 3\n    learning_rate: 0.1\n    batch_size: 64\n"
      "    checkpoint_every_steps: 10\n    no_flip: true\n");
  const int64_t study = Submit(study_file);
  // The study's only task is the fine-tuning; wait for its first checkpoint.
  int64_t task_id = 0;
  WatchUntil(study, [&](const v1::StudyStatus&) {
    for (int64_t id = 1; id < 64 && task_id == 0; ++id) {
      if (HasCheckpoint(id)) task_id = id;
    }
    return task_id != 0;
  });
  ASSERT_NE(task_id, 0) << ReadFile(worker_log);
  (*victim)->Kill();

  StartWorker("rescuer");
  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output << ReadFile(dir_ + "/rescuer.log");
  const auto results = Results(study);
  ASSERT_EQ(results.results_size(), 1);
  EXPECT_THAT(ReadFile(dir_ + "/rescuer.log"), HasSubstr("resuming from a checkpoint"));
  EXPECT_THAT(results.results(0).config_json(), ::testing::Not(HasSubstr("\"resumed_from_step\":0")));
}

}  // namespace
}  // namespace sslbench

namespace sslbench {
namespace {

// Per (model, variant): the top-1 of a study's results.
std::map<std::string, double> Top1ByName(const v1::ListResultsResponse& results) {
  std::map<std::string, double> out;
  for (const auto& r : results.results()) out[r.model() + "/" + r.variant()] = r.top1();
  return out;
}

// A photo dataset in the ImageFolder layout (JPEG RGB, grey, CMYK,
// progressive; PNG) through the whole service with kNN and a linear probe;
// the worker extracting the train split is SIGKILLed mid-way. Another worker
// resumes after the last stored chunk, every chunk is stored once, and the
// results equal those of an uninterrupted run on a fresh database.
TEST_F(EndToEndTest, ImageFolderStudySurvivesAWorkerKilledMidExtraction) {
  const std::string photos = dir_ + "/photos";
  auto made = RunCommand({"/usr/bin/python3",
                          absl::StrCat(kSourceDir, "/scripts/make_photo_corpus.py"), "--out",
                          photos, "--classes", "6", "--train-per-class", "60",
                          "--val-per-class", "12", "--seed", "3"});
  ASSERT_TRUE(made.ok() && made->exit_code == 0) << (made.ok() ? made->output : "");
  // One truncated photo in the test split: skipped and counted.
  std::string jpeg;
  for (const auto& entry : fs::directory_iterator(photos + "/val/astronaut")) {
    if (entry.path().extension() == ".jpg") jpeg = entry.path().string();
  }
  ASSERT_FALSE(jpeg.empty());
  const std::string whole = ReadFile(jpeg);
  ASSERT_GT(whole.size(), 1000u);
  std::ofstream(photos + "/val/astronaut/zz-truncated.jpg", std::ios::binary)
      << whole.substr(0, whole.size() / 2);
  const std::string study_file = dir_ + "/photos.yaml";
  std::ofstream(study_file)
      << "name: photos\nmodels:\n"
      << "  - name: cnn-rgb\n    path: models/cnn_rgb.pt\n    channels: 3\n"
      << "    resize_size: 146\n    input_size: 128\n"
      << "    mean: [0.485, 0.456, 0.406]\n    std: [0.229, 0.224, 0.225]\n"
      << "datasets:\n  - name: photos\n    format: imagefolder\n    root: " << photos
      << "\n    role: in-domain\n    on_bad_image: skip\n"
      << "protocols:\n  - name: knn\n    ks: [5, 10]\n    euclidean_k: 5\n"
      << "  - name: linear\n    epochs: 15\n    batch_size: 64\n    learning_rates: [0.1, 1.0]\n";

  // Interrupted: the victim stores chunks of 4 rows, then dies.
  StartCoordinator({"--lease_seconds=3", "--heartbeat_ms=200"});
  const std::string victim_log = dir_ + "/victim.log";
  auto victim = Subprocess::Start({Bin("sslbench-worker"), "--coordinator=" + address_,
                                   "--name=victim", "--threads=1", "--decode_threads=1",
                                   "--metrics_listen=", "--chunk_kib=1"},
                                  victim_log);
  ASSERT_TRUE(victim.ok());
  const int64_t study = Submit(study_file);
  ASSERT_TRUE(WaitForExtractedRows(study, 40)) << ReadFile(victim_log);
  (*victim)->Kill();
  StartWorker("rescuer", {"--threads=1", "--chunk_kib=1"});
  const CommandResult watched = Cli({"watch", absl::StrCat(study)});
  ASSERT_EQ(watched.exit_code, 0) << watched.output << ReadFile(dir_ + "/coordinator.log");
  const std::string rescuer_log = ReadFile(dir_ + "/rescuer.log");
  EXPECT_THAT(rescuer_log, HasSubstr("resumed"));
  const auto resumed = rescuer_log.find("resumed");
  if (resumed != std::string::npos) {
    std::printf("rescuer: %s\n", rescuer_log.substr(resumed, rescuer_log.find('\n', resumed) - resumed).c_str());
  }
  const auto interrupted = Results(study);
  ASSERT_EQ(interrupted.results_size(), 4);  // cosine k=5, k=10, euclidean k=5, linear
  for (const auto& r : interrupted.results()) {
    EXPECT_THAT(r.config_json(), HasSubstr("\"skipped_images\":{\"train\":0,\"test\":1}"))
        << r.variant();
  }

  // Every chunk of the train features is there once, in order.
  std::string train_key;
  for (const auto& r : interrupted.results()) {
    const std::string& config = r.config_json();
    const auto p = config.find("\"train_cache\":\"");
    if (p != std::string::npos) train_key = config.substr(p + 15, 64);
  }
  ASSERT_EQ(train_key.size(), 64u);
  {
    grpc::ClientContext context;
    v1::GetFeatureCacheRequest request;
    request.set_cache_key(train_key);
    v1::FeatureCacheInfo info;
    ASSERT_TRUE(worker_api_->GetFeatureCache(&context, request, &info).ok());
    EXPECT_TRUE(info.complete());
    EXPECT_EQ(info.num_rows(), 360);
    ASSERT_EQ(info.present_chunks_size(), info.num_chunks());
    for (int c = 0; c < info.num_chunks(); ++c) EXPECT_EQ(info.present_chunks(c), c);
    const auto train = Features(train_key);
    std::map<int, int> per_class;
    for (int32_t label : train.labels) ++per_class[label];
    EXPECT_EQ(per_class.size(), 6u);
    for (const auto& [label, count] : per_class) EXPECT_EQ(count, 60) << label;
  }

  // Uninterrupted, on a fresh database: the same numbers.
  for (auto& w : workers_) w->Stop();
  workers_.clear();
  coordinator_->Stop();
  auto db = testing::FreshDatabase();
  ASSERT_TRUE(db.ok()) << db.status();
  database_ = *db;
  fs::remove(dir_ + "/coordinator.port");
  StartCoordinator();
  // This worker keeps feature sets on its disk: the second probe reads them
  // from there.
  StartWorker("steady", {"--threads=1", "--feature_cache_dir=" + dir_ + "/feature-cache"});
  const int64_t again = Submit(study_file);
  ASSERT_EQ(Cli({"watch", absl::StrCat(again)}).exit_code, 0);
  const auto steady = Results(again);
  EXPECT_EQ(Top1ByName(steady), Top1ByName(interrupted));
  EXPECT_THAT(ReadFile(dir_ + "/steady.log"), HasSubstr("from the local cache"));
  for (const auto& [name, top1] : Top1ByName(steady)) {
    std::printf("photos %s: top-1 %.4f\n", name.c_str(), top1);
    // Six photographs, 12 test crops each: features separate them.
    EXPECT_GT(top1, 0.5) << name;
  }
}

}  // namespace
}  // namespace sslbench

namespace sslbench {
namespace {

std::string TrainCacheKey(const v1::ProbeResult& r) {
  const std::string& config = r.config_json();
  const auto p = config.find("\"train_cache\":\"");
  return p == std::string::npos ? "" : config.substr(p + 15, 64);
}

// Features stored as float16 take half the bytes and give the kNN accuracy
// of float32 features within rounding: a relative error of 2^-11 per value
// reorders a few near-tied neighbours (measured: at most 5 of 1,000 test
// images change their vote on this random CNN).
TEST_F(EndToEndTest, HalfPrecisionFeaturesHalveTheStoreAndKeepAccuracy) {
  StartCoordinator();
  StartWorker("worker-1");
  const std::string model = "  - name: cnn\n    path: models/cnn.pt\n    channels: 1\n";
  const int64_t full = Submit(WriteStudy("f32", model, 6000, 1000));
  const std::string half_file = WriteStudy("f16", model, 6000, 1000);
  std::ofstream(half_file, std::ios::app) << "feature_dtype: float16\n";
  const int64_t half = Submit(half_file);
  ASSERT_EQ(Cli({"watch", absl::StrCat(full)}).exit_code, 0);
  ASSERT_EQ(Cli({"watch", absl::StrCat(half)}).exit_code, 0);
  const auto f32 = Results(full);
  const auto f16 = Results(half);
  ASSERT_EQ(f32.results_size(), 3);
  ASSERT_EQ(f16.results_size(), 3);
  const auto a = Top1ByName(f32);
  const auto b = Top1ByName(f16);
  for (const auto& [name, top1] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_NEAR(b.at(name), top1, 0.01) << name;
    std::printf("%s: top-1 float32 %.4f, float16 %.4f\n", name.c_str(), top1, b.at(name));
  }
  // Chunk 0 of each train cache: the same rows in half the bytes.
  auto chunk0 = [&](const std::string& key) {
    grpc::ClientContext context;
    v1::GetFeatureChunkRequest request;
    request.set_cache_key(key);
    request.set_chunk_index(0);
    v1::FeatureChunk chunk;
    EXPECT_TRUE(worker_api_->GetFeatureChunk(&context, request, &chunk).ok());
    return chunk;
  };
  const v1::FeatureChunk c32 = chunk0(TrainCacheKey(f32.results(0)));
  const v1::FeatureChunk c16 = chunk0(TrainCacheKey(f16.results(0)));
  EXPECT_NE(TrainCacheKey(f32.results(0)), TrainCacheKey(f16.results(0)));
  EXPECT_EQ(c16.dtype(), "float16");
  ASSERT_GT(c16.num_rows(), 0);
  EXPECT_EQ(c16.features().size() * 2 * c32.num_rows(), c32.features().size() * c16.num_rows());
}

// The study in small through the service, then its report opened in
// headless Chromium: the page lays out a heatmap, a scatter per in-domain
// protocol and few-shot curves, with no script error.
TEST_F(EndToEndTest, ReportRendersInHeadlessChromium) {
  const std::string chromium = "/usr/bin/chromium";
  // scripts/install-deps.sh installs it: its absence is a broken setup.
  ASSERT_TRUE(fs::exists(chromium)) << "chromium is not installed (apt-get install chromium)";
  const CommandResult zoo =
      RunCommand({Bin("sslbench-zoo"), "--out=" + dir_ + "/zoo", "--steps=3", "--batch_size=16",
                  "--train_images=64", "--only=resnet-random,resnet-supervised,vit-random"})
          .value_or(CommandResult{});
  ASSERT_EQ(zoo.exit_code, 0) << zoo.output;
  const CommandResult suite = Cli({"data", "build", "--out_dir=" + dir_ + "/suite",
                                   "--train_per_domain=200", "--test_per_domain=100"});
  ASSERT_EQ(suite.exit_code, 0) << suite.output;
  std::string models = TwoModels();
  {
    std::ifstream in(dir_ + "/zoo/zoo.yaml");
    std::string line;
    while (std::getline(in, line)) {
      if (absl::StartsWith(line, "  ")) models += line + "\n";
    }
  }
  const std::string path = dir_ + "/report-study.yaml";
  {
    std::ofstream out(path);
    out << "name: report\nmodels:\n" << models << "datasets:\n";
    for (const char* d : {"fmnist", "fmnist-inverted", "fmnist-lowres"}) {
      out << "  - name: " << d << "\n    format: imagefolder\n    root: " << dir_ << "/suite/" << d
          << "\n    role: " << (std::string(d) == "fmnist" ? "in-domain" : "out-of-domain") << "\n";
    }
    out << "protocols:\n  - name: knn\n    ks: [5]\n    euclidean_k: -1\n"
        << "  - name: linear-fewshot\n    kind: linear\n    epochs: 5\n    learning_rates: [0.1]\n"
        << "    few_shot: {shots: [2, 5], seeds: [0, 1]}\n";
  }
  StartCoordinator();
  StartWorker("worker-1");
  const int64_t study = Submit(path);
  ASSERT_EQ(Cli({"watch", absl::StrCat(study)}).exit_code, 0);
  const std::string report = dir_ + "/report.html";
  const CommandResult wrote = Cli({"report", absl::StrCat(study), "-o", report});
  ASSERT_EQ(wrote.exit_code, 0) << wrote.output;
  const CommandResult figure =
      Cli({"report", absl::StrCat(study), "--figure=heatmap", "-o", dir_ + "/heatmap.svg"});
  ASSERT_EQ(figure.exit_code, 0) << figure.output;

  const CommandResult page =
      RunCommand({chromium, "--headless", "--no-sandbox", "--disable-gpu",
                  "--user-data-dir=" + dir_ + "/chromium", "--virtual-time-budget=5000",
                  "--enable-logging=stderr", "--v=0", "--dump-dom", "file://" + report})
          .value_or(CommandResult{});
  ASSERT_EQ(page.exit_code, 0) << page.output;
  EXPECT_THAT(page.output, Not(HasSubstr("Uncaught"))) << "a script error in the page";
  EXPECT_THAT(page.output, HasSubstr("<div id=\"errors\"></div>"));
  // data-rendered: "ID:WIDTHxHEIGHT:MARKS ..." for every figure, measured by
  // the browser after layout.
  const size_t at = page.output.find("data-rendered=\"");
  ASSERT_NE(at, std::string::npos) << page.output.substr(0, 2000);
  const std::string rendered =
      page.output.substr(at + 15, page.output.find('"', at + 15) - at - 15);
  std::printf("rendered: %s\n", rendered.c_str());
  int heatmaps = 0, scatters = 0, fewshots = 0;
  for (absl::string_view entry : absl::StrSplit(rendered, ' ', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(entry, ':');
    ASSERT_EQ(parts.size(), 3u) << entry;
    std::vector<std::string> size = absl::StrSplit(parts[1], 'x');
    int w = 0, h = 0, marks = 0;
    ASSERT_TRUE(absl::SimpleAtoi(size[0], &w) && absl::SimpleAtoi(size[1], &h) &&
                absl::SimpleAtoi(parts[2], &marks))
        << entry;
    EXPECT_GT(w, 100) << entry;
    EXPECT_GT(h, 100) << entry;
    if (parts[0] == "heatmap") {
      ++heatmaps;
      EXPECT_EQ(marks, 9 * 9) << entry;  // (knn, 2-shot, 5-shot) x 3 datasets
    } else if (absl::StartsWith(parts[0], "scatter-")) {
      ++scatters;
      EXPECT_EQ(marks, 5) << entry;  // one point per model
    } else if (absl::StartsWith(parts[0], "fewshot-")) {
      ++fewshots;
      EXPECT_EQ(marks, 5 + 5 * 2) << entry;  // a curve and two points per model
    }
  }
  EXPECT_EQ(heatmaps, 1);
  EXPECT_EQ(scatters, 3);  // one per in-domain column
  EXPECT_EQ(fewshots, 1);
}

}  // namespace
}  // namespace sslbench
