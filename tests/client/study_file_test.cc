#include "client/study_file.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_replace.h"
#include "common/dataset_digest.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace sslbench::client {
namespace {

using ::sslbench::client::testing::MakeTempDir;
using ::sslbench::client::testing::ReadFile;
using ::sslbench::client::testing::StatusIs;
using ::sslbench::client::testing::WriteFile;
using ::testing::DoubleEq;
using ::testing::ElementsAre;
using ::testing::FloatEq;

constexpr char kBase[] = R"(name: s1
models:
  - name: a
    path: models/a.pt
    channels: 1
  - name: b
    path: models/b.pt
datasets:
  - name: ds
    root: data/ds
protocols:
  - name: knn
)";

const char* const kIdxFiles[] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};

class StudyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("study");
    WriteFile(dir_ + "/models/a.pt", "model a bytes");
    WriteFile(dir_ + "/models/b.pt", "model b bytes");
    for (const char* f : kIdxFiles) WriteFile(dir_ + "/data/ds/" + f, f);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  absl::StatusOr<v1::StudySpec> Parse(
      const std::vector<std::pair<std::string, std::string>>& edits = {}) {
    std::string yaml = kBase;
    for (const auto& [from, to] : edits) {
      EXPECT_NE(yaml.find(from), std::string::npos) << from;
      yaml = absl::StrReplaceAll(yaml, {{from, to}});
    }
    return ParseStudyYaml(yaml, dir_);
  }

  std::string dir_;
};

TEST_F(StudyFileTest, ResolvesPathsFillsHashesAndDefaults) {
  absl::StatusOr<v1::StudySpec> spec = Parse();
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "s1");
  EXPECT_EQ(spec->max_attempts(), 3);
  EXPECT_EQ(spec->extract_batch_size(), 256);
  ASSERT_EQ(spec->models_size(), 2);
  const v1::ModelSpec& a = spec->models(0);
  EXPECT_EQ(a.path(), dir_ + "/models/a.pt");
  EXPECT_EQ(a.sha256(), Sha256Hex("model a bytes"));
  EXPECT_EQ(spec->models(1).sha256(), Sha256Hex("model b bytes"));
  EXPECT_EQ(a.input_size(), 0);
  EXPECT_EQ(a.channels(), 1);
  EXPECT_THAT(a.mean(), ElementsAre(FloatEq(0.0f)));
  EXPECT_THAT(a.std(), ElementsAre(FloatEq(1.0f)));

  ASSERT_EQ(spec->datasets_size(), 1);
  const v1::DatasetSpec& ds = spec->datasets(0);
  EXPECT_EQ(ds.root(), dir_ + "/data/ds");
  EXPECT_EQ(ds.format(), "idx");
  EXPECT_EQ(ds.role(), v1::DATASET_ROLE_IN_DOMAIN);
  absl::StatusOr<std::string> digest = DatasetDigest(ds);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(ds.digest(), *digest);

  ASSERT_EQ(spec->protocols_size(), 1);
  ASSERT_TRUE(spec->protocols(0).has_knn());
  const v1::KnnParams& knn = spec->protocols(0).knn();
  EXPECT_THAT(knn.ks(), ElementsAre(10, 20, 100, 200));
  EXPECT_DOUBLE_EQ(knn.temperature(), 0.07);
  EXPECT_EQ(knn.euclidean_k(), 20);
  EXPECT_EQ(knn.test_chunk_rows(), 1024);
  EXPECT_EQ(knn.train_chunk_rows(), 16384);
}

TEST_F(StudyFileTest, KeepsExplicitValues) {
  absl::StatusOr<v1::StudySpec> spec = Parse({
      {"name: s1\n",
       "name: s1\nmax_attempts: 5\nextract_batch_size: 64\ngpu_tasks: [extract, finetune]\n"},
      {"    channels: 1\n",
       "    channels: 3\n    input_size: 32\n    mean: [0.5, 0.4, 0.3]\n    std: 0.25\n"},
      {"    root: data/ds\n",
       "    root: data/ds\n    format: idx\n    role: out-of-domain\n"
       "    train_limit: 1000\n    test_limit: 100\n"},
      {"  - name: knn\n",
       "  - name: knn-small\n    kind: knn\n    ks: [1, 5]\n    temperature: 0.1\n"
       "    euclidean_k: -1\n    test_chunk_rows: 10\n    train_chunk_rows: 20\n"},
  });
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->max_attempts(), 5);
  EXPECT_EQ(spec->extract_batch_size(), 64);
  EXPECT_THAT(spec->gpu_task_kinds(),
              ElementsAre(v1::TASK_KIND_EXTRACT, v1::TASK_KIND_FINETUNE));
  const v1::ModelSpec& a = spec->models(0);
  EXPECT_EQ(a.channels(), 3);
  EXPECT_EQ(a.input_size(), 32);
  EXPECT_THAT(a.mean(), ElementsAre(FloatEq(0.5f), FloatEq(0.4f), FloatEq(0.3f)));
  EXPECT_THAT(a.std(), ElementsAre(FloatEq(0.25f)));
  const v1::DatasetSpec& ds = spec->datasets(0);
  EXPECT_EQ(ds.role(), v1::DATASET_ROLE_OUT_OF_DOMAIN);
  EXPECT_EQ(ds.train_limit(), 1000);
  EXPECT_EQ(ds.test_limit(), 100);
  const v1::ProtocolSpec& p = spec->protocols(0);
  EXPECT_EQ(p.name(), "knn-small");
  EXPECT_THAT(p.knn().ks(), ElementsAre(1, 5));
  EXPECT_DOUBLE_EQ(p.knn().temperature(), 0.1);
  EXPECT_EQ(p.knn().euclidean_k(), -1);
  EXPECT_EQ(p.knn().test_chunk_rows(), 10);
  EXPECT_EQ(p.knn().train_chunk_rows(), 20);
}

