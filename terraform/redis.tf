# Memorystore for Redis, the fanout's pub/sub and per-room sequences. Reached only
# from the VPC (direct peering on redis_reserved_ip_range), with AUTH.
resource "google_redis_instance" "roomcast" {
  name               = var.name_prefix
  region             = var.region
  tier               = "STANDARD_HA" # replica in another zone, automatic failover
  memory_size_gb     = var.redis_memory_size_gb
  redis_version      = "REDIS_7_2"
  authorized_network = google_compute_network.vpc.id
  connect_mode       = "DIRECT_PEERING"
  reserved_ip_range  = var.redis_reserved_ip_range
  auth_enabled       = true
  # The fanout's Redis client speaks plain TCP; traffic never leaves the VPC.
  # Switch to SERVER_AUTHENTICATION once the client has TLS (terraform/.checkov.yaml).
  transit_encryption_mode = "DISABLED"

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
