"""CNI plugins (spec 1.1): bridge, host-local, loopback, portmap; stdlib-only entry path."""
