"""`kvmcache compare`: strategies chosen, exact counters (golden and vs replay), JSON/CSV/table."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run as run_cli
from conftest import GOLDEN_DIR
from rich.console import Console

from kvmcache.report.compare import (
    KEY_FIGURES,
    relative_spread,
    render_compare,
    table_rows,
)
from kvmcache.report.figures import FIGURES, fmt_difference
from kvmcache.sim.counters import COUNTERS, STRATEGIES
from kvmcache.sim.replay import replay_many
from kvmcache.trace import open_trace

GOLDEN = Path(GOLDEN_DIR)
G01 = str(GOLDEN / "01-first-private-4k.yaml")
G03 = str(GOLDEN / "03-two-vcpus-shared-and-private.yaml")
G06 = str(GOLDEN / "06-tight-cache-alloc-under-lock.yaml")
G07 = str(GOLDEN / "07-pamt-pairs-1-retry.yaml")
G10 = str(GOLDEN / "10-vmx-1g-spurious.yaml")


def compare_json(capsys, *argv: str) -> dict:
    code, out, err = run_cli(capsys, "compare", *argv, "--format", "json", "--no-progress")
    assert (code, err) == (0, ""), err
    return json.loads(out)


def expected(trace: str) -> dict:
    return json.loads(Path(trace.replace(".yaml", ".expected.json")).read_text())


# --------------------------------------------------------------------------- strategies


def test_default_is_every_strategy_reference_dpamt_install(capsys):
    doc = compare_json(capsys, G01)
    assert doc["schema"] == "kvmcache.compare/1"
    assert doc["reference"] == "dpamt-install"
    assert [r["alloc"] for r in doc["runs"]] == list(STRATEGIES)


def test_vmx_default_is_none_only(capsys):
    doc = compare_json(capsys, G10)
    assert doc["reference"] == "none"
    assert [r["alloc"] for r in doc["runs"]] == ["none"]
    assert doc["deltas"] == {"none": dict.fromkeys(COUNTERS, 0)}
    assert doc["runs"][0]["counters"] == expected(G10)["none"]["counters"]


def test_one_alloc_is_compared_with_the_default(capsys):
    doc = compare_json(capsys, G01, "--alloc", "dpamt-pair")
    assert doc["reference"] == "dpamt-install"
    assert [r["alloc"] for r in doc["runs"]] == ["dpamt-install", "dpamt-pair"]
    d = doc["deltas"]["dpamt-pair"]
    # golden 01: dpamt-pair 170 idle pages at peak, 183 pages, 3 pairs discarded; install 90, 103, 0
    assert (d["cache_pages_idle_peak"], d["pages_allocated"], d["pairs_discarded"]) == (80, 80, 3)
    assert doc["deltas"]["dpamt-install"] == dict.fromkeys(COUNTERS, 0)


def test_several_allocs_first_is_reference(capsys):
    doc = compare_json(capsys, G01, "--alloc", "dpamt-prealloc", "--alloc", "none")
    assert doc["reference"] == "dpamt-prealloc"
    assert [r["alloc"] for r in doc["runs"]] == ["dpamt-prealloc", "none"]
    # golden 01: prealloc 55 idle pages at peak, none 80
    assert doc["deltas"]["none"]["cache_pages_idle_peak"] == 25
    assert doc["deltas"]["dpamt-prealloc"]["cache_pages_idle_peak"] == 0


def test_default_alone_is_one_column(capsys):
    doc = compare_json(capsys, G01, "--alloc", "dpamt-install", "--alloc", "dpamt-install")
    assert [r["alloc"] for r in doc["runs"]] == ["dpamt-install"]


# --------------------------------------------------------------------------- exact numbers


@pytest.mark.parametrize("trace", [G01, G03, G06, G07])
def test_json_shape_and_golden_counters(capsys, trace):
    doc = compare_json(capsys, trace)
    assert set(doc) == {"schema", "version", "trace", "reference", "runs", "deltas"}
    assert doc["trace"]["path"] == trace
    assert doc["trace"]["vm_type"] == "tdx"
    want = expected(trace)
    ref = want["dpamt-install"]["counters"]
    assert list(doc["deltas"]) == list(STRATEGIES)
    for run in doc["runs"]:
        assert run["schema"] == "kvmcache.replay/1"
        assert list(run["counters"]) == list(COUNTERS)
        assert run["counters"] == want[run["alloc"]]["counters"]
        assert run["histograms"] == want[run["alloc"]]["histograms"]
        assert doc["deltas"][run["alloc"]] == {
            c: want[run["alloc"]]["counters"][c] - ref[c] for c in COUNTERS
        }


@pytest.mark.parametrize("trace", [G06, G07])
def test_runs_equal_separate_replays(capsys, trace):
    doc = compare_json(capsys, trace)
    for run, alloc in zip(doc["runs"], STRATEGIES, strict=True):
        code, out, err = run_replay(capsys, trace, alloc)
        assert (code, err) == (0, "")
        assert run == json.loads(out)


@pytest.mark.parametrize("scenario, threads", [("steady", "2"), ("churn", "3")])
def test_runs_equal_separate_replays_over_many_chunks(
    capsys, tmp_path, monkeypatch, scenario, threads
):
    """The strategies' threads each go at their own pace over the chunks; each run still
    equals the strategy's own replay (a binary trace read in 31 chunks of 977 events)."""
    from kvmcache.trace import binary

    path = str(tmp_path / "t.kvmt")
    code, _, err = run_cli(capsys, "synth", scenario, "--events", "30000", "-o", path, "-q")
    assert (code, err) == (0, "")
    monkeypatch.setattr(binary, "chunk_records", lambda chunk_events, rsize: 977)
    doc = compare_json(capsys, path, "--threads", threads)
    assert doc["runs"][0]["counters"]["events"] == 30000
    for run, alloc in zip(doc["runs"], STRATEGIES, strict=True):
        code, out, err = run_replay(capsys, path, alloc)
        assert (code, err) == (0, "")
        assert run == json.loads(out)


