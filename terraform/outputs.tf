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

output "redis_host" {
  description = "Private IP of Memorystore, for ROOMCAST_REDIS_URL in deploy/overlays/gke/secrets.env."
  value       = google_redis_instance.roomcast.host
}

output "redis_port" {
  description = "Port of Memorystore."
  value       = google_redis_instance.roomcast.port
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
