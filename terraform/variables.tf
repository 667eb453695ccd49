variable "project_id" {
  description = "ID of the GCP project that holds everything (it must already exist, with billing enabled)."
  type        = string
}

variable "region" {
  description = "Region of the regional GKE cluster, the subnet, Memorystore, Cloud NAT and the image registry."
  type        = string
  default     = "europe-west1"
}

variable "name_prefix" {
  description = "Prefix of every resource name. The Kubernetes manifests refer to the global IP (NAME-ingress) and the TLS policy (NAME-modern-tls) by these names."
  type        = string
  default     = "roomcast"
}

variable "subnet_cidr" {
  description = "Primary range of the cluster subnet (the nodes)."
  type        = string
  default     = "10.10.0.0/20"
}

variable "pods_cidr" {
  description = "Secondary range of the subnet for pod IPs (VPC-native cluster)."
  type        = string
  default     = "10.20.0.0/14"
}

variable "services_cidr" {
  description = "Secondary range of the subnet for Service cluster IPs."
  type        = string
  default     = "10.24.0.0/20"
}

variable "master_cidr" {
  description = "/28 range for the GKE control plane's private endpoint; must not overlap the ranges above."
  type        = string
  default     = "172.16.0.0/28"
}

variable "master_authorized_networks" {
  description = "CIDR blocks (with a display name) allowed to reach the cluster's public control-plane endpoint, e.g. the office or the CI runners. Empty means no one outside Google's networks."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []
}

variable "release_channel" {
  description = "GKE release channel: RAPID, REGULAR or STABLE. It drives automatic control-plane and node upgrades."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "The release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "node_machine_type" {
  description = "Machine type of the autoscaling node pool."
  type        = string
  default     = "e2-standard-4"
}

variable "node_min_count" {
  description = "Minimum number of nodes per zone of the node pool (a regional pool spans three zones)."
  type        = number
  default     = 1
}

variable "node_max_count" {
  description = "Maximum number of nodes per zone of the node pool."
  type        = number
  default     = 4
}

variable "node_disk_size_gb" {
  description = "Boot disk size of each node, in GB."
  type        = number
  default     = 50
}

variable "redis_memory_size_gb" {
  description = "Memorystore for Redis capacity in GB."
  type        = number
  default     = 1
}

variable "redis_reserved_ip_range" {
  description = "/29 range the Memorystore instance takes its IP from. deploy/overlays/gke/networkpolicies.yaml allows egress to exactly this range (the offline checks compare them)."
  type        = string
  default     = "10.30.0.0/29"
}

variable "deployer_service_account_id" {
  description = "Account ID of the Google service account that CI uses to push images and apply the manifests (a minimum-permission identity, not the project owner)."
  type        = string
  default     = "roomcast-deployer"
}

variable "deletion_protection" {
  description = "Deletion protection of the GKE cluster only (its deletion_protection argument). The Redis instance (and the KMS key) are protected by lifecycle prevent_destroy, which no variable can switch: to destroy Redis, delete that block from redis.tf first. Turn off only to tear the environment down."
  type        = bool
  default     = true
}

variable "edge_requests_per_minute" {
  description = "Cloud Armor: requests one client IP may make per minute before it gets 429 (terraform/armor.tf). A WebSocket client makes one per connection, a Socket.IO client a few more while it long-polls; the default leaves room for an office of a few hundred behind one NAT."
  type        = number
  default     = 1200
}

variable "webtransport_enabled" {
  description = "Reserve the regional static IP of the WebTransport UDP load balancer (NAME-webtransport), for the optional overlay deploy/overlays/gke-webtransport. Off: no address, and that overlay's Service, which names it, gets no load balancer."
  type        = bool
  default     = false
}
