"""Grids of replays: parameter points x strategies x traces, run in-process (on one thread or
several) or on a Dask cluster, with the Pareto front of each trace marked.

One unit of work is (trace, grid point): :func:`run_unit` opens the trace by path (a binary
trace is memory-mapped where it runs, never shipped), merges the parameters exactly as
``kvmcache replay`` does (defaults < trace params < config < --set < grid point) and replays
every strategy of the unit in one pass with :func:`replay_many`. A point whose parameters are
invalid, or whose replay stops with a user error, becomes an invalid :class:`PointResult`
carrying the reason instead of failing the sweep.
"""

from __future__ import annotations

import itertools
import os
import threading
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kvmcache import params as params_mod
from kvmcache.errors import EXIT_USAGE, KvmcacheError
from kvmcache.limits import SCHEDULER_TIMEOUT, excerpt
from kvmcache.results import (
    SPINLOCK_COST,
    ReplayResult,
    metric_names,
    metric_value,
)

Value = int | bool
Point = dict[str, Value]
#: Called with the number of points (trace x strategy x grid point) just finished.
OnDone = Callable[[int], None]

#: The default Pareto objectives, all minimised: idle cache pages at peak, allocations
#: under mmu_lock plus fault retries (the spinlock cost), pages allocated, and the time
#: faults took (fault_latency_ns, MODEL.md section 8: the sum, so the mean over one trace's
#: faults). Memory grows with cache capacity while fault time falls, so the time objective is
#: what gives a capacity grid a front of more than its smallest point. ``sweep --pareto``
#: chooses others (any counter or derived metric, e.g. fault_latency_p99_ns).
PARETO_OBJECTIVES: tuple[str, ...] = (
    "cache_pages_idle_peak",
    SPINLOCK_COST,
    "pages_allocated",
    "fault_latency_ns",
)
MAX_AXIS_VALUES = 10_000
MAX_POINTS = 1_000_000
DASK_HINT = "pip install 'kvmcache[dask]'"


# --------------------------------------------------------------------------- grid


def _parse_range(name: str, item: str, where: str) -> list[Value]:
    parts = item.split(":")
    if len(parts) not in (2, 3) or any(not p.strip() for p in parts):
        raise KvmcacheError(
            f"{where}: bad range {excerpt(item)}: expected START:STOP or START:STOP:STEP"
        )
    if params_mod.PARAM_BY_NAME[name].is_bool:
        raise KvmcacheError(f"{where}: {name} is a boolean; a range needs an integer parameter")
    start, stop = (params_mod.parse_value(name, p, where) for p in parts[:2])
    step = params_mod.parse_value(name, parts[2], where) if len(parts) == 3 else 1
    assert isinstance(start, int) and isinstance(stop, int) and isinstance(step, int)
    if step < 1:
        raise KvmcacheError(f"{where}: bad range {excerpt(item)}: the step must be >= 1")
    if start > stop:
        raise KvmcacheError(f"{where}: bad range {excerpt(item)}: START must be <= STOP")
    if (stop - start) // step + 1 > MAX_AXIS_VALUES:
        raise KvmcacheError(
            f"{where}: range {excerpt(item)} has more than {MAX_AXIS_VALUES} values"
        )
    return list(range(start, stop + 1, step))


def parse_grid_spec(spec: str) -> tuple[str, list[Value]]:
    """One ``--grid NAME=V1,V2,...`` into (name, values).

    Each comma-separated item is a value (any form ``--set`` accepts) or a range
    ``START:STOP[:STEP]`` (integers, STEP default 1) that includes STOP when it lands on
    it: ``8:64:8`` is 8, 16, ..., 64 and ``8:60:8`` stops at 56. Repeated values are kept
    once, in first-seen order. A bad spec raises :class:`KvmcacheError` (exit 2).
    """
    where = f"--grid {excerpt(spec)}"
    if "=" not in spec:
        raise KvmcacheError(f"{where}: expected NAME=V1,V2,... or NAME=START:STOP[:STEP]")
    name, text = (s.strip() for s in spec.split("=", 1))
    if name not in params_mod.PARAM_BY_NAME:
        known = ", ".join(params_mod.PARAM_BY_NAME)
        raise KvmcacheError(f"{where}: unknown parameter {excerpt(name)} (known: {known})")
    values: list[Value] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise KvmcacheError(f"{where}: empty value (expected NAME=V1,V2,...)")
        if ":" in item:
            values.extend(_parse_range(name, item, where))
        else:
            values.append(params_mod.parse_value(name, item, where))
        if len(values) > MAX_AXIS_VALUES:
            raise KvmcacheError(f"{where}: more than {MAX_AXIS_VALUES} values")
    unique: list[Value] = []
    for v in values:
        if not any(v == u and type(v) is type(u) for u in unique):
            unique.append(v)
    return name, unique


