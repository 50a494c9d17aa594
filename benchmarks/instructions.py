"""Instructions per event of the compiled replay kernel, counted with valgrind (callgrind).

    python benchmarks/instructions.py [--events 200000 1200000] [--strategies all]
        [--only spurious-4k,unmap-missing-4k,map-unmap-4k,spurious-2m,steady,boot]
        [--repeat 3] [--keep DIR] [--anatomy]

What is measured: whatever kvmcache tree this script sits in (``PYTHONPATH`` is set to it), on
these traces, all for a 4 GiB TDX guest (16 GiB host) with 4 vCPUs:

- four single-kind traces, built directly as EVENT_DTYPE arrays: a warm-up prefix creates the
  VM and the vCPUs and maps 65,536 private 4 KiB leaves (every even gfn of 256 2 MiB regions,
  so 256 level-1 tables) and 256 private 2 MiB leaves (in 256 other regions); then N events of
  one kind, on random gfns (seed 1), vCPUs round robin, 5 us apart:

  ``spurious-4k``      a private 4 KiB fault on a present leaf (even gfn);
  ``unmap-missing-4k`` a private 4 KiB unmap of a missing leaf (odd gfn, its table exists);
  ``map-unmap-4k``     a private 4 KiB fault on an odd gfn (a new leaf in an existing table;
                       its host page shares a 2 MiB range with live leaves, so DPAMT gets and
                       puts take the refcount fast path) followed by its unmap: N/2 pairs;
  ``spurious-2m``      a private 2 MiB fault on a present 2 MiB leaf;

- the ``steady`` and ``boot`` synthetic mixes (kvmcache.synth.generator.generate, seed 1).

Each trace is replayed with ``replay_events(header, events[:W + N], alloc, {"teardown": False},
validate=False)`` for N = N1 and N = N2 (W: the warm-up prefix; 0 for the mixes), and the
figure is the difference: (Ir(N2) - Ir(N1)) / (N2 - N1). Python start-up, imports, the numba
cache load, the warm-up prefix, building the state arrays and the per-call overhead are the
same in both runs and drop out. The VM is not torn down at the end (a per-trace cost, which
would not cancel on the mixes). The replay counters of every run are checked against what the
trace is built to do (for example faults_spurious == N), and the script fails if they differ.

How it counts: the VM has no hardware performance counters, so one child process runs under
``valgrind --tool=callgrind --dump-before=getpgrp`` and calls ``os.getpgrp()`` between
replays; callgrind writes the instructions executed (Ir) since the previous mark into a file
at each mark, so one process measures every configuration. Per configuration the child first
replays W + N2 events (a warm-up, so that any code loaded lazily is loaded outside the counted
runs), then counts N1, N2 and N1 again; the two N1 counts differ by whatever does not repeat
exactly (Python's allocator and the like), printed per event as "noise".

The numba trap: valgrind does not support AVX-512, and numba's cache holds code compiled for
the host CPU. So the counted kernel is compiled for Haswell (``NUMBA_CPU_NAME=haswell``,
``NUMBA_CPU_FEATURES=`` empty: Haswell's own feature set, AVX2 and no AVX-512) into a private
``NUMBA_CACHE_DIR``, natively, by the timing run of that build; the valgrind child uses the
same environment and so loads that cache instead of compiling under valgrind (numba prints its
cache loads with ``NUMBA_DEBUG_CACHE=1``; the script fails if the child saved anything to the
cache, that is compiled). ``KVMCACHE_JIT=1`` is set, and every child checks that the kernel
it runs is the compiled one.

Native speed next to the counts: the same slices are replayed natively, N1 then N2, timed with
``time.thread_time`` (the replaying thread's CPU time), in REPEAT runs of each build that
alternate: the Haswell build (the counted code) and the host build (the tree's own numba
cache, compiled for this CPU as users run it), so the table shows how far the counted code is
from what runs. ns/event is (median(N2) - median(N1)) / (N2 - N1). Instructions per cycle
are Ir/event / (ns/event x clock); a VM's /proc/cpuinfo gives the nominal clock, not the turbo
clock the core runs at, so each timing run also measures the clock with a chain of dependent
operations of known latency (:func:`clock_ghz`).

``--anatomy`` also runs callgrind with ``--dump-instr=yes``, copies run_chunk's machine code
out of the valgrind child (the same code the counts are of), disassembles it with objdump and
splits run_chunk's instructions per event, the same N2 - N1 difference per instruction, into
stack operands (spilled values loaded or stored), branches, other memory operands and the rest;
with ``--keep DIR`` it writes each trace's path (every instruction run at least once per two
events, with its count per event) to DIR/anatomy.txt.

Needs valgrind. The default set (6 traces, 5 strategies) takes about 3-4 minutes on a 2-core
machine, half of it the valgrind run; progress goes to stderr, the table (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSES = ("spurious-4k", "unmap-missing-4k", "map-unmap-4k", "spurious-2m")
MIXES = ("steady", "boot")

GUEST_BYTES = 4 << 30
HOST_BYTES = 16 << 30
VCPUS = 4
TS_STEP = 5000  # ns between events: 50,000 events/s per vCPU, as the synth default
REGIONS = 256  # 2 MiB regions with 4 KiB leaves, and as many with a 2 MiB leaf
PFN_BASE = 1 << 20  # guest page g is backed by host page PFN_BASE + g

#: The valgrind child calls os.getpgrp() (libc getpgrp) at each mark, and nothing else does.
MARK_FUNCTION = "getpgrp"
HASWELL_ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}


def fail(msg: str, code: int = 1) -> None:
    print(f"instructions: {msg}", file=sys.stderr)
    sys.exit(code)


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- traces ---------------------------------------------------------------------------------


def _warmup(rng):
    """The shared prefix: VM, vCPUs, 65,536 private 4 KiB leaves in 256 tables, 256 private
    2 MiB leaves; returns the events, the regions of each kind."""
    import numpy as np

    from kvmcache.trace import events as E

    nregions = GUEST_BYTES >> 21
    picked = rng.permutation(nregions)[: 2 * REGIONS]
    small, large = np.sort(picked[:REGIONS]), np.sort(picked[REGIONS:])
    leaves = (small[:, None] * 512 + np.arange(0, 512, 2)[None, :]).ravel()
    n = 1 + VCPUS + len(leaves) + len(large)
    ev = E.empty(n)
    ev["op"][0] = E.OP_VM_CREATE
    ev["op"][1 : 1 + VCPUS] = E.OP_VCPU_CREATE
    ev["vcpu"][1 : 1 + VCPUS] = np.arange(VCPUS)
    k = 1 + VCPUS
    f = slice(k, n)
    ev["op"][f] = E.OP_FAULT
    ev["flags"][f] = E.FLAG_PRIVATE
    ev["vcpu"][f] = np.arange(n - k) % VCPUS
    ev["gfn"][k : k + len(leaves)] = rng.permutation(leaves)
    ev["level"][k : k + len(leaves)] = E.LEVEL_4K
    ev["gfn"][k + len(leaves) :] = rng.permutation(large) * 512
    ev["level"][k + len(leaves) :] = E.LEVEL_2M
    ev["pfn"][f] = ev["gfn"][f] + PFN_BASE
    return ev, small, large


def single_kind(kind: str, n: int, seed: int = 1):
    """(header, events, warm-up length) of one single-kind trace with ``n`` measured events."""
    import numpy as np

    from kvmcache.trace import events as E

    rng = np.random.default_rng(seed)
    warm, small, large = _warmup(rng)
    ev = E.empty(n)
    region = rng.integers(0, REGIONS, n)
    within = 2 * rng.integers(0, 256, n)  # an even page of the region
    if kind == "spurious-4k":
        ev["op"] = E.OP_FAULT
        ev["gfn"] = small[region] * 512 + within
        ev["level"] = E.LEVEL_4K
    elif kind == "unmap-missing-4k":
        ev["op"] = E.OP_UNMAP
        ev["gfn"] = small[region] * 512 + within + 1
        ev["level"] = E.LEVEL_4K
    elif kind == "map-unmap-4k":
        half = region[::2], within[::2]
        gfn = small[half[0]] * 512 + half[1] + 1
        ev["op"][0::2], ev["op"][1::2] = E.OP_FAULT, E.OP_UNMAP
        ev["gfn"][0::2], ev["gfn"][1::2] = gfn, gfn
        ev["level"] = E.LEVEL_4K
    elif kind == "spurious-2m":
        ev["op"] = E.OP_FAULT
        ev["gfn"] = large[region] * 512
        ev["level"] = E.LEVEL_2M
    else:
        raise ValueError(kind)
    ev["flags"] = E.FLAG_PRIVATE
    faults = ev["op"] == E.OP_FAULT
    ev["vcpu"][faults] = np.arange(int(faults.sum())) % VCPUS
    ev["pfn"][faults] = ev["gfn"][faults] + PFN_BASE
    out = np.concatenate([warm, ev])
    out["ts"] = np.arange(len(out), dtype=np.uint64) * TS_STEP
    header = E.TraceHeader("tdx", 4, GUEST_BYTES >> 12, HOST_BYTES >> 12, count=len(out), path=kind)
    return header, out, len(warm)


def mix(scenario: str, n: int):
    """(header, events, 0): the first ``n`` events of a synth trace (no vm_destroy among them)."""
    import numpy as np

    from kvmcache.synth.generator import generate

    header, blocks = generate(
        scenario,
        events=n + 1,
        seed=1,
        vcpus=VCPUS,
        guest_memory=GUEST_BYTES,
        host_memory=HOST_BYTES,
    )
    ev = np.concatenate(list(blocks))[:n]
    header.count, header.path = n, scenario
    return header, ev, 0


def check_counters(kind: str, alloc: str, warm: int, counts: dict[int, dict]) -> list[str]:
    """What each trace is built to do, per replayed N (measured events): the problems found."""
    bad = []

    def want(n: int, name: str, value: int) -> None:
        got = counts[n][name]
        if got != value:
            bad.append(f"{kind} {alloc} N={n}: {name} = {got}, expected {value}")

    w4, w2 = REGIONS * 256, REGIONS
    dpamt = alloc != "none"
    ns = sorted(counts)
    for n in ns:
        want(n, "events", warm + n)
        if kind in MIXES:
            continue
        want(n, "fault_retries", 0)
        if kind == "spurious-4k":
            want(n, "faults", w4 + w2 + n)
            want(n, "faults_spurious", n)
            want(n, "leaves_4k", w4)
            want(n, "unmaps_missing", 0)
        elif kind == "unmap-missing-4k":
            want(n, "faults", w4 + w2)
            want(n, "faults_spurious", 0)
            want(n, "unmaps_missing", n)
            want(n, "unmaps", n)  # every unmap event counts, missing ones too
            want(n, "pamt_put", 0)
        elif kind == "map-unmap-4k":
            want(n, "faults", w4 + w2 + n // 2)
            want(n, "faults_spurious", 0)
            want(n, "leaves_4k", w4 + n // 2)
            want(n, "unmaps", n // 2)
            want(n, "unmaps_missing", 0)
            want(n, "pamt_put", n // 2 if dpamt else 0)
            want(n, "pamt_put_fast", n // 2 if dpamt else 0)
            for same in ("tables_linked_mirror", "pamt_add", "pamt_remove", "pages_allocated"):
                want(n, same, counts[ns[0]][same])  # nothing new but the leaf
        elif kind == "spurious-2m":
            want(n, "faults", w4 + w2 + n)
            want(n, "faults_spurious", n)
            want(n, "leaves_2m", w2)
    if kind == "map-unmap-4k" and dpamt:
        lo, hi = ns[0], ns[-1]
        d = counts[hi]["pamt_get_fast"] - counts[lo]["pamt_get_fast"]
        if d != (hi - lo) // 2:
            bad.append(f"{kind} {alloc}: pamt_get_fast grew by {d}, expected {(hi - lo) // 2}")
    return bad


# --- the children ---------------------------------------------------------------------------


def clock_ghz(iterations: int = 20_000_000) -> float:
    """The core clock in GHz, from the thread CPU time of a chain of dependent operations
    that takes 2 cycles per iteration on any x86-64 (``shr`` then ``xor``; the ``lea`` beside
    it is off the critical path): a VM's /proc/cpuinfo gives the nominal clock, not turbo."""
    import numpy as np

    from kvmcache.jit import compiled

    global _chain
    if _chain is None:

        @compiled(cache=False, nogil=True)
        def chain(n, x, c):
            for _ in range(n):
                x = (x + c) ^ (x >> np.uint64(3))
            return x

        chain(10, np.uint64(1), np.uint64(7))
        _chain = chain
    t0 = time.thread_time()
    _chain(iterations, np.uint64(12345), np.uint64(7))
    return 2 * iterations / (time.thread_time() - t0) / 1e9


