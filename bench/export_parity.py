#!/usr/bin/python3
"""Exported backbones give PyTorch's own features inside sslbench.

For ResNet-50 and ViT-B/16 (torchvision, random weights): a checkpoint is
written the way SSL methods ship them (ResNet: under "state_dict" with
MoCo's "module.encoder_q." prefix and a projection head; ViT: timm's key
names under "teacher" with a "backbone." prefix, as DINO does), exported with
scripts/export_model.py, and the exported TorchScript file is run by
sslbench-extract (the worker's reader, decode threads, preprocessing and
frozen/optimised LibTorch model) on a small photo dataset. Its features are
compared with the original PyTorch module's forward on torchvision's
Resize(256) + CenterCrop(224) + ToTensor + Normalize; exit 1 when the max
abs difference exceeds --max-diff (1e-4).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from bench_util import photo_corpus, run_json

HERE = os.path.dirname(os.path.abspath(__file__))
EXPORT = os.path.join(HERE, "..", "scripts", "export_model.py")


def read_spec(path):
    """The few keys of the exported model entry (flat YAML)."""
    spec = {}
    with open(path) as f:
        for line in f:
            line = line.strip().lstrip("- ")
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                spec[key.strip()] = value.strip()
    return spec


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True, help="sslbench-extract")
    p.add_argument("--archs", default="resnet50,vit_b_16")
    p.add_argument("--per-class", type=int, default=3)
    p.add_argument("--max-diff", type=float, default=1e-4)
    args = p.parse_args()

    import torch
    import torchvision
    from torchvision import transforms

    sys.path.insert(0, os.path.dirname(EXPORT))
    from export_model import torchvision_vit_to_timm

    torch.set_num_threads(2)
    tmp = tempfile.TemporaryDirectory()
    root = photo_corpus(None, tmp.name, 2, args.per_class)
    failed = False
    for arch in args.archs.split(","):
        torch.manual_seed(7)
        model = getattr(torchvision.models, arch)()
        model.eval()
        state = model.state_dict()
        if arch.startswith("vit_"):
            checkpoint = {"teacher": {"backbone." + k: v
                                      for k, v in torchvision_vit_to_timm(state).items()
                                      if not k.startswith("heads.")},
                          "epoch": 100}
            checkpoint["teacher"]["head.mlp.0.weight"] = torch.zeros(4, 4)
            reference = model
            reference.heads = torch.nn.Identity()
        else:
            checkpoint = {"state_dict": {"module.encoder_q." + k: v for k, v in state.items()},
                          "arch": arch}
            checkpoint["state_dict"]["module.encoder_q.fc.2.weight"] = torch.zeros(4, 4)
            reference = model
            reference.fc = torch.nn.Identity()
        ckpt = os.path.join(tmp.name, f"{arch}.pth")
        torch.save(checkpoint, ckpt)
        name = f"{arch}-export"
        subprocess.run([sys.executable, EXPORT, "--arch", arch, "--checkpoint", ckpt,
                        "--name", name, "--out", tmp.name], check=True)
        os.remove(ckpt)
        spec = read_spec(os.path.join(tmp.name, name + ".yaml"))
        mean = [float(v) for v in spec["mean"].strip("[]").split(",")]
        std = [float(v) for v in spec["std"].strip("[]").split(",")]
        resize, crop = int(spec["resize_size"]), int(spec["input_size"])

        transform = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop),
                                        transforms.ToTensor(), transforms.Normalize(mean, std)])
        dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"),
                                                   transform=transform)
        with torch.no_grad():
            images = torch.stack([dataset[i][0] for i in range(len(dataset))])
            want = reference(images).numpy()
        out = os.path.join(tmp.name, "features.bin")
        result = run_json([args.binary, "--format=imagefolder", f"--root={root}",
                           "--split=train", f"--model={os.path.join(tmp.name, spec['path'])}",
                           f"--input_size={crop}", f"--resize_size={resize}",
                           f"--mean={','.join(map(str, mean))}",
                           f"--std={','.join(map(str, std))}",
                           "--threads=2", "--decode_threads=2", "--batch=8",
                           f"--features_out={out}"])
        got = np.fromfile(out, dtype=np.float32).reshape(result["images"], -1)
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        scale = float(np.abs(want).max())
        ok = diff <= args.max_diff
        failed |= not ok
        print(f"{arch}: {got.shape[0]} images, {got.shape[1]}-d features; max |sslbench - "
              f"pytorch| = {diff:.3g} (max |feature| {scale:.3g}) "
              f"{'ok' if ok else 'FAILED'} (bound {args.max_diff:g})")
        os.remove(os.path.join(tmp.name, spec["path"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
