#pragma once
// Command-line checks of the sslbench CLI that Abseil's parser does not do:
// which flags a command takes, and the usage text of one command.

#include <functional>
#include <string>
#include <vector>

namespace sslbench::client {

// The flag names given in `argv` (argv[0] is skipped; so is everything after
// "--"): "--name=v", "-name", "--noname" (as "name" when only that is
// known). `known` says whether a name is a defined flag.
std::vector<std::string> GivenFlagNames(const std::vector<std::string>& argv,
                                        const std::function<bool(const std::string&)>& known);

// "" when every flag in `given` is defined and applies to `command`; else
// the problem, worded for the user ("unknown flag --x",
// "--metric does not apply to results (its flags: --coordinator, --format)").
// Abseil's own flags (--help, --flagfile, ...) apply everywhere. An unknown
// command is left to the caller.
std::string CheckCommandFlags(const std::string& command, const std::vector<std::string>& given,
                              const std::function<bool(const std::string&)>& known);

// The lines of `usage` that describe `command` (its line and the indented
// ones under it); "" when `usage` has none.
std::string CommandUsage(const std::string& usage, const std::string& command);

// A completion script for `shell` ("bash" or "zsh", which runs the bash one
// through bashcompinit): commands, each command's own flags (and the common
// ones), the words some commands take (tokens create|list|revoke, ...) and
// file names for study files.
std::string CompletionScript(const std::string& shell);

}  // namespace sslbench::client
