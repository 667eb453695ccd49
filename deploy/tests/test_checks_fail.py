"""Self-tests of scripts/check-deploy.sh: every check is proved able to fail.

Each test feeds one check (through `scripts/check-deploy.sh --check NAME ...`, the
same function the full run uses) a broken sample, usually a good artefact with
one defect put in, and expects a non-zero exit and the message that names that
defect. Run by `scripts/check-deploy.sh` (or `--self-test`), or directly:

    .tools/venv-deploy/bin/python -m pytest deploy/tests
"""
import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-deploy.sh"


def check(name, *args):
    p = subprocess.run(["bash", str(SCRIPT), "--check", name, *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def expect_fail(name, *args, match):
    rc, out = check(name, *args)
    assert rc != 0, f"check {name} passed a broken sample:\n{out}"
    assert re.search(match, out), f"check {name} failed, but not with /{match}/:\n{out}"
    return out


def dump(path: Path, docs):
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def render(tmp_path_factory, overlay):
    """An overlay rendered, and proved good: every mutation below breaks it."""
    out = tmp_path_factory.mktemp("render") / f"{overlay}.yaml"
    rc, log = check("render", ROOT / "deploy", overlay, out)
    assert rc == 0, log
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    for name in ("refs", "crd-schemas", "k8s-validate"):
        rc, log = check(name, out, *([overlay] if name == "refs" else []))
        assert rc == 0, f"good sample fails {name}:\n{log}"
    return docs


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    return render(tmp_path_factory, "gke")


@pytest.fixture(scope="session")
def rendered_wt(tmp_path_factory):
    return render(tmp_path_factory, "gke-webtransport")


@pytest.fixture(scope="session")
def rendered_cluster(tmp_path_factory):
    return render(tmp_path_factory, "gke-redis-cluster")


def find(docs, kind, name=None):
    for d in docs:
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
            return d
    raise KeyError((kind, name))


def container(docs, name):
    for d in docs:
        if d["kind"] == "Deployment":
            spec = d["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                if c["name"] == name:
                    return c
    raise KeyError(name)


@pytest.fixture()
def tfcopy(tmp_path):
    dst = tmp_path / "terraform"
    shutil.copytree(ROOT / "terraform", dst, ignore=shutil.ignore_patterns(".terraform", "__pycache__", "schema"))
    return dst


def edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# --- deploy/ ---------------------------------------------------------------------

def test_yamllint_rejects_bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("---\nkey: 1\nkey: 2\nlist:\n  - a\n   - b\n")
    expect_fail("yamllint", tmp_path, match=r"duplication of key|syntax error")


def test_render_rejects_missing_resource(tmp_path):
    ov = tmp_path / "overlays" / "x"
    ov.mkdir(parents=True)
    (ov / "kustomization.yaml").write_text("resources:\n  - does-not-exist.yaml\n")
    expect_fail("render", tmp_path, "x", tmp_path / "out.yaml", match=r"does-not-exist")


def test_k8s_validate_rejects_unknown_field(rendered, tmp_path):
    docs = copy.deepcopy(rendered)
    container(docs, "gateway")["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 8080}}
    expect_fail("k8s-validate", dump(tmp_path / "r.yaml", docs), match=r"readinesProbe.*unexpected")


def test_k8s_validate_rejects_wrong_type(rendered, tmp_path):
    docs = copy.deepcopy(rendered)
    find(docs, "Deployment", "persister")["spec"]["replicas"] = "three"
    expect_fail("k8s-validate", dump(tmp_path / "r.yaml", docs), match=r"replicas.*'three'")


def test_k8s_validate_rejects_unknown_kind(tmp_path):
    docs = [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}]
    expect_fail("k8s-validate", dump(tmp_path / "r.yaml", docs), match=r"unknown kind")


CRD_BREAKS = {
    "backendconfig-typo": (("BackendConfig", "gateway"), lambda s: s.update(timeoutSecs=3600),
                           r"timeoutSecs.*unexpected"),
    "backendconfig-bad-hc-type": (("BackendConfig", "gateway"), lambda s: s["healthCheck"].update(type="TCP"),
                                  r"'TCP' is not one of"),
    "frontendconfig-bad-redirect": (("FrontendConfig", "roomcast"),
                                    lambda s: s["redirectToHttps"].update(responseCodeName="301"), r"'301'"),
    "managedcertificate-no-domains": (("ManagedCertificate", "roomcast"), lambda s: s.update(domains=[]),
                                      r"should be non-empty|too short"),
    "podmonitor-typo": (("PodMonitor", "gateway"), lambda s: s["podMetricsEndpoints"][0].update(intervall="15s"),
                        r"intervall.*unexpected"),
    "servicemonitor-bad-interval": (("ServiceMonitor", "persister"), lambda s: s["endpoints"][0].update(interval="15"),
                                    r"'15' does not match"),
    "prometheusrule-no-expr": (("PrometheusRule", "roomcast"), lambda s: s["groups"][0]["rules"][0].pop("expr"),
                               r"'expr' is a required property"),
}


@pytest.mark.parametrize("case", sorted(CRD_BREAKS))
def test_crd_schema_rejects(rendered, tmp_path, case):
    (kind, name), mutate, match = CRD_BREAKS[case]
    docs = copy.deepcopy(rendered)
    mutate(find(docs, kind, name)["spec"])
    expect_fail("crd-schemas", dump(tmp_path / "r.yaml", docs), match=match)


def _svc(docs, name="gateway"):
    return find(docs, "Service", name)


def _ann(docs, kind, name):
    return find(docs, kind, name)["metadata"].setdefault("annotations", {})


def _gw_pod(docs):
    return find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]


def _drain_config(docs):
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("roomcast-config"):
            d["data"]["ROOMCAST_DRAIN_SECONDS"] = "60"


REF_BREAKS = {
    "service-selector-matches-nothing": (
        lambda d: _svc(d)["spec"]["selector"].update({"app.kubernetes.io/name": "gatewy"}), r"matches no pod template"),
    "service-targetport-missing": (
        lambda d: _svc(d, "persister")["spec"]["ports"][0].update(targetPort="grpcx"), r"not a container port"),
    "ingress-backend-no-service": (
        lambda d: find(d, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(name="gw"),
        r"backend Service gw does not exist"),
    "ingress-backend-no-port": (
        lambda d: find(d, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(
            port={"name": "https"}), r"has no port"),
    "ingress-service-without-neg": (
        lambda d: _ann(d, "Service", "gateway").pop("cloud.google.com/neg"), r"lacks cloud.google.com/neg"),
    "backend-config-unknown": (
        lambda d: _ann(d, "Service", "gateway").update(
            {"cloud.google.com/backend-config": json.dumps({"ports": {"http": "nope"}})}),
        r"BackendConfig nope does not exist"),
    "backend-config-on-ingress": (
        lambda d: _ann(d, "Ingress", "roomcast").update(
            {"cloud.google.com/backend-config": json.dumps({"default": "gateway"})}), r"belongs on the Service"),
    "hpa-target-missing": (
        lambda d: find(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="gateways"),
        r"target Deployment gateways does not exist"),
    "pdb-selects-nothing": (
        lambda d: find(d, "PodDisruptionBudget", "persister")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "persistor"}), r"PDB persister: selector selects no pods"),
    "hpa-container-missing": (
        lambda d: find(d, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["containerResource"].update(container="gw"),
        r"container gw is not in gateway"),
    "podmonitor-port-missing": (
        lambda d: find(d, "PodMonitor")["spec"]["podMetricsEndpoints"][1].update(port="fanout-metric"),
        r"port fanout-metric not in gateway"),
    "servicemonitor-selects-nothing": (
        lambda d: find(d, "ServiceMonitor")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "persistor"}), r"ServiceMonitor persister: selector selects no Service"),
    "networkpolicy-selects-nothing": (
        lambda d: find(d, "NetworkPolicy", "persister")["spec"]["podSelector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "persistor"}), r"NetworkPolicy persister: podSelector selects no pods"),
    "no-seccomp": (
        lambda d: find(d, "Deployment", "persister")["spec"]["template"]["spec"]["securityContext"].pop(
            "seccompProfile"), r"seccompProfile is not RuntimeDefault"),
    "persister-url-wrong-port": (
        lambda d: next(e for e in container(d, "gateway")["env"] if e["name"] == "ROOMCAST_PERSISTER_URL").update(
            value="http://persister:50053"),
        r"ROOMCAST_PERSISTER_URL 'http://persister:50053' is not a Service port"),
    "readiness-path-wrong": (
        lambda d: container(d, "gateway")["readinessProbe"]["httpGet"].update(path="/ready"),
        r"readiness probe path /ready, documented /readyz"),
    "liveness-port-wrong": (
        lambda d: container(d, "persister")["livenessProbe"]["httpGet"].update(port="grpc"),
        r"liveness probe port grpc"),
    "fanout-not-native-sidecar": (
        lambda d: container(d, "fanout").pop("restartPolicy"), r"not a native sidecar"),
    "grace-shorter-than-drain": (
        lambda d: _gw_pod(d).update(terminationGracePeriodSeconds=25), r"terminationGracePeriodSeconds 25 < "),
    "drain-config-raised": (_drain_config, r"terminationGracePeriodSeconds 45 < preStop sleep 10 \+ drain 60"),
    "backend-timeout-300s": (
        lambda d: find(d, "BackendConfig")["spec"].update(timeoutSec=300), r"timeoutSec 300 cuts WebSockets"),
    "secret-key-missing": (
        lambda d: container(d, "persister")["env"][2]["valueFrom"]["secretKeyRef"].update(key="MONGO_URL"),
        r"has no key MONGO_URL"),
    "no-memory-limit": (
        lambda d: container(d, "gateway")["resources"]["limits"].pop("memory"), r"no limits.memory"),
    "hpa-target-sets-replicas": (
        lambda d: find(d, "Deployment", "gateway")["spec"].update(replicas=3), r"sets replicas, but HPA gateway"),
    "auth-not-required": (
        lambda d: [c["data"].update(ROOMCAST_AUTH_REQUIRED="false") for c in d
                   if c["kind"] == "ConfigMap" and c["metadata"]["name"].startswith("roomcast-config")],
        r"ROOMCAST_AUTH_REQUIRED is 'false'"),
    "auth-secret-optional": (
        lambda d: next(e for e in container(d, "gateway")["env"] if e["name"] == "ROOMCAST_AUTH_JWT_SECRET")[
            "valueFrom"]["secretKeyRef"].update(optional=True), r"optional Secret"),
    "no-polling-affinity": (
        lambda d: find(d, "BackendConfig")["spec"].update(sessionAffinity={"affinityType": "NONE"}),
        r"Socket.IO long-polling needs GENERATED_COOKIE"),
    "no-cloud-armor": (
        lambda d: find(d, "BackendConfig")["spec"].pop("securityPolicy"), r"no Cloud Armor securityPolicy"),
    "gateway-memory-request-below-limit": (
        lambda d: container(d, "gateway")["resources"]["requests"].update(memory="256Mi"),
        r"memory request differs from the limit"),
    "writable-root-fs": (
        lambda d: container(d, "fanout")["securityContext"].update(readOnlyRootFilesystem=False),
        r"root filesystem is not read-only"),
}


@pytest.mark.parametrize("case", sorted(REF_BREAKS))
def test_cross_references_reject(rendered, tmp_path, case):
    mutate, match = REF_BREAKS[case]
    docs = copy.deepcopy(rendered)
    mutate(docs)
    expect_fail("refs", dump(tmp_path / "r.yaml", docs), "broken", match=match)


def _env(docs, var):
    return next(e for e in container(docs, "gateway")["env"] if e["name"] == var)


def _wt_url(url):
    def mutate(docs):
        for c in docs:
            if c["kind"] == "ConfigMap" and c["metadata"]["name"].startswith("roomcast-config"):
                c["data"]["ROOMCAST_WEBTRANSPORT_URL"] = url
    return mutate


def _public_by_lb_only(docs):
    """No Ingress (the UDP load balancer is the only public door), tokens not required."""
    docs[:] = [d for d in docs if d["kind"] not in ("Ingress", "ManagedCertificate", "FrontendConfig")]
    for c in docs:
        if c["kind"] == "ConfigMap" and c["metadata"]["name"].startswith("roomcast-config"):
            c["data"]["ROOMCAST_AUTH_REQUIRED"] = "false"


# The WebTransport front door (overlay gke-webtransport).
WT_BREAKS = {
    "udp-service-to-tcp-port": (
        lambda d: _svc(d, "gateway-webtransport")["spec"]["ports"][0].update(targetPort="http"),
        r"port webtransport is UDP, but targetPort http is a TCP port of Deployment gateway"),
    "container-port-tcp": (
        lambda d: next(p for p in container(d, "gateway")["ports"] if p["name"] == "webtransport").update(
            protocol="TCP"), r"WebTransport listens on UDP 8080, which is not a UDP container port"),
    "no-certificate": (
        lambda d: container(d, "gateway").update(env=[e for e in container(d, "gateway")["env"]
                                                      if not e["name"].startswith("ROOMCAST_WEBTRANSPORT_")]),
        r"no WebTransport certificate and key .* its WebTransport is off"),
    "listen-off": (lambda d: _env(d, "ROOMCAST_WEBTRANSPORT_LISTEN").update(value="off"),
                   r"ROOMCAST_WEBTRANSPORT_LISTEN is off"),
    "cert-not-mounted": (lambda d: _env(d, "ROOMCAST_WEBTRANSPORT_CERT").update(value="/etc/tls/tls.crt"),
                         r"ROOMCAST_WEBTRANSPORT_CERT /etc/tls/tls.crt is not in a read-only Secret volume"),
    "cert-mount-writable": (lambda d: container(d, "gateway")["volumeMounts"][0].update(readOnly=False),
                            r"ROOMCAST_WEBTRANSPORT_KEY \S+ is not in a read-only Secret volume"),
    "url-port-not-on-load-balancer": (_wt_url("https://wt.chat.example.com:4433/wt"),
                                      r"no LoadBalancer Service has UDP port 4433"),
    "url-not-wt-path": (_wt_url("https://wt.chat.example.com/"), r"is not https://HOST\[:PORT\]/wt"),
    "url-is-ingress-host": (_wt_url("https://chat.example.com/wt"), r"names the Ingress's host"),
    "no-udp-networkpolicy": (
        lambda d: d.remove(find(d, "NetworkPolicy", "gateway-webtransport-from-internet")),
        r"no NetworkPolicy allows UDP 8080 in"),
    "load-balancer-without-tokens": (_public_by_lb_only, r"ROOMCAST_AUTH_REQUIRED is 'false'"),
}


@pytest.mark.parametrize("case", sorted(WT_BREAKS))
def test_webtransport_references_reject(rendered_wt, tmp_path, case):
    mutate, match = WT_BREAKS[case]
    docs = copy.deepcopy(rendered_wt)
    mutate(docs)
    expect_fail("refs", dump(tmp_path / "r.yaml", docs), "broken", match=match)


def _fanout_env(docs, var):
    return next(e for e in container(docs, "fanout")["env"] if e["name"] == var)


def _secret(key, value):
    def mutate(d):
        for s in d:
            if s["kind"] == "Secret" and s["metadata"]["name"].startswith("roomcast-secrets"):
                s["data"][key] = base64.b64encode(value.encode()).decode()
    return mutate


def _drop_fanout_env(var):
    def mutate(d):
        c = container(d, "fanout")
        c["env"] = [e for e in c["env"] if e["name"] != var]
    return mutate


def _redis_ca_key(docs):
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("roomcast-redis-ca"))
    cm["data"]["redis-ca.pem"] = cm["data"].pop("ca.pem")


# The fanout's Redis wiring: TLS to Memorystore (gke) and the Redis Cluster overlay.
REDIS_BREAKS = {
    "ca-outside-mount": ("gke", lambda d: _fanout_env(d, "ROOMCAST_REDIS_CA").update(value="/etc/ssl/ca.pem"),
                         r"ROOMCAST_REDIS_CA /etc/ssl/ca.pem is not in a read-only ConfigMap or Secret volume"),
    "ca-mount-writable": ("gke", lambda d: container(d, "fanout")["volumeMounts"][0].update(readOnly=False),
                          r"ROOMCAST_REDIS_CA \S+ is not in a read-only ConfigMap or Secret volume"),
    "ca-key-missing": ("gke", _redis_ca_key, r"ConfigMap roomcast-redis-ca-\w+ has no key ca.pem"),
    "plaintext-url-with-ca": ("gke", _secret("ROOMCAST_REDIS_URL", "redis://:x@10.30.0.3:6378"),
                              r"ROOMCAST_REDIS_CA is set but ROOMCAST_REDIS_URL is not rediss:// \(redis://\)"),
    "public-without-ca": ("gke", _drop_fanout_env("ROOMCAST_REDIS_CA"),
                          r"the gateway is public, but the fanout has no ROOMCAST_REDIS_CA"),
    "netpol-plaintext-port": (
        "gke", lambda d: find(d, "NetworkPolicy", "gateway-to-memorystore")["spec"]["egress"][0]["ports"][0].update(
            port=6379), r"no NetworkPolicy lets the gateway pods out to Redis at 10.30.0.3:6378"),
    "cluster-and-url": (
        "gke-redis-cluster", lambda d: container(d, "fanout")["env"].append(
            {"name": "ROOMCAST_REDIS_URL", "value": "rediss://10.30.0.3:6378"}),
        r"sets both ROOMCAST_REDIS_URL and ROOMCAST_REDIS_CLUSTER"),
    "cluster-node-ports-blocked": (
        "gke-redis-cluster",
        lambda d: find(d, "NetworkPolicy", "gateway-to-memorystore-cluster")["spec"]["egress"][0]["ports"].pop(),
        r"node ports 11000-13047 at 10.30.1.2"),
    "cluster-outside-psc-subnet": (
        "gke-redis-cluster",
        lambda d: find(d, "NetworkPolicy", "gateway-to-memorystore-cluster")["spec"]["egress"][0]["to"][0][
            "ipBlock"].update(cidr="10.30.2.0/28"),
        r"out to Redis at 10.30.1.2:6379 \(ROOMCAST_REDIS_CLUSTER\)"),
}


@pytest.mark.parametrize("case", sorted(REDIS_BREAKS))
def test_redis_references_reject(rendered, rendered_cluster, tmp_path, case):
    overlay, mutate, match = REDIS_BREAKS[case]
    docs = copy.deepcopy(rendered if overlay == "gke" else rendered_cluster)
    mutate(docs)
    expect_fail("refs", dump(tmp_path / "r.yaml", docs), "broken", match=match)


def test_prometheusrule_sync_rejects_drift(rendered, tmp_path):
    alerts = yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text())
    alerts["groups"][0]["rules"][0]["expr"] = "vector(1)"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(alerts))
    path = dump(tmp_path / "r.yaml", rendered)
    expect_fail("prometheusrule-sync", tmp_path / "alerts.yml", path, match=r"groups differ")
    expect_fail("prometheusrule-sync", tmp_path / "missing.yml", path, match=r"does not exist")