TEST_F(StudyFileTest, AbsolutePathsAreKept) {
  const std::string other = MakeTempDir("elsewhere");
  WriteFile(other + "/m.pt", "elsewhere");
  absl::StatusOr<v1::StudySpec> spec =
      Parse({{"path: models/a.pt", "path: " + other + "/m.pt"},
             {"root: data/ds", "root: " + dir_ + "/data/../data/ds"}});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->models(0).path(), other + "/m.pt");
  EXPECT_EQ(spec->datasets(0).root(), dir_ + "/data/ds");
  std::filesystem::remove_all(other);
}

// file:// URIs stay in the spec; the bytes hashed are those under the
// reader's file root, with the same hash and digest as the plain paths.
TEST_F(StudyFileTest, FileUrisAreKeptAndReadUnderTheFileRoot) {
  const std::string yaml = absl::StrReplaceAll(
      kBase, {{"path: models/a.pt", "path: file:///models/a.pt"},
              {"path: models/b.pt", "path: file:///models/b.pt"},
              {"root: data/ds", "root: file:///data/ds"}});
  StudyFileOptions options;
  options.locations.file_root = dir_;
  absl::StatusOr<v1::StudySpec> spec = ParseStudyYaml(yaml, "/somewhere/else", options);
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<v1::StudySpec> plain = Parse();
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(spec->models(0).path(), "file:///models/a.pt");
  EXPECT_EQ(spec->models(0).sha256(), plain->models(0).sha256());
  EXPECT_EQ(spec->datasets(0).root(), "file:///data/ds");
  EXPECT_EQ(spec->datasets(0).digest(), plain->datasets(0).digest());

  // Under another root the files are not found, and the error says where.
  options.locations.file_root = dir_ + "/nowhere";
  absl::StatusOr<v1::StudySpec> missing = ParseStudyYaml(yaml, dir_, options);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              ::testing::HasSubstr(dir_ + "/nowhere/models/a.pt"));
  // A scheme nobody resolves is refused naming the field.
  absl::StatusOr<v1::StudySpec> s3 = ParseStudyYaml(
      absl::StrReplaceAll(kBase, {{"path: models/a.pt", "path: s3://bucket/a.pt"}}), dir_);
  EXPECT_EQ(s3.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s3.status().message()), ::testing::HasSubstr("models[0].path"));
}

TEST_F(StudyFileTest, GzipFilesAreAccepted) {
  for (const char* f : kIdxFiles) {
    WriteFile(dir_ + "/data/gz/" + std::string(f) + ".gz", f);
  }
  absl::StatusOr<v1::StudySpec> spec = Parse({{"root: data/ds", "root: data/gz"}});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->datasets(0).digest().size(), 64u);
}

TEST_F(StudyFileTest, LoadStudyFileResolvesAgainstTheFilesFolder) {
  WriteFile(dir_ + "/study.yaml", kBase);
  // Parsed from another working directory, paths still resolve against the
  // study file's folder.
  absl::StatusOr<v1::StudySpec> spec = LoadStudyFile(dir_ + "/study.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->models(0).path(), dir_ + "/models/a.pt");
  EXPECT_EQ(spec->datasets(0).root(), dir_ + "/data/ds");
}

TEST_F(StudyFileTest, LoadStudyFileErrorsStartWithThePath) {
  WriteFile(dir_ + "/study.yaml",
            absl::StrReplaceAll(kBase, {{"    channels: 1\n", "    input_size: abc\n"}}));
  EXPECT_THAT(LoadStudyFile(dir_ + "/study.yaml").status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       dir_ + "/study.yaml: models[0].input_size: \"abc\" is not an "
                              "integer (line 5)"));
  EXPECT_THAT(LoadStudyFile(dir_ + "/missing.yaml").status(),
              StatusIs(absl::StatusCode::kNotFound, dir_ + "/missing.yaml"));
}

struct ErrorCase {
  std::string label;
  std::vector<std::pair<std::string, std::string>> edits;
  absl::StatusCode code;
  std::string message;  // a substring; {DIR} is replaced by the test folder

