"""Checking a Dask scheduler address before any connection is tried (``sweep --scheduler``)."""

from __future__ import annotations

import re

from kvmcache.errors import KvmcacheError

#: Schemes whose location is HOST:PORT (Dask's tcp, tls, websocket and UCX backends).
HOST_PORT_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "ucxx")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.%A-Za-z]+\]|[A-Za-z0-9_.-]+)$")
FORMS = "tcp://HOST:PORT, tls://HOST:PORT, inproc://ADDRESS or HOST:PORT"


def check_address(address: str) -> None:
    """Refuse an obviously malformed scheduler address at once, with one line; Dask itself
    judges the rest (an unknown scheme, a host that does not resolve, a refused connection)."""

    def bad(problem: str) -> KvmcacheError:
        return KvmcacheError(
            f"Dask scheduler address {address!r} (--scheduler or DASK_SCHEDULER_ADDRESS): "
            f"{problem}; expected {FORMS}"
        )

    if not address or address != address.strip() or any(c.isspace() for c in address):
        raise bad("empty or contains spaces")
    scheme, sep, loc = address.partition("://")
    if not sep:
        scheme, loc = "tcp", address
    elif not _SCHEME.match(scheme):
        raise bad(f"{scheme!r} is not a URL scheme")
    scheme = scheme.lower()
    if scheme == "inproc":
        if not loc:
            raise bad("inproc:// needs an address")
        return
    if scheme not in HOST_PORT_SCHEMES:
        return  # a transport a Dask plugin may provide: Dask reports it if unknown
    host, colon, port = loc.rpartition(":")
    if not colon:
        raise bad("missing :PORT")
    if not host or not _HOST.match(host):
        raise bad(f"{host!r} is not a host name or address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"port {port!r} is not a number 1..65535")


def split_host_port(address: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a HOST:PORT address (checked by :func:`check_address`), or
    None for other schemes (inproc, a plugin's)."""
    scheme, sep, loc = address.partition("://")
    if not sep:
        scheme, loc = "tcp", address
    scheme = scheme.lower()
    if scheme not in HOST_PORT_SCHEMES:
        return None
    host, _, port = loc.rpartition(":")
    return scheme, host.strip("[]"), int(port)


def probe_scheduler(address: str, timeout: float) -> None:
    """Check, within ``timeout`` seconds, that a Dask scheduler answers at ``address``:
    the name resolves, a TCP connection opens, and (plain ``tcp``) the scheduler's first
    message arrives with a plausible size. Dask's own client waits without a deadline for
    that message and sizes a buffer by its first 8 bytes; a peer that never answers or
    answers garbage is one error line here instead (docs/limits.md)."""
    import socket
    import struct
    import threading
    import time

    from kvmcache.limits import MAX_SCHEDULER_HELLO

    where = split_host_port(address)
    if where is None:
        return
    scheme, host, port = where
    deadline = time.monotonic() + timeout

    def fail(problem: str) -> KvmcacheError:
        return KvmcacheError(f"cannot connect to the Dask scheduler at {address}: {problem}")

    found: list = []

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    t = threading.Thread(target=resolve, daemon=True, name="kvmcache-resolve")
    t.start()
    t.join(timeout)
    if not found:
        raise fail(f"resolving {host} took over {timeout:g} s (--scheduler-timeout)")
    if isinstance(found[0], OSError):
        raise fail(f"cannot resolve {host}: {found[0].strerror or found[0]}")
    sock = None
    problem = "no address"
    for family, kind, proto, _, addr in found[0]:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s = socket.socket(family, kind, proto)
        s.settimeout(left)
        try:
            s.connect(addr)
        except TimeoutError:
            s.close()
            problem = f"no connection within {timeout:g} s (--scheduler-timeout)"
            continue
        except OSError as e:
            s.close()
            problem = e.strerror or str(e)
            continue
        sock = s
        break
    if sock is None:
        if deadline - time.monotonic() <= 0:
            problem = f"no connection within {timeout:g} s (--scheduler-timeout)"
        raise fail(problem)
    with sock:
        if scheme != "tcp":
            return  # TLS and websockets: the connection opens; Dask does the rest

        def read(n: int) -> bytes:
            out = b""
            while len(out) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                b = sock.recv(min(n - len(out), 1 << 16))
                if not b:
                    raise fail("the peer closed the connection without a Dask handshake")
                out += b
            return out

        try:
            (size,) = struct.unpack("<Q", read(8))
            if not 0 < size <= MAX_SCHEDULER_HELLO:
                raise fail(f"not a Dask scheduler (its first message announces {size:,} bytes)")
            read(size)
        except TimeoutError:
            raise fail(
                f"no Dask handshake within {timeout:g} s (--scheduler-timeout); "
                "is it a Dask scheduler?"
            ) from None
        except OSError as e:
            raise fail(e.strerror or str(e)) from None
