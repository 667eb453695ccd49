# Cloud Armor on the gateway's backend (attached by deploy/overlays/gke/backendconfig.yaml,
# spec.securityPolicy). Behind the load balancer every client arrives from Google's
# proxy addresses, so the gateway's own per-IP connection limit is off there
# (ROOMCAST_MAX_CONNECTIONS_PER_IP=0): the per-client limit is enforced here, at the
# edge, on the client's real address. A Socket.IO or /ws connection is one request
# (the upgrade) plus, for Socket.IO's long-polling start, a few more; a reconnect storm
# or a scripted flood from one address is throttled with 429 before it reaches a pod.
resource "google_compute_security_policy" "edge" {
  name        = "${var.name_prefix}-edge"
  description = "roomcast gateway: per-client-IP request rate limit at the load balancer."
  type        = "CLOUD_ARMOR"

  rule {
    description = "Deny Log4j JNDI lookups (CVE-2021-44228), Google's preconfigured WAF rule: roomcast is not Java, but the policy guards the edge whatever sits behind it."
    action      = "deny(403)"
    priority    = 900

    match {
      expr {
        expression = "evaluatePreconfiguredWaf('cve-canary')"
      }
    }
  }

  rule {
    description = "Each client IP may make edge_requests_per_minute requests a minute; beyond it, 429."
    action      = "throttle"
    priority    = 1000

    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }

    rate_limit_options {
      conform_action = "allow"
      exceed_action  = "deny(429)"
      enforce_on_key = "IP"

      rate_limit_threshold {
        count        = var.edge_requests_per_minute
        interval_sec = 60
      }
    }
  }

  rule {
    description = "Default: allow what no rule above stopped."
    action      = "allow"
    priority    = 2147483647

    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
  }

  depends_on = [google_project_service.enabled]
}
