"""Where outputs go: never over an input, never replacing a device or a FIFO, nothing left
behind on failure or SIGTERM; standard output closed, full or gone."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from clirun import error_line, run
from conftest import IMPORT_DATA, TRACES

from kvmcache.errors import KvmcacheError
from kvmcache.trace import open_trace
from kvmcache.trace.binary import BinaryWriter
from kvmcache.trace.events import TraceHeader, empty

IMPORT_TEXT = os.path.join(IMPORT_DATA, "ftrace_tdp_mmu.txt")
KVMCACHE = [sys.executable, "-c", "from kvmcache.cli import main; main()"]


@pytest.fixture
def trace(trace_copy):
    return trace_copy("churn-tdx.yaml", "t.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "{t}", "--timeline", "{t}", "--every", "1"],
        ["replay", "{t}", "--save-baseline", "{t}", "--format", "json"],
        ["compare", "{t}", "--save-baseline", "{t}", "--format", "json"],
        ["sweep", "{t}", "--alloc", "none", "-o", "{t}"],
        ["plot", "{t}", "-o", "{t}", "--format", "table"],
        ["import", "{t}", "-o", "{t}", "--force"],
    ],
)
def test_an_output_never_overwrites_an_input(capsys, trace, argv):
    before = open(trace, "rb").read()
    code, _, err = run(capsys, *[a.format(t=trace) for a in argv])
    assert code == 2 and "is the input" in error_line(err)
    assert open(trace, "rb").read() == before


@pytest.mark.parametrize(
    "argv, match",
    [
        (["replay", "{t}", "--timeline", "-"], "--timeline needs a file path"),
        (["import", "{t}", "-o", "-"], "not standard output"),
    ],
)
def test_dash_is_not_an_output_file(capsys, trace, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *[a.format(t=trace) for a in argv])
    assert code == 2 and match in error_line(err)
    assert not os.path.exists(tmp_path / "-")


def test_a_symlink_output_replaces_its_target_and_stays_a_link(capsys, trace, tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    code, _, err = run(capsys, "replay", trace, "--timeline", str(link), "--format", "json")
    assert code == 0, err
    assert link.is_symlink() and real.read_text().startswith("alloc,event")


def _fifo_reader(path: str, out: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as f:
            out.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("dst", ["out.kvmt", "out.yaml"])
def test_a_fifo_output_is_written_through_not_replaced(capsys, tmp_path, dst):
    """A FIFO (and a device such as /dev/null) is written in place; a binary trace into a
    pipe keeps count 0 in its header ("derive it from the size") and reads back whole."""
    fifo = str(tmp_path / dst)
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _fifo_reader(fifo, got)
    src = os.path.join(TRACES, "churn-tdx.yaml")
    code, _, err = run(capsys, "convert", src, fifo, "--force")
    reader.join(10)
    assert code == 0, err
    assert os.path.exists(fifo) and not os.path.isfile(fifo)  # still the FIFO
    assert not glob.glob(str(tmp_path / ".*.tmp")) and not os.path.exists(fifo + ".params.yaml")
    copy = tmp_path / ("copy" + os.path.splitext(dst)[1])
    copy.write_bytes(got[0])
    a, b = open_trace(src), open_trace(str(copy))
    assert np.concatenate(list(a.chunks())).tobytes() == np.concatenate(list(b.chunks())).tobytes()


def test_a_device_output_is_written_through(capsys, tmp_path):
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null
    except OSError:
        pytest.skip("mknod needs privileges here")
    code, _, err = run(capsys, "synth", "steady", "-o", str(dev), "--events", "1000", "--force")
    assert code == 0, err
    assert not dev.is_file() and os.stat(dev).st_rdev == os.makedev(1, 3)


def test_sidecars_are_not_overwritten_without_force(capsys, tmp_path):
    side = tmp_path / "new.kvmt.params.yaml"
    side.write_text("capacity: 33\n")
    src = os.path.join(TRACES, "churn-tdx.yaml")
    code, _, err = run(capsys, "convert", src, str(tmp_path / "new.kvmt"))
    assert code == 2 and "--force" in error_line(err) and side.read_text() == "capacity: 33\n"
    side = tmp_path / "imp.kvmt.import.yaml"
    side.write_text("mine\n")
    code, _, err = run(capsys, "import", IMPORT_TEXT, "-o", str(tmp_path / "imp.kvmt"))
    assert code == 2 and "--force" in error_line(err) and side.read_text() == "mine\n"
    assert not (tmp_path / "imp.kvmt").exists()


def test_a_failed_binary_write_is_one_error_and_leaves_nothing(tmp_path):
    dst = tmp_path / "out.kvmt"
    dst.write_bytes(b"precious")
    w = BinaryWriter(str(dst), TraceHeader("vmx", 4, 512, 512))

    class Full:
        def __getattr__(self, name):
            return getattr(w_file, name)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    w_file = w._f
    w._f = Full()
    with pytest.raises(KvmcacheError, match="out.kvmt: cannot write: No space left on device"):
        w.write(empty(3))
    assert dst.read_bytes() == b"precious"
    assert not glob.glob(str(tmp_path / ".*.tmp"))


def test_import_of_a_frame_beyond_what_a_trace_holds(capsys, tmp_path):
    text = tmp_path / "huge.txt"
    text.write_text(
        " CPU 0/KVM-4145 [003] ..... 1000.000400: kvm_mmu_spte_requested: "
        "gfn fffffffffffffe00 pfn 1000 level 1\n"
    )
    code, _, err = run(capsys, "import", str(text), "-o", str(tmp_path / "o.kvmt"))
    assert code == 2 and "huge.txt:1: fault gfn 0xfffffffffffffe00" in error_line(err)
    code, _, err = run(
        capsys,
        "import",
        IMPORT_TEXT,
        "-o",
        str(tmp_path / "o.kvmt"),
        "--host-memory",
        "99999999999TiB",
    )
    assert code == 2 and "--host-memory is too large" in error_line(err)
    assert os.listdir(tmp_path) == ["huge.txt"]


@pytest.mark.parametrize("cmd", ["replay", "compare"])
def test_a_binary_trace_with_count_0_replays(capsys, tmp_path, cmd):
    """Count 0 in the header means "unknown" (INTERFACES.md section 3): a crashed writer."""
    dst = tmp_path / "z.kvmt"
    shutil.copy(os.path.join(TRACES, "steady-vmx.kvmt"), dst)
    with open(dst, "r+b") as f:
        f.seek(22)
        f.write(bytes(10))  # flags and count
    code, out, err = run(capsys, cmd, str(dst), "--format", "json")
    assert code == 0, err
    assert '"events": 20000' in out


def _sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)


def test_standard_output_closed_or_full_is_one_error():
    k = " ".join(f"'{a}'" for a in KVMCACHE)
    t = os.path.join(TRACES, "churn-tdx.yaml")
    p = _sh(f"{k} info '{t}' --format json >&-")
    assert p.returncode == 2 and p.stderr == "kvmcache: error: standard output: closed\n"
    if os.path.exists("/dev/full"):
        p = _sh(f"{k} info '{t}' --format json > /dev/full")
        assert p.returncode == 2, p.stderr
        assert p.stderr == "kvmcache: error: standard output: No space left on device\n"


def test_sigterm_removes_the_temporary_output(tmp_path):
    out = tmp_path / "big.kvmt"
    p = subprocess.Popen(
        [*KVMCACHE, "synth", "steady", "-o", str(out), "--events", str(10**9)],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not glob.glob(str(tmp_path / ".big.kvmt.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv, match",
    [
        (["replay", "{t}", "--set", "capacity=-1"], "capacity: must be >= 0, got -1"),
        (["replay", "{t}", "--set", "desc_bytes=99999999999999999999999"], "is too large"),
        (
            ["replay", "{t}", "--set", "capacity=1000000000"],
            "parameter capacity: 1000000000 is too",
        ),
        (["synth", "steady", "-o", "x.kvmt", "--events", str(2**63)], "to 2**62 - 1"),
    ],
)
def test_messages_name_the_real_problem(capsys, trace, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *[a.format(t=trace) for a in argv])
    assert code == 2 and match in error_line(err)
