#!/usr/bin/env python3
"""Offline checks of terraform/ with python-hcl2 and the extracted provider schema.

    check_terraform.py parse   [DIR]   every *.tf and *.tfvars.example parses
    check_terraform.py refs    [DIR]   references, variables, outputs, pins
    check_terraform.py schema  [DIR]   argument and block names vs the provider schema
    check_terraform.py k8s     [DIR]   names the Kubernetes manifests rely on
                                       (global IP, TLS policy, the WebTransport
                                       regional IP, and the Memorystore ranges and
                                       ports the gateway's NetworkPolicies allow)

DIR defaults to terraform/. One line per problem; exit 1 if any.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import hcl2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = HERE / "schema" / "google-provider.json"
META_ARGS = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}
MARKERS = {"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"}
# Identifiers that may prefix a dotted reference but are not objects we declare.
NOT_OBJECTS = {"each", "count", "self", "path", "terraform"}


def unq(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def load(path: Path):
    with path.open() as f:
        return hcl2.load(f)


def files(d: Path):
    return sorted(d.glob("*.tf"))


def is_block(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) and x.get("__is_block__") for x in v)


def strings(node):
    """Every string (expressions included) in a parsed HCL tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            if k in MARKERS:
                continue
            yield from strings(v)
    elif isinstance(node, list):
        for x in node:
            yield from strings(x)


