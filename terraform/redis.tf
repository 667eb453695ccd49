# Memorystore, the fanout's pub/sub and per-room sequences: one of two kinds,
# chosen by var.redis_mode.
#
#   instance  Memorystore for Redis (this file): one primary with a replica in
#             another zone, reached over direct peering on redis_reserved_ip_range,
#             with AUTH and TLS. deploy/overlays/gke.
#   cluster   Memorystore for Redis Cluster (redis_cluster.tf): shards, sharded
#             pub/sub, reached over Private Service Connect, with TLS.
#             deploy/overlays/gke-redis-cluster.
#
# Both serve TLS with a CA of their own (output redis_ca_pem), which the fanout is
# given (ROOMCAST_REDIS_CA). Switching modes creates the other kind and destroys
# the current one: prevent_destroy stops that until its block is deleted
# deliberately. The new one starts empty; the gateways reseed each room's counter
# from the store (deploy/README.md, "Redis: instance or cluster").
locals {
  redis_instance = var.redis_mode == "instance"
  redis_cluster  = var.redis_mode == "cluster"
}

resource "google_redis_instance" "roomcast" {
  count = local.redis_instance ? 1 : 0

  name               = var.name_prefix
  region             = var.region
  tier               = "STANDARD_HA" # replica in another zone, automatic failover
  memory_size_gb     = var.redis_memory_size_gb
  redis_version      = "REDIS_7_2"
  authorized_network = google_compute_network.vpc.id
  connect_mode       = "DIRECT_PEERING"
  reserved_ip_range  = var.redis_reserved_ip_range
  auth_enabled       = true
  # TLS on port 6378 (no plaintext port is left), with a server certificate from the
  # instance's own CA (server_ca_certs; output redis_ca_pem). The fanout connects with
  # rediss:// and that CA (ROOMCAST_REDIS_CA). Memorystore sets this at creation
  # only: an instance created without TLS is replaced, which prevent_destroy
  # stops (deploy/README.md, "Redis: instance or cluster", switching).
  transit_encryption_mode = "SERVER_AUTHENTICATION"

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

  # Holds every room's sequence counters: `terraform destroy` (or a change that
  # forces replacement) fails instead of losing them. Terraform allows no variable
  # here, so var.deletion_protection does not cover this instance: to tear it down,
  # delete this block first, deliberately.
  lifecycle {
    prevent_destroy = true
  }

  depends_on = [google_project_service.enabled]
}

# The instance had no count before redis_mode: its state moves to index 0 instead
# of being planned as a new instance.
moved {
  from = google_redis_instance.roomcast
  to   = google_redis_instance.roomcast[0]
}
