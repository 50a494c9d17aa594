"""CI gates: baselines (saved reports), counter limits and verdict requirements.

Used by ``replay`` and ``compare``. A gate is checked after the report is printed:
every failure is one ``limit failed: ...`` line on standard error and the command
exits with :data:`~kvmcache.errors.EXIT_GATE`. Anything wrong with the gate itself
(unknown counter, relative limit without a baseline, a baseline that does not match
the run) is a usage error (exit 2) raised before the report is printed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from kvmcache import verbosity
from kvmcache.atomic import write_atomic
from kvmcache.errors import EXIT_USAGE, KvmcacheError
from kvmcache.limits import (
    MAX_NUMBER_CHARS,
    excerpt,
    number_too_long,
    read_small_file,
)
from kvmcache.report.documents import BASELINE_SCHEMAS, COMPARE_SCHEMA, VERDICTS, parse_document
from kvmcache.results import spinlock_problem
from kvmcache.sim.counters import COUNTERS, STRATEGIES

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
    alloc: str | None = None  # STRATEGY:COUNTER=...: only that strategy's run

    @property
    def relative(self) -> bool:
        return self.percent is not None

    def describe(self) -> str:
        """``[STRATEGY:]COUNTER <= VALUE`` or ``... <= +N% over the baseline``."""
        where = f"{self.alloc}:" if self.alloc else ""
        if self.percent is None:
            return f"{where}{self.counter} <= {self.value}"
        return f"{where}{self.counter} <= +{self.text}% over the baseline"


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


# --------------------------------------------------------------------------- strategies, identity

#: Counters that MODEL.md version 2 added (section 9 memory, section 8 time): a baseline
#: saved before them lacks them, and a relative limit on one is reported as not compared.
V2_COUNTERS: frozenset[str] = frozenset(COUNTERS[COUNTERS.index("pamt_bytes_peak") :])


def unknown_counter(source: str, spec: str, name: str) -> KvmcacheError:
    """The usage error for a limit naming an unknown counter: close matches, then every name."""
    close = difflib.get_close_matches(name, COUNTERS, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return KvmcacheError(
        f"{source}: {spec!r}: unknown counter {name!r}{hint}; valid counters: {', '.join(COUNTERS)}"
    )


def parse_gate_limit(spec: str, source: str = "--limit") -> Limit:
    """``[STRATEGY:]COUNTER=VALUE`` or ``[STRATEGY:]COUNTER=+N%``: :func:`parse_limit` plus an
    optional strategy prefix (the limit then applies to that strategy's run only) and the
    list of valid counter names when the counter is unknown."""
    name, sep, raw = spec.partition("=")
    alloc: str | None = None
    counter = name.strip()
    if sep and ":" in counter:
        alloc, _, counter = (x.strip() for x in counter.partition(":"))
        if alloc not in STRATEGIES:
            raise KvmcacheError(
                f"{source}: {spec!r}: unknown strategy {alloc!r} (strategies: {', '.join(STRATEGIES)})"
            )
    if sep and counter and raw.strip() and counter not in _COUNTER_SET:
        raise unknown_counter(source, spec, counter)
    if alloc is None:
        return parse_limit(spec, source)
    inner = f"{counter}={raw}"
    try:
        lim = parse_limit(inner, source)
    except KvmcacheError as e:
        raise KvmcacheError(e.message.replace(repr(inner), repr(spec)), e.exit_code) from None
    return replace(lim, alloc=alloc)


def baseline_digest(baseline: Baseline) -> str | None:
    """The trace digest the baseline recorded (None: saved before digests existed)."""
    d = baseline.trace.get("digest")
    if not d:
        runs = list(baseline.runs.values())
        d = runs[0]["trace"].get("digest") if runs else None
    return d if isinstance(d, str) and d else None


def check_trace_before(baseline: Baseline, header: Any) -> None:
    """Before the replay: the geometry, and the file name only when the baseline has no
    digest (a baseline with one matches the trace by content, after the replay)."""
    if baseline_digest(baseline) is None:
        check_baseline_trace(baseline, header)
        return
    bt = baseline.trace
    for key in ("vm_type", "root_level", "gfn_limit", "host_pfn_limit"):
        if key in bt and bt[key] != getattr(header, key):
            raise _mismatch(
                baseline,
                f"trace {key} is {_show(bt[key])} in the baseline, {_show(getattr(header, key))} here",
            )


def check_trace_identity(baseline: Baseline, runs: Sequence[Mapping[str, Any]]) -> GateCheck:
    """After the replay: the same trace content (digest) as the baseline's, or, for a
    baseline saved before digests, the same file name and event count (with a note)."""
    theirs = baseline_digest(baseline)
    mine = runs[0]["trace"].get("digest") if runs else None
    name = _basename(str(runs[0]["trace"].get("path") or "")) if runs else ""
    if theirs and mine:
        if theirs != mine:
            bname = _basename(str(baseline.trace.get("path") or ""))
            raise _mismatch(
                baseline,
                f"the trace's content differs ({name or 'this trace'}: {mine}; "
                f"the baseline's {bname or 'trace'}: {theirs})",
            )
        return GateCheck(
            "baseline trace",
            "baseline",
            "",
            "passed",
            f"same trace content as the baseline ({mine})",
        )
    check_baseline_events(baseline, runs)
    verbosity.note(
        f"note: {baseline.path}: the baseline has no trace digest (saved by an older kvmcache): "
        "the trace was matched by file name and event count only; save the baseline again "
        "to match by content"
    )
    return GateCheck(
        "baseline trace",
        "baseline",
        "",
        "passed",
        "matched by file name and event count (the baseline has no trace digest)",
    )


# --------------------------------------------------------------------------- gate results


@dataclass
class GateCheck:
    """One gate checked against one run: a limit, a requirement, or the baseline's trace."""

    name: str  # what was checked, e.g. "cache_pages_idle_peak <= +5% over the baseline"
    kind: str  # "limit", "require" or "baseline"
    alloc: str  # the strategy of the run ("" for the baseline trace)
    status: str  # "passed", "failed" or "skipped" (not compared)
    message: str  # the failure line (without "limit failed: "), the reason, or a detail
    counter: str | None = None
    value: int | None = None
    baseline: int | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "alloc": self.alloc,
            "status": self.status,
            "message": self.message,
        }
        if self.counter is not None:
            out["counter"] = self.counter
            out["value"] = self.value
            if self.baseline is not None:
                out["baseline"] = self.baseline
        return out


