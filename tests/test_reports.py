"""Human-readable reports: units, the figure catalogue, the replay/compare/sweep tables at
80 and 120 columns, CSV histogram columns, info piped, and docs/figures.md coverage."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from clirun import run as run_cli
from rich.console import Console

from kvmcache.params import PARAMS
from kvmcache.report import sweepfmt
from kvmcache.report.compare import render_compare, tie_notes
from kvmcache.report.figures import (
    FIGURES,
    KEY_FIGURES,
    latency_bucket_label,
    latency_percentile_ns,
    percentile_bucket,
    percentile_text,
)
from kvmcache.report.table import render_replay, time_rows
from kvmcache.report.units import compact, duration, human_bytes, page_seconds, percent
from kvmcache.sim.counters import COUNTERS, HISTOGRAM_BUCKETS, HISTOGRAMS, STRATEGIES
from kvmcache.sim.replay import replay_many
from kvmcache.sim.sweep import run_sweep
from kvmcache.trace import open_trace

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
G01 = str(GOLDEN / "01-first-private-4k.yaml")
G03 = str(GOLDEN / "03-two-vcpus-shared-and-private.yaml")
G11 = str(GOLDEN / "11-pamt-lock-contention.yaml")
WIDTHS = (80, 120)
SHORT = {s: s.removeprefix("dpamt-") for s in STRATEGIES}


def expected(trace: str) -> dict:
    return json.loads(Path(trace.replace(".yaml", ".expected.json")).read_text())


@pytest.fixture(scope="module")
def g11():
    return replay_many(open_trace(G11), list(STRATEGIES))


def render(fn, width: int, *args, **kwargs) -> str:
    console = Console(record=True, width=width, color_system=None)
    fn(*args, console, **kwargs)
    return console.export_text()


def fits(text: str, width: int) -> None:
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text  # nothing cut short


def kv(text: str, label: str) -> str:
    """The value printed after ``label`` at the start of a line (key-value blocks)."""
    for line in text.splitlines():
        if line.startswith(label + " "):
            return line[len(label) :].strip()
    raise AssertionError(f"no line {label!r}")


# --------------------------------------------------------------------------- units


def test_units():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(8192) == "8 KiB"
    assert human_bytes(30_336) == "29.6 KiB"
    assert human_bytes(1_634_304) == "1.6 MiB"
    assert human_bytes(285_212_672) == "272 MiB"
    assert human_bytes(1_070_000_000) == "1,020 MiB"
    assert human_bytes(-8192) == "-8 KiB"
    assert duration(0) == "0"
    assert duration(999) == "999 ns"
    assert duration(104_400) == "104 us"
    assert duration(15_500) == "15.5 us"
    assert duration(999_600) == "1.00 ms"  # not 1,000 us
    assert duration(2_500_000_000) == "2.50 s"
    assert page_seconds(70_100_000) == "0.0701"
    assert page_seconds(218_177_000_000) == "218.177"
    assert page_seconds(218_177_000_000, short=True) == "218"
    assert page_seconds(880) == "<0.0001"
    assert compact(9_999_999) == "9,999,999"
    assert compact(263_361_072) == "263.4M"
    assert compact(-12_300_000_000) == "-12.3G"
    assert percent(1001, 1000) == "+0.1%"
    assert percent(100_001, 100_000) == "+<0.1%"
    assert percent(99_999, 100_000) == "-<0.1%"
    assert percent(5, 0) == "n/a"
    assert percent(0, 5) == "-100.0%"
    assert percent(263_361_073, 1) == "x263.4M"
    assert percent(285_212_672, 212_992) == "x1,339"


# --------------------------------------------------------------------------- catalogue


def test_catalogue_covers_every_counter_once():
    assert {f for f in FIGURES if FIGURES[f].limitable} == set(COUNTERS)
    assert [f for f in FIGURES.values() if f.group == "other"] == []  # every counter catalogued
    assert [f.group for f in KEY_FIGURES] == sorted(
        (f.group for f in KEY_FIGURES),
        key=["memory", "safety", "DPAMT traffic", "waste", "time"].index,
    )
    assert FIGURES["seamcalls_under_mmu_lock"].label == "PAMT.ADD under mmu_lock"
    key = {f.counter for f in KEY_FIGURES}
    assert {"pamt_bytes_peak", "cache_only_ranges_peak", "vcpu_delay_ns"} <= key


def test_latency_buckets_and_percentiles():
    assert latency_bucket_label(0) == "< 128 ns"
    assert latency_bucket_label(1) == "128 ns - 256 ns"
    assert latency_bucket_label(7) == "8.19 us - 16.4 us"
    assert latency_bucket_label(31) == ">= 137 s"
    hist = [0] * 32
    hist[6], hist[7] = 1, 7  # golden 11, dpamt-install
    assert percentile_bucket(hist, 0.5) == 7
    assert percentile_bucket(hist, 0.1) == 6  # ceil(0.8) = the 1st latency
    assert percentile_text(hist, 0.99) == "< 16.4 us"
    assert latency_percentile_ns(hist, 0.5) == 16384
    assert percentile_text([0] * 32, 0.5) == "-"
    last = [0] * 31 + [3]
    assert percentile_text(last, 0.5) == ">= 137 s"
    assert latency_percentile_ns(last, 0.5) == 2 * (1 << 37)


# --------------------------------------------------------------------------- replay table


@pytest.mark.parametrize("width", WIDTHS)
def test_replay_table_time_block_and_bytes(g11, width):
    install = next(r for r in g11 if r.alloc == "dpamt-install")
    text = render(render_replay, width, install)
    fits(text, width)
    assert "Time (model clock, ns_* parameters)" in text
    assert kv(text, "allocating outside the lock (top-ups)") == "162 us"
    assert kv(text, "under mmu_lock: total / longest section") == "104 us / 15.5 us"
    assert kv(text, "pamt_lock waits: total / longest") == "70.4 us / 10.1 us"
    assert kv(text, "pamt_lock acquisitions that waited") == "10 of 18"
    assert kv(text, "pamt_lock held") == "54.0 us"
    assert kv(text, "fault latency p50 / p99 / max") == "< 16.4 us / < 16.4 us / 16.0 us"
    assert kv(text, "fault latency mean") == "13.5 us over 8 faults"
    assert kv(text, "vCPU delay (vCPU still busy)") == "33.0 us"
    # PAMT memory: 9 pairs (72 KiB) + a 4-byte refcount per 2 MiB of the 136 GiB host + region
    assert kv(text, "PAMT memory at peak") == "208 KiB"
    assert kv(text, "  pairs + refcount array") == "72 KiB + 136 KiB"
    assert kv(text, "live pages at peak") == "399 (1.6 MiB)"
    assert kv(text, "idle cache pages at peak") == "358 (1.4 MiB)"
    assert kv(text, "PAMT.ADD under mmu_lock") == "8"
    assert "SEAMCALLs" not in text
    # caches: slab objects at their byte sizes (desc 160 x 128 B, header 158 x 192 B)
    assert re.search(r"^\s*desc +4 +160 +0 +160 +160 +160 +20 KiB\s*$", text, re.M)
    assert re.search(r"^\s*header +4 +160 +8 +152 +158 +152 +29\.6 KiB\s*$", text, re.M)
    # labelled histogram rows (golden 11: one fault in 4-8 us, seven in 8-16 us)
    assert re.search(r"(^|  )8\.19 us - 16\.4 us +7 ", text, re.M)
    assert re.search(r"(^|  )4\.10 us - 8\.19 us +1 ", text, re.M)
    assert re.search(r"^2 +4 ", text, re.M)  # fault_pages: 4 faults took 2 pages
    assert "docs/figures.md" in text


def test_replay_table_none_static_pamt(g11):
    none = next(r for r in g11 if r.alloc == "none")
    text = render(render_replay, 80, none)
    assert kv(text, "PAMT memory at peak") == "272 MiB"
    assert kv(text, "  static PAMT_4K") == "all host memory"
    assert kv(text, "pamt_lock waits: total / longest") == "0 / 0"


def test_time_rows_match_the_expected_counters(g11):
    want = expected(G11)
    for r in g11:
        c = want[r.alloc]["counters"]
        rows = dict(time_rows(r))
        assert rows["pamt_lock held"] == duration(c["pamt_lock_held_ns"])
        assert rows["vCPU delay (vCPU still busy)"] == duration(c["vcpu_delay_ns"])


# --------------------------------------------------------------------------- compare table


def header_names(text: str) -> set[str]:
    """Strategy names (or their abbreviations) found whole in the table's lines."""
    words = set(re.findall(r"[a-z]+(?:-[a-z]+)?", text))
    return words & (set(STRATEGIES) | set(SHORT.values()))


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_fits_and_keeps_names_whole(g11, width):
    text = render(render_compare, width, g11, "dpamt-install")
    fits(text, width)
    for s in STRATEGIES:
        assert s in header_names(text) or SHORT[s] in header_names(text)
    assert not re.search(r"dpamt-$", text, re.M)  # no name broken at its hyphen
    if width == 120:  # room for the full names and the absolute differences
        assert re.search(
            r"\(reference\) +none +dpamt-alloc +dpamt-pair +dpamt-prealloc$", text, re.M
        )
        assert "(+272 MiB, x1,339)" in text
    order = [
        "PAMT memory at peak",
        "allocated under mmu_lock",
        "PAMT pairs at peak",
        "idle cache pages at peak",
        "top-up time (no lock)",
        "fault latency p50",
        "vCPU delay",
    ]
    where = [text.index(label) for label in order]
    assert where == sorted(where)
    for name in ("pamt_bytes_peak", "cache_only_ranges_peak", "seamcalls_under_mmu_lock"):
        assert name in text  # the counter --limit takes, whole
    assert "spread=512" in text  # dpamt-alloc ties dpamt-install with spread=1
    assert "docs/figures.md" in text
    lines = text.splitlines()
    # two lines per figure at most (value, then difference): PAMT memory, exact
    i = next(n for n, line in enumerate(lines) if line.startswith("PAMT memory at peak"))
    assert lines[i].split()[-10:] == ["208", "KiB", "272", "MiB", "208", "KiB"] + [
        "216",
        "KiB",
        "208",
        "KiB",
    ]
    assert "x1,339" in lines[i + 1]


