"""`kvmcache convert` and `kvmcache info`: the command line, exit codes and exact numbers."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from clirun import error_line as one_error_line
from clirun import run
from conftest import ROOT, TRACES

from kvmcache.trace import open_trace
from kvmcache.trace import output as output_mod
from kvmcache.trace.binary import pack_header, write_binary
from kvmcache.trace.events import TraceHeader, empty
from kvmcache.trace.yamlfmt import read_yaml

BUNDLED = [
    "first-private-4k",
    "two-vcpus-same-range",
    "huge-2m-split",
    "unmap-teardown",
    "vmx-basic",
]

GOOD = """\
kvmcache-trace: 1
vm: {type: tdx, root_level: 4, guest_memory: 4GiB, host_memory: 64GiB}
params: {tdcx_pages: 3, teardown: off}
events:
  - {ts: 0, op: vm_create}
  - {ts: 10, op: vcpu_create, vcpu: 2}
  - {ts: 20, op: fault, vcpu: 2, gfn: 0x1000, pfn: 0x80000, level: 4k, private: true}
  - {ts: 15, op: fault, vcpu: 7, gfn: 0x2000, pfn: 0x80200, level: 2m}
  - {op: unmap, gfn: 0x1000, level: 4k, private: true}
  - {ts: 40, op: vm_destroy}
