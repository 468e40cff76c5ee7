// sslbench: the command-line client of the evaluation service.

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/flags/reflection.h"
#include "client/artifact.h"
#include "client/cli_args.h"
#include "client/coordinator_client.h"
#include "client/data_suite.h"
#include "client/format.h"
#include "client/local_stack.h"
#include "client/report.h"
#include "client/study_estimate.h"
#include "client/study_file.h"
#include "common/build_info.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "worker/datasets/files.h"
#include "common/subprocess.h"
#include "google/protobuf/util/json_util.h"

ABSL_FLAG(std::string, coordinator, "",
          "coordinator address HOST:PORT (default: $SSLBENCH_COORDINATOR, else "
          "./.sslbench/coordinator.addr, else localhost:7070)");
ABSL_FLAG(std::string, token_file, "",
          "file holding the access token sent with every call (default: $SSLBENCH_TOKEN, "
          "else ./.sslbench/token, written by `sslbench up`)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA to trust: talk to the coordinator over TLS (default: $SSLBENCH_TLS_CA, "
          "else ./.sslbench/tls/ca.pem when it exists)");
ABSL_FLAG(std::string, name, "", "tokens create: who or what holds the token");
ABSL_FLAG(std::string, role, "", "tokens create: worker, reader, submitter or admin");
ABSL_FLAG(std::string, request_id, "",
          "submit: idempotency key; the same key returns the same study (default: a random "
          "key, reused when the submit is retried)");
ABSL_FLAG(std::string, file_root, "",
          "submit, spec: where file:///PATH model paths and dataset roots are found here "
          "(default: $SSLBENCH_FILE_ROOT, else /); each worker has its own --file_root");
ABSL_FLAG(bool, dry_run, false,
          "submit: validate the study, print its tasks and estimated cost, submit "
          "nothing (model files and dataset folders need not exist)");
ABSL_FLAG(double, images_per_second, 7000,
          "submit --dry_run: images/s per GPU node for backbones without a measured rate");
ABSL_FLAG(std::string, format, "table", "results, correlate: table, csv or json");
ABSL_FLAG(std::string, metric, "top1", "correlate: top1, top5 or mean_per_class");
ABSL_FLAG(int32_t, bootstrap, 1000,
          "correlate: bootstrap resamples for the confidence intervals (0: none)");
ABSL_FLAG(uint64_t, seed, 0, "correlate: seed of the bootstrap");
ABSL_FLAG(std::string, figure, "",
          "report: write one figure as SVG instead of the page: heatmap, scatter, "
          "scatter:N, fewshot:PROTOCOL");
ABSL_FLAG(std::string, by, "",
          "correlate: also group the models by their labels: backbone, method, family "
          "(or several, comma-separated)");
ABSL_FLAG(std::string, output, "",
          "artifact: write the bytes to this file (short: -o FILE); unset or '-': "
          "standard output, unless it is a terminal");
ABSL_FLAG(std::string, state_dir, "",
          "up/demo: state folder (default: .sslbench for up, a fresh temporary "
          "folder for demo)");
ABSL_FLAG(int32_t, workers, 2, "up/demo: number of worker processes");
ABSL_FLAG(int32_t, worker_threads, 1, "up/demo: compute threads per worker");
ABSL_FLAG(std::string, blob_store, "postgres",
          "up/demo: where the coordinator keeps feature chunk bytes "
          "(postgres, or file:///PATH)");
ABSL_FLAG(int32_t, port, 0, "up/demo: coordinator port on 127.0.0.1 (0: any free one)");
ABSL_FLAG(std::string, out_dir, "",
          "data build / zoo build: output folder (default: sslbench-data, sslbench-zoo)");
ABSL_FLAG(int32_t, steps, 300, "zoo build/demo: optimizer steps per model");
ABSL_FLAG(std::string, only, "", "zoo build: comma-separated model names (default: all)");
ABSL_FLAG(int64_t, train_per_domain, 6000, "data build/demo: train images per domain");
ABSL_FLAG(int64_t, test_per_domain, 1000, "data build/demo: test images per domain");
ABSL_FLAG(std::string, cache_dir, "",
          "demo: where the zoo and the suite are kept between runs (default: "
          "$XDG_CACHE_HOME/sslbench, else ~/.cache/sslbench)");

namespace sslbench::client {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitWatchError = 3;  // watch: could not follow the study
constexpr int kExitUsage = 64;
constexpr int kExitInterrupted = 130;
constexpr absl::Duration kRpcTimeout = absl::Seconds(30);

constexpr char kUsage[] = R"(sslbench: evaluate self-supervised vision models.

usage: sslbench COMMAND [ARGS] [--flags]
       sslbench help [COMMAND]     this text, or one command's part of it
       sslbench --version

