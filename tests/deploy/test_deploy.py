"""Offline checks of deploy/ and docker/: what an operator would find
broken on a real cluster, checked on the rendered overlays (kustomize_lite,
compared with `kubectl kustomize` where kubectl exists) and the rendered Helm
chart (helm_lite, default and GPU values), the alert rules (promtool), and
the images' runtime libraries against the built binaries.

    SSLBENCH_SOURCE=. SSLBENCH_BIN_DIR=build/bin python3 -m unittest -v test_deploy

SSLBENCH_SOURCE may name another checkout (e.g. an older commit, to see
which checks it fails).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helm_lite  # noqa: E402
import kustomize_lite  # noqa: E402

SOURCE = os.path.abspath(os.environ.get(
    "SSLBENCH_SOURCE", os.path.join(os.path.dirname(__file__), "..", "..")))
BIN_DIR = os.environ.get("SSLBENCH_BIN_DIR", "")
TESTS = os.path.dirname(os.path.abspath(__file__))
OVERLAYS = ["local", "production"]
# What is checked: the two overlays and the Helm chart with its defaults and
# with GPU values. All but the local overlay render no Secret.
RENDERS = OVERLAYS + ["helm", "helm-gpu"]
SECRETS_SUPPLIED = {"production", "helm", "helm-gpu"}


def project_version():
    with open(os.path.join(SOURCE, "CMakeLists.txt")) as f:
        return re.search(r"project\(sslbench VERSION ([0-9.]+)", f.read()).group(1)


def render(name):
    if name.startswith("helm"):
        values = [os.path.join(TESTS, "helm-gpu-values.yaml")] if name == "helm-gpu" else []
        return helm_lite.render(os.path.join(SOURCE, "deploy", "helm", "sslbench"), values)
    return kustomize_lite.render(os.path.join(SOURCE, "deploy", "overlays", name))


def pod_templates(objects):
    for obj in objects:
        if obj["kind"] in kustomize_lite.POD_TEMPLATE_KINDS:
            yield obj, obj["spec"]["template"]


def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container_named(objects, workload, container="worker"):
    obj = by_kind(objects, "Deployment")[workload]
    return obj, next(c for c in obj["spec"]["template"]["spec"]["containers"])


def flag(args, name):
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def cpu_cores(quantity):
    quantity = str(quantity)
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


class RenderedOverlaysTest(unittest.TestCase):
    """Each finding of an operator's first deploy, on both overlays."""

    @classmethod
    def setUpClass(cls):
        cls.rendered = {name: render(name) for name in RENDERS}

    def test_images_name_a_registry_a_release_tag_and_a_pull_policy(self):
        version = project_version()
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                for obj, template in pod_templates(objects):
                    for c in template["spec"]["containers"]:
                        image = c["image"]
                        name, tag = kustomize_lite._split_image(image)
                        host = name.split("/")[0] if "/" in name else ""
                        self.assertTrue(host == "localhost" or "." in host or ":" in host,
                                        f"{obj['metadata']['name']}: {image} names no registry")
                        self.assertTrue(tag and tag != ":latest", f"{image}: no pinned tag")
                        self.assertIn(c.get("imagePullPolicy"), ("IfNotPresent", "Never", "Always"),
                                      f"{image}: no pull policy")
                        if "sslbench" in name:
                            self.assertEqual(tag, f":{version}", f"{image}: not the release tag")

    def test_every_claim_exists_and_shared_ones_are_read_only_many(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                claims = by_kind(objects, "PersistentVolumeClaim")
                for obj, template in pod_templates(objects):
                    templates = {t["metadata"]["name"] for t in
                                 obj["spec"].get("volumeClaimTemplates", [])}
                    replicas = obj["spec"].get("replicas")  # None: autoscaled
                    for volume in template["spec"].get("volumes", []):
                        pvc = volume.get("persistentVolumeClaim")
                        if not pvc:
                            continue
                        name = pvc["claimName"]
                        self.assertTrue(name in claims or name in templates,
                                        f"{obj['metadata']['name']} mounts claim {name} that "
                                        "nothing creates: its pods stay Pending")
                        many = replicas is None or replicas > 1 or overlay in SECRETS_SUPPLIED
                        if name in claims and many:
                            modes = claims[name]["spec"]["accessModes"]
                            self.assertTrue({"ReadOnlyMany", "ReadWriteMany"} & set(modes),
                                            f"{name}: {modes} cannot be mounted by many replicas")
                            self.assertTrue(pvc.get("readOnly"), f"{name}: mounted writable")

    def test_secrets_hold_no_placeholders_and_production_renders_none(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                text = json.dumps(objects)
                self.assertNotIn("change-me", text)
                secrets = by_kind(objects, "Secret")
                if overlay in SECRETS_SUPPLIED:
                    self.assertEqual(list(secrets), [],
                                     "applying the overlay would overwrite the Secrets of the "
                                     "secret manager")
                for s in secrets.values():
                    values = list(s.get("data", {}).values())
                    self.assertEqual(len(values), len(set(values)),
                                     f"{s['metadata']['name']}: a value repeated under two keys")
                for obj, template in pod_templates(objects):
                    for c in template["spec"]["containers"]:
                        for arg in c.get("args", []) + c.get("command", []):
                            self.assertNotRegex(arg, r"password\s*=",
                                                f"{obj['metadata']['name']}: password in its args")

    def test_externally_supplied_secrets_are_documented(self):
        with open(os.path.join(SOURCE, "deploy", "README.md")) as f:
            readme = f.read()
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                rendered = {re.sub(r"-[bcdfghkmt2456789]{10}$", "", n)
                            for n in by_kind(objects, "Secret")}
                for obj, template in pod_templates(objects):
                    for volume in template["spec"].get("volumes", []):
                        secret = (volume.get("secret") or {}).get("secretName")
                        if not secret:
                            continue
                        base = re.sub(r"-[bcdfghkmt2456789]{10}$", "", secret)
                        if base not in rendered:
                            documented = re.search(
                                rf"kubectl (-n \S+ )?create secret (generic|tls) {base}\b", readme)
                            self.assertTrue(documented, f"{overlay}: Secret {base} is neither "
                                            "rendered nor documented in deploy/README.md")

    def test_worker_probes_mean_registered_and_alive_and_drain_fits_the_grace(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                obj, c = container_named(objects, "sslbench-worker")
                self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
                self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/livez")
                drain = flag(c["args"], "drain_seconds")
                self.assertIsNotNone(drain, "no --drain_seconds: a hand-back can outlast the grace")
                grace = obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                self.assertLessEqual(int(drain) + 10, grace)

    def test_coordinator_replicas_spread_and_leave_endpoints_before_stopping(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                obj, c = container_named(objects, "sslbench-coordinator")
                spec = obj["spec"]["template"]["spec"]
                self.assertIn("preStop", c.get("lifecycle", {}))
                if obj["spec"].get("replicas", 1) > 1:
                    spread = spec.get("topologySpreadConstraints", [])
                    anti = spec.get("affinity", {}).get("podAntiAffinity")
                    self.assertTrue(
                        anti or any(t["topologyKey"] == "kubernetes.io/hostname" for t in spread),
                        "coordinator replicas may all land on one node")

    def test_worker_threads_fit_the_cpus_it_requests(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                obj, c = container_named(objects, "sslbench-worker")
                config = {}
                for source in c.get("envFrom", []):
                    name = source["configMapRef"]["name"]
                    config.update(by_kind(objects, "ConfigMap")[name]["data"])
                cpus = cpu_cores(c["resources"]["requests"]["cpu"])
                for name in ("threads", "decode_threads"):
                    value = flag(c["args"], name)
                    # $(VAR) comes from the ConfigMap the container reads.
                    m = re.fullmatch(r"\$\((\w+)\)", value or "")
                    value = config.get(m.group(1)) if m else value
                    self.assertIsNotNone(value, f"--{name} is not set")
                    self.assertLessEqual(int(value), cpus,
                                         f"--{name}={value} on {cpus} requested CPUs")

    def test_config_edits_roll_the_pods(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                for obj, template in pod_templates(objects):
                    for c in template["spec"]["containers"]:
                        for source in c.get("envFrom", []):
                            name = (source.get("configMapRef") or {}).get("name")
                            if name:
                                self.assertRegex(name, r"-[bcdfghkmt2456789]{10}$",
                                                 f"{name}: not generated, edits do not roll pods")

    def test_everything_lives_in_a_namespace_with_its_own_service_accounts(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                namespaces = by_kind(objects, "Namespace")
                # An overlay makes its namespace; a chart goes into the release's.
                self.assertEqual(len(namespaces), 0 if overlay.startswith("helm") else 1)
                namespace = next(iter(namespaces), "sslbench")
                for obj in objects:
                    if obj["kind"] not in kustomize_lite.CLUSTER_SCOPED:
                        self.assertEqual(obj["metadata"].get("namespace"), namespace,
                                         f"{obj['kind']} {obj['metadata']['name']}")
                accounts = by_kind(objects, "ServiceAccount")
                for obj, template in pod_templates(objects):
                    spec = template["spec"]
                    account = spec.get("serviceAccountName", "default")
                    self.assertNotEqual(account, "default", obj["metadata"]["name"])
                    self.assertIn(account, accounts)
                    self.assertIs(spec.get("automountServiceAccountToken"), False,
                                  f"{obj['metadata']['name']} mounts an API token it never uses")

    def test_every_pod_is_under_a_network_policy(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                policies = by_kind(objects, "NetworkPolicy").values()
                for obj, template in pod_templates(objects):
                    labels = template["metadata"]["labels"]
                    selected = [p for p in policies
                                if p["spec"]["podSelector"].get("matchLabels", {}).items()
                                <= labels.items()]
                    self.assertTrue(selected, f"{obj['metadata']['name']} has no NetworkPolicy")

    def test_monitors_and_rules_carry_the_operators_selector_label(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay=overlay):
                for obj in objects:
                    if obj["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
                        self.assertIn("release", obj["metadata"].get("labels", {}),
                                      f"{obj['kind']} {obj['metadata']['name']}")

    def test_autoscaling_targets_the_worker_and_can_scale_to_zero(self):
        for name in ("production", "helm-gpu"):
            objects = self.rendered[name]
            scaled = by_kind(objects, "ScaledObject")
            self.assertEqual(len(scaled), 1, name)
            (spec,) = [s["spec"] for s in scaled.values()]
            self.assertEqual(spec["scaleTargetRef"]["name"], "sslbench-worker")
            self.assertEqual(spec["minReplicaCount"], 0)
            self.assertIn('sslbench_tasks{state="PENDING"}',
                          spec["triggers"][0]["metadata"]["query"])
        # The autoscaler owns the replica count: the chart then sets none.
        obj, _ = container_named(self.rendered["helm-gpu"], "sslbench-worker")
        self.assertNotIn("replicas", obj["spec"])

    def test_the_chart_is_the_release_and_keeps_the_alert_rules(self):
        with open(os.path.join(SOURCE, "deploy", "helm", "sslbench", "Chart.yaml")) as f:
            chart = yaml.safe_load(f)
        self.assertEqual(chart["appVersion"], project_version())
        rules = {name: [o["spec"] for o in objects if o["kind"] == "PrometheusRule"]
                 for name, objects in self.rendered.items()}
        self.assertEqual(rules["helm"], rules["production"])
        # TLS values mount the certificate and pass it to both sides.
        _, coordinator = container_named(self.rendered["helm-gpu"], "sslbench-coordinator")
        _, worker = container_named(self.rendered["helm-gpu"], "sslbench-worker")
        self.assertEqual(flag(coordinator["args"], "tls_cert"), "/etc/sslbench/tls/tls.crt")
        self.assertEqual(flag(worker["args"], "tls_ca"), "/etc/sslbench/tls/ca.crt")
        self.assertEqual(worker["resources"]["limits"]["nvidia.com/gpu"], 1)

    def test_kustomize_lite_refuses_what_it_does_not_know_and_matches_kubectl(self):
        # A feature outside the subset is an error, never silently ignored.
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
                f.write("resources: []\ncommonLabels: {a: b}\n")
            with self.assertRaisesRegex(kustomize_lite.KustomizeError, "commonLabels"):
                kustomize_lite.render(tmp)
        if not shutil.which("kubectl"):
            return  # Debian 12 packages no kubectl; where there is one, compare.

        def normalised(objects):
            text = re.sub(r'-[bcdfghkmt2456789]{10}"', '"', json.dumps(objects, sort_keys=True))
            return {(o["kind"], o["metadata"]["name"]): o for o in json.loads(text)}

        for overlay in OVERLAYS:
            objects = self.rendered[overlay]
            out = subprocess.run(
                ["kubectl", "kustomize", os.path.join(SOURCE, "deploy", "overlays", overlay)],
                capture_output=True, text=True, check=True).stdout
            self.assertEqual(normalised(objects),
                             normalised([d for d in yaml.safe_load_all(out) if d]))


def metric_names(expr):
    return set(re.findall(r"\b(sslbench_[a-z0-9_]+)", expr))


def exported_metrics():
    names = set()
    for folder in ("server", "worker", "common"):
        for root, _, files in os.walk(os.path.join(SOURCE, folder)):
            for name in files:
                if name.endswith((".cc", ".h")):
                    with open(os.path.join(root, name)) as f:
                        names |= set(re.findall(r'Name\("(sslbench_[a-z0-9_]+)"\)', f.read()))
    return names


class AlertsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        (rule,) = [o for o in render("production") if o["kind"] == "PrometheusRule"]
        cls.groups = rule["spec"]["groups"]
        cls.alerts = {r["alert"]: r for g in cls.groups for r in g["rules"] if "alert" in r}

    def test_the_alerts_an_operator_needs_exist(self):
        for name in ("SslbenchCoordinatorDown", "SslbenchDatabaseErrors",
                     "SslbenchTaskFailureRate", "SslbenchNoWorkers"):
            self.assertIn(name, self.alerts)

    def test_every_metric_the_alerts_and_dashboard_use_is_exported(self):
        exported = exported_metrics()
        used = set()
        for rule in self.alerts.values():
            used |= metric_names(rule["expr"])
        with open(os.path.join(SOURCE, "deploy", "base", "sslbench-dashboard.json")) as f:
            used |= metric_names(f.read())
        for name in sorted(used):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            self.assertIn(base, exported, f"{name} is used but no process exports it")

    def test_rules_pass_promtool_unit_tests(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian package prometheus) is not installed")
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "sslbench-rules.yaml"), "w") as f:
                yaml.safe_dump({"groups": self.groups}, f, sort_keys=False)
            shutil.copy(os.path.join(TESTS, "alerts_test.yaml"), tmp)
            checked = subprocess.run([promtool, "check", "rules", "sslbench-rules.yaml"],
                                     cwd=tmp, capture_output=True, text=True)
            self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
            tested = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"],
                                    cwd=tmp, capture_output=True, text=True)
            self.assertEqual(tested.returncode, 0, tested.stdout + tested.stderr)
            with open(os.path.join(TESTS, "alerts_test.yaml")) as f:
                tested_alerts = set(re.findall(r"alertname:\s*(\w+)", f.read()))
            self.assertEqual(tested_alerts, set(self.alerts), "every alert has a rule test")


def dockerfile_stages():
    """{stage: (apt packages installed, binaries copied from the build)}."""
    with open(os.path.join(SOURCE, "docker", "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(1)
            stages[current] = {"packages": set(), "binaries": [], "lines": []}
            continue
        if current is None:
            continue
        stages[current]["lines"].append(line)
        m = re.search(r"apt-get install (.*?)(&&|$)", line)
        if m:
            stages[current]["packages"] |= {w for w in m.group(1).split() if not w.startswith("-")}
        m = re.match(r"COPY --from=build (.*) (\S+)$", line)
        if m:
            stages[current]["binaries"] += [os.path.basename(p) for p in m.group(1).split()]
    return stages


def installed_closure(packages):
    """The packages `packages` bring along (Depends and Pre-Depends,
    recursively), as dpkg knows them on this machine."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Depends},${Pre-Depends}\n"],
                         capture_output=True, text=True, check=True).stdout
    depends = {}
    for line in out.splitlines():
        name, _, deps = line.partition("\t")
        depends[name] = [d.strip().split("|")[0].split()[0].split(":")[0]
                         for d in deps.split(",") if d.strip()]
    seen, todo = set(), list(packages)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += depends.get(p, [])
    return seen


def owning_packages(libraries):
    """{library file name: the packages that ship it}."""
    out = subprocess.run(["dpkg", "-S"] + [f"*/{lib}" for lib in libraries],
                         capture_output=True, text=True).stdout
    owners = {lib: set() for lib in libraries}
    for line in out.splitlines():
        packages, _, path = line.partition(": ")
        lib = os.path.basename(path)
        if lib in owners:
            owners[lib] |= {p.strip().split(":")[0] for p in packages.split(",")}
    return owners


class ImagesTest(unittest.TestCase):
    def test_build_context_leaves_out_git_and_build_folders(self):
        with open(os.path.join(SOURCE, ".dockerignore")) as f:
            ignored = f.read().split()
        for entry in (".git", "build*/"):
            self.assertIn(entry, ignored)

    def test_runtime_stages_run_as_a_user_with_a_health_check(self):
        stages = dockerfile_stages()
        self.assertIn("build", stages)
        self.assertTrue(any("install-deps.sh --build" in l for l in stages["build"]["lines"]),
                        "the build stage installs test-only packages")
        for name in ("coordinator", "worker", "cli"):
            lines = stages[name]["lines"]
            self.assertTrue(any(l.startswith("USER ") and "root" not in l for l in lines), name)
            if name != "cli":
                self.assertTrue(any(l.startswith("HEALTHCHECK") for l in lines), name)

    def test_runtime_packages_provide_every_library_the_binaries_link(self):
        self.assertTrue(BIN_DIR, "set SSLBENCH_BIN_DIR to the built binaries")
        # In debian:bookworm-slim already.
        base = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
        for name, stage in dockerfile_stages().items():
            if name == "build":
                continue
            with self.subTest(stage=name):
                provided = installed_closure(stage["packages"]) | base
                for binary in stage["binaries"]:
                    needed = subprocess.run(["readelf", "-d", os.path.join(BIN_DIR, binary)],
                                            capture_output=True, text=True, check=True).stdout
                    libs = re.findall(r"\(NEEDED\).*\[(.*)\]", needed)
                    self.assertTrue(libs, f"{binary}: no shared libraries found")
                    for lib, packages in owning_packages(libs).items():
                        self.assertTrue(packages & provided,
                                        f"{binary} links {lib} ({', '.join(sorted(packages))}), "
                                        f"which the {name} image does not install")


if __name__ == "__main__":
    unittest.main(verbosity=2)
