"""The compiled fast lane of the text importer: plain record lines, parsed straight from the
bytes of the input.

Python's `re` costs about 2.5 us per line for a record header alone, so a pure-Python importer
cannot read 300,000 lines a second. This module parses the common case in numba: one record
per line, printable ASCII, in the layout the Python lane tries first (ftrace / trace-cmd
`COMM-PID [(TGID)] [CPU] [FLAGS] SECONDS.FRACTION: EVENT: TEXT`, or perf script
`COMM [PID/]TID [CPU] SECONDS.FRACTION: [PERIOD] SYS:EVENT: TEXT`), of an event name and a
thread the importer already knows, with no vCPU change. It applies exactly the rules of
:meth:`Importer._consume <kvmcache.importers.mapping.Importer._consume>` to those lines
(counting them and emitting their events) and hands every other line back to the Python lane,
which stays the one definition of the rules: a line it cannot classify alone (a new thread, a
vCPU change, an event name not seen yet, a header, a wrapped or stack line, an unparseable
record, the other layout) ends the fast run, and the Python reader takes over until the next
plain record. A record is only taken here when the line after it is a plain record too, so no
continuation line can belong to it. See docs/import.md, section 7.

numba (through :mod:`kvmcache.jit`) is loaded only when an import is large enough to use it.
"""

from __future__ import annotations

import numpy as np

from kvmcache.importers.rules import (
    C_ASK,
    C_KVM,
    C_MMIO,
    C_MMU,
    C_PF,
    C_SPLIT,
    C_SPTE_CHG,
    C_SPTE_REQ,
    C_UNKNOWN,
    FRACTION_SCALE,
    K_FAULT,
    K_PF,
    K_SPLIT,
    K_UNMAP,
    MAX_SECONDS,
    NONPRESENT_SPTES,
    PFERR_RSVD,
    REMOVED_SPTES,
    SPTE_PAGE_SIZE,
    SPTE_PERM_MASK,
)
from kvmcache.jit import NO_NRT, njit

#: Every function: cached on disk, GIL released, no reference counting (nothing allocates).
_jit = njit(**NO_NRT)

# Status of scan().
ST_MORE = 0  # the block is used up (R_POS: the first line not taken; carry it over)
ST_SLOW = 1  # the line at R_POS goes to the Python path
ST_NAME = 2  # the event name at R_NAME_S..R_NAME_E is not in the name table yet
ST_FULL = 3  # the event output is full: drain it and call again

# Registers (R, int64).
R_POS = 0  # byte offset of the next line
R_LINE = 1  # number of the last line taken (the reader's line count)
R_NOUT = 2  # events in the output
R_VCPU_LINES = 3
R_EVENT_LINES = 4
R_UNKNOWN = 5
R_SPTE_REQ = 6
R_PF_WITH = 7
R_PF_WITHOUT = 8
R_SEEN_MMU = 9
R_NOEV_CHG = 10
R_NOEV_SPLIT = 11
R_NAME_S = 12
R_NAME_E = 13
R_SYS_S = 14  # and its SYS (perf), an empty span otherwise
R_SYS_E = 15
R_DROP_PF = 16  # set: faults from kvm_page_fault are counted, not output (spte_requested seen)
N_REGS = 17

# Parsed header fields of one line (F, int64; two lines side by side, at 0 and NF), then the
# token spans of the text being mapped.
F_NEXT = 0  # offset of the next line
F_EOL = 1  # end of the text (the newline, or the CR of a CRLF)
F_TID = 2  # thread id, -1 unless plain decimal (no leading zero, at most 9 digits)
F_SEC_S = 3
F_SEC_E = 4
F_FRAC_E = 5  # the fraction runs from F_SEC_E + 1 to here
F_EV_S = 6
F_EV_E = 7
F_TXT = 8
F_VCPU = 9  # N of a text starting `vcpu N`; -1 without, -2 when N has 10 digits or more
F_START = 10
F_SYS_S = 11  # the SYS of `SYS:EVENT:` (perf); empty in the ftrace layout
F_SYS_E = 12
NF = 13
F_TOK = 2 * NF  # token spans of the line being mapped (start, end), up to MAX_TOKENS
MAX_TOKENS = 11
F_SIZE = F_TOK + 2 * MAX_TOKENS

