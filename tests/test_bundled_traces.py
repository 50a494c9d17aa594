"""Every bundled trace replays under every strategy, balanced, in both formats."""

from __future__ import annotations

import glob
import os

import pytest

from kvmcache.sim.counters import STRATEGIES
from kvmcache.sim.replay import replay_many
from kvmcache.trace import open_trace

TRACES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "traces")
ALL = sorted(
    p
    for p in glob.glob(os.path.join(TRACES, "*"))
    if p.endswith((".yaml", ".kvmt")) and not p.endswith((".params.yaml", ".import.yaml"))
)


def test_bundle_is_not_empty():
    names = {os.path.basename(p) for p in ALL}
    assert "steady-tdx.kvmt" in names  # make demo
    assert len(ALL) >= 8


@pytest.mark.parametrize("path", ALL, ids=[os.path.basename(p) for p in ALL])
def test_every_strategy_is_balanced(path):
    results = replay_many(open_trace(path), list(STRATEGIES))
    for r in results:
        c = r.counters
        assert c["events"] > 0
        assert c["refcount_underflow"] == 0, (path, r.alloc)
        assert c["leaked_ranges"] == 0, (path, r.alloc)
        if r.params["teardown"] or c["vcpus_destroyed"]:
            assert c["pages_freed"] <= c["pages_allocated"]


PAIRS = [
    p[: -len(".yaml")]
    for p in ALL
    if p.endswith(".yaml") and os.path.exists(p[: -len(".yaml")] + ".kvmt")
]


@pytest.mark.parametrize("stem", PAIRS, ids=[os.path.basename(p) for p in PAIRS])
def test_yaml_and_binary_give_the_same_counters(stem):
    a = replay_many(open_trace(stem + ".yaml"), list(STRATEGIES))
    b = replay_many(open_trace(stem + ".kvmt"), list(STRATEGIES))
    for ra, rb in zip(a, b, strict=True):
        assert ra.counters == rb.counters
        assert ra.histograms == rb.histograms
        assert ra.params == rb.params
