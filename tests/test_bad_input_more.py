"""More bad input: pipes and devices as traces, binary junk, non-UTF-8 and invalid YAML side
files, deep JSON, duplicate keys, surplus binary records, malformed Dask addresses.

Each is one `kvmcache: error: ...` line and exit 2 (or a warning), never a traceback."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from clirun import error_line, run
from conftest import TRACES

from kvmcache.errors import KvmcacheError
from kvmcache.trace import open_trace
from kvmcache.trace.binary import BinaryTrace
from kvmcache.yamlio import read_text_stream

KVMT = os.path.join(TRACES, "first-private-4k.kvmt")  # 3 events
YAML = os.path.join(TRACES, "first-private-4k.yaml")
BINARY_JUNK = "not a kvmcache trace (binary data without the KVMCTRC magic)"

HEAD = """\
kvmcache-trace: 1
vm: {type: tdx, root_level: 4, guest_memory: 4GiB, host_memory: 64GiB}
"""


def _feed(path_or_fd, data: bytes) -> threading.Thread:
    """Write ``data`` into a FIFO (opened here) or a pipe's write end, in the background."""

    def writer() -> None:
        if isinstance(path_or_fd, int):
            f = os.fdopen(path_or_fd, "wb")
        else:
            f = open(path_or_fd, "wb")  # noqa: SIM115 - blocks until the reader opens it
        with f:
            try:
                f.write(data)
            except BrokenPipeError:
                pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return t


@pytest.fixture
def alarm():
    """Fail instead of hanging when a FIFO is opened a second time (nobody writes to it)."""

    def expire(_sig, _frame):
        raise TimeoutError("blocked reopening the FIFO")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 10)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def _info(capsys, path: str) -> dict:
    code, out, err = run(capsys, "info", path, "--format", "json")
    assert code == 0, err
    return json.loads(out)


# --- 1. a FIFO or process substitution is read once, as a stream --------------------------------


@pytest.mark.parametrize("src", [KVMT, YAML])
def test_fifo_trace_is_read_once(capsys, tmp_path, src, alarm):
    fifo = str(tmp_path / "trace.fifo")
    os.mkfifo(fifo)
    t = _feed(fifo, open(src, "rb").read())
    doc = _info(capsys, fifo)
    t.join(5)
    assert doc["events"] == 3 and doc["faults"]["private"] == 1
    assert doc["trace"]["format"] == ("binary" if src == KVMT else "yaml")


@pytest.mark.parametrize("src", [KVMT, YAML])
def test_dev_fd_pipe_like_process_substitution(tmp_path, src):
    r, w = os.pipe()
    t = _feed(w, open(src, "rb").read())
    try:
        source = open_trace(f"/dev/fd/{r}")
        events = np.concatenate(list(source.chunks()))
    finally:
        os.close(r)
    t.join(5)
    assert len(events) == 3 and source.header.path == f"/dev/fd/{r}"


def test_fifo_convert_keeps_every_event(capsys, tmp_path, alarm):
    fifo = str(tmp_path / "in.fifo")
    os.mkfifo(fifo)
    t = _feed(fifo, open(KVMT, "rb").read())
    out = str(tmp_path / "out.yaml")
    code, _, err = run(capsys, "convert", fifo, out)
    t.join(5)
    assert code == 0, err
    assert len(np.concatenate(list(open_trace(out).chunks()))) == 3


def test_sweep_refuses_a_fifo_it_would_read_once_per_point(capsys, tmp_path, alarm):
    fifo = str(tmp_path / "t.fifo")
    os.mkfifo(fifo)  # nobody writes: the check must not open it
    code, _, err = run(capsys, "sweep", fifo, "--set", "capacity=4")
    assert code == 2
    assert "not a regular file" in error_line(err)


# --- 2. binary junk without the magic is refused at its first bytes -----------------------------