# Event classes in the name table are the rules' C_*, C_ASK included (it sends the line to
# the Python path; so does C_MMIO, which the Python lane turns into C_ASK before inserting).
assert C_ASK > max(C_UNKNOWN, C_KVM, C_MMU, C_SPTE_REQ, C_SPTE_CHG, C_SPLIT, C_PF, C_MMIO)

# Output columns (the event kinds are the mapping's K_*).
U_TS, U_GFN, U_PFN = range(3)  # out_u rows (uint64)
I_KIND, I_LEVEL, I_VCPU, I_THREAD, I_LINE = range(5)  # out_i rows (int64)

_SCALE = np.array(FRACTION_SCALE, dtype=np.int64)
_MAX_SEC = MAX_SECONDS

_L_GFN = np.frombuffer(b"gfn", dtype=np.uint8)
_L_PFN = np.frombuffer(b"pfn", dtype=np.uint8)
_L_LEVEL = np.frombuffer(b"level", dtype=np.uint8)
_L_AS = np.frombuffer(b"as", dtype=np.uint8)
_L_OLD = np.frombuffer(b"old_spte", dtype=np.uint8)
_L_NEW = np.frombuffer(b"new_spte", dtype=np.uint8)
_L_SPTE = np.frombuffer(b"spte", dtype=np.uint8)
_L_ERRNO = np.frombuffer(b"errno", dtype=np.uint8)
_L_ADDRESS = np.frombuffer(b"address", dtype=np.uint8)
_L_STACK = np.frombuffer(b"stack", dtype=np.uint8)
_L_ERROR_CODE = np.frombuffer(b"error_code", dtype=np.uint8)
_PFERR_RSVD = np.uint64(PFERR_RSVD)
_L_KVM = np.frombuffer(b"kvm", dtype=np.uint8)
_L_MMIO = np.frombuffer(b"mmio_", dtype=np.uint8)
_L_PAGE_FAULT = np.frombuffer(b"_page_fault", dtype=np.uint8)

_U0 = np.uint64(0)
_SPTE_PERM = np.uint64(SPTE_PERM_MASK)
_SPTE_PAGE = np.uint64(SPTE_PAGE_SIZE)
_NP_A, _NP_B = (np.uint64(v) for v in sorted(NONPRESENT_SPTES))
_RM_A, _RM_B = (np.uint64(v) for v in sorted(REMOVED_SPTES))


# --- bytes -------------------------------------------------------------------------------------


@_jit
def _ws(c):
    return c == 32 or c == 9


@_jit
def _digit(c):
    return 48 <= c <= 57


@_jit
def _word(c):
    """A character of `[\\w.-]` (the lines here are ASCII)."""
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95 or c == 46 or c == 45


@_jit
def _eq(buf, s, e, lit):
    n = e - s
    if n != len(lit):
        return False
    for i in range(n):
        if buf[s + i] != lit[i]:
            return False
    return True


@_jit
def _contains(buf, s, e, lit):
    n = len(lit)
    for i in range(s, e - n + 1):
        if buf[i] == lit[0]:
            j = 1
            while j < n and buf[i + j] == lit[j]:
                j += 1
            if j == n:
                return True
    return False


@_jit
def _tok(buf, p, e):
    """(start, end) of the next blank-separated token at or after ``p``; start == e: none."""
    while p < e and _ws(buf[p]):
        p += 1
    q = p
    while q < e and not _ws(buf[q]):
        q += 1
    return p, q


@_jit
def _tokens(buf, F, a, n):
    """The spans of the first ``n`` blank-separated tokens of the text of the line at F[a:]
    into F[F_TOK:] (an absent token is an empty span)."""
    p = F[a + F_TXT]
    e = F[a + F_EOL]
    for i in range(n):
        s, p = _tok(buf, p, e)
        F[F_TOK + 2 * i] = s
        F[F_TOK + 2 * i + 1] = p


@_jit
def _is(buf, F, i, lit):
    """Token i (of :func:`_tokens`) is ``lit``."""
    return _eq(buf, F[F_TOK + 2 * i], F[F_TOK + 2 * i + 1], lit)


@_jit
def _thex(buf, F, i):
    """:func:`_hex` of token i (of :func:`_tokens`)."""
    return _hex(buf, F[F_TOK + 2 * i], F[F_TOK + 2 * i + 1])


