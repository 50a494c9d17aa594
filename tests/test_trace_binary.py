"""Binary traces (INTERFACES.md section 3) and the shared event validator."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from kvmcache.errors import KvmcacheError
from kvmcache.trace import open_trace
from kvmcache.trace.binary import (
    HEADER_SIZE,
    MAGIC,
    BinaryTrace,
    BinaryWriter,
    pack_header,
    write_binary,
)
from kvmcache.trace.events import EVENT_DTYPE, TraceHeader, empty
from kvmcache.trace.validate import Validator, validate_all

GFN_LIMIT = 0x100000
PFN_LIMIT = 0x1000000


def tdx(path: str = "t.kvmt", vm_type: str = "tdx") -> TraceHeader:
    return TraceHeader(
        vm_type=vm_type, root_level=4, gfn_limit=GFN_LIMIT, host_pfn_limit=PFN_LIMIT, path=path
    )


def random_events(n: int, seed: int = 1) -> np.ndarray:
    """Valid events of every op except vm_destroy (so any order is valid)."""
    rng = np.random.default_rng(seed)
    ev = empty(n)
    ev["ts"] = rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    ev["op"] = rng.choice([1, 3, 4, 5, 6, 7], n)
    ev["vcpu"] = rng.integers(0, 65536, n)
    ev["gfn"] = rng.integers(0, GFN_LIMIT, n)
    ev["pfn"] = rng.integers(0, PFN_LIMIT, n)
    ev["level"] = rng.integers(1, 4, n)
    ev["flags"] = rng.integers(0, 2, n)
    return ev


def read_all(path: str, **kw) -> tuple[TraceHeader, np.ndarray]:
    t = BinaryTrace(path, **kw)
    parts = [np.array(c) for c in t.chunks()]
    return t.header, (np.concatenate(parts) if parts else empty(0))


def test_random_events_round_trip_exactly(tmp_path):
    ev = random_events(5000)
    ev["ts"][0] = (1 << 64) - 1  # u64 extremes survive
    ev["gfn"][1] = GFN_LIMIT - 1
    p = str(tmp_path / "r.kvmt")
    write_binary(p, tdx(p), ev)
    assert os.path.getsize(p) == 64 + 32 * 5000
    h, back = read_all(p, chunk_events=777)
    assert h.count == 5000 and h.complete and h.vm_type == "tdx" and h.root_level == 4
    assert (h.gfn_limit, h.host_pfn_limit) == (GFN_LIMIT, PFN_LIMIT)
    assert back.dtype == EVENT_DTYPE
    assert back.tobytes() == ev.tobytes()
    validate_all(BinaryTrace(p, chunk_events=777))


def test_chunks_are_bounded(tmp_path):
    p = str(tmp_path / "c.kvmt")
    write_binary(p, tdx(p), random_events(1000))
    sizes = [len(c) for c in BinaryTrace(p, chunk_events=300).chunks()]
    assert sizes == [300, 300, 300, 100]


def test_count_zero_crashed_writer_reads_all_records(tmp_path):
    ev = random_events(10)
    p = str(tmp_path / "crash.kvmt")
    with open(p, "wb") as f:
        f.write(pack_header(tdx(p), count=0, complete=False))
        f.write(ev.tobytes())
    h, back = read_all(p)
    assert h.count is None and h.complete is False
    assert back.tobytes() == ev.tobytes()


def test_writer_temp_file_is_a_readable_trace_before_close(tmp_path):
    p = str(tmp_path / "w.kvmt")
    w = BinaryWriter(p, tdx(p))
    w.write(random_events(3))
    w._f.flush()
    h, back = read_all(w._tmp)
    assert len(back) == 3 and h.complete is False
    w.abort()
    assert not os.path.exists(p) and os.listdir(tmp_path) == []


def test_truncated_tail_warns_and_strict_errors(tmp_path):
    ev = random_events(4)
    p = str(tmp_path / "tail.kvmt")
    with open(p, "wb") as f:
        f.write(pack_header(tdx(p), count=0, complete=False))
        f.write(ev.tobytes() + b"\x01" * 10)
    warnings: list[str] = []
    _, back = read_all(p, warn=warnings.append)
    assert back.tobytes() == ev.tobytes()
    assert warnings == [f"{p}: trailing partial record (10 bytes) ignored"]
    with pytest.raises(KvmcacheError, match=r"trailing partial record \(10 bytes\)"):
        BinaryTrace(p, strict=True)
    # the same through a pipe
    warnings.clear()
    raw = open(p, "rb").read()
    t = BinaryTrace("-", stream=io.BytesIO(raw), warn=warnings.append)
    assert np.concatenate(list(t.chunks())).tobytes() == ev.tobytes()
    assert warnings == ["-: trailing partial record (10 bytes) ignored"]


def _grown_file(path: str, ev: np.ndarray, hsize: int, rsize: int) -> None:
    """A minor-version 1.1 file whose header and records carry unknown trailing bytes."""
    head = bytearray(pack_header(tdx(path), count=len(ev), complete=True))
    struct.pack_into("<HHII", head, 8, 1, 1, hsize, rsize)
    head += b"\xee" * (hsize - HEADER_SIZE)
    body = bytearray()
    raw = ev.tobytes()
    for i in range(len(ev)):
        body += raw[i * 32 : (i + 1) * 32] + b"\xab" * (rsize - 32)
    with open(path, "wb") as f:
        f.write(bytes(head) + bytes(body))


@pytest.mark.parametrize("hsize,rsize", [(64, 40), (96, 32), (128, 48)])
def test_minor_version_larger_header_and_records(tmp_path, hsize, rsize):
    ev = random_events(50)
    p = str(tmp_path / "grown.kvmt")
    _grown_file(p, ev, hsize, rsize)
    h, back = read_all(p, chunk_events=7)
    assert h.version == (1, 1) and h.count == 50
    assert back.tobytes() == ev.tobytes()
    t = BinaryTrace("-", stream=io.BytesIO(open(p, "rb").read()), chunk_events=7)
    assert np.concatenate(list(t.chunks())).tobytes() == ev.tobytes()


def test_newer_major_version_refused_with_upgrade(tmp_path):
    p = str(tmp_path / "v2.kvmt")
    head = bytearray(pack_header(tdx(p)))
    struct.pack_into("<H", head, 8, 2)
    open(p, "wb").write(bytes(head))
    with pytest.raises(KvmcacheError) as e:
        BinaryTrace(p)
    assert str(e.value) == (
        f"{p}: trace format version 2.0 is newer than this kvmcache reads (1.x); upgrade kvmcache"
    )


def test_bad_magic_and_truncated_header(tmp_path):
    bad = tmp_path / "bad.kvmt"
    bad.write_bytes(b"NOTATRACE" + b"\0" * 100)
    with pytest.raises(KvmcacheError, match="bad magic"):
        open_trace(str(bad))
    short = tmp_path / "short.kvmt"
    short.write_bytes(MAGIC + b"\1\0")
    with pytest.raises(KvmcacheError, match=r"truncated header \(10 of 64 bytes\)"):
        open_trace(str(short))


def test_pipe_reading_equals_file_reading(tmp_path):
    """`kvmcache convert - OUT` fed through a real pipe writes the same bytes as from the file."""
    ev = random_events(3000, seed=7)
    src = str(tmp_path / "src.kvmt")
    write_binary(src, tdx(src), ev)
    from_file = str(tmp_path / "from_file.kvmt")
    from_pipe = str(tmp_path / "from_pipe.kvmt")
    run = [sys.executable, "-m", "kvmcache", "convert"]
    subprocess.run(run + [src, from_file], check=True, capture_output=True)
    with open(src, "rb") as f:
        r = subprocess.run(run + ["-", from_pipe], stdin=f, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"kvmcache: converted 3000 events: - (binary) -> {from_pipe} (binary)\n"
    assert open(from_pipe, "rb").read() == open(from_file, "rb").read() == open(src, "rb").read()


# --- the validator ---------------------------------------------------------------------------


def good_trace() -> np.ndarray:
    ev = empty(6)
    ev["ts"] = [0, 10, 20, 15, 30, 40]  # ts going backwards is not an error
    ev["op"] = [1, 3, 5, 6, 7, 2]
    ev["vcpu"][1:3] = 65535
    ev["gfn"][2:5] = GFN_LIMIT - 1
    ev["pfn"][2] = PFN_LIMIT - 1
    ev["level"][2:4] = [3, 1]
    ev["flags"][2:5] = 1
    return ev


def test_validator_accepts_a_good_trace():
    Validator(tdx()).check(good_trace(), 0)
    # ignored fields may hold anything on ops that ignore them
    ev = empty(2)
    ev["op"] = [1, 7]
    ev["vcpu"] = 1 << 31
    ev["pfn"][1] = 1 << 63
    ev["level"] = 9
    Validator(tdx()).check(ev, 0)


@pytest.mark.parametrize(
    "index,field,value,problem",
    [
        (0, "op", 0, "op 0 is not a known event op (1..7)"),
        (3, "op", 8, "op 8 is not a known event op (1..7)"),
        (4, "flags", 2, "reserved flag bits set (flags 0x2; only bit 0, private, is defined)"),
        (2, "level", 0, "level 0 is invalid (4k, 2m, 1g or 1..3)"),
        (3, "level", 4, "level 4 is invalid (4k, 2m, 1g or 1..3)"),
        (1, "vcpu", 65536, "vcpu 65536 is out of range (must be < 65536)"),
        (2, "vcpu", 70000, "vcpu 70000 is out of range (must be < 65536)"),
        (4, "gfn", GFN_LIMIT, "gfn 0x100000 is out of range (gfn_limit is 0x100000)"),
        (2, "pfn", PFN_LIMIT, "pfn 0x1000000 is out of range (host_pfn_limit is 0x1000000)"),
    ],
)
def test_validator_problems(index, field, value, problem):
    ev = good_trace()
    ev[field][index] = value
    with pytest.raises(KvmcacheError) as e:
        Validator(tdx()).check(ev, 100)
    assert str(e.value) == f"t.kvmt: event {100 + index}: {problem}"


def test_validator_reports_the_lowest_index():
    ev = good_trace()
    ev["pfn"][2] = PFN_LIMIT  # event 2
    ev["op"][4] = 99  # event 4
    ev["vcpu"][1] = 1 << 20  # event 1: reported
    with pytest.raises(KvmcacheError, match=r"^t.kvmt: event 1: vcpu 1048576 "):
        Validator(tdx()).check(ev, 0)


def test_private_fault_on_vmx_is_an_error_but_private_unmap_split_are_not():
    ev = good_trace()
    ev["flags"][2] = 0
    Validator(tdx(vm_type="vmx")).check(ev, 0)  # events 3, 4 are a private unmap and split
    ev["flags"][2] = 1
    with pytest.raises(KvmcacheError) as e:
        Validator(tdx(vm_type="vmx")).check(ev, 0)
    assert str(e.value) == (
        "t.kvmt: event 2: private fault on a vmx trace (only a tdx VM has private memory)"
    )


def test_event_after_vm_destroy_within_and_across_chunks(tmp_path):
    ev = good_trace()
    ev["op"][3] = 2
    with pytest.raises(KvmcacheError) as e:
        Validator(tdx()).check(ev, 0)
    assert str(e.value) == (
        "t.kvmt: event 4: event after vm_destroy (event 3); a trace describes one VM"
    )
    v = Validator(tdx())
    v.check(ev[:4], 0)  # ends with the vm_destroy: fine so far
    with pytest.raises(KvmcacheError, match=r"event 4: event after vm_destroy \(event 3\)"):
        v.check(ev[4:], 4)
    # streamed from a file in chunks of 2: the same error
    p = str(tmp_path / "d.kvmt")
    write_binary(p, tdx(p), ev)
    with pytest.raises(KvmcacheError, match=r"d.kvmt: event 4: event after vm_destroy"):
        validate_all(BinaryTrace(p, chunk_events=2))


def test_first_error_across_chunks_is_first_in_file(tmp_path):
    ev = random_events(100)
    ev["level"][ev["op"] == 5] = 1
    ev["op"][37] = 5
    ev["level"][37] = 0
    ev["op"][80] = 0
    p = str(tmp_path / "e.kvmt")
    write_binary(p, tdx(p), ev)
    with pytest.raises(KvmcacheError, match=r"e.kvmt: event 37: level 0 is invalid"):
        validate_all(BinaryTrace(p, chunk_events=10))
