"""`kvmcache info TRACE`: header fields and event statistics, streamed chunk by chunk."""

from __future__ import annotations

import json
import os
from typing import Any

import click
import numpy as np
import yaml

from kvmcache import __version__
from kvmcache.errors import KvmcacheError
from kvmcache.params import parse_mapping
from kvmcache.trace import TraceSource, import_sidecar_path, open_trace, sidecar_path
from kvmcache.trace.events import (
    FLAG_PRIVATE,
    LEVEL_NAMES,
    MAX_VCPUS,
    OP_FAULT,
    OP_NAMES,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
)
from kvmcache.trace.validate import Validator

SCHEMA = "kvmcache.info/1"
PAGE_SIZE = 4096


def _load_import(path: str) -> dict[str, Any] | None:
    if path == "-":
        return None
    side = import_sidecar_path(path)
    if not os.path.exists(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        problem = " ".join(str(e).split())
        raise KvmcacheError(f"{side}: cannot read import sidecar: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KvmcacheError(f"{side}: import sidecar must be a YAML mapping")
    vmap = data.get("vcpu_map")
    if vmap is not None and not isinstance(vmap, dict):
        raise KvmcacheError(f"{side}: vcpu_map must be a mapping of thread label to vCPU index")
    return data


def gather(source: TraceSource) -> dict[str, Any]:
    """Validate every event and return the info document (without the import sidecar)."""
    h = source.header
    validator = Validator(h)
    ops = np.zeros(8, dtype=np.int64)
    levels = np.zeros(4, dtype=np.int64)
    private = faults = 0
    seen = np.zeros(MAX_VCPUS, dtype=bool)
    first = last = tmin = tmax = None
    regressions = 0
    n = 0
    for chunk in source.chunks():
        validator.check(chunk, n)
        if len(chunk) == 0:
            continue
        op = chunk["op"]
        ops += np.bincount(op, minlength=8)[:8]
        is_fault = op == OP_FAULT
        faults += int(np.count_nonzero(is_fault))
        private += int(np.count_nonzero(chunk["flags"][is_fault] & FLAG_PRIVATE))
        levels += np.bincount(chunk["level"][is_fault], minlength=4)[:4]
        with_vcpu = is_fault | (op == OP_VCPU_CREATE) | (op == OP_VCPU_DESTROY)
        seen[chunk["vcpu"][with_vcpu]] = True
        ts = chunk["ts"]
        if first is None:
            first = int(ts[0])
        elif last > int(ts[0]):
            regressions += 1
        regressions += int(np.count_nonzero(ts[1:] < ts[:-1]))
        last = int(ts[-1])
        cmin, cmax = int(ts.min()), int(ts.max())
        tmin = cmin if tmin is None else min(tmin, cmin)
        tmax = cmax if tmax is None else max(tmax, cmax)
        n += len(chunk)
    side = sidecar_path(h.path) if h.format == "binary" else h.path
    params = parse_mapping(h.params, side) if h.params else {}
    vcpus = np.flatnonzero(seen)
    return {
        "schema": SCHEMA,
        "version": __version__,
        "trace": {
            "path": h.path,
            "format": h.format,
            "format_version": f"{h.version[0]}.{h.version[1]}",
            "vm_type": h.vm_type,
            "root_level": h.root_level,
            "gfn_limit": h.gfn_limit,
            "guest_memory_bytes": h.gfn_limit * PAGE_SIZE,
            "host_pfn_limit": h.host_pfn_limit,
            "host_memory_bytes": h.host_pfn_limit * PAGE_SIZE,
            "declared_count": h.count,
            "complete": h.complete,
        },
        "events": n,
        "ops": {name: int(ops[code]) for code, name in OP_NAMES.items()},
        "faults": {
            "total": faults,
            "private": private,
            "shared": faults - private,
            "levels": {name: int(levels[code]) for code, name in LEVEL_NAMES.items()},
        },
        "vcpus": {"count": len(vcpus), "max": int(vcpus[-1]) if len(vcpus) else None},
        "ts": {
            "first": first,
            "last": last,
            "min": tmin,
            "max": tmax,
            "span": (tmax - tmin) if tmax is not None else None,
            "regressions": regressions,
        },
        "params": params,
    }


def human_bytes(n: int) -> str:
    """``4294967296`` -> ``4 GiB`` (one decimal when not a whole number of units)."""
    for shift, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            q, r = divmod(n, 1 << shift)
            return f"{q} {unit}" if r == 0 else f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _none(value: Any) -> str:
    return "-" if value is None else str(value)


def _ns(value: int | None) -> str:
    """A time in ns with its unit, and in seconds: ``1500000000 ns (1.500000000 s)``."""
    if value is None:
        return "-"
    return f"{value} ns ({value // 10**9}.{value % 10**9:09d} s)"


def _source_text(source: Any) -> str:
    """The sidecar's ``source`` (a list of inputs) as text: names joined by commas."""
    if source is None:
        return "-"
    if isinstance(source, list):
        return ", ".join(str(s) for s in source) or "-"
    return str(source)


def _no_faults_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """A row saying that the trace has no faults (an empty import), or none."""
    if doc["faults"]["total"]:
        return []
    return [("faults", "none: the trace has no faults (replay models an idle VM)")]


def render_table(doc: dict[str, Any]) -> None:
    """Print the info document as a rich table on standard output."""
    from rich.table import Table

    from kvmcache.commands._common import out_console

    t = doc["trace"]
    table = Table(title="kvmcache info", show_header=True, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    declared = t["declared_count"]
    rows: list[list[tuple[str, str]]] = [
        [
            ("path", t["path"]),
            ("format", f"{t['format']} {t['format_version']}"),
            ("vm type", t["vm_type"]),
            ("root level", str(t["root_level"])),
            ("gfn_limit", f"0x{t['gfn_limit']:x} ({human_bytes(t['guest_memory_bytes'])} guest)"),
            (
                "host_pfn_limit",
                f"0x{t['host_pfn_limit']:x} ({human_bytes(t['host_memory_bytes'])} host)",
            ),
            ("declared count", "unknown (0)" if declared is None else str(declared)),
            ("complete", "yes" if t["complete"] else "no (the writer did not close it)"),
        ],
        [("events", str(doc["events"]))] + [(k, str(c)) for k, c in doc["ops"].items()],
        _no_faults_rows(doc)
        + [
            ("faults private", str(doc["faults"]["private"])),
            ("faults shared", str(doc["faults"]["shared"])),
        ]
        + [(f"faults {k}", str(c)) for k, c in doc["faults"]["levels"].items()],
        [
            ("vcpus", str(doc["vcpus"]["count"])),
            ("max vcpu index", _none(doc["vcpus"]["max"])),
        ],
        [
            ("ts first", _ns(doc["ts"]["first"])),
            ("ts last", _ns(doc["ts"]["last"])),
            ("ts span (max - min)", _ns(doc["ts"]["span"])),
            ("ts regressions", str(doc["ts"]["regressions"])),
        ],
        [
            (
                "params",
                ", ".join(f"{k}={v}" for k, v in doc["params"].items()) or "(none)",
            )
        ],
    ]
    imp = doc.get("import")
    if imp is not None:
        section = [("import source", _source_text(imp.get("source")))]
        vmap = imp.get("vcpu_map") or {}
        items = list(vmap.items())
        text = "\n".join(f"{label} -> {idx}" for label, idx in items[:32])
        if len(items) > 32:
            text += f"\n... ({len(items) - 32} more)"
        section.append(("import vcpu_map", text or "(empty)"))
        rows.append(section)
    for section in rows:
        for i, (k, val) in enumerate(section):
            table.add_row(k, val, end_section=i == len(section) - 1)
    out_console().print(table)


@click.command("info")
@click.argument("trace")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--strict", is_flag=True, help="Treat a truncated binary trace as an error, not a warning."
)
def command(trace: str, fmt: str, strict: bool) -> None:
    """Print TRACE's header and event statistics (`-` reads standard input).

    Every event is validated as replay would; the counts are streamed chunk by chunk.
    """
    source = open_trace(trace, strict=strict)
    doc = gather(source)
    doc["import"] = _load_import(trace)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=1, default=str))
    else:
        render_table(doc)