@_jit
def _tdec(buf, F, i):
    """:func:`_dec` of token i (of :func:`_tokens`)."""
    return _dec(buf, F[F_TOK + 2 * i], F[F_TOK + 2 * i + 1])


@_jit
def _hex(buf, s, e):
    """``int(token, 16)`` for a plain token (optional 0x, at most 16 significant digits):
    (ok, value). Anything Python might read differently is not ok (the Python path decides)."""
    if e - s >= 2 and buf[s] == 48 and (buf[s + 1] == 120 or buf[s + 1] == 88):
        s += 2
    if s >= e:
        return False, _U0
    v = _U0
    sig = 0
    for i in range(s, e):
        c = buf[i]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return False, _U0
        if sig > 0 or d != 0:
            sig += 1
            if sig > 16:
                return False, _U0
        v = (v << np.uint64(4)) | np.uint64(d)
    return True, v


@_jit
def _dec(buf, s, e):
    """``int(token)`` for plain decimal digits (at most 18): (ok, value)."""
    if s >= e or e - s > 18:
        return False, 0
    v = 0
    for i in range(s, e):
        c = buf[i]
        if not (48 <= c <= 57):
            return False, 0
        v = v * 10 + (c - 48)
    return True, v


# --- one line's header ---------------------------------------------------------------------------


@_jit
def _head(buf, p, end, F, o, perf):
    """Parse the record header of the line at ``p`` into ``F[o:o + NF]``, in the perf script
    layout when ``perf`` is set, else ftrace / trace-cmd; True when the line is a plain
    record (see the module docstring). ``F[o + F_NEXT]`` is set in every case."""
    q = p
    lb = -1
    clean = True
    while q < end:
        c = buf[q]
        if c == 10:
            break
        if c == 91 and lb < 0:
            lb = q
        if c < 32 or c > 126:
            if not (c == 9 or (c == 13 and q + 1 < end and buf[q + 1] == 10)):
                clean = False
        q += 1
    F[o + F_START] = p
    F[o + F_NEXT] = q + 1 if q < end else end
    if q >= end or not clean or lb < 0:
        return False
    eol = q - 1 if q > p and buf[q - 1] == 13 else q
    F[o + F_EOL] = eol
    i = p
    while i < lb and _ws(buf[i]):
        i += 1
    if perf:
        if not _perf_thread(buf, i, lb, F, o):
            return False
    elif not _ftrace_thread(buf, i, lb, F, o):
        return False
    # [CPU]
    k = _digits_to(buf, lb + 1, eol, 93)
    if k < 0:
        return False
    k += 1
    if k >= eol or not _ws(buf[k]):
        return False
    while k < eol and _ws(buf[k]):
        k += 1
    if perf:
        k = _perf_event(buf, k, eol, F, o)
    else:
        k = _ftrace_event(buf, k, eol, F, o)
    if k < 0:
        return False
    while k < eol and _ws(buf[k]):
        k += 1
    F[o + F_TXT] = k
    # `vcpu N` at the start of the text.
    F[o + F_VCPU] = -1
    if (
        k + 5 < eol
        and buf[k] == 118
        and buf[k + 1] == 99
        and buf[k + 2] == 112
        and buf[k + 3] == 117
        and buf[k + 4] == 32
        and _digit(buf[k + 5])
    ):
        m = k + 5
        v = 0
        while m < eol and _digit(buf[m]):
            v = v * 10 + (buf[m] - 48)
            m += 1
        F[o + F_VCPU] = v if m - (k + 5) <= 9 else -2
    return True


@_jit
def _ftrace_thread(buf, i, lb, F, o):
    """`COMM-PID [(TGID)] ` from ``i`` up to the `[` at ``lb``: F_TID; False when absent."""
    j = _before_blanks(buf, lb - 1, i)
    if j < 0:
        return False
    if buf[j] == 41:  # `)`: a TGID column `([ \t]*[\d-]*[ \t]*)`
        k = j - 1
        while k >= i and _ws(buf[k]):
            k -= 1
        while k >= i and (_digit(buf[k]) or buf[k] == 45):
            k -= 1
        while k >= i and _ws(buf[k]):
            k -= 1
        if k < i or buf[k] != 40:
            return False
        j = _before_blanks(buf, k - 1, i)
        if j < 0:
            return False
    d = _digits_back(buf, j, i)
    if d < 0 or d == i or buf[d - 1] != 45:  # the dash before the PID
        return False
    F[o + F_TID] = _plain_number(buf, d, j + 1)
    return True


