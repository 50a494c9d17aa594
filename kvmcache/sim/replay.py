"""Drive a trace's chunks through the jitted kernel and collect a :class:`ReplayResult`.

Replay memory does not grow with trace length: the reader yields one chunk at a time,
the kernel updates fixed state arrays, and only the counters leave the loop.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from kvmcache import params as params_mod
from kvmcache.errors import EXIT_INTERNAL, KvmcacheError
from kvmcache.results import ReplayResult
from kvmcache.sim.counters import (
    COUNTERS,
    DEFAULT_STRATEGY,
    FAULT_LATENCY_BUCKETS,
    FAULT_PAGES_BUCKETS,
)
from kvmcache.trace import TraceSource
from kvmcache.trace.events import TraceHeader

Progress = Callable[[int], None]


def pamt_bytes_peak(
    header: TraceHeader, params: Mapping[str, int | bool], effective: str, counters: dict
) -> int:
    """MODEL.md section 9: PAMT_4K bytes at the peak, static for none, dynamic otherwise."""
    if not header.is_tdx:
        return 0
    from kvmcache.sim.state import kernel_base

    end = max(header.host_pfn_limit, kernel_base(header, params) + int(params["kernel_pages"]))
    host_ranges = -(-end // 512)
    if effective == "none":
        return 8192 * host_ranges
    return 8192 * counters["pamt_pairs_peak"] + 4 * host_ranges


def resolve_params(
    header: TraceHeader,
    config: Mapping[str, int | bool] | None = None,
    overrides: Mapping[str, int | bool] | None = None,
) -> dict[str, int | bool]:
    """Merge defaults < trace params < config file < --set, and validate."""
    trace_params = params_mod.parse_mapping(header.params or {}, header.path or "trace")
    merged = params_mod.merge(trace_params, config, overrides)
    params_mod.check_region(header.host_pfn_limit, merged, header.path or "trace")
    return merged


class _Run:
    """One strategy's state, fed chunk by chunk."""

    def __init__(
        self,
        header: TraceHeader,
        params: dict[str, int | bool],
        alloc: str,
        sample_every: int,
    ) -> None:
        from kvmcache.sim import kernel, state

        self.K = kernel
        self.state_mod = state
        self.header = header
        self.params = params
        self.alloc = alloc
        self.effective = state.effective_strategy(header, alloc)
        self.sample_every = sample_every
        nsamples = 4096 if sample_every else 0
        self.s = state.build(header, params, alloc, sample_every=sample_every, nsamples=nsamples)
        self.samples: list[np.ndarray] = []
        self.elapsed = 0.0

    def feed(self, chunk: np.ndarray, base: int) -> None:
        K = self.K
        t0 = time.perf_counter()
        rec = K.records_u64(chunk)
        start = 0
        while True:
            st = self.s
            status, idx = K.run_chunk(st.m, st.lf, st.u, rec, start)
            start = int(idx)
            if status == K.ST_OK:
                break
            if status == K.ST_GROW_VCPUS:
                self.s = self.state_mod.grow_vcpus(self.s, 2 * int(self.s.m[K.P_NVCPU]))
            elif status == K.ST_GROW_TABLES:
                self.s = self.state_mod.grow_tables(self.s)
            elif status == K.ST_GROW_RANGES:
                self.s = self.state_mod.grow_ranges(self.s)
            elif status == K.ST_GROW_FSTACK:
                self.s = self.state_mod.grow_fstack(self.s)
            elif status == K.ST_SAMPLES_FULL:
                self._flush_samples()
            else:
                self._flush_samples()
                raise KvmcacheError(self._error_message(chunk, start, base))
        self._flush_samples()
        self.elapsed += time.perf_counter() - t0

    def _flush_samples(self) -> None:
        if int(self.s.m[self.K.G_NSAMPLES]):
            self.samples.append(self.state_mod.samples(self.s))

    def _error_message(self, chunk: np.ndarray, i: int, base: int) -> str:
        K = self.K
        code = int(self.s.m[K.G_ERR])
        where = f"{self.header.path or 'trace'}: event {base + i}"
        if code == K.E_PRIVATE_VMX:
            return f"{where}: private fault on a vmx trace"
        if code == K.E_VCPU_LIVE:
            return f"{where}: vcpu_create of vCPU {int(chunk['vcpu'][i])}, which is already live"
        if code == K.E_VM_EXISTS:
            return f"{where}: vm_create when the VM already exists"
        if code == K.E_AFTER_DESTROY:
            return f"{where}: event after vm_destroy (a trace describes one VM)"
        if code == K.E_BAD_VCPU:
            return (
                f"{where}: vcpu {int(chunk['vcpu'][i])} is out of range (must be < {K.MAX_VCPUS})"
            )
        if code == K.E_BAD_OP:
            return f"{where}: unknown op code {int(chunk['op'][i])}"
        if code == K.E_KERNEL_PAGES:
            return (
                f"{where}: the kernel allocation region is exhausted "
                f"(kernel_pages={self.params['kernel_pages']} from pfn "
                f"{int(self.s.m[K.P_KBASE]):#x}); raise kernel_pages"
            )
        raise KvmcacheError(f"{where}: replay kernel failed (code {code})", EXIT_INTERNAL)

    def finish(self) -> ReplayResult:
        K = self.K
        t0 = time.perf_counter()
        if self.sample_every:
            self._flush_samples()
            K.final_sample(self.s.m, self.s.u)
            self._flush_samples()
        err = K.finish(self.s.m, self.s.lf, self.s.u, bool(self.params["teardown"]))
        if self.s.m[K.G_LAYOUT] != K.LAYOUT:
            raise KvmcacheError(
                "the numba cache of kvmcache/sim/kernel.py is stale; "
                "delete kvmcache/sim/__pycache__",
                EXIT_INTERNAL,
            )
        self.elapsed += time.perf_counter() - t0
        if err:
            raise KvmcacheError(
                f"{self.header.path or 'trace'}: teardown: the kernel allocation region is "
                "exhausted; raise kernel_pages"
            )
        C = self.s.m[K.CB : K.CB + len(COUNTERS)]
        counters = {name: int(C[i]) for i, name in enumerate(COUNTERS)}
        U = self.s.u
        for name, i in K.U_SUMS.items():
            counters[name] = (int(U[i + 1]) << 64) | int(U[i])
        for name, i in K.U_MAXES.items():
            counters[name] = int(U[i])
        p = self.params
        counters["pamt_lock_held_ns"] = (
            int(p["ns_pamt_add"]) * counters["pamt_add"]
            + int(p["ns_pamt_remove"]) * counters["pamt_remove"]
        )
        counters["pamt_bytes_peak"] = pamt_bytes_peak(self.header, p, self.effective, counters)
        timeline = np.concatenate(self.samples) if self.samples else None
        notes = []
        if self.effective != self.alloc:
            notes.append(f"{self.alloc} behaves as none on a vmx trace")
        return ReplayResult(
            alloc=self.alloc,
            effective_alloc=self.effective,
            params=dict(self.params),
            header=self.header,
            counters=counters,
            histograms={
                "fault_pages": [int(x) for x in self.s.m[K.HB : K.HB + FAULT_PAGES_BUCKETS]],
                "fault_latency": [
                    int(x) for x in self.s.m[K.HB_LAT : K.HB_LAT + FAULT_LATENCY_BUCKETS]
                ],
            },
            elapsed=self.elapsed,
            timeline=timeline,
            notes=notes,
        )


