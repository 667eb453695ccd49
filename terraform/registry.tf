# Container images. Tags are immutable: a pushed tag (the commit) can never be
# re-pointed at another build, and pushing an existing tag again fails. The tag only
# names a build for people; the gke overlay deploys by digest (images: digest, set
# by CI with `kustomize edit set image`; deploy/README.md step 6).
resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = var.name_prefix
  format        = "DOCKER"
  description   = "roomcast container images"

  docker_config {
    immutable_tags = true
  }

  depends_on = [google_project_service.enabled]
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.nodes.email}"
}
