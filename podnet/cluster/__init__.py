"""`podnet up | down | status`: a whole cluster on one machine, in network namespaces.

plan.py computes the topology (names, addresses, directories, configs) as pure data; manifest.py
records every namespace and process *before* it is created, so `down` (or a failed `up`) removes
exactly what was made; supervise.py starts daemons inside namespaces and stops them only by their
recorded PID (checked against the process start time, so a reused PID is never signalled);
forward.py relays the API server's port from the root namespace's loopback into the control-plane
namespace without changing anything in the root namespace; up.py orchestrates.
"""