def test_compare_wide_one_line_per_figure(g11):
    text = render(render_compare, 220, g11, "dpamt-install")
    fits(text, 220)
    row = next(line for line in text.splitlines() if "time_locked_max_ns" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells == [
        "longest mmu_lock section",
        "time_locked_max_ns",
        "15.5 us",
        "2.50 us (-13.0 us, -83.9%)",
        "15.5 us (=)",
        "16.1 us (+600 ns, +3.9%)",
        "15.5 us (=)",
    ]
    row = next(line for line in text.splitlines() if "pages_live_peak" in line)
    assert "713 (2.8 MiB) (+314, +78.7%)" in row


def test_tie_notes_say_why_and_what_to_vary(g11):
    notes = tie_notes(g11)
    assert len(notes) == 1
    assert notes[0].startswith("dpamt-install and dpamt-alloc tie on every figure: with spread=1")
    spread2 = replay_many(open_trace(G11), ["dpamt-install", "dpamt-alloc"], {"spread": 2})
    assert all("spread=1" not in n for n in tie_notes(spread2))


# --------------------------------------------------------------------------- sweep table


@pytest.fixture(scope="module")
def two_trace_sweep():
    return run_sweep(
        [G01, G03],
        ["dpamt-install", "dpamt-prealloc"],
        {"capacity": [8, 16, 24], "pamt_pairs": [1, 2]},
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_sweep_table_fits_with_the_star(two_trace_sweep, width):
    text = sweepfmt.table_text(two_trace_sweep, width=width)
    fits(text, width)
    first = next(line for line in text.splitlines() if re.match(r"\s*1 ", line))
    assert "★" in first  # rank 1 is on its trace's front, and the star column is never cut
    # the title, the column header, one per point on a front
    assert text.count("★") == 2 + sum(p.pareto for p in two_trace_sweep.points)
    assert re.search(r"\b(dpamt-)?prealloc\b", first)
    assert "docs/figures.md" in text


def test_sweep_table_keys_traces_when_narrow(two_trace_sweep):
    text = sweepfmt.table_text(two_trace_sweep, width=80)
    assert f"t1 = {G01}" in text and f"t2 = {G03}" in text
    wide = sweepfmt.table_text(two_trace_sweep, width=200)
    assert "01-first-private-4k.yaml" in wide and "t1 =" not in wide


# --------------------------------------------------------------------------- CSV, info


def test_csv_has_both_histograms(capsys):
    code, out, err = run_cli(capsys, "compare", G11, "--format", "csv")
    assert (code, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out)))
    want = expected(G11)
    for r in rows:
        for h in HISTOGRAMS:
            got = [int(r[f"{h}_{i}"]) for i in range(HISTOGRAM_BUCKETS[h])]
            assert got == want[r["alloc"]]["histograms"][h]
        assert {c: int(r[c]) for c in COUNTERS} == want[r["alloc"]]["counters"]


