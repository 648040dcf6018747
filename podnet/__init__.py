"""podnet: the shared foundation (netlink, netns, xtables, store, reconcile) and the podnet CLI."""
