"""Recorded KVM trace records -> kvmcache events: the mapping rules of docs/import.md.

:class:`Importer` consumes the records of one or more inputs (see
:mod:`kvmcache.importers.text`), keeps per-thread vCPU attribution, accumulates
candidate events into numpy blocks (spilled to sorted temporary runs beyond SPILL_EVENTS)
and, in :meth:`Importer.finish_stream`, decides the fault source and the VM, resolves
vCPUs, applies the private/shared rules, sizes the VM and merges the runs by time into
chunks (:meth:`Importer.finish` gives them as one array).
"""

from __future__ import annotations

import binascii
import itertools
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from kvmcache.errors import KvmcacheError
from kvmcache.importers.rules import (
    C_ASK,
    C_KVM,
    C_MMIO,
    C_MMU,
    C_PF,
    C_SPLIT,
    C_SPTE_CHG,
    C_SPTE_REQ,
    C_UNKNOWN,
    FRACTION_SCALE,
    K_FAULT,
    K_PF,
    K_SPLIT,
    K_UNMAP,
    NONPRESENT_SPTES,
    PFERR_RSVD,
    REMOVED_SPTES,
    SPTE_PAGE_SIZE,
    SPTE_PERM_MASK,
)
from kvmcache.importers.text import (
    FORMATS,
    KVM_KEYWORDS,
    SKIP_OTHER_VM,
    SKIP_STACK,
    SKIP_UNKNOWN,
    LineReader,
)
from kvmcache.limits import MAX_IMPORT_LINE as MAX_LINE
from kvmcache.limits import excerpt
from kvmcache.trace.events import (
    EVENT_DTYPE,
    FLAG_PRIVATE,
    LEVEL_1G,
    LEVEL_2M,
    LEVEL_4K,
    MAX_VCPUS,
    OP_FAULT,
    OP_NAMES,
    OP_SPLIT,
    OP_UNMAP,
    TraceHeader,
)

PFN_MAPS = ("identity", "hugepage", "random")
SHARED_BITS = (47, 51)
PAGE_SHIFT = 12
#: Seed of the `--pfn-map random` hash ("kvmcache" in ASCII).
RANDOM_SEED = 0x6B766D6361636865
#: Without --host-memory, `--pfn-map random` spreads pages over this many times the guest.
RANDOM_HOST_FACTOR = 4
#: Events per numpy block while accumulating.
BLOCK = 1 << 16
#: Bytes read from a stream at a time.
READ_BYTES = 4 << 20
#: `feed_stream` reads this much in Python before it turns to the compiled fast lane: below
#: it, loading numba (about 0.6 s) costs more than the fast lane saves.
FAST_MIN_BYTES = 8 << 20

_KIND_OP = np.array([0, OP_FAULT, OP_UNMAP, OP_SPLIT, OP_FAULT], dtype=np.uint8)

# Record classes.
_MAPPED = {
    "kvm_mmu_spte_requested": C_SPTE_REQ,
    "kvm_tdp_mmu_spte_changed": C_SPTE_CHG,
    "kvm_mmu_split_huge_page": C_SPLIT,
    "kvm_page_fault": C_PF,
}
#: Events that show a gfn as MMIO (class C_MMIO; read for --as-tdx: MMIO in a TD is shared).
_MMIO_EVENTS = frozenset(("kvm_mmio", "mark_mmio_spte", "handle_mmio_page_fault"))
#: Well-known MMIO (gfn ranges, inclusive): IOAPIC, HPET, local APIC / MSI window.
MMIO_RANGES = ((0xFEC00, 0xFECFF), (0xFED00, 0xFED00), (0xFEE00, 0xFEEFF))
#: The last characters of an error_code that may have bit 3 (a quick test before parsing,
#: with a `-` anywhere: a negative number has it too).
_RSVD_HINT = frozenset("89abcdefABCDEF")
#: kvmmmu events whose names do not start with kvm_mmu_ / kvm_tdp_mmu_.
_MMU_NAMES = frozenset(
    ("fast_page_fault", "mark_mmio_spte", "handle_mmio_page_fault", "check_mmio_spte")
)


@dataclass
class ImportOptions:
    """How to turn recorded lines into events (the `kvmcache import` options)."""

    format: str = "auto"  # auto | ftrace | trace-cmd | perf-script
    as_tdx: bool = False  # every event private, VM type tdx (the what-if)
    shared_bit: int | None = None  # GPA bit 47 or 51; None: no shared-bit information
    vm: str | None = None  # override the VM type
    root_level: int = 4
    gfn_limit: int | None = None  # from --guest-memory; None: computed from the data
    host_pfn_limit: int | None = None  # from --host-memory; None: computed from the data
    pfn_map: str = "identity"  # synthetic pfns of faults taken from kvm_page_fault
    mmio: list[tuple[int, int]] = field(default_factory=list)  # --mmio gfn ranges (inclusive)
    vm_process: str | None = None  # --vm PID: the VMM process (or one of its threads) to import
    max_gap: int | None = None  # --max-gap in ns: longer gaps between events are cut to it
    strict: bool = False

    def check(self) -> None:
        """Raise KvmcacheError for an inconsistent combination."""
        if self.format not in FORMATS:
            raise KvmcacheError(f"unknown --format {self.format!r} (one of {', '.join(FORMATS)})")
        if self.shared_bit is not None and self.shared_bit not in SHARED_BITS:
            raise KvmcacheError(f"--shared-bit must be 47, 51 or none, not {self.shared_bit}")
        if self.as_tdx and self.shared_bit is not None:
            raise KvmcacheError(
                "--as-tdx and --shared-bit exclude each other: --as-tdx makes every fault "
                "private, --shared-bit takes private/shared from the GPA"
            )
        if self.vm is not None and self.vm not in ("tdx", "vmx"):
            raise KvmcacheError(f"--vm must be tdx or vmx, not {self.vm!r}")
        if self.as_tdx and self.vm == "vmx":
            raise KvmcacheError("--as-tdx makes a tdx VM; it contradicts --vm vmx")
        if self.root_level not in (4, 5):
            raise KvmcacheError(f"--root-level must be 4 or 5, not {self.root_level}")
        if self.pfn_map not in PFN_MAPS:
            raise KvmcacheError(f"--pfn-map must be one of {', '.join(PFN_MAPS)}")
        self._check_more()
        for name, value in (
            ("--guest-memory", self.gfn_limit),
            ("--host-memory", self.host_pfn_limit),
        ):
            if value is not None and value <= 0:
                raise KvmcacheError(f"{name} must be at least one 4 KiB page")
            if value is not None and value > int(MAX_FRAME):
                raise KvmcacheError(
                    f"{name} is too large: a trace holds at most 2**64 - 2**30 pages"
                )

    def _check_more(self) -> None:
        """The checks of --max-gap, --mmio and --vm PID."""
        if self.max_gap is not None and self.max_gap < 1:
            raise KvmcacheError("--max-gap must be at least 1 ns")
        if self.mmio and not self.as_tdx:
            raise KvmcacheError(
                "--mmio needs --as-tdx: without it no event is private, MMIO or not"
            )
        for lo, hi in self.mmio:
            if not 0 <= lo <= hi:
                raise KvmcacheError(f"--mmio range 0x{lo:x}-0x{hi:x} (gfns) is empty")
        if self.vm_process is not None and not self.vm_process.isdigit():
            raise KvmcacheError(f"--vm {excerpt(self.vm_process)}: a process id is a number")

    @property
    def vm_type(self) -> str:
        """The VM type the options select (section "Private vs shared" of docs/import.md)."""
        if self.vm is not None:
            return self.vm
        return "tdx" if (self.as_tdx or self.shared_bit is not None) else "vmx"


@dataclass
class ImportStats:
    """What an import read and produced; the command prints it as the summary."""

    sources: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)  # one per source
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    event_lines: int = 0  # records that became an event
    vcpu_lines: int = 0  # records used only to learn a thread's vCPU
    no_event: dict[str, int] = field(default_factory=dict)  # mapped records that map to nothing
    events: dict[str, int] = field(default_factory=dict)  # op name -> count
    vcpu_map: dict[str, int] = field(default_factory=dict)
    faults_from: str = "kvm_mmu_spte_requested"  # or "kvm_page_fault" (fallback)
    faults_why: str = ""  # why that source (a phrase for the summary)
    skipped_events: dict[str, int] = field(default_factory=dict)  # skipped KVM records by name
    mmio_shared: int = 0  # --as-tdx: faults at MMIO gfns, imported as shared
    quoted_printable: list[str] = field(default_factory=list)  # inputs decoded as QP mail
    vms: list[str] = field(default_factory=list)  # the VMM processes found (when several)
    gaps_cut: tuple[int, int] = (0, 0)  # --max-gap: gaps cut, ns removed
    lost_markers: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def producer(self) -> str:
        """The producer(s), in first-seen order, as one string."""
        seen = list(dict.fromkeys(p for p in self.producers if p))
        return ", ".join(seen) if seen else "unknown"

    @property
    def accounted(self) -> int:
        """Lines accounted for by some category (equals ``lines`` after a finished import)."""
        return (
            self.event_lines
            + self.vcpu_lines
            + sum(self.no_event.values())
            + sum(self.skipped.values())
        )


