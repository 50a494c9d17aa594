"""Hostile and huge inputs (issue #17): each is refused with one line and exit 2 (or read
correctly), in bounded time and memory; the limits are those of kvmcache/limits.py."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from clirun import error_line, run

from kvmcache import limits
from kvmcache.params import DEFAULTS, PARAMS, fresh_pfn_bound
from kvmcache.trace.binary import BinaryTrace, chunk_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = os.path.join(ROOT, "traces")
KVMT = os.path.join(TRACES, "first-private-4k.kvmt")  # 3 events
STEADY = os.path.join(TRACES, "steady-tdx.kvmt")  # 200,000 events
FTRACE = os.path.join(ROOT, "tests", "data", "import", "ftrace_tdp_mmu.txt")
KVMCACHE = [sys.executable, "-c", "from kvmcache.cli import main; main()"]
HEAD = "kvmcache-trace: 1\nvm: {type: tdx, root_level: 4, guest_memory: 4GiB, host_memory: 64GiB}\n"
LONG = "9" * 5000
ALIAS_BOMB = (
    "aliases expand to over 1,000,000 nodes more than the document holds (a YAML alias bomb?)"
)


def laughs(prefix: str = "") -> str:
    """A "billion laughs": ten levels of nine aliases each (9**10 strings once expanded)."""
    lines = [f'{prefix}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 11):
        lines.append(f"{prefix}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _copy(tmp_path, src: str, name: str | None = None) -> str:
    dst = tmp_path / (name or os.path.basename(src))
    shutil.copy(src, dst)
    return str(dst)


# --------------------------------------------------------------------------- item 2, 13


def _imported_events(capsys, tmp_path, data: bytes, name: str) -> tuple[int, str, int]:
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / (name + ".kvmt")
    code, _, err = run(capsys, "import", str(src), "-o", str(out))
    n = BinaryTrace(str(out)).header.count if code == 0 else -1
    return code, err, n or 0


def test_complete_compressed_imports_read_every_line(capsys, tmp_path):
    zstandard = pytest.importorskip("zstandard")
    text = open(FTRACE, "rb").read()
    plain = _imported_events(capsys, tmp_path, text, "plain.txt")
    assert plain[0] == 0 and plain[2] > 0
    one_frame = zstandard.ZstdCompressor(write_checksum=True).compress(text)
    assert _imported_events(capsys, tmp_path, one_frame, "a.zst")[::2] == (0, plain[2])
    half = len(text) // 2
    two = zstandard.ZstdCompressor().compress(text[:half]) + zstandard.ZstdCompressor(
        write_content_size=False
    ).compress(text[half:])
    assert _imported_events(capsys, tmp_path, two, "b.zst")[::2] == (0, plain[2])


@pytest.mark.parametrize("kind", ["zst", "gz", "xz", "bz2"])
@pytest.mark.parametrize("cut", [1, 4, 0.5])
def test_a_truncated_compressed_input_is_an_error(capsys, tmp_path, kind, cut):
    text = open(FTRACE, "rb").read()
    if kind == "zst":
        zstandard = pytest.importorskip("zstandard")
        data = zstandard.ZstdCompressor(write_checksum=True).compress(text)
    else:
        data = {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}[kind](text)
    end = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    code, err, _ = _imported_events(capsys, tmp_path, data[:end], f"t.{kind}")
    assert code == 2
    assert error_line(err).startswith(f"{tmp_path}/t.{kind}: cannot ")
    assert not os.path.exists(tmp_path / f"t.{kind}.kvmt")


def test_a_corrupt_gzip_stream_is_one_error(capsys, tmp_path):
    data = bytearray(gzip.compress(open(FTRACE, "rb").read()))
    for i in range(20, 40):
        data[i] ^= 0xFF
    code, err, _ = _imported_events(capsys, tmp_path, bytes(data), "bad.gz")
    assert code == 2
    assert error_line(err).startswith(f"{tmp_path}/bad.gz: cannot decompress: ")


# --------------------------------------------------------------------------- items 3, 10


class _Peer:
    """A loopback TCP server that accepts and then says nothing, or garbage."""

    def __init__(self, reply: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.reply:
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize(
    "reply, problem",
    [
        (b"", "no Dask handshake within 0.5 s (--scheduler-timeout); is it a Dask scheduler?"),
        (b"\xff" * 64, "not a Dask scheduler (its first message announces "),
        (struct.pack("<Q", 10) + b"x", "no Dask handshake within 0.5 s"),
    ],
)
def test_a_scheduler_that_is_silent_or_talks_garbage_fails_in_time(capsys, reply, problem):
    pytest.importorskip("dask.distributed")
    peer = _Peer(reply)
    try:
        address = f"tcp://127.0.0.1:{peer.port}"
        code, _, err = run(
            capsys, "sweep", KVMT, "--scheduler", address, "--scheduler-timeout", "0.5"
        )
    finally:
        peer.close()
    assert code == 2
    assert error_line(err).startswith(
        f"cannot connect to the Dask scheduler at {address}: {problem}"
    )


def test_a_refused_scheduler_connection_is_one_line(capsys):
    pytest.importorskip("dask.distributed")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    code, _, err = run(capsys, "sweep", KVMT, "--scheduler", f"127.0.0.1:{port}")
    assert code == 2
    assert error_line(err) == (
        f"cannot connect to the Dask scheduler at 127.0.0.1:{port}: Connection refused"
    )


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_scheduler_timeout_must_be_positive(capsys, value):
    code, _, err = run(capsys, "sweep", KVMT, "--scheduler-timeout", value)
    assert code == 2
    assert "--scheduler-timeout" in error_line(err)


# --------------------------------------------------------------------------- item 4


@pytest.mark.parametrize("option", ["--baseline", "--config"])
def test_a_device_is_not_a_side_file(capsys, option):
    code, _, err = run(capsys, "replay", KVMT, option, "/dev/zero")
    assert code == 2
    assert error_line(err).startswith("/dev/zero: not a regular file")


def test_side_files_have_a_size_cap(capsys, tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(limits.MAX_SIDE_FILE_BYTES + 1)  # sparse: costs no disk
    code, _, err = run(capsys, "replay", KVMT, "--baseline", str(big))
    assert code == 2
    assert error_line(err) == (
        f"{big}: 67,108,865 bytes is too large for a baseline file (at most 64 MiB)"
    )
    trace = _copy(tmp_path, KVMT)
    os.symlink(big, trace + ".params.yaml")
    code, _, err = run(capsys, "replay", trace)
    assert code == 2
    assert error_line(err).startswith(f"{trace}.params.yaml: 67,108,865 bytes is too large")


# --------------------------------------------------------------------------- items 5, 7


def test_alias_bombs_are_refused_everywhere(capsys, tmp_path):
    trace = _copy(tmp_path, KVMT)
    config = tmp_path / "bomb.yaml"
    config.write_text(laughs() + "capacity: *l10\n")
    code, _, err = run(capsys, "replay", trace, "--config", str(config))
    assert code == 2 and error_line(err).endswith(ALIAS_BOMB)

    config.write_text(laughs() + "limits: {faults: *l10}\n")
    code, _, err = run(capsys, "replay", trace, "--config", str(config))
    assert code == 2 and error_line(err).endswith(ALIAS_BOMB)

    with open(trace + ".params.yaml", "w") as f:
        f.write(laughs() + "capacity: *l10\n")
    code, _, err = run(capsys, "replay", trace)
    assert code == 2 and error_line(err).startswith(f"{trace}.params.yaml: line ")
    assert error_line(err).endswith(ALIAS_BOMB)

    yaml_trace = tmp_path / "bomb-trace.yaml"
    yaml_trace.write_text(HEAD + "params:\n" + laughs("  ") + "  capacity: *l10\nevents: []\n")
    code, _, err = run(capsys, "info", str(yaml_trace))
    assert code == 2
    assert error_line(err) == f"{yaml_trace}: line 9, column 7: invalid YAML: {ALIAS_BOMB}"


def test_a_billion_laughs_before_vm_is_refused(capsys, tmp_path):
    # events: before vm: every item is kept until the header is known
    doc = "kvmcache-trace: 1\nevents:\n"
    doc += '  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, 11):
        doc += f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    doc += "vm: {type: tdx, root_level: 4, guest_memory: 4GiB, host_memory: 64GiB}\n"
    path = tmp_path / "laughs.yaml"
    path.write_text(doc)
    code, _, err = run(capsys, "info", str(path))
    assert code == 2
    assert error_line(err) == f"{path}: line 8, column 5: invalid YAML: {ALIAS_BOMB}"


def test_quadratic_aliases_are_refused(capsys, tmp_path):
    big = "[" + ", ".join(map(str, range(1000))) + "]"
    doc = "kvmcache-trace: 1\nevents:\n"
    doc += f"  - &big {{op: vm_create, ts: 0, vcpu: {big}}}\n"
    doc += "  - {op: vcpu_create, ts: 1, vcpu: *big}\n" * 2000
    doc += "vm: {type: tdx, root_level: 4, guest_memory: 4GiB, host_memory: 64GiB}\n"
    path = tmp_path / "quadratic.yaml"
    path.write_text(doc)
    code, _, err = run(capsys, "info", str(path))
    assert code == 2
    assert error_line(err).endswith(ALIAS_BOMB)


def test_a_self_referencing_alias_is_refused(capsys, tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(HEAD + "events:\n  - &a {op: vm_create, ts: [*a]}\n")
    code, _, err = run(capsys, "info", str(path))
    assert code == 2
    assert error_line(err) == (
        f"{path}: line 4, column 29: invalid YAML: an alias refers to a structure containing itself"
    )


def test_shared_anchors_within_the_limit_still_work(capsys, tmp_path):
    path = tmp_path / "shared.yaml"
    events = "".join(f"  - {{<<: *f, ts: {i}, vcpu: {i}}}\n" for i in range(1, 200))
    path.write_text(
        HEAD + "events:\n  - {op: vm_create, ts: 0}\n  - &f {op: vcpu_create, vcpu: 0}\n" + events
    )
    code, out, err = run(capsys, "info", str(path), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["ops"]["vcpu_create"] == 200


def test_excerpts_are_bounded():
    assert limits.excerpt("x" * 1000) == "'" + "x" * 37 + "..." + "x" * 38 + "'"
    nested: list = ["lol"] * 9
    for _ in range(30):  # 9**30 items once expanded
        nested = [nested] * 9
    text = limits.excerpt(nested)
    assert len(text) <= limits.EXCERPT_CHARS and text.startswith("[[")
    assert limits.excerpt(10**5000) == "<an integer of 16610 bits>"
    assert limits.excerpt(12) == "12"
    assert limits.one_line("a\nb") == "a b"
    assert len(limits.one_line("y" * 10**6)) == limits.MAX_MESSAGE_CHARS


def test_a_huge_value_in_a_message_is_an_excerpt(capsys, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + "events:\n  - {op: " + "z" * 100_000 + "}\n")
    code, _, err = run(capsys, "info", str(path))
    assert code == 2
    line = error_line(err)
    assert line == (
        f"{path}: event 0 (line 4): op '{'z' * 37}...{'z' * 38}' is not an event op "
        "(vm_create, vm_destroy, vcpu_create, vcpu_destroy, fault, unmap, split or 1..7)"
    )


# --------------------------------------------------------------------------- item 6


def _kvmt_with_record_size(rsize: int) -> bytes:
    raw = open(KVMT, "rb").read()
    head = bytearray(raw[:64])
    struct.pack_into("<I", head, 16, rsize)
    records = [raw[64 + 32 * i : 96 + 32 * i] + b"\x5a" * (rsize - 32) for i in range(3)]
    return bytes(head) + b"".join(records)


def test_large_records_are_read_in_bounded_chunks():
    assert chunk_records(1 << 20, 32) == 1 << 20
    assert chunk_records(1 << 20, 4096) == 8192
    assert chunk_records(1 << 20, 1 << 20) == 32
    expect = np.fromfile(KVMT, dtype=np.uint8)[64:].view(
        BinaryTrace(KVMT).chunks().__next__().dtype
    )
    for rsize in (40, 4096, 65536, 1 << 20):
        data = _kvmt_with_record_size(rsize)
        trace = BinaryTrace("-", stream=io.BytesIO(data))
        got = np.concatenate(list(trace.chunks()))
        assert got.tobytes() == expect.tobytes()


@pytest.mark.parametrize("rsize", [(1 << 20) + 1, 0xFFFFFFFF])
def test_a_record_size_beyond_the_limit_is_refused(capsys, monkeypatch, rsize):
    data = _kvmt_with_record_size(32)
    data = data[:16] + struct.pack("<I", rsize) + data[20:]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = run(capsys, "info", "-")
    assert code == 2
    assert error_line(err) == (
        f"-: invalid header (header size 64, record size {rsize}; each at most 1 MiB)"
    )


# --------------------------------------------------------------------------- item 11

EXTREMES = [0, 1, 2**31, 2**32 + 1, 2**41, 2**54, 2**62, 2**63 - 1]


@pytest.mark.parametrize("name", [p.name for p in PARAMS if not p.is_bool])
def test_extreme_parameter_values_never_crash_the_kernel(capsys, name):
    for value in EXTREMES:
        code, out, err = run(capsys, "replay", KVMT, "--set", f"{name}={value}", "--format", "json")
        assert code in (0, 2), (name, value, err)
        if code == 2:
            line = error_line(err)
            assert name in line or "kernel_pages" in line or "capacity" in line, line
        else:
            assert json.loads(out)["params"][name] == value


def test_the_spread_of_the_issue_is_refused_by_name(capsys):
    for value in ("0x40000000000000", "0x4000000000000000"):
        code, _, err = run(capsys, "replay", STEADY, "--set", f"spread={value}")
        assert code == 2
        assert error_line(err).startswith(f"parameter spread: {int(value, 16)} is too large")


def test_the_largest_spread_allowed_runs_to_a_clean_error(capsys):
    # every fresh page of a spread of 2**32 lands in a new 2 MiB range: the region of 4 GiB
    # is exhausted after 2,048 pages, an ordinary kernel_pages error, not a crash
    code, _, err = run(capsys, "replay", STEADY, "--set", f"spread={2**32}")
    assert code == 2
    assert "raise kernel_pages" in error_line(err)


@pytest.mark.parametrize("spread", [1, 2, 3, 7, 512, 1000])
@pytest.mark.parametrize("pages", [1, 511, 512, 513, 5000])
def test_the_fresh_pfn_bound_holds_for_every_k(spread, pages):
    base = 1 << 20
    worst = max(
        base + 512 * (k % spread + spread * (k // (512 * spread))) + (k // spread) % 512
        for k in range(pages + 1)
    )
    assert worst < fresh_pfn_bound(base, pages, spread)


def test_the_kernel_region_must_end_below_the_largest_host(capsys):
    code, _, err = run(capsys, "replay", KVMT, "--set", f"kernel_base_pfn={2**54}")
    assert code == 2
    assert error_line(err) == (
        f"parameter kernel_base_pfn: {2**54} is too large: the kernel region would end "
        "beyond pfn 2**54 (kernel_base_pfn + kernel_pages at most 0x40000000000000)"
    )


def test_defaults_pass_the_bounds():
    from kvmcache.params import check_bounds, check_region

    check_bounds(DEFAULTS)
    check_region(1 << 24, DEFAULTS, "t")


# --------------------------------------------------------------------------- items 12, 13


def test_over_long_numbers_are_exit_2(capsys, tmp_path):
    trace = _copy(tmp_path, KVMT)
    cases = [
        (["replay", trace, "--set", f"capacity={LONG}"], "--set: parameter capacity: a number"),
        (["replay", trace, "--limit", f"faults={LONG}"], "--limit: faults: a number"),
        (["sweep", trace, "--grid", f"capacity=1:{LONG}"], "--grid 'capacity=1:999"),
    ]
    yaml_trace = tmp_path / "t.yaml"
    yaml_trace.write_text(HEAD + f"events:\n  - {{op: vm_create, ts: {LONG}}}\n")
    cases.append((["info", str(yaml_trace)], f"{yaml_trace}: line 4, column 25: invalid YAML"))
    quoted = tmp_path / "q.yaml"
    quoted.write_text(HEAD + f"events:\n  - {{op: vm_create, ts: '0x{LONG}'}}\n")
    cases.append((["info", str(quoted)], f"{quoted}: event 0 (line 4): ts: a number of 5,002"))
    sized = tmp_path / "s.yaml"
    sized.write_text(HEAD.replace("4GiB", f"'{LONG} GiB'") + "events: []\n")
    cases.append((["info", str(sized)], f"{sized}: line 2: vm.guest_memory:"))
    config = tmp_path / "c.yaml"
    config.write_text(f"limits: {{faults: {LONG}}}\n")
    cases.append((["replay", trace, "--config", str(config)], f"{config}: line 1"))
    doc = json.loads(run(capsys, "replay", trace, "--format", "json")[1])
    base = tmp_path / "base.json"
    base.write_text(json.dumps(doc).replace('"faults": 1', f'"faults": {LONG}'))
    cases.append((["replay", trace, "--baseline", str(base)], f"{base}: baseline is not valid"))
    for argv, start in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv[:3], err[:300])
        line = error_line(err)
        assert line.startswith(start) and len(line) < 300, line[:300]


def test_bad_limit_numbers_are_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "replay", KVMT, "--limit", "faults=0x_")
    assert code == 2
    assert error_line(err) == (
        "--limit: 'faults=0x_': '0x_' is neither a non-negative integer nor a growth "
        "percentage like +10%"
    )
    config = tmp_path / "c.yaml"
    config.write_text("limits: {faults: 0x_}\n")
    code, _, err = run(capsys, "replay", KVMT, "--config", str(config))
    assert code == 2
    assert error_line(err) == f"{config}: line 1, column 18: invalid YAML: '0x_' is not a number"
    code, _, _ = run(capsys, "replay", KVMT, "--limit", "faults=0x_1_0", "--format", "json")
    assert code == 0


def test_a_baseline_whose_event_count_is_text_is_exit_2(capsys, tmp_path):
    doc = json.loads(run(capsys, "replay", KVMT, "--format", "json")[1])
    doc["trace"]["events"] = "three"
    base = tmp_path / "base.json"
    base.write_text(json.dumps(doc))
    code, _, err = run(capsys, "replay", KVMT, "--baseline", str(base))
    assert code == 2
    assert error_line(err) == f"{base}: trace.events is 'three', not a count of events"


# --------------------------------------------------------------------------- item 14


def test_without_a_writable_numba_cache_a_temporary_one_is_used(tmp_path):
    env = dict(
        os.environ,
        NUMBA_CACHE_DIR="/dev/null/numba",  # under a regular file: fails even as root
        NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator",  # no in-tree cache either
        HOME="/dev/null/home",
        KVMCACHE_JIT="1",
    )
    p = subprocess.run(
        [*KVMCACHE, "replay", KVMT, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    where = os.path.join(__import__("tempfile").gettempdir(), f"kvmcache-numba-{os.getuid()}")
    assert p.returncode == 0, p.stderr
    assert p.stderr == (
        f"kvmcache: note: no writable numba cache; caching compiled kernels in {where}\n"
    )
    assert json.loads(p.stdout)["counters"]["faults"] == 1
    out = tmp_path / "s.kvmt"  # synth compiles helpers of its own (kvmcache/trace/synth.py)
    p = subprocess.run(
        [*KVMCACHE, "synth", "steady", "--events", "100", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines()[0] == (
        f"kvmcache: note: no writable numba cache; caching compiled kernels in {where}"
    )
    assert BinaryTrace(str(out)).header.count == 100


def test_without_any_writable_cache_the_kernels_compile_in_memory(monkeypatch, capsys):
    pytest.importorskip("numba")
    from numba import config

    from kvmcache import jit

    monkeypatch.setattr(config, "CACHE_DIR", "/dev/null/numba")
    monkeypatch.setattr(config, "CACHE_LOCATOR_CLASSES", "UserProvidedCacheLocator")
    monkeypatch.setattr(jit, "_private_dir", lambda path: False)
    monkeypatch.setattr(jit, "_python", False)
    monkeypatch.setattr(jit, "_noted", set())

    @jit.njit(cache=True, nogil=True)
    def twice(x):
        return 2 * x

    assert twice(21) == 42
    assert capsys.readouterr().err == (
        "kvmcache: note: no writable numba cache; compiling the kernels in memory (slower start)\n"
    )


# --------------------------------------------------------------------------- item 15


def test_a_bad_sidecar_parameter_names_the_sidecar(capsys, tmp_path):
    trace = _copy(tmp_path, KVMT)
    with open(trace + ".params.yaml", "w") as f:
        f.write("capacity: lots\n")
    code, _, err = run(capsys, "replay", trace)
    assert code == 2
    assert error_line(err) == f"{trace}.params.yaml: parameter capacity: 'lots' is not an integer"


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["replay", "--config", "/", KVMT],
            "Invalid value for '--config': File '/' is a directory.",
        ),
        (["replay", KVMT, "--format", "xx"], "Invalid value for '--format': 'xx' is not one of"),
        (["replay", KVMT, "--every", "0"], "Invalid value for '--every'"),
        (["replay"], "Missing argument 'TRACE'."),
        (["nonsense"], "No such command 'nonsense'."),
    ],
)
def test_click_usage_errors_are_one_line(capsys, argv, line):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    msg = error_line(err)
    assert msg.startswith(line)
    assert msg.endswith("--help`)")
