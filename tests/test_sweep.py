"""`kvmcache sweep`: grids, parameter merging, backends (in-process, threads, Dask), Pareto."""

from __future__ import annotations

import builtins
import csv
import io
import json
import os
import threading

import pytest
from clirun import error_line, run
from conftest import GOLDEN_DIR

from kvmcache.errors import KvmcacheError
from kvmcache.report import documents
from kvmcache.sim import sweep
from kvmcache.sim.counters import COUNTERS
from kvmcache.sim.replay import replay, resolve_params
from kvmcache.trace import open_trace

GOLDEN = GOLDEN_DIR
RETRY = os.path.join(GOLDEN, "07-pamt-pairs-1-retry.yaml")  # params: pamt_pairs 1, spread 64
TIGHT = os.path.join(GOLDEN, "06-tight-cache-alloc-under-lock.yaml")  # params: capacity 3, mins 0
TWO = os.path.join(GOLDEN, "03-two-vcpus-shared-and-private.yaml")


# ------------------------------------------------------------------------ grid parsing


@pytest.mark.parametrize(
    "spec, name, values",
    [
        ("capacity=8:64:8", "capacity", [8, 16, 24, 32, 40, 48, 56, 64]),
        ("capacity=8:60:8", "capacity", [8, 16, 24, 32, 40, 48, 56]),  # 64 > 60: not included
        ("capacity=14:16", "capacity", [14, 15, 16]),  # step 1
        ("pamt_pairs=1,2,5", "pamt_pairs", [1, 2, 5]),
        ("capacity=0x10,32,0b101000", "capacity", [16, 32, 40]),
        ("capacity=8:16:4, 40, 16", "capacity", [8, 12, 16, 40]),  # mixed, repeats kept once
        ("spread=1_0", "spread", [10]),
        ("teardown=true,off,yes", "teardown", [True, False]),
        ("capacity=40:40:5", "capacity", [40]),
    ],
)
def test_grid_spec(spec, name, values):
    got_name, got = sweep.parse_grid_spec(spec)
    assert got_name == name and got == values
    assert [type(v) for v in got] == [type(v) for v in values]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("capacity", "expected NAME=V1,V2"),
        ("nope=1,2", "unknown parameter 'nope'"),
        ("capacity=", "empty value"),
        ("capacity=8,,16", "empty value"),
        ("capacity=64:8:8", "START must be <= STOP"),
        ("capacity=8:64:0", "step must be >= 1"),
        ("capacity=8:", "bad range"),
        ("capacity=1:2:3:4", "bad range"),
        ("capacity=eight", "not an integer"),
        ("capacity=-8", "must be >= 0, got -8"),
        ("teardown=0:1", "boolean"),
        ("teardown=maybe", "not a boolean"),
        ("capacity=0:100000000", "more than"),
    ],
)
def test_grid_spec_errors(spec, words):
    with pytest.raises(KvmcacheError) as e:
        sweep.parse_grid_spec(spec)
    assert words in e.value.message and e.value.exit_code == 2


def test_grid_twice_and_points_order():
    with pytest.raises(KvmcacheError, match="given twice"):
        sweep.parse_grid(["capacity=16", "capacity=40"])
    grid = sweep.parse_grid(["capacity=16,40", "pamt_pairs=1,2,5"])
    assert sweep.expand_points(grid) == [
        {"capacity": 16, "pamt_pairs": 1},
        {"capacity": 16, "pamt_pairs": 2},
        {"capacity": 16, "pamt_pairs": 5},
        {"capacity": 40, "pamt_pairs": 1},
        {"capacity": 40, "pamt_pairs": 2},
        {"capacity": 40, "pamt_pairs": 5},
    ]
    assert sweep.expand_points({}) == [{}]


def test_bad_grid_exits_2(capsys):
    code, out, err = run(capsys, "sweep", RETRY, "--grid", "capacity=64:8")
    assert code == 2 and out == ""
    assert "START must be <= STOP" in error_line(err)
    code, _, err = run(capsys, "sweep", RETRY, "--grid", "colour=1")
    assert code == 2 and "unknown parameter 'colour'" in error_line(err)


# ------------------------------------------------------------------------ Pareto


