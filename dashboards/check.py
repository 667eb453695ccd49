#!/usr/bin/env python3
"""Checks the roomcast Grafana dashboards and Prometheus alert rules.

Subcommands
-----------
static
    Offline checks. Each check prints `PASS <name>` or `FAIL <name>` followed by details.
      json        every dashboard parses and has the top-level keys Grafana needs
      roundtrip   (a) every dashboard survives Dashboard.from_json -> to_json of the PyPI
                  package grafana-foundation-sdk (with its panel and query plugins
                  registered) with no key dropped and no value changed
      ids         (b) panel ids (rows and nested panels included) are unique integers
      variables   (d) `datasource` (type datasource, prometheus), `namespace` and `pod`
                  (label_values queries) exist; every panel and query uses ${datasource}
      rate        (d) every rate()/irate()/increase() in a dashboard uses [$__rate_interval]
      filters     every metric selector in a dashboard has namespace="$namespace" and
                  pod=~"$pod"
      metrics     (c) every metric named by a dashboard query, a variable query or an alert
                  (with _bucket/_sum/_count stripped, and the process_* metrics of the
                  metrics-process crate exempted) is a string literal in some *.rs file of
                  the repository (target/ and hidden folders excluded)
      runbooks    every alert has summary/description, a severity label and a `runbook`
                  annotation docs/OPERATIONS.md#anchor whose anchor exists
      tests       every alert has a firing case and a not-firing case in alerts_test.yml
      generated   the committed JSON equals what gen_dashboards.py produces
    `--only a,b` runs only some checks (the self-tests use it).

live --prometheus URL
    Queries a running Prometheus. Template variables are substituted ($__rate_interval ->
    --rate-interval (1m), $__interval -> 15s, $__range -> 5m, $namespace -> --namespace
    (roomcast-test), $pod -> --pod (.*), $datasource -> prometheus) and every dashboard query,
    every variable query (label_values(M, l) -> count by (l) (M)) and every alert expression
    must return at least one series. Alert expressions are reduced first, because a
    threshold that is not crossed legitimately returns nothing:
      * `A or B`, `A and B`: each operand is checked on its own (`A unless B`: only A);
        a leading on(...)/ignoring(...)/group_left/group_right modifier is dropped;
      * a comparison `A > B` (==, !=, <, <=, >=, >; with or without bool): each operand
        that is not a number literal is checked on its own, i.e. for `expr > 0.5` the
        left-hand side `expr` is queried;
      * `absent(X)` and `absent_over_time(X[d])`: the inner vector X is checked;
      * parentheses around the whole expression are removed first; rules apply recursively.
    Also checks that Prometheus loaded every alerting rule of alerts.yml and that none of
    them has an evaluation error.

prom-config --targets NAME=HOST:PORT,... --out FILE
    Writes a prometheus.yml scraping each target every 1s with the static labels
    namespace (roomcast-test), pod (NAME) and job (the service: NAME up to its first '-',
    or SERVICE in the form SERVICE/POD=HOST:PORT), and loading alerts.yml (absolute path)
    as rule_files, evaluated every 1s.

list-metrics
    Prints the metric names the dashboards and alerts use (as `metrics` checks them).

selftest
    Unit tests of the PromQL scanning above (alert reduction, metric names, rate ranges,
    variable substitution, Markdown anchors).

Every subcommand that checks ends with a line `N passed, M failed` and exits non-zero when
anything failed. Standard library only, except `roundtrip` (grafana-foundation-sdk) and the
YAML reading (PyYAML); scripts/check-dashboards.sh installs both, pinned, into
.tools/venv-dash.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DASHBOARD_FILES = ["overview.json", "gateway.json", "fanout.json", "persister.json"]

# Emitted by the metrics-process crate (metrics_process::Collector), not by our own literals.
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_heap_bytes",
    "process_start_time_seconds",
    "process_threads",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

GRAFANA_DEFAULTS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "datasource": "prometheus",
}


# =========================================================================== reporting
class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def result(self, name: str, problems: list[str], note: str = "") -> bool:
        if problems:
            self.failed += 1
            print(f"FAIL {name}")
            for p in problems:
                print(f"     - {p}")
        else:
            self.passed += 1
            print(f"PASS {name}" + (f"  ({note})" if note else ""))
        sys.stdout.flush()
        return not problems

    def finish(self) -> int:
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


# =========================================================================== PromQL scanning
AGG_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
WORD_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
               "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"(0[xX][0-9a-fA-F]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)")


def _skip_string(s: str, i: int) -> int:
    """`s[i]` opens a string; returns the index after it closes."""
    q = s[i]
    i += 1
    while i < len(s):
        if s[i] == "\\" and q != "`":
            i += 2
            continue
        if s[i] == q:
            return i + 1
        i += 1
    return i


def _match_close(s: str, i: int) -> int:
    """`s[i]` is ( [ or {; returns the index of its matching closer (strings skipped)."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[s[i]]]
    i += 1
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i
        i += 1
    raise ValueError(f"unbalanced brackets in: {s!r}")


def parse_matchers(body: str) -> list[tuple[str, str, str]]:
    """`a="x", b=~"y"` -> [(a, =, x), (b, =~, y)]."""
    out = []
    for m in re.finditer(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)\s*,?', body):
        raw = m.group(3)
        val = raw[1:-1]
        if raw[0] != "`":
            val = val.encode().decode("unicode_escape")
        out.append((m.group(1), m.group(2), val))
    return out


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every vector selector in a PromQL expression: (metric name, matchers)."""
    out = []
    i = 0
    n = len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c == "[":
            i = _match_close(expr, i) + 1
            continue
        if c == "{":  # selector without a metric name: {__name__="x", ...}
            close = _match_close(expr, i)
            ms = parse_matchers(expr[i + 1:close])
            name = next((v for l, op, v in ms if l == "__name__" and op == "="), "")
            out.append((name, ms))
            i = close + 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = NUMBER.match(expr, i)
            i = m.end() if m else i + 1
            # a duration unit directly after a number (offset 5m) is part of it
            while i < n and expr[i].isalpha():
                i += 1
            continue
        if c == "$":  # an unsubstituted Grafana variable outside a string
            m = re.match(r"\$\{?[A-Za-z0-9_:]+\}?", expr[i:])
            i += m.end() if m else 1
            continue
        m = IDENT.match(expr, i)
        if not m:
            i += 1
            continue
        word = m.group(0)
        j = m.end()
        k = j
        while k < n and expr[k].isspace():
            k += 1
        if word in AGG_KEYWORDS:
            if k < n and expr[k] == "(":
                i = _match_close(expr, k) + 1
            else:
                i = j
            continue
        if word.lower() in WORD_KEYWORDS or word in AGGREGATORS:
            i = j
            continue
        if k < n and expr[k] == "(":  # a function or an aggregation
            i = j
            continue
        matchers: list[tuple[str, str, str]] = []
        if k < n and expr[k] == "{":
            close = _match_close(expr, k)
            matchers = parse_matchers(expr[k + 1:close])
            j = close + 1
        out.append((word, matchers))
        i = j
    return out


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr) if name}


def range_calls(expr: str, funcs=("rate", "irate", "increase")) -> list[tuple[str, str]]:
    """(function, range) for every call of `funcs`; range is the text inside the last [...]
    of the call's argument ('' when there is none)."""
    out = []
    for m in re.finditer(r"\b(" + "|".join(funcs) + r")\s*\(", expr):
        # skip matches inside strings: crude but enough (strings are label values)
        before = expr[:m.start()]
        if before.count('"') % 2:
            continue
        open_ = m.end() - 1
        close = _match_close(expr, open_)
        arg = expr[open_ + 1:close].rstrip()
        rng = ""
        if arg.endswith("]"):
            depth = 0
            for p in range(len(arg) - 1, -1, -1):
                if arg[p] == "]":
                    depth += 1
                elif arg[p] == "[":
                    depth -= 1
                    if depth == 0:
                        rng = arg[p + 1:-1].strip()
                        break
        out.append((m.group(1), rng))
    return out


# --------------------------------------------------------------------------- alert reduction
def _top_level_scan(expr: str):
    """Yields (index, char) for characters at bracket depth 0, outside strings."""
    i = 0
    depth = 0
    n = len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, c
        i += 1


def _split_keyword(expr: str, words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Splits at top-level keywords; returns [(operator-before, operand)]."""
    parts: list[tuple[str, str]] = []
    last = 0
    prev_op = ""
    positions = {i for i, _ in _top_level_scan(expr)}
    for m in re.finditer(r"\b(" + "|".join(words) + r")\b", expr):
        if m.start() not in positions:
            continue
        parts.append((prev_op, expr[last:m.start()]))
        prev_op = m.group(1)
        last = m.end()
    parts.append((prev_op, expr[last:]))
    return parts if len(parts) > 1 else []


def _split_comparison(expr: str) -> list[str]:
    ops = []
    chars = dict(_top_level_scan(expr))
    i = 0
    n = len(expr)
    while i < n:
        if i in chars:
            two = expr[i:i + 2]
            if two in ("==", "!=", ">=", "<="):
                ops.append((i, 2))
                i += 2
                continue
            if expr[i] in "<>":
                ops.append((i, 1))
        i += 1
    if not ops:
        return []
    parts = []
    last = 0
    for pos, ln in ops:
        parts.append(expr[last:pos])
        last = pos + ln
    parts.append(expr[last:])
    return parts


MODIFIER = re.compile(r"^\s*(bool\b|(on|ignoring|group_left|group_right)\s*(\([^)]*\))?)\s*")
SCALAR_LITERAL = re.compile(r"^[\s\d.eE+\-*/%^()]*$")


def _strip_modifiers(expr: str) -> str:
    while True:
        m = MODIFIER.match(expr)
        if not m or not m.group(0).strip():
            return expr.strip()
        expr = expr[m.end():]


def _unwrap(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and _match_close(expr, 0) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def _is_number(expr: str) -> bool:
    e = expr.strip()
    if e.lower() in ("inf", "+inf", "-inf", "nan"):
        return True
    return bool(SCALAR_LITERAL.match(e)) and any(ch.isdigit() for ch in e)


def reduce_alert_expr(expr: str) -> list[str]:
    """The expressions that must each return series for `expr` to be able to fire."""
    expr = _unwrap(_strip_modifiers(expr))
    parts = _split_keyword(expr, ("or",))
    if parts:
        return [x for _, p in parts for x in reduce_alert_expr(p)]
    parts = _split_keyword(expr, ("and", "unless"))
    if parts:
        return [x for op, p in parts if op != "unless" for x in reduce_alert_expr(p)]
    parts = _split_comparison(expr)
    if parts:
        return [x for p in parts if not _is_number(_strip_modifiers(p)) for x in reduce_alert_expr(p)]
    m = re.match(r"^(absent|absent_over_time)\s*\(", expr)
    if m and _match_close(expr, m.end() - 1) == len(expr) - 1:
        inner = expr[m.end():-1].strip()
        if m.group(1) == "absent_over_time" and inner.endswith("]"):
            inner = inner[:inner.rindex("[")]
        return reduce_alert_expr(inner)
    return [expr]


# =========================================================================== loading
def load_yaml(path: Path):
    try:
        import yaml  # type: ignore
    except ImportError:
        raise RuntimeError("PyYAML is missing: run scripts/check-dashboards.sh (it installs the pinned "
                           "tools into .tools/venv-dash) or use .tools/venv-dash/bin/python")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_alerts(path: Path) -> list[dict]:
    doc = load_yaml(path) or {}
    rules = []
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule:
                rules.append(rule)
    return rules


def iter_panels(panels: list[dict]):
    for p in panels or []:
        yield p
        if isinstance(p, dict) and p.get("panels"):
            yield from iter_panels(p["panels"])


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(label, expr) for every panel target."""
    out = []
    for p in iter_panels(dash.get("panels", [])):
        for t in p.get("targets") or []:
            if isinstance(t, dict) and t.get("expr"):
                out.append((f"panel {p.get('id')} '{p.get('title', '')}' {t.get('refId', '?')}", t["expr"]))
    return out


def variable_queries(dash: dict) -> list[tuple[str, str]]:
    out = []
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") == "query":
            q = v.get("query")
            if isinstance(q, dict):
                q = q.get("query", "")
            out.append((v.get("name", "?"), q or ""))
    return out


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)


def variable_to_promql(query: str) -> str | None:
    m = LABEL_VALUES.match(query)
    if not m:
        return None
    return f"count by ({m.group(2)}) ({m.group(1)})"


def load_dashboards(folder: Path, report: Report | None = None) -> dict[str, dict]:
    boards = {}
    for name in DASHBOARD_FILES:
        path = folder / name
        problems = []
        try:
            dash = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(f"{path} does not exist")
        except json.JSONDecodeError as e:
            problems.append(f"{path}: invalid JSON: {e}")
        else:
            if not isinstance(dash, dict):
                problems.append("top level is not an object")
            else:
                for key in ("uid", "title", "panels", "templating", "schemaVersion"):
                    if key not in dash:
                        problems.append(f"missing top-level key {key!r}")
                if "dashboard" in dash and "panels" not in dash:
                    problems.append("looks wrapped in an API envelope ({'dashboard': ...}); store the bare dashboard")
                if dash.get("id") is not None:
                    problems.append("top-level 'id' must be absent or null to import into any Grafana")
                boards[name] = dash
        if report:
            report.result(f"json:{name}", problems)
    return boards


# =========================================================================== static checks
def diff_json(orig, got, path: str, out: list[str]) -> None:
    if isinstance(orig, dict):
        if not isinstance(got, dict):
            out.append(f"{path}: object became {type(got).__name__}")
            return
        for k, v in orig.items():
            if k not in got:
                out.append(f"{path}.{k}: key dropped by the SDK round trip")
            else:
                diff_json(v, got[k], f"{path}.{k}", out)
    elif isinstance(orig, list):
        if not isinstance(got, list):
            out.append(f"{path}: list became {type(got).__name__}")
            return
        if len(orig) != len(got):
            out.append(f"{path}: list of {len(orig)} items became {len(got)}")
        for i, (a, b) in enumerate(zip(orig, got)):
            diff_json(a, b, f"{path}[{i}]", out)
    else:
        same = orig == got and (type(orig) is type(got) or (isinstance(orig, (int, float)) and isinstance(got, (int, float)) and not isinstance(orig, bool) and not isinstance(got, bool)))
        if not same:
            out.append(f"{path}: value {orig!r} became {got!r}")


def sdk_roundtrip(dash: dict) -> dict:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder  # type: ignore
    from grafana_foundation_sdk.cog.plugins import register_default_plugins  # type: ignore
    from grafana_foundation_sdk.models.dashboard import Dashboard  # type: ignore

    register_default_plugins()
    model = Dashboard.from_json(json.loads(json.dumps(dash)))
    return json.loads(json.dumps(model, cls=JSONEncoder))


def check_roundtrip(boards: dict[str, dict], report: Report) -> None:
    try:
        import grafana_foundation_sdk  # noqa: F401  # type: ignore
    except ImportError:
        report.result("roundtrip", ["grafana-foundation-sdk is not importable: run scripts/check-dashboards.sh "
                                    "or use .tools/venv-dash/bin/python"])
        return
    for name, dash in boards.items():
        problems: list[str] = []
        try:
            got = sdk_roundtrip(dash)
        except Exception as e:  # the SDK raises plain KeyError/TypeError on malformed input
            problems.append(f"the SDK could not load it: {type(e).__name__}: {e}")
        else:
            diff_json(dash, got, "$", problems)
        report.result(f"roundtrip:{name}", problems)


def check_ids(boards: dict[str, dict], report: Report) -> None:
    for name, dash in boards.items():
        problems = []
        seen: dict[int, str] = {}
        for p in iter_panels(dash.get("panels", [])):
            pid = p.get("id")
            title = p.get("title", "")
            if not isinstance(pid, int) or isinstance(pid, bool):
                problems.append(f"panel '{title}' has no integer id ({pid!r})")
                continue
            if pid in seen:
                problems.append(f"panel id {pid} used by '{seen[pid]}' and '{title}'")
            else:
                seen[pid] = title
        report.result(f"ids:{name}", problems, f"{len(seen)} panels")


def _ds_ok(ds) -> bool:
    return isinstance(ds, dict) and ds.get("uid") in ("${datasource}", "$datasource") and ds.get("type", "prometheus") == "prometheus"


def check_variables(boards: dict[str, dict], report: Report) -> None:
    for name, dash in boards.items():
        problems = []
        variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
        ds = variables.get("datasource")
        if not ds:
            problems.append("no template variable 'datasource'")
        elif ds.get("type") != "datasource" or ds.get("query") != "prometheus":
            problems.append(f"variable 'datasource' must be type datasource with query prometheus (is {ds.get('type')!r}/{ds.get('query')!r})")
        for var in ("namespace", "pod"):
            v = variables.get(var)
            if not v:
                problems.append(f"no template variable '{var}'")
                continue
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            if v.get("type") != "query" or not LABEL_VALUES.match(q):
                problems.append(f"variable '{var}' must be a query variable with label_values(...), is {v.get('type')!r}: {q!r}")
            elif not q.rstrip().rstrip(")").rstrip().endswith(var):
                problems.append(f"variable '{var}' must take the values of label '{var}': {q!r}")
            if not _ds_ok(v.get("datasource")):
                problems.append(f"variable '{var}' must use datasource ${{datasource}}, has {v.get('datasource')!r}")
        for p in iter_panels(dash.get("panels", [])):
            if p.get("type") == "row":
                continue
            if not _ds_ok(p.get("datasource")):
                problems.append(f"panel {p.get('id')} '{p.get('title')}' datasource is {p.get('datasource')!r}, not ${{datasource}}")
            for t in p.get("targets") or []:
                if "datasource" in t and not _ds_ok(t["datasource"]):
                    problems.append(f"panel {p.get('id')} target {t.get('refId')} datasource is {t['datasource']!r}")
            if p.get("type") != "text" and not p.get("targets"):
                problems.append(f"panel {p.get('id')} '{p.get('title')}' has no queries")
        report.result(f"variables:{name}", problems)


def check_rate(boards: dict[str, dict], report: Report) -> None:
    for name, dash in boards.items():
        problems = []
        count = 0
        for label, expr in dashboard_queries(dash):
            try:
                calls = range_calls(expr)
            except ValueError as e:
                problems.append(f"{label}: {e}")
                continue
            for func, rng in calls:
                count += 1
                if rng not in ("$__rate_interval", "${__rate_interval}"):
                    problems.append(f"{label}: {func}() uses [{rng}] instead of [$__rate_interval]: {expr}")
        report.result(f"rate:{name}", problems, f"{count} rate/irate/increase calls")


def check_filters(boards: dict[str, dict], report: Report) -> None:
    for name, dash in boards.items():
        problems = []
        for label, expr in dashboard_queries(dash):
            try:
                sels = selectors(expr)
            except ValueError as e:
                problems.append(f"{label}: {e}")
                continue
            if not sels:
                problems.append(f"{label}: no metric selector in {expr!r}")
            for metric, ms in sels:
                have = {(l, op, v) for l, op, v in ms}
                ns_ok = ("namespace", "=", "$namespace") in have or ("namespace", "=", "${namespace}") in have
                pod_ok = ("pod", "=~", "$pod") in have or ("pod", "=~", "${pod}") in have
                if not (ns_ok and pod_ok):
                    problems.append(f"{label}: selector {metric or '{...}'} lacks namespace=\"$namespace\" and/or pod=~\"$pod\"")
        report.result(f"filters:{name}", problems)


def used_metrics(boards: dict[str, dict], alerts: list[dict]) -> dict[str, set[str]]:
    """metric name -> where it is used."""
    used: dict[str, set[str]] = {}
    for name, dash in boards.items():
        for label, expr in dashboard_queries(dash):
            for m in metric_names(expr):
                used.setdefault(m, set()).add(name)
        for var, q in variable_queries(dash):
            pq = variable_to_promql(q)
            for m in metric_names(pq or ""):
                used.setdefault(m, set()).add(f"{name} variable {var}")
    for rule in alerts:
        for m in metric_names(str(rule.get("expr", ""))):
            used.setdefault(m, set()).add(f"alert {rule.get('alert')}")
    return used


def rust_literals(root: Path) -> set[str]:
    found: set[str] = set()
    lit = re.compile(r'"([A-Za-z_:][A-Za-z0-9_:]*)"')
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "target" and not d.startswith(".") and d != "node_modules"]
        for f in filenames:
            if f.endswith(".rs"):
                try:
                    text = Path(dirpath, f).read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                found.update(lit.findall(text))
    return found


def base_name(metric: str, literals: set[str]) -> str:
    if metric in literals:
        return metric
    for suf in HISTOGRAM_SUFFIXES:
        if metric.endswith(suf):
            return metric[: -len(suf)]
    return metric


def check_metrics(boards: dict[str, dict], alerts: list[dict], repo: Path, report: Report) -> None:
    literals = rust_literals(repo)
    used = used_metrics(boards, alerts)
    problems = []
    checked = set()
    for metric in sorted(used):
        if metric in PROCESS_METRICS:
            continue
        base = base_name(metric, literals)
        checked.add(base)
        if base not in literals:
            where = ", ".join(sorted(used[metric]))
            problems.append(f"{base} (used as {metric} in {where}) is not a string literal in any *.rs file under {repo}")
    report.result("metrics", problems, f"{len(checked)} metric names found in the Rust code")


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    counts: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for m in re.finditer(r'<a\s+(?:id|name)="([^"]+)"', line):
            anchors.add(m.group(1))
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
            slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def check_runbooks(alerts: list[dict], ops: Path, report: Report) -> None:
    problems = []
    try:
        anchors = github_anchors(ops.read_text(encoding="utf-8"))
    except FileNotFoundError:
        anchors = set()
        problems.append(f"{ops} does not exist")
    if not alerts:
        problems.append("no alerting rules found")
    names = [r.get("alert") for r in alerts]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"alert name {dup} is used twice")
    for rule in alerts:
        name = rule.get("alert")
        ann = rule.get("annotations") or {}
        labels = rule.get("labels") or {}
        for key in ("summary", "description", "runbook"):
            if not ann.get(key):
                problems.append(f"{name}: no '{key}' annotation")
        if labels.get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{name}: label severity must be critical, warning or info (is {labels.get('severity')!r})")
        rb = ann.get("runbook") or ""
        m = re.match(r"^(?:.*/)?docs/OPERATIONS\.md#(.+)$", rb)
        if rb and not m:
            problems.append(f"{name}: runbook {rb!r} does not point to docs/OPERATIONS.md#anchor")
        elif m and m.group(1) not in anchors:
            problems.append(f"{name}: runbook anchor #{m.group(1)} is not a heading or anchor of {ops.name}")
    report.result("runbooks", problems, f"{len(alerts)} alerts")


def check_tests(alerts: list[dict], tests_file: Path, report: Report) -> None:
    problems = []
    try:
        doc = load_yaml(tests_file) or {}
    except Exception as e:
        report.result("tests", [f"{tests_file}: {e}"])
        return
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in doc.get("tests") or []:
        for a in t.get("alert_rule_test") or []:
            (firing if a.get("exp_alerts") else quiet).add(a.get("alertname"))
    names = {r.get("alert") for r in alerts}
    for n in sorted(names):
        if n not in firing:
            problems.append(f"{n}: no test case where it fires (non-empty exp_alerts)")
        if n not in quiet:
            problems.append(f"{n}: no test case where it must not fire (exp_alerts: [])")
    for n in sorted((firing | quiet) - names):
        problems.append(f"{tests_file.name} tests {n}, which is not an alert of the rule file")
    report.result("tests", problems, f"{len(names)} alerts, each firing and not firing")


def check_generated(folder: Path, report: Report) -> None:
    problems = []
    sys.path.insert(0, str(HERE))
    sys.dont_write_bytecode = True
    try:
        import gen_dashboards  # type: ignore
    except Exception as e:
        report.result("generated", [f"cannot import gen_dashboards.py: {e}"])
        return
    for name in DASHBOARD_FILES:
        path = folder / name
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{name} does not exist")
            continue
        if current != gen_dashboards.render(name):
            problems.append(f"{name} differs from gen_dashboards.py output: edit gen_dashboards.py and run it")
    report.result("generated", problems)


ALL_STATIC = ["json", "roundtrip", "ids", "variables", "rate", "filters", "metrics", "runbooks", "tests", "generated"]


def cmd_static(args) -> int:
    only = [c.strip() for c in args.only.split(",")] if args.only else ALL_STATIC
    unknown = set(only) - set(ALL_STATIC)
    if unknown:
        raise SystemExit(f"unknown check(s): {', '.join(sorted(unknown))}; known: {', '.join(ALL_STATIC)}")
    report = Report()
    folder = Path(args.dashboards).resolve()
    boards = load_dashboards(folder, report if "json" in only else None)
    alerts: list[dict] = []
    if {"metrics", "runbooks", "tests"} & set(only):
        try:
            alerts = load_alerts(Path(args.rules))
        except Exception as e:  # unreadable YAML
            report.result("alerts-yaml", [f"{args.rules}: {e}"])
    if "roundtrip" in only:
        check_roundtrip(boards, report)
    if "ids" in only:
        check_ids(boards, report)
    if "variables" in only:
        check_variables(boards, report)
    if "rate" in only:
        check_rate(boards, report)
    if "filters" in only:
        check_filters(boards, report)
    if "metrics" in only:
        check_metrics(boards, alerts, Path(args.repo).resolve(), report)
    if "runbooks" in only:
        check_runbooks(alerts, Path(args.ops), report)
    if "tests" in only:
        check_tests(alerts, Path(args.rules_test), report)
    if "generated" in only:
        check_generated(folder, report)
    return report.finish()


def cmd_list_metrics(args) -> int:
    boards = load_dashboards(Path(args.dashboards).resolve())
    alerts = load_alerts(Path(args.rules))
    names = set()
    for m in used_metrics(boards, alerts):
        if m in PROCESS_METRICS:
            continue
        for suf in HISTOGRAM_SUFFIXES:
            if m.endswith(suf):
                m = m[: -len(suf)]
                break
        names.add(m)
    for n in sorted(names):
        print(n)
    return 0


# =========================================================================== live
def substitute(expr: str, values: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in values:
            return values[name]
        raise KeyError(name)
    return re.sub(r"\$\{([A-Za-z0-9_]+)(?::[A-Za-z]+)?\}|\$([A-Za-z0-9_]+)", repl, expr)


def prom_get(base: str, path: str, params: dict | None = None, timeout: float = 15.0) -> dict:
    url = base.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read().decode())
        except Exception:
            raise RuntimeError(f"HTTP {e.code} from {url}")
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def count_series(data: dict) -> int:
    kind = data.get("resultType")
    if kind in ("vector", "matrix"):
        return len(data.get("result") or [])
    if kind in ("scalar", "string"):
        return 1
    return 0


def cmd_live(args) -> int:
    report = Report()
    values = dict(GRAFANA_DEFAULTS)
    values["__rate_interval"] = args.rate_interval
    values["namespace"] = args.namespace
    values["pod"] = args.pod
    base = args.prometheus

    try:
        prom_get(base, "/api/v1/status/buildinfo")
    except Exception as e:
        print(f"cannot reach Prometheus at {base}: {e}")
        report.result("prometheus-reachable", [str(e)])
        return report.finish()

    boards = load_dashboards(Path(args.dashboards).resolve(), report)
    try:
        alerts = load_alerts(Path(args.rules))
    except Exception as e:
        report.result("alerts-yaml", [f"{args.rules}: {e}"])
        alerts = []

    def run(label: str, expr: str) -> None:
        try:
            q = substitute(expr, values)
        except KeyError as e:
            report.result(label, [f"unknown template variable ${e.args[0]} in {expr!r}"])
            return
        flat = " ".join(q.split())
        try:
            n = count_series(prom_get(base, "/api/v1/query", {"query": q}))
        except Exception as e:
            report.result(label, [f"query failed: {e}", f"query: {flat}"])
            return
        if n == 0:
            report.result(label, [f"returned 0 series: {flat}"])
        else:
            report.result(label, [], f"{n} series")

    for name, dash in boards.items():
        for var, q in variable_queries(dash):
            pq = variable_to_promql(q)
            if pq is None:
                report.result(f"{name} variable {var}", [f"not a label_values(metric, label) query: {q!r}"])
            else:
                run(f"{name} variable {var}", pq)
        for label, expr in dashboard_queries(dash):
            run(f"{name} {label}", expr)

    for rule in alerts:
        expr = str(rule.get("expr", "")).strip()
        try:
            parts = reduce_alert_expr(expr)
        except ValueError as e:
            report.result(f"alert {rule.get('alert')}", [str(e)])
            continue
        for i, part in enumerate(parts):
            suffix = f" [{i + 1}/{len(parts)}]" if len(parts) > 1 else ""
            run(f"alert {rule.get('alert')}{suffix} <{' '.join(part.split())}>", part)

    # the rules themselves: loaded and evaluated without error
    problems = []
    try:
        groups = prom_get(base, "/api/v1/rules", {"type": "alert"}).get("groups", [])
    except Exception as e:
        problems.append(f"/api/v1/rules failed: {e}")
        groups = []
    loaded = {r.get("name"): r for g in groups for r in g.get("rules", [])}
    for rule in alerts:
        got = loaded.get(rule.get("alert"))
        if not got:
            problems.append(f"{rule.get('alert')} is not loaded by Prometheus (rule_files?)")
        elif got.get("health") == "err" or got.get("lastError"):
            problems.append(f"{rule.get('alert')}: evaluation error: {got.get('lastError')}")
    report.result("alert rules loaded and evaluated", problems, f"{len(loaded)} alerting rules")
    return report.finish()


# =========================================================================== prom-config
def parse_targets(spec: str) -> list[tuple[str, str, str]]:
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if "=" not in item:
            raise SystemExit(f"bad target {item!r}: expected NAME=HOST:PORT (e.g. gateway=127.0.0.1:9090)")
        name, addr = (x.strip() for x in item.split("=", 1))
        if "/" in name:
            service, pod = name.split("/", 1)
        else:
            service, pod = name.split("-", 1)[0], name
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", service) or not pod:
            raise SystemExit(f"bad target name {name!r}")
        if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):\d+", addr):
            raise SystemExit(f"bad target address {addr!r}: expected HOST:PORT")
        out.append((service, pod, addr))
    if not out:
        raise SystemExit("no targets given")
    pods = [p for _, p, _ in out]
    if len(set(pods)) != len(pods):
        raise SystemExit("two targets have the same pod name")
    return out