def run_replay(capsys, trace: str, alloc: str) -> tuple[int, str, str]:
    return run_cli(capsys, "replay", trace, "--alloc", alloc, "--format", "json", "--no-progress")


def test_threads_do_not_change_results(capsys):
    one = compare_json(capsys, G07, "--threads", "1")
    two = compare_json(capsys, G07, "--threads", "2")
    assert one == two


def test_set_and_config_apply_to_every_run_cli(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("capacity: 3\nmin_desc: 0\nmin_sept: 0\n")
    doc = compare_json(
        capsys, G01, "--config", str(cfg), "--set", "min_spt=0", "--set", "min_header=0"
    )
    for r in doc["runs"]:
        assert r["params"]["capacity"] == 3 and r["params"]["min_spt"] == 0


def test_stdin_binary_trace(tmp_path):
    kvmt = tmp_path / "x.kvmt"
    conv = subprocess.run(
        [sys.executable, "-m", "kvmcache", "convert", G03, str(kvmt)],
        capture_output=True,
        text=True,
    )
    assert conv.returncode == 0, conv.stderr
    with open(kvmt, "rb") as f:
        p = subprocess.run(
            [sys.executable, "-m", "kvmcache", "compare", "-", "--format", "json"],
            stdin=f,
            capture_output=True,
            text=True,
        )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["trace"]["path"] == "-"
    want = expected(G03)
    assert doc["trace"]["events"] == want["none"]["counters"]["events"] == 10
    assert [r["alloc"] for r in doc["runs"]] == list(STRATEGIES)
    for r in doc["runs"]:
        assert r["counters"] == want[r["alloc"]]["counters"]


# --------------------------------------------------------------------------- CSV, table


def test_csv_one_row_per_strategy(capsys):
    code, out, err = run_cli(capsys, "compare", G01, "--format", "csv")
    assert (code, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["alloc"] for r in rows] == list(STRATEGIES)
    want = expected(G01)
    for r in rows:
        assert {c: int(r[c]) for c in COUNTERS} == want[r["alloc"]]["counters"]


def test_delta_and_spread_formatting():
    pages = FIGURES["pages_allocated"]
    assert fmt_difference(pages, 1234, 1178) == "+56, +4.8%"
    assert fmt_difference(pages, 90, 100) == "-10, -10.0%"
    assert fmt_difference(pages, 3, 0) == "+3, n/a"
    assert fmt_difference(pages, 3, 0, narrow=True) == "+3"
    assert fmt_difference(pages, 90, 100, narrow=True) == "-10.0%"
    assert fmt_difference(pages, 263_361_073, 1, narrow=True) == "x263.4M"
    assert fmt_difference(pages, 100_001, 100_000) == "+1, +<0.1%"
    idle = FIGURES["cache_idle_page_ns"]
    assert fmt_difference(idle, 2_500_000_000, 2_000_000_000) == "+0.500, +25.0%"
    lat = FIGURES["time_locked_ns"]
    assert fmt_difference(lat, 104_400, 11_000) == "+93.4 us, +849.1%"
    assert fmt_difference(lat, 121_000, 11_000) == "+110 us, x11.0"
    mem = FIGURES["pamt_bytes_peak"]
    assert fmt_difference(mem, 221_184, 212_992) == "+8 KiB, +3.8%"
    assert relative_spread([5, 5, 5]) == 0.0
    assert relative_spread([0, 0]) == 0.0
    assert relative_spread([0, 3]) == 1.0
    assert relative_spread([90, 170, 55]) == (170 - 55) / 170


def _results(trace: str, allocs=STRATEGIES):
    return replay_many(open_trace(trace), list(allocs))


def test_rows_in_a_stable_grouped_order():
    """Rows keep the key figures' order (memory, safety, DPAMT traffic, waste, time),
    whatever the values: the same trace or another gives the same rows."""
    rows = table_rows(_results(G01))
    assert [r.counter for r in rows] == [f.counter for f in KEY_FIGURES]
    assert [r.counter for r in table_rows(_results(G07))] == [r.counter for r in rows]
    groups = [r.figure.group for r in rows]
    assert list(dict.fromkeys(groups)) == ["memory", "safety", "DPAMT traffic", "waste", "time"]
    assert rows[0].counter == "pamt_bytes_peak"
    # golden 01: `none` has no PAMT pair at all (spread 1), nobody allocates under the lock
    pairs = next(r for r in rows if r.counter == "pamt_pairs_peak")
    assert pairs.spread == 1.0 and pairs.values[0] == 0
    under = next(r for r in rows if r.counter == "alloc_under_lock")
    assert under.spread == 0.0
    every = table_rows(_results(G01), all_counters=True)
    assert len([r for r in every if r.figure.limitable]) == len(COUNTERS)


@pytest.mark.parametrize("width", [200, 80])
def test_table_cells(width):
    console = Console(record=True, width=width, color_system=None)
    render_compare(_results(G01), "dpamt-install", console)
    text = console.export_text()
    assert "kvmcache compare" in text and "(ref" in text
    assert max(len(line) for line in text.splitlines()) <= width
    if width == 200:
        # idle cache pages at peak: install 90, pair 170; pairs discarded: 0 -> 3
        assert "170 (680 KiB) (+80, +88.9%)" in text
        assert "3 (24 KiB) (+3, n/a)" in text
        assert "cache_pages_idle_peak" in text
    else:
        lines = text.splitlines()
        i = next(n for n, line in enumerate(lines) if line.startswith("idle cache pages at peak"))
        assert lines[i].split()[-5:] == ["90", "80", "90", "170", "55"]
        assert lines[i + 1].split() == ["cache_pages_idle_peak", "-11.1%", "=", "+88.9%", "-38.9%"]
    assert "spinlock-safe" in text and "balanced" in text


def test_table_format_on_the_command_line(capsys):
    code, out, err = run_cli(capsys, "compare", G06, "--format", "table", "--all-counters")
    assert (code, err) == (0, "")
    assert "kvmcache compare" in out and "NO" in out


def test_unknown_alloc_is_usage_error(capsys):
    code, out, err = run_cli(capsys, "compare", G01, "--alloc", "dpamt-magic")
    assert code == 2 and out == ""


def test_missing_trace_is_usage_error(capsys, tmp_path):
    missing = os.path.join(tmp_path, "nope.kvmt")
    code, out, err = run_cli(capsys, "compare", missing)
    assert code == 2 and out == ""
    assert err == f"kvmcache: error: {missing}: no such file\n"


def test_table_to_a_pipe_fits_pipe_width(capsys, monkeypatch):
    """Piped, the table is laid out for PIPE_WIDTH columns: one line per figure with every
    strategy's value on it."""
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, err = run_cli(capsys, "compare", G07, "--format", "table", "--no-progress")
    assert code == 0, err
    rows = [line for line in out.splitlines() if "PAMT.ADD " in line and "mmu_lock" not in line]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].split("│")[1:-1]]
    assert cells == ["PAMT.ADD", "pamt_add", "7", "0 -100.0%", "42 +500.0%", "7 =", "7 ="]
    assert max(len(line) for line in out.splitlines()) <= 160
