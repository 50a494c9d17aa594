"""CI gates: baselines (saved reports), counter limits and verdict requirements.

Used by ``replay`` and ``compare``. A gate is checked after the report is printed:
every failure is one ``limit failed: ...`` line on standard error and the command
exits with :data:`~kvmcache.errors.EXIT_GATE`. Anything wrong with the gate itself
(unknown counter, relative limit without a baseline, a baseline that does not match
the run) is a usage error (exit 2) raised before the report is printed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kvmcache.atomic import write_atomic
from kvmcache.errors import EXIT_USAGE, KvmcacheError
from kvmcache.limits import (
    MAX_NUMBER_CHARS,
    excerpt,
    number_too_long,
    read_small_file,
)
from kvmcache.report.documents import BASELINE_SCHEMAS, COMPARE_SCHEMA, VERDICTS, parse_document
from kvmcache.sim.counters import COUNTERS

#: --require NAME -> (verdict key of a replay document, counters behind it)
REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    key.replace("_", "-"): (key, counters) for key, counters in VERDICTS.items()
}

#: names a binary trace read from standard input carries (no file name to match)
STDIN_PATHS = ("-", "<stdin>", "")

_COUNTER_SET = frozenset(COUNTERS)
_ABS_RE = re.compile(r"^(?:0[xX]_?[0-9a-fA-F](?:_?[0-9a-fA-F])*|[0-9](?:_?[0-9])*)$")
_REL_RE = re.compile(r"^\+?([0-9]+(?:\.[0-9]+)?)%$")


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limit:
    """One ``COUNTER=VALUE`` (absolute) or ``COUNTER=+N%`` (relative to the baseline)."""

    counter: str
    value: int | None = None  # absolute ceiling
    percent: Fraction | None = None  # allowed growth over the baseline, in percent
    text: str = ""  # the percent as the user wrote it ("10", "2.5")

    @property
    def relative(self) -> bool:
        return self.percent is not None


def parse_limit(spec: str, source: str = "--limit") -> Limit:
    """Parse ``COUNTER=VALUE`` or ``COUNTER=+N%``; a bad one is a usage error naming it."""
    name, sep, raw = spec.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name or not raw:
        raise KvmcacheError(
            f"{source}: {excerpt(spec)} is not COUNTER=VALUE or COUNTER=+N% "
            "(e.g. cache_pages_idle_peak=+10%)"
        )
    if name not in _COUNTER_SET:
        raise KvmcacheError(
            f"{source}: {excerpt(spec)}: unknown counter {excerpt(name)} "
            "(the names are the keys of `counters` in the JSON report)"
        )
    if number_too_long(raw):
        raise KvmcacheError(
            f"{source}: {name}: a number of {len(raw):,} characters is too long "
            f"(at most {MAX_NUMBER_CHARS})"
        )
    m = _REL_RE.match(raw)
    if m:
        return Limit(name, percent=Fraction(m.group(1)), text=_trim(m.group(1)))
    if _ABS_RE.match(raw):
        return Limit(name, value=int(raw.replace("_", ""), 0 if raw[:2].lower() == "0x" else 10))
    raise KvmcacheError(
        f"{source}: {excerpt(spec)}: {excerpt(raw)} is neither a non-negative integer nor a "
        "growth percentage like +10%"
    )


def parse_requirement(name: str, source: str = "--require") -> str:
    """Check a ``--require`` name (spinlock-safe or balanced)."""
    key = name.strip().lower()
    if key not in REQUIREMENTS:
        raise KvmcacheError(
            f"{source}: unknown requirement {excerpt(name)} (known: {', '.join(REQUIREMENTS)})"
        )
    return key


def relative_exceeded(value: int, base: int, percent: Fraction) -> bool:
    """True when ``value`` grew by more than ``percent`` over ``base`` (exact arithmetic).

    A zero baseline allows nothing above 0: any growth fails, staying at 0 passes.
    """
    return value * 100 > base * (100 + percent)


def growth_percent(value: int, base: int) -> float | None:
    """Growth of value over base in percent, None when base is 0."""
    if base == 0:
        return None
    return (value - base) * 100.0 / base


def _trim(number: str) -> str:
    """'10.50' -> '10.5', '10.0' -> '10'."""
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


def _fmt_growth(growth: float, limit_text: str) -> str:
    """The growth with enough decimals not to read as equal to the limit."""
    for digits in range(1, 7):
        s = f"{growth:+.{digits}f}"
        if _trim(s.lstrip("+")) != limit_text:
            return s + "%"
    return f"{growth:+.6f}%"


# --------------------------------------------------------------------------- baselines


@dataclass
class Baseline:
    """A previous report: its runs (replay documents) by strategy."""

    path: str
    trace: dict[str, Any]
    runs: dict[str, dict[str, Any]]


def load_baseline(path: str) -> Baseline:
    """Read a saved replay or compare report; an unreadable or invalid one is exit 2."""
    data = read_small_file(path, "baseline file", "a baseline file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KvmcacheError(f"{path}: baseline is not valid JSON: {e}") from None
    schema, doc, docs = parse_document(path, text, BASELINE_SCHEMAS, "baseline")
    if not docs:
        raise KvmcacheError(f"{path}: baseline has no runs")
    runs: dict[str, dict[str, Any]] = {}
    for run in docs:
        if run["alloc"] in runs:
            raise KvmcacheError(f"{path}: strategy {excerpt(run['alloc'])} appears twice")
        runs[run["alloc"]] = run
    trace = doc.get("trace") if schema == COMPARE_SCHEMA else doc["trace"]
    if not isinstance(trace, dict):
        trace = docs[0]["trace"]
    return Baseline(path=path, trace=trace, runs=runs)


def _mismatch(baseline: Baseline, what: str) -> KvmcacheError:
    return KvmcacheError(f"{baseline.path}: baseline does not match this run: {what}", EXIT_USAGE)


def _basename(path: str) -> str:
    return os.path.basename(path.replace("\\", "/"))


def check_baseline_trace(baseline: Baseline, header: Any) -> None:
    """The trace: same file name (basename) and VM geometry. Raises exit 2 naming the field.

    A trace read from standard input has no name; only its geometry is compared.
    """
    bt = baseline.trace
    mine = header.path or ""
    theirs = str(bt.get("path") or "")
    if mine not in STDIN_PATHS and theirs not in STDIN_PATHS:
        if _basename(mine) != _basename(theirs):
            raise _mismatch(
                baseline, f"trace is {_basename(theirs)} in the baseline, {_basename(mine)} here"
            )
    for key in ("vm_type", "root_level", "gfn_limit", "host_pfn_limit"):
        if key in bt and bt[key] != getattr(header, key):
            raise _mismatch(
                baseline,
                f"trace {key} is {_show(bt[key])} in the baseline, {_show(getattr(header, key))} here",
            )


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) and v >= 4096:
        return f"{v:#x}"
    if isinstance(v, str) and len(v) <= 80:
        return v
    return excerpt(v) if not isinstance(v, int) else str(v)


def check_baseline_runs(
    baseline: Baseline, allocs: Sequence[str], params: Mapping[str, int | bool]
) -> None:
    """Every strategy of this run is in the baseline, with the same parameters."""
    for alloc in allocs:
        run = baseline.runs.get(alloc)
        if run is None:
            have = ", ".join(baseline.runs)
            raise _mismatch(baseline, f"strategy {alloc} is not in the baseline (it has: {have})")
        theirs = run["params"]
        for name in list(params) + [k for k in theirs if k not in params]:
            if name not in theirs:
                raise _mismatch(baseline, f"{alloc}: parameter {name} is missing in the baseline")
            if name not in params:
                raise _mismatch(
                    baseline, f"{alloc}: parameter {name} of the baseline is unknown here"
                )
            if theirs[name] != params[name] or isinstance(theirs[name], bool) != isinstance(
                params[name], bool
            ):
                raise _mismatch(
                    baseline,
                    f"{alloc}: parameter {name} is {_show(theirs[name])} in the baseline, "
                    f"{_show(params[name])} here",
                )


def check_baseline_events(baseline: Baseline, runs: Iterable[Mapping[str, Any]]) -> None:
    """After the run: the trace had as many events as the baseline's (else it is another trace)."""
    for run in runs:
        base = baseline.runs[run["alloc"]]
        theirs = base["counters"].get("events", base["trace"].get("events"))
        mine = run["counters"]["events"]
        if theirs is not None and theirs != mine:
            raise _mismatch(baseline, f"the trace has {mine:,} events, the baseline's {theirs:,}")


