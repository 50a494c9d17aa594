"""The shared golden scenarios (copied into tests/golden/): exact counters for every strategy."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from kvmcache.sim.replay import replay
from kvmcache.trace import open_trace

HERE = os.path.dirname(__file__)
GOLDEN = sorted(glob.glob(os.path.join(HERE, "golden", "*.yaml")))
CASES = [
    (path, alloc)
    for path in GOLDEN
    for alloc in json.load(open(path[: -len(".yaml")] + ".expected.json"))
]


def expected(path: str, alloc: str) -> dict:
    with open(path[: -len(".yaml")] + ".expected.json") as f:
        return json.load(f)[alloc]


def test_ten_goldens_five_strategies():
    assert len(GOLDEN) == 10 and len(CASES) == 50


@pytest.mark.parametrize(
    "path,alloc", CASES, ids=[f"{os.path.basename(p)[:2]}-{a}" for p, a in CASES]
)
def test_golden(path, alloc):
    want = expected(path, alloc)
    r = replay(open_trace(path), alloc)
    assert r.counters == want["counters"]
    assert r.histograms["fault_pages"] == want["histograms"]["fault_pages"]


_NOJIT = """
import glob, json, sys
from kvmcache.sim.replay import replay
from kvmcache.trace import open_trace
bad = []
for path in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    exp = json.load(open(path[:-5] + ".expected.json"))
    for alloc, want in exp.items():
        r = replay(open_trace(path), alloc)
        if r.counters != want["counters"] or r.histograms != want["histograms"]:
            bad.append((path, alloc))
print(len(bad), bad)
sys.exit(1 if bad else 0)
"""


def test_goldens_with_jit_disabled():
    """The kernel's Python body (NUMBA_DISABLE_JIT=1) computes the same counters."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    p = subprocess.run(
        [sys.executable, "-c", _NOJIT, os.path.join(HERE, "golden")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("0 ")
