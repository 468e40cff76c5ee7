"""Renders the sslbench Helm chart the way `helm template` does, for the
subset of Go templates the chart uses, so the deploy checks run on its
output offline (Debian 12 packages no helm):

  {{ .Values.a.b }}, {{ .Release.Namespace }}, {{ .Chart.AppVersion }},
  {{ `raw text` }}, {{- if X }} / {{- else }} / {{- end }}, `not X`,
  and the pipeline functions quote, default, toYaml and nindent;
  {{- and -}} trim the whitespace before and after.

A missing value, an unknown function or any other construct is an error, so
the subset cannot drift silently from what the chart uses.
"""

import os
import re

import yaml

ACTION = re.compile(r"{{(-?)\s*((?:`[^`]*`|.)*?)\s*(-?)}}", re.S)


class HelmError(Exception):
    pass


def _tokens(text):
    out, pos = [], 0
    for m in ACTION.finditer(text):
        out.append(["text", text[pos:m.start()]])
        out.append(["action", m.group(2), m.group(1) == "-", m.group(3) == "-"])
        pos = m.end()
    out.append(["text", text[pos:]])
    for i, tok in enumerate(out):
        if tok[0] != "action":
            continue
        if tok[2] and i > 0:
            out[i - 1][1] = out[i - 1][1].rstrip()
        if tok[3] and i + 1 < len(out):
            out[i + 1][1] = out[i + 1][1].lstrip()
    return out


def _parse(tokens):
    """A tree: list of ("text", s) | ("expr", e) | ("if", cond, then, else)."""
    root, stack = [], []
    current = root
    for tok in tokens:
        if tok[0] == "text":
            if tok[1]:
                current.append(("text", tok[1]))
            continue
        action = tok[1]
        if action.startswith("if "):
            node = ["if", action[3:].strip(), [], []]
            current.append(node)
            stack.append((current, node, "then"))
            current = node[2]
        elif action == "else":
            if not stack or stack[-1][2] != "then":
                raise HelmError("else without if")
            parent, node, _ = stack.pop()
            stack.append((parent, node, "else"))
            current = node[3]
        elif action == "end":
            if not stack:
                raise HelmError("end without if")
            current = stack.pop()[0]
        elif action.startswith(("range ", "with ", "define ", "template ", "include ", "/*")):
            raise HelmError(f"{{{{ {action} }}}} is not supported by helm_lite")
        else:
            current.append(("expr", action))
    if stack:
        raise HelmError("if without end")
    return root


def _split_pipeline(expr):
    parts, depth, current, quote = [], 0, "", None
    for ch in expr:
        if quote:
            current += ch
            if ch == quote:
                quote = None
        elif ch in "`\"":
            quote = ch
            current += ch
        elif ch == "|":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _words(command):
    return re.findall(r"`[^`]*`|\"[^\"]*\"|\S+", command)


def _truthy(v):
    return not (v is None or v is False or v == 0 or v == "" or v == [] or v == {})


def _format(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class _Renderer:
    def __init__(self, context):
        self.context = context

    def value(self, word):
        if word.startswith("`") and word.endswith("`"):
            return word[1:-1]
        if word.startswith('"') and word.endswith('"'):
            return word[1:-1]
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if word.startswith("."):
            node = self.context
            for key in word[1:].split("."):
                if not isinstance(node, dict) or key not in node:
                    raise HelmError(f"{word}: no such value")
                node = node[key]
            return node
        raise HelmError(f"{word}: not a value helm_lite knows")

    def call(self, name, args):
        if name == "quote":
            (v,) = args
            return '"' + _format(v).replace('"', '\\"') + '"'
        if name == "default":
            d, v = args
            return v if _truthy(v) else d
        if name == "not":
            (v,) = args
            return not _truthy(v)
        if name == "toYaml":
            (v,) = args
            return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")
        if name == "nindent":
            n, s = args
            pad = " " * int(n)
            return "\n" + "\n".join(pad + line if line else line for line in str(s).split("\n"))
        raise HelmError(f"function {name} is not supported by helm_lite")

    def evaluate(self, expr):
        result, first = None, True
        for command in _split_pipeline(expr):
            words = _words(command)
            if not words:
                raise HelmError(f"empty command in {expr!r}")
            if words[0][0] in ".`\"" or re.fullmatch(r"-?\d+", words[0]):
                if len(words) != 1 or not first:
                    raise HelmError(f"cannot evaluate {command!r}")
                result = self.value(words[0])
            else:
                args = [self.value(w) for w in words[1:]]
                if not first:
                    args.append(result)
                result = self.call(words[0], args)
            first = False
        return result

    def render(self, nodes):
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                out.append(_format(self.evaluate(node[1])))
            else:
                _, cond, then, other = node
                out.append(self.render(then if _truthy(self.evaluate(cond)) else other))
        return "".join(out)


def _merge(base, override):
    merged = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render(chart_dir, values_files=(), namespace="sslbench", release="sslbench"):
    """The objects `helm template RELEASE CHART -n NAMESPACE -f FILE...`
    renders (as dicts)."""
    with open(os.path.join(chart_dir, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    with open(os.path.join(chart_dir, "values.yaml")) as f:
        values = yaml.safe_load(f) or {}
    for path in values_files:
        with open(path) as f:
            values = _merge(values, yaml.safe_load(f))
    context = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace},
        "Chart": {"Name": chart["name"], "Version": chart["version"],
                  "AppVersion": chart["appVersion"]},
    }
    renderer = _Renderer(context)
    objects = []
    templates = os.path.join(chart_dir, "templates")
    for name in sorted(os.listdir(templates)):
        if not name.endswith(".yaml"):
            continue
        with open(os.path.join(templates, name)) as f:
            text = renderer.render(_parse(_tokens(f.read())))
        try:
            objects += [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as e:
            raise HelmError(f"templates/{name} renders invalid YAML: {e}") from None
    return objects
