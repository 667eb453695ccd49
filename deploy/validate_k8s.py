#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline.

  validate_k8s.py core --kubernetes-version 1.34.0 FILE...
      Every object against the Kubernetes OpenAPI schema of that version, strict
      (unknown fields rejected), with PyPI kubernetes-validate. A kind with no
      schema is a FAILURE (kubernetes-validate alone only warns), except the
      custom resources that have a schema in deploy/schemas/ (checked by `crd`).

  validate_k8s.py crd FILE...
      Every custom resource of a kind listed in deploy/schemas/ against that
      strict JSON schema (additionalProperties: false all the way down).

Exit status 1 on any failure; one line per problem.
"""
import argparse
import json
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def crd_schemas() -> dict:
    out = {}
    for f in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(f.read_text())
        props = schema["properties"]
        out[(props["apiVersion"]["const"], props["kind"]["const"])] = (f.name, schema)
    return out


def objects(paths):
    for p in paths:
        for i, doc in enumerate(yaml.safe_load_all(Path(p).read_text())):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                yield p, i, None
            else:
                yield p, i, doc


def ident(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')} ({doc.get('apiVersion')})"


def core(paths, version) -> int:
    import kubernetes_validate.utils as kv
    known_crds = crd_schemas()
    failures = checked = 0
    for path, i, doc in objects(paths):
        if doc is None:
            print(f"FAIL {path}#{i}: not a Kubernetes object (no apiVersion/kind)")
            failures += 1
            continue
        if (doc["apiVersion"], doc["kind"]) in known_crds:
            continue
        checked += 1
        try:
            kv.validate(doc, version, strict=True)
        except kv.SchemaNotFoundError:
            print(f"FAIL {path}: {ident(doc)}: unknown kind for Kubernetes {version} "
                  f"and no schema in deploy/schemas/")
            failures += 1
        except kv.ValidationError as e:
            where = "/".join(str(x) for x in e.path)
            print(f"FAIL {path}: {ident(doc)}: {where}: {e.message}")
            failures += 1
    print(f"{checked} objects checked against Kubernetes {version} (strict), {failures} problems")
    return 1 if failures else 0


def crd(paths) -> int:
    known = crd_schemas()
    failures = checked = 0
    for path, i, doc in objects(paths):
        if doc is None:
            continue
        key = (doc["apiVersion"], doc["kind"])
        if key not in known:
            continue
        name, schema = known[key]
        checked += 1
        validator = jsonschema.Draft202012Validator(schema)
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            where = "/".join(str(x) for x in err.path)
            print(f"FAIL {path}: {ident(doc)}: {where}: {err.message} (schema {name})")
            failures += 1
    print(f"{checked} custom resources checked against deploy/schemas/, {failures} problems")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["core", "crd"])
    ap.add_argument("--kubernetes-version", default="1.34.0")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    if args.mode == "core":
        return core(args.files, args.kubernetes_version)
    return crd(args.files)


if __name__ == "__main__":
    sys.exit(main())
