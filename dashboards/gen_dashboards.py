#!/usr/bin/env python3
"""Generates the roomcast Grafana dashboards (overview.json, gateway.json, fanout.json,
persister.json) in this folder.

The JSON files are the deliverable and are committed; this script is how they are kept
consistent (ids, grid layout, filters, datasource references). Edit the panels here, then run

    python3 dashboards/gen_dashboards.py

`check.py static` fails if a committed JSON differs from what this script generates.
Only metric names the services export may be used: `check.py static` (its `metrics` check)
fails on any name, _bucket/_sum/_count stripped, that is not a string literal in some *.rs
file of the repository (the process_* metrics of the metrics-process crate are exempt). The
names are declared in gateway/, fanout/ and persister/ src/metrics.rs.
Standard library only.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

DS = {"type": "prometheus", "uid": "${datasource}"}
F = 'namespace="$namespace", pod=~"$pod"'
RI = "$__rate_interval"
WT = 'protocol="webtransport"'


# --------------------------------------------------------------------------- PromQL helpers
def sel(metric: str, extra: str = "") -> str:
    """A selector carrying the dashboard filters, plus `extra` matchers."""
    return f"{metric}{{{extra + ', ' if extra else ''}{F}}}"


def rate(metric: str, extra: str = "") -> str:
    return f"rate({sel(metric, extra)}[{RI}])"


def srate(metric: str, by: str = "", extra: str = "") -> str:
    grp = f"sum by ({by}) " if by else "sum "
    return f"{grp}({rate(metric, extra)})"


def quantile(q: float, hist: str, by: str = "", extra: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(hist + '_bucket', extra)}))"


def ratio(num: str, den: str) -> str:
    return f"{num}\n/\n{den}"


# --------------------------------------------------------------------------- panel builders
class Board:
    """Collects rows and panels, numbering panel ids and laying out the grid."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.next_id = 1
        self.y = 0
        self.x = 0
        self.row_h = 0

    def _id(self) -> int:
        pid = self.next_id
        self.next_id += 1
        return pid

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({
            "type": "row",
            "id": self._id(),
            "title": title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": [],
        })
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self._newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def add(self, panel: dict, w: int = 8, h: int = 8) -> None:
        panel["id"] = self._id()
        panel["gridPos"] = self._place(w, h)
        # key order: stable and readable
        ordered = {k: panel[k] for k in ("type", "id", "title", "description", "datasource", "gridPos") if k in panel}
        ordered.update({k: v for k, v in panel.items() if k not in ordered})
        self.panels.append(ordered)


def targets(*queries: tuple[str, str]) -> list[dict]:
    out = []
    for i, (expr, legend) in enumerate(queries):
        out.append({
            "datasource": DS,
            "editorMode": "code",
            "expr": expr,
            "legendFormat": legend,
            "range": True,
            "refId": chr(ord("A") + i),
        })
    return out


def timeseries(title: str, desc: str, queries: list[tuple[str, str]], unit: str = "short",
               stack: bool = False, min0: bool = True) -> dict:
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: dict = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets(*queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, desc: str, query: tuple[str, str], unit: str = "short",
         steps: list[tuple[str, float | None]] | None = None, calc: str = "lastNotNull") -> dict:
    steps = steps or [("green", None)]
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets(query),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": c, "value": v} for c, v in steps],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": [calc], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        },
    }


def heatmap(title: str, desc: str, hist: str, unit: str = "s") -> dict:
    return {
        "type": "heatmap",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [{
            "datasource": DS,
            "editorMode": "code",
            "expr": f"sum by (le) (increase({sel(hist + '_bucket')}[{RI}]))",
            "format": "heatmap",
            "legendFormat": "{{le}}",
            "range": True,
            "refId": "A",
        }],
        "options": {
            "calculate": False,
            "yAxis": {"unit": unit},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        },
    }


# --------------------------------------------------------------------------- dashboard shell
def variables(pod_metric: str, pod_extra: str = "") -> dict:
    pod_sel = f'{pod_metric}{{{pod_extra + ", " if pod_extra else ""}namespace="$namespace"}}'
    return {"list": [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "includeAll": False,
            "multi": False,
        },
        {
            "type": "query",
            "name": "namespace",
            "label": "Namespace",
            "datasource": DS,
            "query": "label_values(roomcast_build_info, namespace)",
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            "regex": "",
            "includeAll": False,
            "multi": False,
        },
        {
            "type": "query",
            "name": "pod",
            "label": "Pod",
            "datasource": DS,
            "query": f"label_values({pod_sel}, pod)",
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            "regex": "",
            "includeAll": True,
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        },
    ]}


