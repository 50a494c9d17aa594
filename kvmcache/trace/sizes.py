"""The one size grammar (INTERFACES.md section 2): a decimal or 0x number, optional spaces,
and a unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB (case-insensitive, powers of 1024)."""

from __future__ import annotations

import re

from kvmcache.limits import MAX_NUMBER_CHARS, excerpt

_UNIT = r"(b|kib|kb|k|mib|mb|m|gib|gb|g|tib|tb|t)"
_NUMBER = r"^\s*(0x[0-9a-f]+|[0-9]+)\s*"
_WITH_UNIT = re.compile(_NUMBER + _UNIT + r"\s*$", re.IGNORECASE)
_UNIT_OPTIONAL = re.compile(_NUMBER + _UNIT + r"?\s*$", re.IGNORECASE)
_SHIFT = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def size_bytes(text: str, *, unit_required: bool) -> int | None:
    """Bytes of ``text``, or None when it is not a size. Without ``unit_required`` a bare
    number is a byte count (the command-line form; YAML strings need a unit)."""
    if len(text) > MAX_NUMBER_CHARS + 8:  # a number, blanks and a unit
        return None  # never passed to int(): Python refuses 4,300 digits (a ValueError)
    m = (_WITH_UNIT if unit_required else _UNIT_OPTIONAL).match(text)
    if m is None:
        return None
    digits = m.group(1)
    number = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 10)
    unit = (m.group(2) or "b").lower()
    return number << _SHIFT[unit[0]]


def not_a_size(what: str, text: object) -> str:
    """The one message for a value that is not a size."""
    return (
        f"{what} {excerpt(text)} is not a size (a decimal or 0x number and a unit "
        "B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB)"
    )


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes of a command-line size such as ``4GiB``, ``512M``, ``0x1000 K`` or ``4096`` (a
    bare number is bytes), or of a non-negative int; anything else is a usage error."""
    from kvmcache.errors import KvmcacheError

    if isinstance(text, bool):
        raise KvmcacheError(not_a_size(what, text))
    if isinstance(text, int):
        if text < 0:
            raise KvmcacheError(f"{what} {text} is negative")
        return text
    size = size_bytes(str(text), unit_required=False)
    if size is None:
        raise KvmcacheError(not_a_size(what, text))
    return size
