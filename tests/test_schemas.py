"""The JSON Schema files shipped in kvmcache/schemas validate real reports, and track the
counter names; command-line conventions (-q/-v on every command, NO_COLOR)."""

from __future__ import annotations

import io
import json
import os

import click
import pytest
from clirun import run

from kvmcache.report.documents import COMPARE_SCHEMA, REPLAY_SCHEMA, SWEEP_SCHEMA
from kvmcache.schemas import load_schema, schema_file
from kvmcache.sim import sweep
from kvmcache.sim.counters import COUNTERS, FAULT_LATENCY_BUCKETS

jsonschema = pytest.importorskip("jsonschema")

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
TIGHT = os.path.join(GOLDEN, "06-tight-cache-alloc-under-lock.yaml")
RETRY = os.path.join(GOLDEN, "07-pamt-pairs-1-retry.yaml")


def _validator(schema: str):
    s = load_schema(schema)
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def test_schema_files_are_package_data_and_track_the_counters():
    names = (REPLAY_SCHEMA, COMPARE_SCHEMA, SWEEP_SCHEMA)
    assert [schema_file(n) for n in names] == [
        "replay-1.schema.json",
        "compare-1.schema.json",
        "sweep-1.schema.json",
    ]
    for name in names:
        s = load_schema(name)
        replay = s["$defs"]["replay"]["properties"]
        assert replay["counters"]["required"] == list(COUNTERS)
        assert replay["histograms"]["properties"]["fault_latency"]["minItems"] == (
            FAULT_LATENCY_BUCKETS
        )


def test_replay_and_compare_reports_validate(capsys, tmp_path):
    base = tmp_path / "base.json"
    code, out, err = run(capsys, "replay", TIGHT, "--format", "json", "--save-baseline", str(base))
    assert code == 0
    v = _validator("kvmcache.replay/1")
    doc = json.loads(out)
    v.validate(doc)
    code, out, _ = run(
        capsys, "replay", TIGHT, "--format", "json", "--baseline", str(base),
        "--limit", "pages_allocated=+0%", "--require", "spinlock-safe", "-q",
    )  # fmt: skip
    assert code == 3
    gated = json.loads(out)
    v.validate(gated)
    assert gated["gates"]["failed"] == 1
    code, out, _ = run(capsys, "compare", RETRY, "--format", "json")
    assert code == 0
    _validator("kvmcache.compare/1").validate(json.loads(out))
    # the schema can fail: a counter missing, a histogram of the wrong length
    broken = json.loads(json.dumps(doc))
    del broken["counters"]["fault_latency_ns"]
    assert not v.is_valid(broken)
    broken = json.loads(json.dumps(doc))
    broken["histograms"]["fault_latency"] = [0] * 17
    assert not v.is_valid(broken)
    broken = json.loads(json.dumps(doc))
    broken["trace"]["digest"] = "md5:00"
    assert not v.is_valid(broken)


def test_sweep_report_validates():
    from kvmcache.report.documents import sweep_document

    grid = sweep.parse_grid(["capacity=5,40"])  # 5 is below min_desc: invalid points too
    res = sweep.run_sweep([RETRY], ["dpamt-install", "dpamt-pair"], grid)
    doc = json.loads(json.dumps(sweep_document(res, "fault_latency_p99_ns")))
    assert doc["invalid"] and doc["runs"]
    _validator("kvmcache.sweep/1").validate(doc)
    del doc["runs"][0]["pareto"]
    assert not _validator("kvmcache.sweep/1").is_valid(doc)


# ------------------------------------------------------------------------ conventions


def test_quiet_and_verbose_on_every_command():
    from kvmcache.cli import COMMANDS, cli

    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet", "-v", "--verbose"} <= opts, name
    opts = {o for p in cli.params for o in getattr(p, "opts", [])}
    assert {"-q", "--quiet", "-v", "--verbose"} <= opts


def test_quiet_silences_notes_and_verbose_adds_details(capsys, tmp_path):
    out = tmp_path / "t.kvmt"
    code, _, err = run(capsys, "convert", TIGHT, str(out))
    assert code == 0 and err.startswith("kvmcache: ")
    code, _, err = run(capsys, "-q", "convert", TIGHT, str(tmp_path / "u.kvmt"))
    assert (code, err) == (0, "")
    code, out, err = run(
        capsys, "replay", TIGHT, "--format", "json", "-v", "--limit", "pages_allocated=100"
    )
    assert code == 0
    digest = json.loads(out)["trace"]["digest"]
    lines = err.splitlines()
    assert lines[0].startswith(f"kvmcache: {TIGHT}: 4 events, content {digest}; replayed in ")
    assert lines[1:] == [
        "kvmcache: gate passed: dpamt-install pages_allocated 37 <= 100",
        "kvmcache: gates: 1 checked, 1 passed, 0 failed",
    ]


@pytest.mark.parametrize("value, styled", [("1", False), ("", True)])
def test_no_color_drops_bold_and_italic(monkeypatch, value, styled):
    from rich.text import Text

    from kvmcache.report.formats import make_console

    monkeypatch.setenv("NO_COLOR", value)
    buf = io.StringIO()
    console = make_console(file=buf, force_terminal=True, width=80)
    console.print(Text("bold", style="bold red"), Text("italic", style="italic"))
    assert ("\x1b[" in buf.getvalue()) is styled
    assert (buf.getvalue() == "bold italic\n") is not styled


def test_shell_completion_as_documented():
    import subprocess
    import sys

    env = {**os.environ, "_KVMCACHE_COMPLETE": "bash_complete"}
    env.update(COMP_WORDS="kvmcache compare t.kvmt --alloc dpamt-p", COMP_CWORD="4")
    p = subprocess.run(
        [sys.executable, "-m", "kvmcache"], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0
    assert p.stdout.split() == ["plain,dpamt-pair", "plain,dpamt-prealloc"]
    env.update(COMP_WORDS="kvmcache replay t.kvmt --ver", COMP_CWORD="3")
    p = subprocess.run(
        [sys.executable, "-m", "kvmcache"], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.stdout.split() == ["plain,--verbose"]
