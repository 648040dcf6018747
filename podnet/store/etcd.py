"""EtcdStore: the Store on a real etcd (v3 gRPC API through python3-etcd3's generated stubs).

We drive the stubs directly rather than etcd3's client class because that client (0.13) marks an
endpoint failed for 300 s after one UNAVAILABLE and then refuses to use it (no recovery after an
etcd restart), and its watcher thread crashes on stream errors (a NameError on `six`). A plain gRPC
channel reconnects by itself; we shorten its reconnect backoff so a restarted etcd is used again
within about a second. Conditional writes are single transactions comparing mod_revision, as
kube-apiserver's etcd3 store does. Leases use the Lease service: Grant, one-shot
LeaseKeepAlive (a bidi stream of a single request) for refresh, Revoke and TimeToLive.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
from etcd3 import etcdrpc

from podnet.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    KeyValue,
    LeaseNotFound,
    NotFound,
    StoreError,
    StoreUnavailable,
)

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A 10k-object list is far above gRPC's default 4 MiB receive limit.
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def grpc_target(endpoints: list[str]) -> str:
    """A gRPC target for etcd client URLs (http://host:port); several IPs use one ipv4: target."""
    hostports = []
    for ep in endpoints:
        parts = urlsplit(ep if "://" in ep else "http://" + ep)
        hostports.append(f"{parts.hostname}:{parts.port or 2379}")
    if len(hostports) > 1 and all(hp.split(":")[0].replace(".", "").isdigit() for hp in hostports):
        return "ipv4:" + ",".join(hostports)
    return hostports[0]


def translate(err: grpc.RpcError, what: str) -> StoreError:
    """The Store exception for a gRPC failure."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else "") or str(code)
    if code == grpc.StatusCode.UNAVAILABLE:
        return StoreUnavailable(f"etcd unavailable ({what}): {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return StoreUnavailable(f"etcd timeout ({what}): {details}", timeout=True)
    if "compacted" in details:
        return Compacted(0, f"{what}: {details}")
    return StoreError(f"etcd {what}: {details}")


def _range_end(prefix: bytes) -> bytes:
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


def _kv(pb: Any) -> KeyValue:
    return KeyValue(pb.key.decode(), bytes(pb.value), int(pb.create_revision), int(pb.mod_revision),
                    int(pb.lease))


def _lease_missing(err: StoreError) -> bool:
    # etcd's rpctypes.ErrGRPCLeaseNotFound: "etcdserver: requested lease not found" (NOT_FOUND).
    return "lease not found" in str(err)


def _compare_mod(key: bytes, result: int, revision: int) -> Any:
    return etcdrpc.Compare(key=key, target=etcdrpc.Compare.MOD, result=result, mod_revision=revision)


def _range_op(key: bytes) -> Any:
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))


def _current_from_failure(resp: Any) -> KeyValue | None:
    """The key's current value from a failed txn whose failure branch is a single Range."""
    kvs = resp.responses[0].response_range.kvs
    return _kv(kvs[0]) if kvs else None


class EtcdStore:
    def __init__(self, endpoints: list[str], timeout: float = 5.0) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(grpc_target(self.endpoints), options=_CHANNEL_OPTIONS)
        self._kv_stub = etcdrpc.KVStub(self._channel)
        self._watch_stub = etcdrpc.WatchStub(self._channel)
        self._maintenance = etcdrpc.MaintenanceStub(self._channel)
        self._lease_stub = etcdrpc.LeaseStub(self._channel)

    def _call(self, what: str, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise translate(err, what) from None
        except ValueError as err:  # grpc: "Cannot invoke RPC on closed channel!"
            raise StoreUnavailable(f"etcd client closed ({what}): {err}") from None

    # -- reads ------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        resp = self._call("get", self._kv_stub.Range, etcdrpc.RangeRequest(key=key.encode()))
        return _kv(resp.kvs[0]) if resp.kvs else None

    def list(
        self, prefix: str, *, limit: int = 0, start_key: str | None = None, revision: int = 0
    ) -> tuple[list[KeyValue], int, bool]:
        raw_prefix = prefix.encode()
        start = max(raw_prefix, start_key.encode()) if start_key else raw_prefix
        # No sort_order: etcd returns ranges in key order anyway, and any explicit sort makes
        # etcd 3.4 read the whole range before applying the limit (v3_server applyRange).
        request = etcdrpc.RangeRequest(key=start, range_end=_range_end(raw_prefix), limit=limit,
                                       revision=revision)
        resp = self._call("list", self._kv_stub.Range, request)
        items = [_kv(kv) for kv in resp.kvs]
        return items, revision or int(resp.header.revision), bool(resp.more)

    def current_revision(self) -> int:
        resp = self._call("revision", self._kv_stub.Range, etcdrpc.RangeRequest(key=b"\0", count_only=True))
        return int(resp.header.revision)

    # -- writes -----------------------------------------------------------------------------
    def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        k = key.encode()
        txn = etcdrpc.TxnRequest(
            compare=[_compare_mod(k, etcdrpc.Compare.EQUAL, 0)],
            success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=k, value=value, lease=lease))],
        )
        resp = self._leased_call("create", lease, txn)
        if not resp.succeeded:
            raise AlreadyExists(key)
        return int(resp.header.revision)

    def update(self, key: str, value: bytes, expected_mod_revision: int | None, *, lease: int = 0) -> int:
        k = key.encode()
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=k, value=value, lease=lease))
        try:
            resp = self._conditional("update", k, expected_mod_revision, put)
        except StoreError as err:
            if lease and _lease_missing(err):
                raise LeaseNotFound(lease) from None
            raise
        if not resp.succeeded:
            current = _current_from_failure(resp)
            if current is None:
                raise NotFound(key)
            raise Conflict(key, current)
        return int(resp.header.revision)

    def delete(self, key: str, expected_mod_revision: int | None = None) -> tuple[int, KeyValue]:
        k = key.encode()
        op = etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=k, prev_kv=True))
        resp = self._conditional("delete", k, expected_mod_revision, op)
        if not resp.succeeded:
            current = _current_from_failure(resp)
            if current is None:
                raise NotFound(key)
            raise Conflict(key, current)
        deleted = resp.responses[0].response_delete_range.prev_kvs
        if not deleted:  # deleted between compare and delete cannot happen in one txn; be safe
            raise NotFound(key)
        return int(resp.header.revision), _kv(deleted[0])

    def _leased_call(self, what: str, lease: int, txn: Any) -> Any:
        try:
            return self._call(what, self._kv_stub.Txn, txn)
        except StoreError as err:
            if lease and _lease_missing(err):
                raise LeaseNotFound(lease) from None
            raise

    def _conditional(self, what: str, key: bytes, expected: int | None, op: Any) -> Any:
        # Absent keys have mod_revision 0, so "exists" is mod_revision > 0.
        if expected is None:
            compare = _compare_mod(key, etcdrpc.Compare.GREATER, 0)
        else:
            compare = _compare_mod(key, etcdrpc.Compare.EQUAL, expected)
        txn = etcdrpc.TxnRequest(compare=[compare], success=[op], failure=[_range_op(key)])
        return self._call(what, self._kv_stub.Txn, txn)

    def compact(self, revision: int) -> None:
        self._call("compact", self._kv_stub.Compact,
                   etcdrpc.CompactionRequest(revision=revision, physical=True))

    # -- leases -----------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> int:
        # ID=0 lets etcd choose the id; etcd raises a TTL below its minimum to that minimum.
        request = etcdrpc.LeaseGrantRequest(TTL=ttl, ID=0)
        resp = self._call("lease grant", self._lease_stub.LeaseGrant, request)
        if resp.error:
            raise StoreError(f"etcd lease grant: {resp.error}")
        return int(resp.ID)

    def refresh_lease(self, lease_id: int) -> None:
        # LeaseKeepAlive is a bidi stream; one request and its answer is one refresh. An answer
        # with TTL <= 0 is etcd's way of saying the lease is gone.
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        try:
            call = self._lease_stub.LeaseKeepAlive(iter([request]), timeout=self.timeout)
            answers = [int(resp.TTL) for resp in call]
        except grpc.RpcError as err:
            raise translate(err, "lease keepalive") from None
        except ValueError as err:
            raise StoreUnavailable(f"etcd client closed (lease keepalive): {err}") from None
        if not answers or answers[0] <= 0:
            raise LeaseNotFound(lease_id)

    def revoke_lease(self, lease_id: int) -> None:
        try:
            self._call("lease revoke", self._lease_stub.LeaseRevoke, etcdrpc.LeaseRevokeRequest(ID=lease_id))
        except StoreError as err:
            if not _lease_missing(err):
                raise

    def lease_time_to_live(self, lease_id: int) -> int:
        try:
            resp = self._call("lease ttl", self._lease_stub.LeaseTimeToLive,
                              etcdrpc.LeaseTimeToLiveRequest(ID=lease_id))
        except StoreError as err:
            if _lease_missing(err):
                return -1
            raise
        return int(resp.TTL)

    # -- watch / health / lifecycle ---------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> EtcdWatchStream:
        try:
            return EtcdWatchStream(self._watch_stub, prefix, start_revision)
        except ValueError as err:  # closed channel
            raise StoreUnavailable(f"etcd client closed (watch): {err}") from None

    def healthy(self) -> bool:
        try:
            self._call("health", self._maintenance.Status, etcdrpc.StatusRequest(),
                       timeout=min(self.timeout, 2.0))
        except StoreError:
            return False
        return True

    def close(self) -> None:
        self._channel.close()


