"""shoal's own exceptions: one root, named by meaning.

A method's own exception (``KeyError``, ``IndexError`` ...) is raised as itself; the classes here
are for what only shoal can go wrong with: the transport, authentication and the server.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.managers

__all__ = ["ShoalError", "ConnectionLost", "ServerNotRunning", "AuthenticationError", "RemoteError",
           "ProtocolError"]


class ShoalError(Exception):
    """Root of every exception raised by shoal itself."""


class ConnectionLost(ShoalError, ConnectionError, EOFError):
    """The connection to the server broke (server gone, socket closed, or process forked
    mid-call). Also an ``EOFError``, which Manager raises there."""


class ServerNotRunning(ConnectionLost, ConnectionRefusedError):
    """Nothing accepts connections at the address (``ConnectionRefusedError``, as Manager's
    ``connect()`` raises it, and ``ConnectionLost``)."""


class AuthenticationError(ShoalError, multiprocessing.AuthenticationError):
    """The peer did not prove it holds the authkey (or we could not prove it to the peer)."""


class ProtocolError(ShoalError):
    """The peer sent bytes that are not shoal's protocol (bad frame, oversized frame, bad message)."""


class RemoteError(ShoalError, multiprocessing.managers.RemoteError):
    """The server failed in a way that has no matching built-in exception; the text says how."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "remote error"


def _wire_exceptions() -> dict[str, type[BaseException]]:
    import builtins
    import queue
    import threading
    table = {name: cls for name, cls in vars(builtins).items()
             if isinstance(cls, type) and issubclass(cls, BaseException)}
    table.update({"queue.Empty": queue.Empty, "queue.Full": queue.Full,
                  "threading.BrokenBarrierError": threading.BrokenBarrierError})
    return table


#: Exceptions that cross the wire by name (raised in the server, re-raised as themselves in
#: clients). Names never change meaning.
WIRE_EXCEPTIONS: dict[str, type[BaseException]] = _wire_exceptions()
WIRE_NAMES: dict[type[BaseException], str] = {cls: name for name, cls in WIRE_EXCEPTIONS.items()}