  friend void PrintTo(const ErrorCase& c, std::ostream* os) { *os << c.label; }
};

class StudyFileErrorTest : public StudyFileTest,
                           public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(StudyFileErrorTest, NamesTheField) {
  const ErrorCase& c = GetParam();
  const std::string message = absl::StrReplaceAll(c.message, {{"{DIR}", dir_}});
  EXPECT_THAT(Parse(c.edits).status(), StatusIs(c.code, message));
}

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kNotFound = absl::StatusCode::kNotFound;

INSTANTIATE_TEST_SUITE_P(
    Errors, StudyFileErrorTest,
    ::testing::Values(
        // Syntax and shape.
        ErrorCase{"MalformedYaml", {{"  - name: knn\n", "  - name: [knn\n"}}, kInvalid,
                  "not valid YAML"},
        ErrorCase{"TopLevelList", {{"name: s1\n", "- name: s1\n"}}, kInvalid,
                  "study: expected a mapping with keys name, max_attempts"},
        ErrorCase{"UnknownTopLevelKey", {{"name: s1\n", "name: s1\nfoo: 1\n"}},
                  kInvalid, "foo: unknown key (known: name, max_attempts"},
        ErrorCase{"UnknownModelKey", {{"    channels: 1\n", "    colour: red\n"}},
                  kInvalid, "models[0].colour: unknown key"},
        ErrorCase{"UnknownProtocolKey", {{"  - name: knn\n", "  - name: knn\n    k: 3\n"}},
                  kInvalid, "protocols[0].k: unknown key"},
        ErrorCase{"DuplicateKey", {{"name: s1\n", "name: s1\nname: s2\n"}}, kInvalid,
                  "name: given twice"},
        // Required fields.
        ErrorCase{"MissingName", {{"name: s1\n", ""}}, kInvalid, "name: is required"},
        ErrorCase{"MissingModels",
                  {{"models:\n  - name: a\n    path: models/a.pt\n    channels: 1\n"
                    "  - name: b\n    path: models/b.pt\n",
                    ""}},
                  kInvalid, "models: is required"},
        ErrorCase{"EmptyModels",
                  {{"models:\n  - name: a\n    path: models/a.pt\n    channels: 1\n"
                    "  - name: b\n    path: models/b.pt\n",
                    "models: []\n"}},
                  kInvalid, "models: must not be empty"},
        ErrorCase{"ModelsNotAList",
                  {{"models:\n  - name: a\n    path: models/a.pt\n    channels: 1\n"
                    "  - name: b\n    path: models/b.pt\n",
                    "models: a.pt\n"}},
                  kInvalid, "models: expected a list, got \"a.pt\""},
        ErrorCase{"ModelNotAMapping", {{"  - name: b\n    path: models/b.pt\n", "  - b\n"}},
                  kInvalid, "models[1]: expected a mapping"},
        ErrorCase{"MissingModelPath", {{"    path: models/b.pt\n", ""}}, kInvalid,
                  "models[1].path: is required"},
        ErrorCase{"MissingDatasetRoot", {{"    root: data/ds\n", ""}}, kInvalid,
                  "datasets[0].root: is required"},
        ErrorCase{"MissingProtocols", {{"protocols:\n  - name: knn\n", ""}}, kInvalid,
                  "protocols: is required"},
        // Types.
        ErrorCase{"IntegerNotANumber", {{"    channels: 1\n", "    input_size: abc\n"}},
                  kInvalid, "models[0].input_size: \"abc\" is not an integer (line 5)"},
        ErrorCase{"IntegerIsAFraction", {{"    channels: 1\n", "    channels: 1.5\n"}},
                  kInvalid, "models[0].channels: \"1.5\" is not an integer"},
        ErrorCase{"IntegerIsAList", {{"    channels: 1\n", "    channels: [1]\n"}},
                  kInvalid, "models[0].channels: expected an integer, got a list"},
        ErrorCase{"IntegerOverflow", {{"    channels: 1\n", "    input_size: 9999999999\n"}},
                  kInvalid, "models[0].input_size: 9999999999 is out of range"},
        ErrorCase{"NumberListItem", {{"    channels: 1\n", "    mean: [0.1, x]\n"}},
                  kInvalid, "models[0].mean[1]: \"x\" is not a number"},
        ErrorCase{"NumberListIsAMapping", {{"    channels: 1\n", "    std: {a: 1}\n"}},
                  kInvalid, "models[0].std: expected a list of numbers, got a mapping"},
        ErrorCase{"GpuTaskKindUnknown", {{"name: s1\n", "name: s1\ngpu_tasks: [extract, gpu]\n"}},
                  kInvalid, "gpu_tasks[1]: \"gpu\" is not a task kind"},
        ErrorCase{"GpuTasksIsAMapping", {{"name: s1\n", "name: s1\ngpu_tasks: {a: 1}\n"}},
                  kInvalid, "gpu_tasks: expected a list of task kinds, got a mapping"},
        ErrorCase{"StringIsAList", {{"name: s1\n", "name: [s1]\n"}}, kInvalid,
                  "name: expected a string, got a list"},
        ErrorCase{"KsItem", {{"  - name: knn\n", "  - name: knn\n    ks: [10, ten]\n"}},
                  kInvalid, "protocols[0].ks[1]: \"ten\" is not an integer"},
        ErrorCase{"Temperature",
                  {{"  - name: knn\n", "  - name: knn\n    temperature: warm\n"}},
                  kInvalid, "protocols[0].temperature: \"warm\" is not a number"},
        // Missing files.
        ErrorCase{"MissingModelFile", {{"path: models/b.pt", "path: models/missing.pt"}},
                  kNotFound, "models[1].path: file {DIR}/models/missing.pt does not exist"},
        ErrorCase{"ModelPathIsAFolder", {{"path: models/b.pt", "path: models"}}, kInvalid,
                  "models[1].path: {DIR}/models is not a regular file"},
        ErrorCase{"MissingDatasetFolder", {{"root: data/ds", "root: /nonexistent/x"}},
                  kNotFound, "datasets[0].root: folder /nonexistent/x does not exist"},
        ErrorCase{"MissingDatasetFile", {{"root: data/ds", "root: models"}}, kNotFound,
                  "datasets[0].root: IDX file {DIR}/models/train-images-idx3-ubyte[.gz] not found"},
        // Impossible values.
        ErrorCase{"BadStudyName", {{"name: s1\n", "name: my study\n"}}, kInvalid,
                  "name: \"my study\" must be"},
        ErrorCase{"DuplicateModelName", {{"  - name: b\n", "  - name: a\n"}}, kInvalid,
                  "models[1].name: duplicate model \"a\""},
        ErrorCase{"Channels", {{"    channels: 1\n", "    channels: 2\n"}}, kInvalid,
                  "models[0].channels: 2 is not 1 or 3"},
        ErrorCase{"MeanPerChannel",
                  {{"    channels: 1\n", "    channels: 3\n    mean: [0.1, 0.2]\n"}},
                  kInvalid, "models[0].mean: 2 values for 3 channels"},
        ErrorCase{"NegativeStd", {{"    channels: 1\n", "    std: [-1]\n"}}, kInvalid,
                  "models[0].std: -1 must be a positive number"},
        ErrorCase{"NegativeInputSize", {{"    channels: 1\n", "    input_size: -3\n"}},
                  kInvalid, "models[0].input_size: -3 is not in [0, 4096]"},
        ErrorCase{"MaxAttemptsZero", {{"name: s1\n", "name: s1\nmax_attempts: 0\n"}},
                  kInvalid, "max_attempts: must be in [1, 100]"},
        ErrorCase{"MaxAttemptsLarge", {{"name: s1\n", "name: s1\nmax_attempts: 1000\n"}},
                  kInvalid, "max_attempts: must be in [1, 100]"},
        ErrorCase{"NegativeTrainLimit",
                  {{"    root: data/ds\n", "    root: data/ds\n    train_limit: -5\n"}},
                  kInvalid, "datasets[0].train_limit: -5 is out of range"},
        ErrorCase{"Role", {{"    root: data/ds\n", "    root: data/ds\n    role: both\n"}},
                  kInvalid, "datasets[0].role: \"both\" is not in-domain or out-of-domain"},
        ErrorCase{"Format", {{"    root: data/ds\n", "    root: data/ds\n    format: tar\n"}},
                  kInvalid, "datasets[0].format: \"tar\" is not supported"},
        ErrorCase{"ProtocolKind",
                  {{"  - name: knn\n", "  - name: lin\n    kind: svm\n"}}, kInvalid,
                  "protocols[0].kind: \"svm\" is not supported (supported: knn, linear, "
                  "logreg"},
        ErrorCase{"ProtocolKindMissing", {{"  - name: knn\n", "  - name: probe\n"}},
                  kInvalid,
                  "protocols[0].kind: is required for protocol \"probe\" (known kinds: "
                  "knn, linear, logreg"},
        ErrorCase{"KOutOfRange", {{"  - name: knn\n", "  - name: knn\n    ks: [0]\n"}},
                  kInvalid, "protocols[0].ks: 0 is not in [1, 10000]"},
        ErrorCase{"KsEmpty", {{"  - name: knn\n", "  - name: knn\n    ks: []\n"}},
                  kInvalid, "protocols[0].ks: at least one k is required"},
        ErrorCase{"EuclideanZero",
                  {{"  - name: knn\n", "  - name: knn\n    euclidean_k: 0\n"}}, kInvalid,
                  "protocols[0].euclidean_k"},
        ErrorCase{"EuclideanBelowMinusOne",
                  {{"  - name: knn\n", "  - name: knn\n    euclidean_k: -2\n"}}, kInvalid,
                  "protocols[0].euclidean_k: -2 must be -1 (off)"},
        ErrorCase{"NegativeTemperature",
                  {{"  - name: knn\n", "  - name: knn\n    temperature: -0.1\n"}},
                  kInvalid, "protocols[0].temperature: -0.1 must be a positive number"},
        ErrorCase{"ZeroChunkRows",
                  {{"  - name: knn\n", "  - name: knn\n    test_chunk_rows: 0\n"}},
                  kInvalid, "protocols[0].test_chunk_rows: must be >= 1"}),
    [](const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.label; });

