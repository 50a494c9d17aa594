"""The `kvmcache info` table: a trace's header fields and statistics (rich)."""

from __future__ import annotations

from typing import Any


def human_bytes(n: int) -> str:
    """``4294967296`` -> ``4 GiB`` (one decimal when not a whole number of units)."""
    for shift, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            q, r = divmod(n, 1 << shift)
            return f"{q} {unit}" if r == 0 else f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _none(value: Any) -> str:
    return "-" if value is None else str(value)


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
        [("events", str(doc["events"]))] + [(k, str(c)) for k, c in doc["ops"].items()],
        [
            ("faults private", str(doc["faults"]["private"])),
            ("faults shared", str(doc["faults"]["shared"])),
        ]
        + [(f"faults {k}", str(c)) for k, c in doc["faults"]["levels"].items()],
        [
            ("vcpus", str(doc["vcpus"]["count"])),
            ("max vcpu index", _none(doc["vcpus"]["max"])),
        ],
        [
            ("ts first", _none(doc["ts"]["first"])),
            ("ts last", _none(doc["ts"]["last"])),
            ("ts span (max - min)", _none(doc["ts"]["span"])),
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
        section = [("import source", _none(imp.get("source")))]
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
