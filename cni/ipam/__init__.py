"""IPAM building blocks of the host-local plugin (stdlib only: they run on every exec).

`config` turns the network config into validated range sets, `allocator` holds the pure
allocation policy and the operations on a `Store`, `disk_store` is the on-disk store that is
layout-compatible with the reference host-local plugin.
"""
