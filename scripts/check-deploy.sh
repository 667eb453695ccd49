#!/usr/bin/env bash
# Offline checks of the deployment artefacts: deploy/ (kustomize), terraform/ and
# the Dockerfile. Nothing here reaches a cluster, GCP or the Terraform registry;
# the only network use is PyPI, to install the pinned tools on first run.
#
#   scripts/check-deploy.sh                 every check, then the self-tests
#   scripts/check-deploy.sh --no-self-test  every check, no self-tests
#   scripts/check-deploy.sh --self-test     only the self-tests (each check is fed
#                                           a broken sample and must fail)
#   scripts/check-deploy.sh --check NAME ARGS...
#                                           one check on given inputs (used by the
#                                           self-tests; exit status = the check's)
#
# Tools (pinned in deploy/tools/requirements*.txt and constraints*.txt) go into
# .tools/venv-deploy (gitignored); checkov gets its own venv inside it,
# .tools/venv-deploy/checkov, because it pins bc-python-hcl2, whose `hcl2` module
# would shadow python-hcl2. Delete .tools/venv-deploy to reinstall from scratch.
#
# Output: one PASS/FAIL line per check (a failing check's output follows,
# indented), and last a line `N passed, M failed`. Exit status 1 if any failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/venv-deploy"
CHECKOV_VENV="$VENV/checkov"
PY="$VENV/bin/python"
K8S_VERSION="1.34.0" # the Kubernetes minor the manifests target (GKE REGULAR channel)
OVERLAYS=(gke gke-webtransport gke-redis-cluster dev)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false \
  BC_SKIP_MAPPING=TRUE CHECKOV_NO_OUTPUT=false LOG_LEVEL=WARNING