def parse_grid(specs: Iterable[str]) -> dict[str, list[Value]]:
    """Every ``--grid`` option, in order; a parameter given twice is an error."""
    grid: dict[str, list[Value]] = {}
    for spec in specs:
        name, values = parse_grid_spec(spec)
        if name in grid:
            raise KvmcacheError(f"--grid {name} is given twice; list all its values in one --grid")
        grid[name] = values
    return grid


def expand_points(grid: Mapping[str, Sequence[Value]]) -> list[Point]:
    """The cartesian product of the grid, first axis slowest; no axis gives one empty point."""
    names = list(grid)
    total = 1
    for n in names:
        total *= len(grid[n])
    if total > MAX_POINTS:
        raise KvmcacheError(f"the grid has {total:,} points (at most {MAX_POINTS:,})")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


# --------------------------------------------------------------------------- results


@dataclass
class PointResult:
    """One (trace, strategy, grid point): a replay, or the reason it could not run."""

    trace: str  # the path as the user gave it
    alloc: str
    point: Point  # the grid values of this point
    params: dict[str, Value]  # the merged parameters (not validated when invalid)
    result: ReplayResult | None = None
    error: str | None = None
    pareto: bool = False
    # canonical position: trace, grid point, strategy
    trace_index: int = 0
    point_index: int = 0
    alloc_index: int = 0

    @property
    def valid(self) -> bool:
        return self.result is not None

    @property
    def counters(self) -> dict[str, int]:
        return self.result.counters if self.result is not None else {}

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.trace_index, self.point_index, self.alloc_index)


@dataclass
class SweepResult:
    """Every point of a sweep in canonical order (trace, grid point, strategy)."""

    traces: list[str]
    allocs: dict[str, list[str]]  # trace -> strategies run on it
    grid: dict[str, list[Value]]
    points: list[PointResult] = field(default_factory=list)
    objectives: tuple[str, ...] = PARETO_OBJECTIVES  # what the Pareto front minimises

    @property
    def valid(self) -> list[PointResult]:
        return [p for p in self.points if p.valid]

    @property
    def invalid(self) -> list[PointResult]:
        return [p for p in self.points if not p.valid]


# --------------------------------------------------------------------------- Pareto


def point_metric(p: PointResult, name: str) -> int | None:
    """A counter or derived metric (:func:`~kvmcache.results.metric_value`) of a valid point."""
    if p.result is None:
        return None
    return metric_value(name, p.result.counters, p.result.histograms)


def objectives(p: PointResult, names: Sequence[str] = PARETO_OBJECTIVES) -> tuple[int, ...]:
    """The minimised figures of one valid point (a missing one counts as 0)."""
    return tuple(point_metric(p, n) or 0 for n in names)


def check_metric(name: str, option: str) -> str:
    """A sort key, objective or axis name: a counter or derived metric, else a usage error
    listing them all."""
    import difflib

    names = metric_names()
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise KvmcacheError(
        f"{option} {name!r}: unknown counter{hint}; valid: {', '.join(repr(n) if ' ' in n else n for n in names)}"
    )


def parse_objectives(names: Sequence[str]) -> tuple[str, ...]:
    """``--pareto`` names (each a counter or derived metric, once), or the defaults."""
    out: list[str] = []
    for n in names:
        n = check_metric(n.strip(), "--pareto")
        if n not in out:
            out.append(n)
    return tuple(out) or PARETO_OBJECTIVES


def varying_objectives(points: Sequence[PointResult], names: Sequence[str]) -> list[str]:
    """The objectives whose value differs between the valid points given (one trace's):
    an objective constant over the grid does not change the front."""
    return [n for n in names if len({point_metric(p, n) for p in points if p.valid}) > 1]


