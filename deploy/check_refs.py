#!/usr/bin/env python3
"""Cross-reference checks on the rendered manifests of one overlay.

    check_refs.py RENDERED.yaml [--name OVERLAY]

Checks (each failure is one line, exit 1 if any):
  service-selectors   every Service selector matches the pod labels of a workload,
                      and every targetPort is a port of those pods, of the
                      Service port's protocol (TCP or UDP)
  ingress-backends    every Ingress backend is a real Service and Service port;
                      a GKE Ingress's Services use NEG (container-native LB)
  backend-config      every cloud.google.com/backend-config annotation names a real
                      BackendConfig (and a real Service port); none on an Ingress
  hpa-pdb-targets     HPA scaleTargetRef (and container) exists and sets no replicas
                      (the HPA owns the count); each PDB selects pods
  monitor-targets     PodMonitor/ServiceMonitor select real pods/Services and ports
  netpol-selectors    each non-empty NetworkPolicy podSelector selects pods
  config-refs         every configMapKeyRef/secretKeyRef names an object and key
  probes              probe paths and ports are the documented endpoints
                      (README.md, "Flags"); the fanout is a native sidecar
                      on localhost gRPC; the persister URL is a real Service port
  drain               terminationGracePeriodSeconds >= preStop sleep + drain time
                      (ROOMCAST_DRAIN_SECONDS); LB draining and timeout fit
  hardening           every container: requests+limits, read-only root fs, no
                      privilege escalation, ALL caps dropped, non-root, seccomp;
                      the gateway's memory request equals its limit
  public-front-door   where an Ingress or a LoadBalancer Service makes the gateway
                      public: tokens required (ROOMCAST_AUTH_REQUIRED=true) with a
                      key whose Secret is not optional; behind an Ingress, the
                      gateway's BackendConfig has cookie affinity (for Socket.IO
                      long-polling) and a Cloud Armor securityPolicy
  webtransport        where the gateway has a WebTransport certificate or a UDP
                      Service: the certificate and key in a read-only Secret volume,
                      the listener (not off) on a UDP container port, the URL pages
                      are told (https://HOST[:PORT]/wt) a UDP port of a LoadBalancer
                      Service to that listener and not the Ingress's host, and a
                      NetworkPolicy that lets UDP in
  redis               the fanout: not both ROOMCAST_REDIS_URL and
                      ROOMCAST_REDIS_CLUSTER (it exits with a usage error); a
                      ROOMCAST_REDIS_CA file in a read-only ConfigMap or Secret
                      volume that holds it, and only with rediss:// URLs; where the
                      gateway is public (GKE), TLS with a CA; every Redis address
                      that is an IP (from the rendered Secret) reachable on its
                      port through the NetworkPolicies, and for a cluster also the
                      shards' node ports (Memorystore: 11000-13047)
"""
import argparse
import base64
import ipaddress
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

# The documented endpoints (README.md, "Flags": the `--metrics-listen` row and the
# gateway's endpoints paragraph below the table): container name -> port that serves
# the probes.
ENDPOINTS = {
    "gateway": {"port": 8080, "readiness": "/readyz", "liveness": "/healthz"},
    "fanout": {"port": 9091, "readiness": "/readyz", "liveness": "/healthz"},
    "persister": {"port": 9092, "readiness": "/readyz", "liveness": "/healthz"},
}
FANOUT_GRPC_PORT = 50051
PERSISTER_GRPC_PORT = 50052
DEFAULT_DRAIN_SECONDS = 20  # gateway --drain-seconds default
MIN_WEBSOCKET_TIMEOUT = 3600  # BackendConfig timeoutSec: hours, not 300 s
# Memorystore for Redis Cluster: the shards' nodes listen on these ports of its PSC
# endpoints (the discovery endpoint on 6379); a client must reach all of them.
MEMORYSTORE_CLUSTER_NODE_PORTS = (11000, 13047)
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


