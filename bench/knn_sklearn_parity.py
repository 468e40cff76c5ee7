#!/usr/bin/python3
"""Euclidean kNN parity between scikit-learn and sslbench on an IDX dataset.

Reads the MNIST-layout IDX files (gzipped or plain) with numpy, takes the
pixels as float32 / 255, flattened, and runs the reference protocol:
KNeighborsClassifier(n_neighbors=20, weights="distance", algorithm="brute").
Prints the test top-1 as JSON. With --compare-with-binary PATH it also runs
sslbench-knn-idx on the same rows and exits non-zero unless the top-1 (and the
per-class accuracies) are exactly equal.

Run with Debian's /usr/bin/python3 (numpy, scikit-learn 1.2).
"""

import argparse
import json
import subprocess
import sys
import time

from sklearn.neighbors import KNeighborsClassifier

from bench_util import load_split


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--test-limit", type=int, default=0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--compare-with-binary", metavar="PATH",
                        help="sslbench-knn-idx to run and compare with")
    args = parser.parse_args()

    x_train, y_train = load_split(args.root, "train", args.train_limit)
    x_test, y_test = load_split(args.root, "t10k", args.test_limit)

    start = time.perf_counter()
    knn = KNeighborsClassifier(n_neighbors=args.k, weights="distance",
                               algorithm="brute")
    knn.fit(x_train, y_train)
    predicted = knn.predict(x_test)
    sklearn_seconds = time.perf_counter() - start
    correct = predicted == y_test
    top1 = float(correct.mean())
    classes = int(max(y_train.max(), y_test.max())) + 1
    per_class = [float(correct[y_test == c].mean()) if (y_test == c).any()
                 else None for c in range(classes)]
    report = {
        f"sklearn_euclidean_k{args.k}_top1": top1,
        "sklearn_seconds": round(sklearn_seconds, 3),
        "train_rows": len(y_train),
        "test_rows": len(y_test),
    }

    if not args.compare_with_binary:
        print(json.dumps(report))
        return 0

    command = [args.compare_with_binary, args.root, "--ks", "none",
               "--euclidean-k", str(args.k)]
    if args.train_limit:
        command += ["--train-limit", str(args.train_limit)]
    if args.test_limit:
        command += ["--test-limit", str(args.test_limit)]
    output = subprocess.run(command, check=True, capture_output=True,
                            text=True).stdout
    ours = [json.loads(line) for line in output.splitlines() if line.strip()]
    ours = [r for r in ours if r["variant"] == "euclidean"]
    if len(ours) != 1:
        print(f"expected one Euclidean result from {command}, got: {output}",
              file=sys.stderr)
        return 1
    ours = ours[0]
    report[f"sslbench_euclidean_k{args.k}_top1"] = ours["top1"]
    report["sslbench_seconds"] = round(ours["seconds"], 3)
    # Compare counts of correct predictions: both sides divide by the same n.
    n = len(y_test)
    same_top1 = round(ours["top1"] * n) == int(correct.sum())
    same_per_class = all(
        (a is None and b is None) or
        (a is not None and b is not None and abs(a - b) < 0.5 / n)
        for a, b in zip(per_class, ours["per_class"]))
    report["equal"] = bool(same_top1 and same_per_class)
    print(json.dumps(report))
    if not report["equal"]:
        print(f"MISMATCH: sklearn top-1 {top1} per class {per_class}; "
              f"sslbench top-1 {ours['top1']} per class {ours['per_class']}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