def test_pareto_flags_hand_made():
    vectors = [
        (1, 5, 10),  # a: best idle with b's cost... on the front
        (2, 2, 10),  # b: front
        (2, 3, 10),  # c: dominated by b
        (5, 0, 20),  # d: dominated by h (same idle and lock, more pages)
        (1, 5, 10),  # e: equal to a: ties do not dominate, both on the front
        (3, 3, 30),  # f: dominated by b
        (0, 9, 50),  # g: least idle pages: front
        (5, 0, 19),  # h: front
        (6, 0, 19),  # i: dominated by h
    ]
    assert sweep.pareto_flags(vectors) == [True, True, False, False, True, False, True, True, False]
    assert sweep.pareto_flags([]) == []
    assert sweep.pareto_flags([(3, 3, 3)]) == [True]


def _fake(
    trace_index: int,
    idle: int,
    lock: int,
    retries: int,
    pages: int,
    ok: bool = True,
    latency: int = 0,
    hist: list[int] | None = None,
):
    counters = dict.fromkeys(COUNTERS, 0)
    counters.update(
        cache_pages_idle_peak=idle,
        alloc_under_lock=lock,
        fault_retries=retries,
        pages_allocated=pages,
        fault_latency_ns=latency,
    )
    p = sweep.PointResult(trace=f"t{trace_index}", alloc="dpamt-install", point={}, params={})
    p.trace_index = trace_index
    if ok:
        histograms = {"fault_latency": hist or [0] * 32}
        p.result = type("R", (), {"counters": counters, "histograms": histograms})()
    else:
        p.error = "bad"
    return p


def test_mark_pareto_per_trace_among_valid():
    pts = [
        _fake(0, 10, 0, 0, 100),  # front of t0
        _fake(0, 5, 1, 1, 100),  # front of t0: fewer idle pages, costs 2 under lock
        _fake(0, 12, 0, 0, 120),  # dominated by the first
        _fake(1, 50, 0, 0, 500),  # t1 is judged alone: front although t0 points beat it
        _fake(1, 60, 0, 0, 500),  # dominated within t1
        _fake(0, 0, 0, 0, 0, ok=False),  # invalid: never on the front, dominates nothing
    ]
    sweep.mark_pareto(pts)
    assert [p.pareto for p in pts] == [True, True, False, True, False, False]


def test_time_objective_puts_a_trade_off_on_the_front():
    # a capacity grid: more idle pages and pages allocated, less fault time
    pts = [
        _fake(0, 10, 0, 0, 100, latency=900),
        _fake(0, 20, 0, 0, 110, latency=700),
        _fake(0, 40, 0, 0, 120, latency=800),  # dominated by the second
    ]
    for i, p in enumerate(pts):
        p.point_index = i
    old = ("cache_pages_idle_peak", "alloc_under_lock + fault_retries", "pages_allocated")
    sweep.mark_pareto(pts, old)
    assert [p.pareto for p in pts] == [True, False, False]  # only the smallest point
    sweep.mark_pareto(pts)  # the defaults add fault_latency_ns
    assert sweep.PARETO_OBJECTIVES == (*old, "fault_latency_ns")
    assert [p.pareto for p in pts] == [True, True, False]
    assert sweep.varying_objectives(pts, sweep.PARETO_OBJECTIVES) == [
        "cache_pages_idle_peak", "pages_allocated", "fault_latency_ns",
    ]  # fmt: skip


def test_p99_objective_and_sort():
    h1, h2 = [0] * 32, [0] * 32
    h1[3] = 100  # every fault in [512, 1024): p99 bound 1024
    h2[2], h2[9] = 98, 2  # the 99th of 100 faults is in [32768, 65536): p99 bound 65536
    a = _fake(0, 10, 0, 0, 100, hist=h2)
    b = _fake(0, 20, 0, 0, 100, hist=h1)
    b.point_index = 1
    assert (
        sweep.point_metric(a, "fault_latency_p99_ns"),
        sweep.point_metric(b, "fault_latency_p99_ns"),
    ) == (65536, 1024)
    assert [p.point_index for p in sweep.rank([a, b], "fault_latency_p99_ns")] == [1, 0]
    assert [p.point_index for p in sweep.rank([a, b], "-fault_latency_p99_ns")] == [0, 1]
    sweep.mark_pareto(
        [a, b], sweep.parse_objectives(["cache_pages_idle_peak", "fault_latency_p99_ns"])
    )
    assert (a.pareto, b.pareto) == (True, True)
    assert sweep.parse_objectives([]) == sweep.PARETO_OBJECTIVES
    with pytest.raises(KvmcacheError, match=r"^--pareto 'p99': unknown counter; valid: events, "):
        sweep.parse_objectives(["p99"])


