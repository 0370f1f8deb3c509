#!/usr/bin/env python3
"""Checks the shipped Grafana dashboards (config/grafana/dashboards/*.json) against Grafana's own
dashboard types, from the grafana-foundation-sdk package pinned in tests/requirements-grafana.txt,
and lists every query in them.

The SDK's `Dashboard.from_json` reads a dashboard leniently: it drops keys it does not know and
keeps values as they are. So this checker
  - decodes each dashboard with the SDK and encodes it again: a key of the file that does not come
    back is one the SDK's types do not have (unknown top-level, panel, target, field-config or
    panel-option key), and a value that comes back different is one the SDK read as something
    else;
  - walks the decoded objects against the SDK's type annotations: every field's JSON type, every
    enum value (e.g. a stat panel's `colorMode`, a variable's `type`, a legend's `placement`) and
    every literal;
  - refuses a panel type the SDK has no plugin for, and a target that does not decode as a
    Prometheus query;
and adds Vigil's own rules: unique panel ids, a grid position for every panel inside the 24
columns and no two panels overlapping, the data source `{"type": "prometheus", "uid":
"${datasource}"}` on every panel and target, a `datasource` variable of type datasource, every
variable referenced defined and every variable defined used, a unit on every panel, at least 3
decimals where an availability or a target is shown, unique and stable dashboard uids.

Usage: grafana_check.py [--json] [DASHBOARD.json ...]  (default: every shipped dashboard)
Prints every query (`--json`: one JSON document with the dashboards, their variables and their
queries, for tests/tests/e2e/grafana.rs). Exits 1 on any problem, listing them all on stderr, and
2 when the pinned SDK is not installed (`python3 -m pip install -r tests/requirements-grafana.txt`).
"""

