"""Drive a trace's chunks through the jitted kernel and collect a :class:`ReplayResult`.

Replay memory does not grow with trace length: the reader yields one chunk at a time,
the kernel updates fixed state arrays, and only the counters leave the loop.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

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


def _validated_chunks(
    chunks: Iterable[np.ndarray], validator, depth: int = 1, digest=None
) -> Iterator[np.ndarray]:
    """The chunks in order, read and validated on a background thread ``depth`` ahead.

    The kernel releases the GIL, so reading and validating the next chunk overlaps with
    replaying this one. An error (bad input, unreadable file) is raised here when the
    consumer reaches the chunk it belongs to, so earlier chunks are replayed first, as
    without the thread. At most ``depth + 1`` chunks are alive: memory stays constant.
    ``digest`` (a :class:`~kvmcache.trace.digest.TraceDigest`) is updated with each chunk
    on the same thread, right after handing it over, so the hash of a chunk overlaps with
    the kernel's pass over it; the consumer sees the end only after the last update.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
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
        put((done, None))

    worker = threading.Thread(target=work, name="kvmcache-reader", daemon=True)
    worker.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


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
    strategy; with ``threads`` > 1 the strategies of a chunk run in parallel threads
    (the kernel releases the GIL). With ``digest``, each result carries the trace's
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
    pool = ThreadPoolExecutor(threads) if threads > 1 and len(runs) > 1 else None
    base = 0
    ts_first = ts_last = None
    try:
        for chunk in _validated_chunks(source.chunks(), validator, digest=hasher):
            if len(chunk):
                if ts_first is None:
                    ts_first = int(chunk["ts"][0])
                ts_last = int(chunk["ts"][-1])
            if pool is not None:
                futures = [pool.submit(r.feed, chunk, base) for r in runs]
                for f in futures:
                    f.result()
            else:
                for r in runs:
                    r.feed(chunk, base)
            base += len(chunk)
            if progress is not None:
                progress(base)
    finally:
        if pool is not None:
            pool.shutdown()
    results = [r.finish() for r in runs]
    trace_digest = hasher.hexdigest() if hasher is not None else None
    for res in results:
        res.ts_first, res.ts_last = ts_first, ts_last
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
