"""Model parameters (MODEL.md section 2): defaults, parsing, validation and merging.

Parameters merge as defaults < trace ``params`` < ``--config`` file < ``--set``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvmcache.errors import KvmcacheError
from kvmcache.limits import excerpt, long_number, number_too_long
from kvmcache.trace.events import MAX_VCPUS


@dataclass(frozen=True)
class Param:
    name: str
    default: int | bool
    help: str

    @property
    def is_bool(self) -> bool:
        return isinstance(self.default, bool)


PARAMS: tuple[Param, ...] = (
    Param("capacity", 40, "KVM cache capacity (KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE)"),
    Param("min_desc", 14, "top-up min of desc (pte_list_desc)"),
    Param("min_sept", 5, "top-up min of sept (external_spt)"),
    Param("min_spt", 5, "top-up min of spt (shadow_page)"),
    Param("min_header", 5, "top-up min of header (page_header)"),
    Param("pamt_pairs", 5, "pairs the per-vCPU pamt cache is filled to"),
    Param("prealloc_sept", 5, "dpamt-prealloc: S-EPT pages in the shared list target"),
    Param("tdr_pages", 1, "TD control pages: TDR"),
    Param("tdcs_pages", 4, "TD control pages: TDCS"),
    Param("tdvpr_pages", 1, "vCPU control pages: TDVPR"),
    Param("tdcx_pages", 5, "vCPU control pages: TDCX"),
    Param("spread", 1, "host allocator: fresh pages round-robin over this many 2 MiB ranges"),
    Param(
        "kernel_base_pfn", 0, "first pfn of the kernel allocation region (0 = after host memory)"
    ),
    Param("kernel_pages", 1048576, "size of the kernel allocation region in pages"),
    Param("header_bytes", 192, "size of one header slab object (byte figures only)"),
    Param("desc_bytes", 128, "size of one desc slab object (byte figures only)"),
    Param("teardown", True, "destroy the VM at the end of the trace"),
    Param("ns_alloc", 400, "ns of one alloc_page() (buddy allocator and zeroing; assumption)"),
    Param("ns_slab", 40, "ns of one slab object added to desc or header (assumption)"),
    Param("ns_topup", 100, "ns of fixed cost per cache top-up that adds objects (assumption)"),
    Param("ns_free", 100, "ns of one free_page() (assumption)"),
    Param("ns_pamt_add", 4000, "ns of one PAMT.ADD SEAMCALL under pamt_lock (measured average)"),
    Param("ns_pamt_remove", 2000, "ns of one PAMT.REMOVE under pamt_lock (measured average)"),
    Param("ns_fault", 1000, "ns of fixed work per locked section of a fault (assumption)"),
    Param("ns_link", 500, "ns per page table a fault links (S-EPT add; assumption)"),
)
#: Section 8 costs are at most 2^32 - 1 ns each.
NS_MAX = 2**32 - 1
PARAM_BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
DEFAULTS: dict[str, int | bool] = {p.name: p.default for p in PARAMS}

_INT_RE = re.compile(r"^\s*[+]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)\s*$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_value(name: str, value: Any, source: str = "") -> int | bool:
    """Convert one parameter value (a YAML scalar or a command-line string) to its type."""
    where = f"{source}: " if source else ""
    param = PARAM_BY_NAME.get(name)
    if param is None:
        known = ", ".join(PARAM_BY_NAME)
        raise KvmcacheError(f"{where}unknown parameter {excerpt(name)} (known: {known})")
    if param.is_bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise KvmcacheError(
            f"{where}parameter {name}: {excerpt(value)} is not a boolean (true/false, yes/no, on/off, 1/0)"
        )
    if isinstance(value, bool):
        raise KvmcacheError(f"{where}parameter {name}: a boolean is not an integer")
    if isinstance(value, str) and number_too_long(value):
        raise long_number(f"{where}parameter {name}", value)
    if isinstance(value, int):
        out = value
    elif isinstance(value, str) and _INT_RE.match(value):
        try:
            out = int(value.strip(), 0)
        except ValueError:
            raise KvmcacheError(
                f"{where}parameter {name}: {excerpt(value)} is not an integer"
            ) from None
    elif isinstance(value, str) and _INT_RE.match(value.strip().lstrip("-").lstrip()):
        raise KvmcacheError(f"{where}parameter {name}: must be >= 0, got {value.strip()}")
    else:
        raise KvmcacheError(f"{where}parameter {name}: {excerpt(value)} is not an integer")
    if out < 0:
        raise KvmcacheError(f"{where}parameter {name}: must be >= 0, got {out}")
    if out >= 2**63:
        raise KvmcacheError(f"{where}parameter {name}: {out} is too large (at most 2**63 - 1)")
    return out


def parse_assignments(pairs: Iterable[str]) -> dict[str, int | bool]:
    """``--set NAME=VALUE`` strings to a dict of typed values."""
    out: dict[str, int | bool] = {}
    for item in pairs:
        if "=" not in item:
            raise KvmcacheError(f"--set {excerpt(item)}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        name = name.strip()
        out[name] = parse_value(name, value, "--set")
    return out


def parse_mapping(data: Mapping[str, Any], source: str) -> dict[str, int | bool]:
    """A mapping of parameter names (trace ``params``, config file) to typed values."""
    if not isinstance(data, Mapping):
        raise KvmcacheError(f"{source}: parameters must be a mapping of NAME: VALUE")
    for k in data:
        if not isinstance(k, (str, int)) or isinstance(k, bool):
            raise KvmcacheError(f"{source}: parameter name {excerpt(k)} is not a name")
    return {str(k): parse_value(str(k), v, source) for k, v in data.items()}


def validate(params: Mapping[str, int | bool]) -> None:
    """MODEL.md section 2 validation of a complete, merged parameter set."""
    for p in PARAMS:
        if p.name not in params:
            raise KvmcacheError(f"parameter {p.name} is missing")
        v = params[p.name]
        if not p.is_bool and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise KvmcacheError(f"parameter {p.name}: must be an integer >= 0, got {v!r}")
    mins = {n: params[n] for n in ("min_desc", "min_sept", "min_spt", "min_header")}
    biggest = max(mins, key=lambda n: mins[n])
    if params["capacity"] < mins[biggest]:
        raise KvmcacheError(
            f"parameter capacity: {params['capacity']} is below {biggest} ({mins[biggest]}); "
            "capacity must be >= every min_*"
        )
    for p in PARAMS:
        if p.name.startswith("ns_") and params[p.name] > NS_MAX:
            raise KvmcacheError(
                f"parameter {p.name}: {params[p.name]} is too large (at most 2**32 - 1 ns)"
            )
    if params["spread"] < 1:
        raise KvmcacheError("parameter spread: must be >= 1")
    if params["pamt_pairs"] < 1:
        raise KvmcacheError(
            "parameter pamt_pairs: must be >= 1 (0 could never supply a pair; a fault would retry forever)"
        )


def merge(*layers: Mapping[str, int | bool] | None) -> dict[str, int | bool]:
    """Defaults overlaid by each layer in order, then validated."""
    out: dict[str, int | bool] = dict(DEFAULTS)
    for layer in layers:
        if layer:
            out.update(layer)
    validate(out)
    check_bounds(out)
    return out


# --- bounds: every quantity the model derives from the parameters fits its type -------------

#: Largest pfn the model addresses (64 EiB of host): per-range state beyond 2 TiB is kept
#: only for the ranges a trace touches (sim/state.py), and every pfn stays far below 2**63.
MAX_PFN = 1 << 54
#: Most words of per-vCPU state (caches, PAMT pairs, control pages) one vCPU may need, so
#: that 65536 vCPUs fit the model's state limit (64 GiB): 131072 words = 1 MiB.
MAX_VCPU_WORDS = (64 << 30) // (8 * MAX_VCPUS)
#: Kernel integers are signed 64-bit.
_I64_MAX = (1 << 63) - 1


def vcpu_words(params: Mapping[str, int | bool]) -> int:
    """Words of per-vCPU state the model sizes from ``params`` (sim/state.py, the largest
    case: a DPAMT strategy with preallocation): object counts, spt, sept, pamt, control."""
    cap = max(int(params["capacity"]), 1)
    target = 2 * int(params["pamt_pairs"]) + int(params["prealloc_sept"])
    ctrl = int(params["tdvpr_pages"]) + int(params["tdcx_pages"])
    return 5 + cap + 3 * cap + max(target, 1) + max(ctrl, 1)


def check_bounds(params: Mapping[str, int | bool]) -> None:
    """Refuse parameters whose derived sizes cannot fit (one line naming the parameter):
    the per-vCPU state, the VM's control pages and the host allocator's spread. The
    header-dependent part (the kernel region) is :func:`check_region`."""
    words = vcpu_words(params)
    if words > MAX_VCPU_WORDS:
        names = ("capacity", "pamt_pairs", "prealloc_sept", "tdvpr_pages", "tdcx_pages")
        share = {
            "capacity": 4 * int(params["capacity"]),
            "pamt_pairs": 2 * int(params["pamt_pairs"]),
            "prealloc_sept": int(params["prealloc_sept"]),
            "tdvpr_pages": int(params["tdvpr_pages"]),
            "tdcx_pages": int(params["tdcx_pages"]),
        }
        big = max(names, key=lambda n: share[n])
        raise KvmcacheError(
            f"parameter {big}: {params[big]} is too large: one vCPU's caches would need "
            f"{words:,} words (at most {MAX_VCPU_WORDS:,}: 4 x capacity + 2 x pamt_pairs + "
            "prealloc_sept + tdvpr_pages + tdcx_pages)"
        )
    ctrl = int(params["tdr_pages"]) + int(params["tdcs_pages"])
    if ctrl > MAX_VCPU_WORDS:
        big = max(("tdr_pages", "tdcs_pages"), key=lambda n: int(params[n]))
        raise KvmcacheError(
            f"parameter {big}: {params[big]} is too large "
            f"(tdr_pages + tdcs_pages at most {MAX_VCPU_WORDS:,})"
        )
    if int(params["spread"]) > MAX_PFN // 512:
        raise KvmcacheError(
            f"parameter spread: {params['spread']} is too large (at most {MAX_PFN // 512:,}, "
            "the 2 MiB ranges of the largest host)"
        )
    if int(params["kernel_base_pfn"]) + int(params["kernel_pages"]) > MAX_PFN:
        big = max(("kernel_base_pfn", "kernel_pages"), key=lambda n: int(params[n]))
        raise KvmcacheError(
            f"parameter {big}: {params[big]} is too large: the kernel region would end "
            f"beyond pfn 2**54 (kernel_base_pfn + kernel_pages at most {MAX_PFN:#x})"
        )


def region_base(host_pfn_limit: int, params: Mapping[str, int | bool]) -> int:
    """First pfn of the kernel region: ``kernel_base_pfn``, or after host memory (the rule
    of sim/state.py ``kernel_base``)."""
    base = int(params["kernel_base_pfn"])
    return base if base else -(-host_pfn_limit // 512) * 512


def fresh_pfn_bound(base: int, pages: int, spread: int) -> int:
    """An upper bound of every value the host allocator's fresh-page formula (MODEL.md
    section 4) takes for k in 0..pages, intermediate results included:
    ``base + 512 * (k mod spread + spread * (k div (512 * spread))) + ((k div spread) mod
    512)`` is at most ``base + pages + 1024 * spread``."""
    return base + pages + 1024 * spread


def check_region(host_pfn_limit: int, params: Mapping[str, int | bool], source: str) -> None:
    """The kernel region of a trace (host memory given by ``host_pfn_limit``) and every
    fresh pfn the allocator can compute in it fit the kernel's integers (one line)."""
    base = region_base(host_pfn_limit, params)
    end = base + int(params["kernel_pages"])
    if max(end, host_pfn_limit) > MAX_PFN:
        which = "kernel_base_pfn" if int(params["kernel_base_pfn"]) else "host memory"
        raise KvmcacheError(
            f"{source}: parameter kernel_pages: the kernel region (from pfn {base:#x}, after "
            f"{which}) would end at pfn {end:#x}, beyond the model's largest host "
            f"({MAX_PFN:#x} pfns)"
            if end > MAX_PFN
            else f"{source}: host_pfn_limit {host_pfn_limit:#x} is beyond the model's "
            f"largest host ({MAX_PFN:#x} pfns)"
        )
    if fresh_pfn_bound(base, int(params["kernel_pages"]), int(params["spread"])) > _I64_MAX:
        raise KvmcacheError(f"{source}: parameter spread: {params['spread']} is too large")
