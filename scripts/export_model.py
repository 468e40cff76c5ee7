#!/usr/bin/env python3
"""Export a pre-trained backbone as a TorchScript file sslbench's workers load,
plus the model entry of a study file (input size, resize, mean/std, what the
output is).

  scripts/export_model.py --arch resnet50 --checkpoint swav_800ep.pth \\
      --name swav-rn50 --out studies/models
  scripts/export_model.py --arch vit_b_16 --checkpoint dino_vitbase16.pth \\
      --name dino-vitb16 --out studies/models
  scripts/export_model.py --arch resnet50 --name random-rn50 --out /tmp/m  # random weights

Writes OUT/NAME.pt and OUT/NAME.yaml (paste the latter under `models:`).

Outputs, as the seed study evaluates them:
  * ResNets: global-average-pooled features (2048-d for ResNet-50), the fc
    layer removed;
  * ViTs: --pool cls (default): the class token after the final LayerNorm;
    --pool mean: the patch tokens averaged, then the final norm (MAE-style
    `fc_norm` when the checkpoint has one, else the encoder's norm applied
    before the average, as torchvision's encoder does).

Checkpoints: a state dict, or a file holding one under "state_dict",
"model", "teacher", "target_encoder", "network" or "module". The key prefix
(module., backbone., encoder., module.encoder_q., module.base_encoder., ...)
is found by matching keys against the architecture; --prefix names it
explicitly. ViT checkpoints in timm's naming (cls_token, pos_embed,
blocks.N.attn.qkv, ...: DINO, iBOT, MoCo v3, MAE, BEiT-style exports) are
mapped onto torchvision's modules. Classification heads are dropped. Every
backbone weight must be found; the export fails naming the missing ones.

Needs PyTorch and torchvision (timm models via --arch timm:NAME when timm is
installed). Runs on CPU.
"""
import argparse
import os
import re
import sys

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where method checkpoints keep the backbone's state dict.
NESTED_KEYS = ("state_dict", "model", "teacher", "target_encoder", "network", "module",
               "model_state", "state")


# timm ViT names -> torchvision VisionTransformer names: within a block, then
# at the top level (whole names, then prefixes).
BLOCK_RENAMES = (("norm1.", "ln_1."), ("norm2.", "ln_2."),
                 ("attn.qkv.weight", "self_attention.in_proj_weight"),
                 ("attn.qkv.bias", "self_attention.in_proj_bias"),
                 ("attn.proj.", "self_attention.out_proj."),
                 ("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.3."))
TOP_NAMES = (("cls_token", "class_token"), ("pos_embed", "encoder.pos_embedding"))
TOP_PREFIXES = (("patch_embed.proj.", "conv_proj."), ("norm.", "encoder.ln."))
BLOCK_PATTERNS = (r"blocks\.(\d+)\.(.*)", "blocks.{}.{}",
                  r"encoder\.layers\.encoder_layer_(\d+)\.(.*)", "encoder.layers.encoder_layer_{}.{}")


def rename_vit(state, to_torchvision=True):
    """Renames ViT keys between timm's and torchvision's conventions."""
    src, dst = (0, 1) if to_torchvision else (1, 0)
    pattern = BLOCK_PATTERNS[0] if to_torchvision else BLOCK_PATTERNS[2]
    template = BLOCK_PATTERNS[3] if to_torchvision else BLOCK_PATTERNS[1]
    out = {}
    for key, value in state.items():
        k = key
        m = re.match(pattern, k)
        if m:
            rest = m.group(2)
            for pair in BLOCK_RENAMES:
                rest = rest.replace(pair[src], pair[dst])
            k = template.format(m.group(1), rest)
        else:
            for pair in TOP_NAMES:
                if k == pair[src]:
                    k = pair[dst]
                    break
            else:
                for pair in TOP_PREFIXES:
                    if k.startswith(pair[src]):
                        k = pair[dst] + k[len(pair[src]):]
                        break
        out[k] = value
    return out


