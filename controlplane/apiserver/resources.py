"""The table of resources the API server serves, with their upstream names, verbs and selectors.

Everything that depends on "which resource is this" (discovery, routing, tables, defaulting,
validation, field selectors) looks the resource up here, so adding a kind is one table entry.
Names, shortNames, verbs and categories are copied from a kube-apiserver v1.31 discovery answer:
kubectl has no client-side fallback for shortNames (reference proxy_apiserver.md finding 0.4).
"""

from __future__ import annotations

from dataclasses import dataclass

# Verb order as kube-apiserver lists them in discovery documents.
STANDARD_VERBS: tuple[str, ...] = (
    "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch",
)
CREATE_ONLY: tuple[str, ...] = ("create",)

# Every resource supports these two field selectors (apiserver generic registry DefaultClusterScopedAttr /
# DefaultNamespaceScopedAttr).
COMMON_FIELDS: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class Subresource:
    """A subresource in discovery: `pods/binding` is kind Binding, `*/scale` autoscaling/v1 Scale."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str | None = None  # None = same group/version as the parent resource
    version: str | None = None


SUBRESOURCES: dict[str, Subresource] = {
    "binding": Subresource("binding", "Binding", CREATE_ONLY, "", "v1"),
    "scale": Subresource("scale", "Scale", ("get", "patch", "update"), "autoscaling", "v1"),
    "log": Subresource("log", "Pod", ("get",)),
    "finalize": Subresource("finalize", "Namespace", ("update",)),
}


@dataclass(frozen=True)
class Resource:
    """One REST resource (`group/version/plural`) and its upstream metadata."""

    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    subresources: tuple[str, ...] = ()  # "status", "scale", "binding", "log"
    list_kind: str = ""
    field_selectors: frozenset[str] = COMMON_FIELDS
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.list_kind:
            object.__setattr__(self, "list_kind", self.kind + "List")

    @property
    def api_version(self) -> str:
        """`v1` for the core group, `<group>/<version>` otherwise (the objects' apiVersion)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        """Same as api_version; named for discovery documents (APIResourceList.groupVersion)."""
        return self.api_version

    @property
    def url_prefix(self) -> str:
        """`/api/v1` or `/apis/<group>/<version>`."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def scope(self) -> str:
        """`Namespaced` or `Cluster` (aggregated discovery's spelling)."""
        return "Namespaced" if self.namespaced else "Cluster"

    def has_verb(self, verb: str) -> bool:
        return verb in self.verbs

    def has_subresource(self, name: str) -> bool:
        return name in self.subresources

    def subresource_kind(self, name: str) -> tuple[str, str, str]:
        """(group, version, kind) of a subresource's body: status -> the parent kind, scale -> Scale."""
        if name == "status":
            return self.group, self.version, self.kind
        sub = SUBRESOURCES[name]
        group = self.group if sub.group is None else sub.group
        version = self.version if sub.version is None else sub.version
        return group, version, sub.kind

    def subresource_verbs(self, name: str) -> tuple[str, ...]:
        if name == "status":
            return ("get", "patch", "update")
        return SUBRESOURCES[name].verbs


def _fields(*extra: str) -> frozenset[str]:
    return COMMON_FIELDS | frozenset(extra)


# Field selectors upstream allows per kind (pkg/registry/<kind>/strategy.go *ToSelectableFields).
POD_FIELDS = _fields(
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
    "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs", "status.nominatedNodeName",
)
EVENT_FIELDS = _fields(
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
    "reason", "reportingComponent", "source", "type",
)

ALL = ("all",)

RESOURCES: tuple[Resource, ...] = (
    # core/v1
    Resource("", "v1", "namespaces", "namespace", "Namespace", False, ("ns",),
             verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
             subresources=("finalize", "status"), field_selectors=_fields("status.phase")),
    Resource("", "v1", "nodes", "node", "Node", False, ("no",), subresources=("status",),
             field_selectors=_fields("spec.unschedulable")),
    Resource("", "v1", "pods", "pod", "Pod", True, ("po",), subresources=("status", "binding", "log"),
             field_selectors=POD_FIELDS, categories=ALL),
    Resource("", "v1", "services", "service", "Service", True, ("svc",), subresources=("status",),
             field_selectors=_fields("spec.clusterIP", "spec.type"), categories=ALL),
    Resource("", "v1", "endpoints", "endpoints", "Endpoints", True, ("ep",)),
    Resource("", "v1", "replicationcontrollers", "replicationcontroller", "ReplicationController", True,
             ("rc",), subresources=("status", "scale"), field_selectors=_fields("status.replicas"),
             categories=ALL),
    Resource("", "v1", "events", "event", "Event", True, ("ev",), field_selectors=EVENT_FIELDS),
    Resource("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
    Resource("", "v1", "secrets", "secret", "Secret", True, field_selectors=_fields("type")),
    Resource("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",)),
    # discovery.k8s.io/v1
    Resource("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True),
    # networking.k8s.io/v1
    Resource("networking.k8s.io", "v1", "networkpolicies", "networkpolicy", "NetworkPolicy", True,
             ("netpol",)),
    # coordination.k8s.io/v1
    Resource("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
    # apps/v1
    Resource("apps", "v1", "deployments", "deployment", "Deployment", True, ("deploy",),
             subresources=("status", "scale"), categories=ALL),
    Resource("apps", "v1", "replicasets", "replicaset", "ReplicaSet", True, ("rs",),
             subresources=("status", "scale"), field_selectors=_fields("status.replicas"),
             categories=ALL),
    # rbac.authorization.k8s.io/v1
    Resource("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", True),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", True),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", False),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding",
             "ClusterRoleBinding", False),
    # authorization.k8s.io/v1: a virtual resource, only POSTed (kubectl auth can-i).
    Resource("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "selfsubjectaccessreview",
             "SelfSubjectAccessReview", False, verbs=CREATE_ONLY, field_selectors=frozenset()),
    # kubectl auth can-i --list and kubectl auth whoami: virtual, create only, like the above.
    Resource("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "selfsubjectrulesreview",
             "SelfSubjectRulesReview", False, verbs=CREATE_ONLY, field_selectors=frozenset()),
    Resource("authentication.k8s.io", "v1", "selfsubjectreviews", "selfsubjectreview",
             "SelfSubjectReview", False, verbs=CREATE_ONLY, field_selectors=frozenset()),
)

_BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND: dict[tuple[str, str], Resource] = {(r.group, r.kind): r for r in RESOURCES}


def find(group: str, version: str, plural: str) -> Resource | None:
    """The resource served at `/api[s]/<group>/<version>/<plural>`, or None."""
    return _BY_PATH.get((group, version, plural))


def by_kind(group: str, kind: str) -> Resource | None:
    """The resource storing objects of `kind` in `group` ("" = core)."""
    return _BY_KIND.get((group, kind))


def by_api_version(api_version: str, kind: str) -> Resource | None:
    """Look up by an object's `apiVersion` ("v1", "apps/v1") and `kind`."""
    group, _, version = api_version.rpartition("/")
    res = by_kind(group, kind)
    return res if res is not None and res.version == version else None


def group_versions() -> list[tuple[str, str]]:
    """(group, version) pairs served, core first, in table order."""
    seen: dict[tuple[str, str], None] = {}
    for r in RESOURCES:
        seen.setdefault((r.group, r.version), None)
    return list(seen)


def resources_in(group: str, version: str) -> list[Resource]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


def groups() -> list[str]:
    """Named API groups (excluding core), in table order."""
    return [g for g, _ in group_versions() if g]
