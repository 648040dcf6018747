"""Fakes of podnet.api seams shared by the controller unit tests."""

from __future__ import annotations

from typing import Any

from podnet.api.informer import object_key

Obj = dict[str, Any]


class FakeCache:
    """An informer cache: key -> object, filled by the test."""

    def __init__(self, *objs: Obj) -> None:
        self.items = {object_key(o): o for o in objs}

    def get(self, key: str) -> Obj | None:
        return self.items.get(key)

    def list(self) -> list[Obj]:
        return list(self.items.values())

    def put(self, obj: Obj) -> None:
        self.items[object_key(obj)] = obj
