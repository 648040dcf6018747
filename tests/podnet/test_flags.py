from __future__ import annotations

import argparse

import pytest

from podnet.flags import duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("40s", 40.0), ("5m0s", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("2", 2.0), ("0.5", 0.5),
    ("1.5s", 1.5), ("0s", 0.0)])
def test_duration_parses_go_style(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "5s junk", "m5"])
def test_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)