def q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def cmd_prom_config(args) -> int:
    report = Report()
    try:
        targets = parse_targets(args.targets)
    except SystemExit as e:
        report.result("prom-config", [str(e)])
        return report.finish()
    rules = Path(args.rules).resolve()
    lines = [
        "# Written by dashboards/check.py prom-config; for tests only.",
        "global:",
        f"  scrape_interval: {args.scrape_interval}",
        f"  scrape_timeout: {args.scrape_interval}",
        f"  evaluation_interval: {args.scrape_interval}",
        "rule_files:",
        f"  - {q(str(rules))}",
        "scrape_configs:",
    ]
    services: dict[str, list[tuple[str, str]]] = {}
    for service, pod, addr in targets:
        services.setdefault(service, []).append((pod, addr))
    for service, items in services.items():
        lines += [
            f"  - job_name: {q(service)}",
            "    metrics_path: /metrics",
            "    static_configs:",
        ]
        for pod, addr in items:
            lines += [
                f"      - targets: [{q(addr)}]",
                "        labels:",
                f"          namespace: {q(args.namespace)}",
                f"          pod: {q(pod)}",
                f"          job: {q(service)}",
            ]
    out = Path(args.out)
    problems = []
    if not rules.is_file():
        problems.append(f"rule file {rules} does not exist")
    try:
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as e:
        problems.append(f"cannot write {out}: {e}")
    report.result(f"prom-config: wrote {out}", problems,
                  f"{len(targets)} targets: {', '.join(f'{p}={a}' for _, p, a in targets)}; rules {rules}")
    return report.finish()


