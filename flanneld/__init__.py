"""flanneld: a per-host subnet leaser (etcd or Kubernetes API backed) with vxlan, host-gw and udp
backends, programming the kernel through podnet's netlink/xtables seams (`podnet-flanneld`)."""
