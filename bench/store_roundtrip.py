#!/usr/bin/python3
"""The feature store's round trip on loopback: a local stack (`sslbench up`:
a private PostgreSQL and a coordinator, no workers), a small study submitted
so that an extract task can be leased, then sslbench-store-bench writes
--megabytes of features through PutFeatureChunk and reads them back with
GetFeatureChunk. Reports MB/s each way and the peak resident memory of the
coordinator, PostgreSQL's backends and the client, for each size in --sizes,
so that flat memory shows as equal peaks for different volumes.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def rss_mb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children_named(name):
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def start_plaintext_replica(pid, tmp):
    """A second coordinator on the local stack's database and blob store,
    without TLS or authentication, listening on a free loopback port."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    dropped = ("--listen=", "--port_file=", "--auth=", "--bootstrap_tokens=", "--tls_cert=",
               "--tls_key=", "--tls_client_ca=", "--metrics_listen=")
    port_file = os.path.join(tmp, "plaintext.port")
    argv = [a for a in argv if not a.startswith(dropped)] + [
        "--listen=127.0.0.1:0", f"--port_file={port_file}", "--auth=off",
        "--metrics_listen="]
    replica = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return replica, "127.0.0.1:" + open(port_file).read().strip()
        if replica.poll() is not None:
            sys.exit("the plaintext coordinator replica exited at start")
        time.sleep(0.1)
    sys.exit("the plaintext coordinator replica did not start")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True, help="folder with sslbench and sslbench-store-bench")
    p.add_argument("--sizes", default="512,2048", help="MiB per run, comma-separated")
    p.add_argument("--chunk-mib", type=int, default=4)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--idle-seconds", type=float, default=20,
                   help="after the run, how long to wait before reading the coordinator's "
                        "resident memory again (whether freed memory goes back)")
    p.add_argument("--blob-store", default="postgres",
                   help="postgres, or file (a folder beside the database)")
    p.add_argument("--plaintext", action="store_true",
                   help="measure through a second coordinator replica on the same database "
                        "without TLS or authentication (what TLS costs on shared cores)")
    args = p.parse_args()

    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)  # PostgreSQL runs as its own user beneath it
            state = os.path.join(tmp, "state")
            blobs = "postgres" if args.blob_store == "postgres" else f"file://{tmp}/blobs"
            up = subprocess.Popen([os.path.join(args.bin, "sslbench"), "up", "--workers=0",
                                   f"--state_dir={state}", f"--blob_store={blobs}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            addr_file = os.path.join(state, "coordinator.addr")
            said = []
            for line in up.stdout:
                said.append(line)
                if "local stack is up" in line:
                    break
            else:
                sys.exit("sslbench up failed:\n" + "".join(said))
            addr = open(addr_file).read().strip()
            models = os.path.join(tmp, "models")
            subprocess.run([os.path.join(args.bin, "sslbench-make-models"), models], check=True,
                           capture_output=True)
            study = os.path.join(tmp, "study.yaml")
            with open(study, "w") as f:
                f.write("name: store-bench\nmodels:\n  - name: identity\n"
                        f"    path: {models}/identity.pt\n    channels: 1\n"
                        "datasets:\n  - name: fmnist\n    format: idx\n"
                        "    root: /usr/share/datasets/fashion-mnist\n"
                        "    train_limit: 10\n    test_limit: 10\n"
                        "protocols:\n  - name: knn\n    ks: [1]\n")
            # The local stack requires its token and speaks TLS.
            access = [f"--token_file={state}/token", f"--tls_ca={state}/tls/ca.pem"]
            subprocess.run([os.path.join(args.bin, "sslbench"), f"--coordinator={addr}", *access,
                            "submit", study], check=True, capture_output=True)
            coordinator = children_named("sslbench-coordi")  # comm is cut to 15 chars
            replica = None
            if args.plaintext:
                replica, addr = start_plaintext_replica(coordinator[0], tmp)
                coordinator, access = [replica.pid], []
            before = {pid: rss_mb(pid, "VmRSS") for pid in coordinator}
            out = subprocess.run([os.path.join(args.bin, "sslbench-store-bench"),
                                  f"--coordinator={addr}", *access, f"--megabytes={size}",
                                  f"--chunk_mib={args.chunk_mib}",
                                  f"--inflight={args.inflight}"],
                                 check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            result["coordinator_rss_before_mb"] = sum(before.values())
            result["coordinator_peak_rss_mb"] = sum(rss_mb(pid, "VmHWM") for pid in coordinator)
            result["postgres_peak_rss_mb"] = max(
                [rss_mb(pid, "VmHWM") for pid in children_named("postgres")] or [0])
            result["coordinator_rss_after_mb"] = sum(rss_mb(pid, "VmRSS") for pid in coordinator)
            time.sleep(args.idle_seconds)
            result["coordinator_rss_idle_mb"] = sum(rss_mb(pid, "VmRSS") for pid in coordinator)
            if replica is not None:
                replica.send_signal(signal.SIGTERM)
                replica.wait(timeout=60)
            up.send_signal(signal.SIGINT)
            up.wait(timeout=60)
            result["blob_store"] = args.blob_store
            result["tls"] = not args.plaintext
            print(f"{args.blob_store}{'' if result['tls'] else ', plaintext'}: {result['megabytes']:.0f} MiB in {result['chunks']} chunks: "
                  f"put {result['put_mb_per_s']:.0f} MB/s, get {result['get_mb_per_s']:.0f} MB/s; "
                  f"peak RSS: coordinator {result['coordinator_peak_rss_mb']:.0f} MB "
                  f"(before {result['coordinator_rss_before_mb']:.0f}, after "
                  f"{result['coordinator_rss_after_mb']:.0f}, {args.idle_seconds:.0f} s idle "
                  f"{result['coordinator_rss_idle_mb']:.0f}), "
                  f"largest PostgreSQL process {result['postgres_peak_rss_mb']:.0f} MB, "
                  f"client {result['peak_rss_mb']:.0f} MB")
            print(json.dumps(result))


if __name__ == "__main__":
    main()