  submit STUDY.yaml [--request_id=ID] [--file_root=DIR]
                                        submit a study; prints its id; model
                                        paths and dataset roots may be
                                        file:///PATH URIs, found here under
                                        --file_root and on each worker under
                                        its own --file_root
  submit STUDY.yaml --dry_run [--images_per_second=7000]
                                        validate it and print its tasks and
                                        estimated GPU time and storage instead
  spec STUDY.yaml|-                     the study as submit would send it: paths
                                        made absolute, model hashes and dataset
                                        digests filled in, defaults applied,
                                        validated; printed as JSON (the Python
                                        client submits through it; - reads the
                                        study from standard input, paths
                                        relative to this folder)
  watch ID                              progress bars until the study ends
                                        (exit 0 succeeded, 1 failed, 2 cancelled,
                                        3 could not follow it)
  status ID                             the study's state, once
  results ID [--format=table|csv|json]  the study's results
  correlate ID [--metric=top1|top5|mean_per_class] [--bootstrap=1000]
            [--format=table|csv|json]   Kendall tau-b, Spearman and Pearson
                                        between every two result columns over
                                        the models, with bootstrap intervals;
                                        in-domain columns ranked as predictors
                                        of out-of-domain accuracy first;
                                        --seed=N fixes the resamples;
                                        --by=family (backbone, method, or
                                        several: --by=backbone,family) adds
                                        each group's mean accuracy and best
                                        predictor within it
  artifact ID -o FILE                   write a stored artefact (a trained head;
                                        ids in the results' artifact column) to
                                        FILE (or --output=FILE; without it, to
                                        standard output when that is not a
                                        terminal)
  report ID -o report.html [--figure=heatmap|scatter[:N]|fewshot:PROTOCOL]
                                        one self-contained HTML page: sortable
                                        results with their configurations, the
                                        correlation heatmap, each in-domain
                                        protocol against out-of-domain accuracy,
                                        few-shot curves; --figure writes one
                                        figure as SVG
  cancel ID                             cancel a study's unfinished tasks
  zoo build [--out_dir=sslbench-zoo] [--steps=300] [--worker_threads=N]
            [--only=a,b]                the model zoo: a small ResNet and a tiny
                                        ViT pre-trained here on Fashion-MNIST
                                        (random, supervised, rotation, SimCLR,
                                        BYOL, DINO, MAE-style), as TorchScript
                                        plus zoo.yaml; reused when unchanged
  data build [--out_dir=sslbench-data] [--train_per_domain=6000]
             [--test_per_domain=1000]   the domain-shift suite: Fashion-MNIST and
                                        six shifted copies (sketch, inverted,
                                        low resolution, noisy, rotated, coarse
                                        labels) as ImageFolder PNG datasets,
                                        plus suite.yaml; reused when unchanged
  workers                               the registered workers
  tokens create --name=NAME --role=worker|reader|submitter|admin
                                        an access token (printed once); needs
                                        an admin token
  tokens list                           the tokens (names and roles, no secrets)
  cache list [STUDY_ID]                 the feature caches (all, or those the
                                        study fills or reads): size, state, and
                                        the unfinished tasks using each
  cache drop KEY                        forget a feature cache found bad (its
                                        chunks and bytes; KEY or its first 16
                                        characters); refused while unfinished
                                        tasks use it; needs an admin token
  tokens revoke ID                      refuse the token from now on
  up [--state_dir=.sslbench] [--workers=2] [--worker_threads=1] [--port=0]
     [--blob_store=postgres|file:///PATH]
                                        run a local stack (PostgreSQL, coordinator,
                                        workers) until Ctrl-C
  completion bash|zsh                   a shell completion script for the
                                        commands and their flags, e.g.
                                        source <(sslbench completion bash)
  demo [--state_dir=DIR] [--workers=2] [--cache_dir=DIR]
       [--train_per_domain=6000] [--test_per_domain=1000] [--steps=300]
                                        the study in small, end to end: the model
                                        zoo and the domain-shift suite (built
                                        once, cached), a local stack, zoo x
                                        suite x (kNN, linear with and without
                                        BatchNorm, logistic regression, few-shot
                                        linear), the zoo's accuracies and the
                                        predictor ranking

Every command but up and demo talks to --coordinator=HOST:PORT (default:
$SSLBENCH_COORDINATOR, else ./.sslbench/coordinator.addr, else localhost:7070),
with the access token of --token_file=FILE (default: $SSLBENCH_TOKEN, else
./.sslbench/token, the local stack's admin token), over TLS when a CA is
known: --tls_ca=FILE (default: $SSLBENCH_TLS_CA, else ./.sslbench/tls/ca.pem).
)";

constexpr char kDemoDataset[] = "/usr/share/datasets/fashion-mnist";

std::string CoordinatorAddress() {
  return ResolveCoordinatorAddress(absl::GetFlag(FLAGS_coordinator),
                                   std::getenv("SSLBENCH_COORDINATOR"),
                                   ".sslbench/coordinator.addr");
}

// The access token for every call; exits with a usage error when
// --token_file names a file that cannot be read.
std::string Token() {
  absl::StatusOr<std::string> token = ResolveToken(
      absl::GetFlag(FLAGS_token_file), std::getenv("SSLBENCH_TOKEN"), ".sslbench/token");
  if (!token.ok()) {
    std::fprintf(stderr, "sslbench: --token_file: %s\n", std::string(token.status().message()).c_str());
    std::exit(kExitUsage);
  }
  return *token;
}

// TLS credentials for the coordinator (plaintext when no CA is known);
// exits with a usage error when the CA file cannot be read.
std::shared_ptr<grpc::ChannelCredentials> Credentials() {
  TlsClientFiles tls;
  tls.ca = absl::GetFlag(FLAGS_tls_ca);
  if (const char* env = std::getenv("SSLBENCH_TLS_CA"); tls.ca.empty() && env != nullptr) tls.ca = env;
  std::error_code ec;
  if (tls.ca.empty() && std::filesystem::exists(".sslbench/tls/ca.pem", ec)) {
    tls.ca = ".sslbench/tls/ca.pem";
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = ClientCredentials(tls);
  if (!credentials.ok()) {
    std::fprintf(stderr, "sslbench: --tls_ca: %s\n", std::string(credentials.status().message()).c_str());
    std::exit(kExitUsage);
  }
  return *credentials;
}

int Fail(const absl::Status& status, const std::string& address) {
  std::fprintf(stderr, "%s\n", FormatError(status, address).c_str());
  return kExitError;
}

int Usage(const std::string& problem) {
  std::fprintf(stderr, "sslbench: %s\n\n%s", problem.c_str(), kUsage);
  return kExitUsage;
}

// Parses the single study-id argument of watch/status/results/cancel.
bool StudyIdArg(const std::vector<std::string>& args, int64_t* id, int* exit_code) {
  if (args.size() != 1) {
    *exit_code = Usage(absl::StrCat(args.size() < 1 ? "missing" : "too many",
                                    " arguments: expected one study id"));
    return false;
  }
  if (!absl::SimpleAtoi(args[0], id) || *id <= 0) {
    *exit_code = Usage(absl::StrCat("\"", args[0], "\" is not a study id"));
    return false;
  }
  return true;
}

// --file_root, else $SSLBENCH_FILE_ROOT, else /.
LocationRoots FileRoots() {
  LocationRoots roots;
  roots.file_root = absl::GetFlag(FLAGS_file_root);
  if (roots.file_root.empty()) {
    const char* env = std::getenv("SSLBENCH_FILE_ROOT");
    roots.file_root = env != nullptr && env[0] != '\0' ? env : "/";
  }
  return roots;
}

StudyFileOptions ReadingOptions() {
  StudyFileOptions options;
  options.locations = FileRoots();
  return options;
}

int DryRun(const std::string& path) {
  std::vector<std::string> missing;
  StudyFileOptions options = ReadingOptions();
  options.read_files = false;
  options.notes = &missing;
  absl::StatusOr<v1::StudySpec> spec = LoadStudyFile(path, options);
  if (!spec.ok()) return Fail(spec.status(), "");
  absl::StatusOr<StudyEstimate> estimate =
      EstimateStudy(*spec, CountImages(*spec, options.locations),
                    absl::GetFlag(FLAGS_images_per_second));
  if (!estimate.ok()) return Fail(estimate.status(), "");
  std::printf("%s", FormatEstimate(*spec, *estimate).c_str());
  if (!missing.empty()) {
    std::printf("\nnot found here (submit needs them; workers may see other paths):\n");
    for (const std::string& m : missing) std::printf("  - %s\n", m.c_str());
  }
  std::printf("\nthe study is valid; nothing was submitted (--dry_run)\n");
  return kExitOk;
}

int CmdSubmit(const std::vector<std::string>& args) {
  if (args.size() != 1) return Usage("submit takes one study file");
  if (absl::GetFlag(FLAGS_dry_run)) return DryRun(args[0]);
  const std::string address = CoordinatorAddress();
  absl::StatusOr<v1::StudySpec> spec = LoadStudyFile(args[0], ReadingOptions());
  if (!spec.ok()) return Fail(spec.status(), address);
  CoordinatorClient client(address, absl::Seconds(60), Token(), Credentials());
  std::string request_id;
  absl::StatusOr<v1::SubmitStudyResponse> response =
      client.SubmitStudy(*spec, absl::GetFlag(FLAGS_request_id), &request_id);
  if (!response.ok()) {
    const int code = Fail(response.status(), address);
    if (absl::IsDeadlineExceeded(response.status()) || absl::IsUnavailable(response.status())) {
      std::fprintf(stderr,
                   "sslbench: the coordinator may still commit the study; submit again with "
                   "--request_id=%s to get it without a duplicate\n",
                   request_id.c_str());
    }
    return code;
  }
  std::printf("%lld\n", static_cast<long long>(response->study_id()));
  std::fflush(stdout);
  std::fprintf(stderr,
               "sslbench: %s study %lld \"%s\": %lld tasks, %lld feature extractions "
               "reused; follow it with: sslbench watch %lld\n",
               response->existing() ? "already submitted:" : "submitted",
               static_cast<long long>(response->study_id()), spec->name().c_str(),
               static_cast<long long>(response->tasks()),
               static_cast<long long>(response->reused_features()),
               static_cast<long long>(response->study_id()));
  return kExitOk;
}

int CmdSpec(const std::vector<std::string>& args) {
  if (args.size() != 1) return Usage("spec takes one study file (or - for standard input)");
  absl::StatusOr<v1::StudySpec> spec;
  if (args[0] == "-") {
    std::ostringstream text;
    text << std::cin.rdbuf();
    std::error_code ec;
    spec = ParseStudyYaml(text.str(), std::filesystem::current_path(ec).string(),
                          ReadingOptions());
    if (!spec.ok()) spec = absl::Status(spec.status().code(), absl::StrCat("<stdin>: ", spec.status().message()));
  } else {
    spec = LoadStudyFile(args[0], ReadingOptions());
  }
  if (!spec.ok()) return Fail(spec.status(), "");
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.add_whitespace = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(*spec, &out, options).ok()) {
    return Fail(absl::InternalError("cannot print the study as JSON"), "");
  }
  std::fputs(out.c_str(), stdout);
  return kExitOk;
}

int CmdCompletion(const std::vector<std::string>& args) {
  if (args.size() != 1 || (args[0] != "bash" && args[0] != "zsh")) {
    return Usage("completion takes one shell: bash or zsh");
  }
  std::fputs(CompletionScript(args[0]).c_str(), stdout);
  return kExitOk;
}

// Reports the end of a watched study; returns the watch exit code.
int ReportEnd(const v1::StudyStatus& status) {
  std::fprintf(stderr, "sslbench: study %lld %s after %s\n",
               static_cast<long long>(status.study_id()),
               StudyStateName(status.state()).c_str(),
               FormatDuration(status.elapsed_seconds()).c_str());
  if (status.state() == v1::STUDY_STATE_FAILED && !status.error().empty()) {
    std::fprintf(stderr, "sslbench: error: %s\n", status.error().c_str());
  }
  return ExitCodeForState(status.state());
}

int CmdWatch(const std::vector<std::string>& args) {
  int64_t id = 0;
  int exit_code = 0;
  if (!StudyIdArg(args, &id, &exit_code)) return exit_code;
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  StudyWatcher watcher(&client, id, stdout, isatty(STDOUT_FILENO) == 1);
  absl::StatusOr<v1::StudyStatus> status = watcher.Run();
  if (!status.ok()) {
    Fail(status.status(), address);
    return kExitWatchError;
  }
  return ReportEnd(*status);
}

int CmdStatus(const std::vector<std::string>& args) {
  int64_t id = 0;
  int exit_code = 0;
  if (!StudyIdArg(args, &id, &exit_code)) return exit_code;
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  absl::StatusOr<v1::StudyStatus> status = client.GetStudy(id);
  if (!status.ok()) return Fail(status.status(), address);
  std::fputs(FormatStudyStatus(*status).c_str(), stdout);
  return kExitOk;
}

// --format, which must be table, csv or json; else the usage exit code.
bool FormatFlag(std::string* format, int* exit_code) {
  *format = absl::GetFlag(FLAGS_format);
  if (*format == "table" || *format == "csv" || *format == "json") return true;
  *exit_code =
      Usage(absl::StrCat("--format=", *format, " is not one of table, csv, json"));
  return false;
}

int CmdResults(const std::vector<std::string>& args) {
  int64_t id = 0;
  int exit_code = 0;
  if (!StudyIdArg(args, &id, &exit_code)) return exit_code;
  std::string format;
  if (!FormatFlag(&format, &exit_code)) return exit_code;
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  absl::StatusOr<v1::ListResultsResponse> results = client.ListResults(id);
  if (!results.ok()) return Fail(results.status(), address);
  absl::StatusOr<std::string> text = FormatResults(*results, format);
  if (!text.ok()) return Fail(text.status(), address);
  std::fputs(text->c_str(), stdout);
  if (format == "table" && results->results().empty()) {
    std::fprintf(stderr, "sslbench: study %lld has no results yet\n",
                 static_cast<long long>(id));
  }
  return kExitOk;
}

int CmdCorrelate(const std::vector<std::string>& args) {
  int64_t id = 0;
  int exit_code = 0;
  if (!StudyIdArg(args, &id, &exit_code)) return exit_code;
  std::string format;
  if (!FormatFlag(&format, &exit_code)) return exit_code;
  const std::string metric = absl::GetFlag(FLAGS_metric);
  if (metric != "top1" && metric != "top5" && metric != "mean_per_class") {
    return Usage(
        absl::StrCat("--metric=", metric, " is not one of top1, top5, mean_per_class"));
  }
  const int32_t bootstrap = absl::GetFlag(FLAGS_bootstrap);
  if (bootstrap < 0) return Usage("--bootstrap must be 0 (no intervals) or more");
  v1::CorrelateRequest request;
  request.set_study_id(id);
  request.set_metric(metric);
  request.set_bootstrap_resamples(bootstrap);
  request.set_seed(absl::GetFlag(FLAGS_seed));
  request.set_group_by(absl::GetFlag(FLAGS_by));
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  absl::StatusOr<v1::CorrelateResponse> response = Correlate(client, request);
  if (!response.ok()) return Fail(response.status(), address);
  absl::StatusOr<std::string> text = FormatCorrelation(*response, format);
  if (!text.ok()) return Fail(text.status(), address);
  std::fputs(text->c_str(), stdout);
  return kExitOk;
}

int CmdData(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0] != "build") return Usage("data takes one subcommand: build");
  SuiteOptions options;
  options.out = absl::GetFlag(FLAGS_out_dir).empty() ? "sslbench-data" : absl::GetFlag(FLAGS_out_dir);
  options.train_per_domain = absl::GetFlag(FLAGS_train_per_domain);
  options.test_per_domain = absl::GetFlag(FLAGS_test_per_domain);
  absl::StatusOr<std::vector<SuiteDomain>> domains =
      BuildSuite(options, [](const std::string& domain, int64_t done, int64_t total) {
        std::fprintf(stderr, "\rsslbench: data build: %-16s %7lld / %lld images", domain.c_str(),
                     static_cast<long long>(done), static_cast<long long>(total));
        if (done == total) std::fprintf(stderr, "\n");
      });
  if (!domains.ok()) return Fail(domains.status(), "");
  for (const SuiteDomain& d : *domains) {
    std::printf("%-16s %-13s %2d classes  train %6lld  test %5lld  %s%s\n", d.name.c_str(),
                d.in_domain ? "in-domain" : "out-of-domain", d.classes,
                static_cast<long long>(d.train), static_cast<long long>(d.test), d.root.c_str(),
                d.cached ? "  (reused)" : "");
  }
  std::printf("study entries: %s/suite.yaml\n", domains->front().root.substr(
      0, domains->front().root.rfind('/')).c_str());
  return kExitOk;
}

bool StopSignalPending();

// Runs sslbench-zoo (LibTorch stays out of this binary) into `out` with
// its output passed through; CANCELLED on a stop signal.
absl::Status RunZooTool(const std::string& out, int threads) {
  ASSIGN_OR_RETURN(std::string bin_dir, ExecutableDir());
  ASSIGN_OR_RETURN(std::string tool, FindSibling(bin_dir, "sslbench-zoo"));
  std::vector<std::string> argv = {tool, absl::StrCat("--out=", out),
                                   absl::StrCat("--steps=", absl::GetFlag(FLAGS_steps)),
                                   absl::StrCat("--threads=", threads)};
  if (!absl::GetFlag(FLAGS_only).empty()) argv.push_back("--only=" + absl::GetFlag(FLAGS_only));
  ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> zoo, Subprocess::Start(argv, ""));
  while (!zoo->Wait(absl::Milliseconds(200))) {
    if (StopSignalPending()) {
      zoo->Stop();
      return absl::CancelledError("interrupted");
    }
  }
  if (const int code = zoo->Stop(); code != 0) {
    return absl::InternalError(absl::StrCat("sslbench-zoo failed (exit ", code, ")"));
  }
  return absl::OkStatus();
}

