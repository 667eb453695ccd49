locals {
  services = [
    "artifactregistry.googleapis.com",
    "binaryauthorization.googleapis.com",
    "cloudkms.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "redis.googleapis.com",
  ]
  # Memorystore for Redis Cluster's Private Service Connect endpoints
  # (redis_cluster.tf) need these two as well.
  cluster_services = [
    "networkconnectivity.googleapis.com",
    "serviceconsumermanagement.googleapis.com",
  ]
}

resource "google_project_service" "enabled" {
  for_each = toset(concat(local.services, local.redis_cluster ? local.cluster_services : []))

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