# =========================================================================== selftest
SELFTEST_REDUCE = [
    ("histogram_quantile(0.99, sum by (namespace, le) (rate(x_bucket[5m]))) > 0.5",
     ["histogram_quantile(0.99, sum by (namespace, le) (rate(x_bucket[5m])))"]),
    ("max by (namespace, pod) (q) > 5000", ["max by (namespace, pod) (q)"]),
    ("sum by (namespace) (r) == 0", ["sum by (namespace) (r)"]),
    ("absent(roomcast_gateway_ready)", ["roomcast_gateway_ready"]),
    ("absent_over_time(up{job=\"a\"}[5m])", ['up{job="a"}']),
    ("(a / b) > 0.8 and on (namespace, pod) c{service=\"gateway\"}", ["a / b", 'c{service="gateway"}']),
    ("a > bool 1", ["a"]),
    ("a > 64 * 1024", ["a"]),
    ("a{x!=\"1\", y=~\"a|b\"} >= on (p) group_left () b", ['a{x!="1", y=~"a|b"}', "b"]),
    ("(x == 0) or absent(y)", ["x", "y"]),
    ("x unless y", ["x"]),
    ("sum(rate(x[5m]))", ["sum(rate(x[5m]))"]),
]
SELFTEST_NAMES = [
    ('sum by (le) (rate(a_bucket{namespace="$namespace", pod=~"$pod"}[$__rate_interval]))', {"a_bucket"}),
    ("histogram_quantile(0.9, sum(rate(b[1m])) by (le)) / on (x) group_left c offset 5m", {"b", "c"}),
    ('max without (instance) (d{le="0.5"}) and e', {"d", "e"}),
    ('count by (service, version) (roomcast_build_info{x="sum(y)"})', {"roomcast_build_info"}),
    ('{__name__="f", a="b"} + 1e3 - 0.5', {"f"}),
]


