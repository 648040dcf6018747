"""API errors as Kubernetes `Status` objects with the upstream reason and HTTP code.

Every error the server sends is one of these: kubectl and the client libraries read `reason`,
`code` and `details` (e.g. `kubectl apply` retries on Conflict, `kubectl get` prints the message of
NotFound verbatim as `Error from server (NotFound): ...`), so messages follow upstream wording.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered to the client as a `Status` with `code`, `reason` and `message`."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The `Status` object (apiVersion v1, status Failure) describing this error."""
        obj: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            obj["details"] = self.details
        return obj

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"


def _qualified(resource: str, group: str) -> str:
    # upstream prints the group-qualified resource: `deployments.apps "web" not found`
    return f"{resource}.{group}" if group else resource


def _details(name: str, resource: str, group: str) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": resource}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    """404 NotFound: `pods "web" not found`."""
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found',
                    _details(name, resource, group))


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    """409 AlreadyExists: `namespaces "default" already exists`."""
    return ApiError(409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists',
                    _details(name, resource, group))


def conflict(resource: str, name: str, message: str, group: str = "") -> ApiError:
    """409 Conflict, e.g. a stale resourceVersion on update (the wording kubectl shows)."""
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {message}',
        _details(name, resource, group),
    )


def stale_update(resource: str, name: str, group: str = "") -> ApiError:
    """409 Conflict for an update whose resourceVersion precondition failed (upstream wording)."""
    return conflict(resource, name, "the object has been modified; please apply your changes "
                    "to the latest version and try again", group)


def invalid(kind: str, name: str, causes: list[dict[str, Any]], group: str = "") -> ApiError:
    """422 Invalid with `details.causes` ({reason, message, field}), message as upstream joins them."""
    parts = [f"{c.get('field', '')}: {c.get('message', '')}" if c.get("field") else
             str(c.get("message", "")) for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "kind": kind, "causes": causes}
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest (malformed body, bad selector, unknown query value)."""
    return ApiError(400, "BadRequest", message)


def forbidden(user: str, verb: str, resource: str, group: str, namespace: str,
              name: str = "", subresource: str = "") -> ApiError:
    """403 Forbidden with the sentence upstream RBAC prints."""
    res = f"{resource}/{subresource}" if subresource else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    # upstream: `pods "web" is forbidden: User "x" cannot get resource "pods" in API group "" in
    # the namespace "default"` (without the quoted name for collection verbs)
    target = _qualified(resource, group) + (f' "{name}"' if name else "")
    msg = (f'{target} is forbidden: User "{user}" cannot {verb} resource "{res}" '
           f'in API group "{group}" {scope}')
    return ApiError(403, "Forbidden", msg, _details(name, resource, group))


def forbidden_message(message: str) -> ApiError:
    """403 Forbidden with a free-form message (e.g. creating in a terminating namespace)."""
    return ApiError(403, "Forbidden", message)


def unauthorized() -> ApiError:
    """401 Unauthorized: upstream answers just `Unauthorized`."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def unsupported_media_type(content_type: str, detail: str = "") -> ApiError:
    """415 UnsupportedMediaType for a request body we cannot decode."""
    msg = f'the body of the request was in an unknown format - accepted media types include: ' \
          f'application/json, application/yaml, application/vnd.kubernetes.protobuf ' \
          f'(got "{content_type}")'
    if detail:
        msg = f"{msg}: {detail}"
    return ApiError(415, "UnsupportedMediaType", msg)


def not_acceptable(accept: str) -> ApiError:
    """406 NotAcceptable for an Accept header naming only formats we cannot produce."""
    return ApiError(406, "NotAcceptable",
                    f"only the following media types are accepted: application/json, "
                    f"application/yaml (got {accept!r})")


def expired(message: str) -> ApiError:
    """410 Expired (Gone): a resourceVersion or continue token older than the compaction."""
    return ApiError(410, "Expired", message)


def method_not_allowed(method: str, what: str = "") -> ApiError:
    """405 MethodNotAllowed for a verb the resource does not support."""
    suffix = f" on {what}" if what else ""
    return ApiError(405, "MethodNotAllowed",
                    f"the server does not allow this method on the requested resource{suffix}"
                    f" ({method})")


def not_found_path() -> ApiError:
    """404 for a URL that names no resource (upstream wording, empty details)."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def service_unavailable(message: str = "etcd is unavailable") -> ApiError:
    """503 ServiceUnavailable: the store cannot be reached."""
    return ApiError(503, "ServiceUnavailable", message)


def timeout(message: str = "request did not complete within the allowed duration") -> ApiError:
    """504 Timeout: the store did not answer in time."""
    return ApiError(504, "Timeout", message)


def internal(message: str) -> ApiError:
    """500 InternalError for a bug; the message goes to the client as upstream does."""
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def success_status(details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `Status` Success (DELETE of a collection, pods/binding, ...)."""
    obj: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details is not None:
        obj["details"] = details
    return obj