def pareto_flags(vectors: Sequence[Sequence[int]]) -> list[bool]:
    """True for each vector no other vector dominates (<= everywhere, < somewhere).

    Equal vectors do not dominate each other, so ties are all on the front. Sorting
    lexicographically puts every dominator before what it dominates, so each vector is
    checked only against the front found so far.
    """
    order = sorted(range(len(vectors)), key=lambda i: tuple(vectors[i]))
    front: list[tuple[int, ...]] = []
    flags = [False] * len(vectors)
    for i in order:
        v = tuple(vectors[i])
        if any(f != v and all(a <= b for a, b in zip(f, v, strict=True)) for f in front):
            continue
        flags[i] = True
        front.append(v)
    return flags


def mark_pareto(points: Sequence[PointResult], names: Sequence[str] = PARETO_OBJECTIVES) -> None:
    """Set ``pareto`` on every point: the front of each trace among its valid points,
    minimising the objectives ``names``."""
    by_trace: dict[int, list[PointResult]] = {}
    for p in points:
        p.pareto = False
        if p.valid:
            by_trace.setdefault(p.trace_index, []).append(p)
    for group in by_trace.values():
        flags = pareto_flags([objectives(p, names) for p in group])
        for p, flag in zip(group, flags, strict=True):
            p.pareto = flag


def sort_key(name: str) -> tuple[str, bool]:
    """``--sort COUNTER`` (ascending) or ``-COUNTER`` (descending): (name, descending).
    Any counter or derived metric (fault_latency_p99_ns, ...) is accepted."""
    desc = name.startswith("-")
    counter = name[1:] if desc else name
    return check_metric(counter, "--sort"), desc


def rank(points: Iterable[PointResult], by: str = "cache_pages_idle_peak") -> list[PointResult]:
    """Valid points ordered by a counter or derived metric (ties in canonical order; a point
    without the figure after those with it), invalid ones last."""
    counter, desc = sort_key(by)
    pts = sorted(points, key=lambda p: p.order)
    valid = [p for p in pts if p.valid]
    known = [p for p in valid if point_metric(p, counter) is not None]
    unknown = [p for p in valid if point_metric(p, counter) is None]
    known.sort(key=lambda p: point_metric(p, counter) or 0, reverse=desc)
    return known + unknown + [p for p in pts if not p.valid]


# --------------------------------------------------------------------------- one unit


@dataclass(frozen=True)
class Unit:
    """One (trace, grid point) with every strategy to replay on it; picklable."""

    path: str  # absolute path, opened where the unit runs
    display: str  # the path as the user gave it, for reports
    trace_index: int
    point_index: int
    point: Point
    allocs: tuple[str, ...]
    config: dict[str, Value]
    overrides: dict[str, Value]
    strict: bool = False


_YAML_CACHE: dict[tuple[str, int, int], tuple[Any, Any]] = {}
_YAML_LOCK = threading.Lock()


def _quiet(_msg: str) -> None:
    """Workers do not repeat the warnings the parent printed when it checked the trace."""


def _open(path: str, strict: bool, display: str):
    """Open a trace for one unit: binary memory-mapped by path, YAML parsed once per process."""
    from kvmcache.trace import InMemoryTrace, detect_format, open_trace

    if detect_format(path) == "yaml":
        from kvmcache.trace.yamlfmt import read_yaml

        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        with _YAML_LOCK:
            cached = _YAML_CACHE.get(key)
        if cached is None:
            cached = read_yaml(path)
            with _YAML_LOCK:
                if len(_YAML_CACHE) > 64:
                    _YAML_CACHE.clear()
                _YAML_CACHE[key] = cached
        header, events = cached
        return InMemoryTrace(replace(header, path=display, params=dict(header.params)), events)
    source = open_trace(path, strict=strict, warn=_quiet)
    source.header.path = display
    return source


def run_unit(unit: Unit, cancel: threading.Event | None = None) -> list[PointResult]:
    """Replay every strategy of one (trace, grid point); user errors become invalid points.
    With ``cancel``, the replay raises :class:`_Cancelled` at the first chunk after it is set."""
    from kvmcache.sim.replay import replay_many, resolve_params

    def check(_done: int) -> None:
        if cancel is not None and cancel.is_set():
            raise _Cancelled

    def results(
        params: dict[str, Value], res: list[ReplayResult] | None, error: str | None
    ) -> list[PointResult]:
        return [
            PointResult(
                trace=unit.display,
                alloc=alloc,
                point=dict(unit.point),
                params=dict(params),
                result=res[i] if res is not None else None,
                error=error,
                trace_index=unit.trace_index,
                point_index=unit.point_index,
                alloc_index=i,
            )
            for i, alloc in enumerate(unit.allocs)
        ]

    layers = {**unit.config, **unit.overrides, **unit.point}
    merged: dict[str, Value] = {**params_mod.DEFAULTS, **layers}
    try:
        source = _open(unit.path, unit.strict, unit.display)
        trace_params = params_mod.parse_mapping(source.header.params or {}, unit.display)
        merged = {**params_mod.DEFAULTS, **trace_params, **layers}
        params = resolve_params(source.header, unit.config, {**unit.overrides, **unit.point})
        res = replay_many(source, list(unit.allocs), params=params, progress=check, digest=False)
    except KvmcacheError as e:
        if e.exit_code != EXIT_USAGE:  # not about this point (a stale JIT cache, ...)
            raise UnitFailed(e.message, e.exit_code) from None
        return results(merged, None, e.message)
    return results(params, res, None)