_chain = None


def dump_code(dispatcher, path: str) -> list[int]:
    """Write the machine code of the one compiled overload of ``dispatcher`` to ``path``;
    [address, bytes written]. numba keeps no function sizes: up to 256 KiB are copied (from
    /proc/self/mem, stopping at the first unmapped page); what lies past the function's end is
    never executed by it, so it gets no cost."""
    (cres,) = dispatcher.overloads.values()
    addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
    code = bytearray()
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        while len(code) < 1 << 18:
            at = addr + len(code)
            try:
                code += os.pread(mem.fileno(), 4096 - at % 4096, at)
            except OSError:
                break
    with open(path, "wb") as f:
        f.write(code)
    return [addr, len(code)]


def child(mode: str, plan_path: str) -> None:
    """Replay every configuration of the plan; print one JSON line ``RESULT {...}``.

    mode "time": N1 and N2 once each, timed by thread CPU time, then a clock probe.
    mode "count": under callgrind, a mark (os.getpgrp) before and after each counted replay.
    """
    t_start = time.perf_counter()
    import numpy as np

    from kvmcache.sim import kernel as K
    from kvmcache.sim.replay import replay_events
    from kvmcache.trace.events import TraceHeader

    with open(plan_path) as f:
        plan = json.load(f)
    n1, n2 = plan["n1"], plan["n2"]
    traces = {}
    for name, t in plan["traces"].items():
        h = t["header"]
        header = TraceHeader(h["vm_type"], h["root_level"], h["gfn_limit"], h["host_pfn_limit"])
        traces[name] = (header, np.load(t["file"]), t["warm"])
    overrides = {"teardown": False}

    def run(name: str, alloc: str, n: int) -> dict:
        header, ev, warm = traces[name]
        return replay_events(header, ev[: warm + n], alloc, overrides, validate=False).counters

    out: dict = {"configs": []}
    load: list[float] = []
    clock: list[float] = []
    for i, (name, alloc) in enumerate(plan["configs"]):
        t0 = time.perf_counter()
        counts = {n2: run(name, alloc, n2)}  # warm-up: loads (or compiles) what N2 needs
        load.append(time.perf_counter() - t0)
        if i == 0:
            if not hasattr(K.run_chunk, "py_func"):
                fail("the replay kernel is not compiled (NUMBA_DISABLE_JIT set?)")
            out["startup_s"] = time.perf_counter() - t_start
            if mode == "count" and plan.get("anatomy"):
                out["code"] = dump_code(K.run_chunk, plan["code_file"])
        rec: dict = {"name": name, "alloc": alloc}
        if mode == "time":
            for n in (n1, n2):
                t0 = time.thread_time()
                counts[n] = run(name, alloc, n)
                rec[f"t{1 if n == n1 else 2}"] = time.thread_time() - t0
            clock.append(clock_ghz())
        else:
            os.getpgrp()  # mark: what came before (start-up, warm-up) goes into its own dump
            counts[n1] = run(name, alloc, n1)
            os.getpgrp()
            counts[n2] = run(name, alloc, n2)
            os.getpgrp()
            again = run(name, alloc, n1)
            os.getpgrp()
            if again != counts[n1]:
                fail(f"{name} {alloc}: a second replay of N1 events gave other counters")
        rec["counters"] = {str(n): c for n, c in counts.items()}
        out["configs"].append(rec)
        print(
            f"  {mode}: {name} {alloc} done (first replay {load[-1]:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    out["first_replay_s"] = load
    out["clock_ghz"] = clock
    print("RESULT " + json.dumps(out), flush=True)


def run_child(
    mode: str,
    plan_path: str,
    env: dict[str, str],
    prefix: list[str] | None = None,
    log: str | None = None,
) -> tuple[dict, str]:
    """Run a child (under ``prefix``, e.g. valgrind); its RESULT and its other stdout lines."""
    cmd = [*(prefix or []), sys.executable, os.path.abspath(__file__), "--child", mode, plan_path]
    p = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = p.stdout.splitlines()
    result = [ln for ln in lines if ln.startswith("RESULT ")]
    if p.returncode or not result:
        tail = "\n".join(lines[-20:])
        if log and os.path.exists(log):
            with open(log) as f:
                tail += "\nvalgrind's log:\n" + "".join(f.readlines()[-20:])
        fail(f"the {mode} child failed (exit {p.returncode}); its last output:\n{tail}")
    other = "\n".join(ln for ln in lines if not ln.startswith("RESULT "))
    return json.loads(result[-1][len("RESULT ") :]), other


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")
    }
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    env["KVMCACHE_JIT"] = "1"
    env.update(extra)
    return env