int CmdZoo(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0] != "build") return Usage("zoo takes one subcommand: build");
  const absl::Status built = RunZooTool(
      absl::GetFlag(FLAGS_out_dir).empty() ? "sslbench-zoo" : absl::GetFlag(FLAGS_out_dir),
      std::max(1, absl::GetFlag(FLAGS_worker_threads)));
  return built.ok() ? kExitOk : Fail(built, "");
}

int CmdCancel(const std::vector<std::string>& args) {
  int64_t id = 0;
  int exit_code = 0;
  if (!StudyIdArg(args, &id, &exit_code)) return exit_code;
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  absl::StatusOr<v1::StudyStatus> status = client.CancelStudy(id);
  if (!status.ok()) return Fail(status.status(), address);
  std::fputs(FormatStudyStatus(*status).c_str(), stdout);
  return kExitOk;
}

int CmdWorkers(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage("workers takes no arguments");
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  absl::StatusOr<v1::ListWorkersResponse> workers = client.ListWorkers();
  if (!workers.ok()) return Fail(workers.status(), address);
  std::fputs(FormatWorkersTable(*workers, absl::ToDoubleSeconds(
                                              absl::Now() - absl::UnixEpoch()))
                 .c_str(),
             stdout);
  return kExitOk;
}

std::string FormatBytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30)) return absl::StrFormat("%.1f GiB", bytes / double(1 << 30));
  if (bytes >= (int64_t{1} << 20)) return absl::StrFormat("%.1f MiB", bytes / double(1 << 20));
  return absl::StrFormat("%.1f KiB", bytes / 1024.0);
}

