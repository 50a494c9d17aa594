"""A slow, obvious pure-Python reference implementation of the model (MODEL.md, version 2).

Written straight from the text of the model specification (docs/model.md maps it to the
code), for reading, not for speed, and
sharing no code with the numba kernel, so that the two can be compared counter for counter.
Section numbers in comments refer to MODEL.md.

Every place where MODEL.md is silent and a choice had to be made carries a comment that
starts with ``# CHOICE:``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kvmcache.sim.counters import (
    CACHES,
    COUNTERS,
    FAULT_LATENCY_BUCKETS,
    FAULT_PAGES_BUCKETS,
    STRATEGIES,
)
from kvmcache.trace.events import (
    FLAG_PRIVATE,
    OP_FAULT,
    OP_SPLIT,
    OP_UNMAP,
    OP_VCPU_CREATE,
    OP_VCPU_DESTROY,
    OP_VM_CREATE,
    OP_VM_DESTROY,
)

MIRROR = "mirror"
DIRECT = "direct"
DPAMT_STRATEGIES = ("dpamt-install", "dpamt-alloc", "dpamt-pair", "dpamt-prealloc")
LEAF_COUNTER = {1: "leaves_4k", 2: "leaves_2m", 3: "leaves_1g"}
HELD_PEAK = {name: f"{name}_held_peak" for name in CACHES}
U64_MAX = 2**64 - 1  # section 8.1: every clock value saturates here


class ModelError(Exception):
    """An input error that the model defines (section 5 / 7): stops the replay."""

    def __init__(self, message: str, event_index: int) -> None:
        super().__init__(f"event {event_index}: {message}")
        self.message = message
        self.event_index = event_index


def range_of(pfn: int) -> int:
    """Section 1: the 2 MiB host range that DPAMT refcounts."""
    return pfn >> 9


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class VCpu:
    """Section 4: the per-vCPU caches and the vCPU's control pages."""

    def __init__(self) -> None:
        self.desc = 0  # slab objects: a count only
        self.header = 0  # slab objects: a count only
        self.spt: list[int] = []  # stack of pfns, newest last
        self.sept: list[Any] = []  # pfns, or (p, q0, q1) triples for dpamt-pair
        self.pamt: list[int] = []  # pfns; for dpamt-prealloc the shared list
        self.control: list[int] = []  # TDVPR + TDCX pages, in allocation order


class Table:
    """A page-table page below a root: its spt page and, on the mirror root, its S-EPT page."""

    def __init__(self, spt: int, sept: int | None) -> None:
        self.spt = spt
        self.sept = sept


class Leaf:
    """A present leaf: the event pfn (for a later split) and the remembered host range."""

    def __init__(self, pfn: int | None, rng: int) -> None:
        self.pfn = pfn
        self.rng = rng


