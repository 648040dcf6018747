"""Kubernetes-compatible API server backed by etcd (issue 3)."""
