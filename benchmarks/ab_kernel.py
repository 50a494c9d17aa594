"""Interleaved A/B of the replay kernel between two checkouts of kvmcache.

    python benchmarks/ab_kernel.py TREE_A TREE_B [ROUNDS]

Each round runs one child process per tree (A then B, then B then A in the next round, and
so on), with ``PYTHONPATH`` pointing at that tree and the same virtual environment. A child
generates the `steady` and `boot` synthetic mixes (2M events, 4 vCPUs, seed 1) and replays
each under every strategy three times without validation; the figure is events per second
of the median replay, timed by the replaying thread's CPU time (``time.thread_time``), so
that other work on a shared machine slows both sides alike instead of skewing one. The
table gives each round's figure and the ratio B/A of the medians. Both trees need a warm
numba cache (a first run compiles).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, time
import numpy as np
from kvmcache.sim.counters import STRATEGIES
from kvmcache.sim.replay import replay_events
try:
    from kvmcache.synth.generator import generate
except ImportError:  # a tree from before the synth package
    from kvmcache.trace.synth import generate
out = {}
for scenario in ("steady", "boot"):
    header, blocks = generate(scenario, events=2_000_000, seed=1, vcpus=4)
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


def main() -> int:
    a, b = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    res: dict[str, list[dict[str, float]]] = {a: [], b: []}
    for r in range(rounds):
        for tree in (a, b) if r % 2 == 0 else (b, a):
            env = dict(os.environ, PYTHONPATH=tree, KVMCACHE_JIT="1")
            p = subprocess.run(
                [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, cwd=tree
            )
            if p.returncode:
                print(p.stderr[-2000:])
                return 1
            res[tree].append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"{'mix strategy':26s} {'A, M events/s':>20s} {'B, M events/s':>20s}  B/A")
    for k in res[a][0]:
        av = [x[k] for x in res[a]]
        bv = [x[k] for x in res[b]]
        ratio = statistics.median(bv) / statistics.median(av)
        print(
            f"{k:26s} {' '.join(f'{x:5.1f}' for x in av):>20s} "
            f"{' '.join(f'{x:5.1f}' for x in bv):>20s}  {ratio:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
