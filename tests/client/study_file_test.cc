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
using ::sslbench::client::testing::StatusIs;
using ::sslbench::client::testing::WriteFile;
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
      {"name: s1\n", "name: s1\nmax_attempts: 5\nextract_batch_size: 64\n"},
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
                  "datasets[0].root: {DIR}/models has no train-images-idx3-ubyte[.gz]"},
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
                  {{"  - name: knn\n", "  - name: lin\n    kind: linear\n"}}, kInvalid,
                  "protocols[0].kind: \"linear\" is not supported (supported: knn)"},
        ErrorCase{"ProtocolKindMissing", {{"  - name: knn\n", "  - name: probe\n"}},
                  kInvalid, "protocols[0].kind: is required for protocol \"probe\""},
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

}  // namespace
}  // namespace sslbench::client