# --- the parent -----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu, mhz = platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu == platform.machine():
                    cpu = value.strip()
                elif key.strip() == "cpu MHz" and not mhz:
                    mhz = value.strip()
    except OSError:
        pass

    def git(*args: str) -> str:
        p = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else "?"

    dirty = git("status", "--porcelain", "--", "kvmcache")
    import numba

    vg = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "mhz": mhz,
        "commit": git("rev-parse", "--short", "HEAD")
        + (" + uncommitted kvmcache/" if dirty else ""),
        "subject": git("log", "-1", "--format=%s"),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "valgrind": vg,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    from kvmcache.sim.counters import STRATEGIES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--events",
        nargs=2,
        type=int,
        default=(200_000, 1_200_000),
        metavar=("N1", "N2"),
        help="measured events of the two runs (even, N1 < N2; default 200000 1200000)",
    )
    ap.add_argument(
        "--strategies",
        default="all",
        help="comma-separated, or 'all' (the default)",
    )
    ap.add_argument(
        "--only",
        default=",".join(CLASSES + MIXES),
        help=f"traces, comma-separated (default all: {','.join(CLASSES + MIXES)})",
    )
    ap.add_argument("--repeat", type=int, default=3, help="native runs per build (default 3)")
    ap.add_argument("--keep", metavar="DIR", help="keep the traces and callgrind files in DIR")
    ap.add_argument(
        "--anatomy",
        action="store_true",
        help="also break run_chunk's instructions per event down by class (stack, branch, "
        "memory, other) and list each event's path (in DIR/anatomy.txt with --keep); "
        "needs objdump",
    )
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    n1, n2 = args.events
    if not 0 < n1 < n2 or n1 % 2 or n2 % 2:
        fail(f"bad --events {n1} {n2}: need even counts with 0 < N1 < N2", 2)
    strategies = STRATEGIES if args.strategies == "all" else tuple(args.strategies.split(","))
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        fail(f"bad --strategies {args.strategies!r}: known are {', '.join(STRATEGIES)}, all", 2)
    args.strategies = strategies
    only = tuple(args.only.split(","))
    unknown = [c for c in only if c not in CLASSES + MIXES]
    if unknown or not only:
        fail(f"bad --only {args.only!r}: known are {', '.join(CLASSES + MIXES)}", 2)
    args.only = only
    if args.repeat < 1:
        fail(f"bad --repeat {args.repeat}: must be at least 1", 2)
    if args.anatomy and shutil.which("objdump") is None:
        fail("--anatomy needs objdump (binutils)", 2)
    if args.keep and os.path.exists(args.keep) and os.listdir(args.keep):
        fail(f"--keep {args.keep}: exists and is not empty", 2)
    return args