@_jit
def _perf_thread(buf, i, lb, F, o):
    """`COMM [PID/]TID ` from ``i`` up to the `[` at ``lb`` (COMM not empty): F_TID; False
    otherwise (perf -F without COMM or TID is left to the Python lane)."""
    j = _before_blanks(buf, lb - 1, i)
    if j < 0:
        return False
    d = _digits_back(buf, j, i)
    if d < 0:
        return False
    c = d
    if d > i and buf[d - 1] == 47:  # `PID/`
        c = _digits_back(buf, d - 2, i)
        if c < 0:
            return False
    if _before_blanks(buf, c - 1, i) < 0:  # blanks, then a COMM of one character or more
        return False
    F[o + F_TID] = _plain_number(buf, d, j + 1)
    return True


@_jit
def _ftrace_event(buf, k, eol, F, o):
    """`[FLAGS] SECONDS.FRACTION: EVENT:` at ``k``: the offset after the event's colon, or -1."""
    te = k
    while te < eol and not _ws(buf[te]):
        te += 1
    ts_at = -1
    if 4 <= te - k <= 5 and te < eol:
        k2 = te
        while k2 < eol and _ws(buf[k2]):
            k2 += 1
        if _stamp(buf, k2, eol, F, o):
            ts_at = k2
    if ts_at < 0 and not _stamp(buf, k, eol, F, o):
        return -1
    k = F[o + F_FRAC_E] + 1
    while k < eol and _ws(buf[k]):
        k += 1
    s = k
    while k < eol and _word(buf[k]):
        k += 1
    if k == s or k >= eol or buf[k] != 58:
        return -1
    F[o + F_EV_S] = s
    F[o + F_EV_E] = k
    F[o + F_SYS_S] = F[o + F_SYS_E] = s
    return k + 1


@_jit
def _perf_event(buf, k, eol, F, o):
    """`SECONDS.FRACTION: [PERIOD] SYS:EVENT:` at ``k`` (one blank or more after the time):
    the offset after the event's colon, or -1 (an event without SYS: is left to Python)."""
    if not _stamp(buf, k, eol, F, o):
        return -1
    k = F[o + F_FRAC_E] + 1
    if k >= eol or not _ws(buf[k]):
        return -1
    while k < eol and _ws(buf[k]):
        k += 1
    d = k
    while d < eol and _digit(buf[d]):
        d += 1
    if d > k and d < eol and _ws(buf[d]):  # PERIOD
        k = d
        while k < eol and _ws(buf[k]):
            k += 1
    s = k
    while k < eol and (_word(buf[k]) and buf[k] != 46 and buf[k] != 45):  # \w
        k += 1
    if k == s or k >= eol or buf[k] != 58:
        return -1
    F[o + F_SYS_S] = s
    F[o + F_SYS_E] = k
    k += 1
    e = k
    while k < eol and _word(buf[k]):
        k += 1
    if k == e or k >= eol or buf[k] != 58:
        return -1
    F[o + F_EV_S] = e
    F[o + F_EV_E] = k
    return k + 1


@_jit
def _digits_back(buf, j, i):
    """The start of the run of one or more digits ending at ``j`` (not below ``i``), or -1."""
    d = j
    while d >= i and _digit(buf[d]):
        d -= 1
    return d + 1 if d < j else -1


@_jit
def _plain_number(buf, s, e):
    """The digits ``buf[s:e]`` as a number when written plainly (no leading zero, at most 9
    digits), else -1: a thread key the fast lane can know."""
    n = e - s
    if n > 9 or (n > 1 and buf[s] == 48):
        return -1
    t = 0
    for k in range(s, e):
        t = t * 10 + (buf[k] - 48)
    return t


@_jit
def _before_blanks(buf, j, i):
    """Going back from ``j`` (not below ``i``) over one or more blanks: the offset of the
    character before them, or -1."""
    if j < i or not _ws(buf[j]):
        return -1
    while j >= i and _ws(buf[j]):
        j -= 1
    return j if j >= i else -1


