"""Smoke test of bench/cni_latency.py's report rendering (the benchmark itself is not a test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cni_latency.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("cni_latency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    module = sys.modules[spec.name]
    return module


def test_tables_show_ratios_pooled_rounds_and_failures():
    b = load_bench()
    ref = b.RunResult("bridge", "reference", seq_add=b.Stats.of([10.0, 12.0, 14.0]),
                      seq_del=b.Stats.of([20.0]), par_add=b.Stats.of([100.0, 120.0], wall=130.0),
                      par_del=b.Stats.of([50.0], wall=60.0))
    ours = [b.RunResult("bridge", "podnet+daemon", seq_add=b.Stats.of([5.0, 6.0]),
                        seq_del=b.Stats.of([30.0]), par_add=b.Stats.of([40.0], wall=45.0),
                        par_del=b.Stats.of([25.0], wall=w)) for w in (20.0, 40.0, 30.0)]
    failed = b.RunResult("bridge", "podnet", error="PluginFailed: boom")
    merged = b.RunResult.merge(ours)
    assert merged.seq_add.samples == [5.0, 6.0] * 3 and merged.par_del.wall == 30.0
    text = b.render_tables([ref, merged, b.RunResult.merge([failed])], n=3, parallel=2, rounds=3)
    lines = text.splitlines()
    add_row = next(ln for ln in lines if ln.startswith("| bridge+host-local | ADD | 12.0 / 14.0 |"))
    assert "| 5.5 / 6.0 | 0.46 | n/a | n/a |" in add_row
    assert "| 110.0 / 120.0 / 130 | 40.0 / 40.0 / 45 | 0.36 |" in text
    assert "* bridge / podnet: PluginFailed: boom" in text
    assert "3 rounds pooled" in text


def test_p95_is_the_nearest_rank():
    b = load_bench()
    assert b.p95(list(map(float, range(1, 101)))) == 95.0
    assert b.p95([3.0]) == 3.0
