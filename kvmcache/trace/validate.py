"""Event validation shared by every trace format (INTERFACES.md section 1), vectorised per chunk.

The problem texts are shared with the YAML reader so a bad event gives the same message
whichever format it came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kvmcache.errors import KvmcacheError
from kvmcache.trace.events import (
    FLAG_PRIVATE,
    FLAGS_KNOWN,
    LEVEL_1G,
    LEVEL_4K,
    MAX_VCPUS,
    OP_FAULT,
    OP_SPLIT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
    OP_VM_CREATE,
    OP_VM_DESTROY,
    TraceHeader,
)

if TYPE_CHECKING:
    from kvmcache.trace import TraceSource

# --- problem texts (one place, used by the Validator and by the YAML reader) -----------------


def bad_op(op: int) -> str:
    """Problem text for an op code outside 1..7."""
    return f"op {op} is not a known event op (1..7)"


def bad_flags(flags: int) -> str:
    """Problem text for reserved flag bits set."""
    return f"reserved flag bits set (flags 0x{flags:x}; only bit 0, private, is defined)"


def bad_level(level: object) -> str:
    """Problem text for a level that is not 1..3."""
    return f"level {level!r} is invalid (4k, 2m, 1g or 1..3)"


def bad_vcpu(vcpu: int) -> str:
    """Problem text for a vCPU index of 65536 or more."""
    return f"vcpu {vcpu} is out of range (must be < {MAX_VCPUS})"


def bad_gfn(gfn: int, limit: int) -> str:
    """Problem text for a gfn at or above gfn_limit."""
    return f"gfn 0x{gfn:x} is out of range (gfn_limit is 0x{limit:x})"


def bad_pfn(pfn: int, limit: int) -> str:
    """Problem text for a fault pfn at or above host_pfn_limit."""
    return f"pfn 0x{pfn:x} is out of range (host_pfn_limit is 0x{limit:x})"


def private_on_vmx() -> str:
    """Problem text for a private fault in a non-TDX trace."""
    return "private fault on a vmx trace (only a tdx VM has private memory)"


def after_destroy(destroy_index: int) -> str:
    """Problem text for an event after the VM was destroyed."""
    return f"event after vm_destroy (event {destroy_index}); a trace describes one VM"


# --- the validator ----------------------------------------------------------------------------


def _first(mask: np.ndarray) -> int | None:
    """Index of the first True in ``mask``, or None."""
    if not mask.any():
        return None
    return int(np.argmax(mask))


class Validator:
    """Checks chunks of events in file order; remembers a ``vm_destroy`` across chunks."""

    def __init__(self, header: TraceHeader) -> None:
        self.header = header
        self.path = header.path
        self._gfn_limit = np.uint64(header.gfn_limit)
        self._pfn_limit = np.uint64(header.host_pfn_limit)
        self.destroyed_at: int | None = None  # global index of the vm_destroy, once seen
        self.checked = 0  # events checked so far

    def first_error(self, chunk: np.ndarray, start: int) -> tuple[int, str] | None:
        """(global index, problem) of the first bad event in ``chunk``, or None."""
        n = len(chunk)
        if n == 0:
            return None
        op = chunk["op"]
        flags = chunk["flags"]
        found: list[tuple[int, int, str]] = []  # (local index, rule priority, problem)

        def rule(prio: int, mask: np.ndarray, problem) -> None:
            i = _first(mask)
            if i is not None:
                found.append((i, prio, problem(i)))

        rule(0, (op < OP_VM_CREATE) | (op > OP_SPLIT), lambda i: bad_op(int(op[i])))
        if self.destroyed_at is not None:
            found.append((0, 1, after_destroy(self.destroyed_at)))
        else:
            d = _first(op == OP_VM_DESTROY)
            if d is not None and d + 1 < n:
                found.append((d + 1, 1, after_destroy(start + d)))
        rule(2, (flags & ~np.uint16(FLAGS_KNOWN)) != 0, lambda i: bad_flags(int(flags[i])))
        is_fault = op == OP_FAULT
        with_level = is_fault | (op == OP_UNMAP)
        level = chunk["level"]
        rule(
            3,
            with_level & ((level < LEVEL_4K) | (level > LEVEL_1G)),
            lambda i: bad_level(int(level[i])),
        )
        vcpu = chunk["vcpu"]
        with_vcpu = is_fault | (op == OP_VCPU_CREATE) | (op == OP_VCPU_DESTROY)
        rule(4, with_vcpu & (vcpu >= MAX_VCPUS), lambda i: bad_vcpu(int(vcpu[i])))
        gfn = chunk["gfn"]
        with_gfn = with_level | (op == OP_SPLIT)
        rule(
            5,
            with_gfn & (gfn >= self._gfn_limit),
            lambda i: bad_gfn(int(gfn[i]), self.header.gfn_limit),
        )
        pfn = chunk["pfn"]
        rule(
            6,
            is_fault & (pfn >= self._pfn_limit),
            lambda i: bad_pfn(int(pfn[i]), self.header.host_pfn_limit),
        )
        if not self.header.is_tdx:
            rule(7, is_fault & ((flags & FLAG_PRIVATE) != 0), lambda i: private_on_vmx())
        if not found:
            return None
        i, _, problem = min(found)
        return start + i, problem

    def check(self, chunk: np.ndarray, start: int) -> None:
        """Raise KvmcacheError for the first bad event of ``chunk`` (global index ``start``)."""
        err = self.first_error(chunk, start)
        if err is not None:
            index, problem = err
            raise KvmcacheError(f"{self.path}: event {index}: {problem}")
        self.note_checked(chunk, start)

    def note_checked(self, chunk: np.ndarray, start: int) -> None:
        """Advance the cross-chunk state past a chunk that passed ``first_error``."""
        if len(chunk) and self.destroyed_at is None:
            d = _first(chunk["op"] == OP_VM_DESTROY)
            if d is not None:
                self.destroyed_at = start + d
        self.checked = max(self.checked, start + len(chunk))


def validate_all(source: TraceSource) -> None:
    """Check every event of an opened trace (anything with ``header`` and ``chunks()``)."""
    v = Validator(source.header)
    start = 0
    for chunk in source.chunks():
        v.check(chunk, start)
        start += len(chunk)
