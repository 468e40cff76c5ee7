#include "client/cli_args.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace sslbench::client {
namespace {

// Abseil's flags, and --coordinator (scripts set it for every call),
// accepted with any command.
const std::set<std::string>& CommonFlags() {
  static const auto* flags = new std::set<std::string>{
      "coordinator", "token_file", "tls_ca", "help", "helpfull", "helpshort", "helppackage", "helpon", "helpmatch",
      "version",
      "only_check_args", "flagfile", "fromenv", "tryfromenv", "undefok"};
  return *flags;
}

const std::map<std::string, std::set<std::string>>& CommandFlags() {
  static const auto* table = new std::map<std::string, std::set<std::string>>{
      {"submit", {"request_id", "dry_run", "images_per_second", "file_root"}},
      {"watch", {}},
      {"status", {}},
      {"cancel", {}},
      {"workers", {}},
      {"tokens", {"name", "role"}},
      {"results", {"format"}},
      {"correlate", {"format", "metric", "bootstrap", "seed", "by"}},
      {"artifact", {"output"}},
      {"report", {"output", "figure"}},
      {"up", {"state_dir", "workers", "worker_threads", "port", "blob_store"}},
      {"demo",
       {"state_dir", "workers", "worker_threads", "port", "blob_store", "cache_dir",
        "train_per_domain", "test_per_domain", "steps"}},
      {"data", {"out_dir", "train_per_domain", "test_per_domain"}},
      {"zoo", {"out_dir", "steps", "only", "worker_threads"}},
      {"spec", {"file_root"}},
      {"cache", {}},
      {"completion", {}},
      {"help", {}},
      {"version", {}},
  };
  return *table;
}

// The words a command takes after its name, for completion: "" completes
// file names, "-" nothing.
const std::map<std::string, std::string>& CommandWords() {
  static const auto* table = new std::map<std::string, std::string>{
      {"submit", ""},          {"spec", ""},
      {"tokens", "create list revoke"}, {"zoo", "build"},
      {"cache", "list drop"},
      {"data", "build"},       {"completion", "bash zsh"},
  };
  return *table;
}

}  // namespace

std::string CompletionScript(const std::string& shell) {
  std::string commands;
  std::string cases;
  for (const auto& [command, flags] : CommandFlags()) {
    if (command == "version") continue;
    absl::StrAppend(&commands, commands.empty() ? "" : " ", command);
    std::string words = "--coordinator= --token_file= --tls_ca= --help";
    for (const std::string& f : flags) {
      // Boolean flags take no value.
      absl::StrAppend(&words, " --", f, f == "dry_run" ? "" : "=");
    }
    auto positional = CommandWords().find(command);
    std::string more = command == "help" ? "$commands" : "";
    bool files = false;
    if (positional != CommandWords().end()) {
      if (positional->second.empty()) {
        files = true;
      } else {
        more = positional->second;
      }
    }
    absl::StrAppend(&cases, "    ", command, ") flags=\"", words, "\"; words=\"", more,
                    "\"; files=", files ? 1 : 0, " ;;\n");
  }
  std::string script = absl::StrCat(
      "# sslbench completion for ", shell, ": source <(sslbench completion ", shell, ")\n",
      shell == "zsh" ? "autoload -U +X bashcompinit && bashcompinit\n" : "",
      "_sslbench() {\n"
      "  local cur=${COMP_WORDS[COMP_CWORD]} cmd= i flags= words= files=0\n"
      "  local commands=\"", commands, "\"\n"
      "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      "    case ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac\n"
      "  done\n"
      "  if [[ -z $cmd ]]; then\n"
      "    COMPREPLY=($(compgen -W \"$commands --version --help\" -- \"$cur\"))\n"
      "    return\n"
      "  fi\n"
      "  case $cmd in\n",
      cases,
      "    *) return ;;\n"
      "  esac\n"
      "  if [[ $cur == -* ]]; then\n"
      "    COMPREPLY=($(compgen -W \"$flags\" -- \"$cur\"))\n"
      "    [[ ${COMPREPLY[0]} == *= ]] && compopt -o nospace 2>/dev/null\n"
      "  elif [[ $files == 1 ]]; then\n"
      "    COMPREPLY=($(compgen -f -- \"$cur\"))\n"
      "  else\n"
      "    COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      "  fi\n"
      "  return 0\n"
      "}\n"
      "complete -F _sslbench sslbench\n");
  return script;
}

std::vector<std::string> GivenFlagNames(const std::vector<std::string>& argv,
                                        const std::function<bool(const std::string&)>& known) {
  std::vector<std::string> names;
  for (size_t i = 1; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    std::string name = arg.substr(arg[1] == '-' ? 2 : 1);
    name = name.substr(0, name.find('='));
    if (name.empty()) continue;
    if (!known(name) && absl::StartsWith(name, "no") && known(name.substr(2))) name = name.substr(2);
    names.push_back(name);
  }
  return names;
}

std::string CheckCommandFlags(const std::string& command, const std::vector<std::string>& given,
                              const std::function<bool(const std::string&)>& known) {
  for (const std::string& name : given) {
    if (!known(name)) return absl::StrCat("unknown flag --", name);
  }
  auto entry = CommandFlags().find(command);
  if (entry == CommandFlags().end()) return "";
  for (const std::string& name : given) {
    if (CommonFlags().count(name) > 0 || entry->second.count(name) > 0) continue;
    std::vector<std::string> own;
    for (const std::string& f : entry->second) own.push_back("--" + f);
    return absl::StrCat("--", name, " does not apply to ", command,
                        own.empty() ? " (it takes no flags)"
                                    : absl::StrCat(" (its flags: ", absl::StrJoin(own, ", "), ")"));
  }
  return "";
}

std::string CommandUsage(const std::string& usage, const std::string& command) {
  std::string out;
  bool inside = false;
  for (absl::string_view line : absl::StrSplit(usage, '\n')) {
    // A command's line is indented by two spaces; its continuation lines by
    // more.
    const bool command_line = line.size() > 2 && line.substr(0, 2) == "  " && line[2] != ' ';
    if (command_line) {
      inside = line.substr(2) == command || absl::StartsWith(line.substr(2), command + " ");
    } else if (!absl::StartsWith(line, "   ")) {
      inside = false;
    }
    if (inside) absl::StrAppend(&out, line, "\n");
  }
  return out;
}

}  // namespace sslbench::client