int CmdCache(const std::vector<std::string>& args) {
  if (args.empty()) return Usage("cache takes list [STUDY_ID] or drop KEY");
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  if (args[0] == "list") {
    int64_t study = 0;
    if (args.size() > 2 || (args.size() == 2 && (!absl::SimpleAtoi(args[1], &study) || study <= 0))) {
      return Usage("cache list takes at most one study id");
    }
    absl::StatusOr<v1::ListFeatureCachesResponse> listed = client.ListFeatureCaches(study);
    if (!listed.ok()) return Fail(listed.status(), address);
    std::printf("%-16s %-20s %-20s %-5s %-8s %10s %6s %10s %s\n", "KEY", "MODEL", "DATASET",
                "SPLIT", "STATE", "ROWS", "DIM", "SIZE", "IN USE BY");
    for (const v1::FeatureCacheSummary& c : listed->caches()) {
      std::printf("%-16s %-20s %-20s %-5s %-8s %10lld %6d %10s %lld task(s)\n",
                  c.cache_key().substr(0, 16).c_str(), c.model().c_str(), c.dataset().c_str(),
                  c.split().c_str(), c.complete() ? "complete" : "partial",
                  static_cast<long long>(c.num_rows()), c.dim(), FormatBytes(c.bytes()).c_str(),
                  static_cast<long long>(c.readers()));
    }
    return kExitOk;
  }
  if (args[0] == "drop") {
    if (args.size() != 2) return Usage("cache drop takes one cache key (or its first 16 characters)");
    std::string key = args[1];
    if (key.size() < 64) {
      // A prefix, as `cache list` prints it: it must name one cache.
      absl::StatusOr<v1::ListFeatureCachesResponse> listed = client.ListFeatureCaches(0);
      if (!listed.ok()) return Fail(listed.status(), address);
      std::vector<std::string> matches;
      for (const auto& c : listed->caches()) {
        if (absl::StartsWith(c.cache_key(), key)) matches.push_back(c.cache_key());
      }
      if (matches.size() != 1) {
        std::fprintf(stderr, "sslbench: %zu feature caches start with %s\n", matches.size(),
                     key.c_str());
        return kExitError;
      }
      key = matches[0];
    }
    absl::StatusOr<v1::FeatureCacheSummary> dropped = client.DropFeatureCache(key);
    if (!dropped.ok()) return Fail(dropped.status(), address);
    std::fprintf(stderr,
                 "sslbench: dropped feature cache %s (%s / %s / %s: %d chunks, %s); the next "
                 "study that needs it extracts it again\n",
                 dropped->cache_key().c_str(), dropped->model().c_str(),
                 dropped->dataset().c_str(), dropped->split().c_str(), dropped->num_chunks(),
                 FormatBytes(dropped->bytes()).c_str());
    return kExitOk;
  }
  return Usage(absl::StrCat("cache: unknown subcommand \"", args[0], "\" (list, drop)"));
}