log() { printf '%s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

ensure_venv() { # DIR REQUIREMENTS CONSTRAINTS
  local dir=$1 req=$2 con=$3 want
  want="$(stamp_of "$req" "$con")"
  if [[ -x "$dir/bin/python" && "$(cat "$dir/.stamp" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  log "installing tools into ${dir#"$ROOT"/} (pinned, from PyPI) ..."
  rm -rf "$dir"
  python3 -m venv "$dir" || return 1
  "$dir/bin/pip" install --quiet --no-input -r "$req" -c "$con" || return 1
  echo "$want" >"$dir/.stamp"
}

ensure_tools() {
  local t="$ROOT/deploy/tools"
  # The checkov venv lives inside the main one: reinstalling the main one wipes it.
  local main_stamp
  main_stamp="$(stamp_of "$t/requirements.txt" "$t/constraints.txt")"
  if [[ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$main_stamp" ]]; then
    ensure_venv "$VENV" "$t/requirements.txt" "$t/constraints.txt" || return 1
  fi
  ensure_venv "$CHECKOV_VENV" "$t/requirements-checkov.txt" "$t/constraints-checkov.txt" || return 1
}

# --- the checks (each takes its inputs as arguments) ---------------------------

chk_yamllint() { # DIR...
  "$VENV/bin/yamllint" --strict -c "$ROOT/deploy/.yamllint" "$@" && echo "no problems"
}

chk_render() { # DEPLOY_DIR OVERLAY OUT
  # Renders a copy of DEPLOY_DIR: every gitignored file of an overlay that is
  # missing (a fresh clone, CI) is replaced by its committed stand-in FILE.example
  # (secrets.env, gke's redis-ca.pem), in the rendered overlay and in those it
  # builds on (gke-webtransport and gke-redis-cluster on gke).
  local src=$1 overlay=$2 out=$3 tmp ex
  tmp="$(mktemp -d)"
  cp -R "$src/." "$tmp/"
  for ex in "$tmp"/overlays/*/*.example; do
    [[ -f "$ex" && ! -f "${ex%.example}" ]] && cp "$ex" "${ex%.example}"
  done
  "$VENV/bin/kubectl" kustomize "$tmp/overlays/$overlay" >"$out"
  local rc=$?
  rm -rf "$tmp"
  [[ $rc -eq 0 ]] && echo "$(grep -c '^kind:' "$out") objects rendered"
  return $rc
}

chk_k8s_validate() { # RENDERED...
  "$PY" "$ROOT/deploy/validate_k8s.py" core --kubernetes-version "$K8S_VERSION" "$@"
}

chk_crd_schemas() { # RENDERED...
  "$PY" "$ROOT/deploy/validate_k8s.py" crd "$@"
}

chk_refs() { # RENDERED NAME
  "$PY" "$ROOT/deploy/check_refs.py" "$1" --name "${2:-$1}"
}

chk_promrule() { # ALERTS_YML RENDERED
  "$PY" "$ROOT/deploy/tools/gen_prometheusrule.py" --alerts "$1" --compare-rendered "$2"
}

chk_checkov_k8s() { # RENDERED
  "$CHECKOV_VENV/bin/checkov" --config-file "$ROOT/deploy/checkov/kubernetes.yaml" -f "$1"
}

chk_checkov_docker() { # DOCKERFILE
  "$CHECKOV_VENV/bin/checkov" --config-file "$ROOT/deploy/checkov/dockerfile.yaml" -f "$1"
}

chk_tf_fmt() { # DIR
  "$VENV/bin/terraform" fmt -check -diff -recursive "$1" && echo "terraform fmt: clean"
}

chk_tf_parse() { "$PY" "$ROOT/terraform/check_terraform.py" parse "$1"; }
chk_tf_refs() { "$PY" "$ROOT/terraform/check_terraform.py" refs "$1"; }
chk_tf_schema() { "$PY" "$ROOT/terraform/check_terraform.py" schema "$1"; }
chk_tf_k8s() { "$PY" "$ROOT/terraform/check_terraform.py" k8s "$1"; }

chk_checkov_tf() { # DIR
  "$CHECKOV_VENV/bin/checkov" --config-file "$ROOT/terraform/.checkov.yaml" -d "$1"
}

declare -A CHECKS=(
  [yamllint]=chk_yamllint [render]=chk_render [k8s-validate]=chk_k8s_validate
  [crd-schemas]=chk_crd_schemas [refs]=chk_refs [prometheusrule-sync]=chk_promrule
  [checkov-k8s]=chk_checkov_k8s [checkov-dockerfile]=chk_checkov_docker
  [tf-fmt]=chk_tf_fmt [tf-parse]=chk_tf_parse [tf-refs]=chk_tf_refs [tf-schema]=chk_tf_schema
  [tf-k8s-names]=chk_tf_k8s [checkov-terraform]=chk_checkov_tf
)

# --- runner ----------------------------------------------------------------------

PASSED=0
FAILED=0
OUT="$(mktemp)"
WORK="$(mktemp -d)"
trap 'rm -rf "$OUT" "$WORK"' EXIT

run() { # LABEL FUNCTION ARGS...
  local label=$1 start rc
  shift
  start=$SECONDS
  "$@" >"$OUT" 2>&1
  rc=$?
  if [[ $rc -eq 0 ]]; then
    PASSED=$((PASSED + 1))
    printf 'PASS  %-44s (%ss)  %s\n' "$label" "$((SECONDS - start))" "$(grep -v '^\s*$' "$OUT" | tail -n1 | cut -c1-110)"
  else
    FAILED=$((FAILED + 1))
    printf 'FAIL  %-44s (%ss)  exit %s\n' "$label" "$((SECONDS - start))" "$rc"
    grep -v '^\s*$' "$OUT" | tail -n 40 | sed 's/^/      /'
  fi
  return $rc
}

self_tests() {
  local junit="$WORK/selftest.xml" start=$SECONDS rc lines np nf
  echo "-- self-tests: each check is fed a broken sample and must fail"
  "$PY" -m pytest -q -p no:cacheprovider --junitxml="$junit" "$ROOT/deploy/tests" >"$OUT" 2>&1
  rc=$?
  if [[ ! -s "$junit" ]]; then
    FAILED=$((FAILED + 1))
    echo "FAIL  self-tests did not run (exit $rc)"
    tail -n 40 "$OUT" | sed 's/^/      /'
    return
  fi
  # Each self-test counts as a check, with its own line.
  lines="$("$PY" "$ROOT/deploy/tests/junit_lines.py" "$junit")"
  echo "$lines"
  np="$(grep -c '^PASS' <<<"$lines")"
  nf="$(grep -c '^FAIL' <<<"$lines")"
  PASSED=$((PASSED + np))
  FAILED=$((FAILED + nf))
  if [[ $nf -eq 0 && $rc -ne 0 ]]; then
    FAILED=$((FAILED + 1))
    echo "FAIL  self-tests: pytest exited $rc"
  fi
  if [[ $nf -gt 0 || $rc -ne 0 ]]; then
    grep -E '^(E |FAILED|ERROR)' "$OUT" | head -n 40 | sed 's/^/      /'
  fi
  echo "   ($((SECONDS - start))s for the self-tests)"
}

main_checks() {
  local rendered=()
  echo "-- deploy/"
  run "yamllint deploy/" chk_yamllint "$ROOT/deploy"
  for o in "${OVERLAYS[@]}"; do
    if run "kubectl kustomize overlays/$o" chk_render "$ROOT/deploy" "$o" "$WORK/$o.yaml"; then
      rendered+=("$o")
    fi
  done
  run "kubectl kustomize rbac" chk_render "$ROOT/deploy" ../rbac "$WORK/rbac.yaml" && rendered+=(rbac)
  for o in "${rendered[@]}"; do
    run "kubernetes-validate --strict k8s $K8S_VERSION ($o)" chk_k8s_validate "$WORK/$o.yaml"
  done
  for o in "${rendered[@]}"; do
    [[ $o == rbac ]] && continue
    run "CRD objects vs deploy/schemas ($o)" chk_crd_schemas "$WORK/$o.yaml"
    run "cross-references ($o)" chk_refs "$WORK/$o.yaml" "$o"
    run "PrometheusRule == dashboards/alerts.yml ($o)" chk_promrule "$ROOT/dashboards/alerts.yml" "$WORK/$o.yaml"
  done
  for o in "${rendered[@]}"; do
    run "checkov kubernetes ($o)" chk_checkov_k8s "$WORK/$o.yaml"
  done
  run "checkov Dockerfile" chk_checkov_docker "$ROOT/Dockerfile"
  echo "-- terraform/"
  run "terraform fmt -check" chk_tf_fmt "$ROOT/terraform"
  run "python-hcl2 parse" chk_tf_parse "$ROOT/terraform"
  run "references and variables" chk_tf_refs "$ROOT/terraform"
  run "argument names vs google provider schema" chk_tf_schema "$ROOT/terraform"
  run "names shared with deploy/overlays/gke*" chk_tf_k8s "$ROOT/terraform"
  run "checkov terraform" chk_checkov_tf "$ROOT/terraform"
}

mode=all
case "${1:-}" in
  --self-test) mode=self ;;
  --no-self-test) mode=checks ;;
  --check)
    shift
    name="${1:-}"
    shift || true
    fn="${CHECKS[$name]:-}"
    if [[ -z "$fn" ]]; then
      log "unknown check '$name'; known: ${!CHECKS[*]}"
      exit 2
    fi
    ensure_tools >&2 || exit 2
    "$fn" "$@"
    exit $?
    ;;
  "") ;;
  -h | --help)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    log "unknown option $1 (try --help)"
    exit 2
    ;;
esac

cd "$ROOT" || exit 2
start=$SECONDS
if ! ensure_tools; then
  echo "FAIL  installing the tools into .tools/venv-deploy"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "   tools ready in $((SECONDS - start))s"
[[ $mode != self ]] && main_checks
[[ $mode != checks ]] && self_tests
echo "   total $((SECONDS - start))s"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
