"""Resource URL parsing: `/api/v1/namespaces/ns/pods/p/status` -> what the request is about.

Mirrors kube-apiserver's RequestInfoFactory for the shapes clients use:
  /api/v1/{plural}[/{name}[/{sub}]]                         (cluster-scoped or all namespaces)
  /api/v1/namespaces/{ns}/{plural}[/{name}[/{sub}]]         (namespaced)
  /api/v1/namespaces[/{name}[/{sub}]]                       (the namespaces resource itself)
  /apis/{group}/{version}/...                               (same shapes for named groups)
The verb is derived from the HTTP method and whether a name is present, as upstream does for RBAC.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.apiserver import errors, resources
from controlplane.apiserver.resources import Resource


@dataclass(frozen=True)
class Target:
    """A resource request: the resource, namespace ("" = none/all), name ("" = collection), subresource."""

    resource: Resource
    namespace: str
    name: str
    subresource: str
    watch_path: bool = False  # the deprecated /api/v1/watch/... form

    @property
    def is_collection(self) -> bool:
        return not self.name


@dataclass(frozen=True)
class PathParts:
    """The group/version and the remaining path segments of an API URL, before resource lookup."""

    group: str
    version: str
    namespace: str
    plural: str
    name: str
    subresource: str
    watch_path: bool = False


def split_path(path: str) -> PathParts | None:
    """The parts of an /api or /apis resource URL; None for a URL that is not a resource URL."""
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 3 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 4 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    watch_path = len(rest) >= 2 and rest[0] == "watch"  # deprecated /api/v1/watch/... (still served)
    if watch_path:
        rest = rest[1:]
    namespace = ""
    # `namespaces/{ns}/{plural}...` is a namespaced resource; `namespaces[/{name}[/{sub}]]` is the
    # namespace resource itself (upstream special-cases exactly this)
    if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in
                                                            ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    return PathParts(group, version, namespace, plural, name, sub, watch_path)


def resolve(path: str) -> Target:
    """The Target of a resource URL; 404 NotFound Status for unknown resources or subresources."""
    parts = split_path(path)
    if parts is None:
        raise errors.not_found_path()
    res = resources.find(parts.group, parts.version, parts.plural)
    if res is None:
        raise errors.not_found_path()
    if parts.namespace and not res.namespaced:
        raise errors.not_found_path()
    if parts.subresource and not res.has_subresource(parts.subresource):
        raise errors.not_found_path()
    if parts.watch_path and (parts.subresource or not res.has_verb("watch")):
        raise errors.not_found_path()
    return Target(res, parts.namespace, parts.name, parts.subresource, parts.watch_path)


def verb_for(method: str, target: Target, watch: bool) -> str:
    """The RBAC verb of a request (get/list/watch/create/update/patch/delete/deletecollection)."""
    m = method.upper()
    if m in ("GET", "HEAD"):
        if watch:
            return "watch"
        return "list" if target.is_collection else "get"
    if m == "POST":
        return "create"
    if m == "PUT":
        return "update"
    if m == "PATCH":
        return "patch"
    if m == "DELETE":
        return "deletecollection" if target.is_collection else "delete"
    raise errors.method_not_allowed(m)