int CmdTokens(const std::vector<std::string>& args) {
  if (args.empty()) return Usage("tokens takes create, list or revoke ID");
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, kRpcTimeout, Token(), Credentials());
  if (args[0] == "create") {
    if (args.size() != 1) return Usage("tokens create takes --name and --role, no arguments");
    if (absl::GetFlag(FLAGS_name).empty() || absl::GetFlag(FLAGS_role).empty()) {
      return Usage("tokens create needs --name=NAME and --role=worker|reader|submitter|admin");
    }
    absl::StatusOr<v1::CreateTokenResponse> created =
        client.CreateToken(absl::GetFlag(FLAGS_name), absl::GetFlag(FLAGS_role));
    if (!created.ok()) return Fail(created.status(), address);
    // The secret alone on stdout (for `> file`); what it is on stderr.
    std::printf("%s\n", created->token().c_str());
    std::fprintf(stderr,
                 "sslbench: token %lld \"%s\" (%s) created; it is shown only now: keep it in a "
                 "file of mode 600 and pass it with --token_file\n",
                 static_cast<long long>(created->info().token_id()),
                 created->info().name().c_str(), created->info().role().c_str());
    return kExitOk;
  }
  if (args[0] == "list") {
    if (args.size() != 1) return Usage("tokens list takes no arguments");
    absl::StatusOr<v1::ListTokensResponse> listed = client.ListTokens();
    if (!listed.ok()) return Fail(listed.status(), address);
    std::printf("%-6s %-24s %-10s %-20s %-20s %s\n", "ID", "NAME", "ROLE", "CREATED", "BY",
                "REVOKED");
    auto when = [](double unix_seconds) {
      return unix_seconds <= 0 ? std::string("-")
                               : absl::FormatTime("%Y-%m-%d %H:%M:%S",
                                                  absl::FromUnixSeconds(static_cast<int64_t>(unix_seconds)),
                                                  absl::UTCTimeZone());
    };
    for (const v1::TokenInfo& t : listed->tokens()) {
      std::printf("%-6lld %-24s %-10s %-20s %-20s %s\n", static_cast<long long>(t.token_id()),
                  t.name().c_str(), t.role().c_str(), when(t.created_unix()).c_str(),
                  t.created_by().c_str(), when(t.revoked_unix()).c_str());
    }
    return kExitOk;
  }
  if (args[0] == "revoke") {
    int64_t id = 0;
    if (args.size() != 2 || !absl::SimpleAtoi(args[1], &id) || id <= 0) {
      return Usage("tokens revoke takes one token id (see tokens list)");
    }
    absl::StatusOr<v1::TokenInfo> revoked = client.RevokeToken(id);
    if (!revoked.ok()) return Fail(revoked.status(), address);
    std::fprintf(stderr, "sslbench: token %lld \"%s\" revoked\n", static_cast<long long>(id),
                 revoked->name().c_str());
    return kExitOk;
  }
  return Usage(absl::StrCat("tokens: unknown subcommand \"", args[0], "\" (create, list, revoke)"));
}

int CmdArtifact(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    return Usage(absl::StrCat(args.size() < 1 ? "missing" : "too many",
                              " arguments: expected one artifact id"));
  }
  int64_t id = 0;
  if (!absl::SimpleAtoi(args[0], &id) || id <= 0) {
    return Usage(absl::StrCat("\"", args[0], "\" is not an artifact id"));
  }
  const std::string output = absl::GetFlag(FLAGS_output);
  const bool to_stdout = output.empty() || output == "-";
  // Binary bytes would garble the terminal.
  if (to_stdout && isatty(STDOUT_FILENO) == 1) {
    return Usage(
        "artifact: standard output is a terminal; name a file with -o FILE (or "
        "--output=FILE), or redirect the output");
  }
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, absl::Minutes(5), Token(), Credentials());
  absl::StatusOr<v1::Artifact> artifact = DownloadArtifact(client, id, output, stdout);
  if (!artifact.ok()) return Fail(artifact.status(), address);
  std::fprintf(stderr, "sslbench: %s\n",
               DescribeArtifact(*artifact, to_stdout ? "standard output" : output).c_str());
  return kExitOk;
}

// Everything a report shows, from the coordinator.
absl::StatusOr<ReportInput> FetchReport(CoordinatorClient& client, int64_t id) {
  ReportInput input;
  ASSIGN_OR_RETURN(input.status, client.GetStudy(id, /*include_spec=*/true));
  input.spec = input.status.spec();
  ASSIGN_OR_RETURN(v1::ListResultsResponse results, client.ListResults(id));
  input.results.assign(results.results().begin(), results.results().end());
  v1::CorrelateRequest request;
  request.set_study_id(id);
  // Grouped by method family when the models carry family labels.
  for (const v1::ModelSpec& m : input.spec.models()) {
    if (!m.family().empty()) request.set_group_by("family");
  }
  absl::StatusOr<v1::CorrelateResponse> correlation = Correlate(client, request);
  if (correlation.ok()) {
    input.correlation = *std::move(correlation);
  } else if (absl::IsFailedPrecondition(correlation.status())) {
    input.correlation_note = std::string(correlation.status().message());
  } else {
    return correlation.status();
  }
  return input;
}

// Writes `text` to --output (or standard output when it is not a terminal).
int WriteOutput(const std::string& text, const std::string& what) {
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty() || output == "-") {
    if (isatty(STDOUT_FILENO) == 1) {
      return Usage(absl::StrCat(what, ": name a file with -o FILE, or redirect the output"));
    }
    std::fwrite(text.data(), 1, text.size(), stdout);
    return kExitOk;
  }
  const std::string tmp = output + ".partial";
  {
    std::ofstream out(tmp, std::ios::trunc | std::ios::binary);
    out << text;
    if (!out) {
      std::fprintf(stderr, "sslbench: cannot write %s\n", tmp.c_str());
      return kExitError;
    }
  }
  if (std::rename(tmp.c_str(), output.c_str()) != 0) {
    std::fprintf(stderr, "sslbench: cannot write %s: %s\n", output.c_str(), std::strerror(errno));
    return kExitError;
  }
  std::fprintf(stderr, "sslbench: wrote %s (%zu bytes)\n", output.c_str(), text.size());
  return kExitOk;
}

