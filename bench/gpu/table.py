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
    for arch in ("resnet50", "vit_b_16"):
        fwd = find("pytorch", "forward", arch=arch)
        ours_fwd = find("sslbench", "forward", arch=arch)
        ext = find("sslbench", "extract", arch=arch)
        dl = find("pytorch", "dataloader", arch=arch)
        if fwd and ours_fwd:
            out.append(f"| {arch} forward only (img/s) | {ours_fwd['images_per_second']:.0f} | "
                       f"{fwd['images_per_second']:.0f} | {ours_fwd['images_per_second'] / fwd['images_per_second']:.2f} | |")
        if ext and fwd:
            out.append(f"| {arch} extraction from JPEG vs forward-only (img/s) | {ext['images_per_second']:.0f} | "
                       f"{fwd['images_per_second']:.0f} | {ext['images_per_second'] / fwd['images_per_second']:.2f} | >= 0.60 |")
        if ext and dl:
            out.append(f"| {arch} extraction vs DataLoader+PIL, {dl['workers']} workers (img/s) | "
                       f"{ext['images_per_second']:.0f} | {dl['images_per_second']:.0f} | "
                       f"{ext['images_per_second'] / dl['images_per_second']:.2f} | >= 3 |")
    for dim in (768, 2048):
        ref = find("pytorch", "knn", dim=dim)
        ours = find("sslbench", "knn", dim=dim)
        if ref and ours:
            same = "same" if ref["correct"] == ours["correct"] else "DIFFERENT"
            out.append(f"| kNN D={dim}, {ours['train_rows']} x {ours['test_rows']}, k=200 (s) | "
                       f"{ours['seconds']:.2f} | {ref['seconds']:.2f} | {ref['seconds'] / ours['seconds']:.2f}x faster | "
                       f">= 2x; correct {ours['correct']} vs {ref['correct']} ({same}) |")
    one = find("sslbench", "linear", heads=1)
    grid = find("sslbench", "linear", heads=52)
    ref_one = find("pytorch", "linear", heads=1)
    ref_grid = find("pytorch", "linear", heads=52)
    if one and ref_one:
        out.append(f"| linear epoch, 1 head (s) | {one['epoch_seconds']:.2f} | {ref_one['epoch_seconds']:.2f} | "
                   f"{ref_one['epoch_seconds'] / one['epoch_seconds']:.2f}x faster | |")
    if grid and ref_grid:
        out.append(f"| linear epoch, 52 heads (s) | {grid['epoch_seconds']:.2f} | {ref_grid['epoch_seconds']:.2f} | "
                   f"{ref_grid['epoch_seconds'] / grid['epoch_seconds']:.2f}x faster | >= 2x |")
    if grid and one:
        out.append(f"| 52 heads / 1 head epoch (sslbench) | | | {grid['epoch_seconds'] / one['epoch_seconds']:.2f} | <= 1.5 |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
