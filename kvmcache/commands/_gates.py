"""The CI-gate options shared by ``replay`` and ``compare`` and the end-of-command check."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

from kvmcache import verbosity
from kvmcache.config import Config
from kvmcache.errors import EXIT_GATE
from kvmcache.gates import REQUIREMENTS, Gate, GateCheck, summary_line

F = TypeVar("F", bound=Callable[..., Any])


def gate_options(f: F) -> F:
    """--save-baseline, --baseline, --limit (repeatable), --require (repeatable), --junit."""
    f = click.option(
        "--junit",
        "junit_path",
        type=click.Path(dir_okay=False),
        metavar="FILE.xml",
        help="Also write the gates as JUnit XML (one test case per gate and strategy) for CI.",
    )(f)
    f = click.option(
        "--require",
        "require",
        multiple=True,
        type=click.Choice(tuple(REQUIREMENTS)),
        help="Fail (exit 3) unless every run has this verdict; repeatable.",
    )(f)
    f = click.option(
        "--limit",
        "limits",
        multiple=True,
        metavar="[STRATEGY:]COUNTER=VALUE|+N%",
        help="Fail (exit 3) if a counter exceeds VALUE, or grows by more than N percent "
        "over --baseline; applies to every run, or only to STRATEGY's "
        "(dpamt-pair:cache_pages_idle_peak=+5%); repeatable.",
    )(f)
    f = click.option(
        "--baseline",
        "baseline_path",
        type=click.Path(dir_okay=False),
        help="A saved replay or compare JSON report to match and to gate relative limits on.",
    )(f)
    f = click.option(
        "--save-baseline",
        "save_path",
        type=click.Path(dir_okay=False),
        help="After the run, write the JSON report to this file (atomically).",
    )(f)
    return f


def build_gate(
    config: Config,
    limits: Sequence[str],
    require: Sequence[str],
    baseline_path: str | None,
    save_path: str | None,
    junit_path: str | None = None,
) -> Gate:
    """Command-line gates plus the config file's limits:/require: blocks."""
    return Gate.build(
        junit_path=junit_path,
        limits=limits,
        require=require,
        baseline_path=baseline_path,
        save_path=save_path,
        config_limits=config.limits,
        config_require=config.require,
        config_path=config.path,
    )


def wants_digest(gate: Gate, fmt: str) -> bool:
    """Whether the replay should compute the trace digest: for a JSON report (it may become
    a baseline), a baseline to match or save, or -v. A table or CSV on its own skips the
    extra pass over the records."""
    return (
        fmt == "json" or gate.baseline is not None or bool(gate.save_path) or verbosity.is_verbose()
    )


def check(gate: Gate, doc: dict[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[GateCheck]:
    """Before the report is printed: match the baseline (exit 2 on a mismatch), check every
    gate and record them in the JSON document (its ``gates`` key) when there are any."""
    gate.check_after(runs)
    if not gate.active:
        return []
    checks = gate.check(runs)
    doc["gates"] = gate.document(checks)
    return checks


def finish(gate: Gate, doc: Mapping[str, Any], checks: Sequence[GateCheck], suite: str) -> None:
    """After the report is printed: save the baseline, write --junit, print each failure,
    what could not be compared and one summary line on stderr, then exit 3 on a failure."""
    gate.save(doc)
    gate.write_junit(checks, suite)
    sys.stdout.flush()
    for c in checks:
        if c.failed:
            print(f"limit failed: {c.message}", file=sys.stderr)
        elif c.status == "skipped":
            verbosity.note(f"gate not compared: {c.message}")
        else:
            verbosity.detail(f"gate passed: {c.message}")
    if gate.active:
        verbosity.note(summary_line(checks))
    sys.stderr.flush()
    if any(c.failed for c in checks):
        sys.exit(EXIT_GATE)
