"""Facts both lanes of the importer use: record classes, candidate kinds, SPTE values, scales.

This module imports nothing: the Python lane (:mod:`~kvmcache.importers.mapping`) and the
compiled fast lane (:mod:`~kvmcache.importers.scan`) both import it, and neither imports the
other at module level (the Python lane loads the fast lane only for a large input).
docs/import.md gives the rules these values serve.
"""

from __future__ import annotations

# Record classes (C_MMIO: a record that shows a gfn as MMIO, read by the Python lane only;
# the C_ASK class is the fast lane's: a KVM / kvmmmu name that the Python reader would not
# look at on every line, so the line goes to the Python path).
C_UNKNOWN, C_KVM, C_MMU, C_SPTE_REQ, C_SPTE_CHG, C_SPLIT, C_PF, C_MMIO = range(8)
C_ASK = 8

# Candidate kinds (internal; K_PF are the fallback faults from kvm_page_fault).
K_FAULT, K_UNMAP, K_SPLIT, K_PF = 1, 2, 3, 4

#: SPTE values that mean "not present" when they replace a leaf: 0 and the suppress-#VE
#: non-present value; 0x5a0 (and with bit 63) marks a child of a removed (zapped) table.
NONPRESENT_SPTES = frozenset((0, 1 << 63))
REMOVED_SPTES = frozenset((0x5A0, (1 << 63) | 0x5A0))
SPTE_PERM_MASK = 0x7  # EPT R/W/X (NPT: bit 0, present, is inside this mask too)
SPTE_PAGE_SIZE = 0x80  # bit 7: a leaf at level 2 or 3
#: kvm_page_fault error_code bit 3: a reserved-bit fault, i.e. the fault of an MMIO SPTE.
PFERR_RSVD = 0x8

#: Nanoseconds per unit of a timestamp fraction of n digits (index n, 1..9).
FRACTION_SCALE = (0,) + tuple(10 ** (9 - n) for n in range(1, 10))
#: Largest seconds of a timestamp: seconds * 1e9 + fraction stays below 2**63.
MAX_SECONDS = 9_000_000_000
