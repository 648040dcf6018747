"""GET pods/<name>/log: the container's log, streamed from the kubelet of the pod's node.

As upstream's LogREST: the PodLogOptions are validated (422 PodLogOptions invalid), the container is
chosen (the only one, else 400 "a container name must be specified ..."; an unknown one is 400 "container
x is not valid for pod p"), a pod not yet bound to a node has no log yet (an empty 200, upstream's nil
location), and otherwise the request is proxied to the node's kubelet at its address (InternalIP, else
ExternalIP, else Hostname) and status.daemonEndpoints.kubeletEndpoint.Port, GET
/containerLogs/<ns>/<pod>/<container>.  A kubelet's error answer becomes the matching Status (400
BadRequest, 404 NotFound, else InternalError) with the kubelet's text as the message, as upstream's
GenericHttpResponseChecker does.  Deviation: the kubelet is spoken to over plain HTTP (its read-only
server), not HTTPS with client certificates.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import aiohttp
from aiohttp import web

from controlplane.apiserver import errors, resources
from controlplane.apiserver.negotiation import parse_bool, parse_int
from controlplane.apiserver.routing import Target

JsonObj = dict[str, Any]

KUBELET_DEFAULT_PORT = 10250  # upstream --kubelet-port, used when the node reports no port
ADDRESS_PREFERENCE = ("InternalIP", "ExternalIP", "Hostname")
FORWARDED = ("follow", "previous", "timestamps", "tailLines", "limitBytes", "sinceSeconds", "sinceTime",
             "insecureSkipTLSVerifyBackend")
CONNECT_TIMEOUT = 5.0
IDLE_CHECK = 1.0  # while a follow is idle, how often to look whether the client left


def validate_options(query: Any, name: str) -> None:
    """Upstream ValidatePodLogOptions: 400 for a non-number, 422 PodLogOptions for a bad value."""
    for key in ("follow", "previous", "timestamps"):
        parse_bool(query.get(key))
    causes: list[JsonObj] = []
    tail = parse_int("tailLines", query.get("tailLines"))
    if tail is not None and tail < 0:
        causes.append(_cause("tailLines", tail, "must be greater than or equal to 0"))
    for key in ("limitBytes", "sinceSeconds"):
        value = parse_int(key, query.get(key))
        if value is not None and value < 1:
            causes.append(_cause(key, value, "must be greater than 0"))
    if query.get("sinceSeconds") and query.get("sinceTime"):
        causes.append({"reason": "FieldValueForbidden", "field": "",
                       "message": "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"})
    if causes:
        raise errors.invalid("PodLogOptions", name, causes)


def _cause(field: str, value: int, why: str) -> JsonObj:
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {value}: {why}"}


def container_names(pod: JsonObj) -> list[str]:
    """Init containers, then containers, then ephemeral ones (upstream VisitContainers order)."""
    spec = pod.get("spec") or {}
    return [c.get("name", "") for key in ("initContainers", "containers", "ephemeralContainers")
            for c in spec.get(key) or []]


def choose_container(pod: JsonObj, requested: str) -> str:
    """The container the log is for (upstream ValidateContainer's choice and messages)."""
    name = (pod.get("metadata") or {}).get("name", "")
    if requested:
        if requested not in container_names(pod):
            raise errors.bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    containers = (pod.get("spec") or {}).get("containers") or []
    if len(containers) == 1:
        return str(containers[0].get("name", ""))
    if not containers:
        raise errors.bad_request(f"a container name must be specified for pod {name}")
    raise errors.bad_request(f"a container name must be specified for pod {name}, choose one of: "
                             f"[{' '.join(container_names(pod))}]")


def kubelet_location(node: JsonObj) -> tuple[str, int]:
    """(address, port) of a node's kubelet from its status."""
    status = node.get("status") or {}
    addresses = status.get("addresses") or []
    for kind in ADDRESS_PREFERENCE:
        for addr in addresses:
            if addr.get("type") == kind and addr.get("address"):
                port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
                return str(addr["address"]), int(port or KUBELET_DEFAULT_PORT)
    known = [f"{a.get('type')}:{a.get('address')}" for a in addresses]
    raise errors.internal(f"no preferred addresses found; known addresses: [{' '.join(known)}]")


def kubelet_log_url(host: str, port: int, namespace: str, pod: str, container: str, query: Any) -> str:
    """http://<host>:<port>/containerLogs/<ns>/<pod>/<container>?<the forwarded options>."""
    path = "/".join(urllib.parse.quote(p, safe="") for p in ("containerLogs", namespace, pod, container))
    params = [(k, query[k]) for k in FORWARDED if query.get(k) not in (None, "")]
    netloc = f"[{host}]" if ":" in host else host
    suffix = f"?{urllib.parse.urlencode(params)}" if params else ""
    return f"http://{netloc}:{port}/{path}{suffix}"


def kubelet_error(status: int, text: str) -> errors.ApiError:
    message = text.strip() or f"the kubelet answered {status}"
    if status == 400:
        return errors.bad_request(message)
    if status == 404:
        return errors.ApiError(404, "NotFound", message)
    return errors.ApiError(500, "InternalError", message)


async def pod_log(registry: Any, request: web.Request, t: Target) -> web.StreamResponse:
    """GET pods/<name>/log?container=&follow=&tailLines=&previous=&timestamps=&limitBytes=&since..."""
    query = request.query
    validate_options(query, t.name)
    pod = await registry.get(t.resource, t.namespace, t.name)
    container = choose_container(pod, query.get("container", ""))
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:  # not scheduled yet: no kubelet has a log for it (upstream's empty stream)
        return web.Response(status=200, body=b"", content_type="text/plain")
    nodes = resources.find("", "v1", "nodes")
    if nodes is None:
        raise errors.internal("the nodes resource is not served")
    host, port = kubelet_location(await registry.get(nodes, "", node_name))
    url = kubelet_log_url(host, port, t.namespace, t.name, container, query)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, connect=CONNECT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        try:
            upstream = await session.get(url)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise errors.ApiError(500, "InternalError", f'Get "{url}": {e or type(e).__name__}') from None
        async with upstream:
            if upstream.status != 200:
                raise kubelet_error(upstream.status, await upstream.text(errors="replace"))
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
            await resp.prepare(request)
            if await _copy(upstream, resp, request):
                await resp.write_eof()
            return resp


async def _copy(upstream: aiohttp.ClientResponse, resp: web.StreamResponse, request: web.Request) -> bool:
    """Relay the kubelet's bytes as they come; False when the client left (the kubelet connection is
    then closed, which ends the kubelet's follow too)."""
    while True:
        try:
            chunk = await asyncio.wait_for(upstream.content.readany(), IDLE_CHECK)
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return False
            continue
        except (aiohttp.ClientError, OSError):
            return True  # the kubelet went away: end the log where it broke, as upstream's copy does
        if not chunk:
            return True
        try:
            await resp.write(chunk)
        except (ConnectionError, OSError):
            return False