TEST_F(StudyFileTest, EmptyDocument) {
  EXPECT_THAT(ParseStudyYaml("", dir_).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "empty"));
  EXPECT_THAT(ParseStudyYaml("- a\n- b\n", dir_).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "study: expected a mapping"));
}

// --- linear, logistic regression, few-shot -----------------------------------

constexpr char kKnnLine[] = "  - name: knn\n";

// The base study with `protocols` in place of its single kNN protocol.
std::pair<std::string, std::string> Protocols(const std::string& protocols) {
  return {kKnnLine, protocols};
}

TEST_F(StudyFileTest, ParsesEveryKindWithItsKeys) {
  absl::StatusOr<v1::StudySpec> spec = Parse({Protocols(
      "  - name: knn-sweep\n"
      "    kind: knn\n"
      "    ks: 20\n"
      "    temperatures: [0.02, 0.07]\n"
      "  - name: lin\n"
      "    kind: linear\n"
      "    learning_rates: [0.01, 0.1]\n"
      "    batch_norm: true\n"
      "    standardize: no\n"
      "    epochs: 30\n"
      "    batch_size: 512\n"
      "    warmup_epochs: 2\n"
      "    momentum: 0.8\n"
      "    weight_decay: 1e-4\n"
      "    grad_clip: 5\n"
      "    val_fraction: 0.2\n"
      "    seed: 12345678901\n"
      "    init_std: 0.001\n"
      "  - name: lr\n"
      "    kind: logreg\n"
      "    cs: [0.1, 1, 10]\n"
      "    num_cs: 7\n"
      "    c_min: 1e-3\n"
      "    c_max: 1e3\n"
      "    val_fraction: 0.25\n"
      "    max_iterations: 50\n"
      "    tolerance: 1e-4\n"
      "    seed: 7\n")});
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->protocols_size(), 3);

  const v1::ProtocolSpec& knn = spec->protocols(0);
  ASSERT_TRUE(knn.has_knn());
  EXPECT_THAT(knn.knn().ks(), ElementsAre(20));
  EXPECT_THAT(knn.knn().temperatures(), ElementsAre(DoubleEq(0.02), DoubleEq(0.07)));
  EXPECT_FALSE(knn.has_few_shot());

  const v1::ProtocolSpec& lin = spec->protocols(1);
  EXPECT_EQ(lin.name(), "lin");
  ASSERT_TRUE(lin.has_linear());
  const v1::LinearParams& l = lin.linear();
  EXPECT_THAT(l.learning_rates(), ElementsAre(DoubleEq(0.01), DoubleEq(0.1)));
  EXPECT_TRUE(l.batch_norm());
  EXPECT_FALSE(l.standardize());
  EXPECT_EQ(l.epochs(), 30);
  EXPECT_EQ(l.batch_size(), 512);
  EXPECT_EQ(l.warmup_epochs(), 2);
  EXPECT_DOUBLE_EQ(l.momentum(), 0.8);
  EXPECT_DOUBLE_EQ(l.weight_decay(), 1e-4);
  EXPECT_DOUBLE_EQ(l.grad_clip(), 5);
  EXPECT_DOUBLE_EQ(l.val_fraction(), 0.2);
  EXPECT_EQ(l.seed(), 12345678901);
  EXPECT_DOUBLE_EQ(l.init_std(), 0.001);

  const v1::ProtocolSpec& lr = spec->protocols(2);
  ASSERT_TRUE(lr.has_logreg());
  const v1::LogRegParams& g = lr.logreg();
  EXPECT_THAT(g.cs(), ElementsAre(DoubleEq(0.1), DoubleEq(1), DoubleEq(10)));
  EXPECT_EQ(g.num_cs(), 7);
  EXPECT_DOUBLE_EQ(g.c_min(), 1e-3);
  EXPECT_DOUBLE_EQ(g.c_max(), 1e3);
  EXPECT_DOUBLE_EQ(g.val_fraction(), 0.25);
  EXPECT_EQ(g.max_iterations(), 50);
  EXPECT_DOUBLE_EQ(g.tolerance(), 1e-4);
  EXPECT_EQ(g.seed(), 7);
}

