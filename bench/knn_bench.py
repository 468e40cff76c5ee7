#!/usr/bin/python3
"""kNN speed: sslbench's RunKnn against a PyTorch reference and the matmul.

For each feature dimension D (784: Fashion-MNIST pixels / 255; any other D: a
fixed random ReLU projection of them, see sslbench-knn-bench) this runs
sslbench-knn-bench, which writes the features to .npy files and times
  - RunKnn, cosine variant, k in {10, 20, 100, 200}, T = 0.07, one call;
  - RunKnn, Euclidean variant (scikit-learn's rule, exact), k = 20, one
    call, with its default search (projected lower bound, then exact
    distances; --projection-dim 0 to the tool gives the full product);
  - one at::mm of [10000, D] x [D, 60000] in float32, the product kNN cannot
    avoid;
then runs a straightforward PyTorch implementation of the same algorithms on
the same features with the same number of threads:
  - cosine: DINO's knn_classifier loop (100 test chunks; similarity matmul,
    topk, exp(sim / T) weighted one-hot vote), run once per k as DINO does;
  - Euclidean: the same chunked loop with float32 squared distances
    ||x||^2 - 2 x.y + ||y||^2, topk of the smallest, 1/d weights (a zero
    distance takes all the weight) and an argmax vote.
It checks that the accuracies agree and prints a table of times and ratios.
With --memory it also prints RunKnn's peak memory above its inputs at two
train sizes and two chunk settings.

Run with Debian's /usr/bin/python3 (numpy, torch).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


OPENBLAS_CORE = []  # "Core: ..." as OpenBLAS reported it in the tool


def run_tool(command):
    # OPENBLAS_VERBOSE=2 makes OpenBLAS print the kernel family it chose.
    env = dict(os.environ, OPENBLAS_VERBOSE="2")
    done = subprocess.run(command, check=True, capture_output=True,
                          text=True, env=env)
    OPENBLAS_CORE.extend(line.split(":", 1)[1].strip()
                         for line in done.stderr.splitlines()
                         if line.startswith("Core:"))
    return [json.loads(line)
            for line in done.stdout.splitlines() if line.strip()]


@torch.inference_mode()
def dino_knn(train_x, train_y, test_x, test_y, k, temperature, num_classes):
    """DINO's weighted kNN (eval_knn.py knn_classifier) for one k.

    Features must already be L2-normalised. Returns (top1, top5) fractions.
    """
    train_t = train_x.t()
    n = test_y.shape[0]
    step = n // 100  # DINO: 100 chunks of test rows
    one_hot = torch.zeros(k, num_classes)
    top1 = top5 = 0
    for start in range(0, n, step):
        features = test_x[start:start + step]
        targets = test_y[start:start + step]
        b = targets.shape[0]
        similarity = torch.mm(features, train_t)
        sims, indices = similarity.topk(k, largest=True, sorted=True)
        neighbours = torch.gather(train_y.view(1, -1).expand(b, -1), 1,
                                  indices)
        one_hot.resize_(b * k, num_classes).zero_()
        one_hot.scatter_(1, neighbours.view(-1, 1), 1)
        weights = sims.clone().div_(temperature).exp_()
        probs = torch.sum(one_hot.view(b, -1, num_classes) *
                          weights.view(b, -1, 1), 1)
        _, predictions = probs.sort(1, True)
        correct = predictions.eq(targets.view(-1, 1))
        top1 += correct.narrow(1, 0, 1).sum().item()
        top5 += correct.narrow(1, 0, min(5, k)).sum().item()
    return top1 / n, top5 / n


@torch.inference_mode()
def euclidean_knn(train_x, train_y, test_x, test_y, k, num_classes):
    """scikit-learn's KNeighborsClassifier(weights="distance") in float32."""
    train_sq = (train_x * train_x).sum(1)
    n = test_y.shape[0]
    step = n // 100
    correct = 0
    for start in range(0, n, step):
        x = test_x[start:start + step]
        targets = test_y[start:start + step]
        d2 = torch.addmm(train_sq.unsqueeze(0), x, train_x.t(), beta=1,
                         alpha=-2)
        d2 += (x * x).sum(1, keepdim=True)
        d2, indices = d2.topk(k, largest=False, sorted=True)
        d = d2.clamp_min_(0).sqrt_()
        zero = d == 0
        weights = torch.where(zero.any(1, keepdim=True), zero.float(), 1 / d)
        scores = torch.zeros(x.shape[0], num_classes).scatter_add_(
            1, train_y[indices], weights)
        correct += (scores.argmax(1) == targets).sum().item()
    return correct / n