@_jit
def _stamp(buf, k, eol, F, o):
    """`(\\d+)\\.(\\d+):` at ``k``: its spans into F; False when absent."""
    dot = _digits_to(buf, k, eol, 46)
    if dot < 0:
        return False
    colon = _digits_to(buf, dot + 1, eol, 58)
    if colon < 0:
        return False
    F[o + F_SEC_S] = k
    F[o + F_SEC_E] = dot
    F[o + F_FRAC_E] = colon
    return True


@_jit
def _digits_to(buf, k, eol, delim):
    """Offset of ``delim`` after one or more digits from ``k``, or -1."""
    s = k
    while k < eol and _digit(buf[k]):
        k += 1
    if k == s or k >= eol or buf[k] != delim:
        return -1
    return k


@_jit
def _nanoseconds(buf, F, o):
    """The timestamp in ns, or -1 when the Python path must decide (huge, > 9 digits)."""
    s = F[o + F_SEC_S]
    dot = F[o + F_SEC_E]
    fe = F[o + F_FRAC_E]
    if dot - s > 10 or fe - (dot + 1) > 9:
        return -1
    sec = 0
    for i in range(s, dot):
        sec = sec * 10 + (buf[i] - 48)
    if sec >= _MAX_SEC:
        return -1
    frac = 0
    for i in range(dot + 1, fe):
        frac = frac * 10 + (buf[i] - 48)
    return sec * 1_000_000_000 + frac * _SCALE[fe - (dot + 1)]


# --- tables ------------------------------------------------------------------------------------


@_jit
def _fnv(buf, s, e):
    h = np.uint64(0xCBF29CE484222325)
    for i in range(s, e):
        h = (h ^ np.uint64(buf[i])) * np.uint64(0x100000001B3)
    return h


@_jit
def name_lookup(ntab, names, buf, s, e):
    """The class of the event name ``buf[s:e]``, or -1 when it is not in the table.
    ``ntab`` rows (one per slot): class (-1: empty), offset and length in ``names``."""
    cap = ntab.shape[0]
    h = np.int64(_fnv(buf, s, e) & np.uint64(cap - 1))
    n = e - s
    while True:
        c = ntab[h, 0]
        if c < 0:
            return -1
        if ntab[h, 2] == n:
            off = ntab[h, 1]
            same = True
            for i in range(n):
                if names[off + i] != buf[s + i]:
                    same = False
                    break
            if same:
                return c
        h = (h + 1) & (cap - 1)


@_jit
def name_count(ntab, names, buf, s, e):
    """Count one skipped record of the event name ``buf[s:e]`` (in the table) in ``ntab``'s
    fourth column."""
    cap = ntab.shape[0]
    h = np.int64(_fnv(buf, s, e) & np.uint64(cap - 1))
    n = e - s
    while ntab[h, 0] >= 0:
        if ntab[h, 2] == n:
            off = ntab[h, 1]
            same = True
            for i in range(n):
                if names[off + i] != buf[s + i]:
                    same = False
                    break
            if same:
                ntab[h, 3] += 1
                return
        h = (h + 1) & (cap - 1)


@_jit
def _keyword(buf, s, e):
    """The line ``buf[s:e]`` names a KVM keyword (the Python reader's test of KVM_KEYWORDS)."""
    return (
        _contains(buf, s, e, _L_KVM)
        or _contains(buf, s, e, _L_MMIO)
        or _contains(buf, s, e, _L_PAGE_FAULT)
    )


@_jit
def name_insert(ntab, names, off, n, cls):
    """Add the name at ``names[off:off + n]`` with class ``cls`` (the caller keeps the table
    at most half full)."""
    cap = ntab.shape[0]
    h = np.int64(_fnv(names, off, off + n) & np.uint64(cap - 1))
    while ntab[h, 0] >= 0:
        h = (h + 1) & (cap - 1)
    ntab[h, 0] = cls
    ntab[h, 1] = off
    ntab[h, 2] = n


@_jit
def _thread(ttab, tid):
    """The importer's index of thread ``tid``, or -1. ``ttab`` rows: tid (-1: empty), index."""
    if tid < 0:
        return -1
    cap = ttab.shape[0]
    h = (tid * 0x9E3779B1) & (cap - 1)
    while True:
        k = ttab[h, 0]
        if k == tid:
            return ttab[h, 1]
        if k < 0:
            return -1
        h = (h + 1) & (cap - 1)