def cmd_selftest(args) -> int:
    report = Report()
    for expr, want in SELFTEST_REDUCE:
        got = [" ".join(g.split()) for g in reduce_alert_expr(expr)]
        report.result(f"reduce <{expr}>", [] if got == want else [f"got {got}, want {want}"])
    for expr, want in SELFTEST_NAMES:
        got = metric_names(expr)
        report.result(f"names <{expr}>", [] if got == want else [f"got {sorted(got)}, want {sorted(want)}"])
    calls = range_calls('rate(a[$__rate_interval]) + increase(b[5m]) + irate(c{x="rate(d[1m])"}[$__rate_interval])')
    want_calls = [("rate", "$__rate_interval"), ("increase", "5m"), ("irate", "$__rate_interval")]
    report.result("range_calls", [] if calls == want_calls else [f"got {calls}"])
    sub = substitute('x{namespace="$namespace", pod=~"${pod}"}[$__rate_interval]',
                     {"namespace": "ns", "pod": ".*", "__rate_interval": "1m"})
    report.result("substitute", [] if sub == 'x{namespace="ns", pod=~".*"}[1m]' else [sub])
    anchors = github_anchors("# Title\n### RoomcastRedisDown\n## A `b` c_d\n```\n# not\n```\n")
    report.result("anchors", [] if anchors == {"title", "roomcastredisdown", "a-b-c_d"} else [str(sorted(anchors))])
    return report.finish()


