"""Writing files so readers see the old file or the whole new one, never a part.

Every output kvmcache writes goes to a temporary file in the destination's directory and
is renamed over the destination only once complete; a failure leaves the destination as
it was and removes the temporary file. A destination that is a symbolic link is resolved
first (the file it points to is replaced; the link stays). A destination that exists and
is not a regular file (a device such as /dev/null, a FIFO) is written in place: it is never
replaced by a file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from kvmcache.errors import KvmcacheError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_target(path: str) -> tuple[str, bool]:
    """(the file to write for ``path``, whether to write it in place): symbolic links
    resolved; in place when it exists and is not a regular file (a device, a FIFO)."""
    try:
        st = os.stat(path)  # through links: /dev/stdout -> /proc/self/fd/1 -> a pipe
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise KvmcacheError(f"{path}: is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        return path, True
    return os.path.realpath(path), False


def temp_beside(path: str, what: str = "write") -> tuple[int, str]:
    """A new temporary file (descriptor, name) in ``path``'s directory, with the mode a plain
    ``open`` would give (mkstemp alone makes 0600 files). ``what`` names the action in errors.
    ``path`` is the resolved target (:func:`output_target`: not a directory)."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as e:
        raise KvmcacheError(f"{path}: cannot {what}: {e.strerror or e}") from None
    return fd, tmp


def open_output(path: str, what: str = "write") -> tuple[int, str | None, str]:
    """Open where ``path``'s output goes: (descriptor, temporary name or None when written
    in place, the resolved target to rename the temporary file over)."""
    real, in_place = output_target(path)
    if in_place:
        try:
            return os.open(real, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)), None, real
        except OSError as e:
            raise KvmcacheError(f"{path}: cannot {what}: {e.strerror or e}") from None
    fd, tmp = temp_beside(real, what)
    return fd, tmp, real


def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same existing file (links and ``./`` spellings included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(output: str | None, inputs: list[str], what: str = "OUT") -> None:
    """A usage error when ``output`` is one of the ``inputs`` (``-`` and None are skipped)."""
    if not output or output == "-":
        return
    for src in inputs:
        if src and src != "-" and same_file(output, src):
            raise KvmcacheError(
                f"{output}: is the input {src}; writing {what} there would destroy it"
            )


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass


@contextmanager
def atomic_open(path: str, mode: str = "w", what: str = "write") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` (``"w"`` text/utf-8 or ``"wb"``); rename on success."""
    fd, tmp, real = open_output(path, what)
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            if tmp is not None:
                f.flush()
                os.fsync(f.fileno())  # the new contents reach the disk before the rename
        if tmp is not None:
            os.replace(tmp, real)
    except BaseException as e:
        if tmp is not None:
            unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise KvmcacheError(f"{path}: cannot {what}: {e.strerror or e}") from None
        raise


def write_atomic(path: str, data: str | bytes, what: str = "write") -> None:
    """Write ``data`` (text as utf-8, or bytes) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", what) as f:
        f.write(data)
