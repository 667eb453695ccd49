# A minimum-permission identity for CI / operators that deploy roomcast.
#
# Google IAM gives it only what `gcloud container clusters get-credentials` needs
# (roles/container.clusterViewer: container.clusters.get) and image pushes to the
# one repository. Everything it may do inside the cluster comes from Kubernetes
# RBAC in deploy/rbac/ (one namespace, the object kinds roomcast uses), which a
# cluster admin applies once.
resource "google_service_account" "deployer" {
  account_id   = var.deployer_service_account_id
  display_name = "roomcast deployer (CI)"
}

resource "google_project_iam_member" "deployer_cluster_viewer" {
  project = var.project_id
  role    = "roles/container.clusterViewer"
  member  = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_artifact_registry_repository_iam_member" "deployer_push" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.deployer.email}"
}