def dashboard(uid: str, title: str, desc: str, board: Board, pod_metric: str, pod_extra: str = "") -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["roomcast"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "links": [{
            "type": "dashboards",
            "title": "roomcast",
            "tags": ["roomcast"],
            "asDropdown": True,
            "includeVars": True,
            "keepTime": True,
            "icon": "external link",
            "targetBlank": False,
            "tooltip": "",
            "url": "",
        }],
        "templating": variables(pod_metric, pod_extra),
        "panels": board.panels,
    }


def process_row(b: Board) -> None:
    b.row("Process: CPU, memory, file descriptors")
    b.add(timeseries("CPU", "CPU seconds used per second, per pod (1.0 = one full core).",
                     [(f"sum by (pod) ({rate('process_cpu_seconds_total')})", "{{pod}}")], unit="short"))
    b.add(timeseries("Resident memory", "Resident set size per pod.",
                     [(f"sum by (pod) ({sel('process_resident_memory_bytes')})", "{{pod}}")], unit="bytes"))
    b.add(timeseries("Open file descriptors", "Open file descriptors and the fd limit (process_max_fds), per pod. Each client connection holds one fd on a gateway.",
                     [(f"sum by (pod) ({sel('process_open_fds')})", "{{pod}} open"),
                      (f"sum by (pod) ({sel('process_max_fds')})", "{{pod}} limit")]))


def build_info_stat(b: Board, w: int = 8) -> None:
    b.add(stat("Running versions", "Pods per service and version (roomcast_build_info).",
               (f"count by (service, version) ({sel('roomcast_build_info')})", "{{service}} {{version}}"),
               steps=[("blue", None)]), w=w, h=4)


# --------------------------------------------------------------------------- shared descriptions
BAD_FRAMES_DESC = ("Client frames (Socket.IO events) the gateway refused, by kind. Malformed: invalid_json, unknown_type, "
                   "invalid_field, binary. Limit refusals: too_large (over ROOMCAST_MAX_FRAME_BYTES or ROOMCAST_MAX_TEXT_CHARS), "
                   "rate_limited (over ROOMCAST_FRAMES_PER_SECOND, burst ROOMCAST_FRAME_BURST), too_many_rooms "
                   "(ROOMCAST_MAX_ROOMS_PER_CONNECTION), overloaded (too many sends waiting for their acks), "
                   "forbidden_room (the client's token does not grant the room).")
SEND_LATENCY_DESC = ("roomcast_gateway_send_duration_seconds: from a send's arrival at the gateway to its answer (ack or error, "
                     "refusals included), p50 and p99 by protocol: what a sender waits. Alert RoomcastSendLatencySLO: "
                     "fewer than 99% of sends answered within 500ms.")
SEND_ERRORS_DESC = ("Share of client sends answered with an error (roomcast_gateway_messages_sent_total{result=\"error\"}): "
                    "server-side failures, unavailable or timeout; refusals of bad or over-limit frames are bad frames, not "
                    "errors. Alert RoomcastSendErrorRatio: above 1% for 5 minutes.")
PRESENCE_ENTRIES_DESC = ("roomcast_gateway_presence_entries: users present through this gateway, summed over its rooms, per pod. "
                         "Users, not connections: two tabs of one user in one room count once; a user in three rooms counts "
                         "three times; a user connected to two gateways counts on both, so the pods' lines do not add up to "
                         "distinct users. Connections without a user name are not present.")
PRESENCE_DIFFS_DESC = ("roomcast_gateway_presence_diffs_total: presence_diff batches sent, per pod: at most one per room every "
                       "250 ms, only when the room's members changed (so at most 4/s per room). Follows join/leave churn: "
                       "a rollout or reconnect storm shows a burst.")
TYPING_DESC = ("roomcast_gateway_typing_total: typing frames (Socket.IO events) by result. relayed: sent on to the room's other "
               "users, on every gateway; dropped: silently dropped, more than one per user per room per second (a client "
               "that sends typing on every keystroke shows as dropped, which is harmless).")
DIRECTORY_DESC = ("roomcast_gateway_directory_rooms: rooms in the room directory. The directory is shared by every gateway "
                  "(kept by the broker) and each gateway reports its size, so the pods' lines lie on top of each other. "
                  "Grows with create_room and with rooms that get members or messages; rooms without either for "
                  "--directory-idle-seconds drop out; capped at --directory-max-rooms.")
PRESENCE_FAILURES_DESC = ("roomcast_gateway_presence_refresh_failures_total: presence calls to the broker that failed, by op: "
                          "heartbeat (this gateway's liveness, every 5 s), announce (its users' joins and leaves), read "
                          "(other gateways' users). Alert RoomcastPresenceRefreshFailing: any failure in 5 minutes, for 5 minutes.")
WT_SESSIONS_DESC = ("roomcast_gateway_connections: open WebTransport sessions (protocol=\"webtransport\", /wt over "
                    "HTTP/3 and QUIC, UDP) against the WebSocket front doors (ws and socketio), summed over the selected pods. "
                    "The page tries WebTransport first and falls back to WebSocket when a session fails or is not ready within 5 s: "
                    "a webtransport line that drops while the other rises (total flat) is the UDP path or the QUIC "
                    "handshake failing, see Handshake failures.")