def blas_info():
    lib = "/usr/lib/x86_64-linux-gnu/libblas.so.3"
    return {
        "libblas.so.3": os.path.realpath(lib) if os.path.exists(lib) else None,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    }


def bench_dim(args, dim, workdir):
    feature_dir = os.path.join(workdir, f"d{dim}")
    os.makedirs(feature_dir, exist_ok=True)
    command = [args.binary, "--root", args.root, "--dim", str(dim),
               "--threads", str(args.threads), "--write-features",
               feature_dir]
    if args.train_rows:
        command += ["--train-rows", str(args.train_rows)]
    if args.test_rows:
        command += ["--test-rows", str(args.test_rows)]
    events = {e["event"]: e for e in run_tool(command)}

    load = lambda name: torch.from_numpy(  # noqa: E731
        np.load(os.path.join(feature_dir, name)))
    train_x, test_x = load("train_x.npy"), load("test_x.npy")
    train_y, test_y = load("train_y.npy").long(), load("test_y.npy").long()
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    n = test_y.shape[0]

    ks, temperature = [10, 20, 100, 200], 0.07
    start, cpu_start = time.perf_counter(), time.process_time()
    train_n = torch.nn.functional.normalize(train_x, dim=1, p=2)
    test_n = torch.nn.functional.normalize(test_x, dim=1, p=2)
    torch_cosine = {}
    for k in ks:
        torch_cosine[k] = dino_knn(train_n, train_y, test_n, test_y, k,
                                   temperature, num_classes)
    torch_cosine_seconds = time.perf_counter() - start
    torch_cosine_cpu = time.process_time() - cpu_start
    del train_n, test_n

    start, cpu_start = time.perf_counter(), time.process_time()
    torch_euclidean = euclidean_knn(train_x, train_y, test_x, test_y, 20,
                                    num_classes)
    torch_euclidean_seconds = time.perf_counter() - start
    torch_euclidean_cpu = time.process_time() - cpu_start

    ours_cosine = {r["k"]: r for r in events["cosine"]["results"]}
    ours_euclidean = events["euclidean"]["results"][0]
    # Accuracies as counts of correctly classified test rows.
    count = lambda fraction: round(fraction * n)  # noqa: E731
    cosine_diff = max(abs(count(ours_cosine[k]["top1"]) -
                          count(torch_cosine[k][0])) for k in ks)
    euclidean_diff = abs(count(ours_euclidean["top1"]) -
                         count(torch_euclidean))
    return {
        "dim": dim,
        "source": events["features"]["source"],
        "train_rows": events["features"]["train_rows"],
        "test_rows": n,
        "matmul": events["matmul"]["seconds"],
        "ours_cosine": events["cosine"]["seconds"],
        "torch_cosine": torch_cosine_seconds,
        "ours_euclidean": events["euclidean"]["seconds"],
        "torch_euclidean": torch_euclidean_seconds,
        "cpu": {"matmul": events["matmul"]["cpu_seconds"],
                "ours_cosine": events["cosine"]["cpu_seconds"],
                "torch_cosine": torch_cosine_cpu,
                "ours_euclidean": events["euclidean"]["cpu_seconds"],
                "torch_euclidean": torch_euclidean_cpu},
        "load": os.getloadavg()[0],
        "top1_cosine": {k: (ours_cosine[k]["top1"], torch_cosine[k][0])
                        for k in ks},
        "top1_euclidean": (ours_euclidean["top1"], torch_euclidean),
        "cosine_rows_differing": cosine_diff,
        "euclidean_rows_differing": euclidean_diff,
    }


