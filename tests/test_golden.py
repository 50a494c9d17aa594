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


def test_thirteen_goldens_five_strategies():
    assert len(GOLDEN) == 13 and len(CASES) == 65


SHARED = os.path.join(HERE, "..", "..", "shared", "golden")


@pytest.mark.skipif(
    not os.path.isdir(SHARED), reason="no shared golden directory beside the checkout"
)
def test_fixtures_follow_the_shared_goldens():
    """tests/golden is a copy of the shared golden scenarios, byte for byte, when they are here."""
    names = sorted(n for n in os.listdir(SHARED) if n.endswith((".yaml", ".expected.json")))
    assert (
        sorted(os.path.basename(p) for p in glob.glob(os.path.join(HERE, "golden", "*"))) == names
    )
    for n in names:
        with (
            open(os.path.join(SHARED, n), "rb") as a,
            open(os.path.join(HERE, "golden", n), "rb") as b,
        ):
            assert a.read() == b.read(), n


@pytest.mark.parametrize(
    "path,alloc", CASES, ids=[f"{os.path.basename(p)[:2]}-{a}" for p, a in CASES]
)
def test_golden(path, alloc):
    want = expected(path, alloc)
    r = replay(open_trace(path), alloc)
    assert r.counters == want["counters"]
    assert r.histograms == want["histograms"]


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


def _child(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter with ``env``, given the golden directory."""
    return subprocess.run(
        [sys.executable, "-c", script, os.path.join(HERE, "golden")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_goldens_with_jit_disabled():
    """The kernel's Python body (NUMBA_DISABLE_JIT=1) computes the same counters."""
    p = _child(_NOJIT, dict(os.environ, NUMBA_DISABLE_JIT="1"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("0 ")


_PYTHON_MODE = r"""
import contextlib, io, json, os, sys
from kvmcache.cli import main
out = []
for name in sorted(os.listdir(sys.argv[1])):
    if not name.endswith(".yaml"):
        continue
    path = os.path.join(sys.argv[1], name)
    for argv in (["replay", path, "--format", "json"], ["compare", path, "--format", "json"]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
        out.append([name, argv[0], json.loads(buf.getvalue())])
print(json.dumps({"numba": "numba" in sys.modules, "runs": out}))
"""


def test_commands_replay_tiny_traces_in_python_without_numba():
    """`kvmcache replay` / `compare` on a tiny trace run the kernel's Python body without
    importing numba (start-up 0.4 s instead of 1.1 s): same counters, nothing on stderr."""
    p = _child(_PYTHON_MODE, {k: v for k, v in os.environ.items() if k != "KVMCACHE_JIT"})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    doc = json.loads(p.stdout)
    assert doc["numba"] is False
    assert len(doc["runs"]) == 2 * len(GOLDEN)
    for name, cmd, report in doc["runs"]:
        want = json.load(
            open(os.path.join(HERE, "golden", name.replace(".yaml", ".expected.json")))
        )
        runs = report["runs"] if cmd == "compare" else [report]
        for r in runs:
            assert r["counters"] == want[r["alloc"]]["counters"], (name, r["alloc"])
            assert r["histograms"] == want[r["alloc"]]["histograms"], (name, r["alloc"])