def _compiled_precheck(validator) -> Callable[[np.ndarray], bool] | None:
    """A compiled pass that clears a whole chunk of valid events at once (the numpy
    validator then only words the message of a chunk that fails it); None when the kernel
    runs as Python (tiny traces: numpy is faster there) or nothing is validated."""
    from kvmcache.sim import kernel as K

    if validator is None or not hasattr(K.chunk_valid, "py_func"):  # not compiled
        return None

    gfn_limit = np.uint64(validator.header.gfn_limit)
    pfn_limit = np.uint64(validator.header.host_pfn_limit)
    tdx = bool(validator.header.is_tdx)

    def check(chunk: np.ndarray) -> bool:
        if validator.destroyed_at is not None and len(chunk):
            return False  # an event after vm_destroy: the validator words it
        return bool(K.chunk_valid(K.records_u64(chunk), gfn_limit, pfn_limit, tdx))

    return check


#: The end of the chunks, handed over by the reader thread after the last chunk.
_END = object()


class _Sink(Protocol):
    """Where the reader thread hands its items: ``(chunk, None)`` for each chunk in order,
    ``(None, error)`` once if reading or validating fails, ``(_END, None)`` at the end.
    ``put`` raises :class:`queue.Full` when it cannot take the item within ``timeout``
    (the reader then checks whether it should stop and tries again); a
    :class:`queue.Queue` is one."""

    def put(self, item: tuple, block: bool = True, timeout: float | None = None) -> None: ...


