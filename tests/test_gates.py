"""CI gates on replay and compare: limits, requirements, baselines; exact lines and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from clirun import run
from conftest import GOLDEN_DIR

from kvmcache.errors import KvmcacheError
from kvmcache.gates import Limit, parse_limit, relative_exceeded
from kvmcache.sim import replay as replay_mod

GOLDEN = Path(GOLDEN_DIR)
G01 = str(GOLDEN / "01-first-private-4k.yaml")
G06 = str(GOLDEN / "06-tight-cache-alloc-under-lock.yaml")  # not spinlock-safe
G07 = str(GOLDEN / "07-pamt-pairs-1-retry.yaml")

# golden 06 (capacity 3, every min 0) under dpamt-alloc: 10 idle cache pages at peak,
# 37 pages allocated, 19 allocations under mmu_lock, no fault retry.


def replay06(capsys, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "replay", G06, "--alloc", "dpamt-alloc", "--format", "json", *extra)


def save_baseline(capsys, path: Path, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--format", "json", "--save-baseline", str(path))
    assert (code, err) == (0, ""), err
    saved = json.loads(path.read_text())
    assert saved == json.loads(out)
    return saved


def edit_counter(path: Path, alloc: str, counter: str, value: int) -> None:
    doc = json.loads(path.read_text())
    runs = doc["runs"] if doc["schema"] == "kvmcache.compare/1" else [doc]
    for r in runs:
        if r["alloc"] == alloc:
            r["counters"][counter] = value
    path.write_text(json.dumps(doc))


# --------------------------------------------------------------------------- parsing


def test_parse_limits():
    assert parse_limit("cache_pages_idle_peak=120") == Limit("cache_pages_idle_peak", value=120)
    assert parse_limit("pages_allocated=1_000") == Limit("pages_allocated", value=1000)
    assert parse_limit("pages_allocated=0x10") == Limit("pages_allocated", value=16)
    rel = parse_limit("cache_pages_idle_peak=+10%")
    assert (rel.counter, rel.value, rel.percent, rel.text) == (
        "cache_pages_idle_peak",
        None,
        Fraction(10),
        "10",
    )
    assert parse_limit("fault_retries = 2.50%").percent == Fraction(5, 2)
    for bad in ("cache_pages_idle_peak", "=5", "cache_pages_idle_peak=-3", "pages_allocated=1e3",
                "pages_allocated=-5%", "pages_allocated=+x%", "no_such_counter=5"):  # fmt: skip
        with pytest.raises(KvmcacheError) as e:
            parse_limit(bad)
        assert e.value.exit_code == 2


def test_relative_exceeded_exact():
    ten = Fraction(10)
    assert not relative_exceeded(132, 120, ten)  # exactly +10%
    assert relative_exceeded(133, 120, ten)
    assert not relative_exceeded(100, 120, ten)  # shrinking always passes
    assert not relative_exceeded(0, 0, ten)  # zero baseline: staying 0 passes
    assert relative_exceeded(1, 0, ten)  # zero baseline: any growth fails
    assert relative_exceeded(1, 0, Fraction(1000))
    assert not relative_exceeded(120, 120, Fraction(0))
    assert relative_exceeded(121, 120, Fraction(0))
    assert not relative_exceeded(1025, 1000, Fraction(5, 2))
    assert relative_exceeded(1026, 1000, Fraction(5, 2))
    big = 1 << 80  # cache_idle_page_ns can pass 2^64
    assert not relative_exceeded(big + big // 10, big, ten)
    assert relative_exceeded(big + big // 10 + 1, big, ten)


# --------------------------------------------------------------------------- absolute limits


def test_absolute_limit_fails_with_exit_3(capsys):
    code, out, err = replay06(capsys, "--limit", "cache_pages_idle_peak=9")
    assert code == 3
    assert err == (
        "limit failed: dpamt-alloc cache_pages_idle_peak 10 > 9\n"
        "kvmcache: gates: 1 checked, 0 passed, 1 failed\n"
    )
    assert json.loads(out)["counters"]["cache_pages_idle_peak"] == 10  # the report still prints


def test_absolute_limit_holds_exit_0(capsys):
    code, out, err = replay06(
        capsys, "--limit", "cache_pages_idle_peak=10", "--limit", "pages_allocated=37"
    )
    assert (code, err) == (0, "kvmcache: gates: 2 checked, 2 passed, 0 failed\n")
    code, out, err = replay06(capsys, "-q", "--limit", "cache_pages_idle_peak=10")
    assert (code, err) == (0, "")  # --quiet: no summary
    assert json.loads(out)["alloc"] == "dpamt-alloc"


def test_compare_limit_applies_to_every_run(capsys):
    code, out, err = run(
        capsys, "compare", G06, "--format", "json", "--limit", "cache_pages_idle_peak=10"
    )
    assert code == 3
    assert err == (
        "limit failed: dpamt-prealloc cache_pages_idle_peak 15 > 10\n"
        "kvmcache: gates: 5 checked, 4 passed, 1 failed\n"
    )
    assert json.loads(out)["schema"] == "kvmcache.compare/1"
    code, out, err = run(
        capsys, "compare", G06, "--format", "json", "--limit", "pages_allocated=39"
    )
    assert code == 3
    assert err == (
        "limit failed: dpamt-pair pages_allocated 47 > 39\n"
        "limit failed: dpamt-prealloc pages_allocated 40 > 39\n"
        "kvmcache: gates: 5 checked, 3 passed, 2 failed\n"
    )


def test_unknown_counter_is_usage_error(capsys):
    code, out, err = replay06(capsys, "--limit", "cache_pages_idle_max=3")
    assert code == 2 and out == ""
    assert err.startswith("kvmcache: error: --limit: 'cache_pages_idle_max=3': unknown counter")


# --------------------------------------------------------------------------- relative limits


def test_relative_limit_fails_and_holds(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "replay", G06, "--alloc", "dpamt-alloc")
    code, out, err = replay06(
        capsys, "--baseline", str(base), "--limit", "cache_pages_idle_peak=+0%"
    )
    assert (code, err) == (0, "kvmcache: gates: 2 checked, 2 passed, 0 failed\n")  # no growth
    edit_counter(base, "dpamt-alloc", "cache_pages_idle_peak", 8)
    code, out, err = replay06(
        capsys, "--baseline", str(base), "--limit", "cache_pages_idle_peak=+10%"
    )
    assert code == 3
    assert err.splitlines() == [
        "limit failed: dpamt-alloc cache_pages_idle_peak 10 > 8 (+25.0% > +10%)",
        "kvmcache: gates: 2 checked, 1 passed, 1 failed",
    ]
    assert json.loads(out)["counters"]["cache_pages_idle_peak"] == 10
    code, out, err = replay06(
        capsys, "--baseline", str(base), "--limit", "cache_pages_idle_peak=+25%"
    )
    assert (code, err) == (0, "kvmcache: gates: 2 checked, 2 passed, 0 failed\n")  # +25% is allowed


def test_relative_limit_zero_baseline(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "replay", G06, "--alloc", "dpamt-alloc")
    edit_counter(base, "dpamt-alloc", "cache_pages_idle_peak", 0)
    code, out, err = replay06(
        capsys, "--baseline", str(base), "--limit", "cache_pages_idle_peak=+50%"
    )
    assert code == 3
    assert err == (
        "limit failed: dpamt-alloc cache_pages_idle_peak 10 > 0 "
        "(baseline 0: any growth fails, limit +50%)\n"
        "kvmcache: gates: 2 checked, 1 passed, 1 failed\n"
    )
    # fault_retries is 0 in the baseline and 0 now: staying at 0 passes
    code, out, err = replay06(capsys, "--baseline", str(base), "--limit", "fault_retries=+0%")
    assert (code, err) == (0, "kvmcache: gates: 2 checked, 2 passed, 0 failed\n")


def test_relative_limit_on_compare_baseline(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "compare", G06)
    edit_counter(base, "dpamt-pair", "pages_allocated", 40)  # now 47: +17.5%
    edit_counter(base, "none", "pages_allocated", 22)  # now 23: +4.5%
    code, out, err = run(
        capsys,
        "compare", G06, "--format", "json", "--baseline", str(base),
        "--limit", "pages_allocated=+5%",
    )  # fmt: skip
    assert code == 3
    assert err.splitlines()[0] == "limit failed: dpamt-pair pages_allocated 47 > 40 (+17.5% > +5%)"
    # a replay may gate on one strategy of a compare baseline
    code, out, err = run(
        capsys,
        "replay", G06, "--alloc", "none", "--format", "json", "--baseline", str(base),
        "--limit", "pages_allocated=+4%",
    )  # fmt: skip
    assert code == 3
    assert err.splitlines()[0] == "limit failed: none pages_allocated 23 > 22 (+4.5% > +4%)"


def test_growth_shown_with_enough_digits(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "replay", G06, "--alloc", "dpamt-alloc")
    edit_counter(base, "dpamt-alloc", "pages_allocated", 33)  # 37 / 33: +12.12%
    code, out, err = replay06(capsys, "--baseline", str(base), "--limit", "pages_allocated=+12.1%")
    assert code == 3
    assert err.splitlines()[0] == (
        "limit failed: dpamt-alloc pages_allocated 37 > 33 (+12.12% > +12.1%)"
    )


def test_relative_limit_needs_baseline(capsys):
    code, out, err = replay06(capsys, "--limit", "cache_pages_idle_peak=+10%")
    assert code == 2 and out == ""
    assert err == (
        "kvmcache: error: limit cache_pages_idle_peak=+10% is relative to a baseline: "
        "pass --baseline FILE.json\n"
    )


# --------------------------------------------------------------------------- requirements


def test_require_spinlock_safe(capsys):
    code, out, err = replay06(capsys, "--require", "spinlock-safe")
    assert code == 3
    assert err == (
        "limit failed: dpamt-alloc not spinlock-safe: allocates under mmu_lock "
        "(alloc_under_lock 19, fault_retries 0)\n"
        "kvmcache: gates: 1 checked, 0 passed, 1 failed\n"
    )
    assert json.loads(out)["verdict"]["spinlock_safe"] is False
    code, out, err = run(capsys, "replay", G01, "--format", "json", "--require", "spinlock-safe")
    assert (code, err) == (0, "kvmcache: gates: 1 checked, 1 passed, 0 failed\n")


def test_require_spinlock_safe_fault_retries(capsys):
    code, out, err = run(capsys, "compare", G07, "--format", "json", "--require", "spinlock-safe")
    assert code == 3
    assert err == (  # only retries: the verdict says so, not "allocates under mmu_lock"
        "limit failed: dpamt-install not spinlock-safe: retries "
        "(alloc_under_lock 0, fault_retries 5)\n"
        "limit failed: dpamt-prealloc not spinlock-safe: retries "
        "(alloc_under_lock 0, fault_retries 2)\n"
        "kvmcache: gates: 5 checked, 3 passed, 2 failed\n"
    )


def test_require_balanced(capsys, monkeypatch):
    code, out, err = run(capsys, "replay", G01, "-q", "--format", "json", "--require", "balanced")
    assert (code, err) == (0, "")
    # The model keeps well-formed traces balanced; inject a leaked range after the replay.
    finish = replay_mod._Run.finish

    def leaky(self):
        result = finish(self)
        result.counters["leaked_ranges"] = 2
        return result

    monkeypatch.setattr(replay_mod._Run, "finish", leaky)
    code, out, err = run(capsys, "replay", G01, "--format", "json", "--require", "balanced")
    assert code == 3
    assert err == (
        "limit failed: dpamt-install not balanced (refcount_underflow 0, leaked_ranges 2)\n"
        "kvmcache: gates: 1 checked, 0 passed, 1 failed\n"
    )
    assert json.loads(out)["verdict"]["balanced"] is False


def test_unknown_requirement_is_usage_error(capsys):
    code, out, err = replay06(capsys, "--require", "fast")
    assert code == 2 and out == ""


def test_all_gates_hold_exit_0(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "compare", G01)
    code, out, err = run(
        capsys,
        "compare", G01, "--format", "json", "--baseline", str(base),
        "--limit", "cache_pages_idle_peak=+10%", "--limit", "cache_pages_idle_peak=170",
        "--require", "spinlock-safe", "--require", "balanced",
    )  # fmt: skip
    # 1 baseline trace + 5 strategies x (2 limits + 2 requirements)
    assert (code, err) == (0, "kvmcache: gates: 21 checked, 21 passed, 0 failed\n")
    gates = json.loads(out)["gates"]
    assert (gates["checked"], gates["passed"], gates["failed"], gates["skipped"]) == (21, 21, 0, 0)
    assert gates["checks"][0]["kind"] == "baseline" and gates["baseline"] == str(base)


def test_config_limits_and_require(capsys, tmp_path):
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(
        "capacity: 3\n"
        "limits:\n  pages_allocated: 36\n  cache_pages_idle_peak: 10\n"
        "require: [spinlock-safe]\n"
    )
    code, out, err = run(capsys, "replay", G06, "--alloc", "dpamt-alloc", "--config", str(cfg))
    assert code == 3
    assert json.loads(out)["counters"]["pages_allocated"] == 37
    assert err == (
        "limit failed: dpamt-alloc pages_allocated 37 > 36\n"
        "limit failed: dpamt-alloc not spinlock-safe: allocates under mmu_lock "
        "(alloc_under_lock 19, fault_retries 0)\n"
        "kvmcache: gates: 3 checked, 1 passed, 2 failed\n"
    )
    # command-line limits add to the config file's
    code, out, err = run(
        capsys, "replay", G06, "--alloc", "dpamt-alloc", "--config", str(cfg),
        "--limit", "cache_pages_idle_peak=9",
    )  # fmt: skip
    assert code == 3
    assert err.splitlines()[1] == "limit failed: dpamt-alloc cache_pages_idle_peak 10 > 9"
    cfg.write_text("limits: {no_such: 3}\n")
    code, out, err = run(capsys, "replay", G01, "--config", str(cfg))
    assert code == 2 and out == ""
    assert err.startswith(f"kvmcache: error: {cfg}: limits: 'no_such=3': unknown counter")


def test_gate_exit_code_through_the_installed_entry_point():
    p = subprocess.run(
        [sys.executable, "-m", "kvmcache", "replay", G06, "--format", "json",
         "--require", "spinlock-safe", "--limit", "pages_allocated=10"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 3
    assert json.loads(p.stdout)["schema"] == "kvmcache.replay/1"
    assert p.stderr == (
        "limit failed: dpamt-install pages_allocated 37 > 10\n"
        "limit failed: dpamt-install not spinlock-safe: allocates under mmu_lock "
        "(alloc_under_lock 19, fault_retries 0)\n"
        "kvmcache: gates: 2 checked, 0 passed, 2 failed\n"
    )


# --------------------------------------------------------------------------- baselines


def test_save_baseline_is_the_report(capsys, tmp_path):
    base = tmp_path / "base.json"
    code, out, err = run(capsys, "replay", G06, "--format", "table", "--save-baseline", str(base))
    assert (code, err) == (0, "")
    doc = json.loads(base.read_text())
    assert doc["schema"] == "kvmcache.replay/1" and doc["alloc"] == "dpamt-install"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json"]  # no temp file left
    save_baseline(capsys, base, "compare", G06)  # overwrites
    assert json.loads(base.read_text())["schema"] == "kvmcache.compare/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json"]


def test_save_baseline_into_missing_directory(capsys, tmp_path):
    target = tmp_path / "no" / "base.json"
    code, out, err = replay06(capsys, "--save-baseline", str(target))
    assert code == 2 and out == ""
    assert err.startswith(f"kvmcache: error: {target}: cannot save baseline")


def _mismatch(capsys, base: Path, *argv: str) -> str:
    code, out, err = run(capsys, *argv, "--format", "json", "--baseline", str(base))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_baseline_mismatches(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "replay", G06)  # dpamt-install only
    pre = f"kvmcache: error: {base}: baseline does not match this run: "
    assert _mismatch(capsys, base, "compare", G06) == (
        pre + "strategy none is not in the baseline (it has: dpamt-install)\n"
    )
    assert _mismatch(capsys, base, "replay", G06, "--set", "capacity=4") == (
        pre + "dpamt-install: parameter capacity is 3 in the baseline, 4 here\n"
    )
    doc = json.loads(base.read_text())
    doc["trace"]["vm_type"] = "vmx"
    base.write_text(json.dumps(doc))
    assert _mismatch(capsys, base, "replay", G06) == (
        pre + "trace vm_type is vmx in the baseline, tdx here\n"
    )


def _g06_digest() -> str:
    from kvmcache.trace.digest import digest_events
    from kvmcache.trace.yamlfmt import read_yaml

    header, events = read_yaml(G06)
    return digest_events(header, events)


def test_baseline_identifies_the_trace_by_content(capsys, tmp_path):
    base = tmp_path / "base.json"
    saved = save_baseline(capsys, base, "replay", G06)
    digest = _g06_digest()
    assert (
        saved["trace"]["digest"] == digest and digest.startswith("kvh1:") and len(digest) == 5 + 64
    )
    # an identical copy under another name, and its binary conversion, match
    copy = tmp_path / "renamed.yaml"
    copy.write_text(Path(G06).read_text())
    code, out, err = run(capsys, "replay", str(copy), "--format", "json", "--baseline", str(base))
    assert (code, err) == (0, "kvmcache: gates: 1 checked, 1 passed, 0 failed\n")
    check = json.loads(out)["gates"]["checks"][0]
    assert check == {
        "name": "baseline trace", "kind": "baseline", "alloc": "", "status": "passed",
        "message": f"same trace content as the baseline ({digest})",
    }  # fmt: skip
    kvmt = tmp_path / "renamed.kvmt"
    assert run(capsys, "convert", str(copy), str(kvmt))[0] == 0
    code, out, err = run(capsys, "replay", str(kvmt), "--format", "json", "--baseline", str(base))
    assert (code, err) == (0, "kvmcache: gates: 1 checked, 1 passed, 0 failed\n")
    # another trace under the same name (one gfn changed, same events count) fails
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = other_dir / Path(G06).name
    other.write_text(Path(G06).read_text().replace("gfn: 0x45000", "gfn: 0x46000"))
    code, out, err = run(capsys, "replay", str(other), "--format", "json", "--baseline", str(base))
    assert code == 2 and out == ""
    theirs = json.loads(run(capsys, "replay", str(other), "--format", "json")[1])["trace"]["digest"]
    assert theirs != digest
    assert err == (
        f"kvmcache: error: {base}: baseline does not match this run: the trace's content differs "
        f"(06-tight-cache-alloc-under-lock.yaml: {theirs}; "
        f"the baseline's 06-tight-cache-alloc-under-lock.yaml: {digest})\n"
    )


def test_baseline_without_digest_falls_back_to_name_and_events(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "replay", G06)
    doc = json.loads(base.read_text())
    del doc["trace"]["digest"]
    base.write_text(json.dumps(doc))
    note = (
        f"kvmcache: note: {base}: the baseline has no trace digest (saved by an older kvmcache): "
        "the trace was matched by file name and event count only; save the baseline again "
        "to match by content\n"
    )
    code, out, err = run(capsys, "replay", G06, "--format", "json", "--baseline", str(base))
    assert (code, err) == (0, note + "kvmcache: gates: 1 checked, 1 passed, 0 failed\n")
    pre = f"kvmcache: error: {base}: baseline does not match this run: "
    assert _mismatch(capsys, base, "replay", G01) == (
        pre + "trace is 06-tight-cache-alloc-under-lock.yaml in the baseline, "
        "01-first-private-4k.yaml here\n"
    )
    doc["counters"]["events"] = 5
    base.write_text(json.dumps(doc))
    assert _mismatch(capsys, base, "replay", G06) == (
        pre + "the trace has 4 events, the baseline's 5\n"
    )


def test_baseline_before_the_time_model_gates_what_it_has(capsys, tmp_path):
    from kvmcache.gates import V2_COUNTERS

    base = tmp_path / "base.json"
    save_baseline(capsys, base, "replay", G06, "--alloc", "dpamt-alloc")
    doc = json.loads(base.read_text())
    for name in V2_COUNTERS:
        del doc["counters"][name]
    del doc["histograms"]["fault_latency"], doc["trace"]["digest"]
    base.write_text(json.dumps(doc))
    code, out, err = replay06(
        capsys, "--baseline", str(base),
        "--limit", "pamt_lock_wait_ns=+20%", "--limit", "cache_pages_idle_peak=+0%",
        "--limit", "fault_latency_max_ns=100000",
    )  # fmt: skip
    assert code == 0
    assert err.splitlines()[1:] == [
        "kvmcache: gate not compared: dpamt-alloc pamt_lock_wait_ns: not compared: the baseline "
        "has no pamt_lock_wait_ns (saved before kvmcache counted it)",
        "kvmcache: gates: 3 checked, 3 passed, 0 failed, 1 not compared",
    ]
    statuses = [c["status"] for c in json.loads(out)["gates"]["checks"]]
    assert statuses == ["passed", "skipped", "passed", "passed"]


def test_absolute_limit_on_a_time_counter(capsys):
    doc = json.loads(replay06(capsys)[1])
    worst = doc["counters"]["fault_latency_max_ns"]
    assert worst > 0
    code, out, err = replay06(capsys, "--limit", f"fault_latency_max_ns={worst - 1}")
    assert code == 3
    assert err.splitlines()[0] == (
        f"limit failed: dpamt-alloc fault_latency_max_ns {worst} > {worst - 1}"
    )


def test_per_strategy_limit(capsys):
    code, out, err = run(
        capsys, "compare", G06, "--format", "json",
        "--limit", "dpamt-prealloc:cache_pages_idle_peak=14",
        "--limit", "dpamt-pair:pages_allocated=47",
    )  # fmt: skip
    assert code == 3
    assert err == (
        "limit failed: dpamt-prealloc cache_pages_idle_peak 15 > 14\n"
        "kvmcache: gates: 2 checked, 1 passed, 1 failed\n"
    )
    checks = json.loads(out)["gates"]["checks"]
    assert [(c["alloc"], c["name"], c["status"]) for c in checks] == [
        ("dpamt-pair", "pages_allocated <= 47", "passed"),
        ("dpamt-prealloc", "cache_pages_idle_peak <= 14", "failed"),
    ]
    # a strategy this run does not replay: not compared, and said so
    code, out, err = replay06(capsys, "--limit", "dpamt-pair:pages_allocated=1")
    assert code == 0
    assert err == (
        "kvmcache: gate not compared: dpamt-pair is not among the strategies of this run "
        "(dpamt-alloc)\n"
        "kvmcache: gates: 0 checked, 0 passed, 0 failed, 1 not compared\n"
    )
    code, out, err = replay06(capsys, "--limit", "dpamt-fast:pages_allocated=1")
    assert code == 2
    assert err == (
        "kvmcache: error: --limit: 'dpamt-fast:pages_allocated=1': unknown strategy 'dpamt-fast' "
        "(strategies: none, dpamt-install, dpamt-alloc, dpamt-pair, dpamt-prealloc)\n"
    )
    code, out, err = replay06(capsys, "--limit", "dpamt-pair:pages_allocated=lots")
    assert err.startswith("kvmcache: error: --limit: 'dpamt-pair:pages_allocated=lots': 'lots'")


def test_unknown_counter_lists_the_valid_names(capsys):
    from kvmcache.sim.counters import COUNTERS

    code, out, err = replay06(capsys, "--limit", "fault_latency_max=3")
    assert code == 2
    assert err == (
        "kvmcache: error: --limit: 'fault_latency_max=3': unknown counter 'fault_latency_max' "
        f"(did you mean fault_latency_max_ns or fault_latency_ns?); valid counters: {', '.join(COUNTERS)}\n"
    )


def test_junit_xml(capsys, tmp_path):
    import xml.etree.ElementTree as ET

    junit = tmp_path / "gates.xml"
    code, out, err = run(
        capsys, "compare", G07, "--format", "json", "--junit", str(junit),
        "--alloc", "dpamt-install", "--alloc", "dpamt-pair",
        "--require", "spinlock-safe", "--limit", "pages_allocated=1000",
        "--limit", "none:pages_allocated=1",
    )  # fmt: skip
    assert code == 3
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root
    assert suite.tag == "testsuite" and suite.get("name") == f"kvmcache compare {G07}"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")
    cases = [(c.get("classname"), c.get("name"), [x.tag for x in c]) for c in suite]
    assert cases == [
        ("kvmcache.gates.none", "none:pages_allocated <= 1", ["skipped"]),
        ("kvmcache.gates.dpamt-install", "pages_allocated <= 1000", ["system-out"]),
        ("kvmcache.gates.dpamt-install", "spinlock-safe", ["failure"]),
        ("kvmcache.gates.dpamt-pair", "pages_allocated <= 1000", ["system-out"]),
        ("kvmcache.gates.dpamt-pair", "spinlock-safe", ["system-out"]),
    ]
    failure = suite[2][0]
    assert failure.get("message") == (
        "dpamt-install not spinlock-safe: retries (alloc_under_lock 0, fault_retries 5)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gates.xml"]
    # all pass: the file says so too
    code, out, err = run(
        capsys, "replay", G01, "--format", "json", "--junit", str(junit), "--require", "balanced"
    )
    assert code == 0
    suite = ET.parse(junit).getroot()[0]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("1", "0", "0")


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "baseline is not valid JSON"),
        ("[1, 2]", "baseline is not a kvmcache report (not a JSON object)"),
        ('{"schema": "kvmcache.sweep/1", "runs": []}', "baseline schema 'kvmcache.sweep/1' is not"),
        ('{"schema": "kvmcache.compare/1", "runs": []}', "baseline has no runs"),
        ('{"schema": "kvmcache.replay/1", "alloc": "none"}', "missing or invalid 'params'"),
        (
            '{"schema": "kvmcache.replay/1", "alloc": "none", "params": {}, "trace": {},'
            ' "counters": {"faults": -200}}',
            "counter 'faults' is negative",
        ),
    ],
)
def test_invalid_baseline_file(capsys, tmp_path, content, problem):
    base = tmp_path / "base.json"
    base.write_text(content)
    err = _mismatch(capsys, base, "replay", G06)
    assert err.startswith(f"kvmcache: error: {base}: {problem}"), err


def test_missing_baseline_file(capsys, tmp_path):
    base = tmp_path / "nope.json"
    assert _mismatch(capsys, base, "compare", G06) == (
        f"kvmcache: error: {base}: no such baseline file\n"
    )


def test_baseline_missing_counter_for_relative_limit(capsys, tmp_path):
    base = tmp_path / "base.json"
    save_baseline(capsys, base, "replay", G06)
    doc = json.loads(base.read_text())
    del doc["counters"]["pairs_discarded"]
    base.write_text(json.dumps(doc))
    code, out, err = run(
        capsys, "replay", G06, "--format", "json", "--baseline", str(base),
        "--limit", "pairs_discarded=+10%",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err == (
        f"kvmcache: error: {base}: baseline does not match this run: "
        "dpamt-install: counter pairs_discarded is missing in the baseline\n"
    )


def test_digest_is_the_same_from_a_pipe_and_in_chunks(capsys, tmp_path):
    from kvmcache.sim.replay import replay_events
    from kvmcache.trace.digest import TraceDigest, digest_events
    from kvmcache.trace.yamlfmt import read_yaml

    header, events = read_yaml(G07)
    whole = digest_events(header, events)
    assert replay_events(header, events, chunk_events=1, digest=True).trace_digest == whole
    d = TraceDigest(header)
    for e in events:
        d.update(events[:0])  # empty chunks change nothing
        d.update(e.reshape(1))
    assert d.hexdigest() == whole
    other = header.__class__(**{**header.__dict__, "gfn_limit": header.gfn_limit * 2})
    assert digest_events(other, events) != whole  # the geometry counts
    kvmt = tmp_path / "t.kvmt"
    assert run(capsys, "convert", G07, str(kvmt))[0] == 0
    with open(kvmt, "rb") as f:
        p = subprocess.run(
            [sys.executable, "-m", "kvmcache", "replay", "-", "--format", "json"],
            stdin=f, capture_output=True, text=True,
        )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["trace"]["digest"] == whole


def test_compiled_digest_lanes_equal_numpy_in_any_chunking():
    """The replay hashes chunks with compiled code (sim/kernel.digest_lanes); the numpy
    scheme of trace/digest.py gives the same digest whatever the chunk boundaries, and
    any changed word or event count changes it."""
    import numpy as np

    from kvmcache.sim import kernel as K
    from kvmcache.trace.digest import TraceDigest, digest_events
    from kvmcache.trace.events import EVENT_DTYPE, TraceHeader

    rng = np.random.default_rng(7)
    header = TraceHeader("tdx", 4, 1 << 20, 1 << 24)
    ev = np.zeros(5003, dtype=EVENT_DTYPE)
    for f in ("ts", "gfn", "pfn"):
        ev[f] = rng.integers(0, 2**64 - 1, len(ev), dtype=np.uint64, endpoint=True)
    ev["vcpu"] = rng.integers(0, 2**32, len(ev))
    ev["op"] = rng.integers(0, 256, len(ev))
    whole = digest_events(header, ev)
    for size in (1, 2, 999, 5003):
        d = TraceDigest(header)
        for a in range(0, len(ev), size):
            rec = K.records_u64(ev[a : a + size])
            lanes = np.zeros(2, dtype=np.uint64)
            K.digest_lanes(rec, np.uint64(d.words), lanes)
            d.add(int(lanes[0]), int(lanes[1]), len(rec))
        assert d.hexdigest() == whole, size
    changed = ev.copy()
    changed["flags"][4000] ^= 1
    assert digest_events(header, changed) != whole
    assert digest_events(header, ev[:-1]) != whole
    assert digest_events(TraceHeader("tdx", 5, 1 << 20, 1 << 24), ev) != whole
