"""`kvmcache plot` and the timeline CSV it reads: input detection, charts, text summary."""

from __future__ import annotations

import builtins
import csv
import json
import os

import pytest
from clirun import error_line, run
from conftest import GOLDEN_DIR

from kvmcache.errors import KvmcacheError
from kvmcache.report import documents, plots, sweepfmt
from kvmcache.report.documents import replay_document
from kvmcache.sim import sweep
from kvmcache.sim.replay import replay
from kvmcache.trace import open_trace

GOLDEN = GOLDEN_DIR
FAST = os.path.join(GOLDEN, "02-same-range-fast-path.yaml")  # 9 events, no vm_destroy
TIGHT = os.path.join(GOLDEN, "06-tight-cache-alloc-under-lock.yaml")  # 4 events, allocs under lock
RETRY = os.path.join(GOLDEN, "07-pamt-pairs-1-retry.yaml")  # 4 events, fault retries

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def timeline(capsys, tmp_path, trace: str, alloc: str, every: int = 2):
    """Run `replay --timeline` and return (csv rows, replay JSON document, csv path)."""
    path = tmp_path / f"{os.path.basename(trace)}.{alloc}.csv"
    code, out, err = run(
        capsys, "replay", trace, "--alloc", alloc, "--timeline", str(path), "--every", str(every),
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads(out), str(path)


# ------------------------------------------------------------------------ timeline CSV


@pytest.mark.parametrize(
    "trace, alloc, events",
    [
        (FAST, "dpamt-install", [2, 4, 6, 8, 9]),  # 9 events: the last row is the end of trace
        (TIGHT, "dpamt-alloc", [2, 4]),  # 4 events: no extra end row
        (RETRY, "dpamt-install", [2, 4]),
    ],
)
def test_timeline_rows_at_event_indices(capsys, tmp_path, trace, alloc, events):
    rows, doc, _ = timeline(capsys, tmp_path, trace, alloc)
    assert list(rows[0]) == [
        "alloc", "event", "ts", "pages_live", "cache_pages_idle", "pamt_pairs_live",
        "alloc_under_lock", "fault_retries", "pages_allocated",
    ]  # fmt: skip
    assert [int(r["event"]) for r in rows] == events
    assert {r["alloc"] for r in rows} == {alloc}
    last, c = rows[-1], doc["counters"]
    assert int(last["alloc_under_lock"]) == c["alloc_under_lock"]
    assert int(last["fault_retries"]) == c["fault_retries"]
    assert int(last["pages_allocated"]) == c["pages_allocated"]
    assert int(last["cache_pages_idle"]) == c["cache_pages_idle_end"]
    assert int(last["pamt_pairs_live"]) == c["pamt_pairs_end"]
    assert int(last["ts"]) == doc["trace"]["ts_last"]


def test_timeline_counts_nonzero(capsys, tmp_path):
    # the figures the trade-off is about actually move in these two scenarios
    rows, doc, _ = timeline(capsys, tmp_path, TIGHT, "dpamt-install")
    assert doc["counters"]["alloc_under_lock"] > 0
    assert int(rows[-1]["alloc_under_lock"]) == doc["counters"]["alloc_under_lock"]
    rows, doc, _ = timeline(capsys, tmp_path, RETRY, "dpamt-install")
    assert doc["counters"]["fault_retries"] == 5
    assert int(rows[-1]["fault_retries"]) == 5


# ------------------------------------------------------------------------ inputs


@pytest.fixture
def sweep_files(tmp_path):
    grid = sweep.parse_grid(["capacity=14,40", "pamt_pairs=1,2"])
    res = sweep.run_sweep([RETRY, TIGHT], ["dpamt-install", "dpamt-alloc"], grid)
    j = tmp_path / "sweep.json"
    c = tmp_path / "sweep.csv"
    j.write_text(json.dumps(documents.sweep_document(res)))
    c.write_text(sweepfmt.render_csv(res))
    return str(j), str(c), res


@pytest.fixture
def compare_file(tmp_path):
    src = open_trace(RETRY)
    runs = [replay_document(replay(src, a)) for a in ("dpamt-install", "dpamt-alloc", "dpamt-pair")]
    path = tmp_path / "compare.json"
    path.write_text(json.dumps({"schema": "kvmcache.compare/1", "runs": runs}))
    return str(path), runs


def test_detect_kinds(capsys, tmp_path, sweep_files, compare_file):
    j, c, res = sweep_files
    _, _, tl = timeline(capsys, tmp_path, FAST, "dpamt-install")
    assert plots.read_input(tl).kind == "timeline"
    for path in (j, c):
        data = plots.read_input(path)
        assert data.kind == "sweep" and data.grid == ["capacity", "pamt_pairs"]
        valid = res.valid
        assert len(data.runs) == len(valid)
        assert sorted(r.pareto for r in data.runs) == sorted(p.pareto for p in valid)
    data = plots.read_input(compare_file[0])
    assert data.kind == "compare" and [r.alloc for r in data.runs] == [
        "dpamt-install", "dpamt-alloc", "dpamt-pair",
    ]  # fmt: skip
    two = plots.load([tl, tl])
    assert [s.label for s in two.series] == [f"{os.path.basename(tl)[:-4]}: dpamt-install"] * 2


def test_front_2d():
    pts = [(5, 0), (3, 2), (4, 2), (3, 3), (1, 9), (1, 7), (6, 0)]
    assert plots.front_2d(pts) == [(1, 7), (3, 2), (5, 0)]


def test_bad_inputs_exit_2(capsys, tmp_path, compare_file, sweep_files):
    odd = tmp_path / "odd.json"
    odd.write_text('{"schema": "kvmcache.other/9"}')
    code, _, err = run(capsys, "plot", str(odd), "--format", "table")
    assert code == 2 and "schema 'kvmcache.other/9'" in error_line(err)
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    code, _, err = run(capsys, "plot", str(junk), "--format", "table")
    assert code == 2 and "not a kvmcache result" in error_line(err)
    code, _, err = run(capsys, "plot", compare_file[0], sweep_files[0], "--format", "table")
    assert code == 2 and "different kinds" in error_line(err)
    code, _, err = run(capsys, "plot", compare_file[0])
    assert code == 2 and "give -o" in error_line(err)
    code, _, err = run(capsys, "plot", compare_file[0], "-o", str(tmp_path / "x.gif"))
    assert code == 2 and "unknown chart type .gif" in error_line(err)


# ------------------------------------------------------------------------ charts


def _check_png(path):
    data = open(path, "rb").read()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def _check_svg(path):
    text = open(path, encoding="utf-8").read()
    assert text.startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")


def test_charts_each_kind(capsys, tmp_path, sweep_files, compare_file):
    pytest.importorskip("matplotlib", reason="charts need the optional extra kvmcache[plot]")
    _, _, tl1 = timeline(capsys, tmp_path, TIGHT, "dpamt-install")
    _, _, tl2 = timeline(capsys, tmp_path, TIGHT, "dpamt-alloc")
    j, c, _ = sweep_files
    cases = [
        ([tl1, tl2], "timeline.png", _check_png),
        ([j], "sweep.png", _check_png),
        ([c], "sweep.svg", _check_svg),
        ([compare_file[0]], "compare.png", _check_png),
    ]
    for inputs, name, check in cases:
        out = tmp_path / "out" / name
        out.parent.mkdir(exist_ok=True)
        code, stdout, err = run(capsys, "plot", *inputs, "-o", str(out))
        assert code == 0 and stdout == "", err
        check(out)
    html = tmp_path / "out" / "compare.html"
    code, _, err = run(capsys, "plot", compare_file[0], "-o", str(html))
    assert code == 0, err
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "</html>" in page
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [name for _, name, _ in cases] + ["compare.html"]
    )  # written atomically: no temporary file left