TEST_F(StudyFileTest, KindFollowsTheNameAndDefaultsApply) {
  absl::StatusOr<v1::StudySpec> spec =
      Parse({Protocols("  - name: linear\n  - name: logreg\n")});
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->protocols_size(), 2);
  ASSERT_TRUE(spec->protocols(0).has_linear());
  const v1::LinearParams& l = spec->protocols(0).linear();
  EXPECT_EQ(l.learning_rates_size(), 8);
  EXPECT_EQ(l.epochs(), 100);
  EXPECT_EQ(l.batch_size(), 1024);
  EXPECT_EQ(l.warmup_epochs(), 5);
  EXPECT_DOUBLE_EQ(l.momentum(), 0.9);
  EXPECT_DOUBLE_EQ(l.val_fraction(), 0.1);
  EXPECT_DOUBLE_EQ(l.init_std(), 0.01);
  EXPECT_FALSE(l.batch_norm());
  ASSERT_TRUE(spec->protocols(1).has_logreg());
  const v1::LogRegParams& g = spec->protocols(1).logreg();
  EXPECT_TRUE(g.cs().empty());
  EXPECT_EQ(g.num_cs(), 45);
  EXPECT_DOUBLE_EQ(g.c_min(), 1e-6);
  EXPECT_DOUBLE_EQ(g.c_max(), 1e5);
  EXPECT_EQ(g.max_iterations(), 1000);
  EXPECT_DOUBLE_EQ(g.tolerance(), 1e-6);
}