# --------------------------------------------------------------------------- the gate


@dataclass
class Gate:
    """Limits, requirements and an optional baseline, checked against report runs."""

    limits: list[Limit] = field(default_factory=list)
    require: list[str] = field(default_factory=list)
    baseline: Baseline | None = None
    save_path: str | None = None

    @classmethod
    def build(
        cls,
        limits: Iterable[str] = (),
        require: Iterable[str] = (),
        baseline_path: str | None = None,
        save_path: str | None = None,
        config_limits: Iterable[str] = (),
        config_require: Iterable[str] = (),
        config_path: str = "",
    ) -> Gate:
        """Parse everything up front so a bad gate fails before the (long) replay."""
        cfg = f"{config_path}: limits" if config_path else "config limits"
        parsed = [parse_limit(s, cfg) for s in config_limits]
        parsed += [parse_limit(s) for s in limits]
        req_src = f"{config_path}: require" if config_path else "config require"
        reqs: list[str] = []
        for name in [*(parse_requirement(r, req_src) for r in config_require)] + [
            parse_requirement(r) for r in require
        ]:
            if name not in reqs:
                reqs.append(name)
        rel = [lim for lim in parsed if lim.relative]
        if rel and not baseline_path:
            lim = rel[0]
            raise KvmcacheError(
                f"limit {lim.counter}=+{lim.text}% is relative to a baseline: pass --baseline FILE.json"
            )
        if save_path:
            d = os.path.dirname(os.path.abspath(save_path))
            if not os.path.isdir(d):
                raise KvmcacheError(f"{save_path}: cannot save baseline: no directory {d}")
        baseline = load_baseline(baseline_path) if baseline_path else None
        return cls(parsed, reqs, baseline, save_path)

    def check_before(
        self, header: Any, allocs: Sequence[str], params: Mapping[str, int | bool]
    ) -> None:
        """Baseline matching that needs only the header and parameters (before the replay)."""
        if self.baseline is None:
            return
        check_baseline_trace(self.baseline, header)
        check_baseline_runs(self.baseline, allocs, params)

    def check_after(self, runs: Sequence[Mapping[str, Any]]) -> None:
        """Baseline matching that needs the results (before the report is printed)."""
        if self.baseline is None:
            return
        check_baseline_events(self.baseline, runs)
        for lim in self.limits:
            if not lim.relative:
                continue
            for run in runs:
                if lim.counter not in self.baseline.runs[run["alloc"]]["counters"]:
                    raise _mismatch(
                        self.baseline,
                        f"{run['alloc']}: counter {lim.counter} is missing in the baseline",
                    )

    def save(self, doc: Mapping[str, Any]) -> None:
        """Write the report document as the next baseline (when --save-baseline was given)."""
        if self.save_path:
            save_document(self.save_path, doc)

    def failures(self, runs: Sequence[Mapping[str, Any]]) -> list[str]:
        """One ``limit failed: ...`` line per failed limit or requirement, per run."""
        return evaluate(runs, self.limits, self.require, self.baseline)