int CmdReport(const std::vector<std::string>& args) {
  int64_t id = 0;
  int exit_code = 0;
  if (!StudyIdArg(args, &id, &exit_code)) return exit_code;
  const std::string address = CoordinatorAddress();
  CoordinatorClient client(address, absl::Minutes(5), Token(), Credentials());
  absl::StatusOr<ReportInput> input = FetchReport(client, id);
  if (!input.ok()) return Fail(input.status(), address);
  const std::string figure = absl::GetFlag(FLAGS_figure);
  if (!figure.empty()) {
    absl::StatusOr<std::string> svg = FigureSvg(*input, figure);
    if (!svg.ok()) {
      if (absl::IsInvalidArgument(svg.status())) return Usage(std::string(svg.status().message()));
      return Fail(svg.status(), address);
    }
    return WriteOutput(*svg, "report --figure");
  }
  return WriteOutput(ReportHtml(*input), "report");
}

// --- local stack --------------------------------------------------------------

// The signals that end `up` and `demo`. Blocked in every thread (before any
// is started) and taken with sigtimedwait; SIGCHLD wakes the loop when a
// child exits.
sigset_t StopSignals(bool with_child) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  if (with_child) sigaddset(&set, SIGCHLD);
  return set;
}

bool StopSignalPending() {
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGINT) == 1 || sigismember(&pending, SIGTERM) == 1 ||
         sigismember(&pending, SIGHUP) == 1;
}

// Waits up to `timeout` for a signal of `set`; returns it, or 0.
int WaitSignal(const sigset_t& set, absl::Duration timeout) {
  const timespec ts = absl::ToTimespec(timeout);
  const int sig = sigtimedwait(&set, nullptr, &ts);
  return sig < 0 ? 0 : sig;
}

LocalStackOptions StackOptions(const std::string& state_dir) {
  LocalStackOptions options;
  options.state_dir = state_dir;
  options.workers = absl::GetFlag(FLAGS_workers);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  options.port = absl::GetFlag(FLAGS_port);
  options.blob_store = absl::GetFlag(FLAGS_blob_store);
  options.interrupted = StopSignalPending;
  return options;
}

int CmdUp(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage("up takes no arguments");
  const sigset_t signals = StopSignals(/*with_child=*/true);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::string state_dir = absl::GetFlag(FLAGS_state_dir);
  if (state_dir.empty()) state_dir = ".sslbench";

  absl::StatusOr<std::unique_ptr<LocalStack>> stack = LocalStack::Start(StackOptions(state_dir));
  if (!stack.ok()) {
    if (stack.status().code() == absl::StatusCode::kCancelled) return kExitInterrupted;
    std::fprintf(stderr, "sslbench: up: %s\n", std::string(stack.status().message()).c_str());
    return kExitError;
  }
  const std::string addr_file = (*stack)->state_dir() + "/coordinator.addr";
  std::error_code ec;
  const bool found_from_here =
      (*stack)->state_dir() ==
      std::filesystem::absolute(".sslbench", ec).lexically_normal().string();
  const std::string where =
      found_from_here
          ? absl::StrCat("  address in   ", addr_file, " (found from this folder)\n",
                         "  admin token  ", (*stack)->state_dir(),
                         "/token (found from this folder)\n",
                         "  TLS CA       ", (*stack)->ca_path(), " (found from this folder)\n")
          : absl::StrCat("  address in   ", addr_file, "; elsewhere use\n",
                         "               export SSLBENCH_COORDINATOR=",
                         (*stack)->address(), "\n",
                         "  admin token  ", (*stack)->state_dir(), "/token; elsewhere use\n",
                         "               --token_file=", (*stack)->state_dir(), "/token\n",
                         "  TLS CA       ", (*stack)->ca_path(), "; elsewhere use\n",
                         "               --tls_ca=", (*stack)->ca_path(), "\n");
  std::printf(
      "sslbench: local stack is up\n"
      "  coordinator  %s\n"
      "  database     %s\n"
      "  workers      %d x %d thread(s)\n"
      "  logs         %s/\n"
      "%s"
      "Try:  sslbench submit STUDY.yaml   then   sslbench watch ID\n"
      "Ctrl-C stops the stack.\n",
      (*stack)->address().c_str(), (*stack)->conninfo().c_str(),
      absl::GetFlag(FLAGS_workers), absl::GetFlag(FLAGS_worker_threads),
      (*stack)->log_dir().c_str(), where.c_str());
  std::fflush(stdout);

  int exit_code = kExitOk;
  while (true) {
    const int sig = WaitSignal(signals, absl::Seconds(1));
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
      std::fprintf(stderr, "\nsslbench: %s received, shutting down\n", strsignal(sig));
      break;
    }
    // A Ctrl-C reaches the children too: their exit then is no crash to
    // restart from.
    if (StopSignalPending()) continue;
    absl::Status children = (*stack)->CheckChildren();
    if (!children.ok()) {
      // A Ctrl-C reaches the children too; their exit is then expected.
      if (StopSignalPending()) {
        std::fprintf(stderr, "\nsslbench: interrupted, shutting down\n");
        break;
      }
      std::fprintf(stderr, "sslbench: up: %s\n",
                   std::string(children.message()).c_str());
      exit_code = kExitError;
      break;
    }
  }
  absl::Status stopped = (*stack)->Shutdown();
  if (!stopped.ok()) {
    std::fprintf(stderr, "sslbench: %s\n", std::string(stopped.message()).c_str());
    exit_code = kExitError;
  }
  std::fprintf(stderr, "sslbench: stopped\n");
  return exit_code;
}

absl::StatusOr<std::string> MakeDemoFolder() {
  std::string dir = absl::GetFlag(FLAGS_state_dir);
  if (!dir.empty()) return dir;
  char pattern[] = "/tmp/sslbench-demo-XXXXXX";
  if (mkdtemp(pattern) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a folder in /tmp: ",
                                            std::strerror(errno)));
  }
  // The database server may run as another user and must enter it.
  chmod(pattern, 0755);
  return std::string(pattern);
}

// Where the demo keeps its zoo and suite between runs:
// --cache_dir, else $XDG_CACHE_HOME/sslbench, else ~/.cache/sslbench.
std::string DemoCacheDir() {
  std::string dir = absl::GetFlag(FLAGS_cache_dir);
  if (!dir.empty()) return dir;
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return absl::StrCat(xdg, "/sslbench");
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr && home[0] == '/' ? home : "/tmp", "/.cache/sslbench");
}