@_jit
def thread_fill(ttab, tids, index):
    """Fill an empty thread table (at most half full afterwards)."""
    cap = ttab.shape[0]
    for i in range(len(tids)):
        h = (tids[i] * 0x9E3779B1) & (cap - 1)
        while ttab[h, 0] >= 0:
            h = (h + 1) & (cap - 1)
        ttab[h, 0] = tids[i]
        ttab[h, 1] = index[i]


# --- the fast run ------------------------------------------------------------------------------


@_jit
def line_end(buf, p, end):
    """Offset of the line after the one at ``p``."""
    while p < end and buf[p] != 10:
        p += 1
    return min(p + 1, end)


@_jit
def plain_from(buf, p, end, F, perf):
    """Offset of the first line at or after ``p`` that is a plain record (``end`` if none)."""
    while p < end:
        if _head(buf, p, end, F, 0, perf):
            return p
        p = F[F_NEXT]
    return end


@_jit
def scan(buf, end, eof, perf, R, F, ttab, t_cur, ntab, names, out_u, out_i):
    """Take plain record lines from ``R[R_POS]`` on; return a status ``ST_*``."""
    p = R[R_POS]
    if not _head(buf, p, end, F, 0, perf):
        return ST_SLOW
    cap = out_u.shape[1]
    a = 0  # where in F the current line's fields are; the next line's are at NF - a
    while True:
        b = NF - a
        nxt = F[a + F_NEXT]
        if nxt >= end:
            if not eof:
                return ST_MORE
        elif not _head(buf, nxt, end, F, b, perf):
            return ST_SLOW
        st = _take(buf, R, F, a, ttab, t_cur, ntab, names, out_u, out_i, cap)
        if st != ST_MORE:
            return st
        R[R_LINE] += 1
        R[R_POS] = nxt
        if nxt >= end:
            return ST_MORE
        a = b


