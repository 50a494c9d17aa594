"""`make bench`: every performance figure of issue 8 next to its target.

Figures are medians of REPEAT runs (best-of for sub-second start-up timings is not used:
medians throughout), measured on this machine; the machine is printed first. Sizes scale
with KVMCACHE_BENCH_EVENTS (default 4,000,000 events for the end-to-end replay; the
constant-memory check replays that and 4x that).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from kvmcache.sim.counters import STRATEGIES  # noqa: E402
from kvmcache.sim.replay import replay_events  # noqa: E402
from kvmcache.synth import generator as synth  # noqa: E402

REPEAT = int(os.environ.get("KVMCACHE_BENCH_REPEAT", "3"))
E2E_EVENTS = int(os.environ.get("KVMCACHE_BENCH_EVENTS", "4000000"))
KERNEL_EVENTS = 2_000_000
BIN = os.path.join(os.path.dirname(sys.executable), "kvmcache")

Row = dict


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load:.1f}"


def median_time(fn, repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def in_memory(scenario: str, n: int):
    header, blocks = synth.generate(scenario, events=n, seed=1, vcpus=4)
    return header, np.concatenate(list(blocks))


def bench_kernel() -> list[Row]:
    rows = []
    for scenario in ("steady", "boot"):
        header, ev = in_memory(scenario, KERNEL_EVENTS)
        n = len(ev)
        ref = median_time(lambda ev=ev: np.add.reduce(ev["gfn"]))
        ref_rate = n / ref
        rows.append(row(f"numpy reduce of one field ({scenario})", ref_rate, "events/s", None))
        for alloc in STRATEGIES:
            replay_events(header, ev[:1000], alloc, validate=False)
            t = median_time(lambda a=alloc, h=header, e=ev: replay_events(h, e, a, validate=False))
            rate = n / t
            rows.append(row(f"kernel {scenario} {alloc}", rate, "events/s", 80e6))
            # How far from reading one field at memory speed (a reference, no target: the
            # kernel's target is issue 19's 80 M events/s and 3x the kernel it replaced).
            rows.append(
                row(f"  ratio numpy / kernel ({scenario} {alloc})", ref_rate / rate, "x", None)
            )
    return rows


def bench_working_set() -> list[Row]:
    """The kernel's rate against the guest size (the `steady` working set is a quarter of the
    guest): the replay is bound by the latency of its random accesses to leaves, tables and
    per-range refcounts, not by reading events."""
    rows = []
    for gm in ("256MiB", "4GiB", "64GiB"):
        header, blocks = synth.generate(
            "steady", events=KERNEL_EVENTS, seed=1, vcpus=4, guest_memory=gm, host_memory="256GiB"
        )
        ev = np.concatenate(list(blocks))
        replay_events(header, ev[:1000], "dpamt-install", validate=False)
        t = median_time(lambda h=header, e=ev: replay_events(h, e, "dpamt-install", validate=False))
        rows.append(row(f"kernel steady dpamt-install, guest {gm}", len(ev) / t, "events/s", None))
    return rows


SYNTH_EVENTS = 8_000_000


def bench_synth(tmp: str) -> list[Row]:
    """Every scenario into a new binary file (the old one removed first, outside the timing)."""
    rows = []
    path = os.path.join(tmp, "synth.kvmt")
    for scenario in synth.SCENARIOS:

        def once(scenario: str = scenario) -> None:
            header, blocks = synth.generate(scenario, events=SYNTH_EVENTS, seed=2, vcpus=4)
            synth.write(path, header, blocks)

        times = []
        for _ in range(REPEAT):
            if os.path.exists(path):
                os.unlink(path)
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        rate = SYNTH_EVENTS / statistics.median(times)
        rows.append(row(f"synth {scenario} into a new binary file", rate, "events/s", 20e6))
    return rows


def _write_trace(path: str, n: int) -> None:
    header, blocks = synth.generate("steady", events=n, seed=2, vcpus=4)
    synth.write(path, header, blocks)


def _child_rss(cmd: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of a command, measured from a fresh parent."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def bench_end_to_end(tmp: str) -> list[Row]:
    rows = []
    small = os.path.join(tmp, "small.kvmt")
    big = os.path.join(tmp, "big.kvmt")
    t0 = time.perf_counter()
    _write_trace(small, E2E_EVENTS)
    synth_rate = E2E_EVENTS / (time.perf_counter() - t0)
    rows.append(row("synth steady into a binary file", synth_rate, "events/s", 20e6))
    _write_trace(big, 4 * E2E_EVENTS)
    subprocess.run([BIN, "replay", small, "--format", "json"], check=True, capture_output=True)
    results = {}
    for label, path, n in (("1x", small, E2E_EVENTS), ("4x", big, 4 * E2E_EVENTS)):
        runs = [_child_rss([BIN, "replay", path, "--format", "json"]) for _ in range(REPEAT)]
        wall = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        results[label] = rss
        # The target (issue 19) is for 100M events; shorter runs pay the start-up (about
        # 0.6 s) on fewer events: KVMCACHE_BENCH_EVENTS=25000000 measures 25M and 100M.
        target = 40e6 if n >= 100_000_000 else None
        rows.append(row(f"replay end to end, {n:,} events", n / wall, "events/s", target))
        rows.append(row(f"  peak RSS, {n:,} events", rss / 1024, "MiB", None))
    growth = results["4x"] / results["1x"]
    rows.append(row("  RSS growth 4x events (1.0 = constant)", growth, "x", 1.2, lower=True))
    # compare: all five strategies in one pass vs one replay, end to end (both --format json:
    # both hash the trace), on the larger trace (start-up weighs less, and the strategies'
    # threads cross 4x as many chunk boundaries), interleaved so that a change of load
    # touches both alike
    one, five = [], []
    for _ in range(REPEAT):
        one.append(_child_rss([BIN, "replay", big, "--format", "json"])[0])
        wall, rss = _child_rss([BIN, "compare", big, "--format", "json"])
        five.append((wall, rss))
    ratio = statistics.median(w for w, _ in five) / statistics.median(one)
    rows.append(row("compare (5 strategies) / one replay", ratio, "x", 2.0, lower=True))
    n = 4 * E2E_EVENTS
    rows.append(
        row(f"  compare peak RSS, {n:,} events", max(r for _, r in five) / 1024, "MiB", None)
    )
    return rows


def bench_startup() -> list[Row]:
    rows = []
    t = median_time(lambda: subprocess.run([BIN, "--help"], check=True, capture_output=True))
    rows.append(row("kvmcache --help", t, "s", 0.3, lower=True))
    yaml_trace = os.path.join(ROOT, "traces", "first-private-4k.yaml")
    cmd = [BIN, "replay", yaml_trace, "--format", "json"]
    jit = dict(os.environ, KVMCACHE_JIT="1")  # compiled kernel even for a tiny trace
    subprocess.run(cmd, check=True, capture_output=True, env=jit)
    t = median_time(lambda: subprocess.run(cmd, check=True, capture_output=True, env=jit))
    rows.append(row("replay small YAML, warm JIT cache", t, "s", 1.5, lower=True))
    t = median_time(lambda: subprocess.run(cmd, check=True, capture_output=True))
    rows.append(
        row("replay small YAML, as run (tiny trace: Python kernel)", t, "s", 1.5, lower=True)
    )
    return rows


IMPORT_LINES = int(os.environ.get("KVMCACHE_BENCH_IMPORT_LINES", "1000000"))


def write_recording(path: str, n: int, perf: bool = False) -> None:
    """A `trace-cmd report`-style (or, with ``perf``, `perf script`-style) recording of ``n``
    lines: four vCPU threads, each fault seen as kvm_exit, kvm_page_fault,
    kvm_mmu_spte_requested, kvm_entry, with a sched_switch now and then."""
    threads = [(f"CPU {v}/KVM", 4242 + v, v) for v in range(4)]
    systems = {"kvm_mmu_spte_requested": "kvmmmu", "sched_switch": "sched"}

    def ev(name: str) -> str:  # perf: right-aligned `sys:event:`; trace-cmd: padded `event:`
        if perf:
            return f"{systems.get(name, 'kvm')}:{name}:".rjust(32)
        return f"{name}:".ljust(22)

    out = []
    i = 0
    while len(out) < n:
        comm, tid, v = threads[i % 4]
        ts = f"{1000 + i // 100_000}.{(i * 9) % 1_000_000:06d}"
        if perf:
            head = f"{comm:>16} {tid:>6} [{v:03d}] {ts}:"
        else:
            head = f"{comm:>16}-{tid:<6} [{v:03d}] d.... {ts}:"
        gfn = (i * 2654435761) % (1 << 20)
        out.append(
            f"{head} {ev('kvm_exit')} vcpu {v} reason EPT_VIOLATION rip 0xffffffff81000000 "
            "info1 0x0000000000000181 info2 0x0000000000000000 intr_info 0x00000000 "
            "error_code 0x00000000"
        )
        out.append(
            f"{head} {ev('kvm_page_fault')} vcpu {v} rip 0xffffffff81000000 "
            f"address 0x{gfn << 12:016x} error_code 0x181"
        )
        out.append(
            f"{head} {ev('kvm_mmu_spte_requested')} gfn {gfn:x} pfn {0x100000 + gfn:x} level 1"
        )
        out.append(f"{head} {ev('kvm_entry')} vcpu {v}, rip 0xffffffff81000000")
        if i % 16 == 0:
            out.append(
                f"{head} {ev('sched_switch')} prev_comm={comm} prev_pid={tid} prev_prio=120 "
                "prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120"
            )
        i += 1
    with open(path, "w") as f:
        f.write("\n".join(out[:n]) + "\n")


def bench_import(tmp: str) -> list[Row]:
    from kvmcache.importers import mapping
    from kvmcache.importers.sources import import_paths

    path = os.path.join(tmp, "recording.txt")
    write_recording(path, IMPORT_LINES)
    opts = mapping.ImportOptions(as_tdx=True)
    import_paths([path], opts)  # warm: numba loaded, fast lane compiled or loaded
    t = median_time(lambda: import_paths([path], opts))
    rows = [
        row(f"import, library ({IMPORT_LINES:,} lines of text)", IMPORT_LINES / t, "lines/s", 300e3)
    ]
    out = os.path.join(tmp, "imported.kvmt")
    cmd = [BIN, "import", path, "--as-tdx", "-o", out, "--force"]
    t = median_time(lambda: subprocess.run(cmd, check=True, capture_output=True))
    rows.append(row("import, `kvmcache import` end to end", IMPORT_LINES / t, "lines/s", 300e3))
    perf_path = os.path.join(tmp, "recording.perf.txt")
    write_recording(perf_path, IMPORT_LINES, perf=True)
    import_paths([perf_path], opts)
    t = median_time(lambda: import_paths([perf_path], opts))
    rows.append(row("import, library, `perf script` text", IMPORT_LINES / t, "lines/s", 300e3))
    n = 100_000
    lines = open(path).read().splitlines()[:n]
    t = median_time(lambda: mapping.import_text(iter(lines), opts))
    rows.append(row("  Python path only (import_text)", n / t, "lines/s", None))
    return rows


def bench_sweep() -> list[Row]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_sweep

    return bench_sweep.run()


def row(figure: str, value: float, unit: str, target: float | None, lower: bool = False) -> Row:
    return {"figure": figure, "value": value, "unit": unit, "target": target, "lower": lower}


def fmt(v: float, unit: str) -> str:
    if unit in ("events/s", "lines/s", "points/s"):
        return f"{v / 1e6:,.2f} M" if v >= 1e6 else f"{v:,.0f}"
    return f"{v:,.3f}" if v < 100 else f"{v:,.0f}"


def main() -> None:
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for part in (
            bench_startup,
            bench_kernel,
            bench_working_set,
            lambda: bench_end_to_end(tmp),
            lambda: bench_synth(tmp),
            lambda: bench_import(tmp),
            bench_sweep,
        ):
            try:
                rows.extend(part())
            except Exception as e:  # a broken benchmark is reported, the others still run
                rows.append(
                    row(f"FAILED {getattr(part, '__name__', 'part')}: {e}", float("nan"), "", None)
                )
    print(f"{'figure':58} {'value':>14} {'unit':9} {'target':>12}  ok")
    for r in rows:
        target = r["target"]
        ok = ""
        tgt = ""
        if target is not None and r["value"] == r["value"]:
            lower = r.get("lower", False)
            good = r["value"] <= target if lower else r["value"] >= target
            ok = "yes" if good else "NO"
            tgt = ("<= " if lower else ">= ") + fmt(target, r["unit"])
        print(f"{r['figure']:58} {fmt(r['value'], r['unit']):>14} {r['unit']:9} {tgt:>12}  {ok}")


if __name__ == "__main__":
    main()