// The study in small: the zoo's models (zoo.yaml) x the suite's domains
// (suite.yaml) x kNN, linear probes with and without BatchNorm, logistic
// regression and few-shot linear probes.
std::string DemoStudyYaml(const std::string& zoo_yaml, const std::string& suite_yaml) {
  return absl::StrCat(R"(# Written by `sslbench demo`: the zoo x the domain-shift suite x the
# protocols the field compares, then which in-domain protocol predicts
# out-of-domain accuracy.
name: demo-closer-look
)",
                      zoo_yaml, suite_yaml, R"(protocols:
  - name: knn
    ks: [20]
    euclidean_k: 20
  - name: linear
    learning_rates: [0.03, 0.1, 0.3, 1.0]
    epochs: 30
    warmup_epochs: 3
  - name: linear-bn
    kind: linear
    batch_norm: true
    learning_rates: [0.03, 0.1, 0.3, 1.0]
    epochs: 30
    warmup_epochs: 3
  - name: logreg
    num_cs: 8
    c_min: 1e-3
    c_max: 1e2
    max_iterations: 300
  - name: linear-fewshot
    kind: linear
    learning_rates: [0.1, 1.0]
    epochs: 30
    warmup_epochs: 3
    few_shot:
      shots: [5, 25]
      seeds: [0, 1, 2]
)");
}

// Builds (or reuses) the zoo and the suite under the cache folder; returns
// the study file's path in `state`.
absl::StatusOr<std::string> PrepareDemoStudy(const std::string& state) {
  const std::string cache = DemoCacheDir();
  const absl::Time start = absl::Now();
  std::fprintf(stderr, "sslbench: demo [1/4] model zoo in %s/zoo (built once, then reused)\n",
               cache.c_str());
  RETURN_IF_ERROR(RunZooTool(cache + "/zoo", 2));
  std::fprintf(stderr, "sslbench: demo [2/4] domain-shift suite in %s/suite\n", cache.c_str());
  SuiteOptions suite;
  suite.out = cache + "/suite";
  suite.train_per_domain = absl::GetFlag(FLAGS_train_per_domain);
  suite.test_per_domain = absl::GetFlag(FLAGS_test_per_domain);
  const SuiteProgress suite_progress = [](const std::string& domain, int64_t done, int64_t total) {
    std::fprintf(stderr, "\rsslbench: data build: %-16s %7lld / %lld images", domain.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total));
    if (done == total) std::fprintf(stderr, "\n");
  };
  ASSIGN_OR_RETURN(std::vector<SuiteDomain> domains, BuildSuite(suite, suite_progress));
  std::fprintf(stderr, "sslbench: demo: zoo and suite ready after %s (%zu domains)\n",
               FormatDuration(absl::ToDoubleSeconds(absl::Now() - start)).c_str(),
               domains.size());
  ASSIGN_OR_RETURN(const std::string zoo_yaml, datasets::ReadWholeFile(cache + "/zoo/zoo.yaml"));
  ASSIGN_OR_RETURN(const std::string suite_yaml,
                   datasets::ReadWholeFile(cache + "/suite/suite.yaml"));
  const std::string study_path = state + "/demo-study.yaml";
  std::ofstream out(study_path, std::ios::trunc);
  out << DemoStudyYaml(zoo_yaml, suite_yaml);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", study_path));
  return study_path;
}

// Runs the demo study on a started stack; returns the exit code.
int RunDemoStudy(LocalStack& stack, const sigset_t& signals) {
  const std::string state = stack.state_dir();
  absl::StatusOr<std::string> study_path = PrepareDemoStudy(state);
  if (!study_path.ok()) {
    if (absl::IsCancelled(study_path.status())) return kExitInterrupted;
    return Fail(study_path.status(), stack.address());
  }
  std::fprintf(stderr, "sslbench: demo [3/4] the study: %s\n", study_path->c_str());
  absl::StatusOr<v1::StudySpec> spec = LoadStudyFile(*study_path);
  if (!spec.ok()) return Fail(spec.status(), stack.address());

  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> tls =
      ClientCredentials(TlsClientFiles{stack.ca_path(), "", ""});
  if (!tls.ok()) return Fail(tls.status(), stack.address());
  CoordinatorClient client(stack.address(), absl::Seconds(60), stack.admin_token(), *tls);
  absl::StatusOr<v1::SubmitStudyResponse> submitted = client.SubmitStudy(*spec, "");
  if (!submitted.ok()) return Fail(submitted.status(), stack.address());
  const int64_t id = submitted->study_id();
  std::fprintf(stderr, "sslbench: submitted study %lld (%s): %lld tasks\n",
               static_cast<long long>(id), study_path->c_str(),
               static_cast<long long>(submitted->tasks()));

  // The watch runs here; a second thread takes the stop signals and watches
  // the children, and ends the watch on either.
  StudyWatcher watcher(&client, id, stdout, isatty(STDOUT_FILENO) == 1);
  std::atomic<bool> done{false};
  std::atomic<int> stop_signal{0};
  absl::Status child_error;
  std::thread monitor([&] {
    while (!done.load()) {
      const int sig = WaitSignal(signals, absl::Milliseconds(500));
      if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
        stop_signal = sig;
        watcher.Cancel();
        return;
      }
      if (StopSignalPending()) continue;  // taken on the next round
      absl::Status children = stack.CheckChildren();
      if (!children.ok()) {
        if (StopSignalPending()) continue;  // taken on the next round
        child_error = children;
        watcher.Cancel();
        return;
      }
    }
  });
  absl::StatusOr<v1::StudyStatus> final_status = watcher.Run();
  done = true;
  monitor.join();

  if (stop_signal.load() != 0) {
    std::fprintf(stderr, "\nsslbench: %s received, shutting down\n",
                 strsignal(stop_signal.load()));
    return kExitInterrupted;
  }
  if (!child_error.ok()) {
    std::fprintf(stderr, "sslbench: demo: %s\n", std::string(child_error.message()).c_str());
    return kExitError;
  }
  if (!final_status.ok()) return Fail(final_status.status(), stack.address());
  const int watch_code = ReportEnd(*final_status);

  absl::StatusOr<v1::ListResultsResponse> results = client.ListResults(id);
  if (!results.ok()) return Fail(results.status(), stack.address());
  if (watch_code != kExitOk) return kExitError;
  if (results->results().empty()) {
    std::fprintf(stderr, "sslbench: demo: the study succeeded but has no results\n");
    return kExitError;
  }
  // BatchNorm before the head: the linear probe least sensitive to the
  // scale of each model's features.
  std::printf("\n%s", FormatModelAccuracy(*spec, *results, "linear-bn").c_str());
  std::fprintf(stderr, "sslbench: demo [4/4] correlations across the %d models, the report\n",
               spec->models_size());
  v1::CorrelateRequest request;
  request.set_study_id(id);
  request.set_group_by("family");
  absl::StatusOr<v1::CorrelateResponse> correlation = Correlate(client, request);
  if (!correlation.ok()) return Fail(correlation.status(), stack.address());
  std::printf("\n%s", FormatPredictorRanking(*correlation).c_str());
  absl::StatusOr<ReportInput> report = FetchReport(client, id);
  if (!report.ok()) return Fail(report.status(), stack.address());
  const std::string report_path = state + "/report.html";
  {
    std::ofstream out(report_path, std::ios::trunc);
    out << ReportHtml(*report);
    if (!out) {
      std::fprintf(stderr, "sslbench: demo: cannot write %s\n", report_path.c_str());
      return kExitError;
    }
  }
  std::printf("\nthe report: %s\nthe study file: %s\n", report_path.c_str(), study_path->c_str());
  std::fflush(stdout);
  return kExitOk;
}

