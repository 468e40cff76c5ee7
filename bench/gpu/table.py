#!/usr/bin/env python3
"""Turns bench/gpu/run.sh's JSON lines into the table against the targets."""
import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    scale = sys.argv[2] if len(sys.argv) > 2 else "full"

    def find(side, mode, **kw):
        for r in rows:
            if r.get("side") == side and r.get("mode") == mode and all(
                    r.get(k) == v for k, v in kw.items()):
                return r
        return None

    out = [f"GPU benchmark ({scale} size); ratios are sslbench / PyTorch in the same run", "",
           "| measurement | sslbench | PyTorch | ratio | target |", "|---|---|---|---|---|"]

    def throughput(label, ours, ref, target=""):
        """A row of images/s; the ratio is ours / theirs."""
        if ours and ref:
            a, b = ours["images_per_second"], ref["images_per_second"]
            out.append(f"| {label} (img/s) | {a:.0f} | {b:.0f} | {a / b:.2f} | {target} |")

    def seconds(label, ours, ref, key, target=""):
        """A row of times; the ratio is how many times faster we are."""
        if ours and ref:
            a, b = ours[key], ref[key]
            out.append(f"| {label} (s) | {a:.2f} | {b:.2f} | {b / a:.2f}x faster | {target} |")

    for arch in ("resnet50", "vit_b_16"):
        fwd = find("pytorch", "forward", arch=arch)
        ext = find("sslbench", "extract", arch=arch)
        dl = find("pytorch", "dataloader", arch=arch)
        throughput(f"{arch} forward only", find("sslbench", "forward", arch=arch), fwd)
        throughput(f"{arch} extraction from JPEG vs forward-only", ext, fwd, ">= 0.60")
        if dl:
            throughput(f"{arch} extraction vs DataLoader+PIL, {dl['workers']} workers", ext, dl, ">= 3")
    for dim in (768, 2048):
        ref = find("pytorch", "knn", dim=dim)
        ours = find("sslbench", "knn", dim=dim)
        if ref and ours:
            same = "same" if ref["correct"] == ours["correct"] else "DIFFERENT"
            seconds(f"kNN D={dim}, {ours['train_rows']} x {ours['test_rows']}, k=200", ours, ref,
                    "seconds", f">= 2x; correct {ours['correct']} vs {ref['correct']} ({same})")
    one = find("sslbench", "linear", heads=1)
    grid = find("sslbench", "linear", heads=52)
    seconds("linear epoch, 1 head", one, find("pytorch", "linear", heads=1), "epoch_seconds")
    seconds("linear epoch, 52 heads", grid, find("pytorch", "linear", heads=52), "epoch_seconds",
            ">= 2x")
    parity = find("sslbench", "parity")
    if parity:
        knn = "identical" if parity["knn_metrics_identical"] else "DIFFERENT"
        lin = parity["linear_top1"]
        lr = parity["logreg_top1"]
        out.append(f"| GPU vs CPU on {parity['train_rows']} x {parity['dim']} features | "
                   f"kNN {knn}; linear {100 * lin[1]:.2f} vs {100 * lin[0]:.2f}; "
                   f"logreg {100 * lr[1]:.2f} vs {100 * lr[0]:.2f} | | "
                   f"{100 * abs(lin[1] - lin[0]):.2f} / {100 * abs(lr[1] - lr[0]):.2f} points | "
                   f"identical; <= 0.2 points |")
    if grid and one:
        out.append(f"| 52 heads / 1 head epoch (sslbench) | | | "
                   f"{grid['epoch_seconds'] / one['epoch_seconds']:.2f} | <= 1.5 |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
