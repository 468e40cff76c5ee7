#include "client/cli_args.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/subprocess.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sslbench::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

bool Known(const std::string& name) {
  static const std::set<std::string> flags = {"coordinator", "format", "metric", "dry_run",
                                              "output", "help", "flagfile", "steps"};
  return flags.count(name) > 0;
}

TEST(CliArgsTest, FlagNamesInEveryForm) {
  EXPECT_THAT(GivenFlagNames({"sslbench", "results", "1", "--format=csv", "-metric", "top5",
                              "--nodry_run", "--", "--ignored"},
                             Known),
              ElementsAre("format", "metric", "dry_run"));
  EXPECT_THAT(GivenFlagNames({"sslbench", "--bogus=1"}, Known), ElementsAre("bogus"));
}

TEST(CliArgsTest, FlagsApplyToTheirCommandsOnly) {
  EXPECT_EQ(CheckCommandFlags("results", {"coordinator", "format"}, Known), "");
  EXPECT_EQ(CheckCommandFlags("results", {"metric"}, Known),
            "--metric does not apply to results (its flags: --format)");
  EXPECT_EQ(CheckCommandFlags("watch", {"bogus"}, Known), "unknown flag --bogus");
  EXPECT_EQ(CheckCommandFlags("help", {"format"}, Known),
            "--format does not apply to help (it takes no flags)");
  EXPECT_EQ(CheckCommandFlags("submit", {"dry_run", "flagfile"}, Known), "");
  EXPECT_EQ(CheckCommandFlags("watch", {"coordinator"}, Known), "");
  EXPECT_EQ(CheckCommandFlags("no-such-command", {"format"}, Known), "");
}

TEST(CliArgsTest, CommandUsageIsTheCommandsOwnLines) {
  const std::string usage =
      "usage: x\n\n  submit FILE            submit\n"
      "  submit FILE --dry_run  estimate\n"
      "                         more about it\n"
      "  watch ID               watch\n\nEvery command ...\n";
  EXPECT_EQ(CommandUsage(usage, "submit"),
            "  submit FILE            submit\n  submit FILE --dry_run  estimate\n"
            "                         more about it\n");
  EXPECT_EQ(CommandUsage(usage, "watch"), "  watch ID               watch\n");
  EXPECT_EQ(CommandUsage(usage, "sub"), "");
}

// The real binary: exit codes and outputs a user sees.
CommandResult Sslbench(std::vector<std::string> args) {
  args.insert(args.begin(), SSLBENCH_CLI);
  absl::StatusOr<CommandResult> r = RunCommand(args);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : CommandResult{};
}

TEST(CliArgsTest, TheBinaryAnswersVersionHelpAndBadFlags) {
  const CommandResult version = Sslbench({"--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_THAT(version.output, HasSubstr("sslbench 0."));
  const CommandResult help = Sslbench({"help", "submit"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("--dry_run"));
  EXPECT_THAT(help.output, Not(HasSubstr("correlate")));
  const CommandResult flag_help = Sslbench({"report", "--help"});
  EXPECT_EQ(flag_help.exit_code, 0);
  EXPECT_THAT(flag_help.output, HasSubstr("--figure"));
  const CommandResult unknown = Sslbench({"status", "1", "--bogus"});
  EXPECT_EQ(unknown.exit_code, 64);
  EXPECT_THAT(unknown.output, HasSubstr("unknown flag --bogus"));
  const CommandResult misplaced = Sslbench({"results", "1", "--metric=top5"});
  EXPECT_EQ(misplaced.exit_code, 64);
  EXPECT_THAT(misplaced.output, HasSubstr("--metric does not apply to results"));
  EXPECT_EQ(Sslbench({"help", "frobnicate"}).exit_code, 64);
}

// What bash offers after sourcing `sslbench completion bash` for the words
// typed so far (the last one being completed).
std::string Complete(const std::string& shell, const std::string& words) {
  const std::string script = absl::StrCat(
      "source <(\"$0\" completion ", shell, ") && COMP_WORDS=(", words,
      ") && COMP_CWORD=$((${#COMP_WORDS[@]} - 1)) && _sslbench && echo \"${COMPREPLY[*]}\"");
  absl::StatusOr<CommandResult> r = RunCommand({"/bin/bash", "-c", script, SSLBENCH_CLI});
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0) << r->output;
  return std::string(absl::StripTrailingAsciiWhitespace(r.ok() ? r->output : ""));
}

TEST(CliArgsTest, BashCompletionOffersCommandsTheirFlagsAndWords) {
  EXPECT_EQ(Complete("bash", "sslbench co"), "completion correlate");
  EXPECT_EQ(Complete("bash", "sslbench results 1 --f"), "--format=");
  EXPECT_EQ(Complete("bash", "sslbench correlate 1 --m"), "--metric=");
  // Another command's flag is not offered.
  EXPECT_EQ(Complete("bash", "sslbench results 1 --m"), "");
  EXPECT_EQ(Complete("bash", "sslbench --coordinator=x:1 tokens ''"), "create list revoke");
  EXPECT_EQ(Complete("bash", "sslbench submit --dry"), "--dry_run");
  EXPECT_EQ(Complete("bash", "sslbench help wat"), "watch");
  EXPECT_THAT(Sslbench({"completion", "zsh"}).output, HasSubstr("bashcompinit"));
  EXPECT_EQ(Sslbench({"completion", "fish"}).exit_code, 64);
}

}  // namespace
}  // namespace sslbench::client
