"""The importer in bounded memory: events beyond SPILL_EVENTS go to sorted temporary runs that
are merged by time; the result is the same as with everything in memory, and the memory an
import takes does not grow with the recording."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from test_importers_scan import soup

from kvmcache.importers import mapping
from kvmcache.importers.mapping import Importer, ImportOptions


def _import(inputs: list[bytes], opts: ImportOptions, fast: bool = False):
    imp = Importer(ImportOptions(**opts.__dict__))
    for n, data in enumerate(inputs):
        imp.feed_stream(io.BytesIO(data), f"in{n}", fast=fast)
    spilled = imp._runs.spilled
    header, events, st = imp.finish()
    stats = dict(st.__dict__)
    stats.pop("seconds")
    return (header, events.tobytes(), stats), spilled


# Records that share timestamps across what become different runs: the merge must keep input
# order for equal timestamps.
SAME_TS = "".join(
    f" CPU {i % 3}/KVM-{900 + i % 3} [00{i % 3}] ..... {50 + (i % 4) // 2}.000001: "
    f"kvm_page_fault: vcpu {i % 3} rip 0x1 address 0x{(i * 7919 % 4096) << 12:016x} "
    "error_code 0x184\n"
    for i in range(300)
)


@pytest.mark.parametrize(
    "opts",
    [
        ImportOptions(),
        ImportOptions(as_tdx=True),
        ImportOptions(pfn_map="hugepage"),
        ImportOptions(pfn_map="random", shared_bit=47),
        ImportOptions(max_gap=10**6),
    ],
)
def test_spilled_runs_give_the_same_trace(opts, monkeypatch):
    inputs = [soup(3, 600), soup(4, 600), SAME_TS.encode(), soup(5, 300)]
    expected, spilled = _import(inputs, opts)
    assert not spilled
    monkeypatch.setattr(mapping, "BLOCK", 4)
    monkeypatch.setattr(mapping, "SPILL_EVENTS", 7)
    monkeypatch.setattr(mapping, "SCAN_ROWS", 5)
    got, spilled = _import(inputs, opts)
    assert spilled
    assert got == expected


def test_spilled_fast_lane_and_hugepage_limit(monkeypatch):
    opts = ImportOptions(pfn_map="hugepage", host_pfn_limit=2 * 512)
    text = SAME_TS.encode()
    with pytest.raises(Exception) as plain:
        _import([text], opts)
    monkeypatch.setattr(mapping, "BLOCK", 4)
    monkeypatch.setattr(mapping, "SPILL_EVENTS", 11)
    monkeypatch.setattr(mapping, "SCAN_ROWS", 3)
    with pytest.raises(Exception) as spilled:
        _import([text], opts, fast=True)
    assert str(plain.value) == str(spilled.value)
    assert "--pfn-map hugepage needs more than the 2 host 2 MiB regions" in str(plain.value)


def _recording(lines: int) -> bytes:
    out = []
    for i in range(lines):
        t = i % 4
        out.append(
            f" CPU {t}/KVM-{4000 + t} [00{t}] d.... {100 + i // 100000}.{i % 100000:06d}: "
            f"kvm_mmu_spte_requested: gfn {i:x} pfn {i + 0x100000:x} level 1\n"
        )
    head = "".join(
        f" CPU {t}/KVM-{4000 + t} [00{t}] d.... 99.000000: kvm_entry: vcpu {t}, rip 0x1\n"
        for t in range(4)
    )
    return (head + "".join(out)).encode()


def _peak(data: bytes) -> int:
    imp = Importer()
    tracemalloc.start()
    try:
        imp.feed_stream(io.BytesIO(data), "t", fast=True)
        header, chunks, st = imp.finish_stream()
        n = sum(len(c) for c in chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == header.count == st.events["fault"]
    return peak


def test_memory_does_not_grow_with_the_recording(monkeypatch):
    monkeypatch.setattr(mapping, "SPILL_EVENTS", 1 << 15)
    monkeypatch.setattr(mapping, "SCAN_ROWS", 1 << 14)
    monkeypatch.setattr(mapping, "READ_BYTES", 1 << 20)
    small = _recording(60_000)
    large = _recording(240_000)
    _peak(small[:100_000])  # numba compiled and loaded before measuring
    p_small = _peak(small)
    p_large = _peak(large)
    # Four times the events (11 MiB of events in memory at 48 bytes each, before): the peak
    # stays that of the fixed-size buffers.
    assert p_large < 1.25 * p_small, (p_small, p_large)


def test_import_command_writes_chunk_by_chunk_through_trace_output(tmp_path, capsys, monkeypatch):
    """`kvmcache import` hands the merged chunks to TraceOutput one at a time (the binary
    writer gets several writes, none holding the whole trace); the trace is the one the
    library builds in memory, and a YAML OUT holds the same events."""
    from clirun import run

    from kvmcache.importers.sources import import_paths
    from kvmcache.trace import open_trace, output

    monkeypatch.setattr(mapping, "BLOCK", 1000)
    monkeypatch.setattr(mapping, "SPILL_EVENTS", 10_000)  # four runs
    monkeypatch.setattr(mapping, "SCAN_ROWS", 8192)  # merged 4096 rows a read
    src = tmp_path / "r.txt"
    src.write_bytes(_recording(40_000))
    header, events, _ = import_paths([str(src)])
    assert len(events) == header.count == 40_000

    writes: list[int] = []

    class Counting(output.BinaryWriter):
        def write(self, chunk):
            writes.append(len(chunk))
            super().write(chunk)

    monkeypatch.setattr(output, "BinaryWriter", Counting)
    code, _, err = run(capsys, "import", str(src), "-o", str(tmp_path / "r.kvmt"))
    assert code == 0 and "wrote " + str(tmp_path / "r.kvmt") + ": 40000 events" in err
    assert len(writes) > 1 and sum(writes) == 40_000 and max(writes) < 40_000
    got = np.concatenate(list(open_trace(str(tmp_path / "r.kvmt")).chunks()))
    assert got.tobytes() == events.tobytes()

    code, _, err = run(capsys, "import", str(src), "-o", str(tmp_path / "r.yaml"))
    assert code == 0
    assert (
        np.concatenate(list(open_trace(str(tmp_path / "r.yaml")).chunks())).tobytes()
        == events.tobytes()
    )


def test_import_command_refuses_a_yaml_out_over_the_limit_before_writing(
    tmp_path, capsys, monkeypatch
):
    from clirun import error_line, run

    from kvmcache.trace import output

    monkeypatch.setattr(output, "YAML_EVENT_LIMIT", 100)
    src = tmp_path / "r.txt"
    src.write_bytes(_recording(101))
    code, _, err = run(capsys, "import", str(src), "-o", str(tmp_path / "r.yaml"))
    assert code == 2
    assert error_line(err) == (
        f"{tmp_path / 'r.yaml'}: more than 100 events is too many for a YAML trace; write a "
        "binary .kvmt trace instead"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]
