"""Unit-tier guard for every CNI test."""

from __future__ import annotations

import pytest

from podnet.xtables import nft


@pytest.fixture(autouse=True)
def _no_real_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests run in the root netns: any real nft call here would change the host."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test reached the real nft")

    monkeypatch.setattr(nft, "run_script", refuse)
    monkeypatch.setattr(nft, "list_json", refuse)