def check_gates(
    runs: Sequence[Mapping[str, Any]],
    limits: Sequence[Limit],
    require: Sequence[str] = (),
    baseline: Baseline | None = None,
) -> list[GateCheck]:
    """Every limit and requirement checked against every run it applies to, in run order.

    A relative limit on a counter the baseline lacks because it was saved before MODEL.md
    version 2 is "skipped" (not compared); a per-strategy limit whose strategy is not among
    the runs is "skipped" too. Both say why.
    """
    out: list[GateCheck] = []
    present = {run["alloc"] for run in runs}
    for lim in limits:
        if lim.alloc is not None and lim.alloc not in present:
            out.append(
                GateCheck(
                    lim.describe(), "limit", lim.alloc, "skipped",
                    f"{lim.alloc} is not among the strategies of this run "
                    f"({', '.join(run['alloc'] for run in runs)})",
                    counter=lim.counter,
                )
            )  # fmt: skip
    for run in runs:
        alloc = run["alloc"]
        counters = run["counters"]
        for lim in limits:
            if lim.alloc is not None and lim.alloc != alloc:
                continue
            out.append(_check_limit(lim, alloc, counters, baseline))
        verdict = run.get("verdict", {})
        for name in require:
            key, behind = REQUIREMENTS[name]
            ok = verdict.get(key)
            if ok is None:
                ok = all(counters[c] == 0 for c in behind)
            detail = ", ".join(f"{c} {counters[c]}" for c in behind)
            if ok:
                out.append(
                    GateCheck(name, "require", alloc, "passed", f"{alloc} {name} ({detail})")
                )
                continue
            if key == "spinlock_safe":
                what = f"not {name}: {spinlock_problem(counters) or 'verdict false'}"
            else:
                what = f"not {name}"
            out.append(GateCheck(name, "require", alloc, "failed", f"{alloc} {what} ({detail})"))
    return out


