"""podnet-kubelet: the node agent.

node.py registers the Node and keeps its Lease and status fresh; sandbox.py gives each pod a
network namespace wired by CNI (podnet.cniruntime); status.py computes container specs and pod
status (pure); podworker.py syncs one pod at a time per pod thread (start, restart, graceful
termination, final delete); kubelet.py is the loop (informer, PLEG relist, start-up adoption and
GC); __main__.py the flags.  Containers run through podnet.runtime.
"""
