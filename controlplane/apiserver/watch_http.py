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
from collections import OrderedDict
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
MAX_BATCH = 256
# Events buffered between the registry's watcher and the socket: a full buffer stops the pump, so a
# slow client backs up into the watch cache (which bounds and drops slow watchers) instead of here.
PUMP_BUFFER = 256

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
    return json.dumps(event, separators=(",", ":"), check_circular=False).encode() + b"\n"


class EncodedEvents:
    """Encode each watch-cache event once for all its watchers (upstream's cachingObject idea).

    Watchers of one resource receive the same cached object, so the bytes are keyed by the event
    type and the object's identity; the entry holds the object itself, so its id cannot be reused
    while cached.  Cached objects are shared and never mutated, which is what makes this sound.
    """

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, int], tuple[object, bytes]] = OrderedDict()

    def encode(self, event: dict[str, Any]) -> bytes:
        obj = event.get("object")
        key = (str(event.get("type")), id(obj))
        hit = self._entries.get(key)
        if hit is not None and hit[0] is obj:
            self._entries.move_to_end(key)
            return hit[1]
        data = encode(event)
        self._entries[key] = (obj, data)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return data


ENCODED = EncodedEvents()


class _Pump:
    """Reads the registry's async iterator into a queue, so waiting for an event can time out without
    cancelling (and thereby closing) the iterator itself."""

    def __init__(self, events: AsyncIterator[dict[str, Any]]) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue(PUMP_BUFFER)
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
    cache_revision: Callable[[], int] | None = None,
) -> web.StreamResponse:
    """Stream `events` to the client until timeout, client disconnect or the end of the iterator.

    `cache_revision` (the watch cache's applied revision) lets an idle watch's BOOKMARK move past
    the last event it delivered; see _Stream.bookmark_rv for why that is safe."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    pump = _Pump(events)
    stream = _Stream(resp, res, transform, start_rv, cache_revision)
    deadline = time.monotonic() + (timeout if timeout and timeout > 0 else DEFAULT_TIMEOUT)
    try:
        await stream.run(request, pump.queue, deadline, bookmark_interval if bookmarks else None)
    except ConnectionResetError:
        pass
    finally:
        await pump.close()
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await resp.write_eof()
    return resp


class _Stream:
    """Writes events (in batches: whatever is queued goes out in one chunk) and bookmarks."""

    def __init__(self, resp: web.StreamResponse, res: Resource, transform: EventTransform | None,
                 start_rv: str, cache_revision: Callable[[], int] | None = None) -> None:
        self.resp = resp
        self.res = res
        self.transform = transform
        self.last_rv = start_rv if start_rv not in ("", "0") else ""
        self.cache_revision = cache_revision
        # with resourceVersion "" the registry registers its cache watcher only after a store
        # listing; until the first event arrives the cache revision may be ahead of this stream
        self.watching = start_rv != ""

    def bookmark_rv(self, queue: asyncio.Queue[object]) -> str:
        """The resourceVersion a BOOKMARK may carry now.

        The pump drains the cache watcher without suspending while it has events (queue.get/put on
        a non-full queue do not yield), so whenever this task runs with the pump queue empty, the
        pump is parked on an empty cache watcher: every event up to the cache's revision has been
        delivered (or filtered out), and that revision is a safe bookmark."""
        rv = int(self.last_rv or 0)
        if self.cache_revision is not None and self.watching and queue.empty():
            rv = max(rv, self.cache_revision())
        return str(rv) if rv > 0 else ""

    async def run(self, request: web.Request, queue: asyncio.Queue[object], deadline: float,
                  bookmark_interval: float | None) -> None:
        next_bookmark = time.monotonic() + (bookmark_interval or 0.0)
        while True:
            now = time.monotonic()
            if now >= deadline or _disconnected(request):
                return
            if bookmark_interval is not None and now >= next_bookmark:
                rv = self.bookmark_rv(queue)
                if rv:
                    await self.resp.write(encode(bookmark_event(self.res, rv)))
                next_bookmark = now + bookmark_interval
            wake = min(deadline, next_bookmark) if bookmark_interval is not None else deadline
            try:
                item = await asyncio.wait_for(queue.get(), max(0.0, min(wake - now, IDLE_CHECK)))
            except TimeoutError:
                continue
            batch = [item]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            if not await self._write(batch):
                return

    async def _write(self, batch: list[object]) -> bool:
        """Write the batch's events; False when the stream must end (end of events, error)."""
        chunks: list[bytes] = []
        going = True
        for item in batch:
            if item is _END or (isinstance(item, Exception) and not isinstance(item, ApiError)):
                going = False
                break
            if isinstance(item, ApiError):
                chunks.append(encode(error_event(item)))
                going = False
                break
            assert isinstance(item, dict)
            self.last_rv = _event_rv(item) or self.last_rv
            self.watching = True
            chunks.append(encode(self.transform(item)) if self.transform else ENCODED.encode(item))
        if chunks:
            await self.resp.write(b"".join(chunks))
        return going


def _event_rv(event: dict[str, Any]) -> str:
    obj = event.get("object") or {}
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else ""


def _disconnected(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
