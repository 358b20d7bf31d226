"""Fuzz target for the server's frame decoder and request dispatch.

It drives the server's real code in this process: a fresh ``shoal._server.Server`` per input (so
a crash reproduces from its input alone), one ``Conn`` on a socketpair, and the bytes fed through
``Conn.on_event`` exactly as the event loop would feed them, in chunks. It fails when an exception
escapes the server's code, when a peer that has not authenticated is sent anything but the
greeting (and the one-byte refusal), when a reply is not a well-formed frame, or when, after the
input, the same server does not answer a good request on a new connection.

Input layout: byte 0 picks the mode, byte 1 the chunk size, the rest is the payload.

====  ====================================================================================
mode  payload
====  ====================================================================================
0     raw bytes sent before authentication
1     raw bytes sent after a successful handshake
2, 3  after a successful handshake, a list of request bodies, each prefixed by its length
      (1 byte; 255 means a 2-byte big-endian length follows); the target adds the frame
      headers (request ids 1, 2, ...), so the bodies reach the msgpack decoder and dispatch
====  ====================================================================================

Run it under atheris (``pip install atheris``)::

    python tests/fuzz/fuzz_frames.py -max_total_time=300

or feed it from another test (``tests/test_hostile.py`` does, with hypothesis). ``frame_input``
builds a mode-2 input from bodies.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import sys
from collections.abc import Iterable

import msgpack

from shoal import _protocol as P
from shoal._loop import READ
from shoal._conn import Conn
from shoal._server import Server

__all__ = ["FRAMED", "KEY", "PRE_AUTH", "RAW", "TestOneInput", "frame_input"]

KEY = b"fuzz-frames-key"
PRE_AUTH, RAW, FRAMED = 0, 1, 2
_REPLY_STATUSES = (P.REPLY_OK, P.REPLY_ERROR, P.REPLY_PICKLED_ERROR)


def frame_input(bodies: Iterable[bytes], chunk: int = 0) -> bytes:
    """A mode-2 input that sends ``bodies`` as frames (request ids 1, 2, ...)."""
    out = bytearray([FRAMED, chunk & 0xFF])
    for body in bodies:
        body = body[:0xFFFF]
        if len(body) < 255:
            out.append(len(body))
        else:
            out += b"\xff" + struct.pack("!H", len(body))
        out += body
    return bytes(out)


def _bodies(payload: bytes) -> list[bytes]:
    bodies, pos = [], 0
    while pos < len(payload):
        n = payload[pos]
        pos += 1
        if n == 255:
            n = int.from_bytes(payload[pos:pos + 2], "big")
            pos += 2
        bodies.append(payload[pos:pos + n])
        pos += n
    return bodies


def _drain(peer: socket.socket, into: bytearray) -> bool:
    """Read what the server sent so far; False once the server closed the connection."""
    while select.select([peer], [], [], 0)[0]:
        try:
            data = peer.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False
        into += data
    return True


class _Peer:
    """A connection to ``server`` whose server side we drive by hand, as the loop would."""

    def __init__(self, server: Server) -> None:
        self.server = server
        ours, self.sock = socket.socketpair()
        ours.setblocking(False)
        self.sock.setblocking(False)
        # What Server._accept does with a new socket, minus TCP options.
        self.conn = Conn(server, ours)
        server.conns.add(self.conn)
        server.loop.add(self.conn.fd, READ, self.conn.on_event)
        self.received = bytearray()
        self.open = True

    def pump(self) -> None:
        """Let the server read what we sent (if it is still open) and take what it answered."""
        if not self.conn.closed:
            self.conn.on_event(READ)
            self.server._flush_dirty()
        self.open = _drain(self.sock, self.received) and self.open

    def send(self, data: bytes, chunk: int) -> None:
        for i in range(0, len(data), chunk):
            if self.conn.closed:
                break
            try:
                self.sock.sendall(data[i:i + chunk])
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            self.pump()
        self.pump()

    def handshake(self) -> None:
        hello = bytes(self.received[:P.HELLO_SIZE])
        del self.received[:P.HELLO_SIZE]
        proof, cn = P.client_proof(KEY, hello)
        self.sock.sendall(proof)
        self.pump()
        answer = bytes(self.received[:P.ANSWER_SIZE])
        del self.received[:P.ANSWER_SIZE]
        P.check_server(KEY, hello, cn, answer)

    def close(self) -> None:
        self.conn.close()
        self.sock.close()


def _frames(data: bytes | bytearray, cut_short: bool = False) -> list[tuple[int, bytes]]:
    """Split what the server sent into frames, checking that each is well formed.

    ``cut_short``: the server closed the connection, so replies it had not finished writing
    may end in the middle of a frame.
    """
    frames, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 8:
            assert cut_short, f"a partial frame header at the end of the replies: {data[pos:]!r}"
            break
        length, rid = P.HEADER.unpack_from(data, pos)
        assert length <= P.MAX_FRAME, length
        if len(data) - pos - 8 < length:
            assert cut_short, "a truncated reply"
            break
        frames.append((rid, bytes(data[pos + 8:pos + 8 + length])))
        pos += 8 + length
    return frames


def _check_reply(body: bytes) -> None:
    # Plain msgpack, no extension hook: a reply's opaque values stay bytes, never unpickled here.
    reply = msgpack.unpackb(body, raw=False, strict_map_key=False)
    assert type(reply) is list and len(reply) == 2 and reply[0] in _REPLY_STATUSES, reply


def _request(oid: int, name: str, args: list[object]) -> bytes:
    return bytes(msgpack.packb([oid, name, args], use_bin_type=True))


def _check_still_serving(server: Server) -> None:
    """A new client on the same server authenticates and gets answers to good requests."""
    peer = _Peer(server)
    try:
        peer.pump()
        peer.handshake()
        frames = [_request(0, "ping", []), _request(1, "__setitem__", ["fuzz-check", "ok"]),
                  _request(1, "__getitem__", ["fuzz-check"])]
        peer.send(b"".join(P.HEADER.pack(len(b), i + 1) + b for i, b in enumerate(frames)), 1 << 16)
        replies = dict(_frames(peer.received))
        assert msgpack.unpackb(replies[1]) == [0, "pong"], replies
        assert msgpack.unpackb(replies[2]) == [0, None], replies
        assert msgpack.unpackb(replies[3]) == [0, "ok"], replies
    finally:
        peer.close()


class _Errors(logging.Handler):
    """Collects the server's error log records (an "internal error" is a bug, even if caught)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def TestOneInput(data: bytes) -> None:
    """One fuzz input (see the module docstring for its layout)."""
    if len(data) < 2:
        return
    mode, chunk, payload = data[0] % 4, data[1] or 256, data[2:]
    errors = _Errors()
    log = logging.getLogger("shoal.server")
    log.addHandler(errors)
    server = Server(("127.0.0.1", 0), KEY)   # a TCP listener is cheaper to make than a directory
    try:
        peer = _Peer(server)
        try:
            peer.pump()
            hello = bytes(peer.received)
            assert len(hello) == P.HELLO_SIZE and hello.startswith(P.MAGIC + bytes([P.VERSION]))
            if mode == PRE_AUTH:
                peer.send(payload, chunk)
                told = bytes(peer.received[P.HELLO_SIZE:])
                # Nothing but the greeting and, after a (necessarily wrong) proof, the one-byte
                # refusal and the end of the connection.
                if len(payload) >= P.PROOF_SIZE:
                    assert told == P.FAIL and peer.conn.closed, told
                else:
                    assert told == b"" and not peer.conn.closed, told
            else:
                peer.handshake()
                if mode == RAW:
                    peer.send(payload, chunk)
                else:
                    stream = b"".join(P.HEADER.pack(len(b), i + 1) + b
                                      for i, b in enumerate(_bodies(payload)))
                    peer.send(stream, chunk)
                for _rid, body in _frames(peer.received, cut_short=peer.conn.closed):
                    _check_reply(body)
        finally:
            peer.close()
        _check_still_serving(server)
        assert not errors.records, [r.getMessage() for r in errors.records]
    finally:
        server.close()
        log.removeHandler(errors)


def main() -> None:
    import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]

    # The server's warnings (a frame over the limit, a wrong key ...) are expected here: keep
    # only errors on the screen.
    logging.getLogger("shoal.server").setLevel(logging.ERROR)
    # Coverage feedback from shoal's (and msgpack's Python-level) code, already imported here.
    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