class EtcdWatchStream:
    """One etcd watch (its own gRPC stream) from start_revision, with prev_kv.

    Iteration yields one batch per WatchResponse carrying events; progress notifications are
    skipped. A lost connection raises StoreUnavailable, a compacted start revision Compacted;
    cancel() (from any thread) ends the iteration quietly.
    """

    def __init__(self, stub: Any, prefix: str, start_revision: int) -> None:
        raw = prefix.encode()
        create = etcdrpc.WatchCreateRequest(
            key=raw, range_end=_range_end(raw), start_revision=start_revision, prev_kv=True)
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        self._cancelled = threading.Event()
        self._call = stub.Watch(self._request_iter())

    def _request_iter(self) -> Iterator[Any]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def __iter__(self) -> Iterator[list[Event]]:
        try:
            for resp in self._call:
                batch = self._handle(resp)
                if batch:
                    yield batch
        except grpc.RpcError as err:
            if self._cancelled.is_set():
                return
            raise translate(err, "watch") from None
        finally:
            self._requests.put(None)
        if not self._cancelled.is_set():
            raise StoreUnavailable("etcd closed the watch stream")

    @staticmethod
    def _handle(resp: Any) -> list[Event]:
        if resp.compact_revision:
            raise Compacted(int(resp.compact_revision))
        if resp.canceled:
            raise StoreUnavailable(f"etcd cancelled the watch: {resp.cancel_reason}")
        return [_event(ev) for ev in resp.events]

    def cancel(self) -> None:
        self._cancelled.set()
        self._requests.put(None)
        self._call.cancel()


def _event(ev: Any) -> Event:
    prev = _kv(ev.prev_kv) if ev.HasField("prev_kv") else None
    kind = "DELETE" if ev.type == 1 else "PUT"  # mvccpb.Event.EventType: PUT = 0, DELETE = 1
    return Event(kind, _kv(ev.kv), prev)