def timm_vit_to_torchvision(state):
    return rename_vit(state, True)


def torchvision_vit_to_timm(state):
    """The inverse of timm_vit_to_torchvision (for tests)."""
    return rename_vit(state, False)


def unwrap(obj):
    """The state dict inside a checkpoint object."""
    import torch
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            for key in NESTED_KEYS:
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
        elif hasattr(obj, "state_dict"):
            obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise SystemExit("export: the checkpoint holds no state dict")
    return {k: v for k, v in obj.items() if hasattr(v, "shape")}


def best_prefix(keys, wanted, rename=lambda s: s):
    """The prefix whose removal (then `rename`) makes the most keys match the
    model's."""
    candidates = {""}
    for k in keys:
        parts = k.split(".")
        for n in range(1, min(4, len(parts))):
            candidates.add(".".join(parts[:n]) + ".")
    best, best_hits = "", -1
    for prefix in sorted(candidates, key=lambda c: (len(c), c)):
        renamed = rename({k[len(prefix):]: None for k in keys if k.startswith(prefix)})
        hits = sum(1 for k in renamed if k in wanted)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return best


def load_weights(model, path, prefix, is_vit):
    import torch
    state = unwrap(torch.load(path, map_location="cpu"))
    wanted = set(model.state_dict().keys())
    rename = timm_vit_to_torchvision if is_vit else (lambda s: s)
    if prefix is None:
        prefix = best_prefix(list(state.keys()), wanted, rename)
    stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if is_vit:
        stripped = timm_vit_to_torchvision(stripped)
    fc_norm = {k[len("fc_norm."):]: v for k, v in stripped.items() if k.startswith("fc_norm.")}
    head = ("fc.", "heads.", "head.", "fc_norm.")
    backbone = {k: v for k, v in stripped.items() if k in wanted and not k.startswith(head)}
    # BatchNorm's step counters are bookkeeping; some exports drop them.
    required = {k for k in wanted
                if not k.startswith(head) and not k.endswith("num_batches_tracked")}
    missing = sorted(required - set(backbone))
    if is_vit and fc_norm:
        # MAE-style global pooling: no final norm in the encoder.
        missing = [k for k in missing if not k.startswith("encoder.ln.")]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise SystemExit(f"export: {path} (prefix {prefix!r}) lacks {len(missing)} backbone "
                         f"weights: {shown}")
    for k, v in backbone.items():
        if tuple(v.shape) != tuple(model.state_dict()[k].shape):
            raise SystemExit(f"export: {path}: {k} has shape {tuple(v.shape)}, the "
                             f"architecture expects {tuple(model.state_dict()[k].shape)}")
    model.load_state_dict(backbone, strict=False)
    print(f"export: loaded {len(backbone)} tensors from {path} (prefix {prefix!r})",
          file=sys.stderr)
    return fc_norm


def build(arch, pool, checkpoint, prefix):
    """(module returning features, feature description)."""
    import torch
    import torchvision

    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise SystemExit("export: timm is not installed; use a torchvision architecture")
        model = timm.create_model(arch[5:], pretrained=False, num_classes=0,
                                  global_pool="avg" if pool == "mean" else "token")
        if checkpoint:
            import torch as t
            state = unwrap(t.load(checkpoint, map_location="cpu"))
            p = prefix if prefix is not None else best_prefix(list(state), set(model.state_dict()))
            model.load_state_dict({k[len(p):]: v for k, v in state.items() if k.startswith(p)},
                                  strict=False)
        return model, f"timm {arch[5:]} ({pool} pooling)"
    if not hasattr(torchvision.models, arch):
        raise SystemExit(f"export: torchvision has no architecture {arch!r}")
    model = getattr(torchvision.models, arch)()
    is_vit = arch.startswith("vit_")
    fc_norm = {}
    if checkpoint:
        fc_norm = load_weights(model, checkpoint, prefix, is_vit)
    if hasattr(model, "fc") and not is_vit:
        dim = model.fc.in_features
        model.fc = torch.nn.Identity()
        return model, f"{arch}: global-average-pooled features, {dim}-d"
    if is_vit:
        dim = model.hidden_dim
        model.heads = torch.nn.Identity()
        if pool == "cls":
            if fc_norm:
                raise SystemExit("export: this checkpoint ends in fc_norm (global pooling); "
                                 "use --pool mean")
            return model, f"{arch}: class token after the final LayerNorm, {dim}-d"
        norm = None
        if fc_norm:
            norm = torch.nn.LayerNorm(dim, eps=1e-6)
            norm.load_state_dict(fc_norm)
            model.encoder.ln = torch.nn.Identity()
        what = "fc_norm after" if fc_norm else "final LayerNorm, then"
        return MeanPooledViT(model, norm), f"{arch}: {what} mean of patch tokens, {dim}-d"
    raise SystemExit(f"export: don't know how to take features from {arch!r} "
                     "(supported: torchvision resnet*/resnext*/wide_resnet* and vit_*)")


