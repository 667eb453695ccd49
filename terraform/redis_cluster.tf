# Memorystore for Redis Cluster (redis_mode = "cluster"), instead of the instance
# in redis.tf: rooms spread over shards by hash slot, with sharded pub/sub
# (SSUBSCRIBE/SPUBLISH). deploy/overlays/gke-redis-cluster.
#
# The cluster is reached over Private Service Connect: Memorystore creates its
# endpoints (forwarding rules) in the subnet the service connection policy names,
# redis_psc. Clients connect to the discovery endpoint (port 6379) and from there
# to the shards' nodes on ports 11000-13047 of the same endpoints; the gateway
# pods' NetworkPolicy allows exactly that subnet and those ports (the checker
# compares the subnet's range with it).

resource "google_compute_subnetwork" "redis_psc" {
  count = local.redis_cluster ? 1 : 0

  name                     = "${var.name_prefix}-redis-psc"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.redis_psc_subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Lets Memorystore for Redis (service class gcp-memorystore-redis) create its PSC
# endpoints in this VPC and region, in redis_psc only. One policy per network,
# region and service class.
resource "google_network_connectivity_service_connection_policy" "redis" {
  count = local.redis_cluster ? 1 : 0

  name          = "${var.name_prefix}-redis"
  location      = var.region
  service_class = "gcp-memorystore-redis"
  description   = "Memorystore for Redis Cluster endpoints for roomcast, in the redis-psc subnet only."
  network       = google_compute_network.vpc.id

  psc_config {
    subnetworks = [google_compute_subnetwork.redis_psc[0].id]
  }

  depends_on = [google_project_service.enabled]
}

resource "google_redis_cluster" "roomcast" {
  count = local.redis_cluster ? 1 : 0

  name          = var.name_prefix
  region        = var.region
  shard_count   = var.redis_cluster_shard_count
  replica_count = var.redis_cluster_replica_count # per shard, in other zones
  node_type     = var.redis_cluster_node_type

  # TLS with the cluster's own CA (managed_server_ca; output redis_ca_pem): the
  # fanout connects with rediss:// and ROOMCAST_REDIS_CA.
  transit_encryption_mode = "TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION"

  # No AUTH. The only other mode, IAM_AUTH, takes a Google access token as the
  # password, which expires within the hour: the fanout's client sends a fixed
  # password at each (re)connect and refreshes nothing, so it would be locked out
  # an hour after it started. What stands in for a password: the cluster has no
  # address but its PSC endpoints in redis_psc, which nothing outside this VPC
  # reaches (no peering, VPN or interconnect is set up here), and inside the GKE
  # cluster the namespace's default-deny NetworkPolicy lets only the gateway pods
  # (the fanout) out to that subnet. Anything else in the VPC (pods of other
  # namespaces without such a policy, VMs) could connect: keep the VPC to roomcast,
  # or move to AUTH_MODE_IAM_AUTH once the client refreshes its token.
  authorization_mode = "AUTH_MODE_DISABLED"

  psc_configs {
    network = google_compute_network.vpc.id
  }

  zone_distribution_config {
    mode = "MULTI_ZONE"
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "SATURDAY"
      start_time {
        hours   = 3
        minutes = 0
        seconds = 0
        nanos   = 0
      }
    }
  }

  # As the instance: Memorystore's own deletion protection, and prevent_destroy so
  # that no plan destroys the rooms' sequences; delete that block deliberately first.
  deletion_protection_enabled = true
  lifecycle {
    prevent_destroy = true
  }

  depends_on = [
    google_network_connectivity_service_connection_policy.redis,
    google_project_service.enabled,
  ]
}