def test_info_piped_is_json_and_table_has_units(capsys):
    code, out, err = run_cli(capsys, "info", G11)
    assert (code, err) == (0, "")
    assert json.loads(out)["schema"] == "kvmcache.info/1"
    code, out, err = run_cli(capsys, "info", G11, "--format", "table")
    assert code == 0
    assert "201,500 ns (202 us)" in out  # ts last and span


# --------------------------------------------------------------------------- docs


def test_figures_doc_defines_everything():
    doc = (ROOT / "docs" / "figures.md").read_text()
    names = set(re.findall(r"`([a-z0-9_]+)`", doc))
    missing = [c for c in COUNTERS if c not in names]
    assert missing == []
    assert [h for h in HISTOGRAMS if h not in names] == []
    assert [p.name for p in PARAMS if p.name not in names] == []


def test_nothing_user_facing_points_at_shared():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "shared/" not in path.read_text(), path


def _scaled(result, factor: int):
    """A copy of ``result`` with every counter and histogram bucket multiplied: a huge run."""
    from dataclasses import replace

    return replace(
        result,
        counters={k: v * factor for k, v in result.counters.items()},
        histograms={k: [x * factor for x in v] for k, v in result.histograms.items()},
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_huge_values_still_fit(g11, width):
    """Counters in the billions: cells compact (``1.2G``), nothing is cut or wraps a number."""
    big = [_scaled(r, 10**9) for r in g11]
    text = render(render_replay, width, big[1])
    fits(text, width)
    exact = re.search(r"^\s*desc +4,000,000,000 +160,000,000,000 ", text, re.M)
    compacted = re.search(r"^\s*desc +4\.0G +160\.0G ", text, re.M)
    assert compacted if width == 80 else exact  # compacted only when too wide
    text = render(render_compare, width, big, "dpamt-install")
    fits(text, width)
    text = render(render_compare, width, big, "dpamt-install", all_counters=True)
    fits(text, width)


def test_readme_tour_excerpts_are_real_output():
    """The README's tour shows lines of real 80-column output: they must stay true."""
    from kvmcache.sim.replay import replay

    steady = str(ROOT / "traces" / "steady-tdx.kvmt")
    spread = replay_many(open_trace(steady), list(STRATEGIES), {"spread": 512})
    printed = render(render_compare, 80, spread, "dpamt-install").splitlines()
    printed += render(render_replay, 80, replay(open_trace(steady))).splitlines()
    printed = {line.rstrip() for line in printed}
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", readme, re.S)
    excerpts = [b for b in blocks if "pamt_bytes_peak" in b or "Time (model clock" in b]
    assert len(excerpts) == 2
    for block in excerpts:
        for line in block.splitlines():
            assert line == "..." or line in printed, line


def test_sweep_cells_by_unit():
    assert sweepfmt._cell("pages_allocated", 12_345, False) == "12,345"
    assert sweepfmt._cell("pages_allocated", 12_345_678, True) == "12.3M"
    assert sweepfmt._cell("time_locked_max_ns", 15_500, False) == "15.5 us"
    assert sweepfmt._cell("pamt_bytes_peak", 212_992, False) == "208 KiB"
    assert sweepfmt._cell("fault_latency_p99_ns", 16_384, False) == "16.4 us"  # derived, ns
    assert sweepfmt._cell("pages_allocated", None, False) == "-"


# --------------------------------------------------------------------------- first run


def test_compile_pending_reads_the_numba_cache(tmp_path, monkeypatch):
    import os
    import sys

    from kvmcache import jit

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    monkeypatch.setattr(jit, "_python", False)
    src = tmp_path / "kernel.py"
    src.write_text("x = 1\n")
    assert jit.compile_pending(str(src), "run_chunk")  # no __pycache__ at all
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    index = cache / f"kernel.run_chunk-12.{tag}.nbi"
    index.write_bytes(b"")
    os.utime(src, (2_000_000_000, 2_000_000_000))
    os.utime(index, (1_000_000_000, 1_000_000_000))
    assert jit.compile_pending(str(src), "run_chunk")  # the source changed after the cache
    os.utime(index, (2_000_000_001, 2_000_000_001))
    assert not jit.compile_pending(str(src), "run_chunk")
    assert jit.compile_pending(str(src), "finish")  # another function: not cached
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    assert not jit.compile_pending(str(src), "finish")


def test_first_run_note_on_a_terminal_only(monkeypatch):
    from kvmcache import jit
    from kvmcache.commands import _common

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(jit, "compile_pending", lambda source, entry: entry == "run_chunk")
    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    _common.first_run_note()
    assert tty.getvalue() == (
        "kvmcache: compiling (first run only, ~20 s; `kvmcache warmup` does it ahead)\n"
    )
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    _common.first_run_note()
    assert pipe.getvalue() == ""


@pytest.mark.parametrize(
    "scenario,alloc,words",
    [
        ("07-pamt-pairs-1-retry", "dpamt-install", "NOT spinlock-safe: retries (0 allocations"),
        ("06-tight-cache-alloc-under-lock", "none", "NOT spinlock-safe: allocates under mmu_lock"),
        ("01-first-private-4k", "dpamt-install", "spinlock-safe (no allocation under mmu_lock"),
    ],
)
def test_verdict_names_retries_and_allocations_apart(scenario, alloc, words):
    """Retries and allocations under mmu_lock are two verdicts: the table says which."""
    from kvmcache.report.table import verdict_text

    path = Path(__file__).parent / "golden" / f"{scenario}.yaml"
    (result,) = replay_many(open_trace(str(path)), [alloc])
    assert words in verdict_text(result).plain