WT_RTT_DESC = ("roomcast_gateway_webtransport_rtt_seconds: QUIC's smoothed round-trip time of WebTransport sessions, "
               "p50 and p99. Sampled per session every ping interval (--ping-seconds, 30 s by default) and at its end, so long sessions weigh more. "
               "The clients' networks, mostly: a p99 rising alone is some clients on bad links; a p50 rising too is "
               "the path to the load balancer or a node. WebSocket sessions have no such measure.")
WT_LOSS_DESC = ("roomcast_gateway_webtransport_lost_packets_total: packets the gateway sent on WebTransport sessions that "
                "QUIC declared lost (their data goes out again), per second and pod. Grows with traffic and with bad client networks; "
                "one pod alone points at its node's network. No alert: loss has no denominator here and is mostly "
                "the clients' links; its effects show as send latency and slow-consumer disconnects.")
WT_HANDSHAKE_DESC = ("roomcast_gateway_webtransport_handshake_failures_total: WebTransport sessions that failed before "
                     "admission (QUIC/TLS or HTTP/3 handshake failed or timed out after 10 s, no stream opened, a path "
                     "other than /wt), per second, against sessions admitted (roomcast_gateway_connects_total{protocol="
                     "\"webtransport\"}). Refusals by admission (token, origin, server_full) are Refused connections, "
                     "not failures. Alert RoomcastWebTransportHandshakeFailures: over 20% of attempts, with more than "
                     "15 failures in 5 minutes, for 10 minutes.")
REFUSED_DESC = ("roomcast_gateway_refused_connections_total: connections refused before any room was touched, by reason. "
                "origin_not_allowed (ROOMCAST_ALLOWED_ORIGINS), token_missing / token_invalid / token_expired (JWT), "
                "invalid_user (a user name outside the rules), server_full (the gateway holds ROOMCAST_MAX_CONNECTIONS), "
                "too_many_connections (one client address over ROOMCAST_MAX_CONNECTIONS_PER_IP), banned (a user banned "
                "through the server API).")
DISCONNECTS_DESC = ("roomcast_gateway_disconnects_total, all protocols, by reason: client_close, error, slow_consumer, drain, "
                    "protocol_error, silent (no frame or pong for too long), token_expired (no new token within the grace "
                    "after exp, close 4401), kicked (removed through the server API, POST /api/users/{user}/disconnect, "
                    "close 4403).")
API_REQUESTS_DESC = ("roomcast_gateway_api_requests_total: server API requests (--api-listen, docs/API.md) per second, by "
                     "method, route (the matched pattern; unmatched for unknown paths) and status. A series appears with "
                     "its first request: an API nobody calls shows no data. 5xx: 503 unavailable (broker or store down), "
                     "504 timeout; 4xx are the caller's (bad request, unknown room or message, refused key).")
API_DURATION_DESC = ("roomcast_gateway_api_request_duration_seconds: p99 time to answer, by method and route. A POST of a "
                     "message answers once it is stored, like a client's ack (504 after 15 s); GETs read the store or "
                     "the broker.")
API_REFUSED_DESC = ("Server API requests refused with 401 (no `Authorization: apikey KEY`, or a key the gateway does not "
                    "hold: --api-key, --api-key-file), per second by route. A steady rate is a backend still using a "
                    "removed key (its calls all fail) or someone without a key trying. Alert RoomcastApiKeyRefusals: "
                    "more than 1/s over 5 minutes, for 5 minutes.")
RATE_LIMITED_DESC = ("roomcast_gateway_rate_limited_total: frames and sends refused with rate_limited, by scope: "
                     "connection (one connection's frames, --frames-per-second), user (one user's sends across all its "
                     "connections and gateways, --user-sends-per-second), room (one room's sends from all members, "
                     "--room-sends-per-second). The user and room budgets live in the broker (Redis).")
FAIL_OPEN_DESC = ("roomcast_gateway_budget_fail_open_total: sends let through without checking the user and room budgets, "
                  "by reason: broker_error (the broker could not answer; for at most --budget-fail-open-seconds, then "
                  "sends are refused as unavailable) or unsupported (a fanout of an older release, during an upgrade).")
JWKS_LOADS_DESC = ("roomcast_gateway_jwks_refreshes_total: loads of the JWK Set that client tokens are checked with "
                   "(--auth-jwks-url or --auth-jwks-file), by result (ok, failed) and trigger (start; interval: every "
                   "--auth-jwks-refresh-seconds; unknown_kid: a token named a kid not held, at most every 10 s; file: "
                   "the file changed), counted over each interval. A failed load keeps the keys held. All 0 without "
                   "JWKS. Alert RoomcastJwksRefreshFailing: failed loads and no good one over 15 minutes, for 10 minutes.")
