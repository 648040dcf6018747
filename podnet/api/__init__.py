"""Kubernetes API helpers shared by every component: label/field selectors, a kubeconfig
loader, a synchronous API client (keep-alive pool, patch types, subresources, watch) and a
list/watch/relist informer whose handlers only mark keys dirty for a reconcile Runner."""
