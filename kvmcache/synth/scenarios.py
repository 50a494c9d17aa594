"""The synthetic scenarios: names, descriptions, backings and the defaults of a generation.

Plain data, no numba: ``kvmcache synth --list`` and the command's help read it without
loading the generator (:mod:`kvmcache.synth.generator`, which implements each scenario).
"""

from __future__ import annotations

#: Scenario name -> one-line description (``kvmcache synth --list``).
SCENARIOS: dict[str, str] = {
    "boot": "VM and vCPUs created, guest touches memory mostly sequentially at 4 KiB "
    "(private), a few shared I/O-buffer faults, VM destroyed",
    "steady": "booted guest: random faults over a working set, 4 KiB and 2 MiB leaves, "
    "repeated (spurious) faults, private<->shared conversions (unmap then fault)",
    "hugepage-split": "mostly 2 MiB private leaves, later split to 4 KiB, then 4 KiB unmaps "
    "and refaults",
    "churn": "vCPUs created and destroyed repeatedly while the guest faults and unmaps",
    "scatter": "4 KiB faults and unmaps in runs; with 4k-random backing every page lands "
    "in its own 2 MiB host range (worst case for PAMT pairs), with hugepage backing the best case",
}

BACKINGS: tuple[str, ...] = ("hugepage", "4k-contiguous", "4k-random")

#: Backing used when ``backing`` is not given.
DEFAULT_BACKING: dict[str, str] = {
    "boot": "4k-contiguous",
    "steady": "hugepage",
    "hugepage-split": "hugepage",
    "churn": "4k-contiguous",
    "scatter": "4k-random",
}

DEFAULT_VCPUS = 4
DEFAULT_GUEST_MEMORY = "4GiB"
DEFAULT_HOST_MEMORY = "16GiB"
DEFAULT_EVENTS = 1_000_000
DEFAULT_RATE = 50_000.0  # events per second per vCPU
DEFAULT_JITTER = 0.5
DEFAULT_PRIVATE_FRACTION = {"tdx": 0.9, "vmx": 0.0}
