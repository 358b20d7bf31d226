"""The client side of a connection: one per server address per process, shared by all threads.

Several calls may be in flight at once. The thread that finds nobody reading becomes the reader:
it reads frames until its own reply comes and hands the others theirs, so a lone thread gets its
reply with no hand-off between threads, and a thread blocked in a long call (a lock's acquire)
does not stop the others.

References: the server counts, per connection, how many times it sent each object; the client
counts the same receipts and, when its last proxy of an object dies, sends ``release(id, count)``.
Because both counts are taken in order on one stream, a release can never drop a reference that
is still in flight. Proxies' finalizers only queue the release, and it waits one call more: it
goes out with the second call after the drop unless a proxy of the same object was made again
in between. So the usual ``d['row'].incr(k)`` in a loop, which makes and drops a proxy of the
same nested object each time, costs no release at all; an object whose last proxy here was
dropped stays in the server until this process's next two calls or its exit.
"""

from __future__ import annotations

import collections
import itertools
import os
import pickle
import socket
import ssl
import threading
import time
import weakref
from _thread import allocate_lock as _allocate_lock
from multiprocessing import process, util
from collections.abc import Callable
from typing import Any

from . import _protocol as P
from ._codec import Codec
from ._errors import WIRE_EXCEPTIONS, ConnectionLost, ProtocolError, RemoteError
from ._transport import Address, connect, handshake

__all__ = ["Connection", "get_connection", "proxy_types"]

HEADER = P.HEADER
_NOTE_RID = 0
#: ``call_may_wait(undo=FINISH)``: an interrupted wait is ended by the server, and its reply
#: waited for, before the exception goes on (Condition.wait, which takes its lock back).
FINISH = object()
_GOODBYE_WAIT = 2.0     # seconds an ending process waits for the server to take its goodbye
_LOOK_AGAIN = 0.1       # seconds a thread waiting for the reader role waits without looking
_NONE_BODY = Codec().encode([P.REPLY_OK, None])
_NONE = (P.REPLY_OK, None)
# Runs an iterator to its end inside C. ``_consume(map(store, map(read, ...)))`` reads and
# stores with no step of Python code between: Python runs a signal handler only between such
# steps, so its exception cannot drop what was read (see ``Connection._fill``).
_consume: Callable[[Any], None] = collections.deque(maxlen=0).extend

# typeid -> proxy class, filled by the proxies module and by managers' register().
proxy_types: dict[str, Any] = {}     # typeid -> proxy class (with ``_from_ref``)
# Called as factory(connection, oid, typeid) for a typeid nobody registered.
default_proxy_factory: list[Callable[..., Any]] = []