def build_plan(args: argparse.Namespace, work: str) -> str:
    import numpy as np

    from kvmcache.trace.validate import Validator

    n1, n2 = args.events
    plan: dict = {"n1": n1, "n2": n2, "traces": {}, "configs": []}
    plan["anatomy"] = args.anatomy
    plan["code_file"] = os.path.join(work, "run_chunk.bin")
    for name in args.only:
        progress(f"building the {name} trace ({n2:,} measured events)")
        header, ev, warm = mix(name, n2) if name in MIXES else single_kind(name, n2)
        Validator(header).check(ev, 0)  # a malformed trace fails here, loudly
        path = os.path.join(work, f"{name}.npy")
        np.save(path, ev)
        h = {k: getattr(header, k) for k in ("vm_type", "root_level", "gfn_limit")}
        h["host_pfn_limit"] = header.host_pfn_limit
        plan["traces"][name] = {"file": path, "warm": warm, "header": h}
        plan["configs"] += [(name, alloc) for alloc in args.strategies]
    path = os.path.join(work, "plan.json")
    with open(path, "w") as f:
        json.dump(plan, f)
    return path


def ns_per_event(runs: list[dict], i: int, n1: int, n2: int) -> float:
    """(median N2 time - median N1 time) / (N2 - N1) of configuration ``i`` over the runs."""
    t1 = statistics.median(r["configs"][i]["t1"] for r in runs)
    t2 = statistics.median(r["configs"][i]["t2"] for r in runs)
    return (t2 - t1) * 1e9 / (n2 - n1)


