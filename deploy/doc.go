// Package deploy holds Cascade's deployment files: the container image
// (Dockerfile), a docker compose stack with its observability services,
// Kubernetes manifests (kustomize base and an example overlay) and a Grafana
// dashboard. It has no code; its tests validate those files offline: every
// manifest decodes strictly into the Kubernetes API types, cross-references
// resolve, and every gateway config passes the same strict loader as
// `cascade check-config`.
package deploy
