"""Authentication (static bearer tokens) and authorization (an RBAC subset).

Everything here is pure except `load_token_file` (reads one file) and `StoreRbacSource` (reads the
four RBAC kinds through the Store seam).  The server wires them:

    user = authenticator.authenticate(request.headers)          # None -> 401 Unauthorized
    attrs = request_attributes(request.method, path, query)
    decision = authorizer.decide(user, attrs)                     # not allowed -> 403 Forbidden

Upstream references: staging/src/k8s.io/apiserver/pkg/authentication/token/tokenfile (CSV format),
plugin/pkg/auth/authorizer/rbac (rule matching), apiserver/pkg/endpoints/request/requestinfo.go
(verb/resource extraction), apiserver/pkg/endpoints/handlers/responsewriters/errors.go (messages).
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

MASTERS_GROUP = "system:masters"
AUTHENTICATED_GROUP = "system:authenticated"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


class TokenFileError(ValueError):
    """The --token-auth-file is malformed (the server refuses to start, as upstream)."""


@dataclass(frozen=True)
class User:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()

    def info(self) -> dict[str, Any]:
        """The user as upstream's authentication.k8s.io UserInfo (SelfSubjectReview)."""
        return {"username": self.name, "uid": self.uid, "groups": list(self.groups)}


# ----------------------------------------------------------------------------------- authentication


def parse_token_file(text: str, path: str = "<token file>") -> dict[str, User]:
    """Parse upstream's CSV `token,user,uid[,"group1,group2"]`; extra columns are ignored.

    Like tokenfile.NewCSV: fewer than 3 columns is an error, an empty token is skipped, a duplicate
    token keeps the last line, and blank lines are skipped (Go's csv reader does that).
    """
    tokens: dict[str, User] = {}
    for record in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not record or record == [""]:
            continue
        if len(record) < 3:
            raise TokenFileError(
                f"token file '{path}' must have at least 3 columns (token, user name, user uid), "
                f"found {len(record)}"
            )
        if not record[0]:
            continue
        groups = tuple(record[3].split(",")) if len(record) >= 4 else ()
        tokens[record[0]] = User(name=record[1], uid=record[2], groups=groups)
    return tokens


def load_token_file(path: str) -> dict[str, User]:
    with open(path, encoding="utf-8", newline="") as f:
        return parse_token_file(f.read(), path)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, as
    upstream's bearertoken authenticator), or None."""
    value = headers.get("Authorization") or headers.get("authorization") or ""
    parts = value.strip().split(" ", 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    token = parts[1].strip()
    return token or None


def authenticate(headers: Mapping[str, str], tokens: Mapping[str, User]) -> User | None:
    """The user a request's bearer token names, with `system:authenticated` added like upstream's
    group adder; None when there is no token or it is unknown (the server answers 401)."""
    token = bearer_token(headers)
    user = tokens.get(token) if token is not None else None
    if user is None:
        return None
    if AUTHENTICATED_GROUP in user.groups:
        return user
    return User(user.name, user.uid, (*user.groups, AUTHENTICATED_GROUP))


@dataclass(frozen=True)
class TokenAuthenticator:
    tokens: Mapping[str, User]

    @classmethod
    def from_file(cls, path: str) -> TokenAuthenticator:
        return cls(load_token_file(path))

    def authenticate(self, headers: Mapping[str, str]) -> User | None:
        return authenticate(headers, self.tokens)


# ------------------------------------------------------------------------------ request attributes


@dataclass(frozen=True)
class Attributes:
    """What is being asked (upstream authorizer.Attributes without the user)."""

    verb: str
    resource_request: bool = True
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""


_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
                 "DELETE": "delete"}
# Subresources of a namespace itself (/api/v1/namespaces/x/status), not namespaced resources.
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}


def parse_bool(value: str | None) -> bool:
    """Go's strconv.ParseBool as the apiserver uses it for `watch`: the python client sends `True`."""
    return (value or "") in {"1", "t", "T", "true", "TRUE", "True"}