def _check_limit(
    lim: Limit, alloc: str, counters: Mapping[str, int], baseline: Baseline | None
) -> GateCheck:
    value = counters[lim.counter]
    name = lim.describe() if lim.alloc is None else lim.describe().split(":", 1)[1]
    if lim.percent is None:
        assert lim.value is not None
        if value > lim.value:
            msg = f"{alloc} {lim.counter} {value} > {lim.value}"
            return GateCheck(name, "limit", alloc, "failed", msg, lim.counter, value)
        msg = f"{alloc} {lim.counter} {value} <= {lim.value}"
        return GateCheck(name, "limit", alloc, "passed", msg, lim.counter, value)
    if baseline is None:
        raise KvmcacheError(f"limit {lim.counter}=+{lim.text}% needs --baseline")
    theirs = baseline.runs[alloc]["counters"]
    if lim.counter not in theirs:
        msg = (
            f"{alloc} {lim.counter}: not compared: the baseline has no {lim.counter} "
            "(saved before kvmcache counted it)"
        )
        return GateCheck(name, "limit", alloc, "skipped", msg, lim.counter, value)
    base = theirs[lim.counter]
    if relative_exceeded(value, base, lim.percent):
        growth = growth_percent(value, base)
        why = (
            f"baseline 0: any growth fails, limit +{lim.text}%"
            if growth is None
            else f"{_fmt_growth(growth, lim.text)} > +{lim.text}%"
        )
        msg = f"{alloc} {lim.counter} {value} > {base} ({why})"
        return GateCheck(name, "limit", alloc, "failed", msg, lim.counter, value, base)
    msg = f"{alloc} {lim.counter} {value} vs {base} (limit +{lim.text}%)"
    return GateCheck(name, "limit", alloc, "passed", msg, lim.counter, value, base)


def summary_line(checks: Sequence[GateCheck]) -> str:
    """``gates: N checked, P passed, F failed[, S not compared]``."""
    n = sum(c.status != "skipped" for c in checks)
    p = sum(c.status == "passed" for c in checks)
    f = sum(c.failed for c in checks)
    s = sum(c.status == "skipped" for c in checks)
    line = f"gates: {n} checked, {p} passed, {f} failed"
    if s:
        line += f", {s} not compared"
    return line


def gates_document(checks: Sequence[GateCheck], baseline: Baseline | None) -> dict[str, Any]:
    """The ``gates`` object added to a replay or compare JSON report."""
    return {
        "checked": sum(c.status != "skipped" for c in checks),
        "passed": sum(c.status == "passed" for c in checks),
        "failed": sum(c.failed for c in checks),
        "skipped": sum(c.status == "skipped" for c in checks),
        "baseline": baseline.path if baseline is not None else None,
        "checks": [c.to_json() for c in checks],
    }


def junit_xml(checks: Sequence[GateCheck], suite: str) -> str:
    """JUnit XML: one ``testsuite`` named ``suite``, one ``testcase`` per gate and run
    (``classname`` kvmcache.gates.STRATEGY), with ``failure`` or ``skipped`` children."""
    import xml.etree.ElementTree as ET

    n_fail = sum(c.failed for c in checks)
    n_skip = sum(c.status == "skipped" for c in checks)
    counts = {"tests": str(len(checks)), "failures": str(n_fail), "errors": "0"}
    root = ET.Element("testsuites", name="kvmcache", **counts, skipped=str(n_skip))
    ts = ET.SubElement(root, "testsuite", name=suite, **counts, skipped=str(n_skip), time="0")
    for c in checks:
        cls = f"kvmcache.gates.{c.alloc}" if c.alloc else "kvmcache.gates"
        tc = ET.SubElement(ts, "testcase", classname=cls, name=c.name, time="0")
        if c.failed:
            el = ET.SubElement(tc, "failure", message=c.message, type=c.kind)
            el.text = f"limit failed: {c.message}"
        elif c.status == "skipped":
            ET.SubElement(tc, "skipped", message=c.message)
        else:
            ET.SubElement(tc, "system-out").text = c.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- the gate


