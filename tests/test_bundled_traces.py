"""Every bundled trace replays under every strategy, balanced, in both formats."""

from __future__ import annotations

import glob
import os

import pytest
from conftest import TRACES

from kvmcache.sim.counters import STRATEGIES
from kvmcache.sim.replay import replay_many
from kvmcache.trace import open_trace

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


def test_chunking_and_growth_do_not_change_anything(monkeypatch):
    """Small chunks (state carried across a dozen chunk boundaries) and tiny initial
    capacities (so the table hash, the vCPU slots and the free stack all grow mid-chunk,
    and the kernel resumes at the event it stopped) give exactly the results of one big
    chunk. scatter-tdx peaks at 17k live pages, past the free stack's real margin."""
    from kvmcache.sim import state
    from kvmcache.trace.binary import BinaryTrace

    path = os.path.join(TRACES, "scatter-tdx.kvmt")
    whole = replay_many(open_trace(path), list(STRATEGIES), timeline_every=5000)
    monkeypatch.setattr(state, "INITIAL_SLOTS", 4)
    monkeypatch.setattr(state, "INITIAL_VCPUS", 1)
    monkeypatch.setattr(state, "INITIAL_FSTACK", 1)
    grown = {"grow_tables": 0, "grow_vcpus": 0, "grow_fstack": 0}
    for name in grown:
        real = getattr(state, name)

        def counted(*a, _real=real, _name=name):
            grown[_name] += 1
            return _real(*a)

        monkeypatch.setattr(state, name, counted)
    small = replay_many(BinaryTrace(path, chunk_events=4099), list(STRATEGIES), timeline_every=5000)
    for a, b in zip(whole, small, strict=True):
        assert a.counters == b.counters
        assert a.histograms == b.histograms
        assert (a.timeline == b.timeline).all()
    assert all(grown.values()), grown  # every growth path ran
    assert whole[1].counters["vcpus_created"] >= 2
    assert whole[1].counters["tables_linked_mirror"] > 100
