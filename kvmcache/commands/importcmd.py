"""`kvmcache import INPUT... -o OUT.kvmt`: recorded kernel traces (ftrace, trace-cmd, perf) ->
a binary trace plus an `OUT.import.yaml` sidecar. The rules are in docs/import.md."""

from __future__ import annotations

import re
import sys
from fractions import Fraction

import click
import yaml

from kvmcache import verbosity
from kvmcache.errors import KvmcacheError
from kvmcache.importers.mapping import PFN_MAPS, ImportOptions, ImportStats
from kvmcache.importers.sources import import_paths_stream
from kvmcache.importers.text import FORMATS, SKIP_OTHER_VM, SKIP_REASONS
from kvmcache.limits import MAX_NUMBER_CHARS, excerpt
from kvmcache.trace.output import TraceOutput
from kvmcache.trace.sizes import parse_size

PAGE_SIZE = 4096
PAGE_SHIFT = 12


def _limit(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    pages = parse_size(text, option) // PAGE_SIZE
    if pages <= 0:
        raise KvmcacheError(f"{option} {excerpt(text)} is smaller than one 4 KiB page")
    return pages


def parse_vm_values(values: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(VM type, VMM process) from the --vm values: tdx / vmx, and a PID."""
    vm = process = None
    for value in values:
        if value in ("tdx", "vmx"):
            if vm is not None and vm != value:
                raise KvmcacheError(f"--vm {vm} and --vm {value} contradict each other")
            vm = value
        elif value.isascii() and value.isdigit() and len(value) <= MAX_NUMBER_CHARS:
            if process is not None and process != value:
                raise KvmcacheError(f"--vm {process} and --vm {value}: one VM is imported")
            process = str(int(value))
        else:
            raise KvmcacheError(f"--vm {excerpt(value)}: expected tdx, vmx or a process id")
    return vm, process


_DURATION_UNITS = {
    "ns": 1,
    "us": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def parse_duration(text: str, option: str) -> int:
    """``10s``, ``500ms``, ``2m``, ``1h``, ``250us``, ``40ns`` or plain seconds -> ns."""
    m = None
    if len(text) <= MAX_NUMBER_CHARS + 8:  # a number, blanks and a unit
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)?\s*", text)
    if m is None:
        raise KvmcacheError(
            f"{option} {excerpt(text)} is not a duration (a number and a unit ns, us, ms, s, m or h)"
        )
    value = Fraction(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if value < 1 or value >= 2**63:
        raise KvmcacheError(f"{option} {excerpt(text)} must be at least 1 ns and below 2**63 ns")
    return int(value)


def parse_mmio_range(text: str) -> tuple[int, int]:
    """``fec00000-fecfffff`` (guest physical, hex, 0x optional, inclusive) -> gfn range."""
    parts = text.split("-")
    try:
        if len(parts) != 2 or len(text) > 2 * MAX_NUMBER_CHARS:
            raise ValueError
        start, end = (int(p.strip(), 16) for p in parts)
    except ValueError:
        raise KvmcacheError(
            f"--mmio {excerpt(text)}: expected START-END, guest physical addresses in hex "
            "(e.g. fe000000-fe00ffff)"
        ) from None
    if end < start:
        raise KvmcacheError(f"--mmio {excerpt(text)}: END is below START")
    if end >> 64:
        raise KvmcacheError(f"--mmio {excerpt(text)}: beyond 64-bit addresses")
    return start >> PAGE_SHIFT, end >> PAGE_SHIFT


def _sidecar_text(stats: ImportStats) -> str:
    doc = {
        "source": list(stats.sources),
        "producer": stats.producer,
        "vcpu_map": dict(stats.vcpu_map),
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)


def summary(stats: ImportStats, header_line: str) -> str:
    """The import summary printed on standard error."""
    st = stats
    rate = st.lines / st.seconds if st.seconds > 0 else 0.0
    out = [
        f"kvmcache import: {st.lines} lines read from {len(st.sources)} input(s) "
        f"({st.producer}) in {st.seconds:.2f} s ({rate:,.0f} lines/s)",
        "  events: "
        + ", ".join(f"{name} {n}" for name, n in st.events.items())
        + f" (faults from {st.faults_from}"
        + (f": {st.faults_why})" if st.faults_why else ")"),
        f"  lines used: {st.event_lines} became events, {st.vcpu_lines} for vCPU attribution only",
    ]
    if st.quoted_printable:
        out.append(
            "  quoted-printable mail decoded (soft line breaks joined, =XX escapes): "
            + ", ".join(st.quoted_printable)
        )
    if st.mmio_shared:
        out.append(
            f"  MMIO: {st.mmio_shared} fault(s) at MMIO addresses imported as shared (a TD's "
            "MMIO is never private)"
        )
    if st.no_event:
        out.append(
            "  lines with no model event: "
            + ", ".join(f"{name} {n}" for name, n in sorted(st.no_event.items()))
        )
    reasons = SKIP_REASONS + ((SKIP_OTHER_VM,) if st.skipped.get(SKIP_OTHER_VM) else ())
    out.append("  lines skipped: " + ", ".join(f"{r} {st.skipped.get(r, 0)}" for r in reasons))
    if st.vms:
        out.append("  VMs (VMM processes): " + "; ".join(st.vms))
    if st.gaps_cut[0]:
        out.append(
            f"  --max-gap: {st.gaps_cut[0]} gap(s) cut, {st.gaps_cut[1]} ns of idle time "
            "removed (later timestamps moved earlier)"
        )
    vmap = st.vcpu_map
    shown = ", ".join(f"{label} -> {v}" for label, v in list(vmap.items())[:8])
    more = f", ... ({len(vmap) - 8} more)" if len(vmap) > 8 else ""
    out.append(f"  vCPUs found: {len(set(vmap.values()))}" + (f" ({shown}{more})" if vmap else ""))
    out.append(f"  {header_line}")
    out.extend(f"  warning: {w}" for w in st.warnings)
    return "\n".join(out)


@click.command(name="import")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="OUT",
    help="Trace to write: binary, or YAML if .yaml/.yml.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="Producer of text inputs (binary trace.dat / perf.data are recognised by their magic).",
)
@click.option("--as-tdx", is_flag=True, help="What-if: every event private, VM type tdx.")
@click.option(
    "--shared-bit",
    type=click.Choice(["47", "51", "none"]),
    default="none",
    show_default=True,
    help="GPA bit that marks shared memory (TDX); faults without it are private.",
)
@click.option(
    "--vm",
    "vm_values",
    multiple=True,
    metavar="tdx|vmx|PID",
    help="Override the VM type (tdx, vmx), or import the VM of this VMM process (PID, or one "
    "of its thread ids) when the recording holds several; may be given twice.",
)
@click.option(
    "--max-gap",
    metavar="DURATION",
    help="Cut every gap between events longer than this (e.g. 10s, 500ms) down to it.",
)
@click.option(
    "--root-level",
    type=click.Choice(["4", "5"]),
    default="4",
    show_default=True,
    help="TDP levels.",
)
@click.option(
    "--guest-memory", metavar="SIZE", help="Guest size (e.g. 16GiB); default: from the data."
)
@click.option(
    "--host-memory", metavar="SIZE", help="Host size (e.g. 256GiB); default: from the data."
)
@click.option(
    "--pfn-map",
    type=click.Choice(PFN_MAPS),
    default="identity",
    show_default=True,
    help="Synthetic host pfns for faults taken from kvm_page_fault.",
)
@click.option(
    "--mmio",
    "mmio",
    multiple=True,
    metavar="START-END",
    help="With --as-tdx: a guest physical range (hex, inclusive) of MMIO, imported as shared.",
)
@click.option("--strict", is_flag=True, help="An unparseable line is an error (exit 2).")
@click.option("--force", is_flag=True, help="Overwrite OUT.kvmt if it exists.")
def command(
    inputs: tuple[str, ...],
    output: str,
    fmt: str,
    as_tdx: bool,
    shared_bit: str,
    vm_values: tuple[str, ...],
    max_gap: str | None,
    root_level: str,
    guest_memory: str | None,
    host_memory: str | None,
    pfn_map: str,
    mmio: tuple[str, ...],
    strict: bool,
    force: bool,
) -> None:
    """Import recorded kernel traces (ftrace, trace-cmd, perf).

    Import recorded KVM traces (ftrace, trace-cmd report, perf script) into OUT.kvmt.

    INPUT is a text file (optionally .gz, .xz, .bz2 or .zst), `-` for standard input, or a
    binary trace.dat / perf.data (rendered with trace-cmd report / perf script).
    """
    vm, vm_process = parse_vm_values(vm_values)
    options = ImportOptions(
        format=fmt,
        vm_process=vm_process,
        max_gap=None if max_gap is None else parse_duration(max_gap, "--max-gap"),
        as_tdx=as_tdx,
        shared_bit=None if shared_bit == "none" else int(shared_bit),
        vm=vm,
        root_level=int(root_level),
        gfn_limit=_limit(guest_memory, "--guest-memory"),
        host_pfn_limit=_limit(host_memory, "--host-memory"),
        pfn_map=pfn_map,
        mmio=[parse_mmio_range(r) for r in mmio],
        strict=strict,
    )
    options.check()
    if inputs.count("-") > 1:
        raise KvmcacheError("standard input (-) can be given only once")
    target = TraceOutput(output, command="import", force=force, inputs=list(inputs))
    header, chunks, stats = import_paths_stream(inputs, options)
    target.check_yaml_count(header.count)  # before any event is written
    # Chunk by chunk: the stats are complete once the last chunk is read.
    count = target.write(header, chunks, params=header.params)
    target.finish({"import": _sidecar_text(stats)})
    line = (
        f"wrote {output}: {count} events, vm {header.vm_type}, root level "
        f"{header.root_level}, gfn_limit 0x{header.gfn_limit:x}, "
        f"host_pfn_limit 0x{header.host_pfn_limit:x}"
    )
    if not verbosity.is_quiet():
        print(summary(stats, line), file=sys.stderr)