class Machine:
    """The whole simulated machine of section 4, with the operations of section 5."""

    def __init__(
        self,
        vm_type: str,
        root_level: int,
        host_pfn_limit: int,
        params: Mapping[str, Any],
        alloc: str,
    ) -> None:
        if alloc not in STRATEGIES:
            raise ValueError(f"unknown strategy {alloc!r}")
        if vm_type not in ("tdx", "vmx"):
            raise ValueError(f"unknown vm type {vm_type!r}")
        self.tdx = vm_type == "tdx"
        # Section 3: on a vmx trace every strategy behaves as none.
        self.strategy = alloc if self.tdx else "none"
        self.dpamt = self.strategy in DPAMT_STRATEGIES
        self.L = root_level
        self.p = dict(params)

        self.c: dict[str, int] = {name: 0 for name in COUNTERS}
        self.hist = [0] * FAULT_PAGES_BUCKETS
        self.latency_hist = [0] * FAULT_LATENCY_BUCKETS
        self.event_index = 0
        self.host_pfn_limit = host_pfn_limit

        # Section 8: the model clock, when each live vCPU is next free, when pamt_lock is
        # next free, and the start of the current fault's event and locked section.
        self.t = 0
        self.busy: dict[int, int] = {}
        self.pamt_free = 0
        self.saturations = 0  # clock additions that hit 2^64 - 1 (for the tests' coverage)
        self.event_start = 0
        self.lock_start = 0

        # Host allocator (section 4).
        kb = int(self.p["kernel_base_pfn"])
        self.kernel_base = kb if kb != 0 else align_up(host_pfn_limit, 512)
        self.kernel_end = self.kernel_base + int(self.p["kernel_pages"])
        self.free_stack: list[int] = []
        self.k = 0

        # DPAMT state (section 4).
        self.refcount: dict[int, int] = {}
        self.pair: dict[int, tuple[int, int]] = {}
        self.cached_refs: dict[int, int] = {}

        # Running totals for the peaks (sums over vCPUs).
        self.held: dict[str, int] = {name: 0 for name in CACHES}
        self.idle_pages = 0

        # VM, vCPUs, roots, tables, leaves.
        self.vm_exists = False
        self.vm_destroyed = False
        self.td_control: list[int] = []
        self.vcpus: dict[int, VCpu] = {}
        self.roots: dict[str, int] = {}  # root -> its spt page
        self.tables: dict[str, dict[tuple[int, int], Table]] = {MIRROR: {}, DIRECT: {}}
        self.leaves: dict[str, dict[tuple[int, int], Leaf]] = {MIRROR: {}, DIRECT: {}}

        # The locked section of a fault (5.4) and the pages it obtained so far (histogram).
        self.in_lock = False
        self.fault_pages = 0

    # ------------------------------------------------------------------ observation

    def observe(self) -> None:
        """Update the held, live-page and idle-page *_peak (section 7: every intermediate state).

        These three quantities only rise when a page is allocated or an object is pushed into
        a cache, so this is called after each of those (alloc_page, push, slab top-up); a
        maximum can never be reached right after a decrease.
        """
        c = self.c
        for name, peak in HELD_PEAK.items():
            if self.held[name] > c[peak]:
                c[peak] = self.held[name]
        live = c["pages_allocated"] - c["pages_freed"]
        c["pages_live_peak"] = max(c["pages_live_peak"], live)
        c["cache_pages_idle_peak"] = max(c["cache_pages_idle_peak"], self.idle_pages)

    def observe_ranges(self) -> None:
        """Update the range *_peak; called after every change of a refcount or cached_refs."""
        c = self.c
        pairs = sum(1 for v in self.refcount.values() if v > 0)
        c["pamt_pairs_peak"] = max(c["pamt_pairs_peak"], pairs)
        only = sum(1 for r, n in self.cached_refs.items() if n > 0 and self.refcount.get(r, 0) == n)
        c["cache_only_ranges_peak"] = max(c["cache_only_ranges_peak"], only)

    # ------------------------------------------------------------------ host allocator

    def alloc_page(self) -> int:
        """Section 4: pop the free stack, else take fresh page k."""
        if self.free_stack:
            pfn = self.free_stack.pop()
        else:
            k = self.k
            s = int(self.p["spread"])
            pfn = self.kernel_base + 512 * (k % s + s * (k // (512 * s))) + ((k // s) % 512)
            if pfn >= self.kernel_end:
                raise ModelError(
                    f"fresh page {k} (pfn {pfn:#x}) is beyond the kernel allocation region "
                    f"[{self.kernel_base:#x}, {self.kernel_end:#x})",
                    self.event_index,
                )
            self.k += 1
        self.advance(self.p["ns_alloc"])
        self.c["pages_allocated"] += 1
        self.observe()
        return pfn

    def free_page(self, pfn: int) -> None:
        self.advance(self.p["ns_free"])
        self.free_stack.append(pfn)
        self.c["pages_freed"] += 1

    def alloc_direct(self) -> int:
        """A page the text marks `alloc_direct` (control pages, split table pages)."""
        pfn = self.alloc_page()
        self.c["alloc_direct"] += 1
        return pfn

    # ------------------------------------------------------------------ time (section 8)

    def advance(self, cost: int) -> None:
        """8.1: every clock addition saturates at 2^64 - 1."""
        if self.t + int(cost) > U64_MAX:
            self.saturations += 1
        self.t = min(self.t + int(cost), U64_MAX)

    def pamt_lock(self, cost: int) -> None:
        """8.2: one PAMT.ADD or PAMT.REMOVE under the global pamt_lock, granted in trace order."""
        c = self.c
        wait = max(0, self.pamt_free - self.t)
        c["pamt_lock_wait_ns"] += wait
        if wait > 0:
            c["pamt_lock_contended"] += 1
        c["pamt_lock_wait_max_ns"] = max(c["pamt_lock_wait_max_ns"], wait)
        self.advance(wait)
        self.advance(cost)
        c["pamt_lock_held_ns"] += int(cost)  # the full cost, even when the clock saturates
        self.pamt_free = self.t

    def begin_locked(self) -> None:
        """8.3: a fault's locked section starts (before its ns_fault)."""
        self.in_lock = True
        self.lock_start = self.t
        self.advance(self.p["ns_fault"])

    def end_locked(self) -> None:
        self.in_lock = False
        d = self.t - self.lock_start
        self.c["time_locked_ns"] += d
        self.c["time_locked_max_ns"] = max(self.c["time_locked_max_ns"], d)

    # ------------------------------------------------------------------ refcounts

    def set_refcount(self, r: int, value: int) -> None:
        self.refcount[r] = value
        self.observe_ranges()

    def set_cached_refs(self, r: int, value: int) -> None:
        self.cached_refs[r] = value
        self.observe_ranges()

    def get(self, pfn: int, v: VCpu | None) -> None:
        """Section 5.3 `get(pfn, cache)`; ``v`` None is `cache = NULL`, else the vCPU's pamt cache."""
        r = range_of(pfn)
        while True:
            self.c["pamt_get"] += 1
            if self.refcount.get(r, 0) > 0:
                self.set_refcount(r, self.refcount[r] + 1)
                self.c["pamt_get_fast"] += 1
                return
            if v is None:
                first = self.alloc_page()
                second = self.alloc_page()
                self.c["alloc_direct"] += 2
                if self.in_lock:
                    # Section 7: the dpamt-alloc fallback's pair counts in fault_pages.
                    self.fault_pages += 2
                break
            if len(v.pamt) < 2:
                # Section 7: a failed get pops whatever pages remain (consumed, and in
                # fault_pages), frees them, and retries after a top-up.
                while v.pamt:
                    self.free_page(self.pop_page(v, "pamt"))
                self.c["fault_retries"] += 1
                self.retry_topup(v)
                # CHOICE: the repeated get is a whole new get: it counts pamt_get again and
                # re-reads the refcount, so it takes the fast path if the retry's top-up
                # gave the range a reference (possible only when the kernel region overlaps
                # guest host ranges, e.g. dpamt-alloc sept pages), as the kernel's
                # tdx_pamt_get() re-checks the atomic refcount.
                continue  # only the failed get is repeated
            first = self.pop_page(v, "pamt")
            second = self.pop_page(v, "pamt")
            break
        self.pair[r] = (first, second)
        self.c["pamt_add"] += 1
        self.c["pamt_lock_acquired"] += 1
        self.pamt_lock(self.p["ns_pamt_add"])
        if self.in_lock:
            self.c["seamcalls_under_mmu_lock"] += 1
        self.set_refcount(r, 1)

    def put(self, r: int) -> None:
        """Section 5.3 `put`, by host range."""
        self.c["pamt_put"] += 1
        n = self.refcount.get(r, 0)
        if n == 0:
            self.c["refcount_underflow"] += 1
            return
        if n > 1:
            self.set_refcount(r, n - 1)
            self.c["pamt_put_fast"] += 1
            return
        self.set_refcount(r, 0)
        self.c["pamt_remove"] += 1
        self.c["pamt_lock_acquired"] += 1
        self.pamt_lock(self.p["ns_pamt_remove"])  # the pair is freed after the release
        first, second = self.pair.pop(r)
        self.free_page(first)
        self.free_page(second)

    # ------------------------------------------------------------------ caches

    @staticmethod
    def pages_of(cache: str, obj: Any) -> int:
        """Idle cache pages one object stands for (section 6, `cache_pages_idle_*`)."""
        if cache in ("desc", "header"):
            return 0
        if isinstance(obj, tuple):
            return len(obj)  # a dpamt-pair (p, q0, q1) object
        return 1

    def push(self, v: VCpu, cache: str, obj: Any) -> None:
        getattr(v, cache).append(obj)
        self.held[cache] += 1
        self.idle_pages += self.pages_of(cache, obj)
        self.observe()

    def pop_page(self, v: VCpu, cache: str) -> Any:
        """Pop the newest object of a non-empty page cache: a real consume (5.2)."""
        obj = getattr(v, cache).pop()
        n = self.pages_of(cache, obj)
        self.held[cache] -= 1
        self.idle_pages -= n
        self.c[f"{cache}_consumed"] += 1
        if self.in_lock:
            self.fault_pages += n
        return obj

    def remove_unused(self, v: VCpu, cache: str) -> Any:
        """Pop the newest object at vCPU destroy (5.8): counts `<cache>_freed_unused`."""
        obj = getattr(v, cache).pop()
        self.held[cache] -= 1
        self.idle_pages -= self.pages_of(cache, obj)
        self.c[f"{cache}_freed_unused"] += 1
        return obj

    def consume_header(self, v: VCpu) -> None:
        """5.2 for the `header` slab cache: pop, or a slab object allocated under the lock."""
        if v.header > 0:
            v.header -= 1
            self.held["header"] -= 1
            self.c["header_consumed"] += 1
        else:
            self.c["alloc_under_lock"] += 1
            self.advance(self.p["ns_slab"])  # 8.2: a header object allocated on the spot

    def under_lock_page(self) -> int:
        """The empty-cache fallback for one page (5.2): `alloc_under_lock`, not `alloc_direct`."""
        self.c["alloc_under_lock"] += 1
        pfn = self.alloc_page()
        if self.in_lock:
            self.fault_pages += 1
        return pfn

    def consume_page(self, v: VCpu, cache: str) -> int:
        """5.2 for a plain page cache (`spt`, `sept` of none/dpamt-install, the prealloc list)."""
        if getattr(v, cache):
            return self.pop_page(v, cache)
        return self.under_lock_page()

    def topup_slab(self, v: VCpu, cache: str, minimum: int) -> None:
        if getattr(v, cache) < minimum:
            self.c[f"{cache}_topups"] += 1
            self.advance(self.p["ns_topup"])
            while getattr(v, cache) < int(self.p["capacity"]):
                self.advance(self.p["ns_slab"])
                setattr(v, cache, getattr(v, cache) + 1)
                self.held[cache] += 1
                self.c[f"{cache}_allocated"] += 1
                self.observe()

    def topup(self, v: VCpu) -> None:
        """Section 5.1 and its duration (8.3, ``time_topup_ns``)."""
        t0 = self.t
        self.fill(v)
        self.c["time_topup_ns"] += self.t - t0

    def fill(self, v: VCpu) -> None:
        """Section 5.1, in this order: desc, sept, pamt, spt, header."""
        p = self.p
        cap = int(p["capacity"])
        # 1. desc
        self.topup_slab(v, "desc", int(p["min_desc"]))
        # 2. sept: TDX only, strategy not dpamt-prealloc
        if self.tdx and self.strategy != "dpamt-prealloc" and len(v.sept) < int(p["min_sept"]):
            self.c["sept_topups"] += 1
            self.advance(p["ns_topup"])
            while len(v.sept) < cap:
                # CHOICE: each object is pushed once complete (after its get / its pair), as
                # the kernel's custom page allocator returns a ready object; no counter sees it.
                page = self.alloc_page()
                obj: Any = page
                if self.strategy == "dpamt-alloc":
                    self.get(page, None)
                    r = range_of(page)
                    self.set_cached_refs(r, self.cached_refs.get(r, 0) + 1)
                elif self.strategy == "dpamt-pair":
                    q0 = self.alloc_page()
                    q1 = self.alloc_page()
                    obj = (page, q0, q1)
                self.c["sept_allocated"] += 1
                self.push(v, "sept", obj)
        # 3. pamt (TDX only, DPAMT strategies)
        target = 0
        if self.tdx and self.strategy in ("dpamt-install", "dpamt-alloc", "dpamt-pair"):
            target = 2 * int(p["pamt_pairs"])
        elif self.tdx and self.strategy == "dpamt-prealloc":
            target = int(p["prealloc_sept"]) + 2 * int(p["pamt_pairs"])
        if len(v.pamt) < target:
            self.c["pamt_topups"] += 1
            self.advance(p["ns_topup"])
            while len(v.pamt) < target:
                page = self.alloc_page()
                self.c["pamt_allocated"] += 1
                self.push(v, "pamt", page)
        # 4. spt
        if len(v.spt) < int(p["min_spt"]):
            self.c["spt_topups"] += 1
            self.advance(p["ns_topup"])
            while len(v.spt) < cap:
                page = self.alloc_page()
                self.c["spt_allocated"] += 1
                self.push(v, "spt", page)
        # 5. header
        self.topup_slab(v, "header", int(p["min_header"]))

    def retry_topup(self, v: VCpu) -> None:
        """5.3: the fault fails, drops mmu_lock, re-runs the whole top-up, resumes."""
        # 8.3: the failed get ends the locked section; the retry's top-up runs outside the
        # lock, and the locked section starts again with its ns_fault.
        self.end_locked()
        self.topup(v)
        self.begin_locked()

    # ------------------------------------------------------------------ VM and vCPUs

    def vm_create(self) -> None:
        """Section 5.10."""
        self.vm_exists = True
        if self.tdx:
            for _ in range(int(self.p["tdr_pages"]) + int(self.p["tdcs_pages"])):
                page = self.alloc_direct()
                self.td_control.append(page)
                if self.dpamt:
                    self.get(page, None)

    def vcpu_create(self, index: int) -> VCpu:
        """Section 5.7: control pages, then load (top-up, roots)."""
        if not self.vm_exists:
            self.vm_create()
        v = VCpu()
        self.vcpus[index] = v
        if self.tdx:
            for _ in range(int(self.p["tdvpr_pages"]) + int(self.p["tdcx_pages"])):
                page = self.alloc_direct()
                v.control.append(page)
                if self.dpamt:
                    self.get(page, None)
        self.topup(v)
        if not self.roots:
            for root in (MIRROR, DIRECT) if self.tdx else (DIRECT,):
                # CHOICE: a root consumes header then spt, the order of a table link
                # (kvm_tdp_mmu_alloc_root -> tdp_mmu_alloc_sp takes the page header
                # first, then the shadow page).
                self.consume_header(v)
                self.roots[root] = self.consume_page(v, "spt")
        self.c["vcpus_created"] += 1
        return v

    def vcpu_destroy(self, index: int) -> None:
        """Section 5.8: caches desc, header, spt, sept, pamt (newest first), then control pages."""
        v = self.vcpus.pop(index)
        for cache in ("desc", "header"):
            n = getattr(v, cache)
            setattr(v, cache, 0)
            self.held[cache] -= n
            self.c[f"{cache}_freed_unused"] += n
        while v.spt:
            self.free_page(self.remove_unused(v, "spt"))
        while v.sept:
            obj = self.remove_unused(v, "sept")
            if self.strategy == "dpamt-pair":
                page, q0, q1 = obj
                self.free_page(page)
                self.free_page(q0)
                self.free_page(q1)
            elif self.strategy == "dpamt-alloc":
                r = range_of(obj)
                self.set_cached_refs(r, self.cached_refs[r] - 1)
                self.put(r)
                self.free_page(obj)
            else:
                self.free_page(obj)
        while v.pamt:
            self.free_page(self.remove_unused(v, "pamt"))
        for page in v.control:
            if self.dpamt:
                self.put(range_of(page))
            self.free_page(page)
        v.control = []
        self.c["vcpus_destroyed"] += 1

    def free_table(self, root: str, t: Table) -> None:
        """Free one non-root table (5.9, 5.11): put(sept), free sept, free spt; header slab."""
        if root == MIRROR:
            assert t.sept is not None
            if self.dpamt:
                self.put(range_of(t.sept))
            self.free_page(t.sept)
        self.free_page(t.spt)
        self.c["tables_freed"] += 1

    def vm_destroy(self) -> None:
        """Section 5.11."""
        for index in sorted(self.vcpus):
            self.vcpu_destroy(index)
        # Remove every leaf (private 4 KiB leaves put).
        # CHOICE: leaves are removed mirror root first, then by level and ascending index
        # (MODEL.md gives no order; no counter can observe it: every vCPU is gone, so no
        # cached_refs remain, and refcounts and live pages only fall from here on).
        for root in (MIRROR, DIRECT):
            for (g, _idx), leaf in sorted(self.leaves[root].items()):
                if root == MIRROR and g == 1 and self.dpamt:
                    self.put(leaf.rng)
            self.leaves[root].clear()
        # Free every table: deepest level first, ascending index, mirror before direct on a tie.
        order = sorted(
            (k, idx, 0 if root == MIRROR else 1, root)
            for root in (MIRROR, DIRECT)
            for (k, idx) in self.tables[root]
        )
        for k, idx, _tie, root in order:
            self.free_table(root, self.tables[root].pop((k, idx)))
        # Roots last: each frees its spt page and its header slab object.
        # CHOICE: the mirror root before the direct root, as for a tie between tables
        # (unobservable: roots hold no DPAMT reference).
        for root in (MIRROR, DIRECT):
            if root in self.roots:
                self.free_page(self.roots.pop(root))
                self.c["tables_freed"] += 1
        # TD control pages in allocation order, each put then freed.
        for page in self.td_control:
            if self.dpamt:
                self.put(range_of(page))
            self.free_page(page)
        self.td_control = []
        self.c["leaked_ranges"] = sum(1 for n in self.refcount.values() if n != 0)
        self.vm_exists = False

    # ------------------------------------------------------------------ faults

    def table_present(self, root: str, k: int, gfn: int) -> bool:
        if k == self.L:
            return root in self.roots
        return (k, gfn >> (9 * k)) in self.tables[root]

    def leaf_key(self, g: int, gfn: int) -> tuple[int, int]:
        return (g, gfn >> (9 * (g - 1)))

    def zap_direct_subtree(self, g: int, gfn: int) -> None:
        """5.9: clear leaves and free tables under the level-g entry for gfn (direct root)."""
        entry = gfn >> (9 * (g - 1))
        leaves = self.leaves[DIRECT]
        for j, idx in sorted(leaves):
            # a leaf of level j covers gfns [idx * 512^(j-1), (idx + 1) * 512^(j-1))
            if j < g and idx >> (9 * (g - j)) == entry:
                del leaves[(j, idx)]
        tables = self.tables[DIRECT]
        doomed = sorted(
            (k, idx) for (k, idx) in tables if k <= g - 1 and idx >> (9 * (g - 1 - k)) == entry
        )
        for key in doomed:  # deepest level first, ascending index
            self.free_table(DIRECT, tables.pop(key))

    def link_table(self, v: VCpu, root: str, k: int, gfn: int) -> None:
        """5.4 step 5: link table (root, k, gfn >> 9k) from the vCPU's caches."""
        self.consume_header(v)
        spt = self.consume_page(v, "spt")
        sept: int | None = None
        if root == MIRROR:
            s = self.strategy
            if s == "dpamt-prealloc":
                sept = self.consume_page(v, "pamt")
                self.get(sept, v)
            elif s == "dpamt-pair":
                if v.sept:
                    sept, q0, q1 = self.pop_page(v, "sept")
                else:
                    # Section 7: the fallback allocates a whole (p, q0, q1) object under the lock.
                    self.c["alloc_under_lock"] += 1
                    sept = self.alloc_page()
                    q0 = self.alloc_page()
                    q1 = self.alloc_page()
                    self.fault_pages += 3
                r = range_of(sept)
                self.c["pamt_get"] += 1
                if self.refcount.get(r, 0) > 0:
                    self.set_refcount(r, self.refcount[r] + 1)
                    self.c["pamt_get_fast"] += 1
                    self.c["pairs_discarded"] += 1
                    self.free_page(q0)
                    self.free_page(q1)
                else:
                    self.pair[r] = (q0, q1)
                    self.c["pamt_add"] += 1
                    self.c["pamt_lock_acquired"] += 1
                    self.pamt_lock(self.p["ns_pamt_add"])
                    self.c["seamcalls_under_mmu_lock"] += 1
                    self.set_refcount(r, 1)
            elif s == "dpamt-alloc":
                if v.sept:
                    sept = self.pop_page(v, "sept")
                    r = range_of(sept)
                    self.set_cached_refs(r, self.cached_refs[r] - 1)
                else:
                    # Section 7: alloc_page() then get(p, NULL) inside the locked section.
                    sept = self.under_lock_page()
                    self.get(sept, None)
            else:
                sept = self.consume_page(v, "sept")
                if s == "dpamt-install":
                    self.get(sept, v)
            self.c["tables_linked_mirror"] += 1
        else:
            self.c["tables_linked_direct"] += 1
        self.advance(self.p["ns_link"])  # 8.3: at the end of the link (the S-EPT add)
        self.tables[root][(k, gfn >> (9 * k))] = Table(spt, sept)

    def fault(self, index: int, gfn: int, pfn: int, level: int, private: bool) -> None:
        """Section 5.4."""
        self.c["faults"] += 1
        self.c["faults_private" if private else "faults_shared"] += 1
        if private and not self.tdx:
            raise ModelError("private fault on a vmx trace", self.event_index)
        if level not in (1, 2, 3):
            raise ModelError(f"invalid level {level}", self.event_index)
        v = self.vcpus.get(index)
        if v is None:
            # Section 7: a fault on a new vCPU runs the load top-up, takes the roots,
            # then its own top-up.
            v = self.vcpu_create(index)
        # 1. top-up, then the locked section begins
        self.topup(v)
        self.fault_pages = 0
        # 2. root
        root = MIRROR if private else DIRECT
        # 3. spurious: no locked section, no ns_fault (8.3)
        leaves = self.leaves[root]
        if any(self.leaf_key(j, gfn) in leaves for j in (1, 2, 3)):
            self.c["faults_spurious"] += 1
            return
        self.begin_locked()
        # 4. level fit
        g = level
        if root == MIRROR:
            adjusted = False
            while g > 1 and (g - 1, gfn >> (9 * (g - 1))) in self.tables[MIRROR]:
                g -= 1
                adjusted = True
            if adjusted:
                self.c["faults_level_adjusted"] += 1
        elif g > 1:
            entry = gfn >> (9 * (g - 1))
            under = any(
                k <= g - 1 and idx >> (9 * (g - 1 - k)) == entry for (k, idx) in self.tables[DIRECT]
            )
            if under:
                self.zap_direct_subtree(g, gfn)
                self.c["collapses"] += 1
        # 5. links
        for k in range(self.L - 1, g - 1, -1):
            if not self.table_present(root, k, gfn):
                self.link_table(v, root, k, gfn)
        # 6. leaf
        self.c[LEAF_COUNTER[g]] += 1
        leaf = Leaf(pfn, range_of(pfn))
        leaves[self.leaf_key(g, gfn)] = leaf
        if root == MIRROR and g == 1 and self.dpamt:
            self.get(pfn, v)
        # 7. the locked section ends
        self.end_locked()
        self.hist[min(self.fault_pages, FAULT_PAGES_BUCKETS - 1)] += 1
        # 8.3: latency from the event's start (busy delay excluded) to the fault's end
        d = self.t - self.event_start
        self.c["fault_latency_ns"] += d
        self.c["fault_latency_max_ns"] = max(self.c["fault_latency_max_ns"], d)
        bucket = 0 if d < 128 else min(FAULT_LATENCY_BUCKETS - 1, d.bit_length() - 1 - 6)
        self.latency_hist[bucket] += 1

    def unmap(self, gfn: int, level: int, private: bool) -> None:
        """Section 5.5."""
        self.c["unmaps"] += 1
        root = MIRROR if private else DIRECT
        key = self.leaf_key(level, gfn) if level in (1, 2, 3) else None
        leaf = self.leaves[root].get(key) if key is not None else None
        if leaf is None:
            # Section 7: private unmap on vmx misses (there is no mirror root).
            self.c["unmaps_missing"] += 1
            return
        del self.leaves[root][key]
        if root == MIRROR and level == 1 and self.dpamt:
            self.put(leaf.rng)

    def split(self, gfn: int, private: bool) -> None:
        """Section 5.6."""
        root = MIRROR if private else DIRECT
        key = self.leaf_key(2, gfn)
        leaf = self.leaves[root].get(key)
        if leaf is None:
            self.c["unmaps_missing"] += 1
            return
        assert leaf.pfn is not None
        # The new level-1 table, outside the caches: header slab (not counted), spt, S-EPT.
        self.advance(self.p["ns_slab"])  # 8.2: the split table's header object
        spt = self.alloc_direct()
        sept: int | None = None
        r = range_of(leaf.pfn)
        if root == MIRROR:
            sept = self.alloc_direct()
            if self.dpamt:
                self.get(sept, None)
                # DEMOTE: the guest range needs PAMT_4K for its 512 new 4 KiB leaves.
                if self.refcount.get(r, 0) == 0:
                    q0 = self.alloc_direct()
                    q1 = self.alloc_direct()
                    self.pair[r] = (q0, q1)
                    self.c["pamt_add"] += 1
                    self.c["pamt_lock_acquired"] += 1
                    self.pamt_lock(self.p["ns_pamt_add"])
                self.set_refcount(r, self.refcount.get(r, 0) + 512)
        del self.leaves[root][key]
        self.tables[root][(1, gfn >> 9)] = Table(spt, sept)
        base = (gfn >> 9) << 9
        for i in range(512):
            self.leaves[root][(1, base + i)] = Leaf(None, r)
        self.c["splits"] += 1

    # ------------------------------------------------------------------ events

    def run(self, events: Iterable[Any]) -> None:
        rows = []
        for e in events:
            # one EVENT_DTYPE record; tolist() gives Python ints in the dtype's field order
            rec = dict(zip(e.dtype.names, e.tolist(), strict=True))
            rows.append(
                (
                    rec["ts"],
                    rec["op"],
                    rec["vcpu"],
                    rec["gfn"],
                    rec["pfn"],
                    rec["level"],
                    rec["flags"],
                )
            )
        c = self.c
        c["events"] = len(rows)
        for i, (ts, op, vcpu, gfn, pfn, level, flags) in enumerate(rows):
            self.event_index = i
            if i >= 1 and ts < rows[i - 1][0]:
                c["ts_backwards"] += 1
            if self.vm_destroyed:
                # CHOICE: also after a vm_destroy that found no VM (it still ends the trace's VM).
                raise ModelError("event after vm_destroy", i)
            private = bool(flags & FLAG_PRIVATE)
            # 8.1: where the event starts on the model clock.
            start = ts
            if op in (OP_FAULT, OP_VCPU_CREATE, OP_VCPU_DESTROY):
                busy = self.busy.get(vcpu, 0) if vcpu in self.vcpus else 0
                start = max(ts, busy)
                c["vcpu_delay_ns"] += start - ts
            self.t = start
            self.event_start = start
            if op == OP_VM_CREATE:
                if self.vm_exists:
                    raise ModelError("vm_create when a VM exists", i)
                self.vm_create()
            elif op == OP_VM_DESTROY:
                # Section 7: vm_destroy with no VM frees nothing.
                if self.vm_exists:
                    self.vm_destroy()
                self.vm_destroyed = True
            elif op == OP_VCPU_CREATE:
                if vcpu in self.vcpus:
                    raise ModelError(f"vcpu_create of live vCPU {vcpu}", i)
                self.vcpu_create(vcpu)
                self.busy[vcpu] = self.t
            elif op == OP_VCPU_DESTROY:
                if vcpu not in self.vcpus:
                    # Section 7: a vcpu_destroy naming a new vCPU creates it first.
                    self.vcpu_create(vcpu)
                self.vcpu_destroy(vcpu)
            elif op == OP_FAULT:
                self.fault(vcpu, gfn, pfn, level, private)
                self.busy[vcpu] = self.t
            elif op == OP_UNMAP:
                # CHOICE: unmap and split never create the VM or a vCPU; before the roots
                # exist they simply miss (unmaps_missing).
                self.unmap(gfn, level, private)
            elif op == OP_SPLIT:
                self.split(gfn, private)
            else:
                raise ModelError(f"unknown op {op}", i)
            if i + 1 < len(rows):
                gap = rows[i + 1][0] - ts
                c["cache_idle_page_ns"] += self.idle_pages * max(0, gap)
        # End-of-trace snapshot (before teardown).
        for name in CACHES:
            c[f"{name}_held_end"] = self.held[name]
        c["pamt_pairs_end"] = sum(1 for n in self.refcount.values() if n > 0)
        c["cache_pages_idle_end"] = self.idle_pages
        if bool(self.p["teardown"]) and not self.vm_destroyed and self.vm_exists:
            self.event_index = len(rows)
            self.t = rows[-1][0] if rows else 0  # 8.1: the teardown starts at the last ts
            self.vm_destroy()
        c["pamt_bytes_peak"] = self.pamt_bytes_peak()

    def pamt_bytes_peak(self) -> int:
        """Section 9: static PAMT_4K for none on TDX, pairs plus refcounts for DPAMT."""
        if not self.tdx:
            return 0
        end = max(self.host_pfn_limit, self.kernel_end)
        host_ranges = -(-end // 512)
        if not self.dpamt:
            return 8192 * host_ranges
        return 8192 * self.c["pamt_pairs_peak"] + 4 * host_ranges


def replay(
    vm_type: str,
    root_level: int,
    gfn_limit: int,
    host_pfn_limit: int,
    events: Any,
    params: dict[str, Any],
    alloc: str,
    stats: dict[str, int] | None = None,
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Replay ``events`` (an EVENT_DTYPE array): (counters in COUNTERS order, histograms)."""
    del gfn_limit  # the model never needs it: events are assumed valid
    m = Machine(vm_type, root_level, host_pfn_limit, params, alloc)
    m.run(events)
    if stats is not None:
        stats["saturations"] = m.saturations
    counters = {name: int(m.c[name]) for name in COUNTERS}
    hists = {"fault_pages": [int(x) for x in m.hist], "fault_latency": list(m.latency_hist)}
    return counters, hists