def check_all(where: str, result: dict, plan: dict) -> None:
    bad = []
    for rec in result["configs"]:
        counts = {int(n): c for n, c in rec["counters"].items()}
        warm = plan["traces"][rec["name"]]["warm"]
        bad += check_counters(rec["name"], rec["alloc"], warm, counts)
    if bad:
        fail(f"the {where} replays do not do what the traces are built for:\n  " + "\n  ".join(bad))


def count_under_valgrind(plan_path: str, plan: dict, work: str, env: dict) -> list[dict]:
    """Ir of each counted replay: per config, {"n1": Ir, "n2": Ir, "n1b": Ir}."""
    out = os.path.join(work, "callgrind.out")
    log = os.path.join(work, "valgrind.log")
    prefix = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        f"--dump-before={MARK_FUNCTION}",
        f"--log-file={log}",
    ]
    if plan.get("anatomy"):
        prefix.append("--dump-instr=yes")
    env = dict(env, NUMBA_DEBUG_CACHE="1")
    t0 = time.perf_counter()
    result, cache_log = run_child("count", plan_path, env, prefix, log)
    elapsed = time.perf_counter() - t0
    saved = [ln for ln in cache_log.splitlines() if "saved to" in ln]
    loaded = [ln for ln in cache_log.splitlines() if "data loaded from" in ln]
    if saved or not any("run_chunk" in ln for ln in loaded):
        fail(
            "numba compiled under valgrind instead of loading the Haswell cache "
            f"({len(saved)} cache saves, {len(loaded)} loads); the counts would include it"
        )
    progress(
        f"valgrind run: {elapsed:.0f} s; start-up and the first replay under valgrind "
        f"{result['startup_s']:.0f} s; numba loaded {len(loaded)} cached functions, compiled none"
    )
    check_all("valgrind", result, plan)
    dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    nconf = len(plan["configs"])
    if len(dumps) != 4 * nconf:
        fail(f"expected {4 * nconf} callgrind dumps (4 marks per configuration), got {len(dumps)}")
    totals = []
    for path in dumps:
        with open(path) as f:
            tot = [int(ln.split()[1]) for ln in f if ln.startswith(("totals:", "summary:"))]
        if not tot:
            fail(f"{path}: no totals line")
        totals.append(tot[0])
    irs = [
        {"n1": totals[4 * i + 1], "n2": totals[4 * i + 2], "n1b": totals[4 * i + 3]}
        for i in range(nconf)
    ]
    if plan.get("anatomy"):
        addr, size = result["code"]
        kinds = classify(plan["code_file"], addr)
        for i, ir in enumerate(irs):
            c1 = instruction_costs(dumps[4 * i + 1], addr, addr + size)
            c2 = instruction_costs(dumps[4 * i + 2], addr, addr + size)
            ir["anatomy"] = anatomy(c1, c2, kinds, plan["n2"] - plan["n1"])
    return irs


