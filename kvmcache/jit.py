"""The one door to numba: the import, the option sets, and the Python-body switch for tiny inputs.

No other module imports numba (a test checks it). Each package keeps its jitted functions in
one file (numba caches per source file and does not see changes in the files a cached
function's globals came from): the replay kernel in ``sim/kernel.py``, the synthetic generator
in ``synth/generator.py``, the importer's fast lane in ``importers/scan.py``.

Importing numba and loading the cached kernel cost about 0.8 s, far more than replaying a
few thousand events in Python. ``kvmcache replay`` and ``kvmcache compare`` call
:func:`use_python` with the events times the strategies to replay, before the kernel is first
imported; at most :data:`SMALL_WORK` of them run in Python (about 0.17 ms each, against
0.8 s of start-up); the kernel's Python body is the same code (the test suite also checks it
with ``NUMBA_DISABLE_JIT=1``). ``KVMCACHE_JIT=1`` always compiles.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

#: Most event replays (events x strategies) a command runs in Python.
SMALL_WORK = 2500

#: Every jitted function: cached on disk, GIL released, and compiled without numba's
#: reference counting (NRT): the kernels allocate nothing and only index the arrays their
#: callers keep alive, so the per-call incref/decref of each array argument is pure cost.
NO_NRT: dict[str, Any] = {"cache": True, "nogil": True, "_nrt": False}
#: The same, inlined into its callers at the numba IR level (a call costs as much as the work).
NO_NRT_INLINE: dict[str, Any] = {**NO_NRT, "inline": "always"}

_python = False


def use_python(work: int) -> bool:
    """Run the kernel as Python in this process if ``work`` (events x strategies) is small
    enough and the kernel is not loaded yet; True when it will."""
    global _python
    if "kvmcache.sim.kernel" in sys.modules:
        return _python
    if 0 < work <= SMALL_WORK and os.environ.get("KVMCACHE_JIT") != "1":
        import warnings

        # The kernel's hashing wraps around in int64, as the compiled code does; numpy
        # warns about it (np.seterr is per thread, and compare runs strategies on threads).
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        _python = True
    return _python


def compile_pending(source_file: str, entry: str) -> bool:
    """True when the next call of the jitted ``entry`` of ``source_file`` will compile it:
    numba has no on-disk cache index of it for this Python whose source stamp matches the
    file (a first run after installing or changing it). False in Python mode, with the JIT
    disabled, or with a NUMBA_CACHE_DIR elsewhere (nothing to tell then)."""
    if _python or os.environ.get("NUMBA_DISABLE_JIT", "0") != "0":
        return False
    if os.environ.get("NUMBA_CACHE_DIR"):
        return False
    try:
        source_mtime = os.stat(source_file).st_mtime
    except OSError:
        return False
    cache = os.path.join(os.path.dirname(source_file), "__pycache__")
    stem = os.path.splitext(os.path.basename(source_file))[0]
    tag = f".py{sys.version_info.major}{sys.version_info.minor}.nbi"
    try:
        names = os.listdir(cache)
    except OSError:
        return True
    for name in names:
        if not (name.startswith(f"{stem}.{entry}-") and name.endswith(tag)):
            continue
        index = os.path.join(cache, name)
        try:
            if os.stat(index).st_mtime >= source_mtime:
                return False
        except OSError:
            continue
        if _index_matches(index, source_file):  # the file was rewritten, not changed
            return False
    return True


def _index_matches(index: str, source_file: str) -> bool:
    """Whether numba's cache index ``index`` was written for this numba and this content of
    ``source_file`` (numba stamps a source by its SHA-256, older versions by mtime and size)."""
    import hashlib
    import pickle
    from importlib.metadata import version

    try:
        with open(index, "rb") as f:
            if pickle.load(f) != version("numba"):
                return False
            stamp, _ = pickle.loads(f.read())  # what numba itself reads (it imports numba)
        with open(source_file, "rb") as f:
            content = f.read()
        st = os.stat(source_file)
    except Exception:  # an unreadable or foreign index: numba will recompile
        return False
    if isinstance(stamp, bytes):
        return stamp == hashlib.sha256(content).digest()
    return stamp == (st.st_mtime, st.st_size)


def njit(*signature: Any, **options: Any) -> Callable[[Callable], Callable]:
    """``numba.njit(*signature, **options)``, or the identity in Python mode."""
    if _python:
        return lambda f: f
    return compiled(*signature, **options)


def prefetch_function() -> Callable[[Any, Any], None]:
    """``prefetch(a, i)`` for jitted code: ask the CPU for the cache line of ``a[i]`` (a
    read, kept in every cache level) and go on without waiting; it never faults. Emits
    LLVM's ``llvm.prefetch``. A no-op in Python mode and with the JIT disabled."""
    if _python or os.environ.get("NUMBA_DISABLE_JIT", "0") != "0":

        def prefetch(a: Any, i: Any) -> None:
            return None

        return prefetch
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])

    @intrinsic
    def prefetch(typingctx: Any, a: Any, i: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            at = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
            # read (0), locality 3 (keep in all levels), data cache (1)
            builder.call(fn, [at, i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(a, i), codegen

    return prefetch


def compiled(*signature: Any, **options: Any) -> Callable[[Callable], Callable]:
    """``numba.njit(*signature, **options)``, always compiled (the synth and import helpers
    use it directly). With ``cache=True`` and no writable numba cache, the kernels are
    cached in a private temporary folder, or compiled in memory (one note on stderr)."""
    from numba import njit as numba_njit

    if not options.get("cache"):
        return numba_njit(*signature, **options)

    def decorate(f: Callable) -> Callable:
        try:
            return numba_njit(*signature, **options)(f)
        except RuntimeError as e:  # "cannot cache function ...: no locator available"
            if "cannot cache" not in str(e):
                raise
            return _without_writable_cache(numba_njit, signature, options, f)

    return decorate


def _without_writable_cache(
    numba_njit: Callable, signature: tuple, options: dict, f: Callable
) -> Callable:
    """No writable numba cache (HOME and the installation read-only: a CI container, a
    shared install): cache under a private folder in the temporary directory, or, failing
    that, compile in memory for this process. One note on stderr says which."""
    import tempfile

    from numba import config

    where = os.path.join(tempfile.gettempdir(), f"kvmcache-numba-{os.getuid()}")
    if config.CACHE_DIR != where and _private_dir(where):
        config.CACHE_DIR = where
        try:
            out = numba_njit(*signature, **options)(f)
        except RuntimeError:
            pass
        else:
            _note(f"no writable numba cache; caching compiled kernels in {where}")
            return out
    _note("no writable numba cache; compiling the kernels in memory (slower start)")
    return numba_njit(*signature, **{k: v for k, v in options.items() if k != "cache"})(f)


def _private_dir(path: str) -> bool:
    """Whether ``path`` is (or now is) a directory of ours that we can write."""
    import stat

    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
        and not st.st_mode & 0o022
        and os.access(path, os.W_OK)
    )


_noted: set[str] = set()


def _note(msg: str) -> None:
    if msg not in _noted:
        _noted.add(msg)
        print(f"kvmcache: note: {msg}", file=sys.stderr)
