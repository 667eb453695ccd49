#!/usr/bin/env bash
# Builds the fanout and persister of the previous release, the newest tag `v*` before
# HEAD, into .tools/previous-release/TAG/bin (once per tag), and prints that directory:
# the version-skew test runs this commit's gateways against them.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="$(git describe --tags --abbrev=0 --match 'v*' HEAD^ 2>/dev/null)" || {
  echo "build-previous-release: no release tag (v*) before HEAD; tag the release this one must stay compatible with (git tag -a vX.Y.Z COMMIT)" >&2
  exit 1
}
out="$PWD/.tools/previous-release/$tag"
if [[ ! -x "$out/bin/fanout" || ! -x "$out/bin/persister" ]]; then
  echo "build-previous-release: building fanout and persister of $tag" >&2
  rm -rf "$out/src"
  mkdir -p "$out/src" "$out/bin"
  git archive "$tag" | tar -x -C "$out/src"
  (cd "$out/src" && CARGO_TARGET_DIR="$out/target" cargo build --locked --bins -p fanout -p persister) >&2
  cp "$out/target/debug/fanout" "$out/target/debug/persister" "$out/bin/"
  rm -rf "$out/src"
fi
echo "$out/bin"