TEST_F(StudyFileTest, FewShotOnEveryKind) {
  absl::StatusOr<v1::StudySpec> spec = Parse({Protocols(
      "  - name: knn\n"
      "    few_shot:\n"
      "      shots: [1, 5, 10]\n"
      "      fractions: [0.01, 0.1]\n"
      "      seeds: [0, 1, 2, 9000000000]\n"
      "  - name: linear\n"
      "    few_shot: {shots: 5}\n"
      "  - name: logreg\n"
      "    few_shot:\n"
      "      fractions: [0.5]\n"
      "      seeds: [4]\n")});
  ASSERT_TRUE(spec.ok()) << spec.status();
  const v1::FewShot& knn = spec->protocols(0).few_shot();
  EXPECT_THAT(knn.shots(), ElementsAre(1, 5, 10));
  EXPECT_THAT(knn.fractions(), ElementsAre(DoubleEq(0.01), DoubleEq(0.1)));
  EXPECT_THAT(knn.seeds(), ElementsAre(0, 1, 2, 9000000000));
  ASSERT_TRUE(spec->protocols(1).has_few_shot());
  const v1::FewShot& linear = spec->protocols(1).few_shot();
  EXPECT_THAT(linear.shots(), ElementsAre(5));
  EXPECT_TRUE(linear.fractions().empty());
  EXPECT_THAT(linear.seeds(), ElementsAre(0, 1, 2));  // the default
  const v1::FewShot& logreg = spec->protocols(2).few_shot();
  EXPECT_TRUE(logreg.shots().empty());
  EXPECT_THAT(logreg.fractions(), ElementsAre(DoubleEq(0.5)));
  EXPECT_THAT(logreg.seeds(), ElementsAre(4));
}

// Fine-tuning parameters are read the same way (strings included).
TEST_F(StudyFileTest, FineTuneKind) {
  absl::StatusOr<v1::StudySpec> spec = Parse({Protocols(
      "  - name: ft\n    kind: finetune\n    optimizer: adamw\n    epochs: 2\n"
      "    label_smoothing: 0\n    warmup_epochs: 0\n    few_shot: {shots: 10}\n")});
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(spec->protocols(0).has_finetune());
  EXPECT_EQ(spec->protocols(0).finetune().optimizer(), "adamw");
  EXPECT_EQ(spec->protocols(0).finetune().epochs(), 2);
  // Explicit zeros are kept (and distinguishable from "unset").
  EXPECT_TRUE(spec->protocols(0).finetune().has_label_smoothing());
  EXPECT_DOUBLE_EQ(spec->protocols(0).finetune().label_smoothing(), 0);
  EXPECT_TRUE(spec->protocols(0).finetune().has_warmup_epochs());
  EXPECT_EQ(spec->protocols(0).finetune().warmup_epochs(), 0);
  EXPECT_THAT(spec->protocols(0).few_shot().shots(), ElementsAre(10));

  EXPECT_THAT(Parse({Protocols("  - name: finetune\n    optimizer: [sgd]\n")}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "protocols[0].optimizer: expected a string, got a list"));
  EXPECT_THAT(Parse({Protocols("  - name: finetune\n    label_smoothing: 1.5\n")}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "protocols[0].label_smoothing: must be in [0, 1)"));
  EXPECT_THAT(Parse({Protocols("  - name: finetune\n    ks: [1]\n")}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "protocols[0].ks: unknown key for a finetune protocol"));
}

// The study after the kNN protocol: `protocols[1]` is `second`.
std::pair<std::string, std::string> Second(const std::string& second) {
  return Protocols(std::string(kKnnLine) + second);
}