def _start_reader(
    chunks: Iterable[np.ndarray], validator, digest, sink: _Sink, stop: threading.Event
) -> threading.Thread:
    """Read and validate ``chunks`` on a background thread, handing them to ``sink``.

    ``digest`` (a :class:`~kvmcache.trace.digest.TraceDigest`) is updated with each chunk
    on a thread of its own, right after the chunk is handed over, so the hash of a chunk
    overlaps with the kernel's passes over it; ``_END`` comes only after the last update.
    Once ``stop`` is set the reader hands over nothing more and ends (within 0.1 s while
    the sink is full). Returns the started reader thread.
    """

    def put(item) -> bool:
        while not stop.is_set():
            try:
                sink.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    precheck = _compiled_precheck(validator)

    # The digest has a thread of its own: hashing costs about as much as the kernel's pass,
    # so on the reader thread it would bound the replay (three threads share the cores).
    hq: queue.Queue = queue.Queue(maxsize=2)

    def hash_work() -> None:
        while True:
            try:
                chunk = hq.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if chunk is None:
                return
            if compiled_digest:
                lanes = np.zeros(2, dtype=np.uint64)
                rec = K.records_u64(chunk)
                K.digest_lanes(rec, np.uint64(digest.words), lanes)
                digest.add(int(lanes[0]), int(lanes[1]), len(rec))
            else:
                digest.update(chunk)

    from kvmcache.sim import kernel as K

    compiled_digest = hasattr(K.digest_lanes, "py_func")  # else numpy (the Python kernel)
    hasher = None
    if digest is not None:
        hasher = threading.Thread(target=hash_work, name="kvmcache-digest", daemon=True)
        hasher.start()

    def to_hasher(item) -> bool:
        while not stop.is_set():
            try:
                hq.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        base = 0
        try:
            for chunk in chunks:
                if validator is not None:
                    if precheck is not None and precheck(chunk):
                        validator.note_checked(chunk, base)
                    else:
                        validator.check(chunk, base)
                if not put((chunk, None)):
                    return
                if hasher is not None and not to_hasher(chunk):  # read-only, like the kernel
                    return
                base += len(chunk)
            if hasher is not None:  # the consumer sees the end after the last update
                to_hasher(None)
                hasher.join()
        except BaseException as e:  # handed to the consumer, raised there
            put((None, e))
            return
        put((_END, None))

    worker = threading.Thread(target=work, name="kvmcache-reader", daemon=True)
    worker.start()
    return worker