class Importer:
    """Accumulate events from the records of one or more inputs; ``finish()`` builds the trace."""

    def __init__(self, options: ImportOptions | None = None) -> None:
        self.options = options or ImportOptions()
        self.options.check()
        self.stats = ImportStats(skipped={})
        self._classes: dict[str | None, int] = {}
        self._tindex: dict[str, int] = {}
        self._t_label: list[str] = []
        self._t_cur: list[int] = []
        self._t_first: list[int] = []
        self._cur: dict[str, str] = {}
        self._learned: set[int] = set()
        self._multi: set[int] = set()  # threads seen with more than one vCPU number
        self._cols: tuple[list[int], ...] = tuple([] for _ in range(9))
        self._blocks: list[tuple[np.ndarray, ...]] = []
        self._held = 0  # events in _blocks
        self._per_kind = np.zeros((5, 0), dtype=np.int64)  # rows spilled per kind and thread
        self._spte_rows = False  # a kvm_mmu_spte_requested fault was read
        self._runs = _Runs()
        self._seen_mmu = False
        self._mmio_gfns: set[int] = set()  # gfns the recording shows as MMIO
        self._pids: dict[str, str] = {}  # thread key -> process id (TGID / PID), when shown
        self._vm_threads: set[int] | None = None  # the threads of the VM imported (several)
        self._spte_req = 0
        self._pf_with_vcpu = 0
        self._pf_without_vcpu = 0
        # The fast lane's event-name table (kept across inputs): slots, name bytes, use.
        self._fast_tables: tuple[np.ndarray, np.ndarray, list[int]] | None = None
        self._t0 = time.perf_counter()

    # --- threads ------------------------------------------------------------------------

    def _thread(self, key: str, comm: str | None, tid: str | None, cpu: str) -> int:
        """The index of the thread ``key`` (a TID, or ``cpu<N>`` without one), created if new."""
        t = self._tindex.get(key)
        if t is None:
            t = self._tindex[key] = len(self._t_label)
            self._t_label.append(_label(comm, tid, cpu))
            self._t_cur.append(-1)
            self._t_first.append(-1)
        elif comm and comm != "<...>" and self._t_label[t].startswith("<...>-"):
            self._t_label[t] = _label(comm, tid, cpu)
        return t

    def _learn(self, key: str, vs: str, comm: str | None, tid: str | None, cpu: str) -> bool:
        """Thread ``key`` now runs vCPU ``vs`` (as printed); False when it is out of range."""
        v = int(vs)
        if v >= MAX_VCPUS:
            return False
        t = self._thread(key, comm, tid, cpu)
        self._cur[key] = vs
        if self._t_cur[t] != v:
            if self._t_first[t] < 0:
                self._t_first[t] = v
            else:
                self._multi.add(t)
            self._t_cur[t] = v
            self._learned.add(v)
        return True

    def _classify(self, system: str | None, event: str | None) -> int:
        c = self._classes.get(event)
        if c is None:
            if event is None:
                c = C_UNKNOWN
            elif event in _MMIO_EVENTS:
                c = C_MMIO
            elif event in _MAPPED:
                c = _MAPPED[event]
            elif (
                system == "kvmmmu"
                or event.startswith(("kvm_mmu_", "kvm_tdp_mmu_"))
                or event in _MMU_NAMES
            ):
                c = C_MMU
            elif system == "kvm" or event.startswith("kvm"):
                c = C_KVM
            else:
                c = C_UNKNOWN
            self._classes[event] = c
        return c

    # --- reading ------------------------------------------------------------------------

    def feed(self, lines: Iterable[str], source: str = "<text>", fmt: str | None = None) -> None:
        """Read one input's lines (``source`` names it in messages and in the sidecar;
        ``fmt`` overrides the options' format for this input), all in Python."""
        reader = self._reader(source, fmt)
        lines = self._qp_lines(lines, source)
        try:
            self._consume(reader, reader.batches(lines), len(self.stats.sources) - 1)
        finally:
            self._end_input(reader)

    def feed_stream(
        self,
        stream: BinaryIO,
        source: str = "<text>",
        fmt: str | None = None,
        *,
        fast: bool | None = None,
    ) -> None:
        """Read one input from a binary stream of UTF-8 text. Plain ftrace / trace-cmd record
        lines go through the compiled fast lane (:mod:`kvmcache.importers.scan`), every
        other line through :meth:`feed`'s Python path; the result is the same either way.
        ``fast``: None turns to the fast lane after the first FAST_MIN_BYTES (small inputs
        never load numba), False never uses it, True uses it from the first line."""
        reader = self._reader(source, fmt)
        src = len(self.stats.sources) - 1
        try:
            data = stream.read(READ_BYTES)
            if b"\0" in data[:65536]:
                raise KvmcacheError(
                    f"{source}: binary data (NUL bytes), not the text of a recorded trace"
                )
            data, stream = self._qp_stream(data, stream, source)
            if fast is False:
                self._consume(reader, reader.batches(_text_lines(data, stream, source)), src)
            else:
                _FastLane(self, reader, src, armed=bool(fast)).run(data, stream)
        finally:
            self._end_input(reader)

    def _qp_stream(self, data: bytes, stream: BinaryIO, source: str) -> tuple[bytes, BinaryIO]:
        """(first block, stream) of an input, quoted-printable decoded when its first
        QP_SNIFF bytes look quoted-printable (docs/import.md, section 2)."""
        while len(data) < QP_SNIFF:
            more = stream.read(QP_SNIFF)
            if not more:
                break
            data += more
        if not looks_quoted_printable(data[:QP_SNIFF]):
            return data, stream
        self.stats.quoted_printable.append(source)
        qp = _QPStream(data, stream, source)
        return qp.read(READ_BYTES), qp  # type: ignore[return-value]

    def _qp_lines(self, lines: Iterable[str], source: str) -> Iterable[str]:
        """:meth:`_qp_stream` for an input given as text lines."""
        it = iter(lines)
        head: list[str] = []
        size = 0
        for line in it:
            head.append(line)
            size += len(line.encode("utf-8", "replace"))
            if size >= QP_SNIFF:
                break
        prefix = "".join(head).encode("utf-8", "replace")[:QP_SNIFF]
        if not looks_quoted_printable(prefix):
            return itertools.chain(head, it)
        self.stats.quoted_printable.append(source)
        return _qp_decode_lines(itertools.chain(head, it), source)

    def _reader(self, source: str, fmt: str | None) -> LineReader:
        o = self.options
        reader = LineReader(fmt or o.format, strict=o.strict, source=source)
        self.stats.sources.append(source)
        return reader

    def _end_input(self, reader: LineReader) -> None:
        st = self.stats
        st.lines += reader.lines
        for reason, n in reader.skipped.items():
            st.skipped[reason] = st.skipped.get(reason, 0) + n
        st.lost_markers += reader.lost_markers
        for key, pid in reader.pids.items():
            if pid is not None and key is not None:
                self._pids.setdefault(key, pid)
        st.producers.append(reader.producer or "")

    def _consume(self, reader: LineReader, batches: Iterable[list], src: int) -> None:
        """Apply the mapping rules to the records of ``batches`` (from ``reader``) of input
        number ``src``."""
        ts_l, kind_l, gfn_l, pfn_l, level_l, vcpu_l, thread_l, src_l, line_l = self._cols
        classify = self._classify
        classes = self._classes
        tindex = self._tindex
        t_cur = self._t_cur
        cur = self._cur  # thread key -> its current vCPU number as printed (fast compare)
        skipped_unknown = skipped_stack = 0
        vcpu_lines = event_lines = 0
        no_event = self.stats.no_event
        skipped_names = self.stats.skipped_events
        scale = FRACTION_SCALE
        is_stack = LineReader.is_stack
        try:
            for batch in batches:
                for lineno, (comm, tid, cpu, _, sec, frac, system, event, vs, text) in batch:
                    c = classes.get(event)
                    if c is None:
                        c = classify(system, event)
                    if c <= C_MMU:
                        # Not mapped: only a `vcpu N` text matters (vCPU attribution).
                        if c == C_UNKNOWN:
                            if is_stack(event, text):
                                skipped_stack += 1
                            else:
                                skipped_unknown += 1
                                _count_name(skipped_names, event)
                            continue
                        if c == C_MMU:
                            self._seen_mmu = True
                        if vs is None:
                            skipped_unknown += 1
                            _count_name(skipped_names, event)
                            continue
                        key = tid if tid is not None else "cpu" + cpu
                        if cur.get(key) != vs:
                            if not self._learn(key, vs, comm, tid, cpu):
                                reader.unparseable(
                                    lineno, f"{event} record: vcpu {vs} out of range"
                                )
                                continue
                        vcpu_lines += 1
                        continue
                    # A mapped event: kvm_mmu_spte_requested, kvm_tdp_mmu_spte_changed,
                    # kvm_mmu_split_huge_page or kvm_page_fault (or an MMIO record).
                    if c == C_MMIO:
                        self._mmio_record(reader, lineno, event, text)
                        continue
                    if c != C_PF:
                        self._seen_mmu = True
                    try:
                        ts = int(sec) * 1_000_000_000 + int(frac) * scale[len(frac)]
                        f = text.split()
                        if c == C_SPTE_REQ:
                            # gfn %llx pfn %llx level %d
                            if f[0] != "gfn" or f[2] != "pfn" or f[4] != "level":
                                raise ValueError
                            gfn = int(f[1], 16)
                            pfn = int(f[3], 16)
                            level = int(f[5])
                            if level == LEVEL_2M:
                                pfn &= ~0x1FF
                            elif level == LEVEL_1G:
                                pfn &= ~0x3FFFF
                            elif level != LEVEL_4K:
                                raise ValueError
                            k = K_FAULT
                            self._spte_req += 1
                            self._spte_rows = True
                        elif c == C_SPTE_CHG:
                            # as id %d gfn %llx level %d old_spte %llx new_spte %llx
                            if (
                                f[0] != "as"
                                or f[3] != "gfn"
                                or f[5] != "level"
                                or f[7] != "old_spte"
                                or f[9] != "new_spte"
                            ):
                                raise ValueError
                            as_id = int(f[2])
                            gfn = int(f[4], 16)
                            level = int(f[6])
                            old = int(f[8], 16)
                            new = int(f[10], 16)
                            if not (
                                as_id == 0
                                and LEVEL_4K <= level <= LEVEL_1G
                                and old & SPTE_PERM_MASK
                                and (level == LEVEL_4K or old & SPTE_PAGE_SIZE)
                                and (new in NONPRESENT_SPTES or new in REMOVED_SPTES)
                            ):
                                no_event[event] = no_event.get(event, 0) + 1
                                continue
                            k = K_UNMAP
                            pfn = 0
                        elif c == C_SPLIT:
                            # gfn %llx spte %llx level %d errno %d
                            if (
                                f[0] != "gfn"
                                or f[2] != "spte"
                                or f[4] != "level"
                                or f[6] != "errno"
                            ):
                                raise ValueError
                            gfn = int(f[1], 16)
                            int(f[3], 16)
                            level = int(f[5])
                            errno = int(f[7])
                            if errno != 0 or level != LEVEL_2M:
                                no_event[event] = no_event.get(event, 0) + 1
                                continue
                            k = K_SPLIT
                            pfn = 0
                        else:
                            # >= 6.1: vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx
                            # <= 6.0: address %lx error_code %x
                            i = 4 if vs is not None else 0
                            if f[i] != "address":
                                raise ValueError
                            gfn = int(f[i + 1], 16) >> PAGE_SHIFT
                            if (
                                len(f) > i + 3
                                and (f[i + 3][-1] in _RSVD_HINT or "-" in f[i + 3])
                                and _rsvd_fault(f, i)
                            ):
                                self._mmio_gfns.add(gfn)
                            k = K_PF
                            pfn = 0
                            level = LEVEL_4K
                        if (ts | gfn | pfn) >> 64:  # does not fit the u64 fields
                            raise ValueError
                    except (ValueError, IndexError):
                        reader.unparseable(lineno, f"{event} record: {_excerpt(text)}")
                        continue
                    key = tid if tid is not None else "cpu" + cpu
                    if c == C_PF:
                        if vs is not None:
                            if cur.get(key) != vs and not self._learn(key, vs, comm, tid, cpu):
                                reader.unparseable(
                                    lineno, f"{event} record: vcpu {vs} out of range"
                                )
                                continue
                            self._pf_with_vcpu += 1
                        else:
                            self._pf_without_vcpu += 1
                    t = tindex.get(key)
                    if t is None:
                        t = self._thread(key, comm, tid, cpu)
                    if k == K_PF and self._spte_rows:
                        continue  # faults come from kvm_mmu_spte_requested: not kept
                    ts_l.append(ts)
                    kind_l.append(k)
                    gfn_l.append(gfn)
                    pfn_l.append(pfn)
                    level_l.append(level)
                    vcpu_l.append(t_cur[t])
                    thread_l.append(t)
                    src_l.append(src)
                    line_l.append(lineno)
                    if k != K_PF:
                        event_lines += 1
                if len(ts_l) >= BLOCK:
                    self._flush_block()
        finally:
            st = self.stats
            st.skipped[SKIP_UNKNOWN] = st.skipped.get(SKIP_UNKNOWN, 0) + skipped_unknown
            st.skipped[SKIP_STACK] = st.skipped.get(SKIP_STACK, 0) + skipped_stack
            st.vcpu_lines += vcpu_lines
            st.event_lines += event_lines

    def _flush_block(self) -> None:
        ts_l, kind_l, gfn_l, pfn_l, level_l, vcpu_l, thread_l, src_l, line_l = self._cols
        if not ts_l:
            return
        self._add_block(
            (
                np.array(ts_l, dtype=np.uint64),
                np.array(kind_l, dtype=np.uint8),
                np.array(gfn_l, dtype=np.uint64),
                np.array(pfn_l, dtype=np.uint64),
                np.array(level_l, dtype=np.uint8),
                np.array(vcpu_l, dtype=np.int64),
                np.array(thread_l, dtype=np.int64),
                np.array(src_l, dtype=np.int32),
                np.array(line_l, dtype=np.int64),
            )
        )
        for col in self._cols:
            col.clear()

    def _add_block(self, block: tuple[np.ndarray, ...]) -> None:
        """Hold a block of candidate events (columns in _BLOCK_FIELDS order); spill when
        enough are held. Once a kvm_mmu_spte_requested fault is read, faults come from it:
        the candidate faults from kvm_page_fault are not kept (nor counted) from then on."""
        kind = block[1]
        if not self._spte_rows and bool((kind == K_FAULT).any()):
            self._spte_rows = True
        if self._spte_rows:
            keep = kind != K_PF
            if not keep.all():
                block = tuple(col[keep] for col in block)
        if len(block[0]):
            self._blocks.append(block)
            self._held += len(block[0])
        self._spill()

    def _spill(self, final: bool = False) -> None:
        """Move the blocks held to a run (sorted by time; a temporary file unless ``final``)
        once they hold SPILL_EVENTS events, or at the end (``final``)."""
        if not self._blocks or (not final and self._held < SPILL_EVENTS):
            return
        cols = dict(
            zip(
                _BLOCK_FIELDS,
                (np.concatenate(p) for p in zip(*self._blocks, strict=True)),
                strict=True,
            )
        )
        self._blocks = []
        self._held = 0
        kind = cols["kind"]
        # Rows per kind and thread (the fault source and VM choices count them).
        n = len(self._t_label) + 1
        if self._per_kind.shape[1] < n:
            grown = np.zeros((5, n), dtype=np.int64)
            grown[:, : self._per_kind.shape[1]] = self._per_kind
            self._per_kind = grown
        # Candidate faults from kvm_page_fault held from before the first spte_requested go.
        keep = kind != K_PF if self._spte_rows else None
        if keep is not None and keep.all():
            keep = None
        counted = kind if keep is None else kind[keep]
        threads = cols["thread"] if keep is None else cols["thread"][keep]
        self._per_kind += np.bincount(
            counted.astype(np.int64) * n + threads, minlength=5 * n
        ).reshape(5, n)
        # Stable sort by time, then one gather per column into the run's rows.
        ts = cols["ts"] if keep is None else cols["ts"][keep]
        order = np.argsort(ts, kind="stable")
        if keep is not None:
            order = np.flatnonzero(keep)[order]
        rows = np.empty(len(order), dtype=RUN_DTYPE)
        for name, col in cols.items():
            rows[name] = col[order]
        self._runs.add(rows, in_memory=final, ordered=True)

    # --- building the trace -------------------------------------------------------------

    def finish(self) -> tuple[TraceHeader, np.ndarray, ImportStats]:
        """Apply the mapping rules to everything fed so far and build the trace in memory
        (:meth:`finish_stream` gives it chunk by chunk in bounded memory)."""
        header, chunks, st = self.finish_stream()
        parts = list(chunks)
        events = np.concatenate(parts) if parts else np.zeros(0, dtype=EVENT_DTYPE)
        return header, events, st

    def finish_stream(self) -> tuple[TraceHeader, Iterator[np.ndarray], ImportStats]:
        """Apply the mapping rules to everything fed so far: (header, the events in time
        order as EVENT_DTYPE chunks, stats). Reading the chunks finishes the stats (the gap
        warning, the time taken); memory stays bounded (docs/import.md, section 7)."""
        o = self.options
        st = self.stats
        self._flush_block()
        self._spill(final=True)
        runs = self._runs
        n_threads = len(self._t_label) + 1

        # 1. The fault source: kvm_mmu_spte_requested when the recording has any, otherwise
        #    kvm_page_fault (whatever other kvmmmu events are present).
        fallback = self._spte_req == 0
        st.faults_why = self._fault_source_reason(fallback)
        per_kind = np.zeros((5, n_threads), dtype=np.int64)  # kind -> thread -> rows
        per_kind[:, : self._per_kind.shape[1]] = self._per_kind
        if fallback:
            st.faults_from = "kvm_page_fault"
            st.event_lines += self._pf_with_vcpu + self._pf_without_vcpu
            kinds = (K_PF,)
            # The faults are synthetic 4 KiB pages: the real mapping's unmaps and splits are
            # not imported with them.
            for k, name in ((K_UNMAP, "kvm_tdp_mmu_spte_changed"), (K_SPLIT, _SPLIT_NAME)):
                n = int(per_kind[k].sum())
                if n:
                    st.event_lines -= n
                    st.no_event[name] = st.no_event.get(name, 0) + n
        else:
            st.vcpu_lines += self._pf_with_vcpu
            if self._pf_without_vcpu:
                st.no_event["kvm_page_fault"] = (
                    st.no_event.get("kvm_page_fault", 0) + self._pf_without_vcpu
                )
            kinds = (K_FAULT, K_UNMAP, K_SPLIT)
        fault_kind = K_PF if fallback else K_FAULT
        kind_ok = np.zeros(5, dtype=bool)
        kind_ok[list(kinds)] = True

        # 1b. Several VMM processes: one VM is imported (docs/import.md, section 4).
        thread_ok = self._choose_vm(per_kind[fault_kind])
        if thread_ok is None:
            thread_ok = np.ones(n_threads, dtype=bool)
        else:
            other = int(per_kind[list(kinds)][:, ~thread_ok].sum())
            if other:
                st.event_lines -= other
                st.skipped[SKIP_OTHER_VM] = st.skipped.get(SKIP_OTHER_VM, 0) + other

        def kept(chunk: np.ndarray) -> np.ndarray:
            mask = kind_ok[chunk["kind"]] & thread_ok[chunk["thread"]]
            return chunk if mask.all() else chunk[mask]

        runs.restrict(kept)  # once for the runs in memory

        # 2. Guest size and host size, limits, counts, and the threads whose vCPU is not
        #    known (one pass; the events are not in time order yet, which none of these need).
        def random_max(host: int) -> int:
            top = -1
            for chunk in runs.scan():
                c = kept(chunk)
                pf = c["kind"] == K_PF
                if pf.any():
                    g = self._prepared(c, fault_kind)[0][pf]
                    pfn = splitmix64(g ^ np.uint64(RANDOM_SEED)) % np.uint64(host)
                    top = max(top, int(pfn.max()))
            return top

        tally = _Tally(self, fault_kind)
        for chunk in runs.scan():
            c = kept(chunk)
            tally.add(c, *self._prepared(c, fault_kind))
        gfn_limit, host_pfn_limit = tally.limits(random_max)
        counts = tally.ops
        st.events = {OP_NAMES[c]: int(counts[c]) for c in (OP_FAULT, OP_UNMAP, OP_SPLIT)}

        # 3. vCPUs: the thread's vCPU at the time of the event; else the first one the thread
        #    shows later; else the next free index, in order of the threads' first appearance.
        unresolved_threads = tally.unresolved
        resolve = np.array(self._t_first + [-1], dtype=np.int64)
        assigned: dict[int, int] = {}
        used = set(self._learned)
        free = 0
        for t in sorted(unresolved_threads):
            if resolve[t] < 0:
                while free in used:
                    free += 1
                resolve[t] = assigned[t] = free
                used.add(free)
        for t, label in enumerate(self._t_label):
            if self._vm_threads is not None and t not in self._vm_threads:
                continue
            v = self._t_first[t] if self._t_first[t] >= 0 else assigned.get(t)
            if v is not None:
                st.vcpu_map[label] = int(v)
        if self._multi:
            names = ", ".join(self._t_label[t] for t in sorted(self._multi)[:3])
            st.warnings.append(
                f"{len(self._multi)} thread(s) showed more than one vCPU number ({names}); "
                "each event takes the thread's vCPU at its time, the sidecar map the first"
            )

        tally.far_warnings()
        header = TraceHeader(
            vm_type=o.vm_type,
            root_level=o.root_level,
            gfn_limit=gfn_limit,
            host_pfn_limit=host_pfn_limit,
            count=int(counts.sum()),
        )

        # 4. Time order (runs merged: stable, so records with equal timestamps keep their
        #    input order), then each chunk's vCPUs, flags, pfns and gaps.
        def events() -> Iterator[np.ndarray]:
            pfns = _PfnMap(self, gfn_limit)
            gaps = _Gaps(o.max_gap)
            for c in runs.merged(kept):
                gfn, flags = self._prepared(c, fault_kind)
                is_fault = c["kind"] == fault_kind
                vcpu = c["vcpu"]
                todo = is_fault & (vcpu < 0)
                if todo.any():
                    vcpu[todo] = resolve[c["thread"][todo]]
                vcpu[~is_fault] = 0
                if len(vcpu) and int(vcpu.max(initial=0)) >= MAX_VCPUS:
                    raise KvmcacheError(f"more than {MAX_VCPUS} vCPUs: cannot number them")
                out = np.zeros(len(c), dtype=EVENT_DTYPE)
                out["ts"] = gaps.cut(c["ts"])
                out["gfn"] = gfn
                pfn = np.where(is_fault, c["pfn"], np.uint64(0))
                pf = c["kind"] == K_PF
                if pf.any():
                    pfn[pf] = pfns.map(gfn[pf], c["src"][pf], c["line"][pf])
                out["pfn"] = pfn
                out["vcpu"] = vcpu.astype(np.uint32)
                out["op"] = _KIND_OP[c["kind"]]
                out["level"] = np.where(c["kind"] == K_SPLIT, LEVEL_2M, c["level"])
                out["flags"] = flags
                yield out
            gaps.finish(st)
            if not counts[OP_FAULT]:
                st.warnings.append(self._empty_warning())
            if st.lost_markers:
                st.warnings.append(
                    f"the recording reports lost events on {st.lost_markers} occasion(s): "
                    "the trace is incomplete"
                )
            st.seconds = time.perf_counter() - self._t0
            runs.close()

        return header, events(), st

    def _prepared(self, c: np.ndarray, fault_kind: int) -> tuple[np.ndarray, np.ndarray]:
        """(gfn, flags) of kept rows by the private/shared rules: the gfns with the shared
        bit stripped, the event flags (docs/import.md, section 5)."""
        o = self.options
        gfn = c["gfn"]
        flags = np.zeros(len(c), dtype=np.uint16)
        if o.shared_bit is not None:
            bit = np.uint64(1 << (o.shared_bit - PAGE_SHIFT))
            shared = (gfn & bit) != 0
            gfn = gfn & ~bit
            if o.vm_type == "tdx":
                flags[~shared] = FLAG_PRIVATE
        elif o.as_tdx and o.vm_type == "tdx":
            flags[:] = FLAG_PRIVATE
            flags[self._mmio_mask(gfn)] = 0
        return gfn, flags

    def _vm_groups(self) -> list[list[int]]:
        """The threads grouped by VMM process: by TGID / PID where the recording shows two or
        more of them; the other threads form one VM unless two of them claim the same vCPU
        number (their first `vcpu N`, else the N of a QEMU thread name `CPU N/KVM`), and then
        are split, in the order of their thread ids, wherever a vCPU number repeats."""
        keys = [""] * len(self._t_label)
        for key, t in self._tindex.items():
            keys[t] = key
        by_pid: dict[str, list[int]] = {}
        rest: list[int] = []
        for t, key in enumerate(keys):
            pid = self._pids.get(key)
            if pid is not None:
                by_pid.setdefault(pid, []).append(t)
            else:
                rest.append(t)
        if len(by_pid) <= 1:  # one process id or none: no evidence of several processes
            by_pid, rest = {}, list(range(len(keys)))
        groups = [ts for _, ts in sorted(by_pid.items(), key=lambda kv: int(kv[0]))]
        vcpu_of = [
            self._t_first[t] if self._t_first[t] >= 0 else _comm_vcpu(lb)
            for t, lb in enumerate(self._t_label)
        ]
        first = [vcpu_of[t] for t in rest if vcpu_of[t] >= 0]
        if len(set(first)) == len(first):
            return groups + ([rest] if rest else [])
        # A process's threads have nearby ids (allocated when it starts its vCPUs); COMM tells
        # little (QEMU names its vCPU threads `CPU N/KVM` in every VM).
        cur: list[int] = []
        vcpus: set[int] = set()
        for t in sorted(rest, key=lambda t: _tid_order(keys[t])):
            v = vcpu_of[t]
            if v >= 0 and v in vcpus:
                groups.append(cur)
                cur, vcpus = [], set()
            cur.append(t)
            if v >= 0:
                vcpus.add(v)
        groups.append(cur)
        return groups

    def _choose_vm(self, thread_faults: np.ndarray) -> np.ndarray | None:
        """Which threads are of the VM to import (--vm PID, else the one with most faults;
        ``thread_faults``: faults per thread), or None when the recording holds one VM;
        lists the VMs in the summary."""
        st = self.stats
        want = self.options.vm_process
        groups = self._vm_groups()
        if len(groups) <= 1 and want is None:
            return None
        keys = {t: k for k, t in self._tindex.items()}
        group_of = np.zeros(len(self._t_label) + 1, dtype=np.int64)
        names = []
        for g, members in enumerate(groups):
            group_of[members] = g
            pid = self._pids.get(keys[members[0]])
            if pid is not None and all(self._pids.get(keys[t]) == pid for t in members):
                names.append(f"pid {pid}")
            else:
                tids = sorted((keys[t] for t in members), key=_tid_order)
                names.append(f"threads {tids[0]}" + (f"..{tids[-1]}" if len(tids) > 1 else ""))
        faults = np.bincount(group_of, weights=thread_faults, minlength=len(groups))
        faults = faults.astype(np.int64)
        if want is not None:
            chosen = next(
                (
                    g
                    for g, members in enumerate(groups)
                    if any(self._pids.get(keys[t]) == want or keys[t] == want for t in members)
                ),
                None,
            )
            if chosen is None:
                raise KvmcacheError(
                    f"--vm {want}: no VMM process or thread {want} in the recording (VMs: "
                    + ", ".join(names)
                    + ")"
                )
        else:
            chosen = int(np.argmax(faults)) if len(faults) else 0
        st.vms = [
            f"{names[g]}: {int(faults[g])} fault(s)" + (", imported" if g == chosen else "")
            for g in range(len(groups))
        ]
        self._vm_threads = set(groups[chosen])
        if len(groups) > 1:
            why = f"--vm {want}" if want is not None else "most faults"
            st.warnings.append(
                f"the recording holds {len(groups)} VMs (distinct VMM processes); imported "
                f"{names[chosen]} ({why}); --vm PID imports another"
            )
        return group_of == chosen

    def _mmio_record(self, reader: LineReader, lineno: int, event: str, text: str) -> None:
        """A kvm_mmio / mark_mmio_spte / handle_mmio_page_fault record: its gfn is MMIO."""
        if event != "kvm_mmio":
            self._seen_mmu = True
        f = text.split()
        try:
            if "gpa" in f:  # kvm_mmio: mmio %s len %u gpa 0x%llx val 0x%llx
                gfn = int(f[f.index("gpa") + 1], 16) >> PAGE_SHIFT
            else:  # ... gfn %llx access %x ...
                gfn = int(f[f.index("gfn") + 1], 16)
        except (ValueError, IndexError):
            reader.unparseable(lineno, f"{event} record: {_excerpt(text)}")
            return
        self._mmio_gfns.add(gfn)
        no_event = self.stats.no_event
        no_event[event] = no_event.get(event, 0) + 1

    def _mmio_mask(self, gfn: np.ndarray) -> np.ndarray:
        """The events at MMIO gfns: well-known ranges, --mmio, and gfns the recording shows
        as MMIO (docs/import.md, section 5)."""
        mask = np.zeros(len(gfn), dtype=bool)
        for lo, hi in MMIO_RANGES + tuple(self.options.mmio):
            mask |= (gfn >= np.uint64(lo)) & (gfn <= np.uint64(hi))
        if self._mmio_gfns:
            seen = np.fromiter(self._mmio_gfns, dtype=np.uint64, count=len(self._mmio_gfns))
            mask |= np.isin(gfn, seen)
        return mask

    def _empty_warning(self) -> str:
        """The warning of an import without faults: what was skipped, what to record."""
        st = self.stats
        top = sorted(st.skipped_events.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        if top:
            seen = "most frequent skipped records: " + ", ".join(f"{n} {c}" for n, c in top)
        else:
            other = st.skipped.get(SKIP_UNKNOWN, 0)
            seen = f"{other} record(s) of other events, none of them a KVM event"
        return (
            f"no faults imported ({seen}); faults come from kvm_mmu_spte_requested "
            "(record -e kvmmmu:kvm_mmu_spte_requested) or kvm_page_fault (record "
            "-e kvm:kvm_page_fault; a kernel before 6.1 also needs -e kvm:kvm_entry for "
            "the vCPU numbers)"
        )

    def _fault_source_reason(self, fallback: bool) -> str:
        """Why the faults come from the source chosen (docs/import.md, section 3)."""
        if not fallback:
            return "the recording has kvm_mmu_spte_requested records"
        if self._seen_mmu:
            return "the recording has kvmmmu events but no kvm_mmu_spte_requested"
        return "the recording has no kvm_mmu_spte_requested"


#: The rows of a run (events as read, before the finishing rules), and of a prepared chunk.
RUN_DTYPE = np.dtype(
    [
        ("ts", "<u8"),
        ("gfn", "<u8"),
        ("pfn", "<u8"),
        ("line", "<i8"),
        ("vcpu", "<i8"),
        ("thread", "<i8"),
        ("src", "<i4"),
        ("kind", "u1"),
        ("level", "u1"),
    ]
)
_PREP_DTYPE = np.dtype(RUN_DTYPE.descr + [("flags", "<u2")])
#: Read events beyond this many are sorted and moved to a temporary file (a run); the runs
#: are merged by time when the trace is written. Memory stays bounded whatever the input.
SPILL_EVENTS = 1 << 18
#: Rows read at a time from the runs (shared among the runs while they are merged).
SCAN_ROWS = 1 << 18
_SPLIT_NAME = "kvm_mmu_split_huge_page"


class _Runs:
    """Events as read, in runs sorted by time: each in memory or in a temporary file."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray | None, BinaryIO | None, int]] = []

    def add(self, rows: np.ndarray, in_memory: bool, ordered: bool = False) -> None:
        """Add ``rows`` (RUN_DTYPE, in input order unless ``ordered``: already stably sorted
        by time) as a run, stably sorted by time."""
        if not ordered:
            rows = rows[np.argsort(rows["ts"], kind="stable")]
        if in_memory:
            self._runs.append((rows, None, len(rows)))
            return
        f = tempfile.TemporaryFile(prefix="kvmcache-import-")
        try:
            rows.tofile(f)
        except OSError as e:
            f.close()
            raise KvmcacheError(f"cannot write a temporary file: {e.strerror or e}") from None
        self._runs.append((None, f, len(rows)))  # type: ignore[arg-type]

    @property
    def spilled(self) -> bool:
        return any(f is not None for _, f, _ in self._runs)

    def _read(self, i: int, start: int, count: int) -> np.ndarray:
        rows, f, n = self._runs[i]
        count = min(count, n - start)
        if rows is not None:
            return rows[start : start + count]
        assert f is not None
        f.seek(start * RUN_DTYPE.itemsize)
        return np.fromfile(f, dtype=RUN_DTYPE, count=count)

    def scan(self) -> Iterator[np.ndarray]:
        """Every row, run after run, in chunks (not in time order across runs)."""
        for i, (_, _, n) in enumerate(self._runs):
            for start in range(0, n, SCAN_ROWS):
                yield self._read(i, start, SCAN_ROWS)

    def merged(self, kept) -> Iterator[np.ndarray]:
        """``kept(chunk)`` of every row in time order: equal timestamps keep input order
        (run order, then order within the run)."""
        if len(self._runs) == 1:
            for chunk in self.scan():
                c = kept(chunk)
                if len(c):
                    yield c
            return
        k = len(self._runs)
        step = max(4096, SCAN_ROWS // max(k, 1))
        ends = [0] * k
        bufs = [np.zeros(0, dtype=RUN_DTYPE)] * k

        def refill(i: int) -> None:
            more = self._read(i, ends[i], step)
            ends[i] += len(more)
            bufs[i] = np.concatenate((bufs[i], more)) if len(bufs[i]) else more

        for i in range(k):
            refill(i)
        while True:
            open_runs = [i for i in range(k) if ends[i] < self._runs[i][2]]
            if not open_runs and not any(len(b) for b in bufs):
                return
            for i in open_runs:
                if not len(bufs[i]):
                    refill(i)
            # Rows not read yet are at or after the last row read of their run.
            limit = min((int(bufs[i]["ts"][-1]) for i in open_runs), default=None)
            parts = []
            for i in range(k):
                b = bufs[i]
                cut = len(b) if limit is None else int(np.searchsorted(b["ts"], limit, "left"))
                if cut:
                    parts.append(b[:cut])
                    bufs[i] = b[cut:]
            if not parts:  # every row held is at the limit: read on where it stands
                for i in open_runs:
                    if int(bufs[i]["ts"][-1]) == limit:
                        refill(i)
                continue
            out = np.concatenate(parts) if len(parts) > 1 else parts[0]
            out = out[np.argsort(out["ts"], kind="stable")]
            c = kept(out)
            if len(c):
                yield c

    def restrict(self, kept) -> None:
        """Replace each run held in memory by ``kept(run)`` (the rows of the others are
        filtered as they are read)."""
        for i, (rows, f, _) in enumerate(self._runs):
            if rows is not None:
                rows = kept(rows)
                self._runs[i] = (rows, f, len(rows))

    def close(self) -> None:
        for _, f, _ in self._runs:
            if f is not None:
                f.close()
        self._runs = []


class _Tally:
    """One pass over the kept rows (any order): sizes, limit checks and counts."""

    def __init__(self, imp: Importer, fault_kind: int) -> None:
        self.imp = imp
        self.o = imp.options
        self.fault_kind = fault_kind
        self.ops = np.zeros(8, dtype=np.int64)
        self.gfn_last = -1  # highest gfn covered
        self.pfn_last = -1  # highest host pfn covered (real pfns, identity-mapped gfns)
        self.bad: dict[str, tuple] = {}  # problem -> (src, line, value, kind)
        self.regions = np.zeros(0, dtype=np.uint64)  # --pfn-map hugepage: 2 MiB regions
        self.pf_gfns = False
        self.far = 0
        self.far_top = 0
        self.far_pf = False
        self.near_top = -1
        self.beyond = 0
        self.mmio = 0
        self.unresolved: set[int] = set()  # threads with a fault whose vCPU is not known

    def _first_bad(self, key: str, bad: np.ndarray, c: np.ndarray, values: np.ndarray) -> None:
        if not bad.any():
            return
        idx = np.flatnonzero(bad)
        i = idx[np.lexsort((c["line"][idx], c["src"][idx]))[0]]
        cand = (int(c["src"][i]), int(c["line"][i]), int(values[i]), int(c["kind"][i]))
        if key not in self.bad or cand[:2] < self.bad[key][:2]:
            self.bad[key] = cand

    def add(self, c: np.ndarray, gfn: np.ndarray, flags: np.ndarray) -> None:
        """Count kept rows ``c`` (their gfns and flags by the private/shared rules)."""
        o = self.o
        if not len(c):
            return
        kind, level = c["kind"], c["level"]
        self.ops += np.bincount(_KIND_OP[kind], minlength=8)[:8]
        is_fault = kind == self.fault_kind
        todo = is_fault & (c["vcpu"] < 0)
        if todo.any():
            self.unresolved.update(np.unique(c["thread"][todo]).tolist())
        span = np.left_shift(
            np.uint64(1), (np.maximum(level, 1).astype(np.uint64) - 1) * np.uint64(9)
        )
        span[kind == K_SPLIT] = 512
        if o.gfn_limit is not None:
            self._first_bad("gfn_limit", gfn >= np.uint64(o.gfn_limit), c, gfn)
        else:
            self._first_bad("gfn_max", gfn >= MAX_FRAME, c, gfn)
            last = (gfn & ~(span - np.uint64(1))) + span - np.uint64(1)
            self.gfn_last = max(self.gfn_last, int(last.max()))
        far = gfn >= np.uint64(FAR_GFN)
        n_far = int(np.count_nonzero(far))
        if n_far:
            self.far += n_far
            self.far_top = max(self.far_top, int(gfn.max()))
            self.far_pf = self.far_pf or bool((kind[far] == K_PF).any())
            reach = 9 * o.root_level
            self.beyond += int(np.count_nonzero(gfn >> np.uint64(reach)))
        if n_far < len(gfn):
            self.near_top = max(self.near_top, int(gfn[~far].max()))
        if o.as_tdx and o.vm_type == "tdx":
            self.mmio += int(np.count_nonzero(is_fault & (flags == 0)))
        pf = kind == K_PF
        if pf.any():
            self.pf_gfns = True
            if o.pfn_map == "identity":
                self._pfn_checks(c[pf], gfn[pf], np.ones(int(pf.sum()), dtype=np.uint64))
            elif o.pfn_map == "hugepage":
                self.regions = np.union1d(self.regions, gfn[pf] >> np.uint64(9))
        real = kind == K_FAULT
        if real.any():
            self._pfn_checks(c[real], c["pfn"][real], span[real])

    def _pfn_checks(self, c: np.ndarray, pfn: np.ndarray, span: np.ndarray) -> None:
        o = self.o
        if o.host_pfn_limit is not None:
            self._first_bad("host_limit", pfn >= np.uint64(o.host_pfn_limit), c, pfn)
        else:
            self._first_bad("host_max", pfn >= MAX_FRAME, c, pfn)
            self.pfn_last = max(self.pfn_last, int((pfn + span - np.uint64(1)).max()))

    def limits(self, random_max) -> tuple[int, int]:
        """(gfn_limit, host_pfn_limit), or the error of the first event beyond a limit;
        ``random_max(host)``: the highest `--pfn-map random` pfn of the faults (a pass)."""
        o = self.o
        for key, problem, what in (
            ("gfn_limit", f"is beyond --guest-memory (gfn_limit 0x{o.gfn_limit or 0:x})", "gfn"),
            ("gfn_max", "is beyond what a trace can hold", "gfn"),
        ):
            self._raise(key, problem, what)
        gfn_limit = o.gfn_limit if o.gfn_limit is not None else _round_limit(self.gfn_last + 1)
        for key, problem in (
            ("host_limit", f"is beyond --host-memory (host_pfn_limit 0x{o.host_pfn_limit or 0:x})"),
            ("host_max", "is beyond what a trace can hold"),
        ):
            self._raise(key, problem, "pfn")
        if o.host_pfn_limit is not None:
            return gfn_limit, o.host_pfn_limit
        last = self.pfn_last
        if o.pfn_map == "hugepage" and len(self.regions):
            last = max(last, len(self.regions) * 512 - 1)
        elif o.pfn_map == "random" and self.pf_gfns:
            last = max(last, random_max(RANDOM_HOST_FACTOR * gfn_limit))
        return gfn_limit, _round_limit(last + 1)

    def _raise(self, key: str, problem: str, what: str) -> None:
        if key in self.bad:
            src, line, value, kind = self.bad[key]
            op = OP_NAMES[int(_KIND_OP[kind])]
            raise KvmcacheError(
                f"{self.imp.stats.sources[src]}:{line}: {op} {what} 0x{value:x} {problem}"
            )

    def far_warnings(self) -> None:
        """Warn about guest physical addresses far above RAM (docs/import.md, section 5):
        they are imported (gfn_limit covers them), but the user should know."""
        st = self.imp.stats
        st.mmio_shared = self.mmio
        if not self.far:
            return
        below = (
            f", the others below 0x{self.near_top + 1 << PAGE_SHIFT:x}"
            if self.near_top >= 0
            else ""
        )
        hint = ""
        if self.far_pf and self.o.pfn_map == "identity":
            hint = "; --pfn-map hugepage keeps the host memory of the model small"
        st.warnings.append(
            f"{self.far} event(s) at guest physical addresses of 1 TiB or more (up to "
            f"0x{self.far_top << PAGE_SHIFT:x}{below}): imported, and gfn_limit covers them{hint}"
        )
        if self.beyond:
            reach = 9 * self.o.root_level
            st.warnings.append(
                f"{self.beyond} event(s) at guest physical addresses of 2**{reach + PAGE_SHIFT} "
                f"or more, beyond what {self.o.root_level}-level TDP maps"
                + ("; use --root-level 5" if self.o.root_level == 4 else "")
            )


class _PfnMap:
    """Host pfns for faults from kvm_page_fault, by --pfn-map (docs/import.md), chunk by
    chunk in time order."""

    def __init__(self, imp: Importer, gfn_limit: int) -> None:
        self.imp = imp
        o = imp.options
        self.how = o.pfn_map
        self.host = (
            o.host_pfn_limit if o.host_pfn_limit is not None else RANDOM_HOST_FACTOR * gfn_limit
        )
        self.keys = np.zeros(0, dtype=np.uint64)  # hugepage: guest regions seen, sorted
        self.ranks = np.zeros(0, dtype=np.uint64)  # and their host regions

    def map(self, gfn: np.ndarray, src: np.ndarray, line: np.ndarray) -> np.ndarray:
        if self.how == "identity":
            return gfn.copy()
        if self.how == "random":
            return splitmix64(gfn ^ np.uint64(RANDOM_SEED)) % np.uint64(self.host)
        o = self.imp.options
        region = gfn >> np.uint64(9)
        uniq, first, inverse = np.unique(region, return_index=True, return_inverse=True)
        pos = np.searchsorted(self.keys, uniq)
        known = pos < len(self.keys)
        known[known] = self.keys[pos[known]] == uniq[known]
        rank = np.empty(len(uniq), dtype=np.uint64)
        rank[known] = self.ranks[pos[known]]
        new = np.flatnonzero(~known)
        new = new[np.argsort(first[new], kind="stable")]
        rank[new] = np.arange(len(self.keys), len(self.keys) + len(new), dtype=np.uint64)
        if len(new):
            keys = np.concatenate((self.keys, uniq[new]))
            ranks = np.concatenate((self.ranks, rank[new]))
            order = np.argsort(keys, kind="stable")
            self.keys, self.ranks = keys[order], ranks[order]
        host_region = rank[inverse.reshape(-1)]
        if o.host_pfn_limit is not None and len(self.keys) > o.host_pfn_limit // 512:
            i = int(np.argmax(host_region >= np.uint64(o.host_pfn_limit // 512)))
            raise KvmcacheError(
                f"{self.imp.stats.sources[int(src[i])]}:{int(line[i])}: --pfn-map hugepage needs "
                f"more than the {o.host_pfn_limit // 512} host 2 MiB regions of --host-memory"
            )
        return (host_region << np.uint64(9)) | (gfn & np.uint64(511))


def _bit_length(d: np.ndarray) -> np.ndarray:
    """``int.bit_length`` of each uint64 (exact)."""
    if not len(d) or int(d.max()) < 1 << 53:  # exact as float64: the exponent is the length
        return np.frexp(d.astype(np.float64))[1].astype(np.int64)
    x = d.copy()
    b = np.zeros(len(d), dtype=np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        m = x >= np.uint64(1 << s)
        b[m] += s
        x[m] >>= np.uint64(s)
    return b + (x > 0)


class _Gaps:
    """The gaps between consecutive events, chunk by chunk in time order: a histogram (for
    the warning about gaps far beyond the rest) and --max-gap's cut."""

    def __init__(self, max_gap: int | None) -> None:
        self.max_gap = max_gap
        self.prev: int | None = None
        self.removed = 0  # ns cut so far
        self.cut_gaps = 0
        self.hist = np.zeros(66, dtype=np.int64)  # bit length of a positive gap -> count
        self.gaps = 0
        self.longest = 0
        self.longest_after = 0

    def cut(self, ts: np.ndarray) -> np.ndarray:
        if not len(ts):
            return ts
        prev = ts[:1] if self.prev is None else np.array([self.prev], dtype=np.uint64)
        d = np.diff(ts, prepend=prev)  # the first gap of the whole trace is 0
        self.gaps += len(d) - (1 if self.prev is None else 0)
        self.prev = int(ts[-1])
        self.hist += np.bincount(_bit_length(d), minlength=66)[:66]
        i = int(np.argmax(d))
        if int(d[i]) > self.longest:
            self.longest = int(d[i])
            self.longest_after = int(ts[i]) - int(d[i])
        out = ts - np.uint64(self.removed) if self.removed else ts.copy()
        if self.max_gap is not None:
            excess = np.where(d > np.uint64(self.max_gap), d - np.uint64(self.max_gap), 0)
            excess = excess.astype(np.uint64)
            n = int(np.count_nonzero(excess))
            if n:
                out -= np.cumsum(excess, dtype=np.uint64)
                self.cut_gaps += n
                self.removed += int(excess.sum(dtype=np.uint64))
        return out

    def finish(self, st: ImportStats) -> None:
        if self.cut_gaps:
            st.gaps_cut = (self.cut_gaps, self.removed)
        positive = self.hist[1:]
        n = int(positive.sum())
        if self.max_gap is not None or self.gaps < 2 or not n:
            return
        k = 1 + int(np.searchsorted(np.cumsum(positive), (n - 1) // 2 + 1))  # median's bucket
        typical = 1 << (k - 1)  # the power of two at or below the median positive gap
        far_from = max(k + GAP_FACTOR_BITS, GAP_MIN_BITS)
        n_far = int(self.hist[far_from:].sum())
        if n_far:
            st.warnings.append(
                f"{n_far} gap(s) between events of over {1 << GAP_FACTOR_BITS} times the "
                f"typical gap of the recording (about {_seconds(typical)}; the longest "
                f"{_seconds(self.longest)} after ts {self.longest_after} ns): glued "
                "recordings? --max-gap cuts them for the idle accounting"
            )


_BLOCK_FIELDS = ("ts", "kind", "gfn", "pfn", "level", "vcpu", "thread", "src", "line")


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser over a uint64 array (wrapping arithmetic)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


#: A gap between consecutive events is "far beyond the rest" when it is at least 2**10 times
#: the typical gap (the power of two at or below the median positive gap) and 2**33 ns.
GAP_FACTOR_BITS = 10  # 1024 times the typical gap
GAP_MIN_BITS = 34  # and at least 2**33 ns (8.6 s)

#: Events at or above this gfn (1 TiB) are far above any RAM: the summary says so.
FAR_GFN = 1 << 28

#: Frames at or above this cannot be imported: a 1 GiB leaf there, rounded up to a 2 MiB
#: multiple, would not fit the header's u64 limits.
MAX_FRAME = np.uint64(2**64 - 2**30)


def _round_limit(n: int) -> int:
    """``n`` rounded up to a multiple of 512, at least 512."""
    return max(512, (n + 511) // 512 * 512)


def _rsvd_fault(f: list[str], i: int) -> bool:
    """The kvm_page_fault fields ``f`` (address at ``i``) have an error_code with the reserved
    bit: the fault of an MMIO SPTE."""
    if len(f) <= i + 3 or f[i + 2] != "error_code":
        return False
    try:
        return bool(int(f[i + 3], 16) & PFERR_RSVD)
    except ValueError:
        return False


_QEMU_VCPU_THREAD = re.compile(r"CPU (\d{1,5})/KVM-\d+")


def _comm_vcpu(label: str) -> int:
    """The vCPU number in a QEMU vCPU thread's label (`CPU 3/KVM-4150` -> 3), else -1."""
    m = _QEMU_VCPU_THREAD.fullmatch(label)
    return int(m.group(1)) if m else -1


def _tid_order(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 62, key)


def _seconds(ns: int) -> str:
    """``ns`` as seconds (or minutes, hours, days when longer), for messages."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if ns >= 2 * size * 10**9:
            return f"{ns / (size * 10**9):.1f} {unit}"
    return f"{ns / 1e9:.6f} s"


def _count_name(counts: dict[str, int], event: str | None) -> None:
    """Count a skipped record of ``event`` (named in the empty-import warning)."""
    name = event if event is not None else "(no event name)"
    counts[name] = counts.get(name, 0) + 1


def _label(comm: str | None, tid: str | None, cpu: str) -> str:
    if tid is None:
        return f"<cpu {int(cpu)}>"
    return f"{comm if comm else '<...>'}-{tid}"


def _excerpt(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def _decode_lines(data: bytes) -> list[str]:
    """The lines of complete UTF-8 text lines, as a text-mode file reads them (undecodable bytes
    replaced, CR LF and lone CR read as line ends)."""
    text = data.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _line_too_long(source: str) -> KvmcacheError:
    return KvmcacheError(
        f"{source}: a line longer than {MAX_LINE >> 20} MiB: not the text of a recorded trace"
    )


def _check_carry(carry: bytes, source: str) -> None:
    if len(carry) > MAX_LINE:
        raise _line_too_long(source)


def _text_lines(data: bytes, stream: BinaryIO, source: str = "<text>") -> Iterator[str]:
    """The text lines of ``data`` and then of the rest of ``stream``."""
    carry = b""
    while data:
        buf = carry + data
        cut = buf.rfind(b"\n") + 1
        yield from _decode_lines(buf[:cut])
        carry = buf[cut:]
        _check_carry(carry, source)
        data = stream.read(READ_BYTES)
    if carry:
        yield from _decode_lines(carry + b"\n")


#: The first this many bytes of an input decide whether it is quoted-printable.
QP_SNIFF = 64 << 10
#: A record line cut by a quoted-printable soft break: its CPU column, then `=` at the end.
_QP_SOFT_RECORD = re.compile(rb"\[\d+\].*=\r?$", re.MULTILINE)
#: A record line with a quoted-printable escape of `=` or of a trailing blank (and no soft
#: break, which _QP_SOFT_RECORD counts).
_QP_ESCAPED_RECORD = re.compile(rb"\[\d+\](?:.*=3D.*[^=\r\n]|.*=20)\r?$", re.MULTILINE)
_QP_HEADER = re.compile(rb"^content-transfer-encoding:[ \t]*quoted-printable", re.I | re.M)


def looks_quoted_printable(head: bytes) -> bool:
    """True when ``head`` (an input's first bytes) is quoted-printable mail: at least two
    record lines (a `[CPU]` column) end in a soft line break `=` or hold a `=3D` / end in a
    `=20` escape, or a `Content-Transfer-Encoding: quoted-printable` mail header is followed
    by one such line."""
    found = 0
    if b"=\n" in head or b"=\r\n" in head:
        found += len(_QP_SOFT_RECORD.findall(head))
    if b"=3D" in head or b"=20" in head:
        found += len(_QP_ESCAPED_RECORD.findall(head))
    if found >= 2:
        return True
    return found >= 1 and _QP_HEADER.search(head) is not None


class _QPStream:
    """Quoted-printable decoding of (first block, rest of a stream), read like a stream.
    Decoding is per line: a soft break (`=` at a line end) only deletes itself, and an
    `=XX` escape never spans lines, so cutting the input at line ends is exact."""

    def __init__(self, data: bytes, stream: BinaryIO, source: str) -> None:
        self._data = data
        self._stream = stream
        self._source = source
        self._carry = b""
        self._out = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._out) < n):
            data, self._data = (
                (self._data, b"") if self._data else (self._stream.read(READ_BYTES), b"")
            )
            if not data:
                self._eof = True
                if self._carry:
                    self._out += binascii.a2b_qp(self._carry)
                    self._carry = b""
                break
            buf = self._carry + data
            cut = buf.rfind(b"\n") + 1
            self._out += binascii.a2b_qp(buf[:cut])
            self._carry = buf[cut:]
            _check_carry(self._carry, self._source)
        if n < 0 or n >= len(self._out):
            out, self._out = self._out, b""
        else:
            out, self._out = self._out[:n], self._out[n:]
        return out


def _qp_decode_lines(lines: Iterable[str], source: str = "<text>") -> Iterator[str]:
    """The lines of quoted-printable text lines, decoded (soft breaks joined)."""
    held: list[bytes] = []
    size = 0
    for line in lines:
        held.append(line.encode("utf-8", "replace") + (b"" if line.endswith("\n") else b"\n"))
        if line.rstrip("\r\n").endswith("="):
            size += len(held[-1])
            if size > MAX_LINE:
                raise _line_too_long(source)
            continue
        size = 0
        yield from _decode_lines(binascii.a2b_qp(b"".join(held)))
        held = []
    if held:
        yield from _decode_lines(binascii.a2b_qp(b"".join(held)))


def _plain_tid(key: str) -> bool:
    """True for a thread key the fast lane can know: a TID written as plain decimal."""
    return key.isascii() and key.isdigit() and len(key) <= 9 and (key == "0" or key[0] != "0")


class _FastLane:
    """Drive one input through the compiled fast lane and the Python path, line by line in
    input order, with one set of counters (docs/import.md, section "Speed")."""

    OUT = 1 << 16  # events per output drain
    NAME_SLOTS = 4096
    NAME_BYTES = 1 << 18
    AHEAD = 1024  # bytes read in Python at a time before the producer is known

    def __init__(self, imp: Importer, reader: LineReader, src: int, armed: bool) -> None:
        self.imp = imp
        self.reader = reader
        self.src = src
        self.armed = False
        if armed:
            self._arm()

    def _arm(self) -> None:
        from kvmcache.importers import scan

        self.scan = scan
        imp = self.imp
        if imp._fast_tables is None:
            ntab = np.full((self.NAME_SLOTS, 4), -1, dtype=np.int64)
            ntab[:, 3] = 0  # skipped records of the name (counted by the fast lane)
            imp._fast_tables = (ntab, np.zeros(self.NAME_BYTES, dtype=np.uint8), [0, 0])
        self.ntab, self.names, self.name_use = imp._fast_tables
        self.R = np.zeros(scan.N_REGS, dtype=np.int64)
        self.F = np.zeros(scan.F_SIZE, dtype=np.int64)
        self.out_u = np.zeros((3, self.OUT), dtype=np.uint64)
        self.out_i = np.zeros((5, self.OUT), dtype=np.int64)
        self.n_threads = -1
        self._sync()
        self.armed = True

    def run(self, data: bytes, stream: BinaryIO) -> None:
        carry = b""
        seen = 0
        try:
            while True:
                eof = not data
                buf = carry + data if carry else data
                if eof:
                    if not buf:
                        break
                    if not buf.endswith(b"\n"):
                        buf += b"\n"
                    end = len(buf)
                else:
                    end = buf.rfind(b"\n") + 1
                if end:
                    pos = self._block(buf, end, eof)
                    carry = buf[pos:]
                else:  # no line end yet
                    carry = buf
                _check_carry(carry, self.reader.source)
                if eof:
                    break
                seen += len(data)
                if not self.armed and seen >= FAST_MIN_BYTES:
                    self._arm()
                data = stream.read(READ_BYTES)
            held = self.reader.flush()
            if held:
                self.imp._consume(self.reader, [held], self.src)
        finally:
            if self.armed:
                self._drain()
                self._count()

    def _slow(self, data: bytes) -> None:
        reader = self.reader
        self.imp._consume(reader, reader.batches(_decode_lines(data), final=False), self.src)
        if self.armed:
            self._sync()

    def _block(self, buf: bytes, end: int, eof: bool) -> int:
        """Take the lines of ``buf[:end]``; return where the lines not taken begin."""
        if not self.armed:
            self._slow(buf[:end])
            return end
        scan = self.scan
        reader = self.reader
        arr = np.frombuffer(buf, dtype=np.uint8)
        R, F = self.R, self.F
        pos = 0
        while pos < end:
            perf = not reader.ftrace_first  # the layout the Python lane tries first
            if reader.producer is None:
                # Until the first KVM record names the producer, Python reads a few lines at
                # a time (then up to the next plain record).
                ahead = pos + self.AHEAD
                seg_end = end if ahead >= end else scan.line_end(arr, ahead, end)
                seg_end = scan.plain_from(arr, seg_end, end, F, perf)
            else:
                seg_end = scan.plain_from(arr, pos, end, F, perf)
                if seg_end == pos:
                    if reader.continuing:
                        held = reader.flush()
                        if held:
                            self.imp._consume(reader, [held], self.src)
                            self._sync()
                    R[scan.R_POS] = pos
                    R[scan.R_LINE] = reader.lines
                    st = scan.scan(
                        arr, end, eof, perf, R, F, self.ttab, self.t_cur, self.ntab, self.names,
                        self.out_u, self.out_i,
                    )  # fmt: skip
                    reader.lines = int(R[scan.R_LINE])
                    pos = int(R[scan.R_POS])
                    self._drain()
                    if st == scan.ST_MORE:
                        return pos
                    if st == scan.ST_FULL:
                        continue
                    if st == scan.ST_NAME and self._name(arr, R):
                        continue
                    # ST_SLOW (or a name the table cannot hold): this line goes to Python, with
                    # every line up to the next plain record.
                    seg_end = scan.plain_from(arr, scan.line_end(arr, pos, end), end, F, perf)
            self._slow(buf[pos:seg_end])
            pos = seg_end
        return pos

    def _name(self, arr: np.ndarray, R: np.ndarray) -> bool:
        """Put the event name the fast lane asks for (R_NAME_S..R_NAME_E in ``arr``, with its
        SYS at R_SYS_S..R_SYS_E) in its table; False when the table is full."""
        scan = self.scan
        s, e = int(R[scan.R_NAME_S]), int(R[scan.R_NAME_E])
        system = arr[R[scan.R_SYS_S] : R[scan.R_SYS_E]].tobytes().decode("ascii")
        n = e - s
        count, off = self.name_use
        if 2 * (count + 1) > len(self.ntab) or off + n > len(self.names):
            return False
        name = arr[s:e].tobytes().decode("ascii")
        imp = self.imp
        c = imp._classes.get(name)
        if c is None:
            c = imp._classify(system, name)
        if c == C_MMIO:
            c = C_ASK  # the Python lane reads MMIO records
        elif c in (C_KVM, C_MMU) and not any(k in name for k in KVM_KEYWORDS):
            # Known as KVM from a perf `kvmmmu:` record, but the Python reader only looks at a
            # plain line for KVM records when it names a keyword: let it decide.
            c = C_ASK
        self.names[off : off + n] = arr[s:e]
        scan.name_insert(self.ntab, self.names, off, n, c)
        self.name_use[:] = [count + 1, off + n]
        return True

    def _sync(self) -> None:
        """Bring the fast lane's thread table and vCPUs up to date with the Python path's."""
        imp = self.imp
        if len(imp._t_cur) != self.n_threads:
            self.n_threads = len(imp._t_cur)
            keys = [(int(k), t) for k, t in imp._tindex.items() if _plain_tid(k)]
            cap = 64
            while cap < 2 * len(keys) + 2:
                cap *= 2
            self.ttab = np.full((cap, 2), -1, dtype=np.int64)
            if keys:
                tids, index = zip(*keys, strict=True)
                self.scan.thread_fill(
                    self.ttab, np.array(tids, dtype=np.int64), np.array(index, dtype=np.int64)
                )
        self.t_cur = np.array(imp._t_cur + [-1], dtype=np.int64)
        if imp._spte_rows:
            self.R[self.scan.R_DROP_PF] = 1

    def _drain(self) -> None:
        """Move the fast lane's events into the importer's blocks, after the Python path's."""
        scan = self.scan
        if self.R[scan.R_SPTE_REQ]:
            self.imp._spte_rows = True
        n = int(self.R[scan.R_NOUT])
        if not n:
            return
        imp = self.imp
        imp._flush_block()
        u, i = self.out_u, self.out_i
        imp._add_block(
            (
                u[scan.U_TS, :n].copy(),
                i[scan.I_KIND, :n].astype(np.uint8),
                u[scan.U_GFN, :n].copy(),
                u[scan.U_PFN, :n].copy(),
                i[scan.I_LEVEL, :n].astype(np.uint8),
                i[scan.I_VCPU, :n].copy(),
                i[scan.I_THREAD, :n].copy(),
                np.full(n, self.src, dtype=np.int32),
                i[scan.I_LINE, :n].copy(),
            )
        )
        self.R[scan.R_NOUT] = 0

    def _count(self) -> None:
        """Add the fast lane's counters to the importer's."""
        scan = self.scan
        R = [int(x) for x in self.R]
        imp = self.imp
        st = imp.stats
        st.vcpu_lines += R[scan.R_VCPU_LINES]
        st.event_lines += R[scan.R_EVENT_LINES]
        st.skipped[SKIP_UNKNOWN] = st.skipped.get(SKIP_UNKNOWN, 0) + R[scan.R_UNKNOWN]
        imp._spte_req += R[scan.R_SPTE_REQ]
        imp._pf_with_vcpu += R[scan.R_PF_WITH]
        imp._pf_without_vcpu += R[scan.R_PF_WITHOUT]
        if R[scan.R_SEEN_MMU]:
            imp._seen_mmu = True
        self._count_names()
        for name, reg in (
            ("kvm_tdp_mmu_spte_changed", scan.R_NOEV_CHG),
            ("kvm_mmu_split_huge_page", scan.R_NOEV_SPLIT),
        ):
            if R[reg]:
                st.no_event[name] = st.no_event.get(name, 0) + R[reg]

    def _count_names(self) -> None:
        """Add the fast lane's skipped records per event name to the importer's, and clear
        them (the name table serves the next input too)."""
        ntab = self.ntab
        counts = self.imp.stats.skipped_events
        for slot in np.flatnonzero(ntab[:, 3] > 0).tolist():
            off, n = int(ntab[slot, 1]), int(ntab[slot, 2])
            name = self.names[off : off + n].tobytes().decode("ascii")
            counts[name] = counts.get(name, 0) + int(ntab[slot, 3])
            ntab[slot, 3] = 0


def import_text(
    lines: Iterable[str], options: ImportOptions | None = None, source: str = "<text>"
) -> tuple[TraceHeader, np.ndarray, ImportStats]:
    """Import one recorded trace given as text lines: (header, EVENT_DTYPE array, stats)."""
    imp = Importer(options)
    imp.feed(lines, source)
    return imp.finish()
