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

:func:`prefetch` gives jitted code a software prefetch (an ``llvm.prefetch`` intrinsic), a
no-op in Python mode. Its code generation is compiled into the callers' cached code: after
changing it, delete the ``__pycache__`` of the files that use it (a stale copy still only
prefetches, it cannot change a result).
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


def prefetch(write: bool = False) -> Callable[[Any, Any], None]:
    """``f(array, index)`` for jitted code: a hint to bring the cache line of
    ``array[index]`` into every cache level (``llvm.prefetch``, data cache, locality 3;
    ``write`` asks for it in a writable state). It reads and changes nothing and never
    faults, whatever the address; it checks ``index`` only under ``NUMBA_BOUNDSCHECK=1``
    (the caller keeps it in bounds, so that the hint means what it says). In Python mode,
    or with ``NUMBA_DISABLE_JIT=1``, a no-op Python function. Built once per mode, at the
    first call (it imports numba)."""
    key = (_python, write)
    if key not in _prefetchers:
        _prefetchers[key] = _no_prefetch if _python else _prefetch_intrinsic(write)
    return _prefetchers[key]


_prefetchers: dict[tuple[bool, bool], Callable[[Any, Any], None]] = {}


def _no_prefetch(array: Any, index: Any) -> None:
    """The Python body of :func:`prefetch`."""


def _prefetch_intrinsic(write: bool) -> Callable[[Any, Any], None]:
    from llvmlite import ir
    from numba.core import cgutils, config, types
    from numba.extending import intrinsic

    if config.DISABLE_JIT:
        return _no_prefetch

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> None:
        aty, ity = sig.args
        ary = context.make_array(aty)(context, builder, args[0])
        idx = context.cast(builder, args[1], ity, types.intp)
        # NUMBA_BOUNDSCHECK=1 checks the index like any other (IndexError), for the tests.
        check = context.enable_boundscheck
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [idx], boundscheck=check)
        ptr = builder.bitcast(ptr, cgutils.voidptr_t)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [cgutils.voidptr_t], fnty)
        # rw (0 read, 1 write), locality 3 (keep in every level), cache type 1 (data).
        builder.call(fn, [ptr, i32(int(write)), i32(3), i32(1)])
        return context.get_dummy_value()

    def typer(typingctx: Any, array: Any, index: Any) -> Any:
        if isinstance(array, types.Array) and isinstance(index, types.Integer):
            return types.void(array, index), codegen
        return None

    # numba names an intrinsic after its function: one name per flavour.
    typer.__name__ = typer.__qualname__ = "prefetch_write" if write else "prefetch_read"
    return intrinsic(typer)


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