class Config:
    def __init__(self, d: Path):
        self.dir = d
        self.variables, self.locals, self.outputs = {}, {}, {}
        self.resources, self.data, self.terraform, self.providers, self.modules = {}, {}, [], [], {}
        self.bodies = []  # everything that can hold references
        for f in files(d):
            tree = load(f)
            for block in tree.get("variable", []):
                for name, body in block.items():
                    self.variables[unq(name)] = body
            for block in tree.get("locals", []):
                for k, v in block.items():
                    if k not in MARKERS:
                        self.locals[k] = v
                self.bodies.append(block)
            for block in tree.get("output", []):
                for name, body in block.items():
                    self.outputs[unq(name)] = body
                    self.bodies.append(body)
            for block in tree.get("resource", []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        self.resources[(unq(rtype), unq(name))] = (f.name, body)
                        self.bodies.append(body)
            for block in tree.get("data", []):
                for dtype, named in block.items():
                    for name, body in named.items():
                        self.data[(unq(dtype), unq(name))] = (f.name, body)
                        self.bodies.append(body)
            for block in tree.get("provider", []):
                for name, body in block.items():
                    self.providers.append((unq(name), body))
                    self.bodies.append(body)
            for block in tree.get("module", []):
                for name, body in block.items():
                    self.modules[unq(name)] = body
                    self.bodies.append(body)
            self.terraform += tree.get("terraform", [])
        for v in self.variables.values():
            self.bodies.append({k: x for k, x in v.items() if k == "validation"})


# The optional [index] or [*] lets attributes of counted resources be checked too
# (google_x.y[0].attr, google_x.y[*].attr).
REF = re.compile(r"(?<![\w.\"-])(var|local|data|module|google_\w+)\.(\w+)(?:\[[^\]]*\])?(?:\.(\w+))?")


def expressions(s: str):
    """Expression text of an HCL value: ${...} parts of a template, or the whole
    of a bare expression. Text of quoted literals is not an expression."""
    if s.startswith('"') and s.endswith('"'):
        return re.findall(r"\$\{(.*?)\}", s)
    if s.startswith("${") and s.endswith("}"):
        return [s[2:-1]]
    return [s]


def check_refs(cfg: Config, problems):
    used_vars, used_locals = set(), set()
    for body in cfg.bodies:
        for s in strings(body):
            for expr in expressions(s):
                # drop string literals inside expressions ("roles/x", "${...}")
                expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
                for m in REF.finditer(expr):
                    kind, a, b = m.group(1), m.group(2), m.group(3)
                    if kind == "var":
                        used_vars.add(a)
                        if a not in cfg.variables:
                            problems.append(f"reference to undeclared variable var.{a}")
                    elif kind == "local":
                        used_locals.add(a)
                        if a not in cfg.locals:
                            problems.append(f"reference to undefined local.{a}")
                    elif kind == "data":
                        if (a, b) not in cfg.data:
                            problems.append(f"reference to undeclared data.{a}.{b}")
                    elif kind == "module":
                        if a not in cfg.modules:
                            problems.append(f"reference to undeclared module.{a}")
                    elif (kind, a) not in cfg.resources:
                        problems.append(f"reference to undeclared resource {kind}.{a}")
    for name, body in cfg.variables.items():
        if name not in used_vars:
            problems.append(f"variable {name} is declared but never used")
        if not unq(body.get("description", "")):
            problems.append(f"variable {name} has no description")
        if "type" not in body:
            problems.append(f"variable {name} has no type")
    for name in cfg.locals:
        if name not in used_locals:
            problems.append(f"local {name} is defined but never used")
    for name, body in cfg.outputs.items():
        if not unq(body.get("description", "")):
            problems.append(f"output {name} has no description")
    # Pins and backend.
    req, backend, version = None, None, None
    for t in cfg.terraform:
        req = req or t.get("required_version")
        for b in t.get("backend", []):
            backend = backend or list(b)
        for rp in t.get("required_providers", []):
            g = rp.get("google")
            if g:
                version = g.get("version")
    if not req:
        problems.append("terraform.required_version is not set")
    if not backend or unq(backend[0]) != "gcs":
        problems.append("the state backend is not gcs")
    schema = json.loads(SCHEMA.read_text())
    if not version or not re.fullmatch(r"=?\s*\d+\.\d+\.\d+", unq(version).strip()):
        problems.append(f"google provider version {version!r} is not pinned to one exact version")
    elif unq(version).lstrip("= ").strip() != schema["provider_version"]:
        problems.append(f"google provider pin {unq(version)} differs from the extracted schema "
                        f"{schema['provider_version']} (re-run terraform/schema/extract_provider_schema.py)")
    # Example tfvars: only declared variables, and every required one.
    for ex in sorted(cfg.dir.glob("*.tfvars.example")):
        vals = load(ex)
        for k in vals:
            if k not in MARKERS and k not in cfg.variables:
                problems.append(f"{ex.name} sets undeclared variable {k}")
        for name, body in cfg.variables.items():
            if "default" not in body and name not in vals:
                problems.append(f"{ex.name} lacks required variable {name}")


def check_body(where, body, schema_args, problems, top=True):
    for key, value in body.items():
        if key in MARKERS or (top and key in META_ARGS):
            continue
        if key == "dynamic":
            for dyn in value:
                for dname, dbody in dyn.items():
                    dname = unq(dname)
                    spec = schema_args.get(dname)
                    if spec is None or "block" not in spec:
                        problems.append(f"{where}: dynamic block {dname} is not a block of this type")
                        continue
                    for content in dbody.get("content", []):
                        check_body(f"{where}.{dname}", content, spec["block"], problems, top=False)
            continue
        spec = schema_args.get(key)
        if spec is None:
            problems.append(f"{where}: unknown argument {key}")
            continue
        if is_block(value):
            if "block" not in spec:
                problems.append(f"{where}: {key} is an argument, written as a block")
                continue
            for b in value:
                check_body(f"{where}.{key}", b, spec["block"], problems, top=False)
    present = set(body) | {unq(n) for d in body.get("dynamic", []) for n in d}
    for key, spec in schema_args.items():
        if spec.get("required") and key not in present:
            problems.append(f"{where}: required argument {key} is missing")


def check_schema(cfg: Config, problems):
    schema = json.loads(SCHEMA.read_text())
    for (rtype, name), (fname, body) in sorted(cfg.resources.items()):
        spec = schema["resources"].get(rtype)
        if spec is None:
            problems.append(f"{fname}: resource type {rtype} is not in terraform/schema/google-provider.json "
                            "(unknown type, or re-run the extract)")
            continue
        check_body(f"{fname}: {rtype}.{name}", body, spec["arguments"], problems)
    for (dtype, name), (fname, body) in sorted(cfg.data.items()):
        spec = schema["data_sources"].get(dtype)
        if spec is None:
            problems.append(f"{fname}: data source {dtype} is not in the extracted schema")
            continue
        check_body(f"{fname}: data.{dtype}.{name}", body, spec["arguments"], problems)
    for pname, body in cfg.providers:
        if pname == "google":
            check_body(f"provider {pname}", body, schema["provider"], problems)
    # Attributes read from resources exist.
    for body in cfg.bodies:
        for s in strings(body):
            for expr in expressions(s):
                expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
                for m in REF.finditer(expr):
                    kind, a, b = m.groups()
                    if kind.startswith("google_") and b and (kind, a) in cfg.resources:
                        attrs = schema["resources"].get(kind, {}).get("attributes", [])
                        if attrs and b not in attrs:
                            problems.append(f"{kind}.{a}.{b}: {kind} has no attribute {b}")
                    if kind == "data" and b:
                        pass


def render_default(cfg: Config, s: str) -> str:
    s = unq(s)

    def sub(m):
        body = cfg.variables.get(m.group(1))
        return str(unq(body.get("default"))) if body and "default" in body else m.group(0)
    return re.sub(r"\$\{var\.(\w+)\}", sub, s)


def check_k8s(cfg: Config, problems):
    import yaml

    gke = ROOT / "deploy" / "overlays" / "gke"

    def docs(name, overlay=gke):
        return [d for d in yaml.safe_load_all((overlay / name).read_text()) if d]

    def tf_name(rtype, rname):
        item = cfg.resources.get((rtype, rname))
        if not item:
            problems.append(f"terraform has no {rtype}.{rname}")
            return None
        return render_default(cfg, item[1]["name"])

    ip = tf_name("google_compute_global_address", "ingress")
    for ing in docs("ingress.yaml"):
        ann = ing["metadata"].get("annotations", {})
        if ann.get("kubernetes.io/ingress.global-static-ip-name") != ip:
            problems.append(f"Ingress {ing['metadata']['name']} uses global IP "
                            f"{ann.get('kubernetes.io/ingress.global-static-ip-name')!r}, terraform creates {ip!r}")
    pol = tf_name("google_compute_ssl_policy", "modern")
    for fc in docs("frontendconfig.yaml"):
        if fc["spec"].get("sslPolicy") != pol:
            problems.append(f"FrontendConfig {fc['metadata']['name']} uses sslPolicy {fc['spec'].get('sslPolicy')!r}, "
                            f"terraform creates {pol!r}")
    armor = tf_name("google_compute_security_policy", "edge")
    for bc in docs("backendconfig.yaml"):
        used = (bc["spec"].get("securityPolicy") or {}).get("name")
        if used != armor:
            problems.append(f"BackendConfig {bc['metadata']['name']} uses securityPolicy {used!r}, "
                            f"terraform creates {armor!r}")
    # The WebTransport UDP load balancer's regional IP, named by the Service's annotation.
    wt_ip = tf_name("google_compute_address", "webtransport")
    for svc in docs("gateway-webtransport-service.yaml", gke.parent / "gke-webtransport"):
        used = (svc["metadata"].get("annotations") or {}).get("networking.gke.io/load-balancer-ip-addresses")
        if used != wt_ip:
            problems.append(f"Service {svc['metadata']['name']} uses regional IP {used!r}, terraform creates {wt_ip!r}")
    # Memorystore: the gateway pods (the fanout) may reach exactly its addresses on
    # exactly its ports. The instance serves on 6378 with TLS (on 6379 without); the
    # cluster's PSC endpoints on 6379 (discovery) and 11000-13047 (the shards' nodes).
    def egress(overlay, name):
        pols = [np_ for np_ in docs("networkpolicies.yaml", overlay) if np_["metadata"]["name"] == name]
        if not pols:
            problems.append(f"{overlay.name}/networkpolicies.yaml has no NetworkPolicy {name}")
        rules = [rule for np_ in pols for rule in np_["spec"].get("egress", [])]
        cidrs = [peer.get("ipBlock", {}).get("cidr") for rule in rules for peer in rule.get("to", [])]
        ports = sorted((p.get("protocol", "TCP"), p.get("port"), p.get("endPort")) for rule in rules
                       for p in rule.get("ports", []))
        return cidrs, ports

    rng = render_default(cfg, "${var.redis_reserved_ip_range}")
    inst = cfg.resources.get(("google_redis_instance", "roomcast"))
    tls = inst and unq(inst[1].get("transit_encryption_mode")) == "SERVER_AUTHENTICATION"
    port = 6378 if tls else 6379
    cidrs, ports = egress(gke, "gateway-to-memorystore")
    if cidrs != [rng]:
        problems.append(f"NetworkPolicy gateway-to-memorystore allows {cidrs}, Memorystore's range is {rng}")
    if ports != [("TCP", port, None)]:
        problems.append(f"NetworkPolicy gateway-to-memorystore allows ports {ports}, the Memorystore instance serves "
                        f"on TCP {port} ({'TLS' if tls else 'no TLS'})")
    if ("google_redis_cluster", "roomcast") in cfg.resources:
        psc = render_default(cfg, "${var.redis_psc_subnet_cidr}")
        cidrs, ports = egress(gke.parent / "gke-redis-cluster", "gateway-to-memorystore-cluster")
        if cidrs != [psc]:
            problems.append(f"NetworkPolicy gateway-to-memorystore-cluster allows {cidrs}, the Redis Cluster's PSC "
                            f"subnet is {psc}")
        want = [("TCP", 6379, None), ("TCP", 11000, 13047)]
        if ports != want:
            problems.append(f"NetworkPolicy gateway-to-memorystore-cluster allows ports {ports}, Memorystore for "
                            f"Redis Cluster needs {want}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["parse", "refs", "schema", "k8s"])
    ap.add_argument("dir", nargs="?", default=str(HERE))
    args = ap.parse_args()
    d = Path(args.dir)
    problems = []
    if args.what == "parse":
        n = 0
        for f in files(d) + sorted(d.glob("*.tfvars.example")) + sorted(d.glob("*.hcl.example")):
            n += 1
            try:
                load(f)
            except Exception as e:  # the parser raises several exception types
                problems.append(f"{f.name}: does not parse: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        if not files(d):
            problems.append(f"no *.tf files in {d}")
        summary = f"{n} files parsed"
    else:
        cfg = Config(d)
        {"refs": check_refs, "schema": check_schema, "k8s": check_k8s}[args.what](cfg, problems)
        summary = (f"{len(cfg.resources)} resources, {len(cfg.data)} data sources, "
                   f"{len(cfg.variables)} variables, {len(cfg.outputs)} outputs")
    for p in problems:
        print(f"FAIL {p}")
    print(f"{args.what}: {summary}, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
