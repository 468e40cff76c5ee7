#!/bin/bash
# The GPU benchmark of issue "GPU workers": builds the compute core alone
# against PyTorch's LibTorch (CUDA) and Debian's Abseil carried in .gpu-deps/
# (bench/gpu/fetch_deps.sh), then measures in one run, against plain PyTorch
# on the same GPU (bench/gpu/reference.py):
#   extraction end to end from JPEG files (ResNet-50, ViT-B/16, random
#   weights, 224x224, bf16) vs the model's forward-only throughput and vs a
#   16-worker DataLoader + PIL loop;
#   DINO kNN at ImageNet size (1,281,167 x D train, 50,000 test, k = 200,
#   1000 classes; D = 768 and 2048) on identical features: time and correct
#   count;
#   one linear-probe epoch over 1,281,167 x 2048 features: 1 head and 52;
#   kNN, linear probe and logistic regression on one feature set on the CPU
#   and on the GPU (results must agree).
# Prints a table and writes it, with every raw JSON line, under $OUT.
#
#   bench/gpu/run.sh [--small] [--no-build] [--device=cuda:0]
#
# --small runs every measurement at a tenth of the size (a quick check);
# on a machine without CUDA (--device=cpu) use --tiny, which checks that the
# script and both sides run.
set -euo pipefail
cd "$(dirname "$0")/../.."
scale=full build=1 device=cuda:0
for arg in "$@"; do
  case "$arg" in
    --small) scale=small ;;
    --tiny) scale=tiny ;;
    --no-build) build=0 ;;
    --device=*) device="${arg#--device=}" ;;
    *) echo "usage: $0 [--small|--tiny] [--no-build] [--device=cuda:N|cpu]" >&2; exit 64 ;;
  esac
done
OUT=${OUT:-$PWD/gpu-bench-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
cores=$(nproc)
case "$scale" in
  full) train=1281167 test=50000 images_per_class=512 linear_rows=1281167 iters=30 batch=256
        parity="--train_rows=50000 --test_rows=10000 --dim=384 --classes=100" ;;
  small) train=128116 test=5000 images_per_class=128 linear_rows=128116 iters=10 batch=256
         parity="--train_rows=20000 --test_rows=5000 --dim=256 --classes=100" ;;
  tiny) train=4000 test=500 images_per_class=4 linear_rows=4000 iters=1 batch=4
        parity="--train_rows=4000 --test_rows=500 --dim=64 --classes=20" ;;
esac
bin=build-gpu/bin
if [ "$build" = 1 ]; then
  torch_dir=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
  deps=$PWD/.gpu-deps
  [ -d "$deps/usr" ] || { echo "run bench/gpu/fetch_deps.sh first (Debian's Abseil)" >&2; exit 1; }
  export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  t0=$(date +%s)
  cmake -S . -B build-gpu -DSSLBENCH_ONLY_COMPUTE=ON -DSSLBENCH_BUILD_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_dir;$deps/usr" >"$OUT/cmake.log" 2>&1 \
    || { tail -30 "$OUT/cmake.log"; exit 1; }
  cmake --build build-gpu -j"$cores" --target sslbench-extract sslbench-gpu-bench \
    >"$OUT/build.log" 2>&1 || { grep -m20 -E "error" "$OUT/build.log"; exit 1; }
  echo "built the compute core in $(( $(date +%s) - t0 )) s"
else
  bin=${BIN:-build/bin}
fi
raw="$OUT/gpu_bench.jsonl"
: >"$raw"
log() { echo "$1" | tee -a "$raw"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY scripts/make_photo_corpus.py --out "$work/photos" --classes 8 \
  --train-per-class "$images_per_class" --val-per-class 0 >/dev/null
ref_device=$device
[ "$device" = cpu ] && precision=fp32 || precision=bf16
decode=$(( cores > 1 ? cores - 1 : 1 ))

for arch in resnet50 vit_b_16; do
  log "$($PY bench/gpu/reference.py forward --arch $arch --device "$ref_device" \
        --precision $precision --iters $iters --batch $batch --export "$work/$arch.pt" | sed "s/^{/{\"side\": \"pytorch\", /")"
  log "$($bin/sslbench-extract --model "$work/$arch.pt" --device "$device" --precision $precision \
        --batch $batch --forward_only $iters --threads "$cores" | sed "s/^{/{\"side\":\"sslbench\",\"arch\":\"$arch\",\"mode\":\"forward\",/")"
  log "$($bin/sslbench-extract --model "$work/$arch.pt" --root "$work/photos" --device "$device" \
        --precision $precision --batch $batch --decode_threads $decode --threads "$cores" \
        | sed "s/^{/{\"side\":\"sslbench\",\"arch\":\"$arch\",\"mode\":\"extract\",/")"
  log "$($PY bench/gpu/reference.py dataloader --arch $arch --root "$work/photos" --device "$ref_device" \
        --precision $precision --batch $batch --workers "$cores" | sed "s/^{/{\"side\": \"pytorch\", /")"
done

for dim in 768 2048; do
  log "$($PY bench/gpu/reference.py knn --device "$ref_device" --train-rows $train --test-rows $test \
        --dim $dim | sed "s/^{/{\"side\": \"pytorch\", /")"
  log "$($bin/sslbench-gpu-bench --mode=knn --device="$device" --train_rows=$train --test_rows=$test \
        --dim=$dim --threads="$cores" | sed "s/^{/{\"side\":\"sslbench\",/")"
done

for heads in 1 52; do
  log "$($PY bench/gpu/reference.py linear --device "$ref_device" --train-rows $linear_rows --dim 2048 \
        --heads $heads --batch 1024 | sed "s/^{/{\"side\": \"pytorch\", /")"
  log "$($bin/sslbench-gpu-bench --mode=linear --device="$device" --train_rows=$linear_rows --dim=2048 \
        --heads=$heads --precision=$precision --threads="$cores" | sed "s/^{/{\"side\":\"sslbench\",/")"
done

# GPU results against CPU results on one feature set (must-show: kNN
# identical, linear and logistic regression within 0.2 points).
# shellcheck disable=SC2086
log "$($bin/sslbench-gpu-bench --mode=parity --device="$device" $parity --threads="$cores" \
      | sed "s/^{/{\"side\":\"sslbench\",/")"

$PY bench/gpu/table.py "$raw" "$scale" | tee "$OUT/gpu_table.md"
