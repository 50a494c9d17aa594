"""The one event record (INTERFACES.md section 1): dtype, op codes, levels, flags, trace header."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The 32-byte little-endian record shared by the binary format, the YAML reader and the kernel.
EVENT_DTYPE = np.dtype(
    [
        ("ts", "<u8"),
        ("gfn", "<u8"),
        ("pfn", "<u8"),
        ("vcpu", "<u4"),
        ("op", "u1"),
        ("level", "u1"),
        ("flags", "<u2"),
    ]
)
assert EVENT_DTYPE.itemsize == 32

OP_VM_CREATE = 1
OP_VM_DESTROY = 2
OP_VCPU_CREATE = 3
OP_VCPU_DESTROY = 4
OP_FAULT = 5
OP_UNMAP = 6
OP_SPLIT = 7

OP_NAMES: dict[int, str] = {
    OP_VM_CREATE: "vm_create",
    OP_VM_DESTROY: "vm_destroy",
    OP_VCPU_CREATE: "vcpu_create",
    OP_VCPU_DESTROY: "vcpu_destroy",
    OP_FAULT: "fault",
    OP_UNMAP: "unmap",
    OP_SPLIT: "split",
}
OP_CODES: dict[str, int] = {name: code for code, name in OP_NAMES.items()}

LEVEL_4K = 1
LEVEL_2M = 2
LEVEL_1G = 3
LEVEL_NAMES: dict[int, str] = {LEVEL_4K: "4k", LEVEL_2M: "2m", LEVEL_1G: "1g"}
LEVEL_CODES: dict[str, int] = {name: code for code, name in LEVEL_NAMES.items()}

FLAG_PRIVATE = 0x1
FLAGS_KNOWN = FLAG_PRIVATE

#: Ops that use each field (others ignore it).
OPS_WITH_VCPU = (OP_VCPU_CREATE, OP_VCPU_DESTROY, OP_FAULT)
OPS_WITH_GFN = (OP_FAULT, OP_UNMAP, OP_SPLIT)
OPS_WITH_LEVEL = (OP_FAULT, OP_UNMAP)

MAX_VCPUS = 65536
U64_MAX = (1 << 64) - 1

VM_TYPES = ("vmx", "tdx")  # index = binary header code


@dataclass
class TraceHeader:
    """What a trace declares about its VM, whatever its file format."""

    vm_type: str  # "tdx" or "vmx"
    root_level: int  # 4 or 5
    gfn_limit: int
    host_pfn_limit: int
    count: int | None = None  # events, when known up front
    complete: bool = True  # binary: the writer closed the file cleanly
    version: tuple[int, int] = (1, 0)
    params: dict[str, Any] = field(default_factory=dict)  # YAML `params` / sidecar defaults
    path: str = ""
    format: str = "binary"  # "binary" or "yaml"

    @property
    def is_tdx(self) -> bool:
        return self.vm_type == "tdx"


def empty(n: int) -> np.ndarray:
    """A zeroed array of ``n`` event records."""
    return np.zeros(n, dtype=EVENT_DTYPE)