class Connection:
    """A connection to one server, shared by every proxy of this process."""

    def __init__(self, address: Address, authkey: bytes, serializer: str = "pickle",
                 tls: Any = None) -> None:
        self.address = address
        self.serializer = serializer
        # What a proxy pickled into another process takes along to reconnect the same way.
        self.tls = tls if tls is None or isinstance(tls, (bool, str)) else True
        self.authkey = bytes(authkey)
        # What each proxy of this connection keeps (set in one step: proxies are made often).
        self.proxy_attrs = {"_conn": self, "_address": address, "_serializer": serializer,
                            "_authkey": process.AuthenticationString(authkey)}  # type: ignore[attr-defined]
        self.stale = False
        self.closed = False
        self.pid = os.getpid()
        sock = connect(address, tls=tls)
        try:
            self.instance = handshake(sock, self.authkey)   # the id of the server's objects
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self.proxy_attrs["_instance"] = self.instance
        self.sock = sock
        self.proxy_types = proxy_types   # a manager may give its own mapping
        # serializer="xmlrpclib" (multiprocessing's other choice): built-in values only, tuples
        # arrive as lists, as xmlrpc gives them.
        builtin_only = serializer == "xmlrpclib"
        self._codec = Codec(ref_of=self._ref_of, make_ref=self._make_proxy,
                            from_opaque=pickle.loads, pickle_unknown=not builtin_only,
                            tuples_as_lists=builtin_only)
        self.ids = itertools.count(1)
        self._send_lock = threading.Lock()
        # Guards the tables below; threads waiting for a reply or the reader role sleep on
        # it (_sleep, _wake). Not a threading.Condition: its __enter__ and wait are Python code,
        # and a signal handler's exception raised inside them could leave the lock held, or
        # released under a ``with`` block that then released it again.
        self._mutex = threading.Lock()
        self._sleepers: list[Any] = []         # a lock per sleeping thread, released to wake it
        # Held by the thread reading replies. Re-entrant only to know its owner: a call
        # that finds its own thread holding it gives it back (_check_role).
        self._read_lock = threading.RLock()
        self._waiting = 0                      # threads waiting for a reply or the role
        self._reading = False                  # its holder is inside a read (see _check_role)
        self._replies: dict[int, bytes] = {}
        # requests whose caller gave up waiting -> what undoes them if they ran (call_may_wait)
        self._abandoned: dict[int, tuple[int, Callable[[Any], Any]]] = {}
        self._cancels: dict[int, int] = {}    # a cancel's request id -> the one it cancels
        # replies of abandoned requests, read and waiting for a thread to settle them
        self._unsettled: list[tuple[bytes, int, Callable[[Any], Any]]] = []
        # a write an exception cut short: (its bytes, what went out), finished before the next
        self._unsent: tuple[bytes, list[int]] | None = None
        self._rbuf = bytearray()
        self._refs: dict[int, list[int]] = {}   # oid -> [live proxies, receipts]
        self._refs_lock = threading.Lock()
        self._dead: collections.deque[int] = collections.deque()
        self._dying: dict[int, int] = {}  # oid -> receipts when its last proxy here died
        self._release_all = False
        self._notes: list[list[Any]] = []        # notifications to send before the next request
        self.owned: dict[tuple[int, int], int] = {}  # (lock id, thread): acquisitions it holds
        self.puts_cannot_fail: dict[int, bool] = {}  # queue id: sent without waiting?
        self.notify(0, "hello", [os.getpid(), socket.gethostname()])
        self._say_goodbye_at_exit()
        # A multiprocessing child unpickles its arguments (making this connection), then clears
        # its finalizers and runs the after-fork hooks: register again there.
        util.register_after_fork(self, Connection._say_goodbye_at_exit)

    def _say_goodbye_at_exit(self) -> None:
        # At a normal exit (also of a multiprocessing child, which skips atexit) tell the server,
        # so that what this process still holds is handed on rather than released as a crash's.
        if self.pid == os.getpid():
            util.Finalize(self, Connection._goodbye, args=(weakref.ref(self),), exitpriority=-1)

    @staticmethod
    def _goodbye(ref: weakref.ref[Connection]) -> None:
        self = ref()
        if self is None or self.closed or self.pid != os.getpid():
            return
        # Wait (at most _GOODBYE_WAIT) for the server's answer: then everything this process
        # sent has been applied, calls sent without waiting included, so a process that joins
        # this one sees all of its writes and puts. Another thread may be stuck in a call that
        # holds the sending or the reading role: every wait here is bounded.
        deadline = time.monotonic() + _GOODBYE_WAIT
        try:
            if not self._send_lock.acquire(timeout=_GOODBYE_WAIT):
                return
            try:
                rid = next(self.ids) & 0xFFFFFFFF or next(self.ids)
                self.sock.settimeout(_GOODBYE_WAIT)
                if self._unsent is not None:     # the rest of a write cut short goes first
                    self._finish_unsent()
                notes, _ = self._collect_notes()
                self.sock.sendall(notes + self._frame(rid, [0, "goodbye", []]))
            finally:
                self._send_lock.release()
            self._wait(rid, deadline)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<shoal connection to {self.address!r}>"

    # -- references --------------------------------------------------------------------------

    def _ref_of(self, obj: Any) -> tuple[int, str] | None:
        token = getattr(obj, "_shoal_ref", None)
        if token is not None and getattr(obj, "_address", None) == self.address:
            return token()  # type: ignore[no-any-return]
        return None

    def _make_proxy(self, oid: int, typeid: str) -> Any:
        """A proxy for a reference just received: counts the receipt and the live proxy."""
        with self._refs_lock:
            entry = self._refs.get(oid)
            if entry is None:
                self._refs[oid] = [1, 1]
            else:
                entry[0] += 1
                entry[1] += 1
        try:
            cls = self.proxy_types.get(typeid)
            if cls is None:
                return default_proxy_factory[0](self, oid, typeid)
            return cls._from_ref(self, oid, typeid)
        except BaseException:
            self._dead.append(oid)       # no proxy after all; the receipt is released later
            raise

    def track(self, oid: int, hold: bool) -> None:
        """A proxy of ``oid`` was made here; ``hold`` asks the server to keep it for us, unless
        it does already (a pool worker unpickles the same proxies for every task)."""
        with self._refs_lock:
            entry = self._refs.get(oid)
            if entry is None:
                entry = self._refs[oid] = [0, 0]
            entry[0] += 1
            if hold and not entry[1]:
                entry[1] = 1
                self._notes.append([0, "hold", [oid]])

    def untrack(self, oid: int) -> None:
        """Called from a proxy's finalizer: only queue (finalizers run at any moment)."""
        self._dead.append(oid)

    def release_dropped(self) -> None:
        """Let the next call release every object whose proxies here are all gone, without the
        usual wait of one call (for counting the server's objects)."""
        self._release_all = True

    def _collect_notes(self) -> tuple[bytes, int]:
        """Queued notifications, with the releases that are due, and how many: they stay
        queued until they are sent (``_send_all`` takes them off). Holds the send lock."""
        # Held a moment by another thread (or below us): next time. (Not acquire(False), then
        # try: an exception raised between the two, a signal handler's, left it held for good.)
        lock = self._refs_lock
        if lock.locked():
            return b"", 0
        with lock:
            dead, refs, notes = self._dead, self._refs, self._notes
            due, dying = self._dying, {}
            while dead:
                oid = dead.popleft()
                entry = refs.get(oid)
                if entry is not None:
                    entry[0] -= 1
                    if entry[0] <= 0:
                        dying[oid] = entry[1]
            if self._release_all:
                self._release_all = False
                due.update(dying)
                dying = {}
            self._dying = dying
            for oid, receipts in due.items():
                entry = refs.get(oid)
                # Released only if no proxy was made and no reference arrived since the drop.
                if entry is not None and entry[0] <= 0 and entry[1] == receipts \
                        and oid not in dying:
                    del refs[oid]
                    if receipts:
                        notes.append([0, "release", [oid, receipts]])
            if not notes:
                return b"", 0
            return b"".join([self._frame(_NOTE_RID, msg) for msg in notes]), len(notes)

    # -- calls -------------------------------------------------------------------------------

    def _frame(self, rid: int, msg: list[Any]) -> bytes:
        body = self._codec.encode(msg)
        return HEADER.pack(len(body), rid) + body

    def _write(self, data: bytes) -> None:
        """Send ``data`` after the queued notes and the releases due. Holds the send lock."""
        if self._unsent is not None:
            self._finish_unsent()
        notes = 0
        if self._notes or self._dead or self._dying:
            collected, notes = self._collect_notes()
            data = collected + data
        self._send_all(data, notes)

    def _send_all(self, data: bytes, notes: int = 0) -> None:
        """``sendall``, but a write once begun goes out whole. ``sendall`` raises a signal
        handler's exception between two partial sends, and the server would then read the
        next request as the rest of this one. Here what each send took is counted inside C
        (``_consume``). After such an exception the rest is kept in ``_unsent`` at once, with
        no call between, and sent before the exception goes on; should another exception
        stop that, the next write sends it first. (Under TLS ``sendall`` as it is: the ssl
        module's send runs Python code of its own.) The first ``notes`` queued notes are in
        ``data``: they leave the queue once it has gone out, so an exception before any of it
        went out leaves them for the next write."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.sendall(data)
            except OSError as e:
                self._broken(e)
            del self._notes[:notes]
            return
        counts: list[int] = []
        try:
            counts.extend(map(sock.send, (data,)))
            if counts[0] != len(data):
                self._send_rest(data, counts)
        except OSError as e:
            self._broken(e)
        except BaseException:
            del self._notes[:notes]          # (no call since the exception: they go out)
            self._unsent = (data, counts)
            self._finish_unsent()
            raise
        del self._notes[:notes]

    def _send_rest(self, data: bytes, counts: list[int]) -> None:
        view, send, total = memoryview(data), self.sock.send, len(data)
        while (done := sum(counts)) < total:
            counts.extend(map(send, (view[done:],)))

    def _finish_unsent(self) -> None:
        assert self._unsent is not None
        data, counts = self._unsent
        try:
            self._send_rest(data, counts)
        except OSError as e:
            self._broken(e)
        self._unsent = None

    def send(self, oid: int, name: str, args: list[Any]) -> None:
        """Send a call now whose reply nobody waits for (the server sends none). It runs before
        any later call of this process, like any call; an error in it is not reported, so it is
        for calls that cannot fail."""
        if self.closed:
            raise ConnectionLost(f"the connection to the shoal server at {self.address!r} is closed")
        with self._send_lock:
            self._write(self._frame(_NOTE_RID, [oid, name, args]))

    def notify(self, oid: int, name: str, args: list[Any]) -> None:
        """Queue a call whose result nobody waits for; it goes out before the next call."""
        with self._send_lock:
            self._notes.append([oid, name, args])

    def _request(self, oid: int, name: str, args: Any, kwargs: dict[str, Any] | None,
                 sent: list[int] | None = None, rid: int = 0) -> int:
        """Send a call; its request id (``rid`` if given). With ``sent``, ``[0]``: the id is put
        in it just before the request may go out (an exception can come between any two steps,
        and ``sendall`` raises a signal handler's after sending: see ``call_may_wait``)."""
        if self._read_lock._is_owned():       # type: ignore[attr-defined]
            self._check_role()
        if self.closed:
            raise ConnectionLost(f"the connection to the shoal server at {self.address!r} is closed")
        if self._unsettled:                   # (left by an exception that stopped their thread)
            self._settle_later()
        if not rid:
            rid = next(self.ids) & 0xFFFFFFFF or next(self.ids)
        msg = [oid, name, args if type(args) is list else list(args)]
        if kwargs:
            msg.append(kwargs)
        with self._send_lock:
            body = self._codec.encode(msg)
            if len(body) > P.MAX_FRAME:
                raise ValueError(f"this call's arguments encode to {len(body)} bytes, over the "
                                 f"limit of {P.MAX_FRAME} bytes per call; split the value")
            if sent is not None:
                sent[0] = rid
            self._write(HEADER.pack(len(body), rid) + body)
        return rid

    def call_may_wait(self, oid: int, name: str, args: Any, undo: Any) -> Any:
        """``call`` for a request that may wait in the server (an acquire, a get). When an
        exception interrupts the wait (Ctrl-C, a signal handler's), the server is asked to drop
        the request; if it ran all the same, ``undo(result)`` names a call sent without waiting
        that gives back what it got (a release, the item). ``undo=FINISH`` (a Condition's
        wait): the server ends the wait instead, and the exception goes on once its reply
        came (the lock is held again then, as after threading's)."""
        # An exception raised by a signal handler can come at any step, the request already
        # out (``sendall`` runs handlers after sending) or its reply already read: ``sent``
        # and ``box`` say how far the call got, so that nothing it took is lost.
        sent, box = [0], [None]
        try:
            rid = self._request(oid, name, args, None, sent)
            body = self._reply_body(rid, box)
        except BaseException:
            # The first step of each case stores what must not be lost with no call before it
            # (a call can raise a further exception as it begins).
            if box[0] is not None:          # its reply came: given back if it took something
                if undo is not FINISH:
                    self._unsettled.append((box[0], oid, undo))
                    self._settle_later()
            elif sent[0]:                   # it may have gone out: cancelled, or undone
                if undo is FINISH:
                    self._finish(sent[0])
                else:
                    self._abandoned[sent[0]] = (oid, undo)
                    self._abandon(sent[0], oid, undo)
            raise
        try:
            status, value = self._codec.decode(body)    # (unpickles: may take a while)
        except BaseException:
            # Interrupted while the reply was decoded: what the call got is given back, as
            # for a reply that came after its caller gave up.
            if undo is not FINISH:
                self._unsettled.append((body, oid, undo))
                self._settle_later()
            raise
        if status == P.REPLY_OK:
            return value
        self.raise_reply(status, value)

    def _check_role(self) -> None:
        """This thread, starting a call, holds the reader role. Either a call of this thread is
        reading below this one (a signal handler or a finalizer made this call in the middle
        of it): its reply would come after the one the reader waits for, so it cannot be
        answered. Or an exception raised between taking the role and giving it back (a signal
        handler's, which Python runs between any two steps) left it held, and every later call
        would wait for it forever: give it back. (No call is made while reading otherwise:
        decoding, which can call, happens after the role is left.)"""
        if self._reading:
            raise RuntimeError("a shoal call was made while this thread waits for the reply "
                               "of another (from a signal handler or a finalizer); it cannot "
                               "be answered before that one: make it after")
        self._read_lock._release_save()       # type: ignore[attr-defined]  # every level
        if self._waiting:
            with self._mutex:
                self._wake()

    def _reply_body(self, rid: int, box: list[Any] | None = None) -> bytes:
        """The reply to ``rid``; with ``box``, also put in ``box[0]`` as soon as it is had."""
        if self._read_lock.acquire(False):
            return self._read_until(rid, box)
        return self._wait(rid, box=box)

    def _finish(self, rid: int) -> None:
        """End an interrupted wait and wait for its reply, if its request arrived at all."""
        if self.closed:
            return
        try:
            waits = self.call(0, "cancel", [rid])
            with self._mutex:                 # a reply that came before the cancel's is here
                body = self._replies.pop(rid, None)
            if body is None and waits:
                self._reply_body(rid)
        except Exception:
            pass

    def _abandon(self, rid: int, oid: int, undo: Callable[[Any], Any]) -> None:
        """Give up request ``rid`` without waiting (the server may not answer soon): it is
        cancelled, or undone when its reply comes. The cancel's own reply, read by whoever
        reads next, comes after any of the request's: it forgets a request that never
        arrived."""
        if self.closed:
            return                           # the server drops what a gone client waited for
        with self._mutex:
            body = self._replies.pop(rid, None)
            if body is None:
                self._abandoned[rid] = (oid, undo)
            else:                            # (its caller may have put it there already)
                self._abandoned.pop(rid, None)
        if body is not None:                 # it ran: its reply came meanwhile
            self._settle(body, oid, undo)
            return
        crid, sent = self.next_rid(), [0]
        with self._mutex:
            self._cancels[crid] = rid
        try:
            self._request(0, "cancel", [rid], None, sent, crid)
        except BaseException as e:
            if not sent[0]:                  # (no reply will come for it)
                with self._mutex:
                    self._cancels.pop(crid, None)
            if not isinstance(e, Exception):
                raise

    def _settle_later(self) -> None:
        """Settle, in a thread of its own, every reply waiting in ``_unsettled`` (decoding may
        need a call, or take a while; and the thread runs no signal handler: nothing there is
        lost to one). What must be settled is put there first, with no call before it."""
        threading.Thread(target=self._settle_all, daemon=True, name="shoal-undo").start()

    def _settle_all(self) -> None:
        unsettled = self._unsettled
        while unsettled:
            try:
                body, oid, undo = unsettled.pop()
            except IndexError:
                return
            self._settle(body, oid, undo)

    def _settle(self, body: bytes, oid: int, undo: Callable[[Any], Any]) -> None:
        """The reply to a request whose caller gave up: undo what it did, if it ran."""
        try:
            status, value = self._codec.decode(body)
            then = undo(value) if status == P.REPLY_OK else None
            if then is not None:
                self.send(oid, *then)
        except Exception:
            pass

    def _file(self, rid: int, end: int) -> None:
        """The reader read another thread's reply, the buffer's first frame (up to ``end``):
        hand it over, or settle an abandoned one in a thread of its own (decoding it may need
        a call, which this reader could not make: an AutoProxy asks for its methods; and the
        reader may wait long for its own reply). The frame leaves the buffer with no call
        between that and its store (see ``_next_frame``)."""
        buf = self._rbuf
        with self._mutex:
            body = bytes(buf[8:end])
            if self._cancels and rid in self._cancels:   # a cancel's: the request it gave
                gave_up = self._cancels[rid]             # up is settled by now
                del buf[:end]
                del self._cancels[rid]
                self._abandoned.pop(gave_up, None)
                return
            if not self._abandoned or rid not in self._abandoned:
                del buf[:end]
                self._replies[rid] = body
                self._wake()
                return
            oid, undo = self._abandoned[rid]
            del buf[:end]
            del self._abandoned[rid]
            self._unsettled.append((body, oid, undo))
        self._settle_later()

    def call(self, oid: int, name: str, args: Any = (), kwargs: dict[str, Any] | None = None) -> Any:
        """Call ``name`` on object ``oid`` in the server; return its result or raise its error.
        Interrupted by an exception (a signal handler's) once its request may have gone out,
        the call is given up as ``call_may_wait`` gives up one: cancelled if it waits in the
        server, its reply dropped when it comes."""
        sent: list[int] = [0]
        box: list[Any] = [None]
        try:
            rid = self._request(oid, name, args, kwargs, sent)
            if self._read_lock.acquire(False):
                buf = self._rbuf
                # Fast path: nobody else is reading, and the usual next chunk is exactly our
                # reply.
                if not buf and not self._replies:
                    self._reading = True
                    try:
                        self._fill(65536)
                    except BaseException:
                        self._reading = False
                        self._read_lock.release()
                        if self._waiting:        # one of them takes the role
                            with self._mutex:
                                self._wake()
                        raise
                    self._reading = False
                    if len(buf) >= 8:
                        length, got = HEADER.unpack_from(buf)
                        if got == rid and len(buf) == 8 + length:
                            body = bytes(buf[8:])
                            del buf[:]                  # (no call between: see _read_until)
                            box[0] = body
                            self._read_lock.release()
                            if self._waiting:
                                with self._mutex:
                                    self._wake()
                if box[0] is None:
                    body = self._read_until(rid, box)
            else:
                body = self._wait(rid, box=box)
        except BaseException:                 # (as in call_may_wait)
            if box[0] is not None:
                self._unsettled.append((box[0], oid, _drop))
                self._settle_later()
            elif sent[0]:
                self._abandoned[sent[0]] = (oid, _drop)
                self._abandon(sent[0], oid, _drop)
            raise
        status, value = self._codec.decode(body)
        if status == 0:
            return value
        return self._decode_reply(body)

    def new_codec(self, keep: Callable[[Any], None] | None = None) -> Codec:
        """A codec of this connection's kind, for a caller that encodes on its own (pipelines).
        ``keep(proxy)`` is called for each proxy it encodes: what it encodes is sent later, and
        the proxy must live until then (its release could otherwise go out first)."""
        builtin_only = self.serializer == "xmlrpclib"
        ref_of = self._ref_of
        if keep is not None:
            def ref_of(obj: Any) -> tuple[int, str] | None:
                ref = self._ref_of(obj)
                if ref is not None:
                    keep(obj)
                return ref
        return Codec(ref_of=ref_of, make_ref=self._make_proxy, from_opaque=pickle.loads,
                     pickle_unknown=not builtin_only, tuples_as_lists=builtin_only)

    def next_rid(self) -> int:
        return next(self.ids) & 0xFFFFFFFF or next(self.ids)

    def send_frames(self, data: bytes) -> None:
        """Send already encoded request frames; their replies are collected with ``results``."""
        if self.closed:
            raise ConnectionLost(f"the connection to the shoal server at {self.address!r} is closed")
        with self._send_lock:
            self._write(data)

    def results(self, rids: list[int], out: list[Any], start: int, upto: int) -> None:
        """Take the replies to ``rids[start:upto]`` (sent with ``send_frames``) into ``out``,
        a list as long as ``rids``: ``out[i]`` gets the reply to ``rids[i]`` as it came
        (``result`` makes it (status, value)). Slots already filled (not None) were taken
        before: it goes on from the first empty one. Each reply is stored there in the same steps as it
        leaves the connection, so an exception (a signal handler's) that interrupts this
        leaves in ``out`` all that was taken, and a later call goes on from there."""
        if self._read_lock._is_owned():       # type: ignore[attr-defined]
            self._check_role()
        n = upto
        i = start
        while i < n and out[i] is not None:
            i += 1
        if i == n:
            return
        if not self._read_lock.acquire(False):
            while i < n:
                self._wait(rids[i], box=out, at=i)
                i += 1
            return
        # (Decoding, by ``result``, is left to the caller once the reader role is left: a
        # reference can make a call of its own, an AutoProxy asks for its methods.)
        replies = self._replies
        try:
            self._reading = True
            while i < n:
                if not replies and self._take_frames(rids, out, i, n):
                    while i < n and out[i] is not None:
                        i += 1
                    continue                 # the bulk path took what had arrived
                rid = rids[i]
                if self._take_reply(rid, out, i) is None:
                    buf = self._rbuf
                    while True:
                        got, end = self._next_frame()
                        if got == rid:
                            body = bytes(buf[8:end])
                            out[i] = body    # (no call between these two)
                            del buf[:end]
                            break
                        self._file(got, end)
                i += 1
        finally:
            self._reading = False
            self._read_lock.release()
            if self._waiting:
                with self._mutex:
                    self._wake()

    def drop_reply(self, rid: int) -> None:
        """Nobody will collect the reply to ``rid`` (a pipeline's interrupted end): drop it
        when it comes (decoded first, to let go of what it refers to)."""
        with self._mutex:
            body = self._replies.get(rid)
            if body is None:
                self._abandoned[rid] = (0, _drop)
            else:
                self._unsettled.append((body, 0, _drop))
                del self._replies[rid]
        if self._unsettled:
            self._settle_later()

    def result(self, body: Any) -> tuple[int, Any]:
        """A reply ``results`` took, as (status, value): status 0 is a value, anything else an
        error to raise with ``raise_reply``."""
        if body is _NONE or body == _NONE_BODY:
            return _NONE
        return self._codec.decode(body)  # type: ignore[no-any-return]

    def _take_frames(self, rids: list[int], out: list[Any], i: int, n: int) -> bool:
        """Pipelines' bulk path, holding the reader role: read a chunk and take every whole
        frame at the buffer's start that answers the next of ``rids[i:n]``, into
        ``out`` (the bodies, or ``_NONE``). Each leaves the buffer in the same steps as it is
        stored (a slice stored, a deletion at the front: no call). False when none did."""
        buf = self._rbuf
        if len(buf) < 8 + len(_NONE_BODY):
            self._fill(262144)
        unpack, none, none_len = HEADER.unpack_from, _NONE_BODY, len(_NONE_BODY)
        took = False
        while i < n and len(buf) >= 8:
            length, got = unpack(buf)
            end = 8 + length
            if got != rids[i] or end > len(buf):
                break                        # someone else's reply, or not all here yet
            if length == none_len and buf.startswith(none, 8):
                out[i] = _NONE
            else:
                out[i] = buf[8:end]
            del buf[:end]
            i += 1
            took = True
        return took

    def raise_reply(self, status: int, value: Any) -> None:
        exc = pickle.loads(value) if status == P.REPLY_PICKLED_ERROR else _rebuild_error(*value)
        try:
            raise exc
        finally:
            del exc, value

    def _read_until(self, rid: int, box: list[Any] | None = None, at: int = 0) -> bytes:
        """Holding the reader role: read frames, hand others theirs, until ours comes (and,
        with ``box``, put it in ``box[0]`` at once: see ``call_may_wait``)."""
        try:
            self._reading = True
            body = self._take_reply(rid, box, at)
            buf = self._rbuf
            while body is None:
                got, end = self._next_frame()
                if got == rid:
                    data = bytes(buf[8:end])
                    # No call from here to the store: a signal handler's exception cannot
                    # come between taking the frame out of the buffer and putting it in box.
                    del buf[:end]
                    if box is not None:
                        box[at] = data
                    body = data
                else:
                    self._file(got, end)
            return body
        finally:
            self._reading = False
            self._read_lock.release()
            if self._waiting:      # someone may need to take the reader role now
                with self._mutex:
                    self._wake()

    def _take_reply(self, rid: int, box: list[Any] | None, at: int = 0) -> bytes | None:
        """The reply to ``rid`` if it was read already, taken from ``_replies`` (and put in
        ``box[at]`` before it leaves there: no step between can lose it)."""
        body = self._replies.get(rid)
        if body is not None:
            if box is not None:
                box[at] = body
            del self._replies[rid]
        return body

    def _wait(self, rid: int, deadline: float | None = None,
              box: list[Any] | None = None, at: int = 0) -> bytes:
        """Another thread is reading: wait for it to hand us our reply, or to leave the role
        (until ``deadline``, a ``time.monotonic()`` time, if given: then TimeoutError)."""
        with self._mutex:
            while True:
                body = self._take_reply(rid, box, at)
                if body is not None:
                    return body
                if self.closed:
                    raise ConnectionLost(f"the shoal server at {self.address!r} went away")
                # Count ourselves before trying the role, so a reader that leaves it after our
                # try sees us and wakes us.
                self._waiting += 1
                if self._read_lock.acquire(False):
                    self._waiting -= 1
                    break
                try:
                    # Woken when the reader leaves the role or hands over a reply; and looks
                    # again now and then all the same (an exception in the reader can come
                    # between its leaving and its waking us).
                    if deadline is None:
                        self._sleep(_LOOK_AGAIN)
                    else:
                        self._sleep(min(deadline - time.monotonic(), _LOOK_AGAIN))
                        if time.monotonic() >= deadline:
                            raise TimeoutError("no reply from the shoal server in time")
                finally:
                    self._waiting -= 1
        return self._read_until(rid, box, at)

    def _sleep(self, timeout: float) -> None:
        """Holding ``_mutex``: let it go and sleep until ``_wake`` or ``timeout``; it is held
        again on return, whatever exception comes (it is taken back in a ``finally`` by the C
        call itself, not by Python code that could be stopped before it)."""
        me = _allocate_lock()
        me.acquire()
        self._sleepers.append(me)
        try:
            self._mutex.release()
            if timeout > 0:
                me.acquire(True, timeout)
        finally:
            self._mutex.acquire()
        try:
            self._sleepers.remove(me)
        except ValueError:
            pass                             # (woken: _wake took it off)

    def _wake(self) -> None:
        """Holding ``_mutex``: wake every sleeping thread (one stopped half-way by an exception
        looks again within _LOOK_AGAIN all the same)."""
        sleepers, self._sleepers = self._sleepers, []
        for me in sleepers:
            me.release()

    def _next_frame(self) -> tuple[int, int]:
        """Read until the read buffer starts with a whole frame: its request id and where it
        ends. It stays in the buffer; whoever takes it deletes it there in the same run of
        steps as they store it, with no call between (nothing can then drop it)."""
        buf = self._rbuf
        while True:
            have = len(buf)
            if have >= 8:
                length, rid = HEADER.unpack_from(buf)
                if length > P.MAX_FRAME:
                    self._broken(ProtocolError(f"the server sent a frame of {length} bytes"))
                if have >= 8 + length:
                    return rid, 8 + length
                want = max(8 + length - have, 65536)
            else:
                want = 65536
            self._fill(want)

    def _fill(self, want: int) -> None:
        """Read what has come, up to ``want`` bytes, onto the read buffer (at least one byte,
        or the connection is lost). The bytes go from the socket into the buffer inside C.
        Python runs a signal handler's exception between two steps of Python code, so with
        ``chunk = sock.recv(n)`` it could come after the read and before the store, and the
        chunk (a reply: a Queue's item, a lock's grant, another thread's) would be gone.
        (Under TLS the ssl module reads with Python code of its own, and that can still
        happen there.)"""
        buf = self._rbuf
        have = len(buf)
        try:
            _consume(map(buf.__iadd__, map(self.sock.recv, (want,))))
        except OSError as e:
            self._broken(e)
        if len(buf) == have:
            self._broken(None)

    def _shut(self) -> None:
        """Close, and wake every thread waiting for a reply (it will not come)."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self._mutex:
            self._wake()

    def _broken(self, cause: BaseException | None) -> Any:
        self._shut()
        try:
            raise ConnectionLost(
                f"lost the connection to the shoal server at {self.address!r}"
                + (f": {cause}" if cause else " (the server closed it)")
            ) from cause
        finally:
            del cause

    def _decode_reply(self, body: bytes) -> Any:
        status, value = self._codec.decode(body)
        if status == P.REPLY_OK:
            return value
        exc = pickle.loads(value) if status == P.REPLY_PICKLED_ERROR else _rebuild_error(*value)
        try:
            raise exc
        finally:
            # Break the cycle frame -> exc -> traceback -> frame, which would keep every proxy
            # on the stack alive (and held in the server) until the cyclic GC runs.
            del exc, value

    def alive(self) -> bool:
        """False when the server has closed its end (a look at the socket, nothing read)."""
        if isinstance(self.sock, ssl.SSLSocket):
            return True                      # cannot peek through TLS; the first call tells
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True                      # open, nothing to read
        except OSError:
            data = b""
        if not data:
            self.close()
        return bool(data)

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def _drop(value: Any) -> None:
    """The undo of a plain call given up: nothing (its reply is decoded, to let go of the
    objects it refers to, and dropped)."""
    return None


def _rebuild_error(name: str, args: list[Any], message: str) -> BaseException:
    cls = WIRE_EXCEPTIONS.get(name)
    if cls is None:
        return RemoteError(message)
    try:
        return cls(*args)
    except Exception:
        return RemoteError(message)


_connections: dict[tuple[Address, bytes, str, Any], Connection] = {}
_connections_lock = threading.Lock()


def get_connection(address: Address, authkey: bytes, serializer: str = "pickle",
                   tls: Any = None, check: bool = False) -> Connection:
    """This process's connection to ``address`` (made on first use). ``check``: first make
    sure a kept one was not closed by its server (one restarted meanwhile), as a program
    that connects expects a working connection."""
    if serializer not in ("pickle", "xmlrpclib"):
        raise ValueError(f"serializer must be 'pickle' or 'xmlrpclib', not {serializer!r}")
    key = (address, bytes(authkey), serializer,
           tls if tls is None or isinstance(tls, (bool, str)) else id(tls))
    conn = _connections.get(key)
    if conn is not None and not conn.closed and (not check or conn.alive()):
        return conn
    with _connections_lock:
        conn = _connections.get(key)
        if conn is None or conn.closed:
            conn = _connections[key] = Connection(address, authkey, serializer, tls)
        return conn


def forget_connection(conn: Connection) -> None:
    with _connections_lock:
        for key, c in list(_connections.items()):
            if c is conn:
                del _connections[key]
    conn.close()


def _after_fork_in_child() -> None:
    # The parent's sockets and locks are not ours: every proxy reconnects on its next call.
    # Our copies of the parent's sockets are closed at once: while one stayed open, the server
    # could not see the parent's connection end if the parent died (a lock it held would stay
    # held for as long as this child lives).
    global _connections_lock
    _connections_lock = threading.Lock()
    for conn in _connections.values():
        conn.stale = True
        conn.closed = True
        try:
            conn.sock.close()
        except OSError:
            pass
    _connections.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