@_jit
def _take(buf, R, F, a, ttab, t_cur, ntab, names, out_u, out_i, cap):
    """Apply the mapping to one plain line (fields at ``F[a:]``): ST_MORE when it was taken."""
    s = F[a + F_EV_S]
    e = F[a + F_EV_E]
    c = name_lookup(ntab, names, buf, s, e)
    if c < 0:
        R[R_NAME_S] = s
        R[R_NAME_E] = e
        R[R_SYS_S] = F[a + F_SYS_S]
        R[R_SYS_E] = F[a + F_SYS_E]
        return ST_NAME
    if c == C_ASK:
        return ST_SLOW
    if c == C_UNKNOWN:
        if _contains(buf, F[a + F_START], F[a + F_EOL], _L_STACK):
            return ST_SLOW
        if _keyword(buf, F[a + F_START], F[a + F_EOL]):
            return ST_SLOW  # the Python lane counts it by name
        R[R_UNKNOWN] += 1
        return ST_MORE
    vs = F[a + F_VCPU]
    if c == C_KVM or c == C_MMU:
        if c == C_MMU:
            R[R_SEEN_MMU] = 1
        if vs == -1:
            R[R_UNKNOWN] += 1
            name_count(ntab, names, buf, s, e)
            return ST_MORE
        t = _thread(ttab, F[a + F_TID])
        if vs < 0 or t < 0 or t_cur[t] != vs:
            return ST_SLOW
        R[R_VCPU_LINES] += 1
        return ST_MORE
    # A mapped event.
    if c != C_PF:
        R[R_SEEN_MMU] = 1
    ts = _nanoseconds(buf, F, a)
    if ts < 0:
        return ST_SLOW
    pfn = _U0
    level = 1
    if c == C_SPTE_REQ:  # gfn %llx pfn %llx level %d
        _tokens(buf, F, a, 6)
        if not (_is(buf, F, 0, _L_GFN) and _is(buf, F, 2, _L_PFN) and _is(buf, F, 4, _L_LEVEL)):
            return ST_SLOW
        ok1, gfn = _thex(buf, F, 1)
        ok2, pfn = _thex(buf, F, 3)
        ok3, level = _tdec(buf, F, 5)
        if not (ok1 and ok2 and ok3):
            return ST_SLOW
        if level == 2:
            pfn &= ~np.uint64(0x1FF)
        elif level == 3:
            pfn &= ~np.uint64(0x3FFFF)
        elif level != 1:
            return ST_SLOW
        kind = K_FAULT
    elif c == C_SPTE_CHG:  # as id %d gfn %llx level %d old_spte %llx new_spte %llx
        _tokens(buf, F, a, 11)
        if not (_is(buf, F, 0, _L_AS) and _is(buf, F, 3, _L_GFN) and _is(buf, F, 5, _L_LEVEL)):
            return ST_SLOW
        if not (_is(buf, F, 7, _L_OLD) and _is(buf, F, 9, _L_NEW)):
            return ST_SLOW
        ok1, as_id = _tdec(buf, F, 2)
        ok2, gfn = _thex(buf, F, 4)
        ok3, level = _tdec(buf, F, 6)
        ok4, old = _thex(buf, F, 8)
        ok5, new = _thex(buf, F, 10)
        if not (ok1 and ok2 and ok3 and ok4 and ok5):
            return ST_SLOW
        if not (
            as_id == 0
            and 1 <= level <= 3
            and (old & _SPTE_PERM) != _U0
            and (level == 1 or (old & _SPTE_PAGE) != _U0)
            and (new == _NP_A or new == _NP_B or new == _RM_A or new == _RM_B)
        ):
            R[R_NOEV_CHG] += 1
            return ST_MORE
        kind = K_UNMAP
    elif c == C_SPLIT:  # gfn %llx spte %llx level %d errno %d
        _tokens(buf, F, a, 8)
        if not (_is(buf, F, 0, _L_GFN) and _is(buf, F, 2, _L_SPTE)):
            return ST_SLOW
        if not (_is(buf, F, 4, _L_LEVEL) and _is(buf, F, 6, _L_ERRNO)):
            return ST_SLOW
        ok1, gfn = _thex(buf, F, 1)
        ok2, spte = _thex(buf, F, 3)
        ok3, level = _tdec(buf, F, 5)
        ok4, errno = _tdec(buf, F, 7)
        if not (ok1 and ok2 and ok3 and ok4):
            return ST_SLOW
        if errno != 0 or level != 2:
            R[R_NOEV_SPLIT] += 1
            return ST_MORE
        kind = K_SPLIT
    else:  # kvm_page_fault: `vcpu %u rip 0x%lx address 0x%016llx ...` or `address %lx ...`
        if vs < -1:
            return ST_SLOW
        i = 4 if vs >= 0 else 0
        _tokens(buf, F, a, i + 4)
        if not _is(buf, F, i, _L_ADDRESS):
            return ST_SLOW
        ok1, addr = _thex(buf, F, i + 1)
        if not ok1:
            return ST_SLOW
        if _is(buf, F, i + 2, _L_ERROR_CODE):
            ok2, err = _thex(buf, F, i + 3)
            if not ok2 or (err & _PFERR_RSVD) != _U0:
                return ST_SLOW  # an MMIO fault: the Python lane notes its gfn
        gfn = addr >> np.uint64(12)
        kind = K_PF
    t = _thread(ttab, F[a + F_TID])
    if t < 0:
        return ST_SLOW
    if kind == K_PF and vs >= 0 and t_cur[t] != vs:
        return ST_SLOW
    if kind == K_PF and (R[R_DROP_PF] != 0 or R[R_SPTE_REQ] != 0):
        if vs >= 0:
            R[R_PF_WITH] += 1
        else:
            R[R_PF_WITHOUT] += 1
        return ST_MORE
    n = R[R_NOUT]
    if n >= cap:
        return ST_FULL
    out_u[U_TS, n] = np.uint64(ts)
    out_u[U_GFN, n] = gfn
    out_u[U_PFN, n] = pfn
    out_i[I_KIND, n] = kind
    out_i[I_LEVEL, n] = level
    out_i[I_VCPU, n] = t_cur[t]
    out_i[I_THREAD, n] = t
    out_i[I_LINE, n] = R[R_LINE] + 1
    R[R_NOUT] = n + 1
    if kind == K_FAULT:
        R[R_SPTE_REQ] += 1
    if kind == K_PF:
        if vs >= 0:
            R[R_PF_WITH] += 1
        else:
            R[R_PF_WITHOUT] += 1
    else:
        R[R_EVENT_LINES] += 1
    return ST_MORE
