#!/usr/bin/python3
"""Logistic-regression parity and speed: sslbench vs scikit-learn.

For each case, fits scikit-learn's
LogisticRegression(C=c, multi_class="multinomial", solver="lbfgs",
max_iter=1000) (tol 1e-4, its default) and `sslbench-probe logreg --c C` with
the same tolerance and iteration cap on the same features, and prints a
side-by-side table of test top-1, seconds (fit + test predictions; loading
excluded) and iterations, with ratios.

Cases (full run): raw Fashion-MNIST pixels / 255 of the first --train-limit
train images (C = 0.1 and 1.0) and a 2048-d random-feature case
(relu(pixels @ R), R ~ N(0, 1/784), fixed seed) on --projection-train-limit
images. --fast: raw pixels of 5000 images at C = 0.1 only (the ctest case).

Fails (exit 1) when any case's top-1 differs by more than --tolerance
(0.3 points); with --check-speed also when sslbench takes more than half of
scikit-learn's time. Both sides use --threads BLAS/ATen threads.

Run with Debian's /usr/bin/python3 (numpy, scipy, scikit-learn 1.2).
"""

import os

# On a machine shared with other work, OpenMP threads that spin while they
# wait slow both sides down by an order of magnitude once the cores are
# oversubscribed. Passive waiting, for scikit-learn / PyTorch (this process)
# and sslbench-probe (inherits the environment) alike; set before numpy and
# torch load libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import struct
import sys
import tempfile
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import load_split, run_json  # noqa: E402


def write_features(path, x, y):
    """The feature-file layout sslbench-probe reads."""
    x = np.ascontiguousarray(x, dtype="<f4")
    with open(path, "wb") as f:
        f.write(struct.pack("<qq", x.shape[0], x.shape[1]))
        f.write(x.tobytes())
        f.write(np.ascontiguousarray(y, dtype="<i4").tobytes())


def random_features(x, dim, seed):
    r = np.random.default_rng(seed).standard_normal((x.shape[1], dim))
    r = (r / np.sqrt(x.shape[1])).astype(np.float32)
    return np.maximum(x @ r, 0)


def run_sklearn(x_train, y_train, x_test, y_test, c, max_iter, tol, threads):
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model = LogisticRegression(C=c, multi_class="multinomial", solver="lbfgs",
                                   max_iter=max_iter, tol=tol)
        model.fit(x_train, y_train)
        predicted = model.predict(x_test)
        seconds = time.perf_counter() - start
    return {"top1": float((predicted == y_test).mean()), "seconds": seconds,
            "iterations": int(model.n_iter_[0])}


def run_ours(binary, data_args, c, max_iter, tol, threads, extra):
    command = [binary, "logreg", *data_args, "--c", repr(c), "--max-iter", str(max_iter),
               "--tol", repr(tol), "--threads", str(threads), *extra]
    return run_json(command)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--binary", required=True, help="path to sslbench-probe")
    parser.add_argument("--fast", action="store_true", help="the quick ctest configuration")
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--projection-train-limit", type=int, default=10000)
    parser.add_argument("--projection-dim", type=int, default=2048)
    parser.add_argument("--cs", default="0.1,1.0", help="Cs of the raw-pixel cases")
    parser.add_argument("--no-projection", action="store_true")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tolerance", type=float, default=0.003,
                        help="largest allowed |top-1 difference| (fraction)")
    parser.add_argument("--check-speed", action="store_true",
                        help="also fail unless sslbench takes at most half the time")
    parser.add_argument("--float32", action="store_true", help="sslbench in float32")
    args = parser.parse_args()

    cs = [float(c) for c in args.cs.split(",")]
    train_limit = args.train_limit
    with_projection = not args.no_projection
    if args.fast:
        cs, train_limit, with_projection = [0.1], 5000, False
    extra = ["--float32"] if args.float32 else []

    cases = []
    x_train, y_train = load_split(args.root, "train", train_limit)
    x_test, y_test = load_split(args.root, "t10k", 0)
    for c in cs:
        cases.append((f"pixels n={len(y_train)} d={x_train.shape[1]}", c, x_train, y_train,
                      x_test, y_test,
                      ["--root", args.root, "--train-limit", str(train_limit)]))

    tmp = tempfile.TemporaryDirectory()
    if with_projection:
        px_train, py_train = load_split(args.root, "train", args.projection_train_limit)
        f_train = random_features(px_train, args.projection_dim, 0)
        f_test = random_features(x_test, args.projection_dim, 0)
        train_path = os.path.join(tmp.name, "train.f32")
        test_path = os.path.join(tmp.name, "test.f32")
        write_features(train_path, f_train, py_train)
        write_features(test_path, f_test, y_test)
        cases.append((f"random relu n={len(py_train)} d={args.projection_dim}", 0.01,
                      f_train, py_train, f_test, y_test,
                      ["--train-file", train_path, "--test-file", test_path]))

    rows = []
    failed = False
    for name, c, xtr, ytr, xte, yte, data_args in cases:
        ref = run_sklearn(xtr, ytr, xte, yte, c, args.max_iter, args.tol, args.threads)
        ours = run_ours(args.binary, data_args, c, args.max_iter, args.tol, args.threads, extra)
        diff = ours["top1"] - ref["top1"]
        ratio = ours["seconds"] / ref["seconds"]
        ok = abs(diff) <= args.tolerance + 1e-12
        if args.check_speed:
            ok = ok and ratio <= 0.5
        failed |= not ok
        rows.append({"case": name, "C": c, "sklearn_top1": ref["top1"],
                     "sslbench_top1": ours["top1"], "diff_points": 100 * diff,
                     "sklearn_seconds": ref["seconds"], "sslbench_seconds": ours["seconds"],
                     "time_ratio": ratio, "sklearn_iterations": ref["iterations"],
                     "sslbench_iterations": ours["iterations"], "ok": ok})

    header = (f"{'case':<28} {'C':>6} {'sk top1':>8} {'ours':>8} {'diff pt':>8} "
              f"{'sk s':>8} {'ours s':>8} {'ratio':>6} {'sk it':>6} {'our it':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:<28} {r['C']:>6g} {r['sklearn_top1']:>8.4f} "
              f"{r['sslbench_top1']:>8.4f} {r['diff_points']:>+8.2f} "
              f"{r['sklearn_seconds']:>8.2f} {r['sslbench_seconds']:>8.2f} "
              f"{r['time_ratio']:>6.2f} {r['sklearn_iterations']:>6d} "
              f"{r['sslbench_iterations']:>6d}{'' if r['ok'] else '  FAIL'}")
    print(json.dumps({"threads": args.threads, "cases": rows}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
