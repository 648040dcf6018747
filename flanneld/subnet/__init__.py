"""Subnet managers: who owns which subnet (etcd keys with TTLs, or Kubernetes Node podCIDRs)."""