def _exact_name(field_selector: str) -> str:
    """The name of a `metadata.name=x` (or `==`) requirement, as requestinfo.go narrows list and
    watch requests to one name (kubectl delete --wait watches with it)."""
    for requirement in field_selector.split(","):
        for op in ("==", "="):
            key, sep, value = requirement.partition(op)
            if sep and key.strip() == "metadata.name" and not key.endswith("!"):
                return value.strip()
    return ""


def request_attributes(method: str, path: str, query: Mapping[str, str] | None = None) -> Attributes:
    """Upstream RequestInfoFactory.NewRequestInfo: /api/v1/... and /apis/<g>/<v>/... are resource
    requests; everything else (/healthz, /version, /api, /apis, /openapi/v3) is a non-resource
    request whose verb is the lower-cased method."""
    query = query or {}
    parts = [p for p in path.strip("/").split("/") if p]
    plain = Attributes(verb=method.lower(), resource_request=False, path=path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return plain
    group = ""
    rest = parts[1:]
    if parts[0] == "apis":
        if len(rest) < 3:
            return plain
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    verb = _METHOD_VERBS.get(method.upper(), "")
    if rest[0] == "watch" and len(rest) >= 2:  # legacy /api/v1/watch/... paths
        verb, rest = "watch", rest[1:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        verb = "watch" if parse_bool(query.get("watch")) else "list"
        name = _exact_name(query.get("fieldSelector", ""))
    elif name and verb == "get" and parse_bool(query.get("watch")):
        verb = "watch"
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(verb=verb, group=group, version=version, resource=resource,
                      subresource=subresource, namespace=namespace, name=name, path=path)


# ---------------------------------------------------------------------------------- rule matching


def _verb_matches(rule: Mapping[str, Any], verb: str) -> bool:
    verbs = rule.get("verbs") or []
    return "*" in verbs or verb in verbs


def _group_matches(rule: Mapping[str, Any], group: str) -> bool:
    groups = rule.get("apiGroups") or []
    return "*" in groups or group in groups


def _resource_matches(rule: Mapping[str, Any], resource: str, subresource: str) -> bool:
    """rbac.ResourceMatches: "*", the combined "pods/binding", or "*/binding" for any resource."""
    combined = f"{resource}/{subresource}" if subresource else resource
    for wanted in rule.get("resources") or []:
        if wanted == "*" or wanted == combined:
            return True
        if subresource and wanted == f"*/{subresource}":
            return True
    return False


def _name_matches(rule: Mapping[str, Any], name: str) -> bool:
    names = rule.get("resourceNames") or []
    return not names or name in names


def _url_matches(rule: Mapping[str, Any], path: str) -> bool:
    for wanted in rule.get("nonResourceURLs") or []:
        if wanted == "*" or wanted == path:
            return True
        if wanted.endswith("*") and path.startswith(wanted[:-1]):
            return True
    return False


def rule_allows(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    if not _verb_matches(rule, attrs.verb):
        return False
    if not attrs.resource_request:
        return _url_matches(rule, attrs.path)
    return (_group_matches(rule, attrs.group)
            and _resource_matches(rule, attrs.resource, attrs.subresource)
            and _name_matches(rule, attrs.name))


def subject_matches(subject: Mapping[str, Any], user: User, binding_namespace: str) -> bool:
    """rbac appliesToUser: a ServiceAccount subject without a namespace means the binding's."""
    kind, name = subject.get("kind"), subject.get("name", "")
    if kind == "User":
        return bool(name == user.name)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.name == f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"
    return False


# ------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class RbacObjects:
    """The four RBAC kinds as API objects (dicts), whatever holds them."""

    roles: list[dict[str, Any]] = field(default_factory=list)
    cluster_roles: list[dict[str, Any]] = field(default_factory=list)
    role_bindings: list[dict[str, Any]] = field(default_factory=list)
    cluster_role_bindings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def _role_rules(rbac: RbacObjects, ref: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The rules of a binding's roleRef: a Role lives in the binding's namespace."""
    kind, name = ref.get("kind"), ref.get("name")
    candidates = rbac.cluster_roles if kind == "ClusterRole" else rbac.roles
    for role in candidates:
        role_ns, role_name = _meta(role)
        if role_name == name and (kind == "ClusterRole" or role_ns == namespace):
            return list(role.get("rules") or [])
    return []


def _binding_grants(rbac: RbacObjects, binding: Mapping[str, Any], user: User, attrs: Attributes) -> bool:
    namespace, _ = _meta(binding)
    if not any(subject_matches(s, user, namespace) for s in binding.get("subjects") or []):
        return False
    rules = _role_rules(rbac, binding.get("roleRef") or {}, namespace)
    return any(rule_allows(rule, attrs) for rule in rules)


def _describe(binding: Mapping[str, Any], kind: str, user: User) -> str:
    namespace, name = _meta(binding)
    ref = binding.get("roleRef") or {}
    where = f'RoleBinding "{name}" of {ref.get("kind")} "{ref.get("name")}"'
    if kind == "ClusterRoleBinding":
        where = f'ClusterRoleBinding "{name}" of ClusterRole "{ref.get("name")}"'
    else:
        where = f'{where} in namespace "{namespace}"'
    return f'RBAC: allowed by {where} to User "{user.name}"'


def evaluate(user: User, attrs: Attributes, rbac: RbacObjects) -> Decision:
    """The RBAC decision for one request: system:masters may do anything; otherwise any
    ClusterRoleBinding, or a RoleBinding in the request's namespace, whose role has a matching rule."""
    if MASTERS_GROUP in user.groups:
        return Decision(True, f'allowed by group "{MASTERS_GROUP}"')
    for binding in rbac.cluster_role_bindings:
        if _binding_grants(rbac, binding, user, attrs):
            return Decision(True, _describe(binding, "ClusterRoleBinding", user))
    if attrs.resource_request and attrs.namespace:
        for binding in rbac.role_bindings:
            if _meta(binding)[0] == attrs.namespace and _binding_grants(rbac, binding, user, attrs):
                return Decision(True, _describe(binding, "RoleBinding", user))
    return Decision(False, "")


# --------------------------------------------------------------------------- bootstrap policy


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": rules}


def _group_binding(name: str, group: str) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]}


def bootstrap_policy() -> RbacObjects:
    """The subset of upstream's bootstrap roles every authenticated user has (plugin/pkg/auth/
    authorizer/rbac/bootstrappolicy): discovery and version (system:discovery,
    system:public-info-viewer) and self reviews (system:basic-user: `kubectl auth can-i` must work
    for users without any other binding).  Always part of the decision, never persisted."""
    discovery = [{"verbs": ["get"], "nonResourceURLs": [
        "/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/",
        "/healthz", "/livez", "/readyz"]}]
    basic = [{"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
              "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]},
             {"verbs": ["create"], "apiGroups": ["authentication.k8s.io"],
              "resources": ["selfsubjectreviews"]}]
    return RbacObjects(
        cluster_roles=[_cluster_role("system:discovery", discovery),
                       _cluster_role("system:basic-user", basic)],
        cluster_role_bindings=[_group_binding("system:discovery", AUTHENTICATED_GROUP),
                               _group_binding("system:basic-user", AUTHENTICATED_GROUP)])


def merged(*sources: RbacObjects) -> RbacObjects:
    out = RbacObjects()
    for source in sources:
        out.roles.extend(source.roles)
        out.cluster_roles.extend(source.cluster_roles)
        out.role_bindings.extend(source.role_bindings)
        out.cluster_role_bindings.extend(source.cluster_role_bindings)
    return out


class RbacSource(Protocol):
    def __call__(self) -> RbacObjects: ...


class Authorizer:
    """RBAC over whatever `source` returns (the Store, or the server's watch cache), plus the
    bootstrap policy.  `system:masters` is decided before the source is read, so the common admin
    path costs no lookup."""

    def __init__(self, source: RbacSource | None = None) -> None:
        self._source = source
        self._bootstrap = bootstrap_policy()

    def rbac(self) -> RbacObjects:
        """The bootstrap policy plus what the source holds now."""
        return self._bootstrap if self._source is None else merged(self._bootstrap, self._source())

    def decide(self, user: User, attrs: Attributes) -> Decision:
        if MASTERS_GROUP in user.groups:
            return Decision(True, f'allowed by group "{MASTERS_GROUP}"')
        return evaluate(user, attrs, self.rbac())

    def authorize(self, user: User, verb: str, group: str, resource: str, namespace: str = "",
                  name: str = "", subresource: str = "") -> bool:
        attrs = Attributes(verb=verb, group=group, resource=resource, namespace=namespace, name=name,
                           subresource=subresource)
        return self.decide(user, attrs).allowed


RBAC_PLURALS = ("roles", "clusterroles", "rolebindings", "clusterrolebindings")


class StoreRbacSource:
    """Reads the RBAC objects from the Store (keys `<prefix>/<plural>/...`, JSON values, the layout
    upstream uses for etcd) and keeps them until the store's revision moves: one cheap revision
    read per non-admin request instead of four range reads."""

    def __init__(self, store: Any, prefix: str = "/registry") -> None:
        self._store = store
        self._prefix = prefix.rstrip("/")
        self._lock = threading.Lock()
        self._revision = -1
        self._cached = RbacObjects()

    def __call__(self) -> RbacObjects:
        revision = self._store.current_revision()
        with self._lock:
            if revision == self._revision:
                return self._cached
        objects = RbacObjects(*(self._read(plural) for plural in RBAC_PLURALS))
        with self._lock:
            self._revision, self._cached = revision, objects
        return objects

    def _read(self, plural: str) -> list[dict[str, Any]]:
        items, _, _ = self._store.list(f"{self._prefix}/{plural}/")
        return [json.loads(kv.value) for kv in items]


def static_source(objects: Iterable[dict[str, Any]]) -> RbacSource:
    """A source over a fixed list of RBAC objects of any of the four kinds (tests, config files)."""
    by_kind: dict[str, list[dict[str, Any]]] = {"Role": [], "ClusterRole": [], "RoleBinding": [],
                                                "ClusterRoleBinding": []}
    for obj in objects:
        by_kind[obj["kind"]].append(obj)
    snapshot = RbacObjects(by_kind["Role"], by_kind["ClusterRole"], by_kind["RoleBinding"],
                           by_kind["ClusterRoleBinding"])
    return lambda: snapshot


# ------------------------------------------------------------------------------------ responses


def forbidden_message(user: User, attrs: Attributes, reason: str = "") -> str:
    """The message of upstream's 403 Status (responsewriters.forbiddenMessage wrapped by
    apierrors.NewForbidden), e.g. `pods "p" is forbidden: User "bob" cannot get resource "pods"
    in API group "" in the namespace "default"`."""
    if not attrs.resource_request:
        detail = f'User "{user.name}" cannot {attrs.verb} path "{attrs.path}"'
        return f"forbidden: {detail}: {reason}" if reason else f"forbidden: {detail}"
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    detail = (f'User "{user.name}" cannot {attrs.verb} resource "{resource}" in API group '
              f'"{attrs.group}"')
    if attrs.namespace:
        detail += f' in the namespace "{attrs.namespace}"'
    else:
        detail += " at the cluster scope"
    if reason:
        detail += f": {reason}"
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    if attrs.name:
        return f'{qualified} "{attrs.name}" is forbidden: {detail}'
    return f"{qualified} is forbidden: {detail}"


def forbidden_details(attrs: Attributes) -> dict[str, str]:
    """Status.details of the 403: {name, group, kind: <resource>} (empty for non-resource paths)."""
    if not attrs.resource_request:
        return {}
    details = {"group": attrs.group, "kind": attrs.resource}
    if attrs.name:
        details["name"] = attrs.name
    return details


class ReviewInvalid(ValueError):
    """A SelfSubjectAccessReview spec upstream rejects (422 Invalid); `causes` are Status causes."""

    def __init__(self, causes: list[dict[str, str]]) -> None:
        super().__init__("; ".join(c["message"] for c in causes))
        self.causes = causes


def review_attributes(spec: Mapping[str, Any]) -> Attributes:
    """The Attributes a SubjectAccessReview spec asks about (exactly one of the two forms)."""
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if resource is not None and non_resource is not None:
        raise ReviewInvalid([{"reason": "FieldValueInvalid", "field": "spec.nonResourceAttributes",
                              "message": "spec.nonResourceAttributes: Invalid value: "
                                         "cannot be specified in combination with resourceAttributes"}])
    if resource is None and non_resource is None:
        raise ReviewInvalid([{"reason": "FieldValueInvalid", "field": "spec.resourceAttributes",
                              "message": "spec.resourceAttributes: Invalid value: \"null\": exactly one "
                                         "of nonResourceAttributes or resourceAttributes must be specified"}])
    if non_resource is not None:
        return Attributes(verb=non_resource.get("verb", ""), resource_request=False,
                          path=non_resource.get("path", ""))
    assert resource is not None
    return Attributes(verb=resource.get("verb", ""), group=resource.get("group", ""),
                      version=resource.get("version", ""), resource=resource.get("resource", ""),
                      subresource=resource.get("subresource", ""),
                      namespace=resource.get("namespace", ""), name=resource.get("name", ""))


def self_subject_access_review(user: User, review: Mapping[str, Any],
                               decide: Callable[[User, Attributes], Decision]) -> dict[str, Any]:
    """The created SelfSubjectAccessReview (`kubectl auth can-i`): the spec echoed, status
    {allowed, reason}.  Raises ReviewInvalid for a spec with neither or both attribute kinds."""
    spec = dict(review.get("spec") or {})
    decision = decide(user, review_attributes(spec))
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    metadata = dict(review.get("metadata") or {})
    metadata.setdefault("creationTimestamp", None)
    return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": metadata, "spec": spec, "status": status}


# ---------------------------------------------------------------------------------- impersonation

IMPERSONATE_USER = "Impersonate-User"
IMPERSONATE_GROUP = "Impersonate-Group"
IMPERSONATE_UID = "Impersonate-Uid"
IMPERSONATE_EXTRA_PREFIX = "Impersonate-Extra-"


class ImpersonationInvalid(ValueError):
    """Impersonation headers upstream rejects with 400 BadRequest."""


class ImpersonationDenied(Exception):
    """The requester may not impersonate what it asked for (403 Forbidden); `attrs` is the check
    that failed, for forbidden_message()."""

    def __init__(self, user: User, attrs: Attributes) -> None:
        super().__init__(forbidden_message(user, attrs))
        self.user = user
        self.attrs = attrs


def _header_values(headers: Any, name: str) -> list[str]:
    getall = getattr(headers, "getall", None)  # aiohttp/multidict: a header may repeat
    if getall is not None:
        return [str(v) for v in getall(name, [])]
    value = headers.get(name)
    return [value] if value else []


def _impersonation_checks(username: str, groups: list[str], uid: str,
                          extra_keys: list[str]) -> list[Attributes]:
    """What upstream's impersonation filter authorizes: verb `impersonate` on users (or the
    serviceaccount), each group, the uid and each extra key."""
    checks = []
    if username.startswith(SERVICE_ACCOUNT_PREFIX) and username.count(":") == 3:
        _, _, namespace, name = username.split(":")
        checks.append(Attributes("impersonate", resource="serviceaccounts", namespace=namespace, name=name))
    else:
        checks.append(Attributes("impersonate", resource="users", name=username))
    checks += [Attributes("impersonate", resource="groups", name=g) for g in groups]
    if uid:
        checks.append(Attributes("impersonate", group="authentication.k8s.io", resource="uids", name=uid))
    checks += [Attributes("impersonate", group="authentication.k8s.io", resource="userextras",
                          subresource=key) for key in extra_keys]
    return checks


def impersonate(user: User, headers: Any, decide: Callable[[User, Attributes], Decision]) -> User:
    """The user a request acts as (`kubectl --as=<user> --as-group=<group>`): `user` itself
    without Impersonate-* headers.  Raises ImpersonationInvalid (400) for group/uid/extra headers
    without a user, ImpersonationDenied (403) when RBAC does not grant `impersonate`.  The result
    gets `system:authenticated` (and a service account its groups), as upstream."""
    names = _header_values(headers, IMPERSONATE_USER)
    groups = _header_values(headers, IMPERSONATE_GROUP)
    uids = _header_values(headers, IMPERSONATE_UID)
    extra_keys = sorted({k[len(IMPERSONATE_EXTRA_PREFIX):].lower() for k in headers
                         if k.lower().startswith(IMPERSONATE_EXTRA_PREFIX.lower())})
    if not names:
        if groups or uids or extra_keys:
            raise ImpersonationInvalid("requested impersonation of groups, uid or extra without "
                                       "impersonating a user")
        return user
    for attrs in _impersonation_checks(names[0], groups, uids[0] if uids else "", extra_keys):
        if not decide(user, attrs).allowed:
            raise ImpersonationDenied(user, attrs)
    name = names[0]
    all_groups = list(groups)
    if name.startswith(SERVICE_ACCOUNT_PREFIX) and not groups:
        namespace = name.split(":")[2] if name.count(":") == 3 else ""
        all_groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    if name != "system:anonymous" and AUTHENTICATED_GROUP not in all_groups:
        all_groups.append(AUTHENTICATED_GROUP)
    return User(name, uids[0] if uids else "", tuple(all_groups))


# -------------------------------------------------------------------- whoami and can-i --list


def self_subject_review(user: User) -> dict[str, Any]:
    """The created SelfSubjectReview (`kubectl auth whoami`, authentication.k8s.io/v1)."""
    return {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None}, "status": {"userInfo": user.info()}}


_ALL_RESOURCES = {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}
_ALL_URLS = {"verbs": ["*"], "nonResourceURLs": ["*"]}


def rules_for(user: User, namespace: str, rbac: RbacObjects) -> list[dict[str, Any]]:
    """Every rule granted to `user` in `namespace` (upstream RBAC RulesFor): ClusterRoleBindings,
    then RoleBindings of that namespace.  system:masters gets cluster-admin's two wildcard rules."""
    if MASTERS_GROUP in user.groups:
        return [dict(_ALL_RESOURCES), dict(_ALL_URLS)]
    rules: list[dict[str, Any]] = []
    bindings = list(rbac.cluster_role_bindings)
    bindings += [b for b in rbac.role_bindings if _meta(b)[0] == namespace] if namespace else []
    for binding in bindings:
        binding_ns = _meta(binding)[0]
        if any(subject_matches(s, user, binding_ns) for s in binding.get("subjects") or []):
            rules += _role_rules(rbac, binding.get("roleRef") or {}, binding_ns)
    return rules


def self_subject_rules_review(user: User, review: Mapping[str, Any], rbac: RbacObjects) -> dict[str, Any]:
    """The created SelfSubjectRulesReview (`kubectl auth can-i --list`): the spec's namespace's
    resource rules and the non-resource rules, as upstream splits them."""
    spec = dict(review.get("spec") or {})
    rules = rules_for(user, spec.get("namespace", ""), rbac)
    resource_rules = [{k: r[k] for k in ("verbs", "apiGroups", "resources", "resourceNames") if k in r}
                      for r in rules if r.get("resources")]
    url_rules = [{"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}
                 for r in rules if r.get("nonResourceURLs")]
    return {"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None}, "spec": spec,
            "status": {"resourceRules": resource_rules, "nonResourceRules": url_rules, "incomplete": False}}
