# Application-layer encryption of Kubernetes Secrets (etcd) with a key of our own.
resource "google_kms_key_ring" "gke" {
  name     = "${var.name_prefix}-gke"
  location = var.region

  depends_on = [google_project_service.enabled]
}

resource "google_kms_crypto_key" "gke_secrets" {
  name            = "${var.name_prefix}-gke-secrets"
  key_ring        = google_kms_key_ring.gke.id
  rotation_period = "7776000s" # 90 days

  lifecycle {
    prevent_destroy = true
  }
}

# The GKE service agent encrypts and decrypts with the key.
resource "google_kms_crypto_key_iam_member" "gke_secrets" {
  crypto_key_id = google_kms_crypto_key.gke_secrets.id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:service-${data.google_project.this.number}@container-engine-robot.iam.gserviceaccount.com"

  # The GKE service agent exists once the Kubernetes Engine API is enabled.
  depends_on = [google_project_service.enabled]
}
