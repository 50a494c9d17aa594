"""`kvmcache warmup`: compile the jitted code ahead of time (for CI images)."""

from __future__ import annotations

import os
import tempfile
import time

import click

from kvmcache import verbosity


@click.command("warmup")
def command() -> None:
    """Compile the replay kernels ahead of time (for CI images).

    Compile every jitted function now so the first real run starts warm.

    numba caches the machine code next to the package (``cache=True``); this runs a tiny
    trace through every strategy from memory and from a memory-mapped binary file (a
    read-only array is a separate compiled signature), generates a few events of every
    synth scenario and imports a few lines through the importer's fast lane.
    """
    import io

    import numpy as np

    from kvmcache.sim.counters import STRATEGIES
    from kvmcache.sim.replay import replay_many
    from kvmcache.trace import InMemoryTrace, open_trace
    from kvmcache.trace.binary import write_binary
    from kvmcache.trace.events import EVENT_DTYPE, OP_FAULT, OP_VCPU_CREATE, TraceHeader

    t0 = time.perf_counter()
    header = TraceHeader("tdx", 4, 1 << 20, 1 << 24, path="warmup")
    ev = np.zeros(3, dtype=EVENT_DTYPE)
    ev[0] = (0, 0, 0, 0, OP_VCPU_CREATE, 0, 0)
    ev[1] = (10, 0x1000, 0x80000, 0, OP_FAULT, 1, 1)
    ev[2] = (20, 0x2000, 0x90000, 0, OP_FAULT, 1, 0)
    replay_many(InMemoryTrace(header, ev), list(STRATEGIES), timeline_every=1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "warmup.kvmt")
        write_binary(path, header, ev)
        replay_many(open_trace(path), list(STRATEGIES))
    from kvmcache.importers.mapping import Importer
    from kvmcache.synth import generator as synth

    for scenario in synth.SCENARIOS:
        for _ in synth.generate(scenario, events=64, seed=1, vcpus=2)[1]:
            pass
    text = b"".join(
        b" CPU 0/KVM-1 [000] d.... 1.%06d: %s\n" % (i, line)
        for i, line in enumerate(
            [b"kvm_entry: vcpu 0", b"kvm_exit: vcpu 0 reason X"]
            + [b"kvm_mmu_spte_requested: gfn 1 pfn 2 level 1"] * 2
            + [b"kvm_tdp_mmu_spte_changed: as id 0 gfn 1 level 1 old_spte 7 new_spte 0"]
            + [b"kvm_mmu_split_huge_page: gfn 0 spte 87 level 2 errno 0"]
            + [b"kvm_page_fault: vcpu 0 rip 0x1 address 0x1000 error_code 0x6"] * 2
        )
    )
    Importer().feed_stream(io.BytesIO(text), "warmup", fast=True)
    verbosity.note(f"jitted code compiled in {time.perf_counter() - t0:.1f} s")
