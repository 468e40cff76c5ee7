"""The Python client against a real local stack (`sslbench up`: PostgreSQL,
coordinator over TLS with tokens, one worker), as a notebook would use it.

Run by ctest with SSLBENCH_BIN_DIR (the built binaries) and PYTHONPATH
pointing at python/.
"""

import filecmp
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import unittest

import sslbench

BIN = os.environ["SSLBENCH_BIN_DIR"]
CLI = os.path.join(BIN, "sslbench")
SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def study(name, protocols):
    return {
        "name": name,
        "models": [{"name": "identity", "path": "models/identity.pt", "channels": 1}],
        "datasets": [{"name": "fashion-mnist", "root": FASHION_MNIST,
                      "train_limit": 2000, "test_limit": 500}],
        "protocols": protocols,
    }


class LocalStack:
    """`sslbench up` in a fresh folder; stopped with SIGINT as Ctrl-C would."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.log = open(os.path.join(os.path.dirname(state_dir), "up.log"), "w+")
        self.process = subprocess.Popen(
            [CLI, "up", f"--state_dir={state_dir}", "--workers=1", "--port=0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready = threading.Event()
        lines = []

        def read():
            for line in self.process.stdout:
                lines.append(line)
                if "local stack is up" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(180) or self.process.poll() is not None:
            self.stop()
            self.log.seek(0)
            raise RuntimeError("sslbench up did not start:\n" + "".join(lines) + self.log.read())

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sslbench-python-")
        os.chmod(cls.dir, 0o755)  # the database server may run as another user
        subprocess.run([os.path.join(BIN, "sslbench-make-models"),
                        os.path.join(cls.dir, "models")], check=True, capture_output=True)
        cls.stack = LocalStack(os.path.join(cls.dir, "stack"))
        cls.client = sslbench.Client(state_dir=cls.stack.state_dir, cli=CLI)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.stack.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def cli(self, *args):
        state = self.stack.state_dir
        with open(os.path.join(state, "coordinator.addr")) as f:
            address = f.read().strip()
        done = subprocess.run(
            [CLI, *args, f"--coordinator={address}", f"--token_file={state}/token",
             f"--tls_ca={state}/tls/ca.pem"], capture_output=True, cwd=self.dir)
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        return done.stdout

    def test_submit_watch_and_read_results_into_a_dataframe(self):
        import pandas

        spec = study("python-knn-linear", [
            {"name": "knn", "ks": [10, 20]},
            {"name": "linear", "learning_rates": [0.1], "epochs": 3},
        ])
        submitted = self.client.submit(spec, base_dir=self.dir)
        self.assertGreater(submitted.study_id, 0)
        self.assertFalse(submitted.existing)
        # Two extractions (train, test) and two probes.
        self.assertEqual(submitted.tasks, 4)

        progress = io.StringIO()
        final = self.client.wait(submitted.study_id, progress=True, check=True, file=progress)
        self.assertEqual(sslbench.STATE_NAMES[final.state], "succeeded")
        lines = progress.getvalue().splitlines()
        self.assertGreaterEqual(len(lines), 1)
        self.assertIn("succeeded", lines[-1])
        self.assertIn("extract 2/2", lines[-1])

        df = self.client.results(submitted.study_id)
        self.assertIsInstance(df, pandas.DataFrame)
        self.assertEqual(list(df.columns), sslbench.client.RESULT_COLUMNS)
        variants = sorted(df["variant"])
        self.assertEqual(len(variants), 4, variants)  # cosine k=10, k=20, euclidean k=20, linear
        self.assertTrue(((df["top1"] > 0.5) & (df["top1"] <= 1.0)).all(), df[["variant", "top1"]])
        self.assertTrue((df["model"] == "identity").all())
        self.assertEqual(set(len(p) for p in df["per_class"]), {10})
        self.assertEqual(int(df[df["protocol"] == "knn"]["config"].iloc[0]["train_rows"]), 2000)

        # The same numbers as the CLI's JSON, read through its own client.
        cli_results = json.loads(self.cli("results", str(submitted.study_id), "--format=json"))
        by_variant = {(r["protocol"], r["variant"]): r["top1"] for r in cli_results["results"]}
        for row in df.itertuples():
            self.assertEqual(row.top1, by_variant[(row.protocol, row.variant)])

        # The linear probe keeps its head: the bytes equal the CLI's download.
        heads = df[df["protocol"] == "linear"]["artifact_id"].dropna()
        self.assertEqual(len(heads), 1)
        head = self.client.artifact(int(heads.iloc[0]))
        self.assertGreater(len(head), 10 * 784 * 4)
        path = os.path.join(self.dir, "head.bin")
        self.cli("artifact", str(int(heads.iloc[0])), "-o", path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), head)

        # The worker that did it.
        workers = self.client.workers()
        self.assertEqual(len(workers), 1)
        self.assertTrue(workers[0]["alive"])

        records = self.client.results(submitted.study_id, as_records=True)
        self.assertEqual(sorted(r["variant"] for r in records), variants)

    def test_the_same_request_id_returns_the_same_study(self):
        spec = study("python-idempotent", [{"name": "knn", "ks": [10], "euclidean_k": -1}])
        first = self.client.submit(spec, request_id="python-test-key", base_dir=self.dir)
        again = self.client.submit(spec, request_id="python-test-key", base_dir=self.dir)
        self.assertEqual(again.study_id, first.study_id)
        self.assertTrue(again.existing)
        self.client.wait(first.study_id, check=True)

    def test_a_study_file_is_read_relative_to_its_folder(self):
        path = os.path.join(self.dir, "study.json")
        with open(path, "w") as f:
            json.dump(study("python-file", [{"name": "knn", "ks": [10]}]), f)
        spec = self.client.spec(path)
        self.assertEqual(spec.models[0].path, os.path.join(self.dir, "models", "identity.pt"))
        self.assertEqual(len(spec.models[0].sha256), 64)
        self.assertEqual(len(spec.datasets[0].digest), 64)
        # A resolved spec is sent as it is (no CLI needed).
        offline = sslbench.Client(state_dir=self.stack.state_dir, cli="/nonexistent/sslbench")
        from google.protobuf import json_format
        resolved = json_format.MessageToDict(spec, preserving_proto_field_name=True)
        self.assertEqual(offline.spec(resolved), spec)
        offline.close()
        # file:// locations: read under file_root, kept as URIs for the workers.
        uri_study = study("python-uri", [{"name": "knn", "ks": [10]}])
        uri_study["models"][0]["path"] = "file:///models/identity.pt"
        by_uri = self.client.spec(uri_study, file_root=self.dir)
        self.assertEqual(by_uri.models[0].path, "file:///models/identity.pt")
        self.assertEqual(by_uri.models[0].sha256, spec.models[0].sha256)

    def test_a_bad_study_names_the_field_and_submits_nothing(self):
        bad = study("python-bad", [{"name": "knn", "ks": ["many"]}])
        with self.assertRaises(sslbench.SslbenchError) as caught:
            self.client.submit(bad, base_dir=self.dir)
        self.assertEqual(caught.exception.code, "INVALID_STUDY")
        self.assertIn("protocols[0].ks", caught.exception.message)
        missing = study("python-missing", [{"name": "knn"}])
        missing["models"][0]["path"] = "models/nope.pt"
        with self.assertRaises(sslbench.SslbenchError) as caught:
            self.client.submit(missing, base_dir=self.dir)
        self.assertIn("nope.pt", caught.exception.message)

    def test_calls_without_a_valid_token_are_refused(self):
        bad_token = os.path.join(self.dir, "bad-token")
        with open(bad_token, "w") as f:
            f.write("not-a-token\n")
        stranger = sslbench.Client(state_dir=self.stack.state_dir, token_file=bad_token)
        with self.assertRaises(sslbench.SslbenchError) as caught:
            stranger.workers()
        self.assertEqual(caught.exception.code, "UNAUTHENTICATED")
        stranger.close()

    def test_an_unknown_study_is_not_found(self):
        with self.assertRaises(sslbench.SslbenchError) as caught:
            self.client.status(987654321)
        self.assertEqual(caught.exception.code, "NOT_FOUND")


class GeneratedCodeTest(unittest.TestCase):
    def test_generated_modules_match_the_protos(self):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([os.path.join(SOURCE, "python", "generate.sh"), out], check=True)
            fresh = os.path.join(out, "sslbench", "v1")
            committed = os.path.join(SOURCE, "python", "sslbench", "v1")
            names = sorted(n for n in os.listdir(fresh) if n.endswith(".py"))
            self.assertEqual(names, ["client_api_pb2.py", "client_api_pb2_grpc.py", "types_pb2.py"])
            match, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
            self.assertEqual(mismatch + errors, [],
                             "python/sslbench/v1 is out of date: run python/generate.sh")

    def test_versions_agree(self):
        with open(os.path.join(SOURCE, "CMakeLists.txt")) as f:
            self.assertIn(f"VERSION {sslbench.__version__} ", f.read())
        with open(os.path.join(SOURCE, "python", "pyproject.toml")) as f:
            self.assertIn(f'version = "{sslbench.__version__}"', f.read())


if __name__ == "__main__":
    unittest.main(verbosity=2)
