"""Storage seam: the etcd-backed Store (the only importer of etcd3) and an in-memory Store for tests."""