def evaluate(
    runs: Sequence[Mapping[str, Any]],
    limits: Sequence[Limit],
    require: Sequence[str] = (),
    baseline: Baseline | None = None,
) -> list[str]:
    """Check every run (replay documents) against limits and requirements; the failure lines."""
    out: list[str] = []
    for run in runs:
        alloc = run["alloc"]
        counters = run["counters"]
        for lim in limits:
            value = counters[lim.counter]
            if lim.percent is None:
                assert lim.value is not None
                if value > lim.value:
                    out.append(f"limit failed: {alloc} {lim.counter} {value} > {lim.value}")
                continue
            if baseline is None:
                raise KvmcacheError(f"limit {lim.counter}=+{lim.text}% needs --baseline")
            base = baseline.runs[alloc]["counters"][lim.counter]
            if relative_exceeded(value, base, lim.percent):
                growth = growth_percent(value, base)
                why = (
                    f"baseline 0: any growth fails, limit +{lim.text}%"
                    if growth is None
                    else f"{_fmt_growth(growth, lim.text)} > +{lim.text}%"
                )
                out.append(f"limit failed: {alloc} {lim.counter} {value} > {base} ({why})")
        verdict = run.get("verdict", {})
        for name in require:
            key, behind = REQUIREMENTS[name]
            ok = verdict.get(key)
            if ok is None:
                ok = all(counters[c] == 0 for c in behind)
            if not ok:
                detail = ", ".join(f"{c} {counters[c]}" for c in behind)
                out.append(f"limit failed: {alloc} not {name} ({detail})")
    return out


def save_document(path: str, doc: Mapping[str, Any]) -> None:
    """Write a JSON report atomically: a temporary file in the same directory, then rename."""
    write_atomic(path, json.dumps(doc, indent=1) + "\n", what="save baseline")
