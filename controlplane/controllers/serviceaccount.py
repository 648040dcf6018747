"""The service account controller: every active namespace has the "default" ServiceAccount.

Informers on namespaces and serviceaccounts mark the namespace's key; one `sync(namespace)` creates
what is missing (upstream ServiceAccountsController with serviceAccountsToEnsure = [default]).  A
namespace being deleted gets nothing (upstream checks status.phase == Active): the namespace
controller is emptying it and the API server would refuse the creation anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from controlplane.controllers.base import KeyedController
from controlplane.controllers.context import ControllerContext
from podnet.api.client import NAMESPACES, SERVICEACCOUNTS, ApiError, Resource
from podnet.api.informer import Handlers

__all__ = ["ENSURED", "ServiceAccountsController", "build", "missing_accounts"]

log = logging.getLogger("podnet.controllers.serviceaccount")

Obj = dict[str, Any]
ENSURED = ("default",)


class Api(Protocol):
    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj: ...


class Cache(Protocol):
    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def active(ns: Mapping[str, Any]) -> bool:
    phase = (ns.get("status") or {}).get("phase") or "Active"
    return not _meta(ns).get("deletionTimestamp") and phase == "Active"


def missing_accounts(ns: Mapping[str, Any] | None, exists: Callable[[str], bool]) -> list[str]:
    """The ensured accounts to create in `ns` (none when it is gone or not active)."""
    if ns is None or not active(ns):
        return []
    return [name for name in ENSURED if not exists(name)]


class ServiceAccountsController(KeyedController):
    name = "serviceaccount"

    def __init__(self, api: Api, namespaces: Cache, accounts: Cache, *, resync_period: float = 30.0,
                 retry_delay: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api, self.namespaces, self.accounts = api, namespaces, accounts

    # ------------------------------------------------------------------ informer handlers (record only)
    def namespace_changed(self, key: str) -> None:
        self.mark(key)

    def account_deleted(self, sa: Obj) -> None:
        if _meta(sa).get("name") in ENSURED and _meta(sa).get("namespace"):
            self.mark(str(_meta(sa)["namespace"]))

    def resync_keys(self) -> list[str]:
        return [str(_meta(ns).get("name")) for ns in self.namespaces.list()]

    # ------------------------------------------------------------------ the loop
    def sync(self, key: str) -> None:
        def exists(name: str) -> bool:
            return self.accounts.get(f"{key}/{name}") is not None

        for name in missing_accounts(self.namespaces.get(key), exists):
            sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": key}}
            try:
                self.api.create(SERVICEACCOUNTS, sa, key)
            except ApiError as e:
                # 409: created meanwhile (the cache lags); 403/404: the namespace is going or gone
                if e.code in (403, 404, 409):
                    continue
                raise
            log.info("created serviceaccount %s/%s", key, name)


def build(ctx: ControllerContext) -> ServiceAccountsController:
    namespaces = ctx.informers.get(NAMESPACES)
    accounts = ctx.informers.get(SERVICEACCOUNTS)
    controller = ServiceAccountsController(ctx.client, namespaces, accounts,
                                           resync_period=ctx.options.resync_period)
    namespaces.add_handlers(Handlers(on_change=controller.namespace_changed))
    accounts.add_handlers(Handlers(on_delete=controller.account_deleted))
    return controller
