"""Renders a kustomization the way `kubectl kustomize` does, for the subset
of kustomize that deploy/ uses, so the deploy checks run offline on a
machine without kubectl (Debian 12 packages none):

  resources (files and folders with a kustomization.yaml), namespace,
  labels (metadata only), configMapGenerator / secretGenerator (envs, files,
  literals, behavior: create|merge, options.labels; names get a content-hash
  suffix and references to them follow), images (newName, newTag) and
  patches (inline JSON 6902 with a kind/name target).

Anything else in a kustomization is refused, so the subset cannot drift
silently. Where kubectl is present, tests/deploy/test_deploy.py also checks
that this renders what kubectl renders (hash suffixes aside).
"""

import base64
import copy
import hashlib
import json
import os

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "configMapGenerator",
             "secretGenerator", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class KustomizeError(Exception):
    pass


def _load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _read_env_file(path):
    data = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            data[key.strip()] = value
    return data


def _generator_data(gen, base_dir):
    data = {}
    for env in gen.get("envs", []) or []:
        data.update(_read_env_file(os.path.join(base_dir, env)))
    for entry in gen.get("files", []) or []:
        key, sep, path = entry.partition("=")
        if not sep:
            key, path = os.path.basename(entry), entry
        with open(os.path.join(base_dir, path), encoding="utf-8") as f:
            data[key] = f.read()
    for literal in gen.get("literals", []) or []:
        key, _, value = literal.partition("=")
        data[key] = value
    return data


def _content_hash(obj):
    encoded = json.dumps({"kind": obj["kind"], "name": obj["metadata"]["name"],
                          "data": obj.get("data", {})}, sort_keys=True).encode()
    digest = hashlib.sha256(encoded).hexdigest()
    # kustomize's alphabet (no vowels and no digits that look like letters).
    alphabet = "bcdfghkmt2456789"
    return "".join(alphabet[int(c, 16)] for c in digest[:10])


def _json_pointer_parts(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _apply_json_patch(obj, ops):
    for op in ops:
        parts = _json_pointer_parts(op["path"])
        parent = obj
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[index]
            else:
                raise KustomizeError(f"patch op {kind} is not supported")
        else:
            if kind in ("add", "replace"):
                if kind == "replace" and last not in parent:
                    raise KustomizeError(f"replace: {op['path']} does not exist")
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            else:
                raise KustomizeError(f"patch op {kind} is not supported")


def _containers(obj):
    spec = obj.get("spec", {})
    template = spec.get("template", {}).get("spec", {})
    return template.get("containers", []) + template.get("initContainers", [])


def _split_image(image):
    name, tag = image, None
    if "@" in name:
        return name.split("@", 1)[0], "@" + name.split("@", 1)[1]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, (":" + tag) if tag else ""


def _rename_references(objects, renames):
    """Points configMapRef, secretRef, configMap/secret volumes and
    secretKeyRef/configMapKeyRef at the generated (hashed) names."""
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("configMapRef", "configMapKeyRef", "configMap") and isinstance(value, dict):
                    if ("ConfigMap", value.get("name")) in renames:
                        value["name"] = renames[("ConfigMap", value["name"])]
                if key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                    if ("Secret", value.get("name")) in renames:
                        value["name"] = renames[("Secret", value["name"])]
                if key == "secret" and isinstance(value, dict) and "secretName" in value:
                    if ("Secret", value["secretName"]) in renames:
                        value["secretName"] = renames[("Secret", value["secretName"])]
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    for obj in objects:
        if obj.get("kind") not in ("ConfigMap", "Secret"):
            walk(obj)


def _build(directory):
    """(objects, generated) of the kustomization in `directory`, before the
    hash suffixes: `generated` maps (kind, name) to generated objects."""
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(path):
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    (k,) = _load_all(path)
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: {sorted(unknown)} not supported by kustomize_lite")
    objects, generated = [], {}
    for resource in k.get("resources", []) or []:
        full = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(full):
            sub_objects, sub_generated = _build(full)
            objects += sub_objects
            generated.update(sub_generated)
        else:
            objects += _load_all(full)

    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in k.get(key, []) or []:
            name = gen["name"]
            data = _generator_data(gen, directory)
            behavior = gen.get("behavior", "create")
            if behavior == "merge":
                if (kind, name) not in generated:
                    raise KustomizeError(f"{path}: merge into {kind} {name} that no base generates")
                target = generated[(kind, name)]
                if kind == "Secret":
                    data = {k2: base64.b64encode(v.encode()).decode() for k2, v in data.items()}
                target["data"].update(data)
                continue
            if behavior != "create":
                raise KustomizeError(f"{path}: behavior {behavior} not supported")
            obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
            labels = (gen.get("options") or {}).get("labels")
            if labels:
                obj["metadata"]["labels"] = dict(labels)
            if kind == "Secret":
                obj["type"] = "Opaque"
                obj["data"] = {k2: base64.b64encode(v.encode()).decode() for k2, v in data.items()}
            else:
                obj["data"] = data
            generated[(kind, name)] = obj
            objects.append(obj)

    for image in k.get("images", []) or []:
        for obj in objects:
            for container in _containers(obj):
                name, tag = _split_image(container["image"])
                if name != image["name"]:
                    continue
                new_name = image.get("newName", name)
                new_tag = (":" + str(image["newTag"])) if "newTag" in image else tag
                container["image"] = new_name + new_tag

    for patch in k.get("patches", []) or []:
        target = patch.get("target") or {}
        if "patch" not in patch or set(target) - {"kind", "name"}:
            raise KustomizeError(f"{path}: only inline patches with a kind/name target")
        ops = yaml.safe_load(patch["patch"])
        matched = [o for o in objects if o.get("kind") == target.get("kind")
                   and o["metadata"]["name"] == target.get("name")]
        if not matched:
            raise KustomizeError(f"{path}: patch target {target} matches nothing")
        for obj in matched:
            _apply_json_patch(obj, ops)

    for label in k.get("labels", []) or []:
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError(f"{path}: labels only on metadata are supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])

    namespace = k.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] == "Namespace":
                continue
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects, generated


def render(directory):
    """The objects `kubectl kustomize directory` renders (as dicts)."""
    objects, generated = _build(directory)
    renames = {}
    for (kind, name), obj in generated.items():
        hashed = f"{name}-{_content_hash(obj)}"
        obj["metadata"]["name"] = hashed
        renames[(kind, name)] = hashed
    _rename_references(objects, renames)
    return objects
