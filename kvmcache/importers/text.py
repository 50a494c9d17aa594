"""Line parsing for recorded kernel traces: raw ftrace, `trace-cmd report` and `perf script` text.

This module only splits text into records (thread, CPU, timestamp, event name, event text)
and classifies the lines that are not records; what a record means for the model is
decided in :mod:`kvmcache.importers.mapping`. See docs/import.md for every rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from kvmcache.errors import KvmcacheError

PRODUCERS = ("ftrace", "trace-cmd", "perf-script")
FORMATS = ("auto",) + PRODUCERS

# Skip reasons (the keys of ImportStats.skipped, in the order the summary prints them).
SKIP_UNKNOWN = "unknown event"
SKIP_UNPARSEABLE = "unparseable"
SKIP_STACK = "stack trace"
SKIP_CONTINUATION = "wrapped/continuation"
SKIP_HEADER = "header/comment"
SKIP_OTHER_VM = "other VM"  # events of a VMM process not imported (mapping, --vm)
SKIP_REASONS = (SKIP_UNKNOWN, SKIP_UNPARSEABLE, SKIP_STACK, SKIP_CONTINUATION, SKIP_HEADER)

#: A record as yielded by :meth:`LineReader.batches`: (line number, fields), where fields is
#: (comm, thread id, cpu, flags, seconds, fraction, system, event, vcpu, text); ``vcpu`` is
#: the N of a text that starts with `vcpu N`, else None. ``comm`` and
#: ``thread id`` are None when the producer dropped them (perf -F); ``flags`` is None without
#: a FLAGS column; ``system`` is "" or None when the line does not name it (ftrace,
#: trace-cmd); ``event`` is None for a record without an ``event:`` field (function tracer
#: lines). Fields are strings, unconverted.
Record = tuple[int, tuple]

# The record header of each layout; groups, identical in both: comm, thread id, cpu, flags,
# seconds, fraction, system, event, vcpu (of a text starting `vcpu N`, by lookahead), text.
# The part up to the CPU column is an atomic group: once `[CPU]` is found, a failure later
# in the line does not retry other splits of COMM (which would cost time quadratic in the
# line length on every line that is not a record).
# ftrace / trace-cmd: `COMM-PID [(TGID)] [CPU] [FLAGS] SECONDS.FRACTION: EVENT: TEXT`; COMM
# is split from PID at the last dash before `[` (the lazy COMM stops at the first dash that
# is followed by digits and the CPU column, i.e. the last dash, since a PID is digits only).
_FTRACE_HEAD = re.compile(
    r"(?>[ \t]*([^\[]*?)-(\d+)[ \t]+(?:\([ \t]*[\d-]*[ \t]*\)[ \t]+)?\[(\d+)\])"
    r"[ \t]+(?:(\S{4,5})[ \t]+)?(\d+)\.(\d+):[ \t]*(?:()([\w.-]+):)?[ \t]*"
    r"(?:(?=vcpu (\d+)))?(.*)"
)
# perf script: `[COMM] [[PID/]TID] [CPU] SECONDS.FRACTION: [PERIOD] SYS:EVENT: TEXT`; COMM
# may hold blanks (it is the shortest text, starting non-blank, that leaves a TID or the CPU
# column after its blanks); `sys:event` is right-aligned.
_PERF_HEAD = re.compile(
    r"(?>[ \t]*(?:(\S[^\[]*?)[ \t]+(?=\d|\[))??(?:(?:\d+/)?(\d+)[ \t]+)?\[(\d+)\])"
    r"[ \t]+()(\d+)\.(\d+):[ \t]+(?:\d+[ \t]+)?(?:(\w+):)?([\w.-]+):[ \t]*"
    r"(?:(?=vcpu (\d+)))?(.*)"
)
# Any record header (either layout), no captures: the fast path for lines of other events.
_ANY_HEAD = re.compile(r"[^\[]*\[\d+\][ \t]+(?:\S{4,5}[ \t]+)?\d+\.\d+:")
# The event part of a record whose header line was wrapped right after the timestamp.
_EVENT_PART = re.compile(r"(?:(\w+):)?([\w.-]+):\s*(?:(?=vcpu (\d+)))?(.*)")
# A perf callchain line: `\t    ffffffff810551b8 func+0x18 ([kernel.kallsyms])`.
_PERF_CALLCHAIN = re.compile(r"[0-9a-f]{6,16} .+ \((?:\[[\w.]+\]|/\S*)\)$")
_VCPU = re.compile(r"vcpu (\d+)")
_ELISION = re.compile(r"(?:\.{3,}|\[\.\.\.\]|\[snip\]|<snip>)$", re.IGNORECASE)
_CPU_EMPTY = re.compile(r"CPU\s*\d+ is empty$")
_LOST = re.compile(r"CPU:?\s*\d+\s*\[(?:LOST \d+ EVENTS|\d+ EVENTS DROPPED)\]")

_STACK_EVENTS = frozenset(("kernel_stack", "user_stack"))
#: A line naming none of these is never read as a KVM record (the reader's fast path below).
KVM_KEYWORDS = ("kvm", "mmio_", "_page_fault")
_STACK_RECORD = re.compile(r"(?:kernel|user)_stack:|<(?:user )?stack trace>")


class LineReader:
    """Split one input's lines into records, joining wrapped lines and counting skipped ones.

    ``skipped`` maps each reason in :data:`SKIP_REASONS` to a line count; ``lines`` is the
    number of lines read; ``producer`` is the producer detected (or forced) for this input.
    """

    def __init__(self, fmt: str = "auto", *, strict: bool = False, source: str = "<text>") -> None:
        if fmt not in FORMATS:
            raise KvmcacheError(f"unknown trace format {fmt!r} (one of {', '.join(FORMATS)})")
        self.fmt = fmt
        self.strict = strict
        self.source = source
        self.producer: str | None = None if fmt == "auto" else fmt
        self.lines = 0
        self.lost_markers = 0
        self.skipped: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self._saw_cpus = False
        #: thread id -> its process id (the ftrace `(TGID)` column, perf's `PID/TID`) or None,
        #: from the first KVM record of each thread id.
        self.pids: dict[str | None, str | None] = {}
        # Continuation state between calls of batches(final=False): the last line was a KVM
        # record (held back in ``_pending``: continuation lines may still extend it) or a
        # record of another event; ``_base`` is the held record as first read, ``_extra``
        # its continuation lines so far.
        self._last_kvm = False
        self._last_foreign = False
        self._pending: Record | None = None
        self._base: Record | None = None
        self._extra: list[str] = []
        if fmt == "perf-script":
            self._heads: tuple[re.Pattern, ...] = (_PERF_HEAD,)
        elif fmt in ("ftrace", "trace-cmd"):
            self._heads = (_FTRACE_HEAD,)
        else:
            self._heads = (_FTRACE_HEAD, _PERF_HEAD)

    def unparseable(self, lineno: int, what: str) -> None:
        """Count an unparseable line; with ``strict`` it is an error naming the line."""
        self.skipped[SKIP_UNPARSEABLE] += 1
        if self.strict:
            raise KvmcacheError(f"{self.source}:{lineno}: unparseable {what}")

    def batches(
        self, lines: Iterable[str], size: int = 4096, final: bool = True
    ) -> Iterator[list[Record]]:
        """Yield the KVM records of ``lines`` in order, in lists of up to ``size``, each with its
        continuation lines joined; count every other line (records of other events included)
        in ``skipped``. Batching keeps the generator's cost off the per-line path.

        With ``final=False`` more lines follow in a later call: a KVM record at the end is held
        back (the next lines may continue it) and the continuation state carries over;
        :meth:`flush` returns the held record when the caller knows that a new record follows.
        """
        first_rx, *others = self._heads
        first = first_rx.match
        other = others[0].match if others else None
        any_head = _ANY_HEAD.match
        finish = self._finish
        pids = self.pids
        batch: list[Record] = [self._pending] if self._pending is not None else []
        append = batch.append
        # The last line was a KVM record (the last in ``batch``: continuations extend it) or a
        # record of another event (continuations are skipped); ``base`` is that KVM record
        # as first read and ``extra`` its continuation lines so far.
        last_kvm, last_foreign = self._last_kvm, self._last_foreign
        base, extra = self._base, self._extra
        self._pending = None
        start = self.lines + 1
        lineno = self.lines
        n_cont = n_header = n_stack = n_unknown = 0
        try:
            for lineno, line in enumerate(lines, start):
                # Fast path: a line that names no KVM event is not a record we map (the test
                # of KVM_KEYWORDS, written out).
                m = mq = None
                if "kvm" in line or "mmio_" in line or "_page_fault" in line:
                    m = first(line)
                    if m is None and other is not None:
                        m = other(line)
                        if m is not None:
                            first, other = other, first
                            self._heads = self._heads[::-1]
                if m is None and "[" in line:
                    mq = any_head(line)
                    if mq is not None and not line[mq.end() :].strip():
                        # A header wrapped right after its timestamp: its event is on the next
                        # line, so it may be a KVM record.
                        m = first(line) or (other(line) if other is not None else None)
                if m is not None:
                    if len(batch) >= size:
                        yield batch
                        batch = []
                        append = batch.append
                    g = m.groups()
                    append((lineno, g))
                    if g[1] not in pids:
                        pids[g[1]] = _process_id(line)
                    last_kvm = True
                    last_foreign = False
                    if extra:
                        extra = []
                    if self.producer is None:
                        self._detect(self._heads[0], batch[-1][1])
                    continue
                if mq is not None:  # a record of another event
                    last_kvm = False
                    last_foreign = True
                    if "stack" in line and _STACK_RECORD.search(line):
                        n_stack += 1
                    else:
                        n_unknown += 1
                    continue
                s = line.strip()
                kind = self._classify(s)
                if kind is None:
                    if last_kvm:
                        if not extra:
                            base = batch[-1]
                        extra.append(s)
                        batch[-1] = finish(base, extra)  # type: ignore[arg-type]
                        n_cont += 1
                    elif last_foreign:
                        n_cont += 1
                    else:
                        if self.strict and batch:
                            # The records before this line go first: with --strict the error
                            # names the first unparseable line, which may be among them.
                            yield batch
                            batch = []
                            append = batch.append
                        self.unparseable(lineno, f"line (not a trace record): {_excerpt(s)}")
                    continue
                last_kvm = last_foreign = False
                if kind is SKIP_STACK:
                    n_stack += 1
                else:
                    n_header += 1
            if not final and last_kvm:
                self._pending = batch.pop()
                self._base, self._extra = base, extra
            else:
                self._base, self._extra = None, []
            self._last_kvm, self._last_foreign = last_kvm, last_foreign
            if batch:
                yield batch
            if final:
                self._last_kvm = self._last_foreign = False
        finally:
            self.lines = lineno
            self.skipped[SKIP_CONTINUATION] += n_cont
            self.skipped[SKIP_HEADER] += n_header
            self.skipped[SKIP_STACK] += n_stack
            self.skipped[SKIP_UNKNOWN] += n_unknown

    def flush(self) -> list[Record]:
        """End the continuation state (a new record follows): the held-back record, if any."""
        held = [self._pending] if self._pending is not None else []
        self._pending = self._base = None
        self._extra = []
        self._last_kvm = self._last_foreign = False
        return held

    @property
    def ftrace_first(self) -> bool:
        """True while a line is tried as an ftrace / trace-cmd record before a perf one."""
        return self._heads[0] is _FTRACE_HEAD

    @property
    def continuing(self) -> bool:
        """True while a next line could still continue an earlier record."""
        return self._last_kvm or self._last_foreign

    def records(self, lines: Iterable[str]) -> Iterator[Record]:
        """The records of :meth:`batches`, one by one."""
        for batch in self.batches(lines):
            yield from batch

    def _detect(self, head: re.Pattern, fields: tuple) -> None:
        if head is _PERF_HEAD:
            self.producer = "perf-script"
        elif fields[3] and not self._saw_cpus:
            self.producer = "ftrace"
        else:
            self.producer = "trace-cmd"

    def _classify(self, s: str) -> str | None:
        """The skip reason of a line that is not a record header, or None (a continuation)."""
        if not s or s[0] == "#" or s == "--":
            return SKIP_HEADER
        if s.startswith(("=>", "<stack trace>", "<user stack trace>")):
            return SKIP_STACK
        if s.startswith("cpus="):
            self._saw_cpus = True
            return SKIP_HEADER
        if s.startswith("version =") or _CPU_EMPTY.match(s) or _ELISION.match(s):
            return SKIP_HEADER
        if _LOST.match(s):
            self.lost_markers += 1
            return SKIP_HEADER
        if _PERF_CALLCHAIN.match(s):
            return SKIP_STACK
        return None

    def _finish(self, rec: Record, extra: list[str]) -> Record:
        """``rec`` with continuation lines joined to its text (one blank between)."""
        lineno, (comm, tid, cpu, flags, sec, frac, system, event, vcpu, text) = rec
        text = " ".join([text.rstrip(), *extra]) if text.strip() else " ".join(extra)
        if event is None:
            m = _EVENT_PART.match(text)
            if m is not None:
                system, event, vcpu, text = m.groups()
        elif vcpu is None:  # `vcpu N` itself may have been cut by the wrapping
            m = _VCPU.match(text)
            if m is not None:
                vcpu = m.group(1)
        return lineno, (comm, tid, cpu, flags, sec, frac, system, event, vcpu, text)

    @staticmethod
    def is_stack(event: str | None, text: str) -> bool:
        """True for a stack-trace record (`<stack trace>`, trace-cmd's kernel_stack event)."""
        if event in _STACK_EVENTS:
            return True
        return text.startswith(("<stack trace>", "<user stack trace>"))


#: The process of a record: ftrace's `-PID (TGID) [CPU]` or perf's `PID/TID [CPU]`.
_PROCESS = re.compile(r"-\d+[ \t]+\([ \t]*(\d+)[ \t]*\)[ \t]+\[\d+\]|(\d+)/\d+[ \t]+\[\d+\]")


def _process_id(line: str) -> str | None:
    """The TGID / PID a record line shows, or None."""
    m = _PROCESS.search(line)
    if m is None:
        return None
    return m.group(1) or m.group(2)


def _excerpt(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")
