#!/usr/bin/python3
"""Linear-probe parity and speed: sslbench vs a plain PyTorch loop.

The reference is the textbook loop: [BatchNorm1d(D, affine=False) ->]
nn.Linear(D, C) with weight ~ N(0, init_std) and bias 0, CrossEntropyLoss,
torch.optim.SGD(momentum=0.9, weight_decay), optional clip_grad_norm_, the
learning rate set before every step by MAE's per-iteration schedule (linear
warmup from 0 over warmup_epochs, then cosine to 0), base rate
lr * batch / 256, trained on all of train and evaluated on test in eval mode.
It uses the same initial weights as sslbench (torch.Generator seeded with
--seed) and the same batch order (sslbench's splitmix64 Fisher-Yates
permutation per epoch, reimplemented below), so the two differ only by
floating-point rounding; --torch-shuffle draws the order from torch.randperm
instead, which makes the comparison a statistical one.

Prints a side-by-side table of test top-1 and seconds with and without
BatchNorm, then the cost of the learning-rate grid: sslbench training
--grid (8) rates as parallel heads vs one head, on the same held-out split.
Fails (exit 1) when a top-1 differs by more than --tolerance (0.5 points);
with --check-speed also when the grid takes 2x one head's time or more.

Run with Debian's /usr/bin/python3 (numpy, torch).
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
import math
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import load_split, run_json  # noqa: E402

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
PERMUTE_SALT = 0x5045524D55544500


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def derive_seed(seed, stream):
    """worker/compute/probe_common.cc DeriveSeed."""
    return mix64(seed ^ mix64((stream + GOLDEN) & MASK))


def seeded_permutation(n, seed):
    """worker/compute/probe_common.cc SeededPermutation."""
    state = mix64(seed ^ PERMUTE_SALT)
    v = list(range(n))
    for i in range(n, 1, -1):
        threshold = ((1 << 64) - i) % i
        while True:
            state = (state + GOLDEN) & MASK
            r = mix64(state)
            if r >= threshold:
                break
        j = r % i
        v[i - 1], v[j] = v[j], v[i - 1]
    return v


def lr_factor(step, warmup_steps, total_steps):
    if step < warmup_steps:
        return step / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def torch_probe(x_train, y_train, x_test, y_test, args, batch_norm):
    torch.set_num_threads(args.threads)
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(y_train)
    n, d = x.shape
    classes = int(max(y_train.max(), y_test.max())) + 1
    batch = min(args.batch_size, n)
    steps_per_epoch = (n + batch - 1) // batch
    if batch_norm and n % batch == 1:
        steps_per_epoch -= 1
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch * args.warmup_epochs
    if args.torch_shuffle:
        g = torch.Generator().manual_seed(args.seed + 1)
        orders = [torch.randperm(n, generator=g) for _ in range(args.epochs)]
    else:
        orders = [torch.tensor(seeded_permutation(n, derive_seed(args.seed, e)))
                  for e in range(args.epochs)]

    start = time.perf_counter()
    head = torch.nn.Linear(d, classes)
    with torch.no_grad():
        head.weight.normal_(0, args.init_std, generator=torch.Generator().manual_seed(args.seed))
        head.bias.zero_()
    model = (torch.nn.Sequential(torch.nn.BatchNorm1d(d, affine=False), head)
             if batch_norm else head)
    base = args.lr * args.batch_size / 256
    opt = torch.optim.SGD(head.parameters(), lr=base, momentum=0.9,
                          weight_decay=args.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    step = 0
    for epoch in range(args.epochs):
        order = orders[epoch]
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), args.grad_clip)
            for group in opt.param_groups:
                group["lr"] = base * lr_factor(step, warmup, total)
            opt.step()
            step += 1
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test)).argmax(1).numpy()
    seconds = time.perf_counter() - start
    return {"top1": float((predicted == y_test).mean()), "seconds": seconds}


def run_ours(args, lrs, batch_norm, val_fraction, train_limit):
    command = [args.binary, "linear", "--root", args.root, "--lrs",
               ",".join(repr(r) for r in lrs), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--warmup-epochs",
               str(args.warmup_epochs), "--grad-clip", repr(args.grad_clip),
               "--weight-decay", repr(args.weight_decay), "--init-std", repr(args.init_std),
               "--val-fraction", repr(val_fraction), "--seed", str(args.seed),
               "--threads", str(args.threads)]
    if train_limit:
        command += ["--train-limit", str(train_limit)]
    if batch_norm:
        command.append("--batch-norm")
    return run_json(command)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--binary", required=True, help="path to sslbench-probe")
    parser.add_argument("--fast", action="store_true",
                        help="the quick ctest configuration (10 epochs)")
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--grad-clip", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--init-std", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default="0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2",
                        help="learning rates of the grid-cost measurement")
    parser.add_argument("--no-grid", action="store_true")
    parser.add_argument("--torch-shuffle", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--check-speed", action="store_true")
    args = parser.parse_args()
    if args.fast:
        args.epochs, args.warmup_epochs = 10, 1

    x_train, y_train = load_split(args.root, "train", args.train_limit)
    x_test, y_test = load_split(args.root, "t10k", 0)

    rows = []
    failed = False
    for batch_norm in (False, True):
        ref = torch_probe(x_train, y_train, x_test, y_test, args, batch_norm)
        ours = run_ours(args, [args.lr], batch_norm, 0.0, args.train_limit)
        diff = ours["top1"] - ref["top1"]
        ok = abs(diff) <= args.tolerance + 1e-12
        failed |= not ok
        rows.append({"case": "batchnorm" if batch_norm else "plain",
                     "torch_top1": ref["top1"], "sslbench_top1": ours["top1"],
                     "diff_points": 100 * diff, "torch_seconds": ref["seconds"],
                     "sslbench_seconds": ours["seconds"],
                     "time_ratio": ours["seconds"] / ref["seconds"], "ok": ok})

    grid_rows = []
    if not args.no_grid:
        grid = [float(r) for r in args.grid.split(",")]
        for batch_norm in (False, True):
            one = run_ours(args, [args.lr], batch_norm, 0.1, args.train_limit)
            many = run_ours(args, grid, batch_norm, 0.1, args.train_limit)
            ratio = many["seconds"] / one["seconds"]
            ok = ratio < 2 or not args.check_speed
            failed |= not ok
            grid_rows.append({"case": "batchnorm" if batch_norm else "plain",
                              "heads": len(grid), "one_head_seconds": one["seconds"],
                              "grid_seconds": many["seconds"], "ratio": ratio,
                              "best_learning_rate": many["best_learning_rate"],
                              "grid_test_top1": many["top1"], "ok": ok})

    print(f"linear probe, {len(y_train)} train rows, {args.epochs} epochs, batch "
          f"{args.batch_size}, lr {args.lr}, warmup {args.warmup_epochs}, "
          f"clip {args.grad_clip}, threads {args.threads}")
    header = (f"{'case':<10} {'torch top1':>10} {'ours':>8} {'diff pt':>8} "
              f"{'torch s':>8} {'ours s':>8} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:<10} {r['torch_top1']:>10.4f} {r['sslbench_top1']:>8.4f} "
              f"{r['diff_points']:>+8.2f} {r['torch_seconds']:>8.2f} "
              f"{r['sslbench_seconds']:>8.2f} {r['time_ratio']:>6.2f}"
              f"{'' if r['ok'] else '  FAIL'}")
    if grid_rows:
        print()
        header = f"{'grid':<10} {'heads':>5} {'1 head s':>9} {'grid s':>8} {'ratio':>6}"
        print(header)
        print("-" * len(header))
        for r in grid_rows:
            print(f"{r['case']:<10} {r['heads']:>5} {r['one_head_seconds']:>9.2f} "
                  f"{r['grid_seconds']:>8.2f} {r['ratio']:>6.2f}"
                  f"{'' if r['ok'] else '  FAIL'}")
    print(json.dumps({"parity": rows, "grid": grid_rows}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
