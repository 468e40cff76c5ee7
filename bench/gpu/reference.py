#!/usr/bin/env python3
"""Plain PyTorch references for bench/gpu/run.sh, each printing one JSON line.

  forward     model(x) with x already on the device (channels-last for
              convnets, autocast to --precision): the model's own ceiling.
              --export PATH also saves the same model (torchvision, random
              weights from seed 0, classifier removed) as TorchScript.
  dataloader  torchvision ImageFolder + PIL Resize(256) + CenterCrop(224) +
              ToTensor + Normalize, DataLoader(--workers, pin_memory), the
              model on the device: the usual Python extraction loop.
  knn         DINO's weighted-vote kNN (eval_knn.knn_classifier: chunks of
              --chunk test rows, full top-k over all train rows, one-hot
              votes exp(sim / T)) on features regenerated exactly as
              sslbench-gpu-bench makes them; also the one-pass variant.
  linear      one epoch of SGD over features on the device, batch 1024:
              --heads linear heads trained side by side as DINOv2's grid
              does (one nn.Linear per head, summed losses, one optimizer).
"""
import argparse
import json
import math
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_model(arch):
    import torchvision
    torch.manual_seed(0)
    if arch == "resnet50":
        m = torchvision.models.resnet50()
        m.fc = torch.nn.Identity()
    elif arch == "vit_b_16":
        m = torchvision.models.vit_b_16()
        m.heads = torch.nn.Identity()
    else:
        m = getattr(torchvision.models, arch)()
        m.fc = torch.nn.Identity()
    return m.eval()


def cmd_forward(a, device):
    model = make_model(a.arch)
    if a.export:
        torch.jit.save(torch.jit.script(model), a.export)
    model = model.to(device)
    x = torch.randn(a.batch, 3, 224, 224, device=device)
    if a.arch != "vit_b_16" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, a.precision):
        for _ in range(3):
            model(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(a.iters):
            model(x)
        sync(device)
        s = time.perf_counter() - t
    return {"mode": "forward", "arch": a.arch, "precision": a.precision,
            "images_per_second": a.iters * a.batch / s}


def cmd_dataloader(a, device):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    model = make_model(a.arch).to(device)
    if a.arch != "vit_b_16" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = ImageFolder(a.root, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, num_workers=a.workers,
                                         pin_memory=device.type == "cuda")
    n = 0
    with torch.inference_mode(), autocast(device, a.precision):
        t = time.perf_counter()
        for x, _ in loader:
            model(x.to(device, non_blocking=True)).float().cpu()
            n += x.shape[0]
        sync(device)
        s = time.perf_counter() - t
    return {"mode": "dataloader", "arch": a.arch, "workers": a.workers,
            "images": n, "images_per_second": n / s}


def make_features(device, seed, train_rows, test_rows, dim, classes):
    """Exactly sslbench-gpu-bench's MakeFeatures: same calls, same order."""
    torch.manual_seed(seed)
    centres = torch.randn(classes, dim, device=device)

    def make(rows):
        labels = torch.randint(classes, (rows,), device=device)
        x = torch.randn(rows, dim, device=device) + centres.index_select(0, labels) * 0.25
        return x, labels

    train = make(train_rows)
    test = make(test_rows) if test_rows > 0 else None
    return train, test


def cmd_knn(a, device):
    (xtr, ytr), (xte, yte) = make_features(device, a.seed, a.train_rows, a.test_rows,
                                           a.dim, a.classes)
    k, T, C = a.k, 0.07, a.classes
    sync(device)
    t = time.perf_counter()
    # DINO eval_knn.knn_classifier, as published.
    train_features = torch.nn.functional.normalize(xtr, dim=1).t()
    test_features = torch.nn.functional.normalize(xte, dim=1)
    correct = 0
    retrieval_one_hot = torch.zeros(k, C, device=device)
    for idx in range(0, a.test_rows, a.chunk):
        features = test_features[idx:idx + a.chunk]
        targets = yte[idx:idx + a.chunk]
        batch_size = targets.shape[0]
        similarity = torch.mm(features, train_features)
        distances, indices = similarity.topk(k, largest=True, sorted=True)
        candidates = ytr.view(1, -1).expand(batch_size, -1)
        retrieved_neighbors = torch.gather(candidates, 1, indices)
        retrieval_one_hot.resize_(batch_size * k, C).zero_()
        retrieval_one_hot.scatter_(1, retrieved_neighbors.view(-1, 1), 1)
        distances_transform = distances.clone().div_(T).exp_()
        probs = torch.sum(torch.mul(retrieval_one_hot.view(batch_size, -1, C),
                                    distances_transform.view(batch_size, -1, 1)), 1)
        _, predictions = probs.sort(1, True)
        correct += predictions.narrow(1, 0, 1).eq(targets.view(-1, 1)).sum().item()
    sync(device)
    s = time.perf_counter() - t
    return {"mode": "knn", "train_rows": a.train_rows, "test_rows": a.test_rows,
            "dim": a.dim, "k": k, "seconds": s, "correct": correct,
            "top1": correct / a.test_rows,
            "tf32": torch.backends.cuda.matmul.allow_tf32}


def cmd_linear(a, device):
    (x, y), _ = make_features(device, a.seed, a.train_rows, 0, a.dim, a.classes)
    heads = torch.nn.ModuleList(torch.nn.Linear(a.dim, a.classes) for _ in range(a.heads))
    heads = heads.to(device)
    opt = torch.optim.SGD([{"params": h.parameters(), "lr": 1e-4 * 1.2 ** i}
                           for i, h in enumerate(heads)], momentum=0.9)
    perm = torch.randperm(a.train_rows, device=device)
    sync(device)
    t = time.perf_counter()
    for s in range(0, a.train_rows, a.batch):
        rows = perm[s:s + a.batch]
        xb, yb = x[rows], y[rows]
        loss = sum(torch.nn.functional.cross_entropy(h(xb), yb) for h in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return {"mode": "linear", "rows": a.train_rows, "dim": a.dim, "heads": a.heads,
            "epoch_seconds": time.perf_counter() - t}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["forward", "dataloader", "knn", "linear"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--export", default="")
    p.add_argument("--root", default="")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--train-rows", type=int, default=1281167)
    p.add_argument("--test-rows", type=int, default=50000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    fn = {"forward": cmd_forward, "dataloader": cmd_dataloader, "knn": cmd_knn,
          "linear": cmd_linear}[a.mode]
    print(json.dumps(fn(a, device)), flush=True)


if __name__ == "__main__":
    main()
