resource "google_compute_network" "vpc" {
  name                    = "${var.name_prefix}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.enabled]
}

# Nodes on the primary range; pods and Services on the secondary ranges (VPC-native).
resource "google_compute_subnetwork" "gke" {
  name                     = "${var.name_prefix}-gke"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = var.pods_cidr
  }

  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = var.services_cidr
  }

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Explicit, logged default deny for ingress to the VPC (the implied rule is not
# logged). GKE adds its own higher-priority rules for the control plane, the
# nodes and the load balancer's health checks.
resource "google_compute_firewall" "deny_all_ingress" {
  name      = "${var.name_prefix}-deny-all-ingress"
  network   = google_compute_network.vpc.id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }

  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "EXCLUDE_ALL_METADATA"
  }
}

# Private nodes have no public IPs: Cloud NAT gives them egress (image pulls from
# outside Google, MongoDB Atlas). The NAT uses one reserved regional IP so that
# Atlas's IP access list can name it (the only other regional address is the
# optional WebTransport one below).
resource "google_compute_address" "nat" {
  name         = "${var.name_prefix}-nat"
  region       = var.region
  address_type = "EXTERNAL"
  network_tier = "PREMIUM"

  depends_on = [google_project_service.enabled]
}

resource "google_compute_router" "nat" {
  name    = "${var.name_prefix}-router"
  region  = var.region
  network = google_compute_network.vpc.id
}

resource "google_compute_router_nat" "nat" {
  name                               = "${var.name_prefix}-nat"
  router                             = google_compute_router.nat.name
  region                             = var.region
  nat_ip_allocate_option             = "MANUAL_ONLY"
  nat_ips                            = [google_compute_address.nat.self_link]
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# The Ingress's address: global, for the external Application Load Balancer.
# Its name is the Ingress annotation kubernetes.io/ingress.global-static-ip-name.
resource "google_compute_global_address" "ingress" {
  name         = "${var.name_prefix}-ingress"
  address_type = "EXTERNAL"
  ip_version   = "IPV4"

  depends_on = [google_project_service.enabled]
}

# The WebTransport address (optional, webtransport_enabled): regional, for the
# regional external passthrough Network Load Balancer of the UDP Service
# gateway-webtransport (deploy/overlays/gke-webtransport), which names it in its
# annotation networking.gke.io/load-balancer-ip-addresses. The Ingress's global
# address cannot serve: a passthrough load balancer's forwarding rule is
# regional, and the global external Application Load Balancer carries no QUIC to
# the pods. PREMIUM, the tier GKE gives the Service's load balancer by default.
#
# No firewall rule for it: GKE creates (and deletes with the Service) the rules of
# its own load balancers, UDP 443 to the nodes from 0.0.0.0/0 (or the Service's
# loadBalancerSourceRanges) and the health checkers to the healthCheckNodePort, at
# priority 1000, ahead of deny_all_ingress (65534).
resource "google_compute_address" "webtransport" {
  count = var.webtransport_enabled ? 1 : 0

  name         = "${var.name_prefix}-webtransport"
  region       = var.region
  address_type = "EXTERNAL"
  network_tier = "PREMIUM"

  depends_on = [google_project_service.enabled]
}

# TLS 1.2+ with modern ciphers; the FrontendConfig names it (spec.sslPolicy).
resource "google_compute_ssl_policy" "modern" {
  name            = "${var.name_prefix}-modern-tls"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"

  depends_on = [google_project_service.enabled]
}