"""


@pytest.fixture
def good(tmp_path) -> str:
    p = tmp_path / "good.yaml"
    p.write_text(GOOD)
    return str(p)


# --- convert -----------------------------------------------------------------------------------


def test_yaml_binary_yaml_round_trip_with_params(capsys, tmp_path, good):
    b = str(tmp_path / "good.kvmt")
    code, out, err = run(capsys, "convert", good, b)
    assert (code, out) == (0, "")
    assert err == (
        f"kvmcache: converted 6 events: {good} (yaml) -> {b} (binary), "
        f"parameters in {b}.params.yaml\n"
    )
    assert os.path.getsize(b) == 64 + 6 * 32
    raw = open(b, "rb").read(64)
    assert raw[:8] == b"KVMCTRC\0"
    assert struct.unpack_from("<HHIIBBHQQQ", raw, 8) == (1, 0, 64, 32, 1, 4, 1, 6, 1 << 20, 1 << 24)
    with open(b + ".params.yaml") as f:
        import yaml

        assert yaml.safe_load(f) == {"tdcx_pages": 3, "teardown": False}
    y = str(tmp_path / "back.yml")
    code, _, err = run(capsys, "convert", b, y)
    assert code == 0 and err == f"kvmcache: converted 6 events: {b} (binary) -> {y} (yaml)\n"
    h1, e1 = read_yaml(good)
    h2, e2 = read_yaml(y)
    assert e2.tobytes() == e1.tobytes()
    assert h2.params == {"tdcx_pages": 3, "teardown": False}
    assert (h2.vm_type, h2.root_level, h2.gfn_limit, h2.host_pfn_limit) == (
        "tdx",
        4,
        1 << 20,
        1 << 24,
    )


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_traces_match_their_binary_conversions(tmp_path, name):
    y = os.path.join(TRACES, f"{name}.yaml")
    b = os.path.join(TRACES, f"{name}.kvmt")
    h, ev = read_yaml(y)
    assert open(y).readline().startswith(f"# {name}: ")
    src = open_trace(b)
    back = np.concatenate(list(src.chunks()))
    assert back.tobytes() == ev.tobytes()
    assert src.header.params == h.params
    assert (src.header.vm_type, src.header.root_level, src.header.gfn_limit) == (
        h.vm_type,
        h.root_level,
        h.gfn_limit,
    )


def test_refuses_to_overwrite_without_force(capsys, tmp_path, good):
    out = tmp_path / "exists.kvmt"
    out.write_bytes(b"keep me")
    code, _, err = run(capsys, "convert", good, str(out))
    assert code == 2
    assert one_error_line(err) == f"{out}: already exists; use --force to overwrite it"
    assert out.read_bytes() == b"keep me"
    code, _, err = run(capsys, "convert", good, str(out), "--force")
    assert code == 0
    assert out.read_bytes()[:8] == b"KVMCTRC\0"


def test_refuses_in_equal_out(capsys, tmp_path, good):
    code, _, err = run(capsys, "convert", good, good, "--force")
    assert code == 2
    assert one_error_line(err) == f"{good}: IN and OUT are the same file; convert to a new file"
    link = tmp_path / "link.yaml"
    os.symlink(good, link)
    code, _, err = run(capsys, "convert", good, str(link), "--force")
    assert code == 2 and "same file" in err


def test_invalid_event_leaves_no_output(capsys, tmp_path):
    src = tmp_path / "bad.kvmt"
    h = TraceHeader("vmx", 4, 0x100, 0x100, path=str(src))
    ev = empty(3)
    ev["op"] = [1, 5, 2]
    ev["level"] = 1
    ev["flags"][1] = 1
    write_binary(str(src), h, ev)
    out = tmp_path / "out.kvmt"
    code, _, err = run(capsys, "convert", str(src), str(out))
    assert code == 2
    assert one_error_line(err) == (
        f"{src}: event 1: private fault on a vmx trace (only a tdx VM has private memory)"
    )
    assert sorted(os.listdir(tmp_path)) == ["bad.kvmt"]


def test_binary_to_binary_keeps_sidecar_and_drops_a_stale_one(capsys, tmp_path, good):
    a = str(tmp_path / "a.kvmt")
    assert run(capsys, "convert", good, a)[0] == 0
    c = str(tmp_path / "c.kvmt")
    assert run(capsys, "convert", a, c)[0] == 0
    assert open(c, "rb").read() == open(a, "rb").read()
    assert open_trace(c).header.params == {"tdcx_pages": 3, "teardown": False}
    plain = tmp_path / "plain.yaml"
    plain.write_text(GOOD.replace("params: {tdcx_pages: 3, teardown: off}\n", ""))
    assert run(capsys, "convert", str(plain), c, "--force")[0] == 0
    assert not os.path.exists(c + ".params.yaml")


def test_yaml_output_limit(capsys, tmp_path, good, monkeypatch):
    monkeypatch.setattr(output_mod, "YAML_EVENT_LIMIT", 5)
    out = tmp_path / "big.yaml"
    code, _, err = run(capsys, "convert", good, str(out))
    assert code == 2
    assert one_error_line(err) == (
        f"{good}: more than 5 events is too many for a YAML trace; "
        "write a binary .kvmt trace instead"
    )
    assert not out.exists()


# --- every bad-input class exits 2 with one line ------------------------------------------------


def _bad_inputs(tmp_path) -> list[tuple[list[str], str]]:
    def w(name: str, data: bytes | str) -> str:
        p = tmp_path / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(p)

    head = pack_header(TraceHeader("tdx", 4, 0x100, 0x100))
    newer = bytearray(head)
    struct.pack_into("<H", newer, 8, 3)
    y = GOOD
    return [
        ([str(tmp_path / "missing.kvmt")], "missing.kvmt: no such file"),
        (
            [w("magic.kvmt", b"ELF\0\0\0\0\0" + bytes(100))],
            "magic.kvmt: not a kvmcache binary trace (bad magic)",
        ),
        (
            [w("newer.kvmt", bytes(newer))],
            "newer.kvmt: trace format version 3.0 is newer than this kvmcache reads (1.x); upgrade kvmcache",
        ),
        ([w("trunc.kvmt", head[:40])], "trunc.kvmt: truncated header (40 of 64 bytes)"),
        (
            [w("tail.kvmt", head + bytes(40)), "--strict"],
            "tail.kvmt: trailing partial record (8 bytes)",
        ),
        (
            [w("syntax.yaml", y.replace("vm_destroy}", "vm_destroy"))],
            "syntax.yaml: line 11, column 1: invalid YAML: ",
        ),
        (
            [w("range.yaml", y.replace("pfn: 0x80200", "pfn: 0x1000000"))],
            "range.yaml: event 3 (line 8): pfn 0x1000000 is out of range (host_pfn_limit is 0x1000000)",
        ),
        (
            [w("unknown.yaml", y.replace("op: vm_create", "op: vm_create, cpu: 1"))],
            "unknown.yaml: event 0 (line 5): unknown key 'cpu' (event keys are ts op vcpu gfn pfn level private)",
        ),
        (
            [w("required.yaml", y.replace(", level: 2m", ""))],
            "required.yaml: event 3 (line 8): fault: missing required key level",
        ),
        (
            [w("vmx.yaml", y.replace("type: tdx", "type: vmx"))],
            "vmx.yaml: event 2 (line 7): private fault on a vmx trace (only a tdx VM has private memory)",
        ),
        (
            [w("after.yaml", y + "  - {op: vm_create}\n")],
            "after.yaml: event 6 (line 11): event after vm_destroy (event 5); a trace describes one VM",
        ),
        (
            [w("size.yaml", y.replace("4GiB", "4.5GiB"))],
            "size.yaml: line 2: vm.guest_memory: guest_memory '4.5GiB' is not a size (a decimal or 0x number and a unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB)",
        ),
        (
            [w("param.yaml", y.replace("tdcx_pages: 3", "tdcx_pages: -3"))],
            "param.yaml: line 3: parameter tdcx_pages: must be >= 0, got -3",
        ),
    ]


@pytest.mark.parametrize("command", ["info", "convert"])
def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, command):
    for args, message in _bad_inputs(tmp_path):
        argv = [command, args[0]]
        if command == "convert":
            argv.append(str(tmp_path / "out.kvmt"))
        code, out, err = run(capsys, *argv, *args[1:])
        assert code == 2, (args, err)
        assert out == ""
        line = one_error_line(err)
        assert line.startswith(str(tmp_path / message.split(":")[0])), line
        assert line[len(str(tmp_path)) + 1 :].startswith(message), line
        assert not os.path.exists(tmp_path / "out.kvmt")


def test_truncated_tail_warns_without_strict(capsys, tmp_path):
    p = tmp_path / "tail.kvmt"
    rec = empty(1)
    rec["op"] = 1
    p.write_bytes(pack_header(TraceHeader("tdx", 4, 0x100, 0x100)) + rec.tobytes() + bytes(8))
    code, out, err = run(capsys, "info", str(p), "--format", "json")
    assert code == 0
    assert err == f"kvmcache: warning: {p}: trailing partial record (8 bytes) ignored\n"
    doc = json.loads(out)
    assert doc["events"] == 1 and doc["ops"]["vm_create"] == 1 and doc["trace"]["complete"] is False


def test_errors_through_a_real_subprocess(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("vcpu: 7", "vcpu: 70000"))
    for argv in (
        ["info", str(tmp_path / "nope.kvmt")],
        ["info", str(bad)],
        ["convert", str(bad), str(tmp_path / "o.kvmt")],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "kvmcache", *argv], capture_output=True, text=True, cwd=ROOT
        )
        assert r.returncode == 2
        assert r.stdout == ""
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert (
        r.stderr
        == f"kvmcache: error: {bad}: event 3 (line 8): vcpu 70000 is out of range (must be < 65536)\n"
    )


# --- info --------------------------------------------------------------------------------------


def test_info_json_exact_for_a_bundled_trace(capsys):
    path = os.path.join(TRACES, "unmap-teardown.kvmt")
    code, out, err = run(capsys, "info", path, "--format", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    from kvmcache import __version__

    assert doc == {
        "schema": "kvmcache.info/1",
        "version": __version__,
        "trace": {
            "path": path,
            "format": "binary",
            "format_version": "1.0",
            "vm_type": "tdx",
            "root_level": 5,
            "gfn_limit": 0x400000,
            "guest_memory_bytes": 16 << 30,
            "host_pfn_limit": 0x400000,
            "host_memory_bytes": 16 << 30,
            "declared_count": 10,
            "complete": True,
        },
        "events": 10,
        "ops": {
            "vm_create": 1,
            "vm_destroy": 1,
            "vcpu_create": 1,
            "vcpu_destroy": 0,
            "fault": 4,
            "unmap": 3,
            "split": 0,
        },
        "faults": {"total": 4, "private": 3, "shared": 1, "levels": {"4k": 2, "2m": 1, "1g": 1}},
        "vcpus": {"count": 2, "max": 2},
        "ts": {"first": 0, "last": 60, "min": 0, "max": 60, "span": 60, "regressions": 1},
        "params": {},
        "import": None,
    }


def test_info_yaml_and_binary_agree(capsys, tmp_path, good):
    b = str(tmp_path / "g.kvmt")
    run(capsys, "convert", good, b)
    docs = []
    for p in (good, b):
        code, out, _ = run(capsys, "info", p, "--format", "json")
        assert code == 0
        docs.append(json.loads(out))
    y, k = docs
    assert y["trace"]["format"] == "yaml" and k["trace"]["format"] == "binary"
    for key in ("events", "ops", "faults", "vcpus", "ts", "params"):
        assert y[key] == k[key]
    assert y["faults"] == {
        "total": 2,
        "private": 1,
        "shared": 1,
        "levels": {"4k": 1, "2m": 1, "1g": 0},
    }
    assert y["vcpus"] == {"count": 2, "max": 7}
    assert y["ts"] == {"first": 0, "last": 40, "min": 0, "max": 40, "span": 40, "regressions": 1}
    assert y["params"] == {"tdcx_pages": 3, "teardown": False}


def test_info_from_a_pipe_equals_the_file(tmp_path):
    path = os.path.join(TRACES, "two-vcpus-same-range.kvmt")
    cmd = [sys.executable, "-m", "kvmcache", "info", "--format", "json"]
    from_file = subprocess.run(cmd + [path], capture_output=True, text=True, check=True)
    with open(path, "rb") as f:
        from_pipe = subprocess.run(cmd + ["-"], stdin=f, capture_output=True, text=True, check=True)
    a, b = json.loads(from_file.stdout), json.loads(from_pipe.stdout)
    assert b["trace"]["path"] == "-"
    a["trace"]["path"] = "-"
    a["params"] = b["params"]  # a pipe has no sidecar
    assert a == b
    assert b["ops"]["fault"] == 5 and b["faults"]["private"] == 4 and b["vcpus"]["count"] == 2


def test_info_shows_the_import_sidecar(capsys, tmp_path):
    t = tmp_path / "rec.kvmt"
    shutil.copy(os.path.join(TRACES, "two-vcpus-same-range.kvmt"), t)
    (tmp_path / "rec.kvmt.import.yaml").write_text(
        "source: trace-cmd report (perf.dat)\nvcpu_map: {'CPU 0/KVM-1234': 0, 'CPU 1/KVM-1235': 1}\n"
    )
    code, out, _ = run(capsys, "info", str(t), "--format", "json")
    assert code == 0
    assert json.loads(out)["import"] == {
        "source": "trace-cmd report (perf.dat)",
        "vcpu_map": {"CPU 0/KVM-1234": 0, "CPU 1/KVM-1235": 1},
    }
    code, out, _ = run(capsys, "info", str(t), "--format", "table")
    assert code == 0
    assert "CPU 1/KVM-1235 -> 1" in out and "trace-cmd report (perf.dat)" in out
    (tmp_path / "rec.kvmt.import.yaml").write_text("- not a mapping\n")
    code, _, err = run(capsys, "info", str(t))
    assert code == 2
    assert one_error_line(err) == f"{t}.import.yaml: import sidecar must be a YAML mapping"


def test_info_table(capsys):
    path = os.path.join(TRACES, "vmx-basic.kvmt")
    code, out, err = run(capsys, "info", path, "--format", "table")
    assert (code, err) == (0, "")
    lines = {ln.strip("│ ").split("│")[0].strip(): ln for ln in out.splitlines() if "│" in ln}
    assert "0x200000 (8 GiB guest)" in lines["gfn_limit"]
    assert "0x1000000 (64 GiB host)" in lines["host_pfn_limit"]
    assert lines["fault"].split("│")[2].strip() == "3"
    assert lines["faults 1g"].split("│")[2].strip() == "1"
    assert "capacity=20" in lines["params"]


def test_info_empty_trace_and_crashed_writer(capsys, tmp_path):
    p = tmp_path / "empty.kvmt"
    p.write_bytes(pack_header(TraceHeader("vmx", 5, 1, 1)))
    code, out, _ = run(capsys, "info", str(p), "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["events"] == 0
    assert doc["trace"]["declared_count"] is None and doc["trace"]["complete"] is False
    assert doc["ts"] == {
        "first": None,
        "last": None,
        "min": None,
        "max": None,
        "span": None,
        "regressions": 0,
    }
    assert doc["vcpus"] == {"count": 0, "max": None}
    code, out, _ = run(capsys, "info", str(p), "--format", "table")
    assert code == 0 and "unknown (0)" in out and "no (the writer did not close it)" in out