JWKS_KEYS_DESC = ("roomcast_gateway_jwks_keys: signing keys held from the JWK Set, per pod. 0 without --auth-jwks-url or "
                  "--auth-jwks-file; with either, 0 means the pod has not loaded the set yet and refuses every token "
                  "(token_invalid). Pods should agree; one behind the others holds an older set.")


# --------------------------------------------------------------------------- overview
def overview() -> dict:
    b = Board()
    b.row("At a glance")
    b.add(stat("Ready gateways", "Gateways whose /readyz is 200 (sum of roomcast_gateway_ready). 0 = nobody can connect.",
               (f"sum({sel('roomcast_gateway_ready')})", "ready"), steps=[("red", None), ("green", 1)]), w=4, h=4)
    b.add(stat("Open connections", "WebSocket, Socket.IO and WebTransport connections open on all gateways.",
               (f"sum({sel('roomcast_gateway_connections')})", "connections"), steps=[("blue", None)]), w=4, h=4)
    b.add(stat("Client sends/s", "Messages sent by clients, per second, all results.",
               (srate("roomcast_gateway_messages_sent_total"), "sends/s"), unit="reqps", steps=[("blue", None)]), w=4, h=4)
    b.add(stat("Delivery p99", "99th percentile of message timestamp to delivery on a gateway.",
               (quantile(0.99, "roomcast_gateway_delivery_latency_seconds"), "p99"), unit="s",
               steps=[("green", None), ("orange", 0.25), ("red", 0.5)]), w=4, h=4)
    b.add(stat("Redis up (worst fanout)", "min of roomcast_fanout_redis_up over fanout pods: 0 = some fanout cannot reach Redis.",
               (f"min({sel('roomcast_fanout_redis_up')})", "redis up"), steps=[("red", None), ("green", 1)]), w=4, h=4)
    b.add(stat("Persister queue (max)", "Deepest persister write queue (messages waiting for a batch).",
               (f"max({sel('roomcast_persister_queue_depth')})", "queue"),
               steps=[("green", None), ("orange", 1000), ("red", 5000)]), w=4, h=4)

    b.row("1. Client send (gateway ingress)")
    b.add(timeseries("Client sends by result", "roomcast_gateway_messages_sent_total: acked = the send was sequenced and published; error = the client got an error.",
                     [(srate("roomcast_gateway_messages_sent_total", "result"), "{{result}}")], unit="reqps", stack=True))
    b.add(timeseries("Send error ratio", SEND_ERRORS_DESC,
                     [(ratio(srate("roomcast_gateway_messages_sent_total", extra='result="error"'),
                             srate("roomcast_gateway_messages_sent_total")), "error ratio")], unit="percentunit"))
    b.add(timeseries("Send → ack latency", SEND_LATENCY_DESC,
                     [(quantile(0.5, "roomcast_gateway_send_duration_seconds", "protocol"), "{{protocol}} p50"),
                      (quantile(0.99, "roomcast_gateway_send_duration_seconds", "protocol"), "{{protocol}} p99")], unit="s"))
    b.add(timeseries("Bad frames by kind (incl. limit refusals)", BAD_FRAMES_DESC,
                     [(srate("roomcast_gateway_bad_frames_total", "kind"), "{{kind}}")], unit="reqps", stack=True), w=12)
    b.add(timeseries("Rate limited by scope", RATE_LIMITED_DESC,
                     [(srate("roomcast_gateway_rate_limited_total", "scope"), "{{scope}}")], unit="reqps", stack=True), w=12)
    b.add(timeseries("Sends unchecked (budgets failing open)", FAIL_OPEN_DESC,
                     [(srate("roomcast_gateway_budget_fail_open_total", "reason"), "{{reason}}")], unit="reqps"), w=12)
    b.add(timeseries("Refused connections by reason", REFUSED_DESC,
                     [(srate("roomcast_gateway_refused_connections_total", "reason"), "{{reason}}")], unit="reqps", stack=True), w=12)

    b.row("2. Publish (gateway -> fanout -> Redis)")
    b.add(timeseries("Fanout publishes by result", "Publishes to Redis by the fanout tier.",
                     [(srate("roomcast_fanout_publishes_total", "result"), "{{result}}")], unit="reqps", stack=True))
    b.add(timeseries("Publish latency", "Gateway -> fanout gRPC call (p99, by method) and fanout -> Redis publish (p50, p99).",
                     [(quantile(0.99, "roomcast_gateway_upstream_request_duration_seconds", "method", 'upstream="fanout"'), "gateway->fanout {{method}} p99"),
                      (quantile(0.5, "roomcast_fanout_publish_duration_seconds"), "redis publish p50"),
                      (quantile(0.99, "roomcast_fanout_publish_duration_seconds"), "redis publish p99")], unit="s"))
    b.add(timeseries("Redis connectivity", "roomcast_fanout_redis_up per fanout pod (1 = connected), and Redis reconnects per second.",
                     [(f"max by (pod) ({sel('roomcast_fanout_redis_up')})", "{{pod}} up"),
                      (srate("roomcast_fanout_redis_reconnects_total"), "reconnects/s")]))

    b.row("3. Delivery (Redis -> fanout -> gateway -> client)")
    b.add(timeseries("Deliveries", "Messages streamed by fanout to gateways, and delivered by gateways to clients (one per recipient connection).",
                     [(srate("roomcast_fanout_deliveries_total"), "fanout -> gateways"),
                      (srate("roomcast_gateway_deliveries_total"), "gateways -> clients")], unit="ops"), w=6)
    b.add(timeseries("End-to-end delivery latency", "Message timestamp to delivery on a gateway: p50, p90, p99.",
                     [(quantile(0.5, "roomcast_gateway_delivery_latency_seconds"), "p50"),
                      (quantile(0.9, "roomcast_gateway_delivery_latency_seconds"), "p90"),
                      (quantile(0.99, "roomcast_gateway_delivery_latency_seconds"), "p99")], unit="s"), w=6)
    b.add(timeseries("Slow-consumer disconnects", "Clients disconnected because their send queue overflowed, per second.",
                     [(srate("roomcast_gateway_slow_consumer_disconnects_total"), "disconnects/s")], unit="reqps"), w=6)
    b.add(timeseries("Send queue", "Bytes queued for clients, summed over all gateways.",
                     [(f"sum({sel('roomcast_gateway_send_queue_bytes')})", "queued")], unit="bytes"), w=6)

    b.row("4. Persistence (gateway -> persister -> MongoDB)")
    b.add(timeseries("Documents written", "Messages stored, and duplicates absorbed (retries of already stored messages).",
                     [(srate("roomcast_persister_documents_written_total"), "written"),
                      (srate("roomcast_persister_duplicates_total"), "duplicates")], unit="ops"))
    b.add(timeseries("Write errors and rejections", "Messages whose write failed after retries (by kind), and writes refused because the queue was full.",
                     [(srate("roomcast_persister_write_errors_total", "kind"), "error {{kind}}"),
                      (srate("roomcast_persister_queue_rejections_total"), "queue full")], unit="ops"))
    b.add(timeseries("Persist latency", "Batch write to MongoDB (p99) and the gateway's persister calls (p99, by method).",
                     [(quantile(0.99, "roomcast_persister_batch_duration_seconds"), "batch write p99"),
                      (quantile(0.99, "roomcast_gateway_upstream_request_duration_seconds", "method", 'upstream="persister"'), "gateway->persister {{method}} p99")], unit="s"))
    b.add(timeseries("Persister queue depth", "Messages waiting for a batch, per persister pod.",
                     [(f"max by (pod) ({sel('roomcast_persister_queue_depth')})", "{{pod}}")]), w=12)
    b.add(timeseries("Upstream errors from gateways", "Failed gRPC calls from gateways, by upstream and method.",
                     [(srate("roomcast_gateway_upstream_errors_total", "upstream, method"), "{{upstream}} {{method}}")], unit="reqps"), w=12)

    process_row(b)
    build_info_stat(b, w=24)
    return dashboard("roomcast-overview", "roomcast / Overview",
                     "Golden signals along the whole message path: client send -> fanout/Redis publish -> gateway delivery, and -> persister/MongoDB.",
                     b, "roomcast_build_info")