class _Zeros(io.RawIOBase):
    """An endless stream of NUL bytes that fails the test when read too far."""

    def __init__(self, limit: int = 16 << 20) -> None:
        self.limit = limit
        self.given = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise AssertionError("read an endless stream to its end")
        self.given += n
        if self.given > self.limit:
            raise AssertionError(f"read {self.given} bytes of binary junk")
        return b"\0" * n

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def test_endless_binary_stdin_is_refused_at_once(capsys, monkeypatch):
    fake = io.TextIOWrapper(io.BufferedReader(_Zeros()))
    monkeypatch.setattr(sys, "stdin", fake)
    code, _, err = run(capsys, "info", "-")
    assert code == 2
    assert error_line(err) == f"<stdin>: {BINARY_JUNK}"


def test_text_reader_stops_at_the_first_binary_block():
    zeros = _Zeros()
    with pytest.raises(KvmcacheError, match="binary data without the KVMCTRC magic"):
        read_text_stream(zeros, "z", binary=BINARY_JUNK)
    assert zeros.given <= 1 << 20


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("cmd", ["info", "replay"])
def test_dev_zero_is_refused_at_once(cmd):
    def limit_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))

    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "kvmcache", cmd, "/dev/zero"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
    )
    assert r.returncode == 2, r.stderr
    assert error_line(r.stderr) == f"/dev/zero: {BINARY_JUNK}"
    assert time.monotonic() - start < 30


def test_yaml_named_file_of_nul_bytes(capsys, tmp_path):
    p = tmp_path / "nul.yaml"
    p.write_bytes(b"kvmcache-trace: 1\n" + b"\0" * 64)
    code, _, err = run(capsys, "info", str(p))
    assert code == 2
    assert error_line(err) == f"{p}: {BINARY_JUNK}"


# --- 3. exit 1 for user input: non-UTF-8 files, deep JSON, empty counters -----------------------


def test_config_with_non_utf8_bytes(capsys, tmp_path):
    c = tmp_path / "c.yaml"
    c.write_bytes(b"\xff\xfe")
    code, _, err = run(capsys, "replay", YAML, "--config", str(c))
    assert code == 2
    msg = error_line(err)
    assert msg.startswith(f"{c}: ") and "UTF-8" in msg


@pytest.fixture
def kvmt_copy(trace_copy) -> str:
    return trace_copy(os.path.basename(KVMT), "t.kvmt")


@pytest.mark.parametrize("cmd", ["replay", "info"])
def test_sidecar_with_non_utf8_bytes(capsys, kvmt_copy, cmd):
    side = kvmt_copy + ".params.yaml"
    with open(side, "wb") as f:
        f.write(b"\xff\xfe")
    code, _, err = run(capsys, cmd, kvmt_copy)
    assert code == 2
    msg = error_line(err)
    assert msg.startswith(f"{side}: ") and "UTF-8" in msg


