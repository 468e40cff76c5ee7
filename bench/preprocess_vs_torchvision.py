#!/usr/bin/python3
"""sslbench's image preprocessing against torchvision's evaluation transforms
on PIL (Debian's python3-torchvision), on the same files.

Parity (exit 1 on failure):
  * the split lists the same files with the same labels in the same order as
    torchvision.datasets.ImageFolder;
  * Resize(256) + CenterCrop(224) pixels differ by at most --max-diff
    (default 1, i.e. 1/255 after ToTensor);
  * after ToTensor + Normalize, floats differ by at most --max-diff / 255 / std.

Speed (--time): decode + resize + crop + normalise on one core, sslbench's
C++ pipeline against torchvision's transforms on PIL (torch limited to one
thread, both pinned to core 0), both reading the files from the page cache;
alternating rounds, the best of each side compared, reported as a ratio.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_util import photo_corpus

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True, help="sslbench-preprocess")
    p.add_argument("--root", help="ImageFolder dataset; default: make one")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--max-diff", type=int, default=1)
    p.add_argument("--time", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="passes over the files per round")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    args = p.parse_args()

    import torch
    import torchvision
    from torchvision import transforms

    torch.set_num_threads(1)
    if args.time:
        os.sched_setaffinity(0, {0})  # one core, as the C++ side (taskset)
    tmp = tempfile.TemporaryDirectory()
    root = photo_corpus(args.root, tmp.name, args.classes, args.per_class)

    keys = os.path.join(tmp.name, "keys.tsv")
    u8 = os.path.join(tmp.name, "u8.bin")
    f32 = os.path.join(tmp.name, "f32.bin")
    mean = ",".join(map(str, MEAN))
    std = ",".join(map(str, STD))
    common = [args.binary, "--format=imagefolder", f"--root={root}", "--split=train",
              f"--resize={args.resize}", f"--crop={args.crop}", f"--mean={mean}", f"--std={std}"]
    subprocess.run(common + [f"--keys_out={keys}", f"--uint8_out={u8}", f"--float_out={f32}"],
                   check=True, capture_output=True)

    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"))
    with open(keys) as f:
        ours = [line.rstrip("\n").split("\t") for line in f]
    theirs = [(os.path.relpath(path, root), label) for path, label in dataset.samples]
    failures = []
    if [(k, int(l)) for k, l in ours] != theirs:
        failures.append("record order or labels differ from torchvision's ImageFolder")
    n = len(theirs)
    side = args.crop
    ours_u8 = np.fromfile(u8, dtype=np.uint8).reshape(n, side, side, 3)
    ours_f32 = np.fromfile(f32, dtype=np.float32).reshape(n, 3, side, side)

    geometric = transforms.Compose([transforms.Resize(args.resize), transforms.CenterCrop(side)])
    to_float = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    worst_u8, worst_f32, differing_pixels, exact_images = 0, 0.0, 0, 0
    kinds = {}
    for i, (path, _) in enumerate(dataset.samples):
        img = dataset.loader(path)  # PIL open + convert("RGB"), as ImageFolder does
        crop = geometric(img)
        ref = np.asarray(crop, dtype=np.uint8)
        diff = np.abs(ref.astype(np.int16) - ours_u8[i].astype(np.int16))
        worst_u8 = max(worst_u8, int(diff.max()))
        differing_pixels += int((diff > 0).sum())
        exact_images += int(diff.max() == 0)
        ref_f = to_float(crop).numpy()
        worst_f32 = max(worst_f32, float(np.abs(ref_f - ours_f32[i]).max()))
        from PIL import Image
        with Image.open(path) as raw:
            kind = f"{raw.format} {raw.mode}"
        kinds[kind] = kinds.get(kind, 0) + 1
    float_bound = args.max_diff / 255 / min(STD) + 1e-6
    print(f"parity: {n} images ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")
    print(f"parity: max |uint8 difference| = {worst_u8} (bound {args.max_diff}); "
          f"{exact_images}/{n} images identical; {differing_pixels} differing values")
    print(f"parity: max |normalised difference| = {worst_f32:.3g} (bound {float_bound:.3g})")
    if worst_u8 > args.max_diff:
        failures.append(f"pixels differ by {worst_u8} > {args.max_diff}")
    if worst_f32 > float_bound:
        failures.append(f"normalised values differ by {worst_f32} > {float_bound}")

    result = {"images": n, "max_uint8_diff": worst_u8, "max_float_diff": worst_f32,
              "identical_images": exact_images}
    if args.time:
        full = transforms.Compose([transforms.Resize(args.resize), transforms.CenterCrop(side),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        # Warm the page cache and both code paths once.
        for path, _ in dataset.samples[:20]:
            full(dataset.loader(path))
        # Rounds alternate the two sides, so that a noisy neighbour hits both;
        # the best round of each is compared (and the medians reported).
        tv_rates, ours_rates = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.repeat):
                for path, _ in dataset.samples:
                    full(dataset.loader(path))
            tv_rates.append(n * args.repeat / (time.perf_counter() - start))
            out = subprocess.run(["taskset", "-c", "0"] + common +
                                 ["--time", f"--repeat={args.repeat}"],
                                 check=True, capture_output=True, text=True).stdout
            ours_rates.append(json.loads(out.strip().splitlines()[-1])["images_per_second"])
        tv_rate, ours_rate = max(tv_rates), max(ours_rates)
        median = lambda v: sorted(v)[len(v) // 2]
        result.update({"torchvision_images_per_second": tv_rate,
                       "sslbench_images_per_second": ours_rate,
                       "ratio": ours_rate / tv_rate,
                       "median_ratio": median(ours_rates) / median(tv_rates),
                       "rounds": args.rounds})
        print(f"speed: torchvision {tv_rate:.1f} images/s, sslbench {ours_rate:.1f} images/s "
              f"on one core (best of {args.rounds} alternating rounds): {ours_rate / tv_rate:.2f}x; "
              f"medians {median(tv_rates):.1f} and {median(ours_rates):.1f}: "
              f"{median(ours_rates) / median(tv_rates):.2f}x")
    print(json.dumps(result))
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
