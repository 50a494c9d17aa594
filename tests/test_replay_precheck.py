"""The compiled pre-check of a chunk (sim/kernel.chunk_valid) never clears a chunk that the
event rules (trace/validate.py) refuse: on random valid chunks with one field mutated it
says "look closer" whenever the validator finds an error."""

from __future__ import annotations

import numpy as np
import pytest
from randtrace import random_trace

from kvmcache.sim import kernel as K
from kvmcache.trace.events import TraceHeader
from kvmcache.trace.validate import Validator

FIELDS = ("op", "flags", "level", "vcpu", "gfn", "pfn")


def _mutate(rng: np.random.Generator, ev: np.ndarray, hdr: dict) -> None:
    i = int(rng.integers(len(ev)))
    field = FIELDS[int(rng.integers(len(FIELDS)))]
    if field == "op":
        ev["op"][i] = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 255]))
    elif field == "flags":
        ev["flags"][i] = int(rng.choice([0, 1, 2, 3, 0x8000]))
    elif field == "level":
        ev["level"][i] = int(rng.choice([0, 1, 2, 3, 4, 255]))
    elif field == "vcpu":
        ev["vcpu"][i] = [0, 65535, 65536, 2**32 - 1][int(rng.integers(4))]
    elif field == "gfn":
        lim = hdr["gfn_limit"]
        ev["gfn"][i] = [0, lim - 1, lim, 2**64 - 1][int(rng.integers(4))]
    else:
        lim = hdr["host_pfn_limit"]
        ev["pfn"][i] = [0, lim - 1, lim, 2**64 - 1][int(rng.integers(4))]


@pytest.mark.parametrize("vm_type", ["tdx", "vmx"])
def test_precheck_clears_only_what_the_validator_accepts(vm_type):
    cleared = flagged = 0
    for seed in range(400):
        rng = np.random.default_rng(90_000 + seed)
        hdr, ev, _ = random_trace(rng, int(rng.integers(1, 60)), vm_type=vm_type, root_level=4)
        if len(ev) == 0:
            continue
        for _ in range(int(rng.integers(0, 3))):
            _mutate(rng, ev, hdr)
        header = TraceHeader(vm_type, 4, hdr["gfn_limit"], hdr["host_pfn_limit"])
        ok = K.chunk_valid(
            K.records_u64(ev),
            np.uint64(hdr["gfn_limit"]),
            np.uint64(hdr["host_pfn_limit"]),
            vm_type == "tdx",
        )
        bad = Validator(header).first_error(ev, 0)
        if ok:
            assert bad is None, (seed, bad)
            cleared += 1
        else:
            flagged += 1
    assert cleared > 50 and flagged > 50  # both answers are exercised