# =========================================================================== main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--dashboards", default=str(HERE), help="folder with the dashboard JSON (default: %(default)s)")
        p.add_argument("--rules", default=str(HERE / "alerts.yml"), help="alert rule file (default: %(default)s)")

    p = sub.add_parser("static", help="offline checks")
    common(p)
    p.add_argument("--rules-test", default=str(HERE / "alerts_test.yml"))
    p.add_argument("--repo", default=str(REPO), help="where to look for *.rs files (default: %(default)s)")
    p.add_argument("--ops", default=str(REPO / "docs" / "OPERATIONS.md"))
    p.add_argument("--only", default="", help=f"comma list of: {','.join(ALL_STATIC)}")
    p.set_defaults(func=cmd_static)

    p = sub.add_parser("live", help="every query returns series on a live Prometheus")
    common(p)
    p.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9099")
    p.add_argument("--namespace", default="roomcast-test")
    p.add_argument("--pod", default=".*")
    p.add_argument("--rate-interval", default="1m")
    p.set_defaults(func=cmd_live)

    p = sub.add_parser("prom-config", help="write a prometheus.yml for tests")
    p.add_argument("--targets", required=True, help="NAME=HOST:PORT,... (NAME: service[-suffix] or service/pod)")
    p.add_argument("--out", required=True)
    p.add_argument("--rules", default=str(HERE / "alerts.yml"))
    p.add_argument("--namespace", default="roomcast-test")
    p.add_argument("--scrape-interval", default="1s")
    p.set_defaults(func=cmd_prom_config)

    p = sub.add_parser("selftest", help="unit tests of the PromQL scanning used by the checks")
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser("list-metrics", help="print the metric names used")
    common(p)
    p.set_defaults(func=cmd_list_metrics)

    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
