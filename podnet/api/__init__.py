"""Kubernetes API helpers shared by every component (selectors; later the client and informers)."""