import argparse
import enum
import glob
import json
import os
import re
import sys
import types
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(ROOT, "tests", "requirements-grafana.txt")
DASHBOARDS = os.path.join(ROOT, "config", "grafana", "dashboards")

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's global variables (https://grafana.com/docs/grafana/latest/dashboards/variables/add-template-variables/#global-variables).
BUILTIN_VARIABLES = {
    "__interval", "__interval_ms", "__rate_interval", "__rate_interval_ms", "__range",
    "__range_s", "__range_ms", "__from", "__to", "__all", "__auto", "__dashboard", "__user",
    "__org", "__name", "__timezone", "__timeFilter", "timeFilter", "__field", "__series",
    "__value", "__data", "__url_time_range",
}
VARIABLE_REF = re.compile(r"\$(\w+)|\$\{(\w+)(?:[:.][^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]")
# Series whose values are availabilities or targets: shown with enough decimals that 99.995 % is
# not rounded to 100 %.
AVAILABILITY = re.compile(r"\bvigil_sla_(availability|target)_ratio\b")
UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def pinned_version():
    with open(REQUIREMENTS, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("grafana-foundation-sdk=="):
                return line.split("==", 1)[1]
    raise SystemExit(f"no grafana-foundation-sdk pin in {REQUIREMENTS}")


def load_sdk():
    want = pinned_version()
    try:
        from importlib.metadata import version, PackageNotFoundError
        try:
            have = version("grafana-foundation-sdk")
        except PackageNotFoundError:
            have = None
        from grafana_foundation_sdk.cog import encoder, plugins, runtime, variants
        from grafana_foundation_sdk.models import dashboard, prometheus
    except ImportError as e:
        print(f"grafana-foundation-sdk is not installed ({e}): "
              f"python3 -m pip install -r {os.path.relpath(REQUIREMENTS)}", file=sys.stderr)
        sys.exit(2)
    if have != want:
        print(f"grafana-foundation-sdk {have} is installed, the checks are pinned to {want}: "
              f"python3 -m pip install -r {os.path.relpath(REQUIREMENTS)}", file=sys.stderr)
        sys.exit(2)
    plugins.register_default_plugins()
    return types.SimpleNamespace(version=have, encoder=encoder, runtime=runtime,
                                 variants=variants, dashboard=dashboard, prometheus=prometheus)


class Checker:
    def __init__(self, sdk, name):
        self.sdk = sdk
        self.name = name
        self.problems = []

    def fail(self, where, message):
        self.problems.append(f"{self.name}: {where}: {message}")

    # ---- the SDK's types

    def round_trip(self, original, encoded, path):
        """Every key of `original` comes back in `encoded` with the same value."""
        if isinstance(original, dict):
            if not isinstance(encoded, dict):
                self.fail(path, f"read by the SDK as {type(encoded).__name__}, not an object")
                return
            for key, value in original.items():
                if key not in encoded:
                    self.fail(f"{path}.{key}", "unknown key (not in the SDK's dashboard types)")
                else:
                    self.round_trip(value, encoded[key], f"{path}.{key}")
        elif isinstance(original, list):
            if not isinstance(encoded, list) or len(encoded) != len(original):
                self.fail(path, "list not read back whole by the SDK")
                return
            for i, (a, b) in enumerate(zip(original, encoded)):
                self.round_trip(a, b, f"{path}[{i}]")
        elif original != encoded or type(original) is not type(encoded):
            self.fail(path, f"{original!r} read back by the SDK as {encoded!r}")

    def type_error(self, value, tp, path):
        """None when `value` (decoded by the SDK) fits the annotation `tp`, else why not; checks
        SDK objects' fields recursively (their own problems are reported, not returned)."""
        if tp is typing.Any or tp is object:
            # A panel's `options` and `fieldConfig.defaults.custom` are typed `object` on the
            # panel, and decoded by the panel plugin's own types: check those.
            if type(value).__module__.startswith("grafana_foundation_sdk.models."):
                self.check_object(value, path)
            return None
        origin = typing.get_origin(tp)
        if origin is typing.Union or origin is types.UnionType:
            errors = []
            for arg in typing.get_args(tp):
                if arg is type(None):
                    if value is None:
                        return None
                    continue
                # Try without reporting: an object's own fields are checked once it matched.
                sub = Checker(self.sdk, self.name)
                err = sub.type_error(value, arg, path)
                if err is None:
                    self.problems.extend(sub.problems)
                    return None
                errors.append(err)
            return " or ".join(errors) if errors else f"null is not allowed"
        if origin is typing.Literal:
            allowed = typing.get_args(tp)
            return None if value in allowed else f"{value!r} is not one of {list(allowed)}"
        if origin is list:
            if not isinstance(value, list):
                return f"expected a list, got {json_type(value)}"
            (item,) = typing.get_args(tp) or (typing.Any,)
            for i, v in enumerate(value):
                self.check_value(v, item, f"{path}[{i}]")
            return None
        if origin is dict:
            if not isinstance(value, dict):
                return f"expected an object, got {json_type(value)}"
            key_tp, value_tp = typing.get_args(tp) or (str, typing.Any)
            for k, v in value.items():
                self.check_value(k, key_tp, f"{path} key {k!r}")
                self.check_value(v, value_tp, f"{path}.{k}")
            return None
        if value is None:
            return "null is not allowed"
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            if isinstance(value, tp):
                return None
            allowed = [m.value for m in tp]
            if isinstance(value, bool) or value not in allowed:
                return f"{value!r} is not a {tp.__name__} ({allowed})"
            return None
        if tp is bool:
            return None if isinstance(value, bool) else f"expected a boolean, got {json_type(value)}"
        if tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            return None if ok else f"expected an integer, got {json_type(value)}"
        if tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return None if ok else f"expected a number, got {json_type(value)}"
        if tp is str:
            return None if isinstance(value, str) else f"expected a string, got {json_type(value)}"
        if isinstance(tp, type) and issubclass(tp, self.sdk.variants.Dataquery):
            if isinstance(value, self.sdk.runtime.UnknownDataquery):
                return "a query of no data source type the SDK knows"
            if not isinstance(value, tp):
                return f"expected a query, got {json_type(value)}"
            self.check_object(value, path)
            return None
        if isinstance(tp, type) and hasattr(tp, "from_json"):
            if isinstance(value, dict):
                # Fields the SDK keeps raw (a panel's links, ...): decode them here.
                try:
                    decoded = tp.from_json(value)
                except Exception as e:  # noqa: BLE001 - any decoding failure is a problem
                    return f"not a {tp.__name__}: {e!r}"
                self.round_trip(value, encode(self.sdk, decoded), path)
                value = decoded
            if not isinstance(value, tp):
                return f"expected a {tp.__name__}, got {json_type(value)}"
            self.check_object(value, path)
            return None
        return None if isinstance(value, tp) else f"expected {tp}, got {json_type(value)}"

    def check_value(self, value, tp, path):
        err = self.type_error(value, tp, path)
        if err:
            self.fail(path, err)

    def check_object(self, obj, path):
        for field, tp in typing.get_type_hints(type(obj)).items():
            self.check_value(getattr(obj, field, None), tp, f"{path}.{field}")

    # ---- the dashboard

    def check(self, data):
        """Checks one dashboard; returns its variables and queries."""
        sdk = self.sdk
        if not isinstance(data, dict):
            self.fail("$", "a dashboard is a JSON object")
            return None
        try:
            dash = sdk.dashboard.Dashboard.from_json(data)
        except Exception as e:  # noqa: BLE001
            self.fail("$", f"the SDK cannot read it: {e!r}")
            return None
        self.round_trip(data, encode(sdk, dash), "$")
        self.check_object(dash, "$")

        uid, title = data.get("uid"), data.get("title")
        if not isinstance(uid, str) or not UID.match(uid):
            self.fail("$.uid", f"{uid!r}: a stable uid of 1-40 letters, digits, - or _ is required")
        if not title:
            self.fail("$.title", "missing")
        if not isinstance(data.get("schemaVersion"), int) or data["schemaVersion"] < 36:
            self.fail("$.schemaVersion", "36 or later (Grafana 9+), for data sources by uid")
        if "id" in data:
            self.fail("$.id", "instance-specific: leave it out of a provisioned dashboard")

        variables = self.check_variables(data)
        panels, queries = self.check_panels(data)
        self.check_references(data, variables)
        return {
            "uid": uid, "title": title,
            "variables": [{"name": v.get("name"), "type": v.get("type"), "query": v.get("query")}
                          for v in variables],
            "panels": panels,
            "queries": queries,
        }

    def check_variables(self, data):
        variables = data.get("templating", {}).get("list", [])
        names = [v.get("name") for v in variables]
        for n in {n for n in names if names.count(n) > 1}:
            self.fail("$.templating", f"variable {n!r} defined twice")
        ds = [v for v in variables if v.get("name") == "datasource"]
        if not ds or ds[0].get("type") != "datasource" or ds[0].get("query") != "prometheus":
            self.fail("$.templating", 'a variable "datasource" of type datasource, query "prometheus", is required')
        for i, v in enumerate(variables):
            path = f"$.templating.list[{i}] ({v.get('name')})"
            if v.get("type") == "query":
                if v.get("datasource") != DATASOURCE:
                    self.fail(path, f"datasource must be {DATASOURCE}")
                if not isinstance(v.get("query"), str) or not v["query"].strip():
                    self.fail(path, "a query variable needs its query (a string)")
        return variables

    def check_panels(self, data):
        panels_out, queries = [], []
        ids, rects = {}, []
        known = set(self.sdk.runtime.Runtime().panelcfg_variants) | {"row"}
        for i, p in enumerate(data.get("panels", [])):
            path = f"$.panels[{i}]"
            nested = p.get("panels", []) if p.get("type") == "row" else []
            for j, q in enumerate([p] + nested):
                qpath = path if j == 0 else f"{path}.panels[{j - 1}]"
                self.check_panel(q, qpath, known, ids, rects, panels_out, queries)
        return panels_out, queries

    def check_panel(self, p, path, known, ids, rects, panels_out, queries):
        ptype, pid, title = p.get("type"), p.get("id"), p.get("title", "")
        where = f"{path} (#{pid} {title!r})"
        if ptype not in known:
            self.fail(where, f"panel type {ptype!r} is no panel plugin the SDK knows")
        if not isinstance(pid, int) or isinstance(pid, bool):
            self.fail(where, "an integer id is required")
        elif pid in ids:
            self.fail(where, f"id {pid} already used by {ids[pid]}")
        else:
            ids[pid] = path
        pos = p.get("gridPos")
        if not isinstance(pos, dict) or not all(isinstance(pos.get(k), int) for k in "hwxy"):
            self.fail(where, "gridPos {h, w, x, y} is required")
        else:
            h, w, x, y = (pos[k] for k in "hwxy")
            if h < 1 or w < 1 or x < 0 or y < 0 or x + w > 24:
                self.fail(where, f"gridPos {pos} outside the 24-column grid")
            for other_path, (ox, oy, ow, oh) in rects:
                if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                    self.fail(where, f"gridPos {pos} overlaps {other_path}")
            rects.append((where, (x, y, w, h)))
        if ptype == "row":
            if "datasource" in p and p["datasource"] != DATASOURCE:
                self.fail(where, f"datasource must be {DATASOURCE}")
            return
        if p.get("datasource") != DATASOURCE:
            self.fail(where, f"datasource must be {DATASOURCE}, is {p.get('datasource')!r}")
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        if not defaults.get("unit"):
            self.fail(where, "fieldConfig.defaults.unit is required")
        targets = p.get("targets") or []
        if not targets:
            self.fail(where, "a panel without a query")
        refs = [t.get("refId") for t in targets]
        for r in {r for r in refs if refs.count(r) > 1}:
            self.fail(where, f"refId {r!r} used twice")
        panels_out.append({"id": pid, "type": ptype, "title": title, "unit": defaults.get("unit"),
                           "decimals": defaults.get("decimals")})
        for k, t in enumerate(targets):
            tpath = f"{where}.targets[{k}]"
            if t.get("datasource") != DATASOURCE:
                self.fail(tpath, f"datasource must be {DATASOURCE}, is {t.get('datasource')!r}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                self.fail(tpath, "expr is required")
                continue
            if AVAILABILITY.search(expr) and defaults.get("unit") == "percentunit" \
                    and not (isinstance(defaults.get("decimals"), int) and defaults["decimals"] >= 3):
                self.fail(where, "an availability in percent needs decimals >= 3 (99.995 % is not 100 %)")
            queries.append({"panel_id": pid, "panel": title, "panel_type": ptype,
                            "ref_id": t.get("refId"), "expr": expr,
                            "instant": bool(t.get("instant")),
                            "legend": t.get("legendFormat")})

    def check_references(self, data, variables):
        defined = {v.get("name") for v in variables}
        used = set()

        def scan(value, path):
            if isinstance(value, dict):
                for k, v in value.items():
                    # A variable's selection and options hold values, not references.
                    if path.startswith("$.templating") and k in ("current", "options"):
                        continue
                    scan(v, f"{path}.{k}")
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    scan(v, f"{path}[{i}]")
            elif isinstance(value, str):
                for m in VARIABLE_REF.finditer(value):
                    name = next(g for g in m.groups() if g)
                    if name in BUILTIN_VARIABLES:
                        continue
                    used.add(name)
                    if name not in defined:
                        self.fail(path, f"variable ${name} is not defined")

        scan(data, "$")
        for name in sorted(defined - used):
            self.fail("$.templating", f"variable {name!r} is defined but never used")


def encode(sdk, obj):
    return json.loads(json.dumps(obj, cls=sdk.encoder.JSONEncoder))


def json_type(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("files", nargs="*", help="dashboards (default: config/grafana/dashboards/*.json)")
    args = ap.parse_args()
    files = args.files or sorted(glob.glob(os.path.join(DASHBOARDS, "*.json")))
    if not files:
        print(f"no dashboards in {DASHBOARDS}", file=sys.stderr)
        return 1
    sdk = load_sdk()
    problems, out, uids = [], [], {}
    for path in files:
        name = os.path.relpath(path, ROOT)
        checker = Checker(sdk, name)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"{name}: {e}")
            continue
        result = checker.check(data)
        problems.extend(checker.problems)
        if result is None:
            continue
        if result["uid"] in uids:
            problems.append(f"{name}: uid {result['uid']!r} already used by {uids[result['uid']]}")
        uids[result["uid"]] = name
        out.append(dict(file=name, **result))
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(problems)} problem(s) in {len(files)} dashboard(s)", file=sys.stderr)
        return 1
    if args.json:
        json.dump({"sdk": sdk.version, "dashboards": out}, sys.stdout, indent=1)
        print()
    else:
        for d in out:
            print(f"{d['file']}: {d['title']} ({d['uid']}), {len(d['panels'])} panels, "
                  f"{len(d['queries'])} queries")
            for v in d["variables"]:
                if v["type"] == "query":
                    print(f"  ${v['name']}: {v['query']}")
            for q in d["queries"]:
                print(f"  #{q['panel_id']} {q['panel']} [{q['ref_id']}]: {q['expr']}")
        print(f"ok: {len(out)} dashboard(s), grafana-foundation-sdk {sdk.version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