@dataclass
class Gate:
    """Limits, requirements and an optional baseline, checked against report runs."""

    limits: list[Limit] = field(default_factory=list)
    require: list[str] = field(default_factory=list)
    baseline: Baseline | None = None
    save_path: str | None = None
    junit_path: str | None = None
    identity: GateCheck | None = None  # the baseline's trace, once check_after ran

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
        junit_path: str | None = None,
    ) -> Gate:
        """Parse everything up front so a bad gate fails before the (long) replay."""
        cfg = f"{config_path}: limits" if config_path else "config limits"
        parsed = [parse_gate_limit(s, cfg) for s in config_limits]
        parsed += [parse_gate_limit(s) for s in limits]
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
            where = f"{lim.alloc}:" if lim.alloc else ""
            raise KvmcacheError(
                f"limit {where}{lim.counter}=+{lim.text}% is relative to a baseline: "
                "pass --baseline FILE.json"
            )
        for option, path in (("save baseline", save_path), ("write --junit", junit_path)):
            if path:
                d = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(d):
                    raise KvmcacheError(f"{path}: cannot {option}: no directory {d}")
        baseline = load_baseline(baseline_path) if baseline_path else None
        return cls(parsed, reqs, baseline, save_path, junit_path)

    @property
    def active(self) -> bool:
        """True when there is anything to check (a limit, a requirement or a baseline)."""
        return bool(self.limits or self.require or self.baseline is not None)

    def check_before(
        self, header: Any, allocs: Sequence[str], params: Mapping[str, int | bool]
    ) -> None:
        """Baseline matching that needs only the header and parameters (before the replay)."""
        if self.baseline is None:
            return
        check_trace_before(self.baseline, header)
        check_baseline_runs(self.baseline, allocs, params)

    def check_after(self, runs: Sequence[Mapping[str, Any]]) -> None:
        """Baseline matching that needs the results (before the report is printed): the
        trace's identity, and the counters relative limits need (a counter newer than the
        baseline is reported as not compared instead)."""
        if self.baseline is None:
            return
        self.identity = check_trace_identity(self.baseline, runs)
        for lim in self.limits:
            if not lim.relative or lim.counter in V2_COUNTERS:
                continue
            for run in runs:
                if lim.alloc is not None and lim.alloc != run["alloc"]:
                    continue
                if lim.counter not in self.baseline.runs[run["alloc"]]["counters"]:
                    raise _mismatch(
                        self.baseline,
                        f"{run['alloc']}: counter {lim.counter} is missing in the baseline",
                    )

    def check(self, runs: Sequence[Mapping[str, Any]]) -> list[GateCheck]:
        """Every gate against the runs: the baseline's trace first, then limits and
        requirements (see :func:`check_gates`)."""
        checks = [self.identity] if self.identity is not None else []
        return checks + check_gates(runs, self.limits, self.require, self.baseline)

    def document(self, checks: Sequence[GateCheck]) -> dict[str, Any]:
        """The ``gates`` object of the JSON report."""
        return gates_document(checks, self.baseline)

    def save(self, doc: Mapping[str, Any]) -> None:
        """Write the report document as the next baseline (when --save-baseline was given)."""
        if self.save_path:
            save_document(self.save_path, doc)

    def write_junit(self, checks: Sequence[GateCheck], suite: str) -> None:
        """Write the JUnit XML file (when --junit was given), atomically."""
        if self.junit_path:
            write_atomic(self.junit_path, junit_xml(checks, suite), what="write --junit")

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
    return [
        f"limit failed: {c.message}"
        for c in check_gates(runs, limits, require, baseline)
        if c.failed
    ]


def save_document(path: str, doc: Mapping[str, Any]) -> None:
    """Write a JSON report atomically: a temporary file in the same directory, then rename."""
    write_atomic(path, json.dumps(doc, indent=1) + "\n", what="save baseline")
