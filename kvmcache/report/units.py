"""Numbers for reading: counts, bytes, durations, page-seconds, differences and percents.

Every report formats figures through these functions, so a figure reads the same in the
replay table, the compare table and the sweep table. Pure functions of integers; no rich.
"""

from __future__ import annotations

import math

PAGE_BYTES = 4096
#: A PAMT pair is two 4 KiB pages.
PAIR_BYTES = 2 * PAGE_BYTES

_BYTE_UNITS = ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB"))
_TIME_UNITS = (("s", 10**9), ("ms", 10**6), ("us", 10**3))
_COMPACT = ((10**12, "T"), (10**9, "G"), (10**6, "M"))


def fmt_int(n: int) -> str:
    """An exact integer with thousands separators: ``1234567`` -> ``1,234,567``."""
    return f"{n:,}"


def _three_digits(x: float) -> str:
    """A positive number with three significant digits, no exponent: 1.23, 12.3, 123, 1,234."""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def human_bytes(n: int) -> str:
    """``4294967296`` -> ``4 GiB``, ``1638400`` -> ``1.6 MiB``, ``30310`` -> ``29.6 KiB``:
    exact when a whole number of units, else one decimal (none from 100 units up)."""
    sign, n = ("-", -n) if n < 0 else ("", n)
    for shift, unit in _BYTE_UNITS:
        if n >= 1 << shift:
            q, r = divmod(n, 1 << shift)
            if r == 0:
                return f"{sign}{q:,} {unit}"
            x = n / (1 << shift)
            return f"{sign}{x:,.0f} {unit}" if x >= 100 else f"{sign}{x:.1f} {unit}"
    return f"{sign}{n} B"


def pages_bytes(pages: int) -> str:
    """The memory of ``pages`` 4 KiB pages."""
    return human_bytes(pages * PAGE_BYTES)


def duration(ns: int) -> str:
    """Nanoseconds in the unit that reads best: ``950 ns``, ``4.10 us``, ``12.3 ms``, ``1.50 s``."""
    if ns == 0:
        return "0"
    sign, a = ("-", -ns) if ns < 0 else ("", ns)
    for unit, scale in _TIME_UNITS:
        if a >= scale - scale // 2000:  # 999.6 us reads 1.00 ms, not 1,000 us
            return f"{sign}{_three_digits(a / scale)} {unit}"
    return f"{sign}{a} ns"


def page_seconds(page_ns: int, short: bool = False) -> str:
    """Idle page-nanoseconds as page-seconds: ``218.177``, ``0.0701`` (3 significant digits
    below 1, ``<0.0001`` below that); ``short``: 3 significant digits from 1 up too."""
    value = page_ns / 1e9
    if value == 0:
        return "0"
    if abs(value) >= 1:
        return _three_digits(value) if short else f"{value:,.3f}"
    if abs(value) < 0.0001:
        return "<0.0001"
    decimals = 2 - math.floor(math.log10(abs(value)))  # three significant digits, no exponent
    return f"{value:.{decimals}f}"


def compact(n: int) -> str:
    """A count short enough for a narrow cell: exact below ten million, else ``263.4M``."""
    sign, a = ("-", -n) if n < 0 else ("", n)
    if a < 10**7:
        return f"{sign}{a:,}"
    for scale, suffix in _COMPACT:
        if a >= scale:
            return f"{sign}{a / scale:,.1f}{suffix}"
    return f"{sign}{a:,}"  # pragma: no cover - a >= 10**7 always has a suffix


def percent(value: int, ref: int) -> str:
    """The change from ``ref`` to ``value`` in percent, readable at every size.

    ``n/a`` when ``ref`` is 0 (and ``value`` is not), ``+<0.1%`` for a change that one
    decimal would show as 0.0%, and a ratio such as ``x12.5`` or ``x2.6M`` from +1000% up.
    """
    d = value - ref
    if d == 0:
        return "+0%"
    if ref == 0:
        return "n/a"
    pct = d * 100 / ref
    if abs(pct) < 0.05:
        return "+<0.1%" if d > 0 else "-<0.1%"
    if pct >= 1000:
        ratio = value / ref
        if ratio >= 10**7:
            return "x" + compact(int(ratio))
        return "x" + _three_digits(ratio)
    return f"{pct:+.1f}%"


def signed(text: str) -> str:
    """A formatted difference with its sign: ``1.2 us`` -> ``+1.2 us`` (``-`` is kept)."""
    return text if text.startswith("-") else "+" + text
