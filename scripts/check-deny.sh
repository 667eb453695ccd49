#!/usr/bin/env bash
# Offline check of the dependency tree against deny.toml with cargo-deny: licences, bans
# (duplicate versions, wildcards) and sources. No advisory database; the check uses no network.
#
#   scripts/check-deny.sh            summary of the warnings, PASS/FAIL (full report on FAIL)
#   scripts/check-deny.sh --verbose  cargo-deny's full report (with inclusion graphs), PASS/FAIL
#
# Installs cargo-deny 0.20.2 into .tools/cargo-deny (gitignored) with `cargo install --locked`
# only when .tools/cargo-deny/bin/cargo-deny is missing or another version. The check reads
# `cargo metadata --offline` for deny.toml's one [graph] target; if the cargo cache lacks a
# locked crate for it (a fresh machine), `cargo fetch --locked` fills the cache from crates.io
# first, as the build would. Exits non-zero on FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."

version="0.20.2"
root=".tools/cargo-deny"
bin="$root/bin/cargo-deny"
verbose=""
case "${1:-}" in
  "") ;;
  -v | --verbose) verbose=1 ;;
  -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "check-deny: unknown option $1 (try --help)" >&2; exit 2 ;;
esac

if [[ "$("$bin" --version 2>/dev/null)" != "cargo-deny $version" ]]; then
  echo "check-deny: installing cargo-deny $version into $root (cargo install --locked, from crates.io)"
  rm -rf "$root"
  cargo install --locked --root "$root" cargo-deny --version "$version"
  if [[ "$("$bin" --version 2>/dev/null)" != "cargo-deny $version" ]]; then
    echo "FAIL  cargo deny: $bin is not cargo-deny $version after installing"
    exit 1
  fi
fi

# deny.toml names exactly one target (so cargo-deny filters the graph to it); fetch for it.
target="$(sed -n 's/^targets = \["\([^"]*\)"\]$/\1/p' deny.toml)"
if [[ -z "$target" ]]; then
  echo "FAIL  cargo deny: deny.toml must set [graph] targets = [\"<one triple>\"]"
  exit 1
fi
if ! cargo metadata --offline --locked --format-version 1 --filter-platform "$target" >/dev/null 2>&1; then
  echo "check-deny: crates missing from the cargo cache: cargo fetch --locked --target $target"
  if ! cargo fetch --locked --target "$target"; then
    echo "FAIL  cargo deny: cargo fetch --locked --target $target failed"
    exit 1
  fi
fi

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
args=(--color never --offline --locked check)
[[ -z "$verbose" ]] && args+=(--hide-inclusion-graph)
start=$SECONDS
rc=0
"$bin" "${args[@]}" licenses bans sources >"$out" 2>&1 || rc=$?
counts="$(grep -oE '^(error|warning)\[[a-z-]+\]' "$out" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}')"
if [[ -n "$verbose" || $rc -ne 0 ]]; then
  cat "$out"
fi
summary="$(grep -E '^(advisories|bans|licenses|sources) (ok|FAILED)' "$out" | tail -n1)"
if [[ $rc -eq 0 ]]; then
  echo "PASS  cargo deny check licenses bans sources ($((SECONDS - start))s): ${summary:-ok}; ${counts:-no diagnostics}"
else
  echo "FAIL  cargo deny check licenses bans sources ($((SECONDS - start))s): exit $rc; ${summary:-see above}; ${counts:-}"
  exit 1
fi
