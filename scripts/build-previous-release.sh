#!/usr/bin/env bash
# Builds the fanout and persister of the previous release (scripts/previous-release:
# its name and commit, which a clone has even without tags) into
# .tools/previous-release/NAME/bin, once per release, and prints that directory: the
# version-skew test runs this commit's gateways against them.
set -euo pipefail
cd "$(dirname "$0")/.."

read -r tag commit < <(grep -v '^#' scripts/previous-release)
git cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "build-previous-release: commit $commit of $tag is not in this clone (a shallow clone? git fetch --unshallow)" >&2
  exit 1
}
out="$PWD/.tools/previous-release/$tag"
if [[ ! -x "$out/bin/fanout" || ! -x "$out/bin/persister" ]]; then
  echo "build-previous-release: building fanout and persister of $tag" >&2
  rm -rf "$out/src"
  mkdir -p "$out/src" "$out/bin"
  git archive "$commit" | tar -x -C "$out/src"
  (cd "$out/src" && CARGO_TARGET_DIR="$out/target" cargo build --locked --bins -p fanout -p persister) >&2
  cp "$out/target/debug/fanout" "$out/target/debug/persister" "$out/bin/"
  rm -rf "$out/src"
fi
echo "$out/bin"