def test_missing_matplotlib(capsys, monkeypatch, compare_file, tmp_path):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = tmp_path / "c.png"
    code, stdout, err = run(capsys, "plot", compare_file[0], "-o", str(out))
    assert code == 2 and stdout == "" and not out.exists()
    assert "pip install 'kvmcache[plot]'" in error_line(err)
    # the text summary needs nothing extra
    code, stdout, err = run(capsys, "plot", compare_file[0], "--format", "table")
    assert code == 0, err
    assert "cache_pages_idle_peak" in stdout


# ------------------------------------------------------------------------ text summary


def test_text_summary_compare(capsys, compare_file):
    path, runs = compare_file
    code, out, err = run(capsys, "plot", path, "--format", "table")
    assert code == 0, err
    lines = out.splitlines()
    i = lines.index("fault_retries")
    retries = [r["counters"]["fault_retries"] for r in runs]
    assert retries[0] == 5  # dpamt-install retries on this trace; the others do not
    assert retries[1:] == [0, 0]
    assert lines[i + 1 : i + 4] == [
        f"  dpamt-install {'█' * 24} 5",
        f"  dpamt-alloc   {' ' * 24} 0",
        f"  dpamt-pair    {' ' * 24} 0",
    ]


def test_text_summary_sweep_and_timeline(capsys, tmp_path, sweep_files):
    j, _, res = sweep_files
    code, out, err = run(capsys, "plot", j, "--format", "table")
    assert code == 0, err
    assert "grid: capacity, pamt_pairs" in out
    front = [p for p in res.valid if p.pareto]
    assert out.count("Pareto front") == len({p.trace for p in front})
    _, _, tl = timeline(capsys, tmp_path, FAST, "dpamt-install")
    code, out, err = run(capsys, "plot", tl, "--format", "table")
    assert code == 0, err
    assert "dpamt-install: 5 samples, events 2..9" in out