class Checker:
    def __init__(self, docs):
        self.docs = [d for d in docs if isinstance(d, dict)]
        self.failures = []

    def fail(self, check, msg):
        self.failures.append((check, msg))

    def of(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    @staticmethod
    def ns(d):
        return d.get("metadata", {}).get("namespace", "default")

    @staticmethod
    def name(d):
        return d.get("metadata", {}).get("name")

    def find(self, kind, name, ns):
        for d in self.of(kind):
            if self.name(d) == name and self.ns(d) == ns:
                return d
        return None

    def workloads(self):
        return [d for d in self.docs if d.get("kind") in WORKLOADS]

    @staticmethod
    def pod_spec(w):
        return w.get("spec", {}).get("template", {}).get("spec", {})

    @staticmethod
    def pod_labels(w):
        return w.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}) or {}

    @staticmethod
    def matches(selector, labels):
        """selector: a LabelSelector ({matchLabels, matchExpressions}) or a plain map."""
        if selector is None:
            return False
        if "matchLabels" in selector or "matchExpressions" in selector:
            ml = selector.get("matchLabels") or {}
            exprs = selector.get("matchExpressions") or []
        else:
            ml, exprs = selector, []
        if not ml and not exprs:
            return True
        if any(labels.get(k) != v for k, v in ml.items()):
            return False
        for e in exprs:
            k, op, vals = e["key"], e["operator"], e.get("values") or []
            if op == "In" and labels.get(k) not in vals:
                return False
            if op == "NotIn" and labels.get(k) in vals:
                return False
            if op == "Exists" and k not in labels:
                return False
            if op == "DoesNotExist" and k in labels:
                return False
        return True

    def selected_workloads(self, selector, ns):
        return [w for w in self.workloads() if self.ns(w) == ns and self.matches(selector, self.pod_labels(w))]

    def all_containers(self, w):
        spec = self.pod_spec(w)
        return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])

    def serving_containers(self, w):
        """Containers that run alongside the app: regular ones and native sidecars."""
        spec = self.pod_spec(w)
        sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        return sidecars + list(spec.get("containers") or [])

    def container_ports(self, w):
        ports = {}
        for c in self.serving_containers(w):
            for p in c.get("ports") or []:
                ports[p["containerPort"]] = p
                if p.get("name"):
                    ports[p["name"]] = p
        return ports

    def resolve_port(self, container, port):
        if isinstance(port, int):
            return port
        for p in container.get("ports") or []:
            if p.get("name") == port:
                return p["containerPort"]
        return None

    # --- checks -------------------------------------------------------------

    def service_selectors(self):
        for s in self.of("Service"):
            sel = s.get("spec", {}).get("selector")
            if not sel:
                continue
            ws = self.selected_workloads(sel, self.ns(s))
            if not ws:
                self.fail("service-selectors", f"Service {self.name(s)}: selector {sel} matches no pod template")
                continue
            for p in s["spec"].get("ports") or []:
                tp = p.get("targetPort", p.get("port"))
                proto = p.get("protocol", "TCP")
                for w in ws:
                    entries = self.port_entries(w, tp)
                    if not entries:
                        self.fail("service-selectors", f"Service {self.name(s)} port {p.get('name', p.get('port'))}: "
                                  f"targetPort {tp} is not a container port of {w['kind']} {self.name(w)}")
                    elif not any(e.get("protocol", "TCP") == proto for e in entries):
                        found = "/".join(sorted({e.get("protocol", "TCP") for e in entries}))
                        self.fail("service-selectors", f"Service {self.name(s)} port {p.get('name', p.get('port'))} "
                                  f"is {proto}, but targetPort {tp} is a {found} port of {w['kind']} {self.name(w)}")

    def port_entries(self, w, port):
        """The container ports of w's serving containers named `port`, or numbered it (any protocol)."""
        return [p for c in self.serving_containers(w) for p in c.get("ports") or []
                if p.get("name") == port or p.get("containerPort") == port]

    def service_port(self, svc, port):
        for p in svc.get("spec", {}).get("ports") or []:
            if ("name" in port and p.get("name") == port["name"]) or \
               ("number" in port and p.get("port") == port["number"]):
                return p
        return None

    def ingress_backends(self):
        for ing in self.of("Ingress"):
            ann = ing.get("metadata", {}).get("annotations") or {}
            gce = ann.get("kubernetes.io/ingress.class") in ("gce", None) and \
                ing.get("spec", {}).get("ingressClassName") in (None, "gce")
            backends = []
            if ing["spec"].get("defaultBackend"):
                backends.append(ing["spec"]["defaultBackend"])
            for rule in ing["spec"].get("rules") or []:
                for path in (rule.get("http") or {}).get("paths") or []:
                    backends.append(path["backend"])
            if not backends:
                self.fail("ingress-backends", f"Ingress {self.name(ing)} has no backend")
            for b in backends:
                svc_ref = b.get("service")
                if not svc_ref:
                    continue
                svc = self.find("Service", svc_ref["name"], self.ns(ing))
                if svc is None:
                    self.fail("ingress-backends", f"Ingress {self.name(ing)}: backend Service {svc_ref['name']} does not exist")
                    continue
                if self.service_port(svc, svc_ref.get("port") or {}) is None:
                    self.fail("ingress-backends", f"Ingress {self.name(ing)}: Service {svc_ref['name']} has no port {svc_ref.get('port')}")
                if gce:
                    neg = (svc["metadata"].get("annotations") or {}).get("cloud.google.com/neg")
                    if not neg or not json.loads(neg).get("ingress"):
                        self.fail("ingress-backends", f"Service {svc_ref['name']} behind GKE Ingress {self.name(ing)} "
                                  "lacks cloud.google.com/neg: {\"ingress\": true}")

    def backend_config(self):
        key = "cloud.google.com/backend-config"
        for ing in self.of("Ingress"):
            ann = ing.get("metadata", {}).get("annotations") or {}
            for k in ann:
                if k in (key, "beta.cloud.google.com/backend-config"):
                    self.fail("backend-config", f"Ingress {self.name(ing)} carries {k}: it belongs on the Service")
        for s in self.of("Service"):
            ann = (s.get("metadata", {}).get("annotations") or {})
            raw = ann.get(key) or ann.get("beta." + key)
            if raw is None:
                continue
            try:
                cfg = json.loads(raw)
            except json.JSONDecodeError as e:
                self.fail("backend-config", f"Service {self.name(s)}: {key} is not JSON: {e}")
                continue
            names = []
            if "default" in cfg:
                names.append(("default", cfg["default"]))
            for port, bc in (cfg.get("ports") or {}).items():
                names.append((port, bc))
                ports = s["spec"].get("ports") or []
                if not any(p.get("name") == port or str(p.get("port")) == str(port) for p in ports):
                    self.fail("backend-config", f"Service {self.name(s)}: {key} names port {port}, which the Service lacks")
            if not names:
                self.fail("backend-config", f"Service {self.name(s)}: {key} names no BackendConfig")
            for _, bc in names:
                if self.find("BackendConfig", bc, self.ns(s)) is None:
                    self.fail("backend-config", f"Service {self.name(s)}: BackendConfig {bc} does not exist")

    def hpa_pdb_targets(self):
        for h in self.of("HorizontalPodAutoscaler"):
            ref = h["spec"]["scaleTargetRef"]
            t = self.find(ref["kind"], ref["name"], self.ns(h))
            if t is None:
                self.fail("hpa-pdb-targets", f"HPA {self.name(h)}: target {ref['kind']} {ref['name']} does not exist")
                continue
            if (t.get("spec") or {}).get("replicas") is not None:
                self.fail("hpa-pdb-targets", f"{ref['kind']} {ref['name']} sets replicas, but HPA {self.name(h)} owns "
                          "the count: every apply would reset it and drain the extra pods at once")
            names = {c["name"] for c in self.all_containers(t)}
            for m in h["spec"].get("metrics") or []:
                cr = m.get("containerResource")
                if cr and cr["container"] not in names:
                    self.fail("hpa-pdb-targets", f"HPA {self.name(h)}: container {cr['container']} is not in {ref['name']}")
            mx = h["spec"].get("maxReplicas", 0)
            mn = h["spec"].get("minReplicas", 1)
            if mn > mx:
                self.fail("hpa-pdb-targets", f"HPA {self.name(h)}: minReplicas {mn} > maxReplicas {mx}")
        for p in self.of("PodDisruptionBudget"):
            if not self.selected_workloads(p["spec"].get("selector"), self.ns(p)):
                self.fail("hpa-pdb-targets", f"PDB {self.name(p)}: selector selects no pods")

    def monitor_targets(self):
        for pm in self.of("PodMonitor"):
            ws = self.selected_workloads(pm["spec"].get("selector"), self.ns(pm))
            if not ws:
                self.fail("monitor-targets", f"PodMonitor {self.name(pm)}: selector selects no pods")
            for ep in pm["spec"].get("podMetricsEndpoints") or []:
                for w in ws:
                    if ep.get("port") and ep["port"] not in self.container_ports(w):
                        self.fail("monitor-targets", f"PodMonitor {self.name(pm)}: port {ep['port']} not in {self.name(w)}")
        for sm in self.of("ServiceMonitor"):
            svcs = [s for s in self.of("Service") if self.ns(s) == self.ns(sm)
                    and self.matches(sm["spec"].get("selector"), s["metadata"].get("labels") or {})]
            if not svcs:
                self.fail("monitor-targets", f"ServiceMonitor {self.name(sm)}: selector selects no Service")
            for ep in sm["spec"].get("endpoints") or []:
                for s in svcs:
                    if ep.get("port") and not any(p.get("name") == ep["port"] for p in s["spec"].get("ports") or []):
                        self.fail("monitor-targets", f"ServiceMonitor {self.name(sm)}: Service {self.name(s)} has no port {ep['port']}")

    def netpol_selectors(self):
        for np_ in self.of("NetworkPolicy"):
            sel = np_["spec"].get("podSelector") or {}
            if not sel.get("matchLabels") and not sel.get("matchExpressions"):
                continue
            if not self.selected_workloads(sel, self.ns(np_)):
                self.fail("netpol-selectors", f"NetworkPolicy {self.name(np_)}: podSelector selects no pods")

    def config_refs(self):
        for w in self.workloads():
            for c in self.all_containers(w):
                for e in c.get("env") or []:
                    vf = e.get("valueFrom") or {}
                    for kind, refkey in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        ref = vf.get(refkey)
                        if not ref:
                            continue
                        obj = self.find(kind, ref["name"], self.ns(w))
                        if obj is None:
                            if not ref.get("optional"):
                                self.fail("config-refs", f"{w['kind']} {self.name(w)}/{c['name']}: {kind} {ref['name']} does not exist")
                        elif ref["key"] not in (obj.get("data") or {}) and ref["key"] not in (obj.get("stringData") or {}):
                            self.fail("config-refs", f"{w['kind']} {self.name(w)}/{c['name']}: {kind} {ref['name']} has no key {ref['key']}")

    def env_value(self, w, c, var):
        for e in c.get("env") or []:
            if e["name"] != var:
                continue
            if "value" in e:
                return e["value"]
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                cm = self.find("ConfigMap", ref["name"], self.ns(w))
                return ((cm or {}).get("data") or {}).get(ref["key"])
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                return "<secret>"
        return None

    def probes(self):
        seen = set()
        for w in self.workloads():
            spec = self.pod_spec(w)
            for c in self.all_containers(w):
                doc = ENDPOINTS.get(c["name"])
                if not doc:
                    continue
                seen.add(c["name"])
                where = f"{w['kind']} {self.name(w)}/{c['name']}"
                for kind in ("readiness", "liveness"):
                    probe = c.get(f"{kind}Probe")
                    if not probe or "httpGet" not in probe:
                        self.fail("probes", f"{where}: no HTTP {kind} probe")
                        continue
                    hg = probe["httpGet"]
                    if hg.get("path") != doc[kind]:
                        self.fail("probes", f"{where}: {kind} probe path {hg.get('path')}, documented {doc[kind]}")
                    port = self.resolve_port(c, hg.get("port"))
                    if port != doc["port"]:
                        self.fail("probes", f"{where}: {kind} probe port {hg.get('port')} (= {port}), documented {doc['port']}")
                sp = c.get("startupProbe")
                if sp and "httpGet" in sp and self.resolve_port(c, sp["httpGet"].get("port")) != doc["port"]:
                    self.fail("probes", f"{where}: startup probe on a port other than {doc['port']}")
            names = {c["name"]: c for c in spec.get("containers") or []}
            inits = {c["name"]: c for c in spec.get("initContainers") or []}
            if "gateway" in names:
                gw = names["gateway"]
                fan = inits.get("fanout")
                if fan is None or fan.get("restartPolicy") != "Always":
                    self.fail("probes", f"{w['kind']} {self.name(w)}: fanout is not a native sidecar "
                              "(initContainer with restartPolicy: Always)")
                else:
                    listen = self.env_value(w, fan, "ROOMCAST_LISTEN") or ""
                    url = self.env_value(w, gw, "ROOMCAST_FANOUT_URL") or ""
                    if listen != f"127.0.0.1:{FANOUT_GRPC_PORT}" or url != f"http://127.0.0.1:{FANOUT_GRPC_PORT}":
                        self.fail("probes", f"{self.name(w)}: fanout must listen on and be dialled at localhost "
                                  f":{FANOUT_GRPC_PORT} (ROOMCAST_LISTEN={listen!r}, ROOMCAST_FANOUT_URL={url!r})")
                purl = self.env_value(w, gw, "ROOMCAST_PERSISTER_URL") or ""
                hostport = purl.split("://", 1)[-1].rstrip("/")
                host, _, port = hostport.partition(":")
                svc = self.find("Service", host.split(".")[0], self.ns(w))
                if svc is None or not any(str(p.get("port")) == port for p in svc["spec"].get("ports") or []):
                    self.fail("probes", f"{self.name(w)}: ROOMCAST_PERSISTER_URL {purl!r} is not a Service port")
                elif not any(self.matches(svc["spec"].get("selector"), self.pod_labels(x)) and
                             PERSISTER_GRPC_PORT in self.container_ports(x) for x in self.workloads()):
                    self.fail("probes", f"{self.name(w)}: Service {host} does not reach a persister on {PERSISTER_GRPC_PORT}")
                listen = self.env_value(w, gw, "ROOMCAST_LISTEN") or ""
                if not listen.endswith(f":{ENDPOINTS['gateway']['port']}"):
                    self.fail("probes", f"{self.name(w)}: gateway ROOMCAST_LISTEN {listen!r} is not :{ENDPOINTS['gateway']['port']}")
        for needed in ENDPOINTS:
            if needed not in seen:
                self.fail("probes", f"no container named {needed} in the rendered manifests")

    def drain(self):
        drain_seen = None
        for w in self.workloads():
            spec = self.pod_spec(w)
            for c in spec.get("containers") or []:
                if c["name"] != "gateway":
                    continue
                raw = self.env_value(w, c, "ROOMCAST_DRAIN_SECONDS")
                try:
                    drain = int(raw) if raw is not None else DEFAULT_DRAIN_SECONDS
                except ValueError:
                    self.fail("drain", f"{self.name(w)}: ROOMCAST_DRAIN_SECONDS {raw!r} is not a number")
                    continue
                drain_seen = drain
                pre = ((c.get("lifecycle") or {}).get("preStop") or {})
                if not pre:
                    self.fail("drain", f"{self.name(w)}: gateway has no preStop hook")
                sleep = (pre.get("sleep") or {}).get("seconds", 0)
                grace = spec.get("terminationGracePeriodSeconds", 30)
                if grace < sleep + drain:
                    self.fail("drain", f"{self.name(w)}: terminationGracePeriodSeconds {grace} < preStop sleep {sleep} "
                              f"+ drain {drain} s")
        for bc in self.of("BackendConfig"):
            spec = bc.get("spec") or {}
            d = (spec.get("connectionDraining") or {}).get("drainingTimeoutSec")
            if d is None:
                self.fail("drain", f"BackendConfig {self.name(bc)}: no connectionDraining")
            elif drain_seen is not None and d < drain_seen:
                self.fail("drain", f"BackendConfig {self.name(bc)}: drainingTimeoutSec {d} < drain {drain_seen} s")
            t = spec.get("timeoutSec")
            if t is None or t < MIN_WEBSOCKET_TIMEOUT:
                self.fail("drain", f"BackendConfig {self.name(bc)}: timeoutSec {t} cuts WebSockets (need >= {MIN_WEBSOCKET_TIMEOUT})")
            hc = spec.get("healthCheck") or {}
            if hc.get("requestPath") != ENDPOINTS["gateway"]["readiness"] or hc.get("port") != ENDPOINTS["gateway"]["port"]:
                self.fail("drain", f"BackendConfig {self.name(bc)}: health check must be {ENDPOINTS['gateway']['readiness']} "
                          f"on {ENDPOINTS['gateway']['port']}")

    def hardening(self):
        for w in self.workloads():
            spec = self.pod_spec(w)
            psc = spec.get("securityContext") or {}
            if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                self.fail("hardening", f"{w['kind']} {self.name(w)}: pod seccompProfile is not RuntimeDefault")
            for c in self.all_containers(w):
                where = f"{w['kind']} {self.name(w)}/{c['name']}"
                res = c.get("resources") or {}
                for part in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in (res.get(part) or {}):
                            self.fail("hardening", f"{where}: no {part}.{r}")
                sc = c.get("securityContext") or {}
                if sc.get("readOnlyRootFilesystem") is not True:
                    self.fail("hardening", f"{where}: root filesystem is not read-only")
                if sc.get("allowPrivilegeEscalation") is not False:
                    self.fail("hardening", f"{where}: allowPrivilegeEscalation is not false")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    self.fail("hardening", f"{where}: capabilities do not drop ALL")
                if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                    self.fail("hardening", f"{where}: runAsNonRoot is not set")
                if c["name"] == "gateway" and (res.get("requests") or {}).get("memory") != \
                        (res.get("limits") or {}).get("memory"):
                    self.fail("hardening", f"{where}: memory request differs from the limit that the connection cap "
                              "and the send-queue budget are sized for")

    def gateway_backend_configs(self):
        """The BackendConfigs the gateway Service's annotation names."""
        svc = next((s for s in self.of("Service") if self.name(s) == "gateway"), None)
        raw = ((svc or {}).get("metadata", {}).get("annotations") or {}).get("cloud.google.com/backend-config")
        try:
            cfg = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return []  # backend_config reports it
        names = ([cfg["default"]] if "default" in cfg else []) + list((cfg.get("ports") or {}).values())
        return [bc for n in names if (bc := self.find("BackendConfig", n, self.ns(svc))) is not None]

    def gateway_load_balancers(self, w):
        """Services of type LoadBalancer that send to w's pods."""
        return [s for s in self.of("Service") if self.ns(s) == self.ns(w)
                and (s.get("spec") or {}).get("type") == "LoadBalancer"
                and self.matches((s.get("spec") or {}).get("selector"), self.pod_labels(w))]

    def public_front_door(self):
        if not self.is_public():
            return  # not public: the dev overlay
        for w in self.workloads():
            for c in self.pod_spec(w).get("containers") or []:
                if c["name"] != "gateway":
                    continue
                where = f"{w['kind']} {self.name(w)}/gateway"
                required = self.env_value(w, c, "ROOMCAST_AUTH_REQUIRED")
                if str(required).lower() != "true":
                    self.fail("public-front-door", f"{where}: ROOMCAST_AUTH_REQUIRED is {required!r}: a public "
                              "gateway must require tokens")
                keys = [e for e in c.get("env") or []
                        if e["name"] in ("ROOMCAST_AUTH_JWT_SECRET", "ROOMCAST_AUTH_JWT_PUBLIC_KEY")]
                if not keys:
                    self.fail("public-front-door", f"{where}: no ROOMCAST_AUTH_JWT_SECRET or _PUBLIC_KEY")
                for e in keys:
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and ref.get("optional", False):
                        self.fail("public-front-door", f"{where}: {e['name']} comes from an optional Secret: a "
                                  "missing Secret would silently turn auth off")
        if not self.of("Ingress"):
            return  # public through a LoadBalancer Service only: no BackendConfig applies
        bcs = self.gateway_backend_configs()
        if not bcs:
            self.fail("public-front-door", "the gateway Service names no BackendConfig")
        for bc in bcs:
            spec = bc.get("spec") or {}
            aff = spec.get("sessionAffinity") or {}
            if aff.get("affinityType") != "GENERATED_COOKIE" or not aff.get("affinityCookieTtlSec"):
                self.fail("public-front-door", f"BackendConfig {self.name(bc)}: sessionAffinity "
                          f"{aff.get('affinityType')!r}: Socket.IO long-polling needs GENERATED_COOKIE with a TTL, "
                          "or its requests reach different pods")
            if not (spec.get("securityPolicy") or {}).get("name"):
                self.fail("public-front-door", f"BackendConfig {self.name(bc)}: no Cloud Armor securityPolicy "
                          "(the per-client rate limit behind the load balancer)")

    def netpol_allows_udp(self, w, port, names):
        """Some NetworkPolicy selecting w's pods lets UDP `port` (or a port named in `names`) in."""
        for np_ in self.of("NetworkPolicy"):
            spec = np_.get("spec") or {}
            if self.ns(np_) != self.ns(w) or "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
                continue
            if not self.matches(spec.get("podSelector") or {}, self.pod_labels(w)):
                continue
            for rule in spec.get("ingress") or []:
                ports = rule.get("ports")
                if not ports or any(p.get("protocol", "TCP") == "UDP" and p.get("port") in (port, *names, None)
                                    for p in ports):
                    return True
        return False

    def webtransport(self):
        for w in self.workloads():
            spec = self.pod_spec(w)
            for c in spec.get("containers") or []:
                if c["name"] != "gateway":
                    continue
                where = f"{w['kind']} {self.name(w)}/gateway"
                env = {v: self.env_value(w, c, v) for v in (
                    "ROOMCAST_WEBTRANSPORT_CERT", "ROOMCAST_WEBTRANSPORT_KEY", "ROOMCAST_TLS_CERT", "ROOMCAST_TLS_KEY",
                    "ROOMCAST_WEBTRANSPORT_LISTEN", "ROOMCAST_LISTEN", "ROOMCAST_WEBTRANSPORT_URL")}
                files = [("ROOMCAST_WEBTRANSPORT_CERT", env["ROOMCAST_WEBTRANSPORT_CERT"]),
                         ("ROOMCAST_WEBTRANSPORT_KEY", env["ROOMCAST_WEBTRANSPORT_KEY"])]
                if not (files[0][1] and files[1][1]):  # the gateway falls back to --tls-cert/--tls-key
                    files = [("ROOMCAST_TLS_CERT", env["ROOMCAST_TLS_CERT"]), ("ROOMCAST_TLS_KEY", env["ROOMCAST_TLS_KEY"])]
                udp = [(s, p) for s in self.of("Service") if self.ns(s) == self.ns(w)
                       and self.matches((s.get("spec") or {}).get("selector"), self.pod_labels(w))
                       for p in (s.get("spec") or {}).get("ports") or [] if p.get("protocol") == "UDP"]
                if not (files[0][1] and files[1][1]):
                    if udp:
                        self.fail("webtransport", f"{where}: UDP Service {self.name(udp[0][0])} sends to the gateway, "
                                  "but it has no WebTransport certificate and key (ROOMCAST_WEBTRANSPORT_CERT/_KEY): "
                                  "without them its WebTransport is off")
                    continue
                # The certificate and key: files of a Secret volume, mounted read-only.
                volumes = {v["name"]: v for v in spec.get("volumes") or []}
                for var, path in files:
                    mounts = [m for m in c.get("volumeMounts") or []
                              if path.startswith(m["mountPath"].rstrip("/") + "/")]
                    m = max(mounts, key=lambda m: len(m["mountPath"]), default=None)
                    if m is None or m.get("readOnly") is not True or "secret" not in volumes.get(m["name"], {}):
                        self.fail("webtransport", f"{where}: {var} {path} is not in a read-only Secret volume")
                # The listener: on a UDP port of the container.
                listen = (env["ROOMCAST_WEBTRANSPORT_LISTEN"] or env["ROOMCAST_LISTEN"] or "").strip()
                if listen == "off":
                    self.fail("webtransport", f"{where}: ROOMCAST_WEBTRANSPORT_LISTEN is off, but a certificate is "
                              "given and pages are told a WebTransport URL")
                    continue
                try:
                    lport = int(listen.rpartition(":")[2])
                except ValueError:
                    self.fail("webtransport", f"{where}: WebTransport listen address {listen!r} has no port")
                    continue
                cports = [p for p in c.get("ports") or [] if p.get("protocol") == "UDP" and p["containerPort"] == lport]
                if not cports:
                    self.fail("webtransport", f"{where}: WebTransport listens on UDP {lport}, which is not a UDP "
                              "container port of the gateway")
                names = [p["name"] for p in cports if p.get("name")]
                # The URL the page is told: a UDP port of a load balancer to that listener.
                url = env["ROOMCAST_WEBTRANSPORT_URL"]
                if not url:
                    self.fail("webtransport", f"{where}: no ROOMCAST_WEBTRANSPORT_URL: pages would be told the page's "
                              f"host at UDP {lport}, which the Ingress does not carry")
                else:
                    u = urlsplit(url)
                    try:
                        port = u.port or 443
                    except ValueError:
                        port = None
                    if u.scheme != "https" or not u.hostname or u.path != "/wt" or port is None:
                        self.fail("webtransport", f"{where}: ROOMCAST_WEBTRANSPORT_URL {url!r} is not https://HOST[:PORT]/wt")
                    else:
                        lbs = [s for s, p in udp if s["spec"].get("type") == "LoadBalancer" and p.get("port") == port
                               and p.get("targetPort", p.get("port")) in (lport, *names)]
                        if not lbs:
                            self.fail("webtransport", f"{where}: ROOMCAST_WEBTRANSPORT_URL {url!r}: no LoadBalancer "
                                      f"Service has UDP port {port} to the gateway's UDP {lport}")
                        hosts = {r.get("host") for i in self.of("Ingress") for r in i["spec"].get("rules") or []}
                        if u.hostname in hosts:
                            self.fail("webtransport", f"{where}: ROOMCAST_WEBTRANSPORT_URL {url!r} names the Ingress's "
                                      "host, whose address carries no UDP: use the UDP load balancer's own host name")
                # The namespace denies by default: a NetworkPolicy must let the clients in.
                if not self.netpol_allows_udp(w, lport, names):
                    self.fail("webtransport", f"{where}: no NetworkPolicy allows UDP {lport} in: WebTransport clients "
                              "would be dropped")

    def secret_value(self, w, ref):
        """The value of a secretKeyRef in the rendered Secret (None if not there)."""
        sec = self.find("Secret", ref["name"], self.ns(w))
        if sec is None:
            return None
        if ref["key"] in (sec.get("stringData") or {}):
            return str(sec["stringData"][ref["key"]])
        raw = (sec.get("data") or {}).get(ref["key"])
        try:
            return base64.b64decode(raw).decode() if raw is not None else None
        except (ValueError, UnicodeDecodeError):
            return None

    def env_resolved(self, w, c, var):
        """env_value, with Secret keys read from the rendered Secret; None if unknown."""
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if e["name"] == var and ref:
                return self.secret_value(w, ref)
        return self.env_value(w, c, var)

    def file_in_volume(self, w, c, path):
        """Where `path` of container c comes from: (mount, volume) of the longest mount prefix."""
        mounts = [m for m in c.get("volumeMounts") or [] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        m = max(mounts, key=lambda m: len(m["mountPath"]), default=None)
        if m is None:
            return None, None
        vol = next((v for v in self.pod_spec(w).get("volumes") or [] if v["name"] == m["name"]), None)
        return m, vol

    def egress_allows(self, w, ip, lo, hi):
        """Some NetworkPolicy selecting w's pods lets TCP out to `ip` on every port lo..hi."""
        addr = ipaddress.ip_address(ip)
        for np_ in self.of("NetworkPolicy"):
            spec = np_.get("spec") or {}
            types = spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") else ["Ingress"])
            if self.ns(np_) != self.ns(w) or "Egress" not in types:
                continue
            if not self.matches(spec.get("podSelector") or {}, self.pod_labels(w)):
                continue
            for rule in spec.get("egress") or []:
                peers = rule.get("to")
                to_ip = not peers or any(
                    "ipBlock" in peer and addr in ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
                    and not any(addr in ipaddress.ip_network(x, strict=False) for x in peer["ipBlock"].get("except") or [])
                    for peer in peers)
                ports = rule.get("ports")
                covered = not ports or any(
                    p.get("protocol", "TCP") == "TCP" and isinstance(p.get("port"), int)
                    and p["port"] <= lo and p.get("endPort", p["port"]) >= hi for p in ports)
                if to_ip and covered:
                    return True
        return False

    def is_public(self):
        gateways = [w for w in self.workloads()
                    if any(c["name"] == "gateway" for c in self.pod_spec(w).get("containers") or [])]
        return bool(self.of("Ingress")) or any(self.gateway_load_balancers(w) for w in gateways)

    def redis(self):
        public = self.is_public()
        for w in self.workloads():
            for c in self.all_containers(w):
                if c["name"] != "fanout":
                    continue
                where = f"{w['kind']} {self.name(w)}/fanout"
                names = {e["name"] for e in c.get("env") or []}
                if {"ROOMCAST_REDIS_URL", "ROOMCAST_REDIS_CLUSTER"} <= names:
                    self.fail("redis", f"{where}: sets both ROOMCAST_REDIS_URL and ROOMCAST_REDIS_CLUSTER: the fanout "
                              "exits with a usage error (a cluster overlay must drop ROOMCAST_REDIS_URL)")
                    continue
                cluster = "ROOMCAST_REDIS_CLUSTER" in names
                var = "ROOMCAST_REDIS_CLUSTER" if cluster else "ROOMCAST_REDIS_URL"
                raw = self.env_resolved(w, c, var) if var in names else "redis://127.0.0.1:6379"
                urls = [u.strip() for u in raw.split(",") if u.strip()] if raw is not None else []
                ca = self.env_value(w, c, "ROOMCAST_REDIS_CA")
                if ca:
                    m, vol = self.file_in_volume(w, c, ca)
                    src = (vol or {}).get("configMap") or (vol or {}).get("secret")
                    if m is None or m.get("readOnly") is not True or src is None:
                        self.fail("redis", f"{where}: ROOMCAST_REDIS_CA {ca} is not in a read-only ConfigMap or "
                                  "Secret volume")
                    else:
                        kind, oname = ("ConfigMap", src.get("name")) if "configMap" in vol else \
                            ("Secret", src.get("secretName"))
                        obj = self.find(kind, oname, self.ns(w))
                        rel = ca[len(m["mountPath"].rstrip("/")) + 1:]
                        items = {i["path"]: i["key"] for i in src.get("items") or []}
                        key = items.get(rel, None if items else rel)
                        if obj is None:
                            if not src.get("optional"):
                                self.fail("redis", f"{where}: ROOMCAST_REDIS_CA comes from {kind} {oname}, which "
                                          "does not exist")
                        elif key not in (obj.get("data") or {}) and key not in (obj.get("binaryData") or {}) \
                                and key not in (obj.get("stringData") or {}):
                            self.fail("redis", f"{where}: ROOMCAST_REDIS_CA {ca}: {kind} {oname} has no key {rel}")
                    plain = [u for u in urls if not u.startswith("rediss://")]
                    if plain:
                        self.fail("redis", f"{where}: ROOMCAST_REDIS_CA is set but {var} is not rediss:// "
                                  f"({plain[0].split('://')[0]}://): the fanout exits at start")
                if public and not ca:
                    self.fail("redis", f"{where}: the gateway is public, but the fanout has no ROOMCAST_REDIS_CA: "
                              "production Redis (Memorystore) is reached over TLS, verified with its own CA")
                for u in urls:
                    try:
                        parsed = urlsplit(u)
                        host, port = parsed.hostname, parsed.port or 6379
                        ipaddress.ip_address(host or "")
                    except ValueError:
                        continue  # a host name (dev: the redis Service) or no host: nothing to compare
                    if not self.egress_allows(w, host, port, port):
                        self.fail("redis", f"{where}: no NetworkPolicy lets the gateway pods out to Redis at "
                                  f"{host}:{port} ({var})")
                    lo, hi = MEMORYSTORE_CLUSTER_NODE_PORTS
                    if cluster and not self.egress_allows(w, host, lo, hi):
                        self.fail("redis", f"{where}: no NetworkPolicy lets the gateway pods out to the Redis "
                                  f"Cluster's node ports {lo}-{hi} at {host} (Memorystore's shards)")

    CHECKS = ("service_selectors", "ingress_backends", "backend_config", "hpa_pdb_targets", "monitor_targets",
              "netpol_selectors", "config_refs", "probes", "drain", "hardening", "public_front_door", "webtransport",
              "redis")

    def run(self):
        for c in self.CHECKS:
            getattr(self, c)()
        return self.failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    docs = list(yaml.safe_load_all(Path(args.rendered).read_text()))
    failures = Checker(docs).run()
    label = args.name or args.rendered
    for check, msg in failures:
        print(f"FAIL [{check}] {label}: {msg}")
    print(f"{label}: {len(Checker.CHECKS)} cross-reference checks over {len(docs)} objects, {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
