"""Addresses and sockets: the one place where OSError becomes shoal's errors.

An address is a filesystem path (Unix socket) or ``(host, port)`` (TCP); ``"tcp://host:port"``
and ``"host:port"`` strings are accepted wherever an address is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import ssl
import stat
import tempfile
from collections.abc import Iterator
from typing import Any, Union

from ._errors import ConnectionLost, ProtocolError, ServerNotRunning
from . import _protocol as P

__all__ = ["Address", "parse_address", "listen", "connect", "recv_exact"]

Address = Union[str, tuple[str, int]]


def parse_address(address: Any) -> Address:
    """Normalise a user's address; raise ValueError with the accepted forms when it is none."""
    if isinstance(address, (tuple, list)) and len(address) == 2:
        host, port = address
        if isinstance(host, str) and type(port) is int and 0 <= port <= 65535:
            return (host, port)
    if isinstance(address, bytes):
        address = os.fsdecode(address)
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    if isinstance(address, str) and address:
        if address.startswith("tcp://"):
            address = address[len("tcp://"):]
        elif address.startswith(("unix://", "file://")):
            return address.split("://", 1)[1]
        else:
            if "/" in address or ":" not in address:
                return address
        host, sep, port = address.rpartition(":")
        if sep and port.isdigit() and int(port) <= 65535:
            return (host.strip("[]") or "127.0.0.1", int(port))
    raise ValueError(
        f"bad address {address!r}: give a socket path, (host, port), 'tcp://host:port' or 'host:port'"
    )


def listen(address: Address | None) -> tuple[socket.socket, Address, str | None]:
    """Bind a listening socket. ``None`` makes a Unix socket in a new directory only we can enter.

    Returns (socket, the real address, the private directory to remove at the end or None).
    """
    private_dir = None
    if address is None:
        private_dir = tempfile.mkdtemp(prefix="shoal-")   # mode 0700
        address = os.path.join(private_dir, "socket")
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Binding and listening under a lock on the directory: a server that has bound but
            # not yet listened refuses connections too, and must not be taken for a dead one
            # by another starting at the same path.
            with _locked_dir(os.path.dirname(os.path.abspath(address))):
                try:
                    sock.bind(address)
                except OSError as e:
                    if e.errno != errno.EADDRINUSE or not _stale(address):
                        raise
                    # The socket file of a server that died (kill -9 leaves it): nothing
                    # answers there, so it is ours to replace.
                    os.unlink(address)
                    sock.bind(address)
                sock.listen(512)
        except OSError:
            sock.close()
            raise
        os.chmod(address, 0o600)
        real: Address = address
    else:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        real = (host, port)
        sock.listen(512)
    sock.setblocking(False)
    return sock, real, private_dir


@contextlib.contextmanager
def _locked_dir(path: str) -> Iterator[None]:
    """Hold an exclusive lock on a directory; where none can be taken (no right to read it,
    a file system without locks), go on without: the race it closes is rare."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)           # (and the lock with it)


def _stale(path: str) -> bool:
    """Is ``path`` a Unix socket that nothing listens on?"""
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def tls_context(tls: Any) -> ssl.SSLContext | None:
    """A client's TLS context from what the user gave: None/False (no TLS), True (the system's
    certificate authorities), a CA file's path, or an ``ssl.SSLContext``."""
    if tls is None or tls is False:
        return None
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is True:
        return ssl.create_default_context()
    if isinstance(tls, (str, os.PathLike)):
        try:
            return ssl.create_default_context(cafile=os.fspath(tls))
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot use {os.fspath(tls)!r} as the CA file for TLS: "
                             f"{e.strerror or e}") from e
    raise TypeError("tls must be None, True, a CA file path or an ssl.SSLContext")


def connect(address: Address, timeout: float = 10.0, tls: Any = None) -> socket.socket:
    """A connected blocking socket to a server, or ConnectionLost saying why not."""
    context = tls_context(tls)
    try:
        if isinstance(address, str):
            if context is not None:
                raise ValueError("TLS is for TCP addresses; a Unix socket is already private")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout=timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if context is not None:
                    sock = context.wrap_socket(sock, server_hostname=address[0])
            except BaseException:
                sock.close()
                raise
    except (ConnectionRefusedError, FileNotFoundError) as e:   # (no socket file: no server)
        raise ServerNotRunning(f"cannot connect to the shoal server at {address!r}: {e}") from e
    except OSError as e:
        raise ConnectionLost(f"cannot connect to the shoal server at {address!r}: {e}") from e
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes from a blocking socket (handshake only)."""
    chunks = []
    while n:
        try:
            chunk = sock.recv(n)
        except OSError as e:
            raise ConnectionLost(f"the shoal server connection failed: {e}") from e
        if not chunk:
            raise ConnectionLost("the shoal server closed the connection during the handshake")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def handshake(sock: socket.socket, authkey: bytes) -> bytes:
    """The client's side of the handshake (see ``_protocol``): the server's instance id.
    Raises AuthenticationError."""
    # The magic first: a peer that is not a shoal server may send less than a whole greeting
    # and wait (multiprocessing's server does), which would end in a timeout, not in the error.
    magic = recv_exact(sock, len(P.MAGIC))
    if magic != P.MAGIC:
        raise ProtocolError("the peer is not a shoal server (bad greeting)")
    hello = magic + recv_exact(sock, P.HELLO_SIZE - len(P.MAGIC))
    proof, cn = P.client_proof(authkey, hello)
    try:
        sock.sendall(proof)
    except OSError as e:
        raise ConnectionLost(f"the shoal server connection failed: {e}") from e
    first = recv_exact(sock, 1)
    answer = first if first == b"\x00" else first + recv_exact(sock, P.ANSWER_SIZE - 1)
    return P.check_server(authkey, hello, cn, answer)


__all__ += ["handshake", "ProtocolError"]
