"""``python -m shoal serve``: a standalone server, for clients on this or other machines."""

from __future__ import annotations

import logging
import os
import signal
import ssl
import stat
import sys
from typing import Any

from ._persist import StoreError
from ._server import Server, keep_freed_memory
from ._transport import Address, parse_address

__all__ = ["read_authkey", "format_address", "serve"]

log = logging.getLogger("shoal.server")


class ConfigError(Exception):
    """A setting the server refuses to start with; the message says how to fix it."""


def read_authkey(path: str) -> bytes:
    """The key in an authkey file: its content with surrounding whitespace stripped.

    The file must not be readable or writable by other users (``chmod 600``), or the key is not
    a secret: then this refuses, saying so.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the authkey file {path!r}: {e.strerror}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the authkey file {path!r} is open to other users (mode {stat.filemode(st.st_mode)});"
            f" make it private: chmod 600 {path}")
    if not key:
        raise ConfigError(f"the authkey file {path!r} is empty; make one with: "
                          f"head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}")
    return key


def format_address(address: Address) -> str:
    if isinstance(address, str):
        return address
    host, port = address
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise ConfigError("--tls-key needs --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the TLS certificate {cert!r}: {e}") from e
    return context


def serve(address: str, authkey_file: str, tls_cert: str | None = None,
          tls_key: str | None = None, persist: str | None = None, fsync: str = "everysec",
          verbose: bool = False, handshake_timeout: float = 5.0,
          max_connections: int = 4096) -> int:
    """Run a server until SIGINT or SIGTERM; return the exit status."""
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s shoal %(levelname)s %(message)s")
    where: Any = None
    try:
        where = parse_address(address)
        key = read_authkey(authkey_file)
        context = server_tls(tls_cert, tls_key)
        if isinstance(where, str) and context is not None:
            raise ConfigError("TLS is for TCP addresses; a Unix socket is already private")
        keep_freed_memory()
        server = Server(where, key, tls=context, handshake_timeout=handshake_timeout,
                        max_connections=max_connections, persist=persist, fsync=fsync)
    except (ConfigError, ValueError, StoreError) as e:
        print(f"shoal serve: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The socket calls name no file (chmod names a Unix socket's path): an error that names
        # another one came from the persistence directory or a file in it.
        if persist is not None and e.filename not in (None, where):
            what = f"cannot use the persistence directory {persist!r}"
            if os.path.abspath(e.filename) != os.path.abspath(persist):
                what += f" ({e.filename})"
        else:
            what = f"cannot listen on {address!r}"
        print(f"shoal serve: {what}: {e.strerror or e}", file=sys.stderr)
        return 2
    if not isinstance(server.address, str) and context is None and not _loopback(server.address[0]):
        log.warning("serving on %s without TLS: the authkey protects who may connect, but "
                    "not the data on the wire (use --tls-cert/--tls-key)", server.address[0])

    def stop(signum: int, frame: Any) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        server.stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("serving on %s%s", format_address(server.address), " with TLS" if context else "")
    print(f"shoal serving on {format_address(server.address)}", flush=True)
    server.serve_forever()
    log.info("stopped")
    return 0


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
