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

variable "redis_mode" {
  description = "Which Memorystore holds the fanout's pub/sub and sequences: \"instance\" (Memorystore for Redis, one primary and a replica; deploy/overlays/gke) or \"cluster\" (Memorystore for Redis Cluster, sharded; deploy/overlays/gke-redis-cluster). Changing it on a running environment creates the other and tries to destroy the current one, which prevent_destroy stops (deploy/README.md, \"Redis: instance or cluster\")."
  type        = string
  default     = "instance"

  validation {
    condition     = contains(["instance", "cluster"], var.redis_mode)
    error_message = "The redis_mode must be \"instance\" or \"cluster\"."
  }
}

variable "redis_memory_size_gb" {
  description = "Memorystore for Redis capacity in GB (redis_mode = \"instance\")."
  type        = number
  default     = 1
}

variable "redis_reserved_ip_range" {
  description = "/29 range the Memorystore instance takes its IP from (redis_mode = \"instance\"). deploy/overlays/gke/networkpolicies.yaml allows egress to exactly this range (the offline checks compare them)."
  type        = string
  default     = "10.30.0.0/29"
}

variable "redis_cluster_shard_count" {
  description = "Memorystore for Redis Cluster: number of shards (redis_mode = \"cluster\"). Rooms are spread over them by hash slot; each shard has one primary."
  type        = number
  default     = 3

  validation {
    condition     = var.redis_cluster_shard_count >= 1 && floor(var.redis_cluster_shard_count) == var.redis_cluster_shard_count
    error_message = "The redis_cluster_shard_count must be a whole number of at least 1."
  }
}

variable "redis_cluster_replica_count" {
  description = "Memorystore for Redis Cluster: replicas per shard, 0 to 2 (redis_mode = \"cluster\"). 1 or more for automatic failover, as the instance's STANDARD_HA tier has."
  type        = number
  default     = 1

  validation {
    condition     = contains([0, 1, 2], var.redis_cluster_replica_count)
    error_message = "The redis_cluster_replica_count must be 0, 1 or 2."
  }
}

variable "redis_cluster_node_type" {
  description = "Memorystore for Redis Cluster node type (redis_mode = \"cluster\"): REDIS_SHARED_CORE_NANO (not for production), REDIS_STANDARD_SMALL, REDIS_HIGHMEM_MEDIUM or REDIS_HIGHMEM_XLARGE."
  type        = string
  default     = "REDIS_STANDARD_SMALL"

  validation {
    condition     = contains(["REDIS_SHARED_CORE_NANO", "REDIS_STANDARD_SMALL", "REDIS_HIGHMEM_MEDIUM", "REDIS_HIGHMEM_XLARGE"], var.redis_cluster_node_type)
    error_message = "The redis_cluster_node_type must be one of REDIS_SHARED_CORE_NANO, REDIS_STANDARD_SMALL, REDIS_HIGHMEM_MEDIUM, REDIS_HIGHMEM_XLARGE."
  }
}

variable "redis_psc_subnet_cidr" {
  description = "Range of the subnet that holds the Memorystore for Redis Cluster's Private Service Connect endpoints (redis_mode = \"cluster\"; two addresses per cluster). deploy/overlays/gke-redis-cluster/networkpolicies.yaml allows egress to exactly this range (the offline checks compare them)."
  type        = string
  default     = "10.30.1.0/28"
}

variable "deployer_service_account_id" {
  description = "Account ID of the Google service account that CI uses to push images and apply the manifests (a minimum-permission identity, not the project owner)."
  type        = string
  default     = "roomcast-deployer"
}

variable "deletion_protection" {
  description = "Deletion protection of the GKE cluster only (its deletion_protection argument). The Redis instance or cluster (and the KMS key) are protected by lifecycle prevent_destroy, which no variable can switch: to destroy Redis, delete that block from redis.tf or redis_cluster.tf first. Turn off only to tear the environment down."
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
