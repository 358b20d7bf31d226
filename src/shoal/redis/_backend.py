"""One process's link to one namespace of one Redis server: client, script, presence, waiting.

A ``Backend`` is shared by every proxy of this process that names the same URL, namespace and
lease (proxies find it again by that spec after being pickled into another process). It holds

* the redis-py client (its connection pool is thread-safe and re-made after a fork);
* the Lua scripts (``_scripts.SCRIPTS``, one per operation), loaded on first use and called
  with EVALSHA;
* this process's **presence**: the key ``shoal:{ns}:client:TOKEN``, set with a time to live of
  one lease and renewed every third of a lease by a daemon thread. Everything the process holds
  (locks, semaphore counts, per-object locks, a place in a barrier or a condition) is held in
  the name of ``TOKEN``, so when the process dies, its key expires within one lease and all of
  it is free again. A process that missed its renewals (stopped, cut off) finds its key gone:
  it takes a new token, and releasing what it held under the old one raises ``LeaseExpired``;
* the waits: a blocked call registers its thread in the object's set of waiters (inside the
  same script that found it blocked) and waits with BLPOP on its own wake list, which whoever
  frees the object pushes to. Timeouts are kept on this side to the millisecond: when one
  passes first, ``CLIENT UNBLOCK`` ends the BLPOP (Redis' own timeouts only have the precision
  of its ``hz``, 100 ms by default).

Redis errors are mapped to shoal's here and nowhere else: connection failures become
``shoal.ConnectionLost``, anything else Redis refuses becomes ``shoal.RemoteError``.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import msgpack
import redis
import redis.exceptions

from .._errors import WIRE_EXCEPTIONS, ConnectionLost, RemoteError, ShoalError
from ._codec import RedisCodec, ref_bytes
from ._scripts import BLOCKED, ERROR, FALLBACK, GONE, OK, SCRIPTS

__all__ = ["Backend", "LeaseExpired", "Plan", "Spec", "close_all", "get_backend", "parse_url"]

log = logging.getLogger("shoal.redis")

#: The longest a blocked call waits before it looks again (a lost wake-up costs at most this).
MAX_WAIT = 5.0

Spec = tuple[str, str, float, tuple[tuple[str, Any], ...]]


class LeaseExpired(ShoalError, RuntimeError):
    """What this process held was given up because its lease expired: it did not renew it in
    time (it was stopped, or cut off from Redis for longer than the lease), so others may have
    gone in since. Raised by the release of a lock, semaphore or per-object lock (like
    redis-py's ``LockNotOwnedError``)."""


_SCHEMES = {"redis": "redis", "rediss": "rediss", "valkey": "redis", "valkeys": "rediss",
            "unix": "unix"}


def parse_url(url: str, namespace: str | None = None,
              lease: float | None = None) -> tuple[str, str, float]:
    """``(redis-py URL, namespace, lease)`` from a shoal URL.

    ``redis://``, ``rediss://`` (TLS), ``valkey://``, ``valkeys://`` and ``unix://`` URLs are
    accepted; the query may carry ``namespace=NAME`` and ``lease=SECONDS``, which arguments
    override. The namespace defaults to ``shoal``, so every process naming the same server sees
    the same root.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not a Redis URL: {url!r} (use redis://, rediss://, valkey:// or "
                         f"valkeys://)")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    rest = []
    for name, value in query:
        if name == "namespace":
            namespace = namespace or value
        elif name == "lease":
            lease = lease if lease is not None else float(value)
        else:
            rest.append((name, value))
    namespace = namespace or "shoal"
    if any(c in namespace for c in "{}") or not namespace:
        raise ValueError(f"a namespace may not contain braces: {namespace!r}")
    lease = 10.0 if lease is None else float(lease)
    if not 0.2 <= lease <= 3600:
        raise ValueError(f"lease must be between 0.2 and 3600 seconds, not {lease}")
    clean = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path,
                                     urllib.parse.urlencode(rest), parts.fragment))
    return clean, namespace, lease


class Plan:
    """What storing a value creates: nested containers made from plain dicts and lists, and
    references to existing objects (counted once more). Sent to the script as one msgpack
    string: ``[[existing keys], [key, type, parent, items], ...]``."""

    __slots__ = ("objects", "refs")

    def __init__(self) -> None:
        self.refs: list[str] = []
        self.objects: list[list[Any]] = []

    def packed(self) -> bytes:
        if not self.refs and not self.objects:
            return b""
        return msgpack.packb([self.refs, *self.objects], use_bin_type=False)  # type: ignore[no-any-return]


class Backend:
    """See the module docstring. Made by ``get_backend``; not for direct use."""

    def __init__(self, spec: Spec) -> None:
        url, namespace, lease, options = spec
        self.spec = spec
        self.url = url
        self.namespace = namespace
        self.lease = lease
        self.prefix = f"shoal:{{{namespace}}}:"
        self.root_key = self.prefix + "root"
        self.pid = os.getpid()
        self.stale = False
        self.redis = redis.Redis.from_url(url, **dict(options))
        self._shas: dict[str, str] = {}
        self._local = threading.local()
        self._proxy_types: dict[str, Callable[..., Any]] = {}
        self.held: dict[tuple[str, str], int] = {}   # (lock key, holder) -> depth, this process
        # (semaphore key, token) -> counts this process took and has not given back
        self.taken: dict[tuple[str, str], int] = {}
        self.lapsed: set[str] = set()     # this process's tokens whose lease lapsed
        self._stop = threading.Event()
        self.token = self._new_token()
        with self.errors():
            self._announce()
            self.run(self.root_key, "root")
        self._thread = threading.Thread(target=self._renew, name="shoal-redis-presence",
                                        daemon=True)
        self._thread.start()

    # -- presence ----------------------------------------------------------------------------

    def _new_token(self) -> str:
        return f"{os.getpid()}-{secrets.token_hex(5)}"

    def _presence_key(self, token: str) -> str:
        return f"{self.prefix}client:{token}"

    def _announce(self) -> None:
        self.redis.set(self._presence_key(self.token), f"{socket.gethostname()} {os.getpid()}",
                       px=int(self.lease * 1000))

    def _renew(self) -> None:
        period = self.lease / 3
        while not self._stop.wait(period):
            if self.stale or os.getpid() != self.pid:
                return
            try:
                ok = self.redis.set(self._presence_key(self.token),
                                    f"{socket.gethostname()} {os.getpid()}",
                                    px=int(self.lease * 1000), xx=True)
                if not ok:
                    log.warning("shoal: this process's lease on %s lapsed (it was not renewed "
                                "in time); what it held has been freed", self.prefix)
                    self.lapsed.add(self.token)
                    self.token = self._new_token()
                    self._announce()
            except redis.exceptions.RedisError as e:
                log.warning("shoal: could not renew this process's lease: %s", e)

    def close(self) -> None:
        """Stop renewing and remove this process's presence (what it holds is freed)."""
        self._stop.set()
        if os.getpid() == self.pid and not self.stale:
            try:
                self.redis.delete(self._presence_key(self.token))
            except redis.exceptions.RedisError:
                pass
        self.redis.close()

    def holder(self) -> str:
        return f"{self.token}/{threading.get_ident()}"

    def wake_key(self, holder: str) -> str:
        return f"{self.prefix}wake:{holder}"

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Map redis-py's errors to shoal's (the one place where that happens)."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise ConnectionLost(f"lost the connection to Redis at {self.address()}: {e}") from e
        except redis.exceptions.RedisError as e:
            raise RemoteError(f"Redis refused a call: {e}") from e

    def address(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    # -- codec -------------------------------------------------------------------------------

    def codec(self) -> RedisCodec:
        c: RedisCodec | None = getattr(self._local, "codec", None)
        if c is None:
            c = self._local.codec = RedisCodec(self._ref_of, self.proxy)
        return c

    def key_codec(self) -> RedisCodec:
        c: RedisCodec | None = getattr(self._local, "key_codec", None)
        if c is None:
            c = self._local.key_codec = RedisCodec(self._ref_of, self.proxy, canonical=True)
        return c

    def encode(self, value: Any) -> bytes:
        return self.codec().encode(value)

    def decode(self, raw: bytes) -> Any:
        return self.codec().decode(raw)

    def encode_key(self, key: Any) -> bytes:
        hash(key)               # TypeError for an unhashable key, as a dict raises it
        return self.key_codec().encode(key)

    def _ref_of(self, obj: Any) -> tuple[str, str] | None:
        key = getattr(obj, "_redis_key", None)
        if key is not None and obj._backend.prefix == self.prefix:
            return key, obj._typeid
        return None

    def proxy(self, key: str, typeid: str) -> Any:
        cls = self._proxy_types.get(typeid)
        if cls is None:
            from ._proxies import PROXY_TYPES
            self._proxy_types = PROXY_TYPES
            cls = PROXY_TYPES.get(typeid)
            if cls is None:
                raise TypeError(f"no proxy type for a shared {typeid!r} on Redis")
        return cast(Any, cls)._bind(self, key, typeid)

    def new_key(self, typeid: str) -> str:
        return f"{self.prefix}{typeid.lower()}:{secrets.token_hex(8)}"

    def store(self, value: Any, parent: str, plan: Plan) -> bytes:
        """The encoding of ``value`` stored in the container ``parent``: plain dicts and lists
        become nested containers (added to ``plan``), proxies references."""
        t = type(value)
        if t is dict:
            key = self.new_key("dict")
            items: list[bytes] = []
            encode_key = self.encode_key
            for k, v in value.items():
                items.append(encode_key(k))
                items.append(self.store(v, key, plan))
            plan.objects.append([key, "dict", parent, items])
            return ref_bytes(key, "dict")
        if t is list:
            key = self.new_key("list")
            plan.objects.append([key, "list", parent, [self.store(v, key, plan) for v in value]])
            return ref_bytes(key, "list")
        ref = self._ref_of(value)
        if ref is not None:
            plan.refs.append(ref[0])
            return ref_bytes(*ref)
        return self.codec().encode(value)

    # -- calls -------------------------------------------------------------------------------

    def run(self, key: str, op: str, *args: Any, holder: str | None = None) -> list[Any]:
        """One run of the script: the reply as it comes (status first)."""
        if holder is None:
            holder = f"{self.token}/{threading.get_ident()}"
        try:
            sha = self._shas.get(op)
            if sha is not None:
                try:
                    return self.redis.evalsha(sha, 1, key, op, holder, *args)  # type: ignore[no-any-return]
                except redis.exceptions.NoScriptError:
                    pass      # the server restarted, or its scripts were flushed
            sha = self._shas[op] = self.redis.script_load(SCRIPTS[op])
            return self.redis.evalsha(sha, 1, key, op, holder, *args)  # type: ignore[no-any-return]
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise ConnectionLost(f"lost the connection to Redis at {self.address()}: {e}") from e
        except redis.exceptions.RedisError as e:
            raise RemoteError(f"Redis refused a call: {e}") from e

    def call(self, key: str, op: str, *args: Any) -> list[Any]:
        """Run ``op``; when the object is held by another client's per-object lock, wait for
        it and run again; when the root is missing, make it again. Raises the operation's
        error."""
        while True:
            holder = f"{self.token}/{threading.get_ident()}"
            r = self.run(key, op, *args, holder=holder)
            status = r[0]
            if status == OK or status == FALLBACK:
                return r
            if status == BLOCKED:
                self.wait(holder, self.wait_bound(r[1], None))
                continue
            if status == GONE and key == self.root_key:
                # Redis lost its data (a restart without persistence, FLUSHALL). The root is
                # never deleted otherwise, and every process must keep finding it: made again.
                self.run(key, "root")
                continue
            self.fail(r, key)

    def fail(self, reply: list[Any], key: str, what: Any = None) -> None:
        """Raise the error a reply reports."""
        status = reply[0]
        if status == GONE:
            raise ReferenceError(f"the shared object {key} no longer exists: it was deleted when "
                                 f"the last container referring to it let go of it, or when "
                                 f"its manager shut down")
        if status == ERROR:
            name = reply[1].decode()
            message = reply[2].decode() if len(reply) > 2 and reply[2] else ""
            if name == "LeaseExpired":
                raise LeaseExpired(message)
            cls = WIRE_EXCEPTIONS.get(name, RemoteError)
            if name == "BrokenBarrierError":
                cls = WIRE_EXCEPTIONS["threading.BrokenBarrierError"]
            if name == "KeyError" and not message:
                raise KeyError(what)
            raise cls(message) if message else cls()
        raise RemoteError(f"unexpected reply from the Redis script: {reply!r}")

    def wait_bound(self, wait_ms: int, remaining: float | None) -> float:
        """How long to wait before looking again: until the holder's lease would run out (it
        may die without waking us), the caller's timeout, or ``MAX_WAIT``."""
        bound = MAX_WAIT if wait_ms is None or wait_ms < 0 else min(MAX_WAIT, wait_ms / 1000 + 0.02)
        if remaining is not None:
            bound = min(bound, remaining)
        return max(bound, 0.0)

    def wait(self, holder: str, timeout: float) -> bool:
        """Wait until this thread's wake list gets a push or ``timeout`` passes; True if woken."""
        return self.blocking(("BLPOP", self.wake_key(holder)), timeout) is not None

    def blocking(self, command: tuple[Any, ...], timeout: float | None) -> Any:
        """Run a blocking command (its timeout argument is appended) and return its reply, or
        None when ``timeout`` seconds pass first (None: no limit)."""
        server_timeout = 0 if timeout is None else max(timeout, 0.001)
        pool = self.redis.connection_pool
        with self.errors():
            conn = pool.get_connection()
            try:
                conn.send_packed_command(conn.pack_commands(  # type: ignore[no-untyped-call]
                    [("CLIENT", "ID"), (*command, f"{server_timeout:.3f}")]))
                client_id = conn.read_response()
                if timeout is not None and not conn.can_read(timeout=timeout):
                    try:
                        self.redis.client_unblock(client_id)
                    except redis.exceptions.ResponseError:
                        pass   # CLIENT may be refused (ACL): Redis' own timeout ends it
                return conn.read_response()
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)


_backends: dict[Spec, Backend] = {}
_backends_lock = threading.Lock()


def get_backend(spec: Spec) -> Backend:
    """This process's backend for ``spec``, made on first use."""
    b = _backends.get(spec)
    if b is not None and not b.stale:
        return b
    with _backends_lock:
        b = _backends.get(spec)
        if b is None or b.stale:
            b = _backends[spec] = Backend(spec)
        return b


def _after_fork_in_child() -> None:
    # The child is another process: it must not hold what the parent holds, nor share the
    # parent's connections or thread. Its proxies find a new backend on their next call.
    for b in _backends.values():
        b.stale = True
    _backends.clear()


def close_all() -> None:
    """Close every backend of this process: stop renewing its leases and remove its presence
    (what it holds is free at once). Proxies made before reconnect on their next call."""
    with _backends_lock:
        backends = list(_backends.values())
        _backends.clear()
    for b in backends:
        try:
            b.close()
        except redis.exceptions.RedisError:
            pass
        b.stale = True                   # its proxies look up a new backend


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close_all)


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
