output "ingress_ip" {
  description = "Global static IP of the Ingress: point the chat host name's A record here."
  value       = google_compute_global_address.ingress.address
}

output "ingress_ip_name" {
  description = "Name of the global address, as used by the Ingress annotation kubernetes.io/ingress.global-static-ip-name."
  value       = google_compute_global_address.ingress.name
}

output "ssl_policy_name" {
  description = "Name of the TLS policy, as used by the FrontendConfig's spec.sslPolicy."
  value       = google_compute_ssl_policy.modern.name
}

output "redis_mode" {
  description = "Which Memorystore this environment has (var.redis_mode): \"instance\" goes with deploy/overlays/gke, \"cluster\" with deploy/overlays/gke-redis-cluster."
  value       = var.redis_mode
}

output "redis_host" {
  description = "Private IP of Memorystore, for ROOMCAST_REDIS_URL (rediss://:AUTH@HOST:PORT) in deploy/overlays/gke/secrets.env. Null with redis_mode = \"cluster\"."
  value       = one(google_redis_instance.roomcast[*].host)
}

output "redis_port" {
  description = "Port of Memorystore: 6378, its TLS port (in-transit encryption on; there is no plaintext port). Null with redis_mode = \"cluster\"."
  value       = one(google_redis_instance.roomcast[*].port)
}

output "redis_cluster_discovery_endpoint" {
  description = "ADDRESS:PORT of the Memorystore for Redis Cluster's discovery endpoint, for ROOMCAST_REDIS_CLUSTER (rediss://ADDRESS:PORT) in deploy/overlays/gke-redis-cluster/secrets.env. Null with redis_mode = \"instance\"."
  value       = one([for ep in flatten(google_redis_cluster.roomcast[*].discovery_endpoints) : "${ep.address}:${ep.port}"])
}

# The CA certificates that sign the server certificates of whichever Memorystore
# exists: the instance's server_ca_certs, or the cluster's managed_server_ca. All of
# them: a new CA is published years before the old one expires, and clients must
# trust both across the rotation.
locals {
  redis_ca_certs = concat(
    [for ca in flatten(google_redis_instance.roomcast[*].server_ca_certs) : ca.cert],
    flatten([for ca in flatten(google_redis_cluster.roomcast[*].managed_server_ca) : [for c in ca.ca_certs : c.certificates]]),
  )
}

output "redis_ca_pem" {
  description = "PEM bundle of the Memorystore CA(s), for the fanout's ROOMCAST_REDIS_CA: terraform output -raw redis_ca_pem > deploy/overlays/gke/redis-ca.pem (both modes; deploy/README.md). Not a secret; marked sensitive only to keep the PEM out of plan and apply logs."
  value       = "${join("\n", [for pem in local.redis_ca_certs : trimspace(pem)])}\n"
  sensitive   = true
}

output "nat_egress_ip" {
  description = "The cluster's only egress IP (Cloud NAT): add it to the MongoDB Atlas IP access list."
  value       = google_compute_address.nat.address
}

output "artifact_registry" {
  description = "Image registry prefix for the kustomize images (deploy/overlays/gke/kustomization.yaml)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.primary.name
}

output "get_credentials_command" {
  description = "Fetches cluster credentials into ~/.kube/config (run it as the deployer identity, not as a project owner; see deploy/README.md)."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.primary.name} --region ${var.region} --project ${var.project_id}"
}

output "deployer_service_account" {
  description = "Email of the minimum-permission deployer service account (subject of deploy/rbac)."
  value       = google_service_account.deployer.email
}

output "security_policy_name" {
  description = "Name of the Cloud Armor policy, as used by the gateway BackendConfig's spec.securityPolicy.name."
  value       = google_compute_security_policy.edge.name
}

output "webtransport_ip" {
  description = "Regional static IP of the WebTransport UDP load balancer (webtransport_enabled): point the WebTransport host name's A record here (the host of ROOMCAST_WEBTRANSPORT_URL). Null when disabled."
  value       = one(google_compute_address.webtransport[*].address)
}

output "webtransport_ip_name" {
  description = "Name of the WebTransport address, as used by the Service annotation networking.gke.io/load-balancer-ip-addresses (deploy/overlays/gke-webtransport). Null when disabled."
  value       = one(google_compute_address.webtransport[*].name)
}