# ------------------------------------------------------------------------ equal to replay


def test_sweep_equals_individual_replays():
    allocs = ["dpamt-install", "dpamt-alloc", "dpamt-pair"]
    grid = sweep.parse_grid(["capacity=5,14,40", "pamt_pairs=1,3"])
    config = {"spread": 2}
    overrides = {"tdcx_pages": 3, "capacity": 30}  # --set capacity loses to the grid
    res = sweep.run_sweep([RETRY, TIGHT], allocs, grid, config=config, overrides=overrides)
    assert len(res.points) == 2 * 6 * 3
    seen_invalid = 0
    for p in res.points:
        src = open_trace(p.trace)
        try:
            params = resolve_params(src.header, config, {**overrides, **p.point})
        except KvmcacheError as e:  # capacity 5 is below the default min_desc (14) on RETRY
            assert not p.valid and p.error == e.message
            seen_invalid += 1
            continue
        assert p.valid, p.error
        assert p.params == params
        assert params["capacity"] == p.point["capacity"] and params["tdcx_pages"] == 3
        assert params["spread"] == 2
        want = replay(src, p.alloc, params=params)
        assert p.counters == want.counters
        assert p.result.histograms == want.histograms
    # RETRY keeps the default mins (min_desc 14): capacity 5 is invalid for its 2 x 3 points;
    # TIGHT sets every min to 0 in its params, so all its points run.
    assert seen_invalid == 6
    assert [p.params["pamt_pairs"] for p in res.points[:6]] == [1, 1, 1, 3, 3, 3]


def test_jobs2_equals_jobs1(capsys):
    argv = ["sweep", RETRY, TWO, "--alloc", "dpamt-install", "--alloc", "dpamt-prealloc"]
    argv += ["--grid", "capacity=14:40:13", "--grid", "pamt_pairs=1,2", "--format", "json"]
    code1, out1, err1 = run(capsys, *argv, "--jobs", "1")
    code2, out2, err2 = run(capsys, *argv, "--jobs", "2")
    assert (code1, code2) == (0, 0), (err1, err2)
    assert out1 == out2
    doc = json.loads(out1)
    assert doc["schema"] == "kvmcache.sweep/1"
    assert doc["grid"] == {"capacity": [14, 27, 40], "pamt_pairs": [1, 2]}
    assert len(doc["runs"]) == 2 * 3 * 2 * 2 and doc["invalid"] == []
    assert all(
        r["schema"] == "kvmcache.replay/1" and isinstance(r["pareto"], bool) for r in doc["runs"]
    )
    idle = [r["counters"]["cache_pages_idle_peak"] for r in doc["runs"]]
    assert idle == sorted(idle)  # ranked by the default --sort


def test_threads_equal_in_process_on_a_binary_trace():
    trace = os.path.join(os.path.dirname(GOLDEN), "..", "traces", "steady-tdx.kvmt")
    grid = sweep.parse_grid(["capacity=16,40", "pamt_pairs=1,3"])
    allocs = ["dpamt-install", "dpamt-pair"]
    one = sweep.run_sweep([trace], allocs, grid, jobs=1)
    two = sweep.run_sweep([trace], allocs, grid, jobs=2)
    assert [(p.alloc, p.point, p.counters) for p in one.points] == [
        (p.alloc, p.point, p.counters) for p in two.points
    ]


def test_a_cancelled_unit_stops_at_its_next_chunk():
    (unit,) = sweep.build_units([TWO], {TWO: ["dpamt-install"]}, [{}])
    cancel = threading.Event()
    assert sweep.run_unit(unit, cancel)[0].valid
    cancel.set()
    with pytest.raises(sweep._Cancelled):
        sweep.run_unit(unit, cancel)


