# Versions are pinned: Terraform within 1.x, the Google provider exactly (its
# argument names are checked offline against terraform/schema/, extracted from
# the same provider version). Commit .terraform.lock.hcl after the first init.
terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "= 6.50.0"
    }
  }

  # State in a versioned GCS bucket, never on a laptop or a public store. The
  # bucket is given at init time (see backend.hcl.example and deploy/README.md):
  #   terraform init -backend-config=backend.hcl
  backend "gcs" {
    prefix = "roomcast/state"
  }
}
