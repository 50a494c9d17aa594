"""The `kvmcache info` table: a trace's header fields and statistics (rich)."""

from __future__ import annotations

from typing import Any

from kvmcache.report.units import duration, human_bytes

__all__ = ["human_bytes", "render_table"]


def _ts(value: int | None) -> str:
    """A timestamp in ns with its reading: ``1,500,000 ns (1.50 ms)``."""
    if value is None:
        return "-"
    return f"{value:,} ns ({duration(value)})" if value else "0 ns"


def _none(value: Any) -> str:
    return "-" if value is None else str(value)


def _source_text(source: Any) -> str:
    """The import sidecar's ``source`` (a list of inputs) as text: names joined by commas."""
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

    from kvmcache.report.formats import out_console

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
        [("events", f"{doc['events']:,}")] + [(k, f"{c:,}") for k, c in doc["ops"].items()],
        _no_faults_rows(doc)
        + [
            ("faults private", f"{doc['faults']['private']:,}"),
            ("faults shared", f"{doc['faults']['shared']:,}"),
        ]
        + [(f"faults {k}", f"{c:,}") for k, c in doc["faults"]["levels"].items()],
        [
            ("vcpus", str(doc["vcpus"]["count"])),
            ("max vcpu index", _none(doc["vcpus"]["max"])),
        ],
        [
            ("ts first", _ts(doc["ts"]["first"])),
            ("ts last", _ts(doc["ts"]["last"])),
            ("ts span (max - min)", _ts(doc["ts"]["span"])),
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