int CmdDemo(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage("demo takes no arguments");
  std::error_code ec;
  if (!std::filesystem::is_directory(kDemoDataset, ec)) {
    std::fprintf(stderr,
                 "sslbench: demo: the demo needs Fashion-MNIST (IDX files) in %s\n",
                 kDemoDataset);
    return kExitError;
  }
  const sigset_t signals = StopSignals(/*with_child=*/false);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  absl::StatusOr<std::string> state_dir = MakeDemoFolder();
  if (!state_dir.ok()) return Fail(state_dir.status(), "");

  absl::StatusOr<std::unique_ptr<LocalStack>> stack =
      LocalStack::Start(StackOptions(*state_dir));
  if (!stack.ok()) {
    if (stack.status().code() == absl::StatusCode::kCancelled) return kExitInterrupted;
    std::fprintf(stderr, "sslbench: demo: %s\n", std::string(stack.status().message()).c_str());
    return kExitError;
  }
  int exit_code = RunDemoStudy(**stack, signals);
  absl::Status stopped = (*stack)->Shutdown();
  if (!stopped.ok()) {
    std::fprintf(stderr, "sslbench: %s\n", std::string(stopped.message()).c_str());
    if (exit_code == kExitOk) exit_code = kExitError;
  }
  std::fprintf(stderr, "sslbench: demo %s; state and logs in %s\n",
               exit_code == kExitOk            ? "finished"
               : exit_code == kExitInterrupted ? "interrupted"
                                               : "failed",
               (*stack)->state_dir().c_str());
  return exit_code;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "client/main.cc");
  };
  config.contains_helpshort_flags = config.contains_help_flags;
  absl::SetFlagsUsageConfig(config);
  // `-o FILE` is the short form of --output=FILE (Abseil flags have no short
  // forms); everything after `--` is left alone.
  std::vector<std::string> rewritten;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") {
      for (; i < argc; ++i) rewritten.emplace_back(argv[i]);
      break;
    }
    if (i > 0 && arg == "-o") {
      if (i + 1 >= argc) return Usage("-o needs a file name");
      rewritten.push_back(absl::StrCat("--output=", argv[++i]));
    } else if (i > 0 && absl::StartsWith(arg, "-o=")) {
      rewritten.push_back(absl::StrCat("--output=", arg.substr(3)));
    } else {
      rewritten.push_back(arg);
    }
  }
  // The first word that is not a flag (or a flag's value) names the command.
  const auto known = [](const std::string& name) {
    return absl::FindCommandLineFlag(name) != nullptr;
  };
  const std::vector<std::string> given = GivenFlagNames(rewritten, known);
  const bool help = std::find(given.begin(), given.end(), "help") != given.end();
  const bool version = std::find(given.begin(), given.end(), "version") != given.end();
  std::string first_word;
  for (size_t i = 1; i < rewritten.size(); ++i) {
    if (!rewritten[i].empty() && rewritten[i][0] != '-') {
      first_word = rewritten[i];
      break;
    }
  }
  if (version || first_word == "version") {
    std::printf("sslbench %s (protobuf %s, gRPC %s, %s)\n", kSslbenchVersion, kProtobufVersion,
                kGrpcVersion, kCompilerVersion);
    return kExitOk;
  }
  if (help) {
    const std::string own = CommandUsage(kUsage, first_word);
    std::fputs(own.empty() ? kUsage : own.c_str(), stdout);
    return kExitOk;
  }
  if (const std::string problem = CheckCommandFlags(first_word, given, known); !problem.empty()) {
    return Usage(problem);
  }
  std::vector<char*> rewritten_argv;
  for (std::string& arg : rewritten) rewritten_argv.push_back(arg.data());
  rewritten_argv.push_back(nullptr);
  std::vector<char*> positional = absl::ParseCommandLine(
      static_cast<int>(rewritten.size()), rewritten_argv.data());
  std::vector<std::string> args(positional.begin() + 1, positional.end());
  if (args.empty()) return Usage("missing command");
  const std::string command = args.front();
  args.erase(args.begin());
  if (command == "help") {
    if (args.size() > 1) return Usage("help takes at most one command");
    if (args.empty()) {
      std::fputs(kUsage, stdout);
      return kExitOk;
    }
    const std::string own = CommandUsage(kUsage, args[0]);
    if (own.empty()) return Usage(absl::StrCat("unknown command \"", args[0], "\""));
    std::fputs(own.c_str(), stdout);
    return kExitOk;
  }
  if (command == "submit") return CmdSubmit(args);
  if (command == "spec") return CmdSpec(args);
  if (command == "completion") return CmdCompletion(args);
  if (command == "watch") return CmdWatch(args);
  if (command == "status") return CmdStatus(args);
  if (command == "results") return CmdResults(args);
  if (command == "correlate") return CmdCorrelate(args);
  if (command == "data") return CmdData(args);
  if (command == "zoo") return CmdZoo(args);
  if (command == "report") return CmdReport(args);
  if (command == "cancel") return CmdCancel(args);
  if (command == "artifact") return CmdArtifact(args);
  if (command == "workers") return CmdWorkers(args);
  if (command == "tokens") return CmdTokens(args);
  if (command == "cache") return CmdCache(args);
  if (command == "up") return CmdUp(args);
  if (command == "demo") return CmdDemo(args);
  return Usage(absl::StrCat("unknown command \"", command, "\""));
}

}  // namespace
}  // namespace sslbench::client

int main(int argc, char** argv) { return sslbench::client::Main(argc, argv); }
