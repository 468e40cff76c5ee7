#!/usr/bin/python3
"""Writes a photo dataset in the ImageFolder layout from the photographs that
Debian's python3-skimage ships: distinct random crops and rescales of each
photograph, saved as JPEGs of ImageNet-like sizes (quality 75-95, some
progressive, some grey, some CMYK) and some PNGs (RGB, grey, palette, RGBA).

  ROOT/train/CLASS/NNNNN.{jpg,png}
  ROOT/val/CLASS/NNNNN.{jpg,png}

Each class is one photograph, so a backbone's features separate the classes.
Deterministic for a given --seed. Needs /usr/bin/python3 with PIL, numpy and
skimage (Debian: python3-pil python3-numpy python3-skimage).
"""
import argparse
import os
import random
import sys

import numpy as np
from PIL import Image

SKIMAGE_DATA = "/usr/lib/python3/dist-packages/skimage/data"
# Photographs (not synthetic test patterns), in class order.
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
          "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png",
          "retina.jpg", "horse.png", "camera.png", "coins.png", "moon.png",
          "brick.png", "grass.png", "gravel.png", "cell.png"]


def load_sources(num_classes):
    if num_classes > len(PHOTOS):
        sys.exit(f"at most {len(PHOTOS)} classes (one per photograph)")
    sources = []
    for name in PHOTOS[:num_classes]:
        path = os.path.join(SKIMAGE_DATA, name)
        try:
            im = Image.open(path)
            im.load()
        except OSError as e:
            sys.exit(f"cannot read {path} ({e}); install python3-skimage")
        sources.append((os.path.splitext(name)[0], im.convert("RGB")))
    return sources


def variant(rng, src):
    """A random crop of 30-100% of the area, aspect 3:4 to 4:3, rescaled so
    the longer side is 300-640 pixels."""
    w, h = src.size
    for _ in range(20):
        area = w * h * rng.uniform(0.3, 1.0)
        aspect = rng.uniform(3 / 4, 4 / 3)
        cw = int(round((area * aspect) ** 0.5))
        ch = int(round((area / aspect) ** 0.5))
        if 16 <= cw <= w and 16 <= ch <= h:
            break
    else:
        cw, ch = w, h
    x = rng.randint(0, w - cw)
    y = rng.randint(0, h - ch)
    crop = src.crop((x, y, x + cw, y + ch))
    longest = rng.randint(300, 640)
    scale = longest / max(cw, ch)
    size = (max(1, int(round(cw * scale))), max(1, int(round(ch * scale))))
    resample = rng.choice([Image.BILINEAR, Image.BICUBIC, Image.LANCZOS])
    img = crop.resize(size, resample)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def save(rng, img, stem):
    """Saves `img` as one of the kinds a real dataset holds; returns the path."""
    r = rng.random()
    quality = rng.randint(75, 95)
    progressive = rng.random() < 0.2
    if r < 0.08:
        path = stem + ".jpg"
        img.convert("L").save(path, "JPEG", quality=quality, progressive=progressive)
    elif r < 0.13:
        path = stem + ".jpg"
        img.convert("CMYK").save(path, "JPEG", quality=quality)
    elif r < 0.16:
        path = stem + ".png"
        img.save(path, "PNG")
    elif r < 0.18:
        path = stem + ".png"
        img.convert("P", palette=Image.ADAPTIVE, colors=rng.randint(16, 256)).save(path, "PNG")
    elif r < 0.19:
        path = stem + ".png"
        img.convert("L").save(path, "PNG")
    elif r < 0.20:
        path = stem + ".png"
        rgba = img.convert("RGBA")
        alpha = Image.fromarray(
            (np.arange(img.size[0] * img.size[1]) % 251).astype(np.uint8).reshape(
                img.size[1], img.size[0]))
        rgba.putalpha(alpha)
        rgba.save(path, "PNG")
    else:
        path = stem + ".jpg"
        subsampling = rng.choice([0, 1, 2, 2, 2])  # 4:4:4, 4:2:2, 4:2:0 (most)
        img.save(path, "JPEG", quality=quality, progressive=progressive,
                 subsampling=subsampling)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    sources = load_sources(args.classes)
    count = 0
    for split, per_class in (("train", args.train_per_class), ("val", args.val_per_class)):
        if per_class <= 0:
            continue
        for name, src in sources:
            folder = os.path.join(args.out, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                save(rng, variant(rng, src), os.path.join(folder, f"{i:05d}"))
                count += 1
    print(f"make_photo_corpus: wrote {count} images of {len(sources)} classes to {args.out}")


if __name__ == "__main__":
    main()