def test_threads_stop_the_sweep_on_a_failed_unit(monkeypatch):
    """A unit failing with a non-usage error fails the sweep with its exit code; units not
    started never start, and the running one sees the cancel."""
    units = sweep.build_units([TWO], {TWO: ["dpamt-install"]}, [{"capacity": c} for c in range(8)])
    started, saw_cancel = [], []
    both_running = threading.Barrier(2, timeout=10)

    def fake(unit, cancel=None):
        started.append(unit.point_index)
        if unit.point_index < 2:
            both_running.wait()
        if unit.point_index == 0:
            raise sweep.UnitFailed("the numba cache is stale", 3)
        saw_cancel.append(cancel.wait(10))
        raise sweep._Cancelled

    monkeypatch.setattr(sweep, "run_unit", fake)
    with pytest.raises(KvmcacheError) as err:
        sweep.run_threads(units, 2)
    assert (err.value.message, err.value.exit_code) == ("the numba cache is stale", 3)
    assert sorted(started) == [0, 1] and saw_cancel == [True]


def test_dask_backend_equals_jobs1(capsys, monkeypatch):
    dd = pytest.importorskip(
        "dask.distributed", reason="the --scheduler backend needs the optional extra kvmcache[dask]"
    )
    grid = sweep.parse_grid(["capacity=8,40", "pamt_pairs=1,2"])
    local = sweep.run_sweep([RETRY, TWO], ["dpamt-install", "dpamt-alloc"], grid, jobs=1)
    with dd.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        remote = sweep.run_sweep(
            [RETRY, TWO],
            ["dpamt-install", "dpamt-alloc"],
            grid,
            scheduler=cluster.scheduler_address,
        )
        assert documents.sweep_document(remote) == documents.sweep_document(local)
        assert len(remote.invalid) == 8  # capacity 8 < min_desc 14, on both traces
        # the command line through DASK_SCHEDULER_ADDRESS (no --jobs given)
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        code, out, err = run(
            capsys,
            "sweep",
            RETRY,
            "--alloc",
            "dpamt-alloc",
            "--grid",
            "pamt_pairs=1,2",
            "--format",
            "csv",
        )
        assert code == 0, err
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    code, out_local, _ = run(
        capsys,
        "sweep",
        RETRY,
        "--alloc",
        "dpamt-alloc",
        "--grid",
        "pamt_pairs=1,2",
        "--format",
        "csv",
        "--jobs",
        "1",
    )
    assert code == 0 and out == out_local


