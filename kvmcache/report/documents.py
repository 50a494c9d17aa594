"""kvmcache's JSON documents (INTERFACES.md section 4): schema names, the verdict, the
builders of the replay, compare and sweep documents, and the one loader that reads them
back (CI baselines in :mod:`kvmcache.gates`, ``kvmcache plot``). No rich, no numba."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvmcache import __version__
from kvmcache.errors import KvmcacheError
from kvmcache.limits import LongNumber, excerpt, json_int, long_json_number
from kvmcache.results import VERDICTS, ReplayResult, verdict
from kvmcache.sim.counters import COUNTERS

if TYPE_CHECKING:
    from kvmcache.sim.sweep import SweepResult

REPLAY_SCHEMA = "kvmcache.replay/1"
COMPARE_SCHEMA = "kvmcache.compare/1"
SWEEP_SCHEMA = "kvmcache.sweep/1"
INFO_SCHEMA = "kvmcache.info/1"
#: Documents whose runs are one trace's replays, each a replay document.
BASELINE_SCHEMAS = (REPLAY_SCHEMA, COMPARE_SCHEMA)

__all__ = [
    "BASELINE_SCHEMAS",
    "COMPARE_SCHEMA",
    "INFO_SCHEMA",
    "REPLAY_SCHEMA",
    "SWEEP_SCHEMA",
    "VERDICTS",
    "compare_document",
    "deltas",
    "dumps",
    "parse_document",
    "replay_document",
    "sweep_document",
    "trace_info",
    "verdict",
]


# --------------------------------------------------------------------------- builders


def trace_info(result: ReplayResult) -> dict[str, Any]:
    """The `trace` object of a report."""
    h = result.header
    return {
        "path": h.path,
        "events": result.counters["events"],
        "vm_type": h.vm_type,
        "root_level": h.root_level,
        "gfn_limit": h.gfn_limit,
        "host_pfn_limit": h.host_pfn_limit,
        "ts_first": result.ts_first,
        "ts_last": result.ts_last,
        "digest": result.trace_digest,
    }


def replay_document(result: ReplayResult) -> dict[str, Any]:
    """One replay as the `kvmcache.replay/1` document."""
    return {
        "schema": REPLAY_SCHEMA,
        "version": __version__,
        "trace": trace_info(result),
        "alloc": result.alloc,
        "effective_alloc": result.effective_alloc,
        "params": dict(result.params),
        "counters": dict(result.counters),
        "histograms": {k: list(v) for k, v in result.histograms.items()},
        "verdict": verdict(result.counters),
        "notes": list(result.notes),
    }


def deltas(results: Sequence[ReplayResult], reference: str) -> dict[str, dict[str, int]]:
    """value - reference value, for every counter of every run (the reference's are all 0)."""
    ref = reference_run(results, reference)
    return {r.alloc: {c: r.counters[c] - ref.counters[c] for c in COUNTERS} for r in results}


def reference_run(results: Sequence[ReplayResult], reference: str) -> ReplayResult:
    """The run of strategy ``reference``."""
    for r in results:
        if r.alloc == reference:
            return r
    raise ValueError(f"reference strategy {reference} is not among the runs")


def compare_document(results: Sequence[ReplayResult], reference: str) -> dict[str, Any]:
    """Several runs of one trace as the `kvmcache.compare/1` document."""
    return {
        "schema": COMPARE_SCHEMA,
        "version": __version__,
        "trace": trace_info(results[0]),
        "reference": reference,
        "runs": [replay_document(r) for r in results],
        "deltas": deltas(results, reference),
    }


def sweep_document(sweep: SweepResult, by: str = "cache_pages_idle_peak") -> dict[str, Any]:
    """The ``kvmcache.sweep/1`` document: runs ranked by ``by``, then the invalid points."""
    from kvmcache.sim.sweep import rank, varying_objectives

    runs = []
    invalid = []
    for p in rank(sweep.points, by):
        if p.result is not None:
            doc = replay_document(p.result)
            doc["pareto"] = p.pareto
            runs.append(doc)
        else:
            invalid.append(
                {"trace": p.trace, "alloc": p.alloc, "params": dict(p.params), "error": p.error}
            )
    return {
        "schema": SWEEP_SCHEMA,
        "version": __version__,
        "grid": {k: list(v) for k, v in sweep.grid.items()},
        "traces": list(sweep.traces),
        "allocs": {t: list(a) for t, a in sweep.allocs.items()},
        "sort": by,
        "pareto_objectives": list(sweep.objectives),
        "pareto_varying": {
            t: varying_objectives([p for p in sweep.points if p.trace == t], sweep.objectives)
            for t in sweep.traces
        },
        "runs": runs,
        "invalid": invalid,
    }


def dumps(doc: Any) -> str:
    """Serialise a report document (indented, stable key order)."""
    return json.dumps(doc, indent=1)


# --------------------------------------------------------------------------- the loader


def parse_document(
    path: str, text: str, schemas: Sequence[str], what: str
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """(schema, document, runs) of kvmcache JSON ``text`` read from ``path``, one of
    ``schemas``; ``what`` names the input in errors ("baseline"). The runs are replay
    documents (a replay document is its own one run), each checked: a strategy, parameters,
    a trace and non-negative integer counters. Anything else is one error line (exit 2)."""
    try:
        doc = json.loads(text, parse_int=json_int)
    except LongNumber as e:
        raise long_json_number(path, e, f"{what} is not valid JSON") from None
    except ValueError as e:  # JSONDecodeError
        raise KvmcacheError(f"{path}: {what} is not valid JSON: {e}") from None
    except RecursionError:
        raise KvmcacheError(f"{path}: {what} is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise KvmcacheError(f"{path}: {what} is not a kvmcache report (not a JSON object)")
    schema = doc.get("schema")
    if schema not in schemas:
        raise KvmcacheError(
            f"{path}: {what} schema {excerpt(schema)} is not one of {', '.join(schemas)}"
        )
    runs = [doc] if schema == REPLAY_SCHEMA else doc.get("runs")
    if not isinstance(runs, list):
        raise KvmcacheError(f"{path}: {what} has no runs")
    for i, run in enumerate(runs):
        _check_run(run, path if schema == REPLAY_SCHEMA else f"{path}: run {i}")
    return schema, doc, runs


def _check_run(run: Any, where: str) -> None:
    if not isinstance(run, dict):
        raise KvmcacheError(f"{where}: not a replay document")
    for key, typ in (("alloc", str), ("params", dict), ("counters", dict), ("trace", dict)):
        if not isinstance(run.get(key), typ):
            raise KvmcacheError(f"{where}: missing or invalid {key!r}")
    bad = [k for k, v in run["counters"].items() if type(v) is not int]
    if bad:
        raise KvmcacheError(f"{where}: counter {excerpt(bad[0])} is not an integer")
    neg = [k for k, v in run["counters"].items() if v < 0]
    if neg:
        raise KvmcacheError(f"{where}: counter {excerpt(neg[0])} is negative")
    events = run["trace"].get("events")
    if events is not None and (type(events) is not int or events < 0):
        raise KvmcacheError(f"{where}: trace.events is {excerpt(events)}, not a count of events")
