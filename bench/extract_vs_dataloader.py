#!/usr/bin/python3
"""End-to-end feature extraction on CPU: sslbench's extraction path
(sslbench-extract: the dataset reader, C++ decode threads, LibTorch) against
a PyTorch DataLoader loop over the same files with the same model and the
same cores.

The model is torchvision's ResNet-18 (random weights, seed 0, fc removed:
512-d features), scripted and saved as TorchScript. PyTorch runs
torchvision's ImageFolder with Resize(256), CenterCrop(224), ToTensor,
Normalize, under torch.no_grad(), with torch.set_num_threads(--threads):
  * "eager": the model as a user writes it (model.eval());
  * "optimized": torch.jit.freeze + optimize_for_inference, the strongest
    plain version;
each with DataLoader num_workers 0, 1 and 2 (the best is the bar).
sslbench runs with --threads LibTorch threads and --decode-threads decode
threads. Features are compared with the eager PyTorch forward (max abs
difference; exit 1 above --max-diff).
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

# Both sides run as a worker does: OpenMP threads sleep while they wait
# (libgomp reads this when torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True, help="sslbench-extract")
    p.add_argument("--root", help="ImageFolder dataset; default: make one")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-diff", type=float, default=1e-3)
    args = p.parse_args()

    import torch
    import torchvision
    from torchvision import transforms

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    root = photo_corpus(args.root, tmp.name, args.classes, args.per_class)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.eval()
    path = os.path.join(tmp.name, "resnet18.pt")
    torch.jit.script(model).save(path)
    optimized = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model)))

    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                    transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=transform)
    n = len(dataset)

    def run(net, workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=False,
                                             num_workers=workers)
        out = []
        start = time.perf_counter()
        with torch.no_grad():
            for images, _ in loader:
                out.append(net(images))
        seconds = time.perf_counter() - start
        return n / seconds, torch.cat(out).numpy()

    # Warm the page cache and the models.
    with torch.no_grad():
        batch = torch.stack([dataset[i][0] for i in range(8)])
        model(batch)
        optimized(batch)
    # The ceiling: the optimized model alone on ready tensors, batch --batch.
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.no_grad():
        optimized(x)
        start = time.perf_counter()
        for _ in range(3):
            optimized(x)
        model_only = 3 * args.batch / (time.perf_counter() - start)
    print(f"pytorch optimized model alone on ready tensors: {model_only:.1f} images/s")
    rates = {}
    reference = None
    for name, net in (("eager", model), ("optimized", optimized)):
        for workers in (0, 1, 2):
            rate, feats = run(net, workers)
            rates[f"{name} workers={workers}"] = rate
            if name == "eager" and workers == 0:
                reference = feats
            print(f"pytorch {name}, DataLoader num_workers={workers}: {rate:.1f} images/s")

    features = os.path.join(tmp.name, "features.bin")
    out = subprocess.run([args.binary, "--format=imagefolder", f"--root={root}", "--split=train",
                          f"--model={path}", "--input_size=224", "--resize_size=256",
                          f"--threads={args.threads}", f"--decode_threads={args.decode_threads}",
                          f"--batch={args.batch}", f"--features_out={features}"],
                         check=True, capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])
    ours_feats = np.fromfile(features, dtype=np.float32).reshape(n, -1)
    diff = float(np.abs(ours_feats - reference).max())
    best_eager = max(v for k, v in rates.items() if k.startswith("eager"))
    best_optimized = max(v for k, v in rates.items() if k.startswith("optimized"))
    rate = ours["images_per_second"]
    print(f"sslbench: {rate:.1f} images/s ({args.threads} LibTorch threads, "
          f"{args.decode_threads} decode threads)")
    print(f"ratio: {rate / best_eager:.2f}x the best eager DataLoader loop, "
          f"{rate / best_optimized:.2f}x the best optimized one, "
          f"{rate / model_only:.2f}x the optimized model alone")
    print(f"features: max |sslbench - pytorch eager| = {diff:.3g} "
          f"(max |feature| {float(np.abs(reference).max()):.3g})")
    print(json.dumps({"images": n, "sslbench_images_per_second": rate,
                      "pytorch_images_per_second": rates,
                      "ratio_vs_eager": rate / best_eager,
                      "ratio_vs_optimized": rate / best_optimized,
                      "model_only_images_per_second": model_only,
                      "max_feature_diff": diff}))
    if diff > args.max_diff:
        print(f"FAILED: features differ by {diff} > {args.max_diff}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