INSTANTIATE_TEST_SUITE_P(
    ProtocolErrors, StudyFileErrorTest,
    ::testing::Values(
        // Keys.
        ErrorCase{"KnnKeyOnLinear", {Second("  - name: linear\n    ks: [1]\n")}, kInvalid,
                  "protocols[1].ks: unknown key for a linear protocol (known: name, kind, "
                  "few_shot, learning_rates, batch_norm"},
        ErrorCase{"LinearKeyOnLogreg",
                  {Second("  - name: lr\n    kind: logreg\n    epochs: 3\n")}, kInvalid,
                  "protocols[1].epochs: unknown key for a logreg protocol"},
        ErrorCase{"LogregKeyOnKnn", {Second("  - name: k2\n    kind: knn\n    cs: [1]\n")},
                  kInvalid, "protocols[1].cs: unknown key for a knn protocol"},
        ErrorCase{"MisspelledKey", {Second("  - name: linear\n    learning_rate: 0.1\n")},
                  kInvalid, "protocols[1].learning_rate: unknown key for a linear protocol"},
        ErrorCase{"ProtocolKeyGivenTwice",
                  {Second("  - name: linear\n    epochs: 3\n    epochs: 4\n")}, kInvalid,
                  "protocols[1].epochs: given twice"},
        ErrorCase{"ProtocolNotAMapping", {Second("  - linear\n")}, kInvalid,
                  "protocols[1]: expected a mapping with keys name, kind, few_shot"},
        ErrorCase{"FewShotUnknownKey",
                  {Second("  - name: linear\n    few_shot: {shot: [1]}\n")}, kInvalid,
                  "protocols[1].few_shot.shot: unknown key (known: shots, fractions, "
                  "seeds)"},
        ErrorCase{"FewShotNotAMapping", {Second("  - name: linear\n    few_shot: 5\n")},
                  kInvalid, "protocols[1].few_shot: expected a mapping with keys shots"},
        // Types.
        ErrorCase{"BoolNotABool", {Second("  - name: linear\n    batch_norm: maybe\n")},
                  kInvalid, "protocols[1].batch_norm: \"maybe\" is not true or false"},
        ErrorCase{"BoolIsAList", {Second("  - name: linear\n    standardize: [true]\n")},
                  kInvalid, "protocols[1].standardize: expected true or false, got a list"},
        ErrorCase{"LearningRateItem",
                  {Second("  - name: linear\n    learning_rates: [0.1, fast]\n")}, kInvalid,
                  "protocols[1].learning_rates[1]: \"fast\" is not a number (line 14)"},
        ErrorCase{"EpochsFraction", {Second("  - name: linear\n    epochs: 2.5\n")},
                  kInvalid, "protocols[1].epochs: \"2.5\" is not an integer"},
        ErrorCase{"SeedNotAnInteger", {Second("  - name: logreg\n    seed: abc\n")},
                  kInvalid, "protocols[1].seed: \"abc\" is not an integer"},
        ErrorCase{"NotFinite", {Second("  - name: logreg\n    c_max: inf\n")}, kInvalid,
                  "protocols[1].c_max: \"inf\" is not a finite number"},
        ErrorCase{"NanTemperature", {Second("  - name: k2\n    kind: knn\n"
                                            "    temperatures: [0.1, nan]\n")},
                  kInvalid, "protocols[1].temperatures[1]: \"nan\" is not a finite number"},
        ErrorCase{"ShotsItem", {Second("  - name: linear\n    few_shot: {shots: [1, x]}\n")},
                  kInvalid, "protocols[1].few_shot.shots[1]: \"x\" is not an integer"},
        ErrorCase{"SeedsAreAMapping",
                  {Second("  - name: linear\n    few_shot: {shots: 1, seeds: {a: 1}}\n")},
                  kInvalid,
                  "protocols[1].few_shot.seeds: expected a list of numbers, got a mapping"},
        // An explicit zero that would silently become the default.
        ErrorCase{"EpochsZero", {Second("  - name: linear\n    epochs: 0\n")}, kInvalid,
                  "protocols[1].epochs: must be in [1, 10000] (line 14)"},
        ErrorCase{"LinearWarmupNegative", {Second("  - name: linear\n    warmup_epochs: -1\n")},
                  kInvalid, "protocols[1].warmup_epochs: must be >= 0"},
        ErrorCase{"LearningRatesEmpty", {Second("  - name: linear\n    learning_rates: []\n")},
                  kInvalid, "protocols[1].learning_rates: at least one learning rate"},
        ErrorCase{"LinearValFractionZero",
                  {Second("  - name: linear\n    val_fraction: 0\n")}, kInvalid,
                  "protocols[1].val_fraction: must be in (0, 1)"},
        ErrorCase{"InitStdZero", {Second("  - name: linear\n    init_std: 0.0\n")},
                  kInvalid, "protocols[1].init_std: must be positive"},
        ErrorCase{"NumCsZero", {Second("  - name: logreg\n    num_cs: 0\n")}, kInvalid,
                  "protocols[1].num_cs: must be in [1, 1000]"},
        ErrorCase{"CMinZero", {Second("  - name: logreg\n    c_min: 0\n")}, kInvalid,
                  "protocols[1].c_min: need 0 < c_min <= c_max"},
        ErrorCase{"ToleranceZero", {Second("  - name: logreg\n    tolerance: 0\n")},
                  kInvalid, "protocols[1].tolerance: must be positive"},
        ErrorCase{"MaxIterationsZero", {Second("  - name: logreg\n    max_iterations: 0\n")},
                  kInvalid, "protocols[1].max_iterations: must be >= 1"},
        ErrorCase{"FewShotSeedsEmpty",
                  {Second("  - name: logreg\n    few_shot: {shots: 1, seeds: []}\n")},
                  kInvalid, "protocols[1].few_shot.seeds: at least one seed is required"},
        // Impossible values, found after the defaults.
        ErrorCase{"LinearMomentumOne", {Second("  - name: linear\n    momentum: 1\n")}, kInvalid,
                  "protocols[1].momentum: must be in [0, 1)"},
        ErrorCase{"NegativeWeightDecay",
                  {Second("  - name: linear\n    weight_decay: -0.1\n")}, kInvalid,
                  "protocols[1].weight_decay: must be >= 0"},
        ErrorCase{"NegativeLearningRate",
                  {Second("  - name: linear\n    learning_rates: [0.1, -1]\n")}, kInvalid,
                  "protocols[1].learning_rates: -1 must be a positive number"},
        ErrorCase{"ValFractionOne", {Second("  - name: logreg\n    val_fraction: 1\n")},
                  kInvalid, "protocols[1].val_fraction: must be in (0, 1)"},
        ErrorCase{"CMinAboveCMax",
                  {Second("  - name: logreg\n    c_min: 10\n    c_max: 1\n")}, kInvalid,
                  "protocols[1].c_min: need 0 < c_min <= c_max"},
        ErrorCase{"NegativeC", {Second("  - name: logreg\n    cs: [1, -2]\n")}, kInvalid,
                  "protocols[1].cs: -2 must be a positive number"},
        ErrorCase{"NegativeTemperatureInSweep",
                  {Second("  - name: k2\n    kind: knn\n    temperatures: [0.1, -1]\n")},
                  kInvalid, "protocols[1].temperatures: -1 must be a positive number"},
        ErrorCase{"FewShotEmpty", {Second("  - name: linear\n    few_shot: {}\n")},
                  kInvalid, "protocols[1].few_shot: give shots, fractions or both"},
        ErrorCase{"ZeroShots", {Second("  - name: linear\n    few_shot: {shots: [0]}\n")},
                  kInvalid, "protocols[1].few_shot.shots: 0 is not in [1, 100000]"},
        ErrorCase{"FractionAboveOne",
                  {Second("  - name: linear\n    few_shot: {fractions: [1.5]}\n")},
                  kInvalid, "protocols[1].few_shot.fractions: 1.5 is not in (0, 1]"},
        ErrorCase{"DuplicateProtocolName", {Second("  - name: lin\n    kind: linear\n"
                                                   "  - name: lin\n    kind: logreg\n")},
                  kInvalid, "protocols[2].name: duplicate protocol \"lin\""}),
    [](const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.label; });