def test_deeply_nested_baseline(capsys, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    code, _, err = run(capsys, "replay", YAML, "--baseline", str(deep))
    assert code == 2
    assert error_line(err) == f"{deep}: baseline is not valid JSON: nested too deeply"


def test_deeply_nested_plot_input(capsys, tmp_path):
    for name, text in (("deep.json", "{" + '"a":[' * 100000), ("deep2.json", "[" * 200000)):
        p = tmp_path / name
        p.write_text(text)
        code, _, err = run(capsys, "plot", str(p), "--format", "table")
        assert code == 2, err
        assert error_line(err).startswith(f"{p}: ")


def _sweep_doc(counters: dict) -> dict:
    return {
        "schema": "kvmcache.sweep/1",
        "grid": {"capacity": [4]},
        "runs": [
            {
                "trace": {"path": "t.kvmt"},
                "alloc": "dpamt-install",
                "params": {"capacity": 4},
                "counters": counters,
                "pareto": True,
            }
        ],
    }


@pytest.mark.parametrize("fmt", ["png", "table"])
def test_plot_sweep_with_empty_counters(capsys, tmp_path, fmt):
    s = tmp_path / "s.json"
    s.write_text(json.dumps(_sweep_doc({})))
    args = ["-o", str(tmp_path / "e.png")] if fmt == "png" else ["--format", "table"]
    if fmt == "png":
        pytest.importorskip("matplotlib")
    code, _, err = run(capsys, "plot", str(s), *args)
    assert code == 2
    msg = error_line(err)
    assert msg.startswith(f"{s}: runs[0].counters lacks cache_pages_idle_peak")
    assert not (tmp_path / "e.png").exists()


def test_plot_sweep_csv_without_lock_counters(capsys, tmp_path):
    p = tmp_path / "s.csv"
    p.write_text(
        "trace,alloc,effective_alloc,status,pareto,error,cache_pages_idle_peak\n"
        "t,dpamt-install,dpamt-install,ok,true,,3\n"
    )
    code, _, err = run(capsys, "plot", str(p), "--format", "table")
    assert code == 2
    assert error_line(err).startswith(f"{p}: the header lacks alloc_under_lock")


def test_plot_binary_input_is_refused_at_once(capsys, tmp_path):
    p = tmp_path / "junk.csv"
    p.write_bytes(b"\0" * 100)
    code, _, err = run(capsys, "plot", str(p), "--format", "table")
    assert code == 2
    assert error_line(err) == f"{p}: not a kvmcache CSV or JSON result (binary data, not text)"


# --- 4. an invalid params sidecar is one line with line and column ------------------------------


@pytest.mark.parametrize("cmd", ["replay", "info"])
def test_sidecar_with_invalid_yaml(capsys, kvmt_copy, cmd):
    side = kvmt_copy + ".params.yaml"
    with open(side, "w") as f:
        f.write("capacity: [\n")
    code, _, err = run(capsys, cmd, kvmt_copy)
    assert code == 2
    msg = error_line(err)
    assert msg.startswith(f"{side}: line 2, column 1: invalid YAML: "), msg


# --- 5. duplicate keys; surplus binary records ---------------------------------------------------


def _yaml_trace(tmp_path, text: str) -> str:
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text, problem",
    [
        (  # in an event
            HEAD + "events:\n  - {ts: 0, op: vm_create}\n"
            "  - {ts: 1, op: vcpu_create, vcpu: 0}\n"
            "  - {ts: 2, op: fault, vcpu: 0, gfn: 1, gfn: 2, pfn: 3, level: 4k}\n",
            "event 2 (line 6): duplicate key 'gfn'",
        ),
        (  # in a block-style event, before the header
            "events:\n  - op: vm_create\n    ts: 0\n    ts: 1\n" + HEAD,
            "event 0 (line 4): duplicate key 'ts'",
        ),
        (  # in params
            HEAD + "params:\n  capacity: 4\n  capacity: 8\nevents: []\n",
            "line 5: duplicate key 'capacity' in params",
        ),
        (  # in vm
            "kvmcache-trace: 1\nvm: {type: tdx, type: vmx, root_level: 4, gfn_limit: 1,"
            " host_pfn_limit: 1}\nevents: []\n",
            "line 2: duplicate key 'type' in vm",
        ),
    ],
)
def test_duplicate_key_in_a_yaml_trace(capsys, tmp_path, text, problem):
    t = _yaml_trace(tmp_path, text)
    code, _, err = run(capsys, "info", t)
    assert code == 2
    assert error_line(err) == f"{t}: {problem}"


def test_yaml_merge_key_may_still_be_overridden(tmp_path):
    t = _yaml_trace(
        tmp_path,
        HEAD + "params: {<<: &d {capacity: 4}, capacity: 8}\nevents: []\n",
    )
    assert open_trace(t).header.params == {"capacity": 8}