def test_checkov_kubernetes_rejects_privileged_pod(tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "x"},
           "spec": {"containers": [{"name": "c", "image": "nginx:1.27",
                                    "securityContext": {"privileged": True, "runAsUser": 0}}]}}
    expect_fail("checkov-k8s", dump(tmp_path / "pod.yaml", [pod]), match=r"CKV_K8S_16")


def test_checkov_dockerfile_rejects_root_latest(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM ubuntu:latest\nUSER root\nRUN apt-get update\n")
    expect_fail("checkov-dockerfile", tmp_path / "Dockerfile", match=r"CKV_DOCKER_7|CKV_DOCKER_8")


# --- terraform/ ------------------------------------------------------------------

def test_terraform_fmt_rejects_misformatted(tfcopy):
    edit(tfcopy / "redis.tf", "  tier               =", "  tier =")
    expect_fail("tf-fmt", tfcopy, match=r"redis.tf")


def test_hcl2_parse_rejects_syntax_error(tfcopy):
    (tfcopy / "broken.tf").write_text('resource "google_compute_network" "x" {\n  name = "x"\n')
    expect_fail("tf-parse", tfcopy, match=r"broken.tf: does not parse")


TF_REF_BREAKS = {
    "undeclared-variable": ("redis.tf", "var.redis_memory_size_gb", "var.redis_memory_gb",
                            r"undeclared variable var.redis_memory_gb"),
    "undeclared-resource": ("gke.tf", "google_compute_subnetwork.gke.id", "google_compute_subnetwork.gke2.id",
                            r"undeclared resource google_compute_subnetwork.gke2"),
    "undeclared-data": ("kms.tf", "data.google_project.this.number", "data.google_project.that.number",
                        r"undeclared data.google_project.that"),
    "unused-variable": ("variables.tf", 'variable "region" {', 'variable "unused" {\n  description = "x"\n'
                        '  type        = string\n  default     = "x"\n}\n\nvariable "region" {',
                        r"variable unused is declared but never used"),
    "variable-without-description": ("variables.tf", '  description = "Machine type of the autoscaling node pool."\n',
                                     "", r"variable node_machine_type has no description"),
    "output-without-description": ("outputs.tf", '  description = "Private IP of Memorystore', '  #  "',
                                   r"output redis_host has no description"),
    "provider-unpinned": ("versions.tf", 'version = "= 6.50.0"', 'version = ">= 6.0"', r"is not pinned"),
    "no-gcs-backend": ("versions.tf", 'backend "gcs"', 'backend "local"', r"backend is not gcs"),
    "tfvars-example-unknown-variable": ("terraform.tfvars.example", 'region     = "europe-west1"',
                                        'regoin     = "europe-west1"', r"sets undeclared variable regoin"),
}


@pytest.mark.parametrize("case", sorted(TF_REF_BREAKS))
def test_terraform_refs_reject(tfcopy, case):
    fname, old, new, match = TF_REF_BREAKS[case]
    edit(tfcopy / fname, old, new)
    expect_fail("tf-refs", tfcopy, match=match)


TF_SCHEMA_BREAKS = {
    "unknown-argument": ("redis.tf", "auth_enabled", "auth_enable", r"unknown argument auth_enable"),
    "unknown-nested-argument": ("gke.tf", "enable_private_nodes", "enable_private_nodez",
                                r"private_cluster_config: unknown argument enable_private_nodez"),
    "unknown-block": ("gke.tf", "workload_identity_config {", "workload_identity {",
                      r"unknown argument workload_identity"),
    "argument-as-block": ("gke.tf", '  networking_mode = "VPC_NATIVE"', '  networking_mode {\n  }',
                          r"networking_mode is an argument, written as a block"),
    "missing-required-argument": ("redis.tf", '  memory_size_gb     = var.redis_memory_size_gb\n', "",
                                  r"required argument memory_size_gb is missing"),
    "missing-required-nested-argument": ("gke.tf", '      recurrence = "FREQ=WEEKLY;BYDAY=SA,SU"\n', "",
                                         r"recurring_window: required argument recurrence is missing"),
    "unknown-resource-type": ("registry.tf", 'resource "google_artifact_registry_repository" "images"',
                              'resource "google_artifact_registry_repo" "images"',
                              r"resource type google_artifact_registry_repo is not in"),
    "unknown-armor-argument": ("armor.tf", "enforce_on_key", "enforce_on", r"unknown argument enforce_on"),
    "unknown-attribute": ("outputs.tf", "google_redis_instance.roomcast[*].host",
                          "google_redis_instance.roomcast[*].hostname", r"has no attribute hostname"),
    "unknown-cluster-argument": ("redis_cluster.tf", "authorization_mode =", "auth_mode =",
                                 r"google_redis_cluster.roomcast: unknown argument auth_mode"),
    "unknown-cluster-attribute": ("outputs.tf", "google_redis_cluster.roomcast[*].managed_server_ca",
                                  "google_redis_cluster.roomcast[*].server_ca_certs",
                                  r"google_redis_cluster has no attribute server_ca_certs"),
    "missing-psc-policy-argument": ("redis_cluster.tf", '  service_class = "gcp-memorystore-redis"\n', "",
                                    r"service_connection_policy.redis: required argument service_class is missing"),
}


@pytest.mark.parametrize("case", sorted(TF_SCHEMA_BREAKS))
def test_terraform_schema_rejects(tfcopy, case):
    fname, old, new, match = TF_SCHEMA_BREAKS[case]
    edit(tfcopy / fname, old, new)
    expect_fail("tf-schema", tfcopy, match=match)


def test_terraform_k8s_names_reject_mismatch(tfcopy):
    edit(tfcopy / "network.tf", '"${var.name_prefix}-ingress"', '"${var.name_prefix}-ip"')
    edit(tfcopy / "armor.tf", '"${var.name_prefix}-edge"', '"${var.name_prefix}-armor"')
    edit(tfcopy / "variables.tf", 'default     = "10.30.0.0/29"', 'default     = "10.31.0.0/29"')
    out = expect_fail("tf-k8s-names", tfcopy, match=r"terraform creates 'roomcast-ip'")
    assert "Memorystore's range is 10.31.0.0/29" in out
    assert "terraform creates 'roomcast-armor'" in out


def test_terraform_k8s_names_reject_webtransport_ip(tfcopy):
    edit(tfcopy / "network.tf", '"${var.name_prefix}-webtransport"', '"${var.name_prefix}-wt"')
    expect_fail("tf-k8s-names", tfcopy,
                match=r"Service gateway-webtransport uses regional IP 'roomcast-webtransport', terraform creates 'roomcast-wt'")


def test_terraform_k8s_names_reject_redis_port(tfcopy):
    # Memorystore without TLS serves on 6379; the gke overlay allows 6378 only.
    edit(tfcopy / "redis.tf", 'transit_encryption_mode = "SERVER_AUTHENTICATION"', 'transit_encryption_mode = "DISABLED"')
    expect_fail("tf-k8s-names", tfcopy, match=r"gateway-to-memorystore allows ports \[\('TCP', 6378, None\)\], "
                r"the Memorystore instance serves on TCP 6379 \(no TLS\)")


def test_terraform_k8s_names_reject_redis_psc_subnet(tfcopy):
    edit(tfcopy / "variables.tf", 'default     = "10.30.1.0/28"', 'default     = "10.30.2.0/28"')
    expect_fail("tf-k8s-names", tfcopy, match=r"gateway-to-memorystore-cluster allows \['10.30.1.0/28'\], "
                r"the Redis Cluster's PSC subnet is 10.30.2.0/28")


def test_checkov_terraform_rejects_insecure(tmp_path):
    (tmp_path / "main.tf").write_text(
        'resource "google_storage_bucket" "b" {\n'
        '  name                        = "b"\n'
        '  location                    = "EU"\n'
        '  uniform_bucket_level_access = false\n'
        '}\n')
    expect_fail("checkov-terraform", tmp_path, match=r"CKV_GCP_29")


def test_checkov_terraform_rejects_plaintext_memorystore(tfcopy):
    # CKV_GCP_97 is no longer skipped (terraform/.checkov.yaml): the fanout speaks TLS.
    edit(tfcopy / "redis.tf", 'transit_encryption_mode = "SERVER_AUTHENTICATION"', 'transit_encryption_mode = "DISABLED"')
    expect_fail("checkov-terraform", tfcopy, match=r"CKV_GCP_97")
