"""Every bound kvmcache puts on what it reads, in one place (documented in docs/limits.md).

Hostile or careless input (a huge number, a YAML "billion laughs", ``/dev/zero`` given as a
baseline, a binary header declaring 4 GiB records, a Dask peer that never answers) is
refused with one line and exit 2, in time and memory bounded by these constants and the
size of the input. This module imports nothing heavy: any command may use it.
"""

from __future__ import annotations

import os
import reprlib
import stat
from typing import Any

from kvmcache.errors import KvmcacheError, reading

#: Largest baseline, config file, parameters or import sidecar read (they are small files).
MAX_SIDE_FILE_BYTES = 64 << 20

#: Longest number, in characters (sign, ``0x`` prefix and ``_`` included), read from a
#: trace, a parameter, a limit, a size or a baseline. A 64-bit value needs at most 20
#: decimal or 64 binary digits; this refuses long numbers before Python's own
#: int-conversion limit (4,300 digits) is reached.
MAX_NUMBER_CHARS = 100

#: Most YAML nodes reached through aliases (``*name``) in one document (one trace, config
#: file or sidecar), counting every node of an aliased structure each time it is used. A
#: "billion laughs" document expands far beyond this; sharing a few anchors does not.
MAX_ALIAS_NODES = 1_000_000

#: Longest line of an imported recording: a recorded line is well under 4 KiB, so a longer
#: one is not trace text and is refused rather than held in memory waiting for its end.
MAX_IMPORT_LINE = 16 << 20

#: Characters of a user's value quoted in an error message; longer values are cut with "...".
EXCERPT_CHARS = 80

#: Longest error message printed (a final guard after the excerpts above).
MAX_MESSAGE_CHARS = 2000

#: Largest binary header size and record size a trace may declare (INTERFACES.md section 3
#: lets minor versions grow both; the reader uses the fields it knows and skips the rest).
MAX_HEADER_SIZE = 1 << 20
MAX_RECORD_SIZE = 1 << 20

#: Largest buffer of records read at once from a pipe or mapped from a file, in bytes
#: (32 MiB: 2**20 records of 32 bytes; fewer records when records are larger).
MAX_CHUNK_BYTES = 32 << 20

#: Seconds allowed to connect to and hear from a Dask scheduler (``sweep
#: --scheduler-timeout``): name resolution, TCP connect and the scheduler's first message.
SCHEDULER_TIMEOUT = 5.0

#: Largest first message accepted from a Dask scheduler while checking it (its handshake is
#: a few hundred bytes; a peer announcing more is not a Dask scheduler).
MAX_SCHEDULER_HELLO = 16 << 20


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = EXCERPT_CHARS
_REPR.maxlong = EXCERPT_CHARS
_REPR.maxother = EXCERPT_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def excerpt(value: Any) -> str:
    """``repr(value)`` for a message, at most :data:`EXCERPT_CHARS` characters; never
    expands a large or deeply shared structure (only its first few items are looked at)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    text = _REPR.repr(value)
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 3] + "..."
    return text


def one_line(message: str) -> str:
    """An error message on one line of at most :data:`MAX_MESSAGE_CHARS` characters."""
    if "\n" in message or "\r" in message:
        message = " ".join(message.split())
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message


def number_too_long(text: str) -> bool:
    """Whether the number ``text`` is longer than :data:`MAX_NUMBER_CHARS` characters."""
    return len(text.strip()) > MAX_NUMBER_CHARS


def long_number(what: str, text: str) -> KvmcacheError:
    """The error for a number over :data:`MAX_NUMBER_CHARS` characters."""
    return KvmcacheError(
        f"{what}: a number of {len(text.strip()):,} characters is too long "
        f"(at most {MAX_NUMBER_CHARS})"
    )


class LongNumber(ValueError):
    """A JSON number over :data:`MAX_NUMBER_CHARS` characters (``args[0]``: its length)."""


def json_int(text: str) -> int:
    """``parse_int`` for :func:`json.loads`: refuses over-long numbers (:class:`LongNumber`)
    before Python's own int-conversion limit raises a bare ValueError."""
    if len(text) > MAX_NUMBER_CHARS:
        raise LongNumber(len(text))
    return int(text)


def long_json_number(path: str, e: LongNumber, what: str = "invalid JSON") -> KvmcacheError:
    """The one-line error for a :class:`LongNumber` in the JSON file ``path``."""
    return KvmcacheError(
        f"{path}: {what}: a number of {e.args[0]:,} characters is too long "
        f"(at most {MAX_NUMBER_CHARS})"
    )


def check_regular_file(path: str, kind: str = "file", what: str | None = None) -> int:
    """The size of ``path``, which must be a regular file of at most
    :data:`MAX_SIDE_FILE_BYTES`; a device, FIFO or directory is refused (one line)."""
    with reading(path, kind, what):
        st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise KvmcacheError(f"{path}: is a directory" + (f", not {what}" if what else ""))
    if not stat.S_ISREG(st.st_mode):
        raise KvmcacheError(
            f"{path}: not a regular file" + (f" ({what} must be a file)" if what else "")
        )
    if st.st_size > MAX_SIDE_FILE_BYTES:
        raise KvmcacheError(
            f"{path}: {st.st_size:,} bytes is too large for {what or 'this file'} "
            f"(at most {MAX_SIDE_FILE_BYTES >> 20} MiB)"
        )
    return st.st_size


def read_small_file(path: str, kind: str = "file", what: str | None = None) -> bytes:
    """All bytes of a small regular file (:func:`check_regular_file`), read with the cap
    enforced even if the file grows while it is read."""
    check_regular_file(path, kind, what)
    with reading(path, kind, what), open(path, "rb") as f:
        data = f.read(MAX_SIDE_FILE_BYTES + 1)
    if len(data) > MAX_SIDE_FILE_BYTES:
        raise KvmcacheError(
            f"{path}: too large for {what or 'this file'} (at most {MAX_SIDE_FILE_BYTES >> 20} MiB)"
        )
    return data
