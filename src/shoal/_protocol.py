"""The wire protocol: handshake and frames (protocol version 2).

Handshake, before any request is read (both sides prove they hold the authkey; HMAC-SHA256)::

    server -> client   b"SHOAL" | version (1 byte) | server nonce (32 bytes)             38 bytes
    client -> server   client nonce (32 bytes) | HMAC(key, b"client" + sn + cn)          64 bytes
    server -> client   b"\\x01" | HMAC(key, b"server" + cn + sn + id) | id (8 bytes)     41 bytes
                       or b"\\x00" and close, when the client's proof is wrong            1 byte

``id`` names the server's objects: random for each start of a server that persists nothing,
kept in its directory by one that persists (its objects, and their ids, survive a restart). A
proxy made under one id refuses to reconnect to a server with another: its object is gone, and
the same number may name another object there.

Frames, in both directions after the handshake::

    offset  size  field
    0       4     body length N, unsigned big-endian (checked against the limit before reading)
    4       4     request id, unsigned big-endian (0: a notification, no reply is sent)
    8       N     body: one msgpack value (see ``_codec``)

Request body: ``[object id, method name, args]`` or ``[object id, method name, args, kwargs]``;
object id 0 is the server itself. Reply body: ``[0, value]`` on success, ``[1, [exception name,
args, message]]`` for a built-in exception, ``[2, pickled exception]`` for an exception raised by a
registered custom type's code. Replies carry the id of their request and may come out of order.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from ._errors import AuthenticationError, ProtocolError

__all__ = [
    "VERSION", "MAGIC", "HEADER", "NONCE", "MAX_FRAME", "HELLO_SIZE", "PROOF_SIZE",
    "INSTANCE", "ANSWER_SIZE",
    "server_hello", "client_proof", "check_client", "check_server",
]

VERSION = 2
MAGIC = b"SHOAL"
HEADER = struct.Struct("!II")
NONCE = 32
MAX_FRAME = 256 * 1024 * 1024     # after authentication; see Server(max_frame=...)
HELLO_SIZE = len(MAGIC) + 1 + NONCE
PROOF_SIZE = NONCE + 32
INSTANCE = 8                      # bytes of the server's id in its answer
ANSWER_SIZE = 1 + 32 + INSTANCE
OK, FAIL = b"\x01", b"\x00"

REPLY_OK, REPLY_ERROR, REPLY_PICKLED_ERROR = 0, 1, 2


def _mac(key: bytes, label: bytes, a: bytes, b: bytes) -> bytes:
    return hmac.new(key, label + a + b, hashlib.sha256).digest()


def server_hello() -> tuple[bytes, bytes]:
    """Return (bytes to send, server nonce)."""
    nonce = os.urandom(NONCE)
    return MAGIC + bytes([VERSION]) + nonce, nonce


def client_proof(key: bytes, hello: bytes) -> tuple[bytes, bytes]:
    """Check the server's hello and return (bytes to send, client nonce)."""
    if len(hello) != HELLO_SIZE or not hello.startswith(MAGIC):
        raise ProtocolError("the peer is not a shoal server (bad greeting)")
    if hello[len(MAGIC)] != VERSION:
        raise ProtocolError(
            f"the server speaks shoal protocol {hello[len(MAGIC)]}, this client speaks {VERSION}"
        )
    sn = hello[len(MAGIC) + 1:]
    cn = os.urandom(NONCE)
    return cn + _mac(key, b"client", sn, cn), cn


def check_client(key: bytes, server_nonce: bytes, proof: bytes, instance: bytes) -> bytes | None:
    """Verify the client's proof; return the server's answer (telling its ``instance`` id), or
    None when the proof is wrong."""
    cn, mac = proof[:NONCE], proof[NONCE:]
    if not hmac.compare_digest(mac, _mac(key, b"client", server_nonce, cn)):
        return None
    return OK + _mac(key, b"server", cn, server_nonce + instance) + instance


def check_server(key: bytes, hello: bytes, client_nonce: bytes, answer: bytes) -> bytes:
    """Verify the server's answer to our proof; return the server's instance id. Raises
    AuthenticationError when it fails."""
    if answer[:1] != OK:
        raise AuthenticationError(
            "the server refused the authkey: pass the same authkey the server was started with"
        )
    sn = hello[len(MAGIC) + 1:]
    instance = answer[1 + 32:]
    if len(answer) != ANSWER_SIZE or not hmac.compare_digest(
        answer[1:1 + 32], _mac(key, b"server", client_nonce, sn + instance)
    ):
        raise AuthenticationError("the server could not prove it holds the authkey")
    return instance
