#!/usr/bin/env bash
# Runs a study with the images of scripts/build-images.sh as containers on
# one podman network (PostgreSQL, coordinator with tokens and a database
# password file, worker, CLI), then the same study on the local stack
# (`sslbench up`, binaries of ./build), and compares the results.
#   scripts/try-images.sh [TAG]
# Needs root, podman, the images, a build in ./build and Debian's
# dataset-fashion-mnist. Prints the timings and both results; exits 1 when
# they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
version=$(sed -n 's/^project(sslbench VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
tag=${1:-$version}
work=${SSLBENCH_IMAGE_WORK:-/var/tmp/sslbench-images}/try
net=sslbench-try
subnet=10.213.250
podman=(podman --runtime runc)
run=("${podman[@]}" run --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
data=/usr/share/datasets/fashion-mnist

cleanup() {
  for c in try-postgres try-coordinator try-worker; do
    "${podman[@]}" logs "$c" > "$work/$c.log" 2>&1 || true
  done
  "${podman[@]}" rm -f -t 5 try-cli try-worker try-coordinator try-postgres > /dev/null 2>&1 || true
  "${podman[@]}" network rm -f "$net" > /dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work" && mkdir -p "$work"/{models,secrets,study,local}

# A PostgreSQL 15 server from Debian (a stand-in for the postgres image the
# manifests use): password from a file, scram-sha-256 over the network.
if ! "${podman[@]}" image exists localhost/sslbench-try-postgres:latest; then
  "${podman[@]}" build --pull=never --network host -t localhost/sslbench-try-postgres:latest -f - . \
    > "$work/postgres-build.log" 2>&1 <<'EOF' || { tail -20 "$work/postgres-build.log"; exit 1; }
FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
USER postgres
ENTRYPOINT ["bash", "-c", "set -e; d=/tmp/pgdata; /usr/lib/postgresql/15/bin/initdb -D $d -U sslbench --auth-local=trust --auth-host=scram-sha-256 --pwfile=/etc/sslbench/database/password >/dev/null; echo 'host all all 0.0.0.0/0 scram-sha-256' >> $d/pg_hba.conf; /usr/lib/postgresql/15/bin/pg_ctl -D $d -o \"-c listen_addresses=* -c unix_socket_directories=/tmp\" -w start >/dev/null; /usr/lib/postgresql/15/bin/createdb -h /tmp -U sslbench sslbench; exec sleep infinity"]
EOF
fi

# Secrets as the Kubernetes Secrets would mount them: files readable by the
# container user only.
openssl rand -hex 16 > "$work/secrets/password"
admin=sbt_$(openssl rand -hex 16)
worker=sbt_$(openssl rand -hex 16)
printf 'admin ops %s\nworker workers %s\n' "$admin" "$worker" > "$work/secrets/bootstrap"
echo "$admin" > "$work/secrets/admin"
echo "$worker" > "$work/secrets/worker"
cp "$work/secrets/password" "$work/secrets/pg-password"
chown 10001:10001 "$work/secrets"/{password,bootstrap,admin,worker}
chmod 0400 "$work/secrets"/*
chown 10001:10001 "$work/models"

"${podman[@]}" network create --subnet "$subnet.0/24" "$net" > /dev/null
hosts=(--add-host "sslbench-postgres:$subnet.10" --add-host "sslbench-coordinator:$subnet.11")

t0=$(date +%s)
"${run[@]}" -d --name try-postgres --network "$net" --ip "$subnet.10" \
  -v "$work/secrets/pg-password:/etc/sslbench/database/password:ro,U" \
  localhost/sslbench-try-postgres:latest > /dev/null
"${run[@]}" -d --name try-coordinator --network "$net" --ip "$subnet.11" "${hosts[@]}" \
  -v "$work/secrets/password:/etc/sslbench/database/password:ro" \
  -v "$work/secrets/bootstrap:/etc/sslbench/tokens/bootstrap:ro" \
  "localhost/sslbench-coordinator:$tag" \
  "--database=host=sslbench-postgres port=5432 user=sslbench dbname=sslbench" \
  --database_password_file=/etc/sslbench/database/password \
  --auth=required --bootstrap_tokens=/etc/sslbench/tokens/bootstrap > /dev/null
# The worker image makes the models (TorchScript) into the models volume.
"${run[@]}" --rm --entrypoint /usr/local/bin/sslbench-make-models -v "$work/models:/models" \
  "localhost/sslbench-worker:$tag" /models > "$work/make-models.log" 2>&1
"${run[@]}" -d --name try-worker --network "$net" --ip "$subnet.12" "${hosts[@]}" \
  -v "$work/models:/models:ro" -v "$data:/data/fashion-mnist:ro" \
  -v "$work/secrets/worker:/etc/sslbench/worker-token/token:ro" \
  "localhost/sslbench-worker:$tag" --coordinator=sslbench-coordinator:7070 --name=container-worker \
  --threads=2 --token_file=/etc/sslbench/worker-token/token \
  --model_roots=/models --data_roots=/data > /dev/null

study() {  # study.yaml naming models under $1 and the dataset at $2
  cat <<EOF
name: containers
models:
  - name: identity
    path: $1/identity.pt
    channels: 1
  - name: cnn
    path: $1/cnn.pt
    channels: 1
    input_size: 28
datasets:
  - name: fashion-mnist
    root: $2
    train_limit: 10000
    test_limit: 2000
protocols:
  - name: knn
    ks: [10, 20]
  - name: linear
    learning_rates: [0.1]
    epochs: 5
EOF
}
study /models /data/fashion-mnist > "$work/study/study.yaml"
cli=("${run[@]}" --rm --name try-cli --network "$net" --ip "$subnet.13" "${hosts[@]}"
     -v "$work/study:/study:ro" -v "$work/models:/models:ro" -v "$data:/data/fashion-mnist:ro"
     -v "$work/secrets/admin:/etc/sslbench/token:ro"
     "localhost/sslbench:$tag" --coordinator=sslbench-coordinator:7070
     --token_file=/etc/sslbench/token)
# Ready when it answers (it waits for PostgreSQL first).
for i in $(seq 120); do
  "${cli[@]}" workers > /dev/null 2>&1 && break
  [ "$i" = 120 ] && { echo "try-images: the coordinator never answered"; exit 1; }
  sleep 1
done
echo "try-images: coordinator answering $(( $(date +%s) - t0 )) s after the first container started"
id=$("${cli[@]}" submit /study/study.yaml)
"${cli[@]}" watch "$id" > "$work/watch.log" 2>&1 || { cat "$work/watch.log"; "${podman[@]}" logs try-worker | tail; exit 1; }
"${cli[@]}" results "$id" --format=csv > "$work/containers.csv"
t1=$(date +%s)
echo "try-images: containerised study $id done in $(( t1 - t0 )) s (start to results)"

# The same study on the local stack.
study "$work/models" "$data" > "$work/local/study.yaml"
state="$work/local/state"
"$root/build/bin/sslbench" up --state_dir="$state" --workers=1 --worker_threads=2 \
  > "$work/local/up.log" 2>&1 &
up=$!
for _ in $(seq 300); do grep -q "local stack is up" "$work/local/up.log" && break; sleep 0.2; done
local_cli=("$root/build/bin/sslbench" --coordinator="$(cat "$state/coordinator.addr")"
           --token_file="$state/token" --tls_ca="$state/tls/ca.pem")
local_id=$("${local_cli[@]}" submit "$work/local/study.yaml")
"${local_cli[@]}" watch "$local_id" > "$work/local/watch.log" 2>&1
"${local_cli[@]}" results "$local_id" --format=csv > "$work/local.csv"
kill -INT "$up"; wait "$up" || true

# model,dataset,protocol,variant,subset,top1 of each, sorted.
pick() { python3 -c '
import csv, sys
rows = sorted((r["model"], r["dataset"], r["protocol"], r["variant"], r["subset"], r["top1"])
              for r in csv.DictReader(open(sys.argv[1])))
for r in rows: print(",".join(r))' "$1"; }
pick "$work/containers.csv" > "$work/containers.top1"
pick "$work/local.csv" > "$work/local.top1"
echo "try-images: results (model,dataset,protocol,variant,subset,top1), containers:"
cat "$work/containers.top1"
if diff "$work/containers.top1" "$work/local.top1" > "$work/diff.txt"; then
  echo "try-images: the local stack's $(wc -l < "$work/local.top1") results are identical"
else
  echo "try-images: the local stack's results differ:"; cat "$work/diff.txt"; exit 1
fi
"${podman[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep sslbench
