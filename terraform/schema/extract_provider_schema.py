#!/usr/bin/env python3
"""Extracts the Google provider's argument names from npm @cdktf/provider-google.

The prebuilt CDKTF bindings ship a `.jsii` type assembly (~100 MB) that describes
every resource and data source of one hashicorp/google provider version: each
`<Type>Config` interface lists the arguments and nested blocks, and every
property's docs link carries the real Terraform (snake_case) name. This script
keeps only the resource and data-source types that terraform/*.tf uses (plus the
provider block) and writes a small JSON extract that is committed, so that the
offline check (terraform/check_terraform.py) needs neither npm nor the registry.

Run it again after using a new resource type or moving the provider pin (the npm
package version must match the provider version in versions.tf; see PROVIDER_FOR
in the output's `provider_version`):

    python3 terraform/schema/extract_provider_schema.py            # uses npm pack
    python3 terraform/schema/extract_provider_schema.py --jsii path/to/.jsii
"""
import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TF_DIR = HERE.parent
PACKAGE = "@cdktf/provider-google"
DEFAULT_VERSION = "16.12.1"  # = hashicorp/google 6.50.0
PREFIX = PACKAGE + "."
LINK = re.compile(r"hashicorp/google/(?P<ver>[0-9.]+)/docs(?:/(?P<kind>resources|data-sources)/(?P<page>\w+))?#(?P<arg>\w+)")


def load_jsii(args) -> dict:
    if args.jsii:
        return json.loads(Path(args.jsii).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", f"{PACKAGE}@{args.version}"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            member = tar.extractfile("package/.jsii")
            return json.load(member)


def used_types() -> tuple[set, set]:
    resources, data = set(), set()
    for tf in sorted(TF_DIR.glob("*.tf")):
        text = tf.read_text()
        resources |= set(re.findall(r'^\s*resource\s+"(google_\w+)"', text, re.M))
        data |= set(re.findall(r'^\s*data\s+"(google_\w+)"', text, re.M))
    return resources, data


def link_of(prop: dict):
    docs = prop.get("docs", {})
    m = LINK.search(docs.get("summary", "") + " " + docs.get("remarks", ""))
    return m


def nested_fqn(typ: dict):
    """The interface fqn of a nested block (single or list), if any."""
    if "fqn" in typ and typ["fqn"].startswith(PREFIX):
        return typ["fqn"]
    if "collection" in typ:
        return nested_fqn(typ["collection"]["elementtype"])
    if "union" in typ:
        for t in typ["union"]["types"]:
            f = nested_fqn(t)
            if f:
                return f
    return None


def describe(types: dict, fqn: str, depth: int = 0) -> dict:
    out = {}
    for prop in types[fqn].get("properties", []):
        m = link_of(prop)
        name = m.group("arg") if m else prop["name"]
        entry = {"required": not prop.get("optional", False)}
        sub = nested_fqn(prop["type"])
        if sub and types.get(sub, {}).get("kind") == "interface" and depth < 12:
            entry["block"] = describe(types, sub, depth + 1)
        out[name] = entry
    return dict(sorted(out.items()))


def snake(camel: str) -> str:
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", camel)
    return s.lower()


def attributes(types: dict, class_fqn: str, args: dict) -> list:
    cls = types.get(class_fqn, {})
    names = set(args)
    for prop in cls.get("properties", []):
        n = prop["name"]
        if prop.get("static") or n.endswith("Input") or prop.get("protected"):
            continue
        names.add(snake(n))
    names.add("id")
    return sorted(names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default=DEFAULT_VERSION, help="npm version of " + PACKAGE)
    ap.add_argument("--jsii", help="use this .jsii file instead of npm pack")
    ap.add_argument("--out", default=str(HERE / "google-provider.json"))
    ap.add_argument("--extra", nargs="*", default=[], help="more types to keep (google_x or data.google_x)")
    args = ap.parse_args()

    jsii = load_jsii(args)
    types = jsii["types"]
    want_res, want_data = used_types()
    for e in args.extra:
        (want_data.add(e[5:]) if e.startswith("data.") else want_res.add(e))

    found_res, found_data, provider_version = {}, {}, None
    for fqn, t in types.items():
        if t.get("kind") != "interface" or not fqn.startswith(PREFIX):
            continue
        if "cdktf.TerraformMetaArguments" not in (t.get("interfaces") or []):
            continue
        m = next((link_of(p) for p in t.get("properties", []) if link_of(p)), None)
        if not m or not m.group("kind"):
            continue
        provider_version = provider_version or m.group("ver")
        tf_type = "google_" + m.group("page")
        class_fqn = fqn[: -len("Config")]
        if m.group("kind") == "resources" and tf_type in want_res:
            a = describe(types, fqn)
            found_res[tf_type] = {"arguments": a, "attributes": attributes(types, class_fqn, a)}
        elif m.group("kind") == "data-sources" and tf_type in want_data:
            a = describe(types, fqn)
            found_data[tf_type] = {"arguments": a, "attributes": attributes(types, class_fqn, a)}

    missing = sorted((want_res - set(found_res)) | {"data." + d for d in want_data - set(found_data)})
    if missing:
        print("not in the provider package: " + ", ".join(missing), file=sys.stderr)
        return 1
    provider = describe(types, PREFIX + "provider.GoogleProviderConfig")
    out = {
        "source": f"npm {PACKAGE}@{args.version} (.jsii), extracted by terraform/schema/extract_provider_schema.py",
        "provider_version": provider_version,
        "provider": provider,
        "resources": dict(sorted(found_res.items())),
        "data_sources": dict(sorted(found_data.items())),
    }
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out}: provider {provider_version}, {len(found_res)} resource types, "
          f"{len(found_data)} data sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
