"""The importer's compiled fast lane (kvmcache/importers/scan.py) against its Python path.

The Python path is the definition of the import rules (tests/test_importers.py checks it against
hand-worked expectations); the fast lane must give exactly the same trace and summary on any
input. Random "line soups" mix plain records with every kind of line the fast lane hands back
(new threads, vCPU changes, wrapped, stack, header, perf, CRLF, non-ASCII, malformed and
boundary values), read in blocks of random small sizes so that every block-boundary path runs.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from conftest import IMPORT_DATA

from kvmcache.errors import KvmcacheError
from kvmcache.importers import mapping
from kvmcache.importers.mapping import Importer, ImportOptions

DATA = IMPORT_DATA

THREADS = [
    ("CPU 0/KVM", "4242"),
    ("CPU 1/KVM", "4243"),
    ("qemu-system-x86", "4100"),
    ("<...>", "4244"),
    ("kvm-nx-lpage-re", "77"),
    ("a-b c-d", "5"),
    ("", "9"),
    ("CPU 2/KVM", "04245"),  # a TID with a leading zero: another thread key
    ("big", "12345678901"),
    ("<idle>", "0"),
]


def _head(rng: random.Random, comm: str, tid: str, ts: str) -> str:
    tgid = rng.choice(["", "", "(  4100) ", "(-------) "])
    flags = rng.choice(["d.... ", "d..1. ", "...1 ", "", "", "1.2: "])
    pad = " " * rng.randint(0, 6)
    sep = rng.choice(["  ", " ", "\t"])
    cpu = rng.choice(["001", "0", "12"])
    return f"{pad}{comm}-{tid}{sep}{tgid}[{cpu}] {flags}{ts}:"


def _stamp(rng: random.Random, i: int) -> str:
    r = rng.random()
    if r < 0.02:
        return f"{rng.randint(0, 99)}.{'1' * rng.choice([1, 5, 9, 10])}"
    if r < 0.03:
        return f"{rng.choice([9_000_000_000, 18_446_744_073, 99_999_999_999])}.000001"
    return f"{1000 + i // 7}.{(i * 37) % 1_000_000:06d}"


def _text(rng: random.Random, vcpus: dict[str, int], tid: str) -> tuple[str, str]:
    """(event, text) of one record."""
    v = vcpus.setdefault(tid, rng.randint(0, 3))
    if rng.random() < 0.05:
        v = vcpus[tid] = rng.choice([0, 1, 2, 3, 65535, 65536, 1234567890])
    g = rng.randint(0, 1 << 20)
    lvl = rng.choice([1, 1, 1, 2, 3, 4])
    kind = rng.randrange(16)
    if kind < 4:
        return rng.choice(["kvm_entry", "kvm_exit"]), f"vcpu {v}, rip 0xffffffff81000000"
    if kind < 7:
        pfn = rng.choice([f"{rng.randint(0, 1 << 30):x}", "0x1234", "zz", "1" * 17, "0" * 18 + "5"])
        level = rng.choice([str(lvl), "01", "x"])
        extra = rng.choice(["", " as_id 0", ""])
        gfn = rng.choice([f"{g:x}", f"0x{g:x}", f"{g:X}", "0x", "-1"])
        if rng.random() < 0.05:
            return "kvm_mmu_spte_requested", f"gfn {gfn} pfn {pfn}"
        return "kvm_mmu_spte_requested", f"gfn {gfn} pfn {pfn} level {level}{extra}"
    if kind < 9:
        old = rng.choice(["600000012345f77", "0", "80000000000000f7", "12345f07", "5a0"])
        new = rng.choice(["0", "8000000000000000", "5a0", "80000000000005a0", "600000012345f77"])
        asid = rng.choice(["0", "0", "1", "-1"])
        return (
            "kvm_tdp_mmu_spte_changed",
            f"as id {asid} gfn {g:x} level {rng.choice([1, 2, 3, 4])} old_spte {old} new_spte {new}",
        )
    if kind < 10:
        errno = rng.choice(["0", "0", "-12", "12"])
        return (
            "kvm_mmu_split_huge_page",
            f"gfn {g:x} spte 600000012345ff7 level {rng.choice([2, 2, 3])} errno {errno}",
        )
    if kind < 11:
        err = rng.choice(["181", "181", "18e", "8", "zz", "1" * 17])
        if rng.random() < 0.5:
            return "kvm_page_fault", (
                f"vcpu {v} rip 0xffffffff81000000 address 0x{g << 12:016x} error_code 0x{err}"
            )
        return "kvm_page_fault", f"address {g << 12:x} error_code {err}"
    if kind < 12:
        if rng.random() < 0.3:
            return rng.choice(["kvm_mmio", "handle_mmio_page_fault"]), rng.choice(
                [
                    f"mmio write len 4 gpa 0x{g << 12:x} val 0x0",
                    f"addr:{g << 12:x} gfn {g:x} access 6",
                    "mmio read len 4 gpa zz",
                ]
            )
        return rng.choice(["fast_page_fault", "kvm_mmu_get_page", "mark_mmio_spte"]), (
            rng.choice([f"vcpu {v} gva 1000 error_code 6", "sp gfn 0 level 4"])
        )
    if kind < 13:
        return rng.choice(["kvm_cr", "kvm_msr", "kvm_userspace_exit"]), "cr_write 4 = 0x1"
    if kind < 14:
        return rng.choice(["sched_switch", "irq_handler_entry"]), rng.choice(
            ["prev_comm=foo prev_pid=1", "irq=5 name=eth0 <stack trace> x"]
        )
    if kind < 15:
        return rng.choice(["kernel_stack", "user_stack"]), "<stack trace >"
    return "kvm_exit", f"vcpu {v} reason EPT_VIOLATION"


def soup(seed: int, n: int = 400) -> bytes:
    """Random recorded-trace text, mostly plain records, with every irregular kind of line."""
    rng = random.Random(seed)
    vcpus: dict[str, int] = {}
    out: list[str] = []
    nl = rng.choice(["\n", "\n", "\r\n"])
    for i in range(n):
        r = rng.random()
        comm, tid = THREADS[min(int(rng.expovariate(0.9)), len(THREADS) - 1)]
        if r < 0.80:
            event, text = _text(rng, vcpus, tid)
            line = f"{_head(rng, comm, tid, _stamp(rng, i))} {event}: {text}"
            if rng.random() < 0.02:  # wrapped after the event name, or after the timestamp
                cut = line.index(": ", line.index(event)) + 1 if rng.random() < 0.5 else None
                if cut is None:
                    line = line.replace(f" {event}: ", f"\n    {event}: ", 1)
                else:
                    line = line[:cut] + "\n  " + line[cut:]
            out.append(line)
            continue
        out.append(
            rng.choice(
                [
                    "# tracer: nop",
                    "#",
                    "",
                    "cpus=2",
                    "CPU 1 is empty",
                    "CPU:1 [LOST 12 EVENTS]",
                    " => kvm_mmu_page_fault+0x1c/0x30",
                    "  continued words of a wrapped line",
                    "...",
                    "--",
                    "version = 6",
                    f"  CPU 0/KVM  4242 [001]  {1000 + i}.000001:  kvmmmu:kvm_mmu_spte_requested: "
                    f"gfn {i:x} pfn {i:x} level 1",
                    "\tffffffff810551b8 func+0x18 ([kernel.kallsyms])",
                    f" CPU 0/KVM-4242 [001] {1000 + i}.5: kvm_entry: vcpu 0\u00e9",
                    f" CPU \u00e9/KVM-4246 [001] {1000 + i}.5: kvm_exit: vcpu 1 reason X",
                    f" x-1 [0] {i}.1: kvm_exit: vcpu 0\rstray",
                    f" x-1 [0] {i}.1:",
                    f" CPU 0/KVM-4242 [001] d.... {i}.2: kvm_entry: vcpu 0, rip 0\x0b",
                ]
            )
        )
    text = nl.join(out) + rng.choice(["", nl])
    data = text.encode("utf-8")
    if rng.random() < 0.1:
        data += b"\xff\xfe broken utf-8\n"
    return data


PERF_THREADS = [
    ("CPU 0/KVM", "4242"),
    ("CPU 1/KVM", "9001/4243"),
    ("qemu-system-x86", "4100"),
    ("12", "4244"),  # a COMM of digits
    ("a b", "5"),
    ("", "9"),  # perf -F without COMM
    ("CPU 2/KVM", ""),  # ... or without TID (the thread is the CPU)
    ("CPU 3/KVM", "04245"),
    ("swapper", "0"),
]


def perf_soup(seed: int, n: int = 400) -> bytes:
    """Random `perf script` text (with a few ftrace-layout and irregular lines mixed in, which
    make the Python lane switch the layout it tries first)."""
    rng = random.Random(seed)
    vcpus: dict[str, int] = {}
    out: list[str] = []
    systems = {"kvm_mmu_spte_requested": "kvmmmu", "kvm_tdp_mmu_spte_changed": "kvmmmu"}
    systems |= {"kvm_mmu_split_huge_page": "kvmmmu", "fast_page_fault": "kvmmmu"}
    systems |= {"kvm_mmu_get_page": "kvmmmu", "mark_mmio_spte": "kvmmmu"}
    systems |= {"sched_switch": "sched", "irq_handler_entry": "irq"}
    for i in range(n):
        r = rng.random()
        comm, tid = PERF_THREADS[min(int(rng.expovariate(0.8)), len(PERF_THREADS) - 1)]
        if r < 0.85:
            event, text = _text(rng, vcpus, tid or "cpu")
            system = systems.get(event, "kvm")
            name = rng.choice([f"{system}:{event}:", f"{system}:{event}:", f"{event}:"])
            period = rng.choice(["", "", "1 ", "250000 "])
            stamp = rng.choice([_stamp(rng, i), f"{1000 + i}.{i:09d}"])
            cpu = rng.choice(["000", "1", "012"])
            head = f"{comm:>16} {tid:>6}".rstrip() if comm or tid else ""
            line = f"{head} [{cpu}] {stamp}: {period}{name:>34} {text}"
            if rng.random() < 0.02:
                line = line.replace(": ", ":", 1)  # no blank after the time: not perf
            out.append(line)
        elif r < 0.9:
            out.append(soup(seed * 1000 + i, 1).decode("utf-8", "replace").rstrip("\r\n"))
        else:
            out.append(
                rng.choice(
                    ["# perf script", "", "\tffffffff810551b8 func+0x18 ([kernel.kallsyms])"]
                )
            )
    return ("\n".join(out) + "\n").encode()


def _run(data: bytes, how: str, opts: ImportOptions):
    imp = Importer(ImportOptions(**opts.__dict__))
    try:
        if how == "lines":  # the text-mode file path
            imp.feed(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace"), "t")
        else:
            imp.feed_stream(io.BytesIO(data), "t", fast=how == "fast")
        header, events, st = imp.finish()
    except KvmcacheError as e:
        return ("error", str(e))
    stats = dict(st.__dict__)
    stats.pop("seconds")
    return header, events.tobytes(), stats


OPTIONS = [
    ImportOptions(),
    ImportOptions(as_tdx=True),
    ImportOptions(shared_bit=47),
    ImportOptions(format="trace-cmd"),
    ImportOptions(strict=True),
]


@pytest.mark.parametrize("seed", range(150))
def test_fast_lane_equals_python_path(seed, monkeypatch):
    rng = random.Random(seed)
    sizes = (rng.randint(40, 400), rng.randint(400, 4000), 1 << 20)
    _lanes_agree(soup(seed), OPTIONS[seed % len(OPTIONS)], sizes, monkeypatch)


def _lanes_agree(data: bytes, opts: ImportOptions, sizes, monkeypatch) -> None:
    """Line by line, the Python path on a stream, and the fast lane read in blocks of each
    of ``sizes`` bytes, make the same trace and summary."""
    expected = _run(data, "lines", opts)
    assert _run(data, "python", opts) == expected
    for size in sizes:
        monkeypatch.setattr(mapping, "READ_BYTES", size)
        assert _run(data, "fast", opts) == expected, size


PERF_OPTIONS = [ImportOptions(), ImportOptions(format="perf-script"), ImportOptions(strict=True)]


@pytest.mark.parametrize("seed", range(90))
def test_fast_lane_equals_python_path_perf(seed, monkeypatch):
    rng = random.Random(seed)
    sizes = (rng.randint(40, 400), 1 << 20)
    _lanes_agree(perf_soup(seed), PERF_OPTIONS[seed % len(PERF_OPTIONS)], sizes, monkeypatch)


def test_fast_lane_takes_plain_lines():
    """The fast lane really runs: on plain records, events come out of it, not Python."""
    lines = [
        f" CPU 0/KVM-4242 [001] d.... {1000 + i}.000001: kvm_mmu_spte_requested: "
        f"gfn {i:x} pfn {0x8000 + i:x} level 1"
        for i in range(5000)
    ]
    data = ("\n".join(lines) + "\n").encode()
    imp = Importer()
    consumed: list[int] = []
    real = imp._consume

    def counting(reader, batches, src):
        batches = list(batches)
        consumed.append(sum(len(b) for b in batches))
        real(reader, batches, src)

    imp._consume = counting  # type: ignore[method-assign]
    imp.feed_stream(io.BytesIO(data), "t", fast=True)
    header, events, st = imp.finish()
    assert len(events) == 5000 and st.event_lines == 5000
    # Python reads only the first AHEAD bytes (until the producer is known), then one line.
    assert sum(consumed) <= mapping._FastLane.AHEAD // 80 + 2
    assert events["gfn"].tolist() == list(range(5000))
    assert (events["pfn"] - events["gfn"] == 0x8000).all()


def test_fast_lane_arms_after_threshold(monkeypatch):
    """With fast=None, the first FAST_MIN_BYTES are read in Python, the rest in the fast lane;
    the result is the same as all in Python."""
    data = b"".join(soup(s, 300) for s in range(8))
    expected = _run(data, "python", ImportOptions())
    monkeypatch.setattr(mapping, "READ_BYTES", 3000)
    monkeypatch.setattr(mapping, "FAST_MIN_BYTES", 20000)
    imp = Importer()
    imp.feed_stream(io.BytesIO(data), "t")
    header, events, st = imp.finish()
    stats = dict(st.__dict__)
    stats.pop("seconds")
    assert (header, events.tobytes(), stats) == expected


@pytest.mark.parametrize("name", sorted(os.listdir(DATA)))
def test_fixtures_fast_equals_python(name):
    with open(os.path.join(DATA, name), "rb") as f:
        data = f.read()
    for opts in (ImportOptions(), ImportOptions(as_tdx=True)):
        expected = _run(data, "lines", opts)
        assert _run(data, "fast", opts) == expected


def test_several_inputs_share_the_name_table():
    a = soup(1)
    b = soup(2)
    slow = Importer()
    slow.feed_stream(io.BytesIO(a), "a", fast=False)
    slow.feed_stream(io.BytesIO(b), "b", fast=False)
    fast = Importer()
    fast.feed_stream(io.BytesIO(a), "a", fast=True)
    fast.feed_stream(io.BytesIO(b), "b", fast=True)
    h1, e1, s1 = slow.finish()
    h2, e2, s2 = fast.finish()
    assert h1 == h2 and np.array_equal(e1, e2)
    assert s1.skipped == s2.skipped and s1.vcpu_map == s2.vcpu_map
