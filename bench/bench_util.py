"""Helpers shared by the benchmark and parity scripts in this folder."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
             for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return array.reshape(shape)


def find(root, name):
    for candidate in (os.path.join(root, name), os.path.join(root, name + ".gz")):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(os.path.join(root, name) + "[.gz]")


def load_split(root, prefix, limit):
    images = read_idx(find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(root, f"{prefix}-labels-idx1-ubyte"))
    if limit:
        images, labels = images[:limit], labels[:limit]
    features = images.reshape(len(images), -1).astype(np.float32) / 255
    return np.ascontiguousarray(features), labels.astype(np.int64)


def run_json(command):
    """Runs a tool and returns the JSON object on the last line of its stdout."""
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def photo_corpus(root, tmp, classes, per_class):
    """`root` if given, else a photo dataset (ImageFolder layout, train split
    only) written by scripts/make_photo_corpus.py under `tmp`."""
    if root is not None:
        return root
    root = os.path.join(tmp, "photos")
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, os.path.join(here, "..", "scripts", "make_photo_corpus.py"),
                    "--out", root, "--classes", str(classes),
                    "--train-per-class", str(per_class), "--val-per-class", "0"],
                   check=True)
    return root
