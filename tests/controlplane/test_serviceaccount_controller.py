"""Service account controller: "default" in every active namespace, recreated when deleted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.controllers.serviceaccount import ServiceAccountsController, missing_accounts
from podnet.api.client import SERVICEACCOUNTS, ApiError, Resource

Obj = dict[str, Any]


def ns(name: str, phase: str | None = "Active", deleting: bool = False) -> Obj:
    meta: Obj = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase} if phase else {}}


@pytest.mark.parametrize(("namespace", "exists", "missing"), [
    (None, False, []),
    (ns("a"), False, ["default"]),
    (ns("a", phase=None), False, ["default"]),  # no status yet: Active by default
    (ns("a"), True, []),
    (ns("a", phase="Terminating"), False, []),
    (ns("a", deleting=True), False, []),
])
def test_missing_accounts(namespace: Obj | None, exists: bool, missing: list[str]) -> None:
    assert missing_accounts(namespace, lambda _name: exists) == missing


class Cache:
    def __init__(self, objs: dict[str, Obj]) -> None:
        self.objs = objs

    def get(self, key: str) -> Obj | None:
        return self.objs.get(key)

    def list(self) -> list[Obj]:
        return list(self.objs.values())


class FakeApi:
    def __init__(self, error: int | None = None) -> None:
        self.created: list[tuple[str, str]] = []
        self.error = error

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj:
        assert res == SERVICEACCOUNTS
        if self.error:
            raise ApiError({"code": self.error, "reason": "X", "message": "x"})
        self.created.append((str(namespace), obj["metadata"]["name"]))
        return dict(obj)


def test_creates_default_and_recreates_after_deletion() -> None:
    api = FakeApi()
    accounts = Cache({"b/default": {"metadata": {"name": "default", "namespace": "b"}}})
    c = ServiceAccountsController(api, Cache({"a": ns("a"), "b": ns("b"), "gone": ns("gone", deleting=True)}),
                                  accounts)
    for key in c.resync_keys():
        c.mark(key)
    c.run_once()
    assert api.created == [("a", "default")]
    deleted = accounts.objs.pop("b/default")
    c.account_deleted(deleted)
    c.account_deleted({"metadata": {"name": "builder", "namespace": "b"}})  # not ensured: ignored
    c.run_once()
    assert api.created == [("a", "default"), ("b", "default")]


@pytest.mark.parametrize("code", [403, 404, 409])
def test_expected_conflicts_are_not_errors(code: int) -> None:
    c = ServiceAccountsController(FakeApi(error=code), Cache({"a": ns("a")}), Cache({}))
    c.sync("a")


def test_other_errors_retry() -> None:
    c = ServiceAccountsController(FakeApi(error=500), Cache({"a": ns("a")}), Cache({}))
    with pytest.raises(ApiError):
        c.sync("a")