# ------------------------------------------------------------------------ axes, latency, HTML


def test_default_axes_vary_and_can_be_chosen(sweep_files):
    j, c, res = sweep_files
    data = plots.load([j])
    plots.choose_axes(data)
    assert data.x == "cache_pages_idle_peak"
    # the first preferred y that differs between the points (a constant one is skipped)
    ys = [r.value(data.y) for r in data.runs]
    assert len(set(ys)) > 1 and data.y in plots.SWEEP_Y
    for earlier in plots.SWEEP_Y[: plots.SWEEP_Y.index(data.y)]:
        assert len({r.value(earlier) for r in data.runs}) == 1
    plots.choose_axes(data, "pamt_lock_wait_ns", "fault_latency_p99_ns")
    assert (data.x, data.y, data.asked) == ("pamt_lock_wait_ns", "fault_latency_p99_ns", True)
    # a CSV has no histograms: no p99, said so
    csv_data = plots.load([c])
    with pytest.raises(KvmcacheError, match="has no fault_latency_p99_ns .no fault_latency"):
        plots.choose_axes(csv_data, None, "fault_latency_p99_ns")
    with pytest.raises(KvmcacheError, match="^--x 'idle': unknown counter"):
        plots.choose_axes(csv_data, "idle", None)


def test_p99_is_the_upper_bucket_bound(compare_file):
    from kvmcache.results import latency_percentile_bound

    _, runs = compare_file
    for doc in runs:
        h = doc["histograms"]["fault_latency"]
        p99 = latency_percentile_bound(h)
        b = next(i for i in range(32) if sum(h[: i + 1]) * 100 >= 99 * sum(h))
        assert p99 == (128 if b == 0 else 1 << (b + 7))
    h = [0] * 32
    h[0], h[31] = 1, 99
    assert latency_percentile_bound(h) == 1 << 38  # the open last bucket
    assert latency_percentile_bound([0] * 32) == 0


def test_plot_cli_axes_errors(capsys, tmp_path, sweep_files):
    j, _, _ = sweep_files
    code, _, err = run(capsys, "plot", j, "--format", "table", "--x", "nope")
    assert code == 2 and error_line(err).startswith("--x 'nope': unknown counter; valid: events,")


