// sslbench-correlate-check: Pearson, Spearman and Kendall tau-b of paired
// columns read from standard input, for parity checks against scipy
// (bench/correlation_vs_scipy.py).
//
// Usage: sslbench-correlate-check [--bootstrap=B] [--seed=S]
// Input: one "x y" pair per line; a blank line ends a data set. Output: one
// line per data set, "pearson spearman kendall" with 17 significant digits
// ("nan" where undefined); with --bootstrap=B > 0, followed by the 95%
// bootstrap intervals "pearson_low pearson_high spearman_low spearman_high
// kendall_low kendall_high" of B resamples drawn with seed S.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "server/analysis/correlation.h"

namespace {

using sslbench::server::analysis::BootstrapOptions;

void Report(std::vector<double>& x, std::vector<double>& y,
            const BootstrapOptions& options) {
  using namespace sslbench::server::analysis;
  const PairCorrelation pc = Correlate(x, y, options);
  std::printf("%.17g %.17g %.17g", pc.pearson.value, pc.spearman.value, pc.kendall.value);
  if (options.resamples > 0) {
    for (const Coefficient* c : {&pc.pearson, &pc.spearman, &pc.kendall}) {
      std::printf(" %.17g %.17g", c->ci.low, c->ci.high);
    }
  }
  std::printf("\n");
  x.clear();
  y.clear();
}

}  // namespace

int main(int argc, char** argv) {
  BootstrapOptions options;
  options.resamples = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--bootstrap=", 0) == 0) {
      options.resamples = std::atoi(arg.c_str() + 12);
    } else if (arg.rfind("--seed=", 0) == 0) {
      options.seed = std::strtoull(arg.c_str() + 7, nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: sslbench-correlate-check [--bootstrap=B] [--seed=S] < pairs\n");
      return 2;
    }
  }
  std::vector<double> x, y;
  std::string line;
  bool open = false;
  int line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      if (open) Report(x, y, options);
      open = false;
      continue;
    }
    std::istringstream in(line);
    double a = 0, b = 0;
    if (!(in >> a >> b)) {
      std::fprintf(stderr, "sslbench-correlate-check: line %d: expected \"x y\", got \"%s\"\n",
                   line_number, line.c_str());
      return 2;
    }
    x.push_back(a);
    y.push_back(b);
    open = true;
  }
  if (open) Report(x, y, options);
  return 0;
}