def print_table(rows, threads):
    info = blas_info()
    cores = ", ".join(sorted(set(OPENBLAS_CORE))) or "not reported"
    print(f"threads: {threads}; libblas.so.3 -> {info['libblas.so.3']}; "
          f"OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']} (OpenBLAS kernels "
          f"in use: {cores})")
    print("Wall-clock seconds, and in brackets CPU seconds of the process "
          "(all threads); ratios of wall-clock times [of CPU times].")
    print()
    print("| D | variant | sslbench s | PyTorch s | at::mm s | "
          "PyTorch / sslbench | sslbench / at::mm | top-1 sslbench | "
          "top-1 PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for variant in ("cosine", "euclidean"):
            ours, ref = r[f"ours_{variant}"], r[f"torch_{variant}"]
            if variant == "cosine":
                label = "cosine k=10,20,100,200 T=0.07"
                top = " / ".join(f"{r['top1_cosine'][k][0]:.4f}"
                                 for k in r["top1_cosine"])
                top_ref = " / ".join(f"{r['top1_cosine'][k][1]:.4f}"
                                     for k in r["top1_cosine"])
            else:
                label = "Euclidean k=20"
                top = f"{r['top1_euclidean'][0]:.4f}"
                top_ref = f"{r['top1_euclidean'][1]:.4f}"
            cpu = r["cpu"]
            ours_c, ref_c = cpu[f"ours_{variant}"], cpu[f"torch_{variant}"]
            print(f"| {r['dim']} | {label} | {ours:.2f} [{ours_c:.2f}] | "
                  f"{ref:.2f} [{ref_c:.2f}] | "
                  f"{r['matmul']:.2f} [{cpu['matmul']:.2f}] | "
                  f"{ref / ours:.2f}x [{ref_c / ours_c:.2f}x] | "
                  f"{ours / r['matmul']:.2f}x [{ours_c / cpu['matmul']:.2f}x] | "
                  f"{top} | {top_ref} |")
    print()
    for r in rows:
        print(f"D={r['dim']}: features {r['source']}, {r['train_rows']} train "
              f"x {r['test_rows']} test rows; test rows classified "
              f"differently (max over k): cosine "
              f"{r['cosine_rows_differing']}, Euclidean "
              f"{r['euclidean_rows_differing']}; 1-minute load average at "
              f"the end: {r['load']:.2f} on {os.cpu_count()} CPUs")


def print_memory(args):
    command = [args.binary, "--memory", "--root", args.root, "--dim",
               str(args.memory_dim), "--threads", str(args.threads)]
    mib = lambda b: b / (1 << 20)  # noqa: E731
    print()
    print(f"RunKnn peak memory (cosine k=10,20,100,200 + Euclidean k=20, "
          f"D={args.memory_dim}, 10000 test rows):")
    print("| train rows | test_chunk_rows | train_chunk_rows | inputs MiB | "
          "RSS before MiB | peak RSS MiB | extra MiB |")
    print("|---|---|---|---|---|---|---|")
    for e in run_tool(command):
        if not e["hwm_reset_ok"]:
            print("warning: VmHWM could not be reset; peaks include earlier "
                  "allocations", file=sys.stderr)
        print(f"| {e['train_rows']} | {e['test_chunk_rows']} | "
              f"{e['train_chunk_rows']} | {mib(e['input_bytes']):.0f} | "
              f"{mib(e['rss_before']):.0f} | {mib(e['peak_rss']):.0f} | "
              f"{mib(e['extra_bytes']):.1f} |")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--binary",
                        default=os.path.join(REPO, "build-knn", "bin",
                                             "sslbench-knn-bench"),
                        help="sslbench-knn-bench to run")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--dims", default="784,2048",
                        help="comma-separated feature dimensions")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for both sides (torch.set_num_threads)")
    parser.add_argument("--train-rows", type=int, default=0,
                        help="limit the train rows (0: all 60000)")
    parser.add_argument("--test-rows", type=int, default=0,
                        help="limit the test rows (0: all 10000)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure RunKnn's peak memory")
    parser.add_argument("--memory-dim", type=int, default=784)
    parser.add_argument("--workdir", help="where to write the features "
                        "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for dim in (int(d) for d in args.dims.split(",")):
            rows.append(bench_dim(args, dim, workdir))
            # Free the previous dimension's files before the next one.
            subprocess.run(["rm", "-rf", os.path.join(workdir, f"d{dim}")],
                           check=True)
    print_table(rows, args.threads)
    if args.memory:
        print_memory(args)

    # The same algorithm should classify (almost) every row alike: the cosine
    # similarities are the same float32 numbers on both sides, so only exact
    # ties can differ; the float32 Euclidean reference may swap near-equal
    # neighbours that sslbench ranks exactly.
    ok = all(r["cosine_rows_differing"] <= 2 and
             r["euclidean_rows_differing"] <= 0.002 * r["test_rows"]
             for r in rows)
    if not ok:
        print("MISMATCH: accuracies disagree beyond the tolerance",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
