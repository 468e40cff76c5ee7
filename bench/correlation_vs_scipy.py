#!/usr/bin/python3
"""Pearson, Spearman and Kendall tau-b parity between sslbench and scipy.stats.

Draws random paired columns (n from 3 to 300) of four kinds: continuous
values, values with many ties (a few distinct levels), values tied in one
column only, and small columns with exact rank agreement or reversal; plus
degenerate cases (a constant column) where both sides must answer NaN. Runs
sslbench-correlate-check once on all of them and compares with
scipy.stats.pearsonr, spearmanr and kendalltau (tau-b, the default).

Then the bootstrap: on a few of the cases, replays sslbench's resampling (the
same SplitMix64 stream and unbiased index draws), computes each resample's
coefficients with scipy, skips resamples with a constant column, and takes
numpy.percentile's 2.5th and 97.5th percentiles; the intervals must match
the tool's --bootstrap output.

Prints the largest absolute differences as JSON; exits non-zero when any
exceeds --tolerance (default 1e-12) or NaN-ness differs.

Run with Debian's /usr/bin/python3 (numpy, scipy).
"""

import argparse
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import scipy
from scipy import stats


def datasets(seed, count):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(3, 301)) if i % 5 else int(rng.integers(3, 12))
        kind = i % 4
        if kind == 0:  # continuous, correlated
            x = rng.normal(size=n)
            y = 0.6 * x + rng.normal(size=n)
        elif kind == 1:  # many ties in both columns
            levels = int(rng.integers(2, 6))
            x = rng.integers(0, levels, size=n).astype(float)
            y = (x + rng.integers(0, levels, size=n)).astype(float)
        elif kind == 2:  # accuracies rounded to 2 decimals: ties in x only
            x = np.round(rng.uniform(0.3, 0.9, size=n), 2)
            y = rng.uniform(0.1, 0.8, size=n)
        else:  # monotone or reversed, sometimes with ties
            x = np.sort(rng.integers(0, n, size=n)).astype(float)
            y = np.sort(rng.uniform(size=n))
            if rng.integers(0, 2):
                y = y[::-1].copy()
        out.append((x, y, "random"))
    # Degenerate: undefined on both sides.
    out.append((np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5] * 4), "constant"))
    out.append((np.array([7.0] * 5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]), "constant"))
    # Hand-checked values.
    out.append((np.array([1.0, 2.0, 2.0, 3.0]), np.array([2.0, 1.0, 3.0, 3.0]), "ties"))
    return out


def reference(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        constant = (x == x[0]).all() or (y == y[0]).all()
        if constant:
            return [math.nan] * 3
        return [float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0]),
                float(stats.kendalltau(x, y)[0])]


MASK = (1 << 64) - 1


class SplitMix64:
    """The generator of server/analysis/correlation.h, bit for bit."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        limit = MASK - MASK % n
        while True:
            v = self.next()
            if v < limit:
                return v % n


def reference_intervals(x, y, resamples, seed):
    rng = SplitMix64(seed)
    values = [[], [], []]
    n = len(x)
    for _ in range(resamples):
        index = [rng.below(n) for _ in range(n)]
        bx, by = x[index], y[index]
        if (bx == bx[0]).all() or (by == by[0]).all():
            continue
        for out, value in zip(values, reference(bx, by)):
            out.append(value)
    intervals = []
    for v in values:
        if v:
            intervals += [float(q) for q in np.percentile(v, [2.5, 97.5])]
        else:
            intervals += [math.nan, math.nan]
    return intervals


def run_tool(binary, cases, extra_args=()):
    text = "\n".join("\n".join(f"{a!r} {b!r}" for a, b in zip(x.tolist(), y.tolist())) + "\n"
                     for x, y, _ in cases)
    run = subprocess.run([binary, *extra_args], input=text, capture_output=True, text=True,
                         check=True)
    return run.stdout.strip().split("\n")


def compare(label, ours, theirs, names, worst, failures, tolerance):
    for name, a, b in zip(names, ours, theirs):
        if math.isnan(a) or math.isnan(b):
            if math.isnan(a) != math.isnan(b):
                failures.append(f"{label} {name}: sslbench {a}, scipy {b}")
            continue
        diff = abs(a - b)
        worst[name] = max(worst[name], diff)
        if diff > tolerance:
            failures.append(f"{label} {name}: sslbench {a!r}, scipy {b!r}, |diff| {diff:.3g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, help="sslbench-correlate-check")
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2407)
    parser.add_argument("--tolerance", type=float, default=1e-12)
    parser.add_argument("--bootstrap-cases", type=int, default=12)
    parser.add_argument("--resamples", type=int, default=200)
    args = parser.parse_args()

    cases = datasets(args.seed, args.cases)
    lines = run_tool(args.binary, cases)
    if len(lines) != len(cases):
        print(f"expected {len(cases)} result lines, got {len(lines)}", file=sys.stderr)
        return 1

    names = ["pearson", "spearman", "kendall"]
    worst = {name: 0.0 for name in names}
    failures = []
    with_ties = 0
    for index, ((x, y, kind), line) in enumerate(zip(cases, lines)):
        if len(np.unique(x)) < len(x) or len(np.unique(y)) < len(y):
            with_ties += 1
        compare(f"case {index} ({kind}, n={len(x)})", [float(v) for v in line.split()],
                reference(x, y), names, worst, failures, args.tolerance)

    # The bootstrap on small cases of every kind (scipy per resample is slow).
    boot_cases = ([c for c in cases if len(c[0]) <= 40 and c[2] == "random"]
                  [:args.bootstrap_cases] + [c for c in cases if c[2] != "random"])
    boot_names = [f"{name}_ci_{end}" for name in names for end in ("low", "high")]
    boot_worst = {name: 0.0 for name in boot_names}
    boot_lines = run_tool(args.binary, boot_cases,
                          [f"--bootstrap={args.resamples}", f"--seed={args.seed}"])
    for index, ((x, y, kind), line) in enumerate(zip(boot_cases, boot_lines)):
        ours = [float(v) for v in line.split()][3:]
        compare(f"bootstrap case {index} ({kind}, n={len(x)})", ours,
                reference_intervals(x, y, args.resamples, args.seed), boot_names,
                boot_worst, failures, args.tolerance)
    worst.update(boot_worst)

    print(json.dumps({
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "cases": len(cases),
        "cases_with_ties": with_ties,
        "bootstrap_cases": len(boot_cases),
        "bootstrap_resamples": args.resamples,
        "max_abs_diff": worst,
        "tolerance": args.tolerance,
        "ok": not failures,
    }, indent=2))
    for failure in failures[:20]:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