def test_scheduler_without_dask(capsys, monkeypatch):
    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name == "dask" or name.startswith("dask."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    code, out, err = run(capsys, "sweep", RETRY, "--scheduler", "tcp://127.0.0.1:8786")
    assert code == 2 and out == ""
    assert "pip install 'kvmcache[dask]'" in error_line(err)


def test_jobs_and_scheduler_exclude(capsys):
    code, _, err = run(capsys, "sweep", RETRY, "--jobs", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "exclude each other" in error_line(err)


# ------------------------------------------------------------------------ invalid points


def test_invalid_points_reported_not_fatal(capsys):
    code, out, err = run(
        capsys,
        "sweep",
        RETRY,
        "--alloc",
        "dpamt-install",
        "--grid",
        "capacity=8,40",
        "--format",
        "json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert [r["params"]["capacity"] for r in doc["runs"]] == [40]
    assert doc["invalid"] == [
        {
            "trace": RETRY,
            "alloc": "dpamt-install",
            "params": {**doc["runs"][0]["params"], "capacity": 8},
            "error": "parameter capacity: 8 is below min_desc (14); capacity must be >= every min_*",
        }
    ]
    assert doc["runs"][0]["pareto"] is True  # the only valid point is its trace's front


def test_every_point_invalid_exits_2(capsys):
    code, out, err = run(
        capsys, "sweep", RETRY, "--grid", "capacity=8,13", "--grid", "pamt_pairs=1"
    )
    assert code == 2 and out == ""
    msg = error_line(err)
    assert "every point of the sweep is invalid (10 points)" in msg and "capacity: 8" in msg


def test_missing_trace_exits_2(capsys):
    code, _, err = run(capsys, "sweep", os.path.join(GOLDEN, "nope.yaml"), "--grid", "capacity=40")
    assert code == 2 and "no such file" in error_line(err)


# ------------------------------------------------------------------------ reports


def test_csv_rows_and_sort_descending(capsys):
    code, out, err = run(
        capsys,
        "sweep",
        RETRY,
        "--alloc",
        "dpamt-install",
        "--grid",
        "capacity=8,16,40",
        "--grid",
        "pamt_pairs=1,5",
        "--sort=-pages_allocated",
        "--format",
        "csv",
        "--jobs",
        "1",
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] == "invalid"]
    assert len(ok) == 4 and len(bad) == 2 and rows[-2:] == bad  # invalid rows last
    assert all(r["pareto"] == "false" and "capacity: 8" in r["error"] for r in bad)
    pages = [int(r["pages_allocated"]) for r in ok]
    assert pages == sorted(pages, reverse=True)
    assert {(r["capacity"], r["pamt_pairs"]) for r in ok} == {
        ("16", "1"),
        ("16", "5"),
        ("40", "1"),
        ("40", "5"),
    }
    assert all(r["pareto"] in ("true", "false") for r in ok)
    assert set(COUNTERS) <= set(rows[0])


def test_table_and_atomic_output(capsys, tmp_path):
    out_file = tmp_path / "sweep.txt"
    code, out, err = run(
        capsys,
        "sweep",
        RETRY,
        "--alloc",
        "dpamt-install",
        "--grid",
        "pamt_pairs=1,5",
        "-o",
        str(out_file),
        "--jobs",
        "1",
    )
    assert code == 0 and out == "", err
    text = out_file.read_text()
    assert "kvmcache sweep: 2 points, 2 valid" in text and "pamt_pairs" in text and "★" in text
    assert os.listdir(tmp_path) == ["sweep.txt"]  # no temporary file left behind
    json_file = tmp_path / "sweep.json"  # format from the extension
    code, _, err = run(
        capsys, "sweep", RETRY, "--grid", "pamt_pairs=1", "-o", str(json_file), "--jobs", "1"
    )
    assert code == 0, err
    doc = json.loads(json_file.read_text())
    assert [r["alloc"] for r in sorted(doc["runs"], key=lambda r: r["alloc"])] == sorted(
        ["none", "dpamt-install", "dpamt-alloc", "dpamt-pair", "dpamt-prealloc"]
    )


def test_unknown_sort_exits_2(capsys):
    code, _, err = run(capsys, "sweep", RETRY, "--sort", "speed")
    assert code == 2 and "--sort 'speed'" in error_line(err)


def test_sweep_cli_pareto_and_sort_by_a_time_figure(capsys):
    code, out, err = run(
        capsys, "sweep", RETRY, "--alloc", "dpamt-install", "--alloc", "dpamt-pair",
        "--grid", "capacity=20,40", "--format", "json", "--jobs", "1",
        "--sort", "-fault_latency_p99_ns",
        "--pareto", "cache_pages_idle_peak", "--pareto", "fault_latency_p99_ns",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["sort"] == "-fault_latency_p99_ns"
    assert doc["pareto_objectives"] == ["cache_pages_idle_peak", "fault_latency_p99_ns"]
    from kvmcache.results import latency_percentile_bound

    p99 = [latency_percentile_bound(r["histograms"]["fault_latency"]) for r in doc["runs"]]
    assert p99 == sorted(p99, reverse=True)
    idle = [r["counters"]["cache_pages_idle_peak"] for r in doc["runs"]]
    # the front of the two objectives, recomputed by hand
    pts = list(zip(idle, p99, strict=True))
    front = [not any(o != p and o[0] <= p[0] and o[1] <= p[1] for o in pts) for p in pts]
    assert [r["pareto"] for r in doc["runs"]] == front
    varying = doc["pareto_varying"][RETRY]
    assert varying == [n for n, vals in (("cache_pages_idle_peak", idle),
                                         ("fault_latency_p99_ns", p99)) if len(set(vals)) > 1]  # fmt: skip
    assert all(r["trace"]["digest"] is None for r in doc["runs"])  # sweeps skip the digest
    code, out, err = run(capsys, "sweep", RETRY, "--pareto", "latency")
    assert code == 2 and error_line(err).startswith("--pareto 'latency': unknown counter")
