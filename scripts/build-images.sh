#!/usr/bin/env bash
# Builds the coordinator, worker and CLI images from docker/Dockerfile with
# podman, without a registry: the Debian 12 base comes from debootstrap
# (Debian's mirror is the only network used, as for apt-get).
#   scripts/build-images.sh [TAG [REF]]  (defaults: the project version, HEAD)
# The build context is REF's tree (git archive), so uncommitted edits never
# leak into an image and the three targets share one cached build stage.
# Prints each image's size and the build time. Needs root, podman, buildah,
# runc and debootstrap (apt-get install podman buildah runc debootstrap).
# Then scripts/try-images.sh runs a study with the images.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^project(sslbench VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
tag=${1:-$version}
work=${SSLBENCH_IMAGE_WORK:-/var/tmp/sslbench-images}
podman=(podman --runtime runc)
mkdir -p "$work"

if ! "${podman[@]}" image exists localhost/debian:bookworm; then
  echo "build-images: Debian 12 base from debootstrap (minbase) in $work/rootfs"
  if [ ! -x "$work/rootfs/usr/bin/apt-get" ]; then
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian \
      > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }
  fi
  tar -C "$work/rootfs" -c . | "${podman[@]}" import \
    --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - localhost/debian:bookworm > /dev/null
  # The minbase system is what bookworm-slim is: the runtime stages use it too.
  "${podman[@]}" tag localhost/debian:bookworm localhost/debian:bookworm-slim
fi

ref=${2:-HEAD}
context="$work/context"
rm -rf "$context" && mkdir -p "$context"
git archive --format=tar "$ref" | tar -x -C "$context"
echo "build-images: context $(git rev-parse --short "$ref") in $context"

start=$(date +%s)
for target in coordinator worker cli; do
  name=localhost/sslbench-$target:$tag
  [ "$target" = cli ] && name=localhost/sslbench:$tag
  t0=$(date +%s)
  echo "build-images: $name"
  "${podman[@]}" build --pull=never --network host --layers -f "$context/docker/Dockerfile" \
    --target "$target" -t "$name" "$context" > "$work/build-$target.log" 2>&1 \
    || { tail -40 "$work/build-$target.log"; exit 1; }
  echo "build-images:   built in $(( $(date +%s) - t0 )) s"
done
echo "build-images: all three in $(( $(date +%s) - start )) s"
"${podman[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'sslbench|debian'