# --------------------------------------------------------------------------- gateway
def gateway() -> dict:
    b = Board()
    b.row("Connections")
    b.add(timeseries("Open connections by protocol", "roomcast_gateway_connections.",
                     [(f"sum by (protocol) ({sel('roomcast_gateway_connections')})", "{{protocol}}")], stack=True))
    b.add(timeseries("Connects by protocol", "New connections per second.",
                     [(srate("roomcast_gateway_connects_total", "protocol"), "{{protocol}}")], unit="reqps"))
    b.add(timeseries("Disconnects by reason", DISCONNECTS_DESC,
                     [(srate("roomcast_gateway_disconnects_total", "reason"), "{{reason}}")], unit="reqps", stack=True))
    b.add(timeseries("Refused connections by reason", REFUSED_DESC,
                     [(srate("roomcast_gateway_refused_connections_total", "reason"), "{{reason}}")], unit="reqps", stack=True))
    b.add(timeseries("Ready", "roomcast_gateway_ready per pod (1 = /readyz answers 200).",
                     [(f"max by (pod) ({sel('roomcast_gateway_ready')})", "{{pod}}")]))
    b.add(timeseries("Rooms with local members", "roomcast_gateway_rooms per pod.",
                     [(f"sum by (pod) ({sel('roomcast_gateway_rooms')})", "{{pod}}")]))

    b.row("WebTransport (HTTP/3 over QUIC)")
    b.add(timeseries("WebTransport sessions vs WebSocket", WT_SESSIONS_DESC,
                     [("sum(" + sel("roomcast_gateway_connections", WT) + ")", "webtransport"),
                      ("sum(" + sel("roomcast_gateway_connections", 'protocol!="webtransport"') + ")", "WebSocket (ws + socketio)")]), w=6)
    b.add(timeseries("QUIC RTT", WT_RTT_DESC,
                     [(quantile(0.5, "roomcast_gateway_webtransport_rtt_seconds"), "p50"),
                      (quantile(0.99, "roomcast_gateway_webtransport_rtt_seconds"), "p99")], unit="s"), w=6)
    b.add(timeseries("QUIC lost packets", WT_LOSS_DESC,
                     [(srate("roomcast_gateway_webtransport_lost_packets_total", "pod"), "{{pod}}")], unit="pps"), w=6)
    b.add(timeseries("Handshake failures", WT_HANDSHAKE_DESC,
                     [(srate("roomcast_gateway_webtransport_handshake_failures_total"), "handshake failures/s"),
                      # `or 0 * ...`: a door that never admitted a session has no connects series; show 0
                      (f'{srate("roomcast_gateway_connects_total", extra=WT)}\nor\n0 * {srate("roomcast_gateway_webtransport_handshake_failures_total")}',
                       "sessions admitted/s")], unit="reqps"), w=6)

    b.row("Frames and messages")
    b.add(timeseries("Frames in / out", "Frames received from and sent to clients, by protocol: WebSocket messages (ws), Socket.IO events (socketio), NDJSON lines on the WebTransport stream (webtransport).",
                     [(srate("roomcast_gateway_frames_received_total", "protocol"), "in {{protocol}}"),
                      (srate("roomcast_gateway_frames_sent_total", "protocol"), "out {{protocol}}")], unit="reqps"))
    b.add(timeseries("Client sends by result", "acked or error.",
                     [(srate("roomcast_gateway_messages_sent_total", "result"), "{{result}}")], unit="reqps", stack=True))
    b.add(timeseries("Failed sends (ratio)", SEND_ERRORS_DESC,
                     [(ratio(srate("roomcast_gateway_messages_sent_total", extra='result="error"'),
                             srate("roomcast_gateway_messages_sent_total")), "error ratio")], unit="percentunit"))
    b.add(timeseries("Send → ack latency", SEND_LATENCY_DESC,
                     [(quantile(0.5, "roomcast_gateway_send_duration_seconds", "protocol"), "{{protocol}} p50"),
                      (quantile(0.99, "roomcast_gateway_send_duration_seconds", "protocol"), "{{protocol}} p99")], unit="s"), w=12)
    b.add(timeseries("Bad frames by kind (incl. limit refusals)", BAD_FRAMES_DESC,
                     [(srate("roomcast_gateway_bad_frames_total", "kind"), "{{kind}}")], unit="reqps", stack=True), w=12)
    b.add(timeseries("Rate limited by scope", RATE_LIMITED_DESC,
                     [(srate("roomcast_gateway_rate_limited_total", "scope"), "{{scope}}")], unit="reqps", stack=True), w=12)
    b.add(timeseries("Sends unchecked (budgets failing open)", FAIL_OPEN_DESC,
                     [(srate("roomcast_gateway_budget_fail_open_total", "reason"), "{{reason}}")], unit="reqps"), w=12)

    b.row("Delivery")
    b.add(timeseries("Deliveries to clients", "Messages written to client connections per second, per pod.",
                     [(srate("roomcast_gateway_deliveries_total", "pod"), "{{pod}}")], unit="ops"))
    b.add(timeseries("Delivery latency", "Message timestamp to delivery: p50, p90, p99.",
                     [(quantile(0.5, "roomcast_gateway_delivery_latency_seconds"), "p50"),
                      (quantile(0.9, "roomcast_gateway_delivery_latency_seconds"), "p90"),
                      (quantile(0.99, "roomcast_gateway_delivery_latency_seconds"), "p99")], unit="s"))
    b.add(heatmap("Delivery latency distribution", "Histogram buckets of roomcast_gateway_delivery_latency_seconds.",
                  "roomcast_gateway_delivery_latency_seconds"))

    b.row("Backpressure")
    b.add(timeseries("Send queue", "Bytes queued for clients, per pod (sum over connections).",
                     [(f"sum by (pod) ({sel('roomcast_gateway_send_queue_bytes')})", "{{pod}}")], unit="bytes"))
    b.add(timeseries("Slow-consumer disconnects", "Clients disconnected because their send queue overflowed.",
                     [(srate("roomcast_gateway_slow_consumer_disconnects_total", "pod"), "{{pod}}")], unit="reqps"))
    b.add(timeseries("Gap fills by result", "Sequence gaps repaired from the persister: filled, sealed, error.",
                     [(srate("roomcast_gateway_gap_fills_total", "result"), "{{result}}")], unit="reqps", stack=True))
    b.add(timeseries("Joins by source", "Joins answered from a room's in-memory tail, or by reading the store.",
                     [(srate("roomcast_gateway_joins_total", "source"), "{{source}}")], unit="reqps", stack=True))
    b.add(timeseries("Room store reads by reason", "Store queries rooms make: first loads, joins older than the tail, gap fills, catch-ups.",
                     [(srate("roomcast_gateway_store_reads_total", "reason"), "{{reason}}")], unit="reqps", stack=True))

    b.row("Presence, typing and directory")
    b.add(timeseries("Presence entries", PRESENCE_ENTRIES_DESC,
                     [(f"sum by (pod) ({sel('roomcast_gateway_presence_entries')})", "{{pod}}")]))
    b.add(timeseries("Presence diffs sent", PRESENCE_DIFFS_DESC,
                     [(srate("roomcast_gateway_presence_diffs_total", "pod"), "{{pod}}")], unit="ops"))
    b.add(timeseries("Directory rooms", DIRECTORY_DESC,
                     [(f"max by (pod) ({sel('roomcast_gateway_directory_rooms')})", "{{pod}}")]))
    b.add(timeseries("Typing by result", TYPING_DESC,
                     [(srate("roomcast_gateway_typing_total", "result"), "{{result}}")], unit="reqps", stack=True), w=12)
    b.add(timeseries("Presence broker failures by op", PRESENCE_FAILURES_DESC,
                     [(srate("roomcast_gateway_presence_refresh_failures_total", "op"), "{{op}}")], unit="reqps", stack=True), w=12)

    b.row("Server API")
    b.add(timeseries("API requests by route and status", API_REQUESTS_DESC,
                     [(srate("roomcast_gateway_api_requests_total", "method, route, status"), "{{method}} {{route}} {{status}}")],
                     unit="reqps", stack=True))
    b.add(timeseries("API latency p99 by route", API_DURATION_DESC,
                     [(quantile(0.99, "roomcast_gateway_api_request_duration_seconds", "method, route"), "{{method}} {{route}} p99")],
                     unit="s"))
    b.add(timeseries("Refused API keys (401)", API_REFUSED_DESC,
                     [(srate("roomcast_gateway_api_requests_total", "route", 'status="401"'), "{{route}}")], unit="reqps", stack=True))

    b.row("Client token keys (JWKS)")
    b.add(timeseries("JWKS loads by result and trigger", JWKS_LOADS_DESC,
                     [(f"sum by (result, trigger) (increase({sel('roomcast_gateway_jwks_refreshes_total')}[{RI}]))",
                       "{{result}} {{trigger}}")]), w=12)
    b.add(timeseries("Keys held", JWKS_KEYS_DESC,
                     [(f"max by (pod) ({sel('roomcast_gateway_jwks_keys')})", "{{pod}}")]), w=12)

    b.row("Upstream gRPC (fanout, persister)")
    b.add(timeseries("Calls by upstream and method", "gRPC calls per second (from the latency histogram's count).",
                     [(srate("roomcast_gateway_upstream_request_duration_seconds_count", "upstream, method"), "{{upstream}} {{method}}")], unit="reqps"))
    b.add(timeseries("Call latency p99", "p99 by upstream and method.",
                     [(quantile(0.99, "roomcast_gateway_upstream_request_duration_seconds", "upstream, method"), "{{upstream}} {{method}}")], unit="s"))
    b.add(timeseries("Call errors", "Failed calls per second, by upstream and method.",
                     [(srate("roomcast_gateway_upstream_errors_total", "upstream, method"), "{{upstream}} {{method}}")], unit="reqps"))

    process_row(b)
    build_info_stat(b, w=24)
    return dashboard("roomcast-gateway", "roomcast / Gateway",
                     "WebSocket/Socket.IO/WebTransport gateways: connections, the WebTransport (QUIC) front door, frames, delivery latency, backpressure, presence, typing and the room directory, the server API, client token keys (JWKS), gRPC upstreams.",
                     b, "roomcast_gateway_ready")


