//! The OCI registry client: blobs, manifests, indexes, artifacts.