def _mean_pooled_vit():
    import torch

    class MeanPooledViT(torch.nn.Module):
        def __init__(self, vit, norm):
            super().__init__()
            self.vit = vit
            self.norm = norm if norm is not None else torch.nn.Identity()

        def forward(self, x):
            x = self.vit._process_input(x)
            token = self.vit.class_token.expand(x.shape[0], -1, -1)
            x = self.vit.encoder(torch.cat([token, x], dim=1))
            return self.norm(x[:, 1:].mean(dim=1))

    return MeanPooledViT


def MeanPooledViT(vit, norm):  # noqa: N802 (a factory: torch is imported late)
    return _mean_pooled_vit()(vit, norm)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True,
                   help="torchvision name (resnet50, vit_b_16, ...) or timm:NAME")
    p.add_argument("--checkpoint", help="weights; absent: random initialisation (seeded)")
    p.add_argument("--prefix", help="key prefix to strip (default: found automatically)")
    p.add_argument("--pool", choices=("cls", "mean"), default="cls", help="ViT output")
    p.add_argument("--name", required=True, help="model name in the study: [A-Za-z0-9_.-]+")
    p.add_argument("--out", required=True, help="folder for NAME.pt and NAME.yaml")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--resize-size", type=int, default=256)
    p.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
    p.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", action="store_true", help="trace instead of script")
    args = p.parse_args()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise SystemExit(f"export: name {args.name!r} must match [A-Za-z0-9_.-]+")

    import torch
    torch.manual_seed(args.seed)
    model, description = build(args.arch, args.pool, args.checkpoint, args.prefix)
    model.eval()
    example = torch.zeros(1, 3, args.input_size, args.input_size)
    with torch.no_grad():
        scripted = None
        if not args.trace:
            try:
                scripted = torch.jit.script(model)
            except Exception as e:  # some timm models do not script
                print(f"export: scripting failed ({type(e).__name__}), tracing", file=sys.stderr)
        if scripted is None:
            scripted = torch.jit.trace(model, example)
        dim = int(scripted(example).shape[-1])
    os.makedirs(args.out, exist_ok=True)
    pt = os.path.join(args.out, args.name + ".pt")
    scripted.save(pt)
    spec = os.path.join(args.out, args.name + ".yaml")
    with open(spec, "w") as f:
        f.write(f"# {description}; exported from "
                f"{os.path.basename(args.checkpoint) if args.checkpoint else 'random weights'}\n")
        f.write(f"- name: {args.name}\n")
        f.write(f"  path: {args.name}.pt\n")
        f.write(f"  input_size: {args.input_size}\n")
        f.write(f"  resize_size: {args.resize_size}\n")
        f.write("  channels: 3\n")
        f.write(f"  mean: [{', '.join(f'{v:g}' for v in args.mean)}]\n")
        f.write(f"  std: [{', '.join(f'{v:g}' for v in args.std)}]\n")
    print(f"export: wrote {pt} ({dim}-d features: {description}) and {spec}")


if __name__ == "__main__":
    main()
