"""One client connection as the server sees it: authentication, the framing of its requests,
and its replies, queued and written in as few system calls as the socket takes.

The server (``_server``) owns the objects and runs the requests; a connection counts the
references it was sent (the objects it holds stay alive while it does) and the synchronization
objects it holds or waits on (given back when it goes).
"""

from __future__ import annotations

import logging
import pickle
import socket
import ssl
import time
import weakref
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._codec import Codec
from ._errors import WIRE_NAMES, RemoteError
from ._loop import READ, WRITE
from ._objects import PENDING, Plain, SDict, SList, Shared, plain

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Conn", "PlainCodec", "HEADER", "OUT_HIGH"]

log = logging.getLogger("shoal.server")
HEADER = P.HEADER
OUT_HIGH = 32 * 1024 * 1024      # bytes of unsent replies past which a client is not read
_SEND_CHUNK = 256 * 1024            # at most this much (or _IOV_MAX buffers) per send call
_IOV_MAX = 1024
_NONE_REPLY = Codec().encode([P.REPLY_OK, None])   # the most common reply, encoded once


def _builtin_exception(e: BaseException) -> str | None:
    return WIRE_NAMES.get(type(e))


class Conn:
    """One client connection, as the server sees it."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.out: list[bytes] = []        # replies made this turn, not yet offered to the socket
        self.pending: list[Any] = []      # replies the socket did not take (the first maybe partly)
        self.backlog = 0                  # bytes in pending
        self.handles: dict[int, list[Any]] = {}
        self.authed = False
        self.closed = False
        self.clean = False        # the client said goodbye: it ended normally
        self.dirty = False
        self.paused = False       # its replies are over the limit: not read until they are out
        self.events = READ
        self.involved: weakref.WeakSet[Any] = weakref.WeakSet()  # sync objects it holds or waits on
        self.pid: int | None = None
        self.host = ""
        self.since = time.time()
        self.hello, self.nonce = P.server_hello()
        # The handshake timer covers TLS and authentication: a peer that does not finish both
        # in time is closed, having been told nothing.
        self.timer = server.loop.call_later(server.handshake_timeout, self._handshake_timeout)
        self.tls_pending = isinstance(sock, ssl.SSLSocket)
        if not self.tls_pending:
            self._send_hello()

    def _send_hello(self) -> None:
        try:
            self.sock.send(self.hello)
        except OSError:
            pass

    def _tls_handshake(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(READ)
            return
        except ssl.SSLWantWriteError:
            self._want(WRITE)
            return
        except OSError as e:          # ssl.SSLError included
            log.info("closing %r: TLS handshake failed: %s", self, e)
            self.close()
            return
        self.tls_pending = False
        self._want(READ)
        self._send_hello()

    def _want(self, events: int) -> None:
        if events != self.events:
            self.events = events
            self.server.loop.modify(self.fd, events)

    def __repr__(self) -> str:
        return f"<connection fd={self.fd} pid={self.pid}>"

    def encode(self, value: Any) -> bytes:
        """Encode a reply to this client: the references in it count as held by it."""
        server = self.server
        server.encoding_for = self
        return server.codec.encode(value)

    def reply_body(self, rid: int, result: Any) -> bytes | None:
        """The body of the reply to request ``rid`` that gave ``result``; None when none goes
        now (a call sent without waiting, or one parked)."""
        if result is PENDING:
            return None
        if not rid:
            return None
        if result is None:
            return _NONE_REPLY
        if type(result) is Plain:
            return self.encode_plain(result.value)
        return self.encode([0, result])

    def encode_plain(self, value: Any) -> bytes:
        """Encode a reply carrying a plain deep copy of ``value``: the shared dicts and lists in
        it go as their contents. One met a second time (a container inside itself, or one
        reached by two paths) makes ``plain`` build the copy instead, which keeps a reference
        where a cycle closes; the references counted by the attempt are taken back first."""
        server = self.server
        server.encoding_for = self
        codec = server.plain_codec
        counted = codec.counted = []
        codec.expanded = set()
        try:
            return codec.encode([0, value])
        except BaseException as e:
            for obj in counted:
                self.unref(obj.oid)
            if not isinstance(e, (_MetAgain, ValueError, RecursionError)):
                raise
        finally:
            codec.counted, codec.expanded = [], set()   # it must not keep the objects alive
        return server.codec.encode([0, plain(value)])

    def unref(self, oid: int, n: int = 1) -> None:
        """Take back ``n`` of the references to ``oid`` this client was sent."""
        h = self.handles.get(oid)
        if h is not None:
            h[1] -= n
            if h[1] <= 0:
                del self.handles[oid]

    def _ref_of(self, obj: Any) -> tuple[int, str] | None:
        if not isinstance(obj, Shared):
            return None
        h = self.handles.get(obj.oid)
        if h is None:
            self.handles[obj.oid] = [obj, 1]
        else:
            h[1] += 1
        return obj.oid, obj.typeid

    def _handshake_timeout(self) -> None:
        if not self.authed:
            log.info("closing %r: no handshake within %.1f s", self, self.server.handshake_timeout)
            self.close()

    # -- input -------------------------------------------------------------------------------

    def on_event(self, events: int) -> None:
        if self.tls_pending:
            self._tls_handshake()
            return
        if events & WRITE:
            self.flush()
            if self.closed:
                return
            if self.paused and not self.pending:
                self.paused = False           # the replies are out: run what waited
                self._run(b"")
            if not events & ~WRITE or self.paused or self.closed:
                return
        try:
            data: Any = self.sock.recv(65536)
            if self.server.tls is not None:
                # TLS may hold decrypted bytes that epoll cannot see: take them now.
                while self.sock.pending():      # type: ignore[attr-defined]
                    data += self.sock.recv(65536)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self._run(data)

    def _run(self, data: Any) -> None:
        """The hot path: parse every whole frame that has arrived, run each request, then write
        all their replies at once. Past OUT_HIGH bytes of replies it stops, writes them, and
        reads no more from this client until they are out (one that does not read its replies
        cannot make the server buffer without bound)."""
        buf = self.inbuf
        if buf or not self.authed:
            buf += data
            data = buf
            if not self.authed and not self._authenticate():
                return
        n = len(data)
        pos = 0
        handle = self.server.handle
        max_frame = self.server.max_frame
        out = self.out
        count, size = len(out), self.backlog
        while n - pos >= 8:
            length, rid = HEADER.unpack_from(data, pos)
            if length > max_frame:
                log.warning("closing %r: a frame of %d bytes is over the limit of %d",
                            self, length, max_frame)
                self.close()
                return
            end = pos + 8 + length
            if end > n:
                break
            handle(self, rid, data[pos + 8:end])
            pos = end
            if self.closed:
                return
            if len(out) != count:
                count = len(out)
                size += len(out[-1])
                if size > OUT_HIGH:
                    self.paused = True
                    break
        if data is buf:
            del buf[:pos]
        elif pos < n:
            buf += data[pos:]
        if self.paused:
            self.pause()
            return
        if self.server.held:
            # Writes wait for the journal: every reply of this turn goes out after one commit
            # at its end (group commit), so none shows a write that is not yet on disk.
            self.mark_dirty()
        elif self.out:
            self.flush()

    def pause(self) -> None:
        """Its replies are over the limit: write them, and run no more of its requests until
        they are out."""
        self.paused = True
        self.flush()
        if self.closed:
            return
        if not self.pending:              # all written at once: go on
            self.paused = False
            if len(self.inbuf) >= 8:
                self._run(b"")
        else:
            self._want(WRITE)

    def put_back(self, frames: list[bytes]) -> None:
        """Requests to run before any it sent after them (held back while it is paused)."""
        self.inbuf[:0] = b"".join(frames)

    def _authenticate(self) -> bool:
        buf = self.inbuf
        if len(buf) < P.PROOF_SIZE:
            return False
        answer = P.check_client(self.server.authkey, self.nonce, bytes(buf[:P.PROOF_SIZE]),
                                self.server.instance)
        self.timer.cancel()
        if answer is None:
            log.warning("refused a client: wrong authkey")
            try:
                self.sock.send(P.FAIL)
            except OSError:
                pass
            self.close()
            return False
        del buf[:P.PROOF_SIZE]
        self.authed = True
        self.out.append(answer)
        self.mark_dirty()
        return True

    # -- output ------------------------------------------------------------------------------

    def mark_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.server.dirty.append(self)

    def reply(self, rid: int, value: Any) -> None:
        """The reply to a request that was parked (or ran elsewhere)."""
        if self.closed or not rid:
            return
        try:
            body = self.encode([P.REPLY_OK, value])
        except Exception as e:
            body = self.encode_error(e)
        self._send_late(rid, HEADER.pack(len(body), rid) + body)

    def _send_late(self, rid: int, frame: bytes, after_journal: bool = True) -> None:
        """Queue a reply that comes later than its request; while the journal has records not
        yet committed it waits for them (a put that a get let in, a waiter woken by a write:
        what it tells of may not be on disk yet)."""
        server = self.server
        if after_journal and server.store is not None and server.store.buffer:
            server.held.append((self, rid, frame, True))
        else:
            self.out.append(frame)
            self.mark_dirty()

    def reply_error(self, rid: int, e: BaseException, custom: bool = False,
                    parked: bool = True) -> None:
        """The error reply to a request that was parked (or ran elsewhere; ``parked=False``:
        one whose reply was held for a journal commit)."""
        if self.closed or not rid:
            return
        body = self.encode_error(e, custom)
        # (not parked: the commit it waited for failed, and this says so now)
        self._send_late(rid, HEADER.pack(len(body), rid) + body, after_journal=parked)

    def encode_error(self, e: BaseException, custom: bool = False) -> bytes:
        encode = self.encode
        if custom:
            try:
                return encode([P.REPLY_PICKLED_ERROR, pickle.dumps(e)])
            except Exception:
                pass
        name = _builtin_exception(e) or "RemoteError"
        try:
            text = str(e) or (type(e).__doc__ or "").strip().partition("\n")[0]
            message = text if name == "RemoteError" and isinstance(e, RemoteError) \
                else f"{type(e).__name__}: {text}"
        except Exception:        # an error whose text cannot be made (a 5,000-digit key ...)
            message = f"{type(e).__name__} (its message could not be formatted)"
        for args in (list(e.args), [message]):
            try:
                return encode([P.REPLY_ERROR, [name, args, message]])
            except Exception:
                continue
        return encode([P.REPLY_ERROR, ["RemoteError", [], type(e).__name__]])

    def flush(self) -> None:
        """Write what waits, without copying a large backlog: a few buffers per call (sendmsg,
        or one joined chunk under TLS), until the socket is full or nothing is left."""
        parts: list[Any] = self.pending + self.out if self.pending else self.out
        if not parts or self.closed:
            return
        self.out = []
        tls = self.server.tls is not None
        while parts:
            take = total = 0
            for part in parts:
                take += 1
                total += len(part)
                if total >= _SEND_CHUNK or take == _IOV_MAX:
                    break
            try:
                if take == 1:
                    sent = self.sock.send(parts[0])
                elif tls:   # the same leading bytes again after a refused write: TLS needs that
                    sent = self.sock.send(b"".join(parts[:take]))
                else:
                    sent = self.sock.sendmsg(parts[:take])
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                sent = 0
            except OSError:
                self.close()
                return
            if sent == total:
                del parts[:take]
                continue
            done = 0
            while sent >= len(parts[done]):
                sent -= len(parts[done])
                done += 1
            if sent:
                parts[done] = memoryview(parts[done])[sent:]
            del parts[:done]
            break
        self.pending = parts
        if parts:
            self.backlog = sum(map(len, parts))
            # Stop reading from a client that does not read its replies.
            want = WRITE if self.paused or self.backlog > OUT_HIGH else READ | WRITE
        else:
            self.backlog = 0
            want = READ
        self._want(want)

    def let_go(self, clean: bool | None = None) -> None:
        """Give back everything this closed connection holds or waits on (as after an end
        that was ``clean``, by default its own)."""
        involved, self.involved = list(self.involved), weakref.WeakSet()
        for obj in involved:
            obj.client_gone(self, self.clean if clean is None else clean)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.cancel()
        self.server.loop.remove(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.dropped(self)
        self.let_go()
        self.handles.clear()
        self.inbuf.clear()
        self.out.clear()
        self.pending, self.backlog = [], 0


class _MetAgain(Exception):
    """A shared container met twice while expanding a copy."""


class PlainCodec(Codec):
    """The server's codec for ``copy()`` replies: a shared dict or list goes as its contents;
    other shared objects go as references (counted, and listed in ``counted``)."""

    counted: list[Shared]        # set by Conn.encode_plain before each use
    expanded: set[int]           # the ids of the containers expanded so far

    def _default(self, obj: Any) -> Any:
        t = type(obj)
        if t is SDict or t is SList:
            if obj.oid in self.expanded:
                raise _MetAgain
            self.expanded.add(obj.oid)
            return obj.data
        ref = super()._default(obj)
        if isinstance(obj, Shared):
            self.counted.append(obj)
        return ref