class UnitFailed(Exception):
    """A non-usage :class:`KvmcacheError` inside a unit, in a form that pickles with its
    exit code (it crosses the Dask boundary); the sweep re-raises it as such."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message, exit_code)
        self.message = message
        self.exit_code = exit_code


def _collect(get: Callable[[], list[PointResult]]) -> list[PointResult]:
    try:
        return get()
    except UnitFailed as e:
        raise KvmcacheError(e.message, e.exit_code) from None


class _Cancelled(Exception):
    """Raised between two chunks of a unit's replay once the sweep is stopping."""


def _run_unit_unless(cancel: threading.Event, unit: Unit) -> list[PointResult]:
    """:func:`run_unit` on a thread, unless the sweep is stopping; a unit that fails stops
    it at once (before this thread can take another unit)."""
    if cancel.is_set():
        raise _Cancelled
    try:
        return run_unit(unit, cancel)
    except BaseException:
        cancel.set()
        raise


# --------------------------------------------------------------------------- backends


def run_local(units: Sequence[Unit], on_done: OnDone | None = None) -> list[PointResult]:
    """Run every unit in this process, in order."""
    out: list[PointResult] = []
    for u in units:
        res = _collect(lambda u=u: run_unit(u))
        out.extend(res)
        if on_done is not None:
            on_done(len(res))
    return out