def _html_parts(text: str) -> dict:
    from html.parser import HTMLParser

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: dict[str, int] = {}
            self.external: list[str] = []
            self.cells: list[str] = []
            self._in_cell = False

        def handle_starttag(self, tag, attrs):
            self.tags[tag] = self.tags.get(tag, 0) + 1
            self._in_cell = tag in ("td", "th")
            for k, v in attrs:
                if k in ("src", "href", "xlink:href") and v and not v.startswith("#"):
                    self.external.append(v)

        def handle_data(self, data):
            if self._in_cell:
                self.cells.append(data)

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self._in_cell = False

    p = Parser()
    p.feed(text)
    p.close()
    return {"tags": p.tags, "external": p.external, "cells": p.cells}


def test_html_report_compare(capsys, tmp_path, compare_file):
    pytest.importorskip("matplotlib", reason="charts need the optional extra kvmcache[plot]")
    out = tmp_path / "report.html"
    src = tmp_path / "gated.json"
    code, stdout, err = run(
        capsys, "compare", RETRY, "--format", "json", "--require", "spinlock-safe", "-q"
    )
    assert code == 3
    src.write_text(stdout)
    code, stdout, err = run(capsys, "plot", str(src), "-o", str(out))
    assert (code, stdout, err) == (0, "", "")
    page = out.read_text()
    parts = _html_parts(page)
    # key figures, gates, every counter; bars and the latency distribution, inline SVG
    assert parts["tags"]["table"] == 3 and parts["tags"]["svg"] == 2
    assert parts["tags"]["figure"] == 2 and "script" not in parts["tags"]
    assert parts["external"] == []  # self-contained: nothing fetched
    cells = parts["cells"]
    assert "fault_latency_p99_ns" in cells and "spinlock-safe" in cells
    assert "no: retries" in cells  # dpamt-install only retries on this trace
    assert "dpamt-install not spinlock-safe: retries (alloc_under_lock 0, fault_retries 5)" in cells
    doc = json.loads(src.read_text())
    p99 = plots.Run("", "", {}, doc["runs"][0]["counters"], histograms=doc["runs"][0]["histograms"])
    assert f"{p99.value('fault_latency_p99_ns'):,}" in cells


def test_html_report_sweep(capsys, tmp_path, sweep_files):
    pytest.importorskip("matplotlib", reason="charts need the optional extra kvmcache[plot]")
    j, _, res = sweep_files
    out = tmp_path / "sweep.html"
    code, _, err = run(capsys, "plot", j, "-o", str(out), "--x", "pages_allocated")
    assert code == 0, err
    parts = _html_parts(out.read_text())
    assert parts["tags"]["svg"] == 1 and parts["tags"]["table"] >= 1 and parts["external"] == []
    cells = parts["cells"]
    # one row per valid point, Pareto ones starred
    assert cells.count("★") == sum(p.pareto for p in res.valid)
    assert "pages_allocated" in cells and "capacity" in cells


def test_compare_png_has_latency_and_svg_is_reproducible(capsys, tmp_path, compare_file):
    pytest.importorskip("matplotlib", reason="charts need the optional extra kvmcache[plot]")
    data = plots.load([compare_file[0]])
    assert len(plots.latency_runs(data)) == 3
    fig = plots.draw(data)
    assert len(fig.axes) == 2  # the bars and the latency distribution
    assert fig.axes[1].get_xscale() == "log"
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    for p in (a, b):
        assert run(capsys, "plot", compare_file[0], "-o", str(p))[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_html_report_timeline_and_axes_refused(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="charts need the optional extra kvmcache[plot]")
    _, _, tl = timeline(capsys, tmp_path, FAST, "dpamt-install")
    out = tmp_path / "tl.html"
    code, _, err = run(capsys, "plot", tl, "-o", str(out))
    assert code == 0, err
    parts = _html_parts(out.read_text())
    assert parts["tags"]["table"] == 1 and parts["tags"]["svg"] == 1 and parts["external"] == []
    assert parts["cells"].count("dpamt-install") == len(plots.TIMELINE_FIGURES)
    code, _, err = run(capsys, "plot", tl, "-o", str(out), "--x", "pages_allocated")
    assert code == 2
    assert error_line(err) == "plot: --x and --y apply to sweep and compare inputs, not a timeline"