def _validated_chunks(
    chunks: Iterable[np.ndarray], validator, depth: int = 1, digest=None
) -> Iterator[np.ndarray]:
    """The chunks in order, read and validated on a background thread ``depth`` ahead.

    The kernel releases the GIL, so reading and validating the next chunk overlaps with
    replaying this one. An error (bad input, unreadable file) is raised here when the
    consumer reaches the chunk it belongs to, so earlier chunks are replayed first, as
    without the thread. At most ``depth + 1`` chunks are alive: memory stays constant.
    With ``digest``, the consumer sees the end only after the last chunk is hashed
    (:func:`_start_reader`).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = _start_reader(chunks, validator, digest, q, stop)
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


class _Span:
    """The timestamps of the first and the last event seen in ``chunks``, noted as they
    stream by (on whichever thread reads them)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None

    def note(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for chunk in chunks:
            if len(chunk):
                if self.first is None:
                    self.first = int(chunk["ts"][0])
                self.last = int(chunk["ts"][-1])
            yield chunk


#: Chunks alive between the reader and the strategies of a multi-strategy replay on
#: threads (:class:`_Streams`), besides the one the reader holds: room for the strategies
#: to drift apart so that no thread waits for the slowest at each chunk. 2 already keeps
#: both threads busy on a steady five-strategy compare; 3 leaves slack for a slow read, at
#: one chunk (32 MiB of a binary trace's pages) more.
STREAM_WINDOW = 3


class _Streams:
    """Several strategies replaying one trace's chunks on a few threads, with no barrier
    per chunk.

    Each strategy is a stream over the chunks: it feeds chunk k only after its chunk k-1,
    never two of its chunks at once. A free thread takes the runnable (strategy, next
    chunk) pair of the strategy furthest behind (ties: ``feeds`` order), so the work
    spreads evenly over the threads and the strategies stay within ``window`` chunks of one
    another. The reader thread hands chunks over through :meth:`put`, which blocks while
    ``window`` chunks are alive; a chunk is dropped once every strategy has fed it.

    A failure (a strategy's chunk, or reading and validating chunk k, which counts as
    before any strategy's chunk k) stops new work past it, but the pairs before it still
    run, so the error raised is the one of the earliest chunk and, within it, of the first
    strategy: the one the per-chunk loop would have raised, whatever the threads' timing.
    """

    def __init__(
        self, feeds: Sequence[Callable[[np.ndarray, int], None]], threads: int, window: int
    ) -> None:
        self.feeds = list(feeds)
        self.threads = max(1, min(threads, len(self.feeds)))
        self.window = max(2, window)
        self.cond = threading.Condition()
        self.stop = threading.Event()  # the reader's
        self.chunks: dict[int, tuple[np.ndarray, int]] = {}  # index -> (chunk, base)
        self.received = 0  # chunks handed over by the reader
        self.read_events = 0  # their events
        self.ended = False  # the reader's end came
        self.next = [0] * len(self.feeds)  # each strategy's next chunk
        self.busy = [False] * len(self.feeds)
        self.running = 0
        self.released = 0  # chunks every strategy has fed
        self.done_events = 0  # their events
        self.failures: list[tuple[int, int, BaseException]] = []  # (chunk, strategy, error)
        self.abort = False  # the caller stops (Ctrl-C, its progress callback raised)
        self.max_alive = 0  # the most chunks alive at once (tests)

    # -- reader side (the sink of _start_reader) ---------------------------------------

    def put(self, item: tuple, block: bool = True, timeout: float | None = None) -> None:
        chunk, err = item
        with self.cond:
            if self.stop.is_set():
                raise queue.Full  # the reader then sees stop and ends
            if err is not None:
                self._fail(self.received, -1, err)
            elif chunk is _END:
                self.ended = True
            else:
                if not self.cond.wait_for(self._room, timeout if block else 0):
                    raise queue.Full
                if self.stop.is_set():
                    raise queue.Full
                self.chunks[self.received] = (chunk, self.read_events)
                self.received += 1
                self.read_events += len(chunk)
                self.max_alive = max(self.max_alive, self.received - self.released)
            self.cond.notify_all()

    # -- scheduling (callers hold self.cond) -------------------------------------------

    def _room(self) -> bool:
        return self.received - self.released < self.window or self.stop.is_set()

    def _fail(self, k: int, i: int, err: BaseException) -> None:
        self.failures.append((k, i, err))
        self.stop.set()  # nothing past a failure is needed from the reader

    def _pick(self) -> int | None:
        """The strategy whose next chunk runs next, if any may run now."""
        if self.abort:
            return None
        limit = min((k, i) for k, i, _ in self.failures) if self.failures else None
        best = None
        for i, k in enumerate(self.next):
            if self.busy[i] or k >= self.received:
                continue
            if limit is not None and (k, i) >= limit:
                continue
            if best is None or k < self.next[best]:
                best = i
        return best

    def _settled(self) -> bool:
        """Nothing runs and nothing more will: every stream is through, or stopped."""
        if self.running:
            return False
        if self.abort:
            return True
        if self._pick() is not None:
            return False
        return bool(self.failures) or (self.ended and all(k == self.received for k in self.next))

    def _release(self) -> None:
        low = min(self.next)
        while self.released < low:
            chunk, base = self.chunks.pop(self.released)
            self.released += 1
            self.done_events = base + len(chunk)

    # -- threads -----------------------------------------------------------------------

    def _work(self) -> None:
        cond = self.cond
        with cond:
            while True:
                i = self._pick()
                if i is None:
                    if self.abort or self._settled():
                        cond.notify_all()
                        return
                    cond.wait()
                    continue
                k = self.next[i]
                chunk, base = self.chunks[k]
                self.busy[i] = True
                self.running += 1
                err = None
                cond.release()
                try:
                    self.feeds[i](chunk, base)
                except BaseException as e:  # raised by the caller, earliest first
                    err = e
                finally:
                    del chunk
                    cond.acquire()
                self.busy[i] = False
                self.running -= 1
                if err is None:
                    self.next[i] = k + 1
                    self._release()
                else:
                    self._fail(k, i, err)
                cond.notify_all()

    def run(
        self, chunks: Iterable[np.ndarray], validator, digest, progress: Progress | None
    ) -> None:
        """Replay every chunk of ``chunks`` through every feed; ``progress`` gets the events
        every strategy has fed, on the calling thread. Raises the earliest failure."""
        reader = None
        workers: list[threading.Thread] = []
        reported = 0
        try:
            reader = _start_reader(chunks, validator, digest, self, self.stop)
            for n in range(self.threads):
                w = threading.Thread(target=self._work, name=f"kvmcache-strategy-{n}", daemon=True)
                workers.append(w)
                w.start()
            while True:
                with self.cond:
                    while not self._settled() and self.done_events == reported:
                        self.cond.wait()
                    settled = self._settled()
                    done = self.done_events
                if progress is not None and done > reported:
                    progress(done)
                reported = done
                if settled:
                    break
        except BaseException:  # Ctrl-C, or progress raised: stop at the chunks being fed
            with self.cond:
                self.abort = True
                self.stop.set()
                self.cond.notify_all()
            raise
        finally:
            self.stop.set()
            for w in workers:  # each ends after the chunk it is feeding, if any
                if w.ident is not None:  # started (Ctrl-C may come during start)
                    w.join()
            if reader is not None:
                reader.join(timeout=5)
        if self.failures:
            raise min(self.failures, key=lambda f: (f[0], f[1]))[2]


def replay_many(
    source: TraceSource,
    allocs: Sequence[str],
    overrides: Mapping[str, int | bool] | None = None,
    *,
    config: Mapping[str, int | bool] | None = None,
    params: Mapping[str, int | bool] | None = None,
    validate: bool = True,
    progress: Progress | None = None,
    timeline_every: int = 0,
    threads: int = 0,
    digest: bool = False,
) -> list[ReplayResult]:
    """Replay one trace under several strategies in one pass over its events.

    Each chunk is read (and validated) once and then run through one kernel state per
    strategy; with ``threads`` > 1 and several strategies, the strategies run on that many
    threads (the kernel releases the GIL), each at its own pace within a few chunks of the
    others (:class:`_Streams`), with the same results and errors as one after the other. With ``digest``, each result carries the trace's
    content digest (:mod:`kvmcache.trace.digest`), hashed on a thread of its own as the
    chunks stream by; the commands ask for it when a report or a gate uses it (hashing
    every record word is extra work, so library callers opt in).
    """
    header = source.header
    merged = dict(params) if params is not None else resolve_params(header, config, overrides)
    runs = [_Run(header, merged, a, timeline_every) for a in allocs]
    validator = None
    if validate:
        from kvmcache.trace.validate import Validator

        validator = Validator(header)
    from kvmcache.trace.digest import TraceDigest

    hasher = TraceDigest(header) if digest else None
    span = _Span()
    chunks = span.note(source.chunks())
    if threads > 1 and len(runs) > 1:
        _Streams([r.feed for r in runs], threads, STREAM_WINDOW).run(
            chunks, validator, hasher, progress
        )
    else:
        base = 0
        for chunk in _validated_chunks(chunks, validator, digest=hasher):
            for r in runs:
                r.feed(chunk, base)
            base += len(chunk)
            if progress is not None:
                progress(base)
    results = [r.finish() for r in runs]
    trace_digest = hasher.hexdigest() if hasher is not None else None
    for res in results:
        res.ts_first, res.ts_last = span.first, span.last
        res.trace_digest = trace_digest
    return results


def replay(
    source: TraceSource,
    alloc: str = DEFAULT_STRATEGY,
    overrides: Mapping[str, int | bool] | None = None,
    **kwargs,
) -> ReplayResult:
    """Replay one trace under one strategy (see :func:`replay_many` for the options)."""
    return replay_many(source, [alloc], overrides, **kwargs)[0]


def replay_events(
    header: TraceHeader,
    events: np.ndarray,
    alloc: str = DEFAULT_STRATEGY,
    overrides: Mapping[str, int | bool] | None = None,
    *,
    chunk_events: int = 1 << 20,
    **kwargs,
) -> ReplayResult:
    """Replay an in-memory event array (tests, synth, benchmarks)."""
    from kvmcache.trace import InMemoryTrace

    return replay(InMemoryTrace(header, events, chunk_events), alloc, overrides, **kwargs)


def all_strategies_for(header: TraceHeader) -> list[str]:
    """Every strategy meaningful for the trace: all five on tdx, only none on vmx."""
    from kvmcache.sim.counters import STRATEGIES

    return list(STRATEGIES) if header.is_tdx else ["none"]