def run_threads(
    units: Sequence[Unit], jobs: int, on_done: OnDone | None = None
) -> list[PointResult]:
    """Run units on ``jobs`` threads of this process; results stream back as they complete.

    The replay kernels release the GIL, so the threads replay in parallel on as many cores,
    with the kernels loaded once and each binary trace memory-mapped by each unit, with no
    worker start-up. When the sweep stops (an error, Ctrl-C), units not started are
    dropped and running ones stop at their next chunk.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    workers = max(1, min(jobs, len(units)))
    cancel = threading.Event()
    out: list[PointResult] = []
    pool = ThreadPoolExecutor(workers, thread_name_prefix="kvmcache-sweep")
    try:
        futures = [pool.submit(_run_unit_unless, cancel, u) for u in units]
        for fut in as_completed(futures):
            try:
                res = _collect(fut.result)
            except _Cancelled:
                # Stopped because another unit failed: that unit's future reports the
                # error (the two can complete in either order).
                continue
            out.extend(res)
            if on_done is not None:
                on_done(len(res))
    except BaseException:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


def import_dask() -> types.ModuleType:
    """``dask.distributed`` or a usage error naming the optional extra."""
    try:
        import dask.distributed as dd
    except ImportError:
        raise KvmcacheError(f"--scheduler needs Dask: {DASK_HINT}") from None
    return dd


def run_dask(
    units: Sequence[Unit],
    address: Any,
    on_done: OnDone | None = None,
    timeout: float = SCHEDULER_TIMEOUT,
) -> list[PointResult]:
    """Run units on an existing Dask cluster (``tcp://HOST:PORT``, or a cluster object).

    Workers open each trace by its absolute path, so it must be on a filesystem they share.
    """
    if isinstance(address, str):
        from kvmcache.sim.dask_address import check_address, probe_scheduler

        check_address(address)  # a malformed address fails here, before any connection
        probe_scheduler(address, timeout)  # a silent or garbage peer fails here, in time
    dd = import_dask()
    try:
        client = dd.Client(address, timeout=f"{timeout}s", set_as_default=False)
    except Exception as e:  # OSError, TimeoutError, ValueError for a bad address
        # The half-built Client would close itself in __del__ at exit, waiting 40 s on a
        # stopped loop and printing a traceback: close it now, quietly.
        tb = e.__traceback__
        while tb is not None:
            half = tb.tb_frame.f_locals.get("self")
            if isinstance(half, dd.Client):
                try:
                    half.close(timeout=2)
                except Exception:  # noqa: S110 - best effort; the connect error is reported
                    pass
                del half
            tb = tb.tb_next
        raise KvmcacheError(
            f"cannot connect to the Dask scheduler at {address}: {type(e).__name__}: {e}"
        ) from None
    out: list[PointResult] = []
    try:
        futures = [client.submit(run_unit, u, pure=False) for u in units]
        for fut in dd.as_completed(futures, loop=client.loop):
            try:
                res = _collect(fut.result)
            except ImportError as e:
                raise KvmcacheError(
                    f"a Dask worker cannot import kvmcache ({e}); install kvmcache on every worker"
                ) from None
            out.extend(res)
            if on_done is not None:
                on_done(len(res))
    finally:
        client.close()
    return out


# --------------------------------------------------------------------------- sweep


def build_units(
    traces: Sequence[str],
    allocs: Mapping[str, Sequence[str]],
    points: Sequence[Point],
    config: Mapping[str, Value] | None = None,
    overrides: Mapping[str, Value] | None = None,
    strict: bool = False,
) -> list[Unit]:
    """One unit per (trace, grid point), each with every strategy asked for that trace."""
    units = []
    for ti, trace in enumerate(traces):
        names = tuple(allocs[trace])
        for pi, point in enumerate(points):
            units.append(
                Unit(
                    path=os.path.abspath(trace),
                    display=trace,
                    trace_index=ti,
                    point_index=pi,
                    point=dict(point),
                    allocs=names,
                    config=dict(config or {}),
                    overrides=dict(overrides or {}),
                    strict=strict,
                )
            )
    return units


def run_sweep(
    traces: Sequence[str],
    allocs: Sequence[str] | None,
    grid: Mapping[str, Sequence[Value]],
    *,
    config: Mapping[str, Value] | None = None,
    overrides: Mapping[str, Value] | None = None,
    strict: bool = False,
    jobs: int = 1,
    scheduler: Any = None,
    scheduler_timeout: float = SCHEDULER_TIMEOUT,
    on_start: Callable[[int], None] | None = None,
    on_done: OnDone | None = None,
    objectives: Sequence[str] = PARETO_OBJECTIVES,
) -> SweepResult:
    """Replay every (trace, strategy, grid point) and mark each trace's Pareto front.

    ``allocs`` None means every strategy meaningful for each trace (all five on tdx, none
    on vmx). ``jobs`` > 1 uses that many threads; ``scheduler`` a Dask cluster. Each trace is
    opened here first, so an unreadable trace fails the whole sweep at once (exit 2).
    ``on_start`` receives the number of points before any runs. ``objectives`` are what
    the Pareto front minimises (counters or derived metrics).
    """
    from kvmcache.sim.replay import all_strategies_for
    from kvmcache.trace import detect_format, open_trace

    if not traces:
        raise KvmcacheError("sweep: give at least one trace")
    per_trace: dict[str, list[str]] = {}
    for t in traces:
        if t == "-":
            raise KvmcacheError(
                "sweep: standard input cannot be replayed once per point; give a file"
            )
        if t in per_trace:
            raise KvmcacheError(f"{t}: trace given twice")
        if os.path.isdir(t):
            raise KvmcacheError(f"{t}: is a directory, not a trace")
        if detect_format(t) == "yaml":  # parsed once here, reused by in-process runs
            header = _open(os.path.abspath(t), strict, t).header
        else:  # header only; warns once here (workers stay quiet)
            header = open_trace(t, strict=strict).header
        per_trace[t] = list(allocs) if allocs else all_strategies_for(header)
    points = expand_points(grid)
    units = build_units(traces, per_trace, points, config, overrides, strict)
    if on_start is not None:
        on_start(sum(len(u.allocs) for u in units))
    if scheduler:
        out = run_dask(units, scheduler, on_done, scheduler_timeout)
    elif jobs > 1 and len(units) > 1:
        out = run_threads(units, jobs, on_done)
    else:
        out = run_local(units, on_done)
    out.sort(key=lambda p: p.order)
    names = tuple(objectives) or PARETO_OBJECTIVES
    mark_pareto(out, names)
    return SweepResult(
        traces=list(traces),
        allocs=per_trace,
        grid={k: list(v) for k, v in grid.items()},
        points=out,
        objectives=names,
    )
