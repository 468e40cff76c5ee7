"""The sslbench coordinator from Python: submit, watch, read results.

    import sslbench

    client = sslbench.Client()            # same defaults as the CLI
    study = client.submit("study.yaml")   # or a dict with the same keys
    final = client.wait(study.study_id, progress=True)
    df = client.results(study.study_id)   # a pandas DataFrame (records without pandas)

Connection settings are found as the `sslbench` CLI finds them: the
coordinator from `address`, else $SSLBENCH_COORDINATOR, else
./.sslbench/coordinator.addr (written by `sslbench up`), else
localhost:7070; the access token from `token_file`, else $SSLBENCH_TOKEN,
else ./.sslbench/token; TLS when a CA is known: `tls_ca`, else
$SSLBENCH_TLS_CA, else ./.sslbench/tls/ca.pem when it exists.

Submitting reads the model files and dataset folders (their hashes are part
of every feature-cache key), through the `sslbench spec` command, so the
`sslbench` binary must be on PATH (or named by `cli=` or $SSLBENCH_CLI) and
must see the same paths as the workers. A study whose models already carry
`sha256` and whose datasets carry `digest` (a spec printed by `sslbench spec`)
is sent as it is.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import grpc
from google.protobuf import json_format

from sslbench.v1 import client_api_pb2
from sslbench.v1 import client_api_pb2_grpc
from sslbench.v1 import types_pb2

__all__ = ["Client", "SslbenchError", "StudyFailed", "STATE_NAMES"]

STATE_NAMES = {
    types_pb2.STUDY_STATE_RUNNING: "running",
    types_pb2.STUDY_STATE_SUCCEEDED: "succeeded",
    types_pb2.STUDY_STATE_FAILED: "failed",
    types_pb2.STUDY_STATE_CANCELLED: "cancelled",
}

_KIND_NAMES = {
    types_pb2.TASK_KIND_EXTRACT: "extract",
    types_pb2.TASK_KIND_KNN: "knn",
    types_pb2.TASK_KIND_LINEAR: "linear",
    types_pb2.TASK_KIND_LOGREG: "logreg",
    types_pb2.TASK_KIND_FINETUNE: "finetune",
}

# The columns of a results table, in order; per-class accuracies and the
# per-seed values stay lists.
RESULT_COLUMNS = [
    "study_id", "task_id", "model", "dataset", "protocol", "variant", "subset",
    "top1", "top5", "mean_per_class", "num_seeds", "top1_std", "top5_std",
    "mean_per_class_std", "seed_top1", "per_class", "artifact_id", "config",
]


class SslbenchError(Exception):
    """A call the coordinator refused, or a study that could not be read.

    `code` is the gRPC status code name (e.g. "NOT_FOUND") or "INVALID_STUDY"
    for a study that `sslbench spec` refused.
    """

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StudyFailed(SslbenchError):
    """Raised by `wait(..., check=True)` when a study ends other than succeeded."""

    def __init__(self, status):
        state = STATE_NAMES.get(status.state, str(status.state))
        super().__init__(state.upper(), f"study {status.study_id} {state}: {status.error}")
        self.status = status


_ARTIFACT_PAGE = 8 << 20


def _read_first_line(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError:
        return ""


def _find_cli(cli):
    for candidate in (cli, os.environ.get("SSLBENCH_CLI"), shutil.which("sslbench")):
        if candidate:
            return candidate
    raise SslbenchError(
        "FAILED_PRECONDITION",
        "submitting a study file needs the sslbench binary (it hashes the model files and "
        "dataset folders): put it on PATH, or pass cli= or set SSLBENCH_CLI")


def _absolute_paths(study, base_dir):
    """A copy of an already resolved study dict with relative model paths and
    dataset roots made absolute against `base_dir` (what `sslbench spec` does
    for the others)."""
    study = json.loads(json.dumps(study))
    for key, field in (("models", "path"), ("datasets", "root")):
        for entry in study.get(key) or []:
            value = entry.get(field)
            if (isinstance(value, str) and value and not value.startswith(("/", "$"))
                    and "://" not in value):
                entry[field] = os.path.join(base_dir, value)
    return study


def _is_resolved(study):
    models = study.get("models") or []
    datasets = study.get("datasets") or []
    return (bool(models) and bool(datasets) and all(m.get("sha256") for m in models)
            and all(d.get("digest") for d in datasets))


class Client:
    """A connection to one coordinator (see the module's docstring for defaults).

    timeout: seconds allowed for each call (submit gets at least 60).
    """

    def __init__(self, address=None, token_file=None, tls_ca=None, state_dir=".sslbench",
                 timeout=30.0, cli=None):
        self.address = (address or os.environ.get("SSLBENCH_COORDINATOR")
                        or _read_first_line(os.path.join(state_dir, "coordinator.addr"))
                        or "localhost:7070")
        if token_file:
            token = _read_first_line(token_file)
            if not token:
                raise SslbenchError("INVALID_ARGUMENT",
                                    f"token file {token_file} is missing or empty")
        else:
            token = (os.environ.get("SSLBENCH_TOKEN")
                     or _read_first_line(os.path.join(state_dir, "token")))
        ca = tls_ca or os.environ.get("SSLBENCH_TLS_CA")
        if not ca and os.path.exists(os.path.join(state_dir, "tls", "ca.pem")):
            ca = os.path.join(state_dir, "tls", "ca.pem")
        if ca:
            with open(ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            self._channel = grpc.secure_channel(self.address, credentials)
        else:
            self._channel = grpc.insecure_channel(self.address)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = client_api_pb2_grpc.StudyServiceStub(self._channel)
        self.timeout = timeout
        self._cli = cli

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise SslbenchError(e.code().name, e.details()) from None

    # Studies ---------------------------------------------------------------

    def spec(self, study, base_dir=None, file_root=None):
        """The StudySpec that `study` (a YAML file's path, or a dict with the
        keys of a study file) submits as: paths absolute, model hashes and
        dataset digests filled in, defaults applied, validated. Relative
        paths in a dict are taken against `base_dir` (default: the current
        folder); file:///PATH locations are read under `file_root` (default:
        $SSLBENCH_FILE_ROOT, else /) and kept as URIs for the workers."""
        if isinstance(study, types_pb2.StudySpec):
            return study
        if isinstance(study, dict):
            if _is_resolved(study):
                resolved = _absolute_paths(study, os.path.abspath(base_dir or os.getcwd()))
                return json_format.ParseDict(resolved, types_pb2.StudySpec())
            # The CLI takes relative paths against its working folder.
            args, stdin = [_find_cli(self._cli), "spec", "-"], json.dumps(study)
        else:
            args, stdin = [_find_cli(self._cli), "spec", os.fspath(study)], None
        if file_root:
            args.append(f"--file_root={file_root}")
        done = subprocess.run(args, input=stdin, capture_output=True, text=True,
                              cwd=base_dir or None)
        if done.returncode != 0:
            message = done.stderr.strip()
            if message.startswith("sslbench: "):
                message = message[len("sslbench: "):]
            raise SslbenchError("INVALID_STUDY", message or f"sslbench spec exited {done.returncode}")
        return json_format.Parse(done.stdout, types_pb2.StudySpec())

    def submit(self, study, request_id=None, base_dir=None, file_root=None):
        """Submits a study (file path, dict or StudySpec); returns the
        SubmitStudyResponse (study_id, tasks, reused_features, existing).

        Sent with an idempotency key (a random one unless `request_id` is
        given) and sent again under the same key when the call times out or
        the coordinator is unavailable, so a study committed after a lost
        answer is returned, not duplicated."""
        spec = self.spec(study, base_dir=base_dir, file_root=file_root)
        request = client_api_pb2.SubmitStudyRequest(
            spec=spec, request_id=request_id or uuid.uuid4().hex)
        for attempt in range(3):
            try:
                return self._stub.SubmitStudy(request, timeout=max(self.timeout, 60.0),
                                              metadata=self._metadata)
            except grpc.RpcError as e:
                retry = e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                     grpc.StatusCode.UNAVAILABLE)
                if not retry or attempt == 2:
                    raise SslbenchError(
                        e.code().name,
                        f"{e.details()} (request_id={request.request_id}: submit again with it "
                        "to get the study without a duplicate)" if retry else e.details()) from None
                time.sleep(1.0 * (attempt + 1))

    def status(self, study_id, include_spec=False):
        """The study's StudyStatus now."""
        return self._call(self._stub.GetStudy, client_api_pb2.GetStudyRequest(
            study_id=study_id, include_spec=include_spec))

    def watch(self, study_id, interval=1.0):
        """Yields the study's StudyStatus as it changes, until it ends."""
        request = client_api_pb2.WatchStudyRequest(study_id=study_id,
                                                   interval_ms=int(interval * 1000))
        try:
            for status in self._stub.WatchStudy(request, metadata=self._metadata):
                yield status
        except grpc.RpcError as e:
            raise SslbenchError(e.code().name, e.details()) from None

    def wait(self, study_id, progress=False, check=False, interval=1.0, file=None):
        """Follows the study until it ends; returns its last StudyStatus.

        progress: print one line per change (to `file`, default stderr).
        check: raise StudyFailed unless the study succeeded.
        The stream is resumed when it breaks (the coordinator restarted or
        another replica took over)."""
        out = file or sys.stderr
        last_line, status, failures = None, None, 0
        while status is None or status.state == types_pb2.STUDY_STATE_RUNNING:
            try:
                for status in self.watch(study_id, interval=interval):
                    failures = 0
                    if progress:
                        line = self.progress_line(status)
                        if line != last_line:
                            print(line, file=out, flush=True)
                            last_line = line
                if status is None:
                    status = self.status(study_id)
            except SslbenchError as e:
                if e.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or failures >= 30:
                    raise
                failures += 1
                time.sleep(min(1.0 * failures, 5.0))
        if check and status.state != types_pb2.STUDY_STATE_SUCCEEDED:
            raise StudyFailed(status)
        return status

    @staticmethod
    def progress_line(status):
        """One line: state, then done/total per task kind."""
        parts = [f"study {status.study_id} {STATE_NAMES.get(status.state, '?')}",
                 f"{status.elapsed_seconds:.0f}s"]
        for p in status.progress:
            done = p.succeeded + p.failed + p.cancelled
            parts.append(f"{_KIND_NAMES.get(p.kind, '?')} {done}/{p.total}"
                         + (f" ({p.failed} failed)" if p.failed else ""))
        return "  ".join(parts)

    def cancel(self, study_id):
        """Cancels the study's unfinished tasks; returns its StudyStatus."""
        return self._call(self._stub.CancelStudy,
                          client_api_pb2.CancelStudyRequest(study_id=study_id))

    # Results ---------------------------------------------------------------

    def result_records(self, study_id):
        """The study's results as a list of dicts (keys: RESULT_COLUMNS;
        `config` is the parsed configuration of the run)."""
        response = self._call(self._stub.ListResults,
                              client_api_pb2.ListResultsRequest(study_id=study_id))
        records = []
        for r in response.results:
            records.append({
                "study_id": r.study_id, "task_id": r.task_id, "model": r.model,
                "dataset": r.dataset, "protocol": r.protocol, "variant": r.variant,
                "subset": r.subset, "top1": r.top1, "top5": r.top5,
                "mean_per_class": r.mean_per_class, "num_seeds": r.num_seeds,
                "top1_std": r.top1_std, "top5_std": r.top5_std,
                "mean_per_class_std": r.mean_per_class_std,
                "seed_top1": list(r.seed_top1), "per_class": list(r.per_class),
                "artifact_id": r.artifact_id or None,
                "config": json.loads(r.config_json) if r.config_json else {},
            })
        return records

    def results(self, study_id, as_records=False):
        """The study's results: a pandas DataFrame with RESULT_COLUMNS when
        pandas is installed (and `as_records` is false), else records."""
        records = self.result_records(study_id)
        if as_records:
            return records
        try:
            import pandas
        except ImportError:
            return records
        return pandas.DataFrame.from_records(records, columns=RESULT_COLUMNS)

    def artifact(self, artifact_id, path=None):
        """A stored artefact (a trained head; ids in the results'
        artifact_id column): its bytes, or written to `path` (returns path)."""
        # In pages of 8 MiB, so an artefact of any size fits the message limits.
        data = bytearray()
        while True:
            page = self._call(self._stub.GetArtifact,
                              client_api_pb2.GetArtifactRequest(
                                  artifact_id=artifact_id, offset=len(data),
                                  max_bytes=_ARTIFACT_PAGE),
                              timeout=max(self.timeout, 120.0))
            if page.offset != len(data):
                raise SslbenchError("DATA_LOSS", f"artifact {artifact_id}: asked for bytes from "
                                                 f"{len(data)}, got bytes from {page.offset}")
            data += page.data
            if len(data) >= page.total_bytes or not page.data:
                break
        if len(data) != page.total_bytes:
            raise SslbenchError("DATA_LOSS", f"artifact {artifact_id}: {len(data)} of "
                                             f"{page.total_bytes} bytes read")
        if path is None:
            return bytes(data)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path

    def correlate(self, study_id, metric="top1", bootstrap=1000, seed=0, by=()):
        """The cross-protocol correlation analysis (`sslbench correlate`) as a dict."""
        request = client_api_pb2.CorrelateRequest(
            study_id=study_id, metric=metric, bootstrap_resamples=bootstrap, seed=seed,
            group_by=by if isinstance(by, str) else ",".join(by))
        response = self._call(self._stub.Correlate, request, timeout=max(self.timeout, 120.0))
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    def feature_caches(self, study_id=0):
        """The feature caches a study fills or reads (all when 0) as records:
        key, model, dataset, split, rows, bytes, unfinished readers."""
        response = self._call(self._stub.ListFeatureCaches,
                              client_api_pb2.ListFeatureCachesRequest(study_id=study_id))
        return [json_format.MessageToDict(c, preserving_proto_field_name=True,
                                          including_default_value_fields=True)
                for c in response.caches]

    def workers(self):
        """The registered workers as records."""
        response = self._call(self._stub.ListWorkers, client_api_pb2.ListWorkersRequest())
        return [json_format.MessageToDict(w, preserving_proto_field_name=True,
                                          including_default_value_fields=True)
                for w in response.workers]
