"""gcs package."""
