"""flanneld backends: vxlan, host-gw and udp (see base.py for the shared diff-and-apply)."""
