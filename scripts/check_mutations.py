#!/usr/bin/env python3
"""Undoes each hardening fix in turn and shows that its test catches it.

Each entry of mutations.json names a fix (a finding of the hardening work),
the small edit to the product's source that undoes it, and the test that
must then fail. For every entry this script applies the edit, rebuilds the
test's binary, runs the test, and puts the source back (whatever happens);
at the end it rebuilds the touched binaries from the restored source.

A mutation whose test still passes is a test that no longer guards its fix:
the script exits 1 and says which. A mutation whose text is no longer found
(the code moved on) is reported as stale, and one that does not build as
such, exit 2: update its entry.

Usage: scripts/check_mutations.py [--build build] [--only NAME ...] [--timeout 180]
Run from the repository root, on a configured build folder.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def first_failure(output):
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "Failure" in line:
            return " ".join(s.strip() for s in lines[i:i + 4])[:240]
    return ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--only", nargs="*", default=None, help="entry names (or prefixes)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds per test run")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    with open(os.path.join(HERE, "mutations.json")) as f:
        entries = json.load(f)
    if args.only:
        entries = [e for e in entries if any(e["name"].startswith(o) for o in args.only)]

    rows, touched, exit_code = [], set(), 0
    for e in entries:
        originals = {}
        try:
            texts = {}
            stale = None
            for path, old, new in e["edits"]:
                full = os.path.join(ROOT, path)
                if full not in texts:
                    with open(full) as f:
                        texts[full] = originals[full] = f.read()
                if texts[full].count(old) != 1:
                    stale = f"{path}: the text to undo is found {texts[full].count(old)} times"
                    break
                texts[full] = texts[full].replace(old, new)
            if stale:
                originals.clear()  # nothing was written
                rows.append((e["name"], "STALE", stale))
                exit_code = max(exit_code, 2)
                continue
            for full, text in texts.items():
                with open(full, "w") as f:
                    f.write(text)
            touched.add(e["target"])
            build = subprocess.run(
                ["cmake", "--build", args.build, "--target", e["target"], "-j", str(args.jobs)],
                capture_output=True, text=True)
            if build.returncode != 0:
                rows.append((e["name"], "NO BUILD", build.stdout[-300:] + build.stderr[-300:]))
                exit_code = max(exit_code, 2)
                continue
            start = time.monotonic()
            try:
                run = subprocess.run(
                    [os.path.join(args.build, "bin", e["target"]), "--gtest_filter=" + e["filter"]],
                    capture_output=True, text=True, timeout=args.timeout)
                output, code = run.stdout + run.stderr, run.returncode
            except subprocess.TimeoutExpired as t:
                output = (t.stdout or b"").decode(errors="replace") if isinstance(t.stdout, bytes) \
                    else (t.stdout or "")
                code = "timeout"
            seconds = time.monotonic() - start
            failure = first_failure(output)
            if code == 0 or (code == "timeout" and not failure):
                rows.append((e["name"], "NOT CAUGHT", f"{e['filter']} passed with the fix undone"))
                exit_code = max(exit_code, 1)
            else:
                rows.append((e["name"], "caught", f"{e['filter']} failed ({seconds:.0f} s): {failure}"))
        finally:
            for full, text in originals.items():
                with open(full, "w") as f:
                    f.write(text)
        print(f"{rows[-1][0]}: {rows[-1][1]}: {rows[-1][2]}", flush=True)

    for target in sorted(touched):  # binaries from the restored source
        subprocess.run(["cmake", "--build", args.build, "--target", target, "-j", str(args.jobs)],
                       capture_output=True)
    caught = sum(1 for r in rows if r[1] == "caught")
    print(f"\n{caught} of {len(rows)} undone fixes caught by their tests")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
