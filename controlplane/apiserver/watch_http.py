"""Watch over HTTP: a chunked stream of newline-delimited `{"type": ..., "object": ...}` events.

Events come from the Registry's watch (the in-process watch cache; watchers never open an etcd watch
of their own).  The stream ends after `timeoutSeconds` (upstream default: the server's
--min-request-timeout of 1800 s), sends a BOOKMARK carrying the latest resourceVersion every
`bookmark_interval` seconds when the client allows them, and turns a too-old resourceVersion into one
`ERROR` event with a 410 Expired Status, as kube-apiserver does (reference B3): the Python client
raises ApiException(410), client-go relists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from controlplane.apiserver.errors import ApiError
from controlplane.apiserver.resources import Resource

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1800.0
BOOKMARK_INTERVAL = 60.0
# how often an idle watch checks that its client is still connected (aiohttp does not cancel
# handlers on disconnect)
IDLE_CHECK = 5.0

EventTransform = Callable[[dict[str, Any]], dict[str, Any]]
_END = object()


def bookmark_event(res: Resource, rv: str) -> dict[str, Any]:
    """A BOOKMARK: an object of the watched kind carrying only metadata.resourceVersion."""
    return {"type": "BOOKMARK",
            "object": {"kind": res.kind, "apiVersion": res.api_version,
                       "metadata": {"resourceVersion": rv}}}


def error_event(err: ApiError) -> dict[str, Any]:
    return {"type": "ERROR", "object": err.status()}


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


class _Pump:
    """Reads the registry's async iterator into a queue, so waiting for an event can time out without
    cancelling (and thereby closing) the iterator itself."""

    def __init__(self, events: AsyncIterator[dict[str, Any]]) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self._events = events
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for ev in self._events:
                await self.queue.put(ev)
        except ApiError as e:
            await self.queue.put(e)
        except Exception as e:  # a store failure the cache could not hide: end the stream
            log.warning("watch ended by %r", e)
            await self.queue.put(e)
        await self.queue.put(_END)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()


async def serve_watch(
    request: web.Request,
    res: Resource,
    events: AsyncIterator[dict[str, Any]],
    *,
    timeout: float | None,
    bookmarks: bool,
    start_rv: str,
    transform: EventTransform | None = None,
    bookmark_interval: float = BOOKMARK_INTERVAL,
) -> web.StreamResponse:
    """Stream `events` to the client until timeout, client disconnect or the end of the iterator."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    pump = _Pump(events)
    deadline = time.monotonic() + (timeout if timeout and timeout > 0 else DEFAULT_TIMEOUT)
    last_rv = start_rv if start_rv not in ("", "0") else ""
    next_bookmark = time.monotonic() + bookmark_interval
    try:
        while True:
            now = time.monotonic()
            if now >= deadline or _disconnected(request):
                break
            if bookmarks and last_rv and now >= next_bookmark:
                await resp.write(encode(bookmark_event(res, last_rv)))
                next_bookmark = now + bookmark_interval
            wait = min(deadline, next_bookmark if bookmarks else deadline) - now
            try:
                item = await asyncio.wait_for(pump.queue.get(), max(0.0, min(wait, IDLE_CHECK)))
            except TimeoutError:
                continue
            if item is _END:
                break
            if isinstance(item, ApiError):
                await resp.write(encode(error_event(item)))
                break
            if isinstance(item, Exception):
                break
            assert isinstance(item, dict)
            last_rv = _event_rv(item) or last_rv
            await resp.write(encode(transform(item) if transform else item))
    except ConnectionResetError:
        pass
    finally:
        await pump.close()
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await resp.write_eof()
    return resp


def _event_rv(event: dict[str, Any]) -> str:
    obj = event.get("object") or {}
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else ""


def _disconnected(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