#: The instruction classes of --anatomy, in the order of its table.
KINDS = ("stack", "branch", "memory", "other")


def classify(code_file: str, addr: int) -> dict[int, tuple[str, str]]:
    """Address -> (class, instruction) of the code in ``code_file``, loaded at ``addr``:
    ``stack`` for an operand on the stack (a spilled value loaded or stored), ``branch``,
    ``memory`` for any other memory operand, ``other`` for the rest."""
    dis = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={addr:#x}", code_file],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = {}
    for line in dis.splitlines():
        head, _, rest = line.partition(":")
        fields = rest.split("\t")
        try:
            at = int(head.strip(), 16)
        except ValueError:
            continue
        if len(fields) < 3:
            continue
        ins = fields[2].strip()
        if ins.startswith("j") or ins.startswith(("call", "ret")):
            kind = "branch"
        elif "(%rsp" in ins:
            kind = "stack"
        elif "(" in ins:
            kind = "memory"
        else:
            kind = "other"
        out[at] = (kind, ins)
    return out


def instruction_costs(path: str, lo: int, hi: int) -> dict[int, int]:
    """Ir per instruction address in [lo, hi) of a callgrind file written with
    --dump-instr=yes (self cost: the inclusive cost line after each ``calls=`` is skipped)."""
    costs: dict[int, int] = {}
    addr = 0
    after_calls = False
    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                pos = parts[0]
                if pos.startswith("0x"):
                    addr = int(pos, 16)
                elif c in "+-":
                    addr += int(pos)
                if after_calls:
                    after_calls = False
                elif lo <= addr < hi and len(parts) >= 3:
                    costs[addr] = costs.get(addr, 0) + int(parts[-1])
            elif line.startswith("calls="):
                after_calls = True
    return costs


def anatomy(c1: dict[int, int], c2: dict[int, int], kinds: dict, dn: int) -> dict:
    """Per event, from the N1 and N2 costs: run_chunk's instructions by class, and the
    instructions executed at least once per 2 events (the event's path), in address order."""
    per = {a: (c2.get(a, 0) - c1.get(a, 0)) / dn for a in set(c1) | set(c2)}
    by = dict.fromkeys(KINDS, 0.0)
    for a, x in per.items():
        by[kinds.get(a, ("other", "?"))[0]] += x
    path = [
        f"{x:5.2f}  +{a - min(kinds):#06x}  {kinds.get(a, ('other', '?'))[1]}"
        for a, x in sorted(per.items())
        if x >= 0.5
    ]
    return {"total": sum(per.values()), **by, "path": path}


def main(argv: list[str] | None = None) -> int:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        child(*args.child)
        return 0
    if shutil.which("valgrind") is None:
        fail("needs valgrind (apt-get install valgrind)", 2)
    info = machine()
    work = args.keep or tempfile.mkdtemp(prefix="kvmcache-icount-")
    os.makedirs(work, exist_ok=True)
    t_all = time.perf_counter()
    try:
        plan_path = build_plan(args, work)
        with open(plan_path) as f:
            plan = json.load(f)
        envs = {
            "host": child_env({}),
            "Haswell": child_env({**HASWELL_ENV, "NUMBA_CACHE_DIR": os.path.join(work, "numba")}),
        }
        runs: dict[str, list[dict]] = {"host": [], "Haswell": []}
        for r in range(args.repeat):
            # The builds alternate, so that a change of load on the machine hits both alike.
            for build in ("host", "Haswell") if r % 2 == 0 else ("Haswell", "host"):
                note = ""
                if not runs[build]:
                    note = (
                        " (the tree's numba cache; compiles if stale)"
                        if build == "host"
                        else " (compiles into a private cache first)"
                    )
                progress(f"native run {r + 1}/{args.repeat}, {build} build{note}")
                res, _ = run_child("time", plan_path, envs[build])
                check_all(f"native ({build} build)", res, plan)
                runs[build].append(res)
        progress(
            f"  first replay: Haswell build {runs['Haswell'][0]['first_replay_s'][0]:.1f} s "
            f"(compile), host build {runs['host'][0]['first_replay_s'][0]:.1f} s"
        )
        progress(f"valgrind run ({len(plan['configs'])} configurations, Haswell build)")
        irs = count_under_valgrind(plan_path, plan, work, envs["Haswell"])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    report(info, args, plan, runs, irs, load, time.perf_counter() - t_all)
    return 0


def report(info, args, plan, runs, irs, load: float, elapsed: float) -> None:
    n1, n2 = args.events
    clock = statistics.median(c for r in runs["Haswell"] for c in r["clock_ghz"])
    print(f"machine: {info['cpu']}; /proc/cpuinfo: {info['mhz'] or '?'} MHz (nominal)")
    print(
        f"core clock: {clock:.2f} GHz measured (dependent shr+xor chain, 2 cycles per "
        "iteration, median over the Haswell runs)"
    )
    print(f"date: {info['date']}, load {load:.1f} at the end, this run {elapsed:.0f} s")
    print(f"commit measured: {info['commit']} ({info['subject']})")
    print(f"Python {info['python']}, numba {info['numba']}, {info['valgrind']}")
    print(
        f"Ir/event = (Ir(N2) - Ir(N1)) / (N2 - N1), N1 = {n1:,}, N2 = {n2:,} measured events, "
        "callgrind, kernel compiled for Haswell (AVX2: valgrind has no AVX-512), not this CPU"
    )
    print(
        "noise = |Ir(N1, again) - Ir(N1)| / (N2 - N1); ns/event: the same difference in "
        f"thread CPU time, medians of {args.repeat} runs alternating the two builds; "
        "host/Haswell = ns(host) / ns(Haswell); IPC = Ir/event / (ns/event (Haswell) x clock)"
    )
    print()
    print(
        "| trace | strategy | Ir/event | noise | ns/event (Haswell) | ns/event (host) | "
        "host/Haswell time | IPC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, (name, alloc) in enumerate(plan["configs"]):
        ir = irs[i]
        per = (ir["n2"] - ir["n1"]) / (n2 - n1)
        noise = abs(ir["n1b"] - ir["n1"]) / (n2 - n1)
        ns_h = ns_per_event(runs["Haswell"], i, n1, n2)
        ns_n = ns_per_event(runs["host"], i, n1, n2)
        ipc = f"{per / (ns_h * clock):.2f}" if ns_h > 0 else "?"
        ratio = f"{ns_n / ns_h:.2f}" if ns_h > 0 else "?"
        label = name
        if name == "map-unmap-4k":
            label = f"{name}, per event (per pair: {2 * per:.1f} Ir, {2 * ns_h:.1f} ns)"
        print(
            f"| {label} | {alloc} | {per:.1f} | {noise:.2f} | {ns_h:.1f} | {ns_n:.1f} | "
            f"{ratio} | {ipc} |"
        )
    if not args.anatomy:
        return
    print()
    print(
        "run_chunk's instructions per event by class (stack: an operand on the stack, that is "
        "a spilled value loaded or stored; memory: any other memory operand):"
    )
    print()
    print(f"| trace | strategy | Ir/event | in run_chunk | {' | '.join(KINDS)} |")
    print("|---|---|---|---|" + "---|" * len(KINDS))
    paths = []
    for i, (name, alloc) in enumerate(plan["configs"]):
        a = irs[i]["anatomy"]
        per = (irs[i]["n2"] - irs[i]["n1"]) / (n2 - n1)
        cells = " | ".join(f"{a[k]:.1f}" for k in KINDS)
        print(f"| {name} | {alloc} | {per:.1f} | {a['total']:.1f} | {cells} |")
        paths.append(f"== {name} {alloc}: instructions run at least once per 2 events")
        paths.append("per event, offset in run_chunk, instruction")
        paths += a["path"] + [""]
    if args.keep:
        with open(os.path.join(args.keep, "anatomy.txt"), "w") as f:
            f.write("\n".join(paths))
        print(f"\nthe paths: {os.path.join(args.keep, 'anatomy.txt')}")


if __name__ == "__main__":
    sys.exit(main())