# --------------------------------------------------------------------------- fanout
def fanout() -> dict:
    b = Board()
    b.row("Publishes to Redis")
    b.add(timeseries("Publishes by result", "roomcast_fanout_publishes_total.",
                     [(srate("roomcast_fanout_publishes_total", "result"), "{{result}}")], unit="reqps", stack=True))
    b.add(timeseries("Publish latency", "Redis publish duration: p50, p90, p99.",
                     [(quantile(0.5, "roomcast_fanout_publish_duration_seconds"), "p50"),
                      (quantile(0.9, "roomcast_fanout_publish_duration_seconds"), "p90"),
                      (quantile(0.99, "roomcast_fanout_publish_duration_seconds"), "p99")], unit="s"))
    b.add(timeseries("Publish error ratio", "Share of publishes that failed.",
                     [(ratio(srate("roomcast_fanout_publishes_total", extra='result="error"'),
                             srate("roomcast_fanout_publishes_total")), "error ratio")], unit="percentunit"))

    b.row("Subscriptions and deliveries")
    b.add(timeseries("Room subscriptions", "Rooms this fanout pod is subscribed to in Redis.",
                     [(f"sum by (pod) ({sel('roomcast_fanout_room_subscriptions')})", "{{pod}}")]))
    b.add(timeseries("Deliveries to gateways", "Messages streamed to gateways per second.",
                     [(srate("roomcast_fanout_deliveries_total", "pod"), "{{pod}}")], unit="ops"))
    b.add(timeseries("Connected gateways", "Gateway streams open on each fanout pod.",
                     [(f"sum by (pod) ({sel('roomcast_fanout_gateways')})", "{{pod}}")]))

    b.row("Redis")
    b.add(timeseries("Redis up", "1 = connected to Redis, per pod.",
                     [(f"max by (pod) ({sel('roomcast_fanout_redis_up')})", "{{pod}}")]))
    b.add(timeseries("Redis reconnects", "Reconnections to Redis per second.",
                     [(srate("roomcast_fanout_redis_reconnects_total", "pod"), "{{pod}}")], unit="reqps"))
    b.add(timeseries("Redis errors by operation", "Errors from Redis per second, by operation.",
                     [(srate("roomcast_fanout_redis_errors_total", "op"), "{{op}}")], unit="reqps", stack=True))

    process_row(b)
    build_info_stat(b, w=24)
    return dashboard("roomcast-fanout", "roomcast / Fanout",
                     "Fanout tier: publishes to Redis, room subscriptions, deliveries to gateways, Redis health.",
                     b, "roomcast_build_info", 'service="fanout"')


