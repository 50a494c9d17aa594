"""Interleaved A/B of the replay kernel between two checkouts of kvmcache.

    python benchmarks/ab_kernel.py TREE_A TREE_B [ROUNDS] [--guest SIZE] [--host SIZE]
                                   [--prefetch-a MODE] [--prefetch-b MODE]

Each round runs one child process per side (A then B, then B then A in the next round, and
so on), with ``PYTHONPATH`` pointing at that side's tree and the same virtual environment. A
child generates the `steady` and `boot` synthetic mixes (2M events, 4 vCPUs, seed 1; with
``--guest``, that guest memory, and ``--host`` host memory, 256GiB by default then) and
replays each under every strategy three times without validation; the figure is events per
second of the median replay, timed by the replaying thread's CPU time
(``time.thread_time``), so that other work on a shared machine slows both sides alike
instead of skewing one. The table gives each round's figure and the ratio B/A of the
medians. Both trees need a warm numba cache (a first run compiles).

``--prefetch-a`` / ``--prefetch-b`` set that side's software prefetch (``state.py``,
``PREFETCH_MIN_GFNS`` and ``PREFETCH_AHEAD``): ``auto`` (the tree's own rule, the default),
``off``, ``on`` (at every guest size, the tree's distance), or a number of events ahead (at
every guest size). TREE_A and TREE_B may be the same tree: then compare two settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import numpy as np
from kvmcache.sim.counters import STRATEGIES
from kvmcache.sim.replay import replay_events
try:
    from kvmcache.synth.generator import generate
except ImportError:  # a tree from before the synth package
    from kvmcache.trace.synth import generate
guest, host, prefetch = sys.argv[1:4]
if prefetch != "auto":
    from kvmcache.sim import state
    if not hasattr(state, "PREFETCH_AHEAD"):
        sys.exit("this tree has no software prefetch (state.PREFETCH_AHEAD)")
    state.PREFETCH_MIN_GFNS = 0
    if prefetch == "off":
        state.PREFETCH_AHEAD = 0
    elif prefetch != "on":
        state.PREFETCH_AHEAD = int(prefetch)
sizes = {"guest_memory": guest, "host_memory": host} if guest else {}
out = {}
for scenario in ("steady", "boot"):
    header, blocks = generate(scenario, events=2_000_000, seed=1, vcpus=4, **sizes)
    ev = np.concatenate(list(blocks))
    for alloc in STRATEGIES:
        replay_events(header, ev[:1000], alloc, validate=False)
        times = []
        for _ in range(3):
            t0 = time.thread_time()
            replay_events(header, ev, alloc, validate=False)
            times.append(time.thread_time() - t0)
        out[f"{scenario} {alloc}"] = len(ev) / statistics.median(times) / 1e6
print(json.dumps(out))
"""


def _prefetch_mode(text: str) -> str:
    if text in ("auto", "on", "off") or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError("expected auto, on, off or a positive number of events")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("rounds", nargs="?", type=int, default=3)
    ap.add_argument("--guest", default="", help="guest memory, e.g. 64GiB (default: synth's)")
    ap.add_argument("--host", default="256GiB", help="host memory with --guest (256GiB)")
    ap.add_argument("--prefetch-a", type=_prefetch_mode, default="auto", metavar="MODE")
    ap.add_argument("--prefetch-b", type=_prefetch_mode, default="auto", metavar="MODE")
    args = ap.parse_args()
    sides = {
        "A": (args.tree_a, args.prefetch_a),
        "B": (args.tree_b, args.prefetch_b),
    }
    res: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for r in range(args.rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            tree, prefetch = sides[side]
            env = dict(os.environ, PYTHONPATH=tree, KVMCACHE_JIT="1")
            p = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    args.guest,
                    args.host if args.guest else "",
                    prefetch,
                ],
                env=env,
                capture_output=True,
                text=True,
                cwd=tree,
            )
            if p.returncode:
                print(p.stderr[-2000:])
                return 1
            res[side].append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"{'mix strategy':26s} {'A, M events/s':>20s} {'B, M events/s':>20s}  B/A")
    for k in res["A"][0]:
        av = [x[k] for x in res["A"]]
        bv = [x[k] for x in res["B"]]
        ratio = statistics.median(bv) / statistics.median(av)
        print(
            f"{k:26s} {' '.join(f'{x:5.1f}' for x in av):>20s} "
            f"{' '.join(f'{x:5.1f}' for x in bv):>20s}  {ratio:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