def test_duplicate_key_in_config(capsys, tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text("capacity: 4\ntdcx_pages: 3\ncapacity: 5\n")
    code, _, err = run(capsys, "replay", YAML, "--config", str(c))
    assert code == 2
    assert error_line(err) == f"{c}: line 3: duplicate key 'capacity'"


def test_duplicate_key_in_sidecar(capsys, kvmt_copy):
    side = kvmt_copy + ".params.yaml"
    with open(side, "w") as f:
        f.write("capacity: 4\ncapacity: 5\n")
    code, _, err = run(capsys, "info", kvmt_copy)
    assert code == 2
    assert error_line(err) == f"{side}: line 2: duplicate key 'capacity'"


def _with_count(tmp_path, count: int) -> str:
    raw = bytearray(open(KVMT, "rb").read())
    struct.pack_into("<Q", raw, 24, count)
    p = tmp_path / "short-count.kvmt"
    p.write_bytes(bytes(raw))
    return str(p)


def test_header_count_below_records_warns_once(tmp_path):
    p = _with_count(tmp_path, 2)
    warnings: list[str] = []
    t = BinaryTrace(p, warn=warnings.append)
    assert sum(len(c) for c in t.chunks()) == 2
    assert warnings == [
        f"{p}: header declares 2 records but the file holds 3 whole records; reading only 2"
    ]
    with pytest.raises(KvmcacheError, match="header declares 2 records but the file holds 3"):
        BinaryTrace(p, strict=True)


def test_header_count_below_records_on_a_stream(tmp_path):
    p = _with_count(tmp_path, 2)
    raw = open(p, "rb").read()
    warnings: list[str] = []
    t = BinaryTrace("-", stream=io.BytesIO(raw), warn=warnings.append)
    assert sum(len(c) for c in t.chunks()) == 2
    assert warnings == ["-: header declares 2 records but the stream holds more; reading only 2"]
    strict = BinaryTrace("-", stream=io.BytesIO(raw), strict=True)
    with pytest.raises(KvmcacheError, match="but the stream holds more"):
        list(strict.chunks())
    exact = BinaryTrace("-", stream=io.BytesIO(open(KVMT, "rb").read()), warn=warnings.append)
    assert sum(len(c) for c in exact.chunks()) == 3 and len(warnings) == 1


def test_header_count_below_records_cli(capsys, tmp_path):
    p = _with_count(tmp_path, 2)
    code, out, err = run(capsys, "info", p, "--format", "json")
    assert code == 0 and json.loads(out)["events"] == 2
    assert err == (
        f"kvmcache: warning: {p}: header declares 2 records but the file holds 3 whole records;"
        " reading only 2\n"
    )
    code, _, err = run(capsys, "info", p, "--strict")
    assert code == 2 and "header declares 2 records" in error_line(err)


# --- 6. a malformed Dask scheduler address --------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["garbage", "tcp://", "tcp://host", "tcp://host:port", "host:99999", "a b:1", ":8786"],
)
def test_malformed_scheduler_address(capsys, address):
    code, _, err = run(capsys, "sweep", YAML, "--scheduler", address, "--set", "capacity=4")
    assert code == 2
    msg = error_line(err)
    assert msg.startswith(f"Dask scheduler address {address!r}"), msg


def test_scheduler_address_check_accepts_dask_forms():
    from kvmcache.sim.dask_address import check_address

    for ok in (
        "tcp://127.0.0.1:8786",
        "tls://sched.example:8786",
        "inproc://10.0.0.1/1/2",
        "sched:8786",
        "tcp://[::1]:8786",
        "ws://h:80",
    ):
        check_address(ok)


@pytest.mark.parametrize("address", ["garbage", "foo://x"])
def test_failed_dask_client_leaves_no_traceback(address):
    pytest.importorskip("dask.distributed")
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "kvmcache", "sweep", YAML, "--scheduler", address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    error_line(r.stderr)  # exactly one line: no `Client.__del__` traceback at exit
    assert time.monotonic() - start < 20