# --------------------------------------------------------------------------- persister
def persister() -> dict:
    b = Board()
    b.row("Queue")
    b.add(timeseries("Queue depth", "Messages waiting for a batch, per pod.",
                     [(f"max by (pod) ({sel('roomcast_persister_queue_depth')})", "{{pod}}")]), w=12)
    b.add(timeseries("Queue rejections", "Writes refused at once because the queue was full.",
                     [(srate("roomcast_persister_queue_rejections_total", "pod"), "{{pod}}")], unit="reqps"), w=12)

    b.row("Batches")
    b.add(timeseries("Batch size", "Messages per batch: p50, p99, mean.",
                     [(quantile(0.5, "roomcast_persister_batch_size"), "p50"),
                      (quantile(0.99, "roomcast_persister_batch_size"), "p99"),
                      (ratio(srate("roomcast_persister_batch_size_sum"), srate("roomcast_persister_batch_size_count")), "mean")]))
    b.add(timeseries("Batch write latency", "Batch write to the store, retries included: p50, p99.",
                     [(quantile(0.5, "roomcast_persister_batch_duration_seconds"), "p50"),
                      (quantile(0.99, "roomcast_persister_batch_duration_seconds"), "p99")], unit="s"))
    b.add(timeseries("Batches", "Batches written per second.",
                     [(srate("roomcast_persister_batch_duration_seconds_count", "pod"), "{{pod}}")], unit="ops"))

    b.row("Writes")
    b.add(timeseries("Documents written and duplicates", "Stored messages, and duplicates absorbed.",
                     [(srate("roomcast_persister_documents_written_total"), "written"),
                      (srate("roomcast_persister_duplicates_total"), "duplicates")], unit="ops"))
    b.add(timeseries("Write errors by kind", "Messages whose write failed after retries.",
                     [(srate("roomcast_persister_write_errors_total", "kind"), "{{kind}}")], unit="ops", stack=True))
    b.add(timeseries("Write retries", "Batch write attempts retried.",
                     [(srate("roomcast_persister_write_retries_total", "pod"), "{{pod}}")], unit="ops"))

    b.row("Queries")
    b.add(timeseries("Query latency p99", "history, resolve, max_seq.",
                     [(quantile(0.99, "roomcast_persister_query_duration_seconds", "query"), "{{query}} p99")], unit="s"), w=12)
    b.add(timeseries("Queries", "Queries per second by kind.",
                     [(srate("roomcast_persister_query_duration_seconds_count", "query"), "{{query}}")], unit="reqps"), w=12)

    process_row(b)
    build_info_stat(b, w=24)
    return dashboard("roomcast-persister", "roomcast / Persister",
                     "Persister tier: write queue, batching, MongoDB writes and errors, history queries.",
                     b, "roomcast_build_info", 'service="persister"')


BOARDS = {
    "overview.json": overview,
    "gateway.json": gateway,
    "fanout.json": fanout,
    "persister.json": persister,
}


def render(name: str) -> str:
    return json.dumps(BOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    for name in BOARDS:
        (out / name).write_text(render(name), encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
