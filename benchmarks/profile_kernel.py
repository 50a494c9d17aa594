"""Where the replay kernel's time goes: a sampled profile of the jitted code, per function and
per instruction, with `perf` (linux-perf) on the CPU clock (no hardware counters needed).

    python benchmarks/profile_kernel.py [--guest 4GiB] [--events 3000000] [--runs 40]

numba's machine code has no symbols for perf, so the script compiles the kernel afresh (into a
temporary cache directory: only a fresh compile keeps the LLVM module whose functions can be
listed), writes /tmp/perf-PID.map with every compiled function, replays a synthetic `steady`
trace under `perf record`, and dumps the code of the hottest functions so that their hottest
instructions can be shown with `objdump`. A sample lands on the instruction *after* a stalled
one (skid): a hot `test`/`cmp`/`jne` right after a load means that load missed the caches.
Results: benchmarks/RESULTS.md, "Where the kernel's time goes".
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _demangle(name: str) -> str:
    """``run_chunk`` from numba's ``_ZN8kvmcache3sim6kernel9run_chunkB2v...``; wrappers keep
    a prefix."""
    m = re.search(r"kernel(\d+)", name)
    if m is None:
        return name[:48]
    short = name[m.end() : m.end() + int(m.group(1))]
    return short if name.startswith("_ZN") else f"{name.split('_ZN')[0][:16]}{short}"


def _read_code(addr: int, size: int) -> bytes:
    """Up to ``size`` bytes of this process's memory at ``addr``, stopping at the first page
    that is not mapped (read through /proc/self/mem, which fails instead of crashing)."""
    out = bytearray()
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        while len(out) < size:
            at = addr + len(out)
            n = min(size - len(out), 4096 - at % 4096)
            try:
                out += os.pread(mem.fileno(), n, at)
            except OSError:
                break
    return bytes(out)


def child(args: argparse.Namespace, out_dir: str) -> None:
    """Runs under perf: compile, write the perf map, replay, dump the code of every function."""
    import numpy as np

    from kvmcache.sim import kernel as K
    from kvmcache.sim.replay import replay_events
    from kvmcache.synth import generator as synth

    header, blocks = synth.generate(
        "steady", events=args.events, seed=1, vcpus=4, guest_memory=args.guest, host_memory="256GiB"
    )
    ev = np.concatenate(list(blocks))
    replay_events(header, ev[:1000], args.alloc, validate=False)
    funcs = set()
    for name in dir(K):
        d = getattr(K, name)
        for cres in getattr(d, "overloads", {}).values():
            lib = cres.library
            module = getattr(lib, "_final_module", None)
            if module is None:
                continue
            for f in module.functions:
                if not f.is_declaration:
                    addr = lib.get_pointer_to_function(f.name)
                    if addr:
                        funcs.add((addr, f.name))
    ordered = sorted(funcs)
    with open(os.path.join(out_dir, "pid"), "w") as fh:
        fh.write(str(os.getpid()))
    with open(f"/tmp/perf-{os.getpid()}.map", "w") as fh:
        for i, (addr, name) in enumerate(ordered):
            size = ordered[i + 1][0] - addr if i + 1 < len(ordered) else 4096
            size = size if 0 < size < 1 << 20 else 4096
            short = _demangle(name)
            fh.write(f"{addr:x} {size:x} {short}\n")
            with open(os.path.join(out_dir, f"{addr:x}.bin"), "wb") as code:
                code.write(_read_code(addr, size))
    t0 = time.perf_counter()
    for _ in range(args.runs):
        replay_events(header, ev, args.alloc, validate=False)
    rate = args.runs * len(ev) / (time.perf_counter() - t0)
    print(
        f"replay: {rate / 1e6:.1f} M events/s ({args.alloc}, guest {args.guest})", file=sys.stderr
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guest", default="4GiB")
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--alloc", default="dpamt-install")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args, args.child)
        return
    if shutil.which("perf") is None or shutil.which("objdump") is None:
        sys.exit("profile_kernel: needs perf (linux-perf) and objdump (binutils)")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba"))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", tmp]
        cmd += ["--guest", args.guest, "--events", str(args.events), "--runs", str(args.runs)]
        cmd += ["--alloc", args.alloc]
        subprocess.run(
            ["perf", "record", "-q", "-F", "2000", "-o", data, *cmd], check=True, env=env
        )
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", "ip,sym,dso"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        per_func: collections.Counter[str] = collections.Counter()
        per_ip: collections.Counter[tuple[int, str]] = collections.Counter()
        for line in script.splitlines():
            parts = line.split()
            if len(parts) < 3 or not line.rstrip().endswith(".map)"):  # the jitted code
                continue
            ip, sym = int(parts[0], 16), parts[1]
            per_func[sym] += 1
            per_ip[(ip, sym)] += 1
        with open(os.path.join(tmp, "pid")) as fh:  # perf script has read the map: remove it
            unlink_quietly(f"/tmp/perf-{fh.read().strip()}.map")
        total = sum(per_func.values())
        if not total:
            sys.exit("profile_kernel: no samples in the jitted code")
        print(f"\n{total} samples in jitted code; per function:")
        for sym, n in per_func.most_common(8):
            print(f"  {100 * n / total:5.1f}%  {sym}")
        starts = sorted(int(f[:-4], 16) for f in os.listdir(tmp) if f.endswith(".bin"))
        print(f"\nhottest instructions (the sample lands after the stalled one), top {args.top}:")
        for (ip, sym), n in per_ip.most_common(args.top):
            base = max((s for s in starts if s <= ip), default=None)
            if base is None:
                continue
            asm = subprocess.run(
                ["objdump", "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={base:#x}",
                 os.path.join(tmp, f"{base:x}.bin")],
                check=True, capture_output=True, text=True,
            ).stdout.splitlines()  # fmt: skip
            at = [i for i, a in enumerate(asm) if a.strip().startswith(f"{ip:x}:")]
            print(f"\n  {100 * n / total:5.1f}%  {sym} +{ip - base:#x}")
            for a in asm[max(0, at[0] - 3) : at[0] + 1] if at else []:
                print("      " + " ".join(a.split("\t")[::2]).strip()[:90])


if __name__ == "__main__":
    main()
