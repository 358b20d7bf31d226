"""``RedisManager``: SyncManager's surface on Redis or Valkey.

Nothing runs besides Redis: the manager makes objects (keys) and hands out proxies. Objects it
makes stay pinned while it runs; ``shutdown()`` deletes those that no container refers to (as
the local server's objects end with it), and the rest stay in Redis, reachable from ``root``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from ._backend import Backend, Plan, Spec, get_backend, parse_url
from ._proxies import (
    RedisDictProxy,
    RedisListProxy,
    RedisNamespaceProxy,
    RedisValueProxy,
)
from ._sync import (
    RedisBarrierProxy,
    RedisConditionProxy,
    RedisEventProxy,
    RedisLockProxy,
    RedisQueueProxy,
    RedisRLockProxy,
    RedisSemaphoreProxy,
    redis_count,
)

__all__ = ["RedisManager", "connect"]


def _check_initial(value: Any) -> int:
    # The local server's checks and messages (a fraction would not add up on Redis).
    count = redis_count(value, "semaphore initial value")
    if count < 0:
        raise ValueError("semaphore initial value must be >= 0")
    return count


class RedisManager:
    """Shared objects in one namespace of a Redis (or Valkey) server.

    ``url``: ``redis://[:password@]host[:port][/db]``, ``rediss://`` for TLS, ``valkey://``,
    ``valkeys://`` or ``unix:///path``; the query may give ``namespace`` and ``lease``.

    ``namespace``: every key of this manager is ``shoal:{namespace}:...`` (one hash tag, so a
    Redis Cluster keeps them in one slot). Managers naming the same namespace share ``root``;
    default ``"shoal"``.

    ``lease``: seconds this process's hold on locks, semaphores, per-object locks and places in
    barriers or conditions outlives it if it dies (renewed every third of it while it lives);
    default 10.

    Other keyword arguments go to ``redis.Redis.from_url`` (``ssl_ca_certs``, ``password`` ...).

    Example::

        with shoal.redis.connect("redis://localhost:6379/0?namespace=jobs") as m:
            m.root.setdefault("done", [])
            m.root["done"].append(42)
    """

    def __init__(self, url: str, *, namespace: str | None = None, lease: float | None = None,
                 **redis_options: Any) -> None:
        clean, namespace, lease = parse_url(url, namespace, lease)
        self._spec: Spec = (clean, namespace, lease, tuple(sorted(redis_options.items())))
        self._backend: Backend | None = get_backend(self._spec)
        self._made: list[str] = []
        self.namespace = namespace
        self.lease = lease

    @property
    def address(self) -> str:
        """The server's URL, without the password."""
        return self._b.address()

    @property
    def _b(self) -> Backend:
        b = self._backend
        if b is None:
            raise RuntimeError("the manager has shut down")
        if b.stale:
            b = self._backend = get_backend(self._spec)
        return b

    def _create(self, typeid: str, meta: dict[str, Any] | None = None,
                items: Iterable[Any] = (), pairs: Iterable[tuple[Any, Any]] = ()) -> Any:
        b = self._b
        key = b.new_key(typeid)
        plan = Plan()
        args: list[Any] = []
        if typeid in ("dict", "Namespace"):
            last: dict[bytes, Any] = {}
            for k, v in pairs:
                last[b.encode_key(k)] = v
            for field, v in last.items():
                args += [field, b.store(v, key, plan)]
        elif typeid in ("list", "Value"):
            args = [b.store(v, key, plan) for v in items]
        meta_args: list[Any] = []
        for name, value in (meta or {}).items():
            meta_args += [name, value]
        b.call(key, "create", typeid, "1", str(len(meta_args) // 2), *meta_args,
               plan.packed(), *args)
        self._made.append(key)
        return b.proxy(key, typeid)

    # -- containers ----------------------------------------------------------------------------

    def dict(self, /, *args: Any, **kwds: Any) -> RedisDictProxy:
        """A new shared dict, made as ``dict(*args, **kwds)`` would be."""
        if len(args) > 1:
            raise TypeError(f"dict expected at most 1 argument, got {len(args)}")
        pairs: list[tuple[Any, Any]] = []
        if args:
            src = args[0]
            pairs = list(src.items()) if hasattr(src, "keys") else [tuple(p) for p in src]
            for p in pairs:
                if len(p) != 2:
                    raise ValueError("dictionary update sequence element has the wrong length")
        pairs.extend(kwds.items())
        return self._create("dict", pairs=pairs)  # type: ignore[no-any-return]

    def list(self, *args: Any) -> RedisListProxy:
        """A new shared list, made as ``list(*args)`` would be."""
        if len(args) > 1:
            raise TypeError(f"list expected at most 1 argument, got {len(args)}")
        items = args[0] if args else ()
        if isinstance(items, RedisListProxy):
            items = items[:]     # one call; nested containers come as proxies: one level copied
        return self._create("list", items=list(items))  # type: ignore[no-any-return]

    def Namespace(self, /, **kwds: Any) -> RedisNamespaceProxy:
        """A new shared namespace with these attributes."""
        return self._create("Namespace", pairs=kwds.items())  # type: ignore[no-any-return]

    def Value(self, typecode: Any, value: Any, lock: Any = True) -> RedisValueProxy:
        """A new shared value (``typecode`` is kept for ``repr`` only, as in Manager)."""
        return self._create("Value", {"typecode": self._b.encode(typecode)},  # type: ignore[no-any-return]
                            items=[value])

    def Array(self, typecode: str, sequence: Any, lock: Any = True) -> Any:
        raise NotImplementedError("Array is not available on Redis: use a list")

    def Pool(self, *args: Any, **kwds: Any) -> Any:
        raise NotImplementedError("Pool needs a server process: use the local shoal.Manager() "
                                  "or multiprocessing.Pool")

    # -- synchronization -------------------------------------------------------------------------

    def Lock(self) -> RedisLockProxy:
        """A new shared Lock, held as a lease."""
        return self._create("Lock")  # type: ignore[no-any-return]

    def RLock(self) -> RedisRLockProxy:
        """A new shared RLock, held as a lease."""
        return self._create("RLock")  # type: ignore[no-any-return]

    def Semaphore(self, value: int = 1) -> RedisSemaphoreProxy:
        """A new shared Semaphore."""
        value = _check_initial(value)
        s = self._create("Semaphore")
        self._b.redis.hset(s._redis_key, "v", value)
        return s  # type: ignore[no-any-return]

    def BoundedSemaphore(self, value: int = 1) -> RedisSemaphoreProxy:
        """A new shared BoundedSemaphore."""
        value = _check_initial(value)
        s = self._create("BoundedSemaphore", {"bound": value})
        self._b.redis.hset(s._redis_key, "v", value)
        return s  # type: ignore[no-any-return]

    def Condition(self, lock: Any = None) -> RedisConditionProxy:
        """A new shared Condition, on ``lock`` (a shared Lock or RLock) or its own RLock."""
        if lock is not None and not isinstance(lock, (RedisLockProxy, RedisRLockProxy)):
            raise TypeError("Condition needs a shared Lock or RLock of this manager (or none)")
        b = self._b
        key = b.new_key("Condition")
        meta = ["l", lock._redis_key if lock is not None else key]
        b.call(key, "create", "Condition", "1", "1", *meta, b"")
        self._made.append(key)
        return b.proxy(key, "Condition")  # type: ignore[no-any-return]

    def Event(self) -> RedisEventProxy:
        """A new shared Event."""
        return self._create("Event")  # type: ignore[no-any-return]

    def Barrier(self, parties: int, action: Any = None,
                timeout: float | None = None) -> RedisBarrierProxy:
        """A new shared Barrier; ``action`` (pickled) runs in the last party to arrive."""
        parties = redis_count(parties, "parties")
        if parties < 1:
            raise ValueError("parties must be an int > 0")
        meta: dict[str, Any] = {"parties": parties}
        if action is not None:
            meta["action"] = pickle.dumps(action)
        if timeout is not None:
            meta["timeout"] = self._b.encode(timeout)
        return self._create("Barrier", meta)  # type: ignore[no-any-return]

    def Queue(self, maxsize: int = 0) -> RedisQueueProxy:
        """A new shared Queue (``maxsize`` <= 0: unbounded)."""
        return self._create("Queue", {"maxsize": max(int(maxsize), 0), "u": 0})  # type: ignore[no-any-return]

    def JoinableQueue(self, maxsize: int = 0) -> RedisQueueProxy:
        """A new shared JoinableQueue."""
        return self._create("JoinableQueue", {"maxsize": max(int(maxsize), 0), "u": 0})  # type: ignore[no-any-return]

    # -- the namespace -------------------------------------------------------------------------

    @property
    def root(self) -> RedisDictProxy:
        """The namespace's root dict: the same object for every manager of the namespace, and
        what outlives them all (with everything reachable from it)."""
        b = self._b
        return b.proxy(b.root_key, "dict")  # type: ignore[no-any-return]

    def purge(self) -> int:
        """Delete every key of this namespace (all its objects, root included); return how
        many. For tests and for cleaning up after processes that died without shutting down."""
        b = self._b
        n = 0
        with b.errors():
            batch = []
            for key in b.redis.scan_iter(match=b.prefix.replace("{", "\\{").replace("}", "\\}")
                                         + "*", count=1000):
                if key.decode().startswith(b.prefix + "client:"):
                    continue
                batch.append(key)
                if len(batch) >= 500:
                    n += b.redis.unlink(*batch)
                    batch.clear()
            if batch:
                n += b.redis.unlink(*batch)
            b.run(b.root_key, "root")
        return n

    def shutdown(self) -> None:
        """Delete the objects this manager made that no container refers to; the manager (not
        its process's other managers or proxies) can no longer be used."""
        b = self._backend
        if b is None:
            return
        made, self._made = self._made, []
        if not b.stale:
            for i in range(0, len(made), 500):
                b.call(b.root_key, "unpin", *made[i:i + 500])
        self._backend = None

    def __enter__(self) -> RedisManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __reduce__(self) -> Any:
        raise TypeError("a shoal manager cannot be pickled; pass its proxies instead")

    def __repr__(self) -> str:
        state = "shut down" if self._backend is None else self.address
        return f"<RedisManager namespace={self.namespace!r} {state}>"


def connect(url: str, *, namespace: str | None = None, lease: float | None = None,
            **redis_options: Any) -> RedisManager:
    """A manager of shared objects on the Redis or Valkey server at ``url``; see
    ``RedisManager`` for the parameters.

    Example::

        m = shoal.redis.connect("redis://localhost:6379/0")
        m.root.incr("runs")
    """
    return RedisManager(url, namespace=namespace, lease=lease, **redis_options)