// The example study in client/examples parses (with stand-ins for the model
// files and the dataset).
TEST_F(StudyFileTest, ExampleWithEveryProtocolParses) {
  const std::string example =
      ReadFile(std::string(SSLBENCH_SOURCE_DIR) + "/client/examples/study-all-protocols.yaml");
  ASSERT_FALSE(example.empty());
  const std::string root = "root: /usr/share/datasets/fashion-mnist\n";
  ASSERT_NE(example.find(root), std::string::npos);
  WriteFile(dir_ + "/models/identity.pt", "identity bytes");
  WriteFile(dir_ + "/models/cnn.pt", "cnn bytes");
  WriteFile(dir_ + "/study.yaml",
            absl::StrReplaceAll(example, {{root, "root: data/ds\n"}}));

  absl::StatusOr<v1::StudySpec> spec = LoadStudyFile(dir_ + "/study.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->models(0).path(), dir_ + "/models/identity.pt");
  EXPECT_EQ(spec->models(1).path(), dir_ + "/models/cnn.pt");
  ASSERT_EQ(spec->protocols_size(), 3);
  EXPECT_TRUE(spec->protocols(0).has_knn());
  EXPECT_TRUE(spec->protocols(1).has_linear());
  EXPECT_TRUE(spec->protocols(2).has_logreg());
  int few_shot = 0;
  for (const auto& p : spec->protocols()) few_shot += p.has_few_shot();
  EXPECT_GE(few_shot, 1);
  EXPECT_THAT(spec->protocols(1).few_shot().shots(), ElementsAre(1, 5, 10));
  EXPECT_THAT(spec->protocols(2).few_shot().fractions(),
              ElementsAre(DoubleEq(0.01), DoubleEq(0.1)));
  EXPECT_THAT(spec->protocols(2).few_shot().seeds(), ElementsAre(0, 1, 2));
}

}  // namespace
}  // namespace sslbench::client
