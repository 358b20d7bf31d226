"""Managers: multiprocessing.managers' BaseManager/SyncManager surface on shoal's server.

``Manager()`` starts a server process and connects to it; ``connect(address)`` reaches a running
one. The registry works as in multiprocessing: ``register(typeid, callable, proxytype, ...)``
adds a ``manager.typeid(...)`` method. Types registered with no callable are the server's own
(dict, list, ...); those with a callable are custom types whose code runs in the server.
"""

from __future__ import annotations

import builtins
import multiprocessing
import multiprocessing.connection
import multiprocessing.pool
import os
import signal
from collections.abc import Callable
from multiprocessing import process, util
from typing import TYPE_CHECKING, Any, Self

from . import _client
from ._client import get_connection
from ._errors import ConnectionLost
from ._proxies import (ArrayProxy, AutoProxy, BaseProxy, DictProxy, ListProxy, NamespaceProxy,
                       Token, ValueProxy, adopt_proxy_type, wire_pairs)
from ._server import Registration, Server, keep_freed_memory
from ._syncproxies import (AsyncResultProxy, BarrierProxy, ConditionProxy, EventProxy,
                           IteratorProxy, LockProxy, PoolProxy, QueueProxy, RLockProxy,
                           SemaphoreProxy)
from ._transport import Address, parse_address

__all__ = ["BaseManager", "SyncManager", "Manager", "connect", "ServerHandle"]

INITIAL, STARTED, SHUTDOWN = "initial", "started", "shutdown"


class _State:
    value = INITIAL


class ServerHandle:
    """What ``BaseManager.get_server()`` returns: a server to run in this process."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.address = server.address
        self.listener = server.listener

    def serve_forever(self) -> None:
        """Serve until the server is shut down (``manager.shutdown()`` from a client) or SIGINT."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        self._server.loop.call_soon_threadsafe(self._server.stop)


class BaseManager:
    """Start or reach a shoal server and make shared objects in it.

    Parameters are multiprocessing.managers.BaseManager's, plus:

    ``nested``: ``"share"`` (default) makes plain dicts and lists stored in shared containers
    shared themselves, so ``d['k'][i] = v`` lands; ``"copy"`` keeps Manager's old copy-on-read.

    ``persist``: a directory where the server keeps everything reachable from ``root``, so that
    it survives a restart; ``fsync``: ``"always"`` (a write is answered once it is on disk),
    ``"everysec"`` (at most about a second of writes lost in a crash) or ``"no"``.

    Example::

        with shoal.SyncManager() as m:
            d = m.dict()
            d['row'] = {}
            d['row'][1] = 2          # lands: d == {'row': {1: 2}}
    """

    _registry: dict[str, dict[str, Any]] = {}
    _nested_default = "share"

    def __init__(self, address: Any = None, authkey: bytes | None = None,
                 serializer: str = "pickle", ctx: Any = None, *, shutdown_timeout: float = 1.0,
                 nested: str | None = None, persist: Any = None, fsync: str = "everysec",
                 tls: Any = None) -> None:
        if authkey is None:
            authkey = process.current_process().authkey
        nested = nested or self._nested_default
        if nested not in ("share", "copy"):
            raise ValueError(f"nested must be 'share' or 'copy', not {nested!r}")
        if fsync not in ("always", "everysec", "no"):
            raise ValueError(f"fsync must be 'always', 'everysec' or 'no', not {fsync!r}")
        self._persist = os.fspath(persist) if persist is not None else None
        self._fsync = fsync
        self._address: Address | None = parse_address(address) if address is not None else None
        self._authkey = process.AuthenticationString(authkey)  # type: ignore[attr-defined]
        if serializer not in ("pickle", "xmlrpclib"):
            raise ValueError(f"serializer must be 'pickle' or 'xmlrpclib', not {serializer!r}")
        self._serializer = serializer
        self._tls = tls
        self._ctx = ctx or multiprocessing.get_context()
        self._shutdown_timeout = shutdown_timeout
        self._nested = nested
        self._state = _State()
        self._process: Any = None
        self._conn: _client.Connection | None = None

    @property
    def address(self) -> Address | None:
        """The server's address (with the real port when it was started on port 0)."""
        return self._address

    # -- registry ----------------------------------------------------------------------------

    @classmethod
    def register(cls, typeid: str, callable: Callable[..., Any] | None = None,
                 proxytype: Any = None, exposed: Any = None,
                 method_to_typeid: dict[str, str] | None = None,
                 create_method: bool = True) -> None:
        """Register a type: ``manager.typeid(*args)`` makes one in the server and returns a proxy.

        ``callable`` runs in the server (its arguments are unpickled there: register only code
        you trust). ``proxytype`` defaults to an automatic proxy of the ``exposed`` methods
        (default: the object's public methods). ``method_to_typeid`` maps a method to the typeid
        of what it returns, which then comes back as a proxy.
        """
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in list(method_to_typeid.items()):
                assert type(key) is str, f"{key!r} is not a string"
                assert type(value) is str, f"{value!r} is not a string"
        cls._registry[typeid] = {"callable": callable, "exposed": exposed,
                                 "method_to_typeid": method_to_typeid, "proxytype": proxytype}
        if create_method:
            def temp(self: BaseManager, /, *args: Any, **kwds: Any) -> Any:
                return self._create_proxy(typeid, args, kwds)
            temp.__name__ = typeid
            setattr(cls, typeid, temp)

    def _server_registry(self) -> dict[str, Registration]:
        return {t: Registration(r["callable"], r["exposed"], r["method_to_typeid"],
                                r["proxytype"])
                for t, r in self._registry.items()}

    # -- lifecycle ---------------------------------------------------------------------------

    def get_server(self) -> ServerHandle:
        """A server for this manager's address, to run here with ``serve_forever()``."""
        if self._state.value != INITIAL:
            raise RuntimeError(f"Server already started (state {self._state.value})")
        server = Server(self._address, bytes(self._authkey), registry=self._server_registry(),
                        nested=self._nested, persist=self._persist, fsync=self._fsync)
        return ServerHandle(server)

    def connect(self) -> None:
        """Connect to a server already running at ``address``."""
        if self._address is None:
            raise ValueError("connect() needs the address of a running server")
        self._conn = get_connection(self._address, bytes(self._authkey), self._serializer,
                                    self._tls, check=True)
        self._install_proxytypes()
        self._state.value = STARTED

    def start(self, initializer: Callable[..., Any] | None = None, initargs: Any = ()) -> None:
        """Start a server process; it ends with ``shutdown()`` or when this process dies."""
        if self._state.value != INITIAL:
            if self._state.value == STARTED:
                raise multiprocessing.ProcessError("Already started server")
            if self._state.value == SHUTDOWN:
                raise multiprocessing.ProcessError("Manager has shut down")
            raise multiprocessing.ProcessError(f"Unknown state {self._state.value!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        reader, writer = multiprocessing.connection.Pipe(duplex=False)
        self._process = self._ctx.Process(
            # shoal's own class, not type(self): spawn and forkserver find the target by name,
            # and patch_multiprocessing's classes bear the names of multiprocessing's own.
            target=BaseManager._run_server,
            args=(self._server_registry(), self._address, bytes(self._authkey), self._nested,
                  os.getpid(), writer, initializer, initargs, self._persist, self._fsync),
        )
        ident = ":".join(str(i) for i in self._process._identity)
        self._process.name = type(self).__name__ + "-" + ident
        self._process.start()
        writer.close()
        try:
            result = reader.recv()
        except EOFError:
            self._process.join(1)
            raise ConnectionLost("the shoal server process died while starting") from None
        finally:
            reader.close()
        if isinstance(result, BaseException):
            self._process.join(1)
            raise result
        self._address = result
        # (check: a connection kept to this address may be of a server that died since)
        self._conn = get_connection(self._address, bytes(self._authkey), self._serializer,
                                    self._tls, check=True)
        self._install_proxytypes()
        self._state.value = STARTED
        self.shutdown = util.Finalize(
            self, type(self)._finalize_manager,
            args=(self._process, self._address, self._authkey, self._state,
                  self._shutdown_timeout),
            exitpriority=0,
        )

    @classmethod
    def _run_server(cls, registry: dict[str, Registration], address: Address | None,
                    authkey: bytes, nested: str, owner_pid: int, writer: Any,
                    initializer: Callable[..., Any] | None = None, initargs: Any = (),
                    persist: str | None = None, fsync: str = "everysec") -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the owner, who shuts us down
        keep_freed_memory()
        if initializer is not None:
            initializer(*initargs)
        try:
            server = Server(address, authkey, registry=registry, nested=nested,
                            owner_pid=owner_pid, persist=persist, fsync=fsync)
        except Exception as e:
            writer.send(e)
            writer.close()
            return
        writer.send(server.address)
        writer.close()
        server.serve_forever()

    @staticmethod
    def _finalize_manager(proc: Any, address: Address, authkey: bytes, state: _State,
                          shutdown_timeout: float) -> None:
        if proc.is_alive():
            try:
                conn = get_connection(address, bytes(authkey))
                conn.call(0, "shutdown")
            except Exception:
                pass
            proc.join(timeout=shutdown_timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=shutdown_timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        state.value = SHUTDOWN
        for key, conn in list(_client._connections.items()):
            if key[0] == address:
                _client.forget_connection(conn)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the server process to end."""
        if self._process is not None:
            self._process.join(timeout)
            if not self._process.is_alive():
                self._process = None

    def __enter__(self) -> Self:
        if self._state.value == INITIAL:
            self.start()
        if self._state.value != STARTED:
            raise multiprocessing.ProcessError(f"Unable to start server (state {self._state.value})")
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown = getattr(self, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def __reduce__(self) -> Any:
        raise TypeError("a shoal manager cannot be pickled; pass its proxies instead")

    # -- calls -------------------------------------------------------------------------------

    def _connection(self) -> _client.Connection:
        if self._state.value != STARTED:
            raise multiprocessing.ProcessError(
                f"the manager is not running (state {self._state.value}): start() or connect() first")
        conn = self._conn
        if conn is None or conn.closed:
            assert self._address is not None
            conn = self._conn = get_connection(self._address, bytes(self._authkey), self._serializer, self._tls)
            self._install_proxytypes()
        return conn

    def _install_proxytypes(self) -> None:
        assert self._conn is not None
        mapping = dict(_client.proxy_types)
        for typeid, r in self._registry.items():
            mapping[typeid] = adopt_proxy_type(r["proxytype"])
        self._conn.proxy_types = mapping

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> tuple[Token, Any]:
        proxy = self._connection().call(0, "create", [typeid, list(args), kwds])
        proxy._manager = self
        return proxy._token, proxy._exposed_

    def _create_proxy(self, typeid: str, args: Any, kwds: Any) -> Any:
        proxy = self._connection().call(0, "create", [typeid, list(args), kwds])
        proxy._manager = self
        return proxy

    @property
    def root(self) -> DictProxy:
        """The server's root dict: the same object in every client."""
        return self._connection().call(0, "root")  # type: ignore[no-any-return]

    def _number_of_objects(self) -> int:
        """How many shared objects the server holds (besides its root)."""
        conn = self._connection()
        conn.release_dropped()
        return conn.call(0, "number_of_objects")  # type: ignore[no-any-return]

    def _debug_info(self) -> str:
        """One line per shared object the server holds."""
        conn = self._connection()
        conn.release_dropped()
        return conn.call(0, "debug_info")  # type: ignore[no-any-return]


def _listable(x: Any, address: Any) -> Any:
    """What the wire can carry for an iterable argument: a list, tuple, dict, str or bytes as
    it is, a proxy of the server at ``address`` by reference, anything else (a generator, a
    subclass, another server's proxy) as a plain dict when it has keys, else a list."""
    if type(x) in (builtins.list, builtins.tuple, builtins.dict, str, bytes) or (
            isinstance(x, BaseProxy) and x._address == address):
        return x
    if hasattr(x, "keys"):
        return builtins.dict(x)
    return builtins.list(x)


class SyncManager(BaseManager):
    """A manager with the built-in shared types (dict, list, Namespace, Value, Array, Lock,
    RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier, Queue, JoinableQueue, Pool)."""

    if TYPE_CHECKING:      # made by register() below; declared here for type checkers
        def Namespace(self, /, **kwds: Any) -> NamespaceProxy: ...
        def Value(self, typecode: Any, value: Any, lock: Any = True) -> ValueProxy: ...
        def Lock(self) -> LockProxy: ...
        def RLock(self) -> RLockProxy: ...
        def Semaphore(self, value: int = 1) -> SemaphoreProxy: ...
        def BoundedSemaphore(self, value: int = 1) -> SemaphoreProxy: ...
        def Condition(self, lock: Any = None) -> ConditionProxy: ...
        def Event(self) -> EventProxy: ...
        def Barrier(self, parties: int, action: Any = None,
                    timeout: float | None = None) -> BarrierProxy: ...
        def Queue(self, maxsize: int = 0) -> QueueProxy: ...
        def JoinableQueue(self, maxsize: int = 0) -> QueueProxy: ...
        def Pool(self, processes: int | None = None, *args: Any, **kwds: Any) -> PoolProxy: ...

    def dict(self, /, *args: Any, **kwds: Any) -> DictProxy:      # (a key may be "self")
        """A new shared dict, made as ``dict(*args, **kwds)`` would be."""
        args = tuple(_listable(a, self._address) for a in args)
        if args and type(args[0]) in (builtins.list, builtins.tuple):
            args = (wire_pairs(args[0]), *args[1:])
        return self._create_proxy("dict", list(args), kwds)  # type: ignore[no-any-return]

    def list(self, *args: Any) -> ListProxy:
        """A new shared list, made as ``list(*args)`` would be."""
        return self._create_proxy("list", [_listable(a, self._address) for a in args], {})  # type: ignore[no-any-return]

    def Array(self, typecode: str, sequence: Any, lock: Any = True) -> ArrayProxy:
        """A new shared ``array.array(typecode, sequence)``."""
        if not isinstance(sequence, int):
            sequence = _listable(sequence, self._address)
        return self._create_proxy("Array", [typecode, sequence], {})  # type: ignore[no-any-return]


for _typeid, _proxytype in (
    ("dict", DictProxy), ("list", ListProxy), ("Namespace", NamespaceProxy),
    ("Value", ValueProxy), ("Array", ArrayProxy), ("Lock", LockProxy), ("RLock", RLockProxy),
    ("Semaphore", SemaphoreProxy), ("BoundedSemaphore", SemaphoreProxy),
    ("Condition", ConditionProxy), ("Event", EventProxy), ("Barrier", BarrierProxy),
    ("Queue", QueueProxy), ("JoinableQueue", QueueProxy),
):
    SyncManager.register(_typeid, None, _proxytype,
                         create_method=_typeid not in ("dict", "list", "Array"))
SyncManager.register("Pool", multiprocessing.pool.Pool, PoolProxy)
SyncManager.register("AsyncResult", None, AsyncResultProxy, create_method=False)
SyncManager.register("Iterator", None, IteratorProxy, create_method=False)
# On a plain BaseManager too (Manager registers it on SyncManager only): DictProxy and
# ListProxy, which a registered type may use, return their iterators as "Iterator".
BaseManager.register("Iterator", None, IteratorProxy, create_method=False)


def Manager(*, address: Any = None, authkey: bytes | None = None, nested: str = "share",
            persist: Any = None, fsync: str = "everysec", ctx: Any = None) -> SyncManager:
    """Start a shoal server and return its started SyncManager (like multiprocessing.Manager()).

    Example::

        import shoal
        with shoal.Manager() as m:
            counts = m.dict()
            counts.incr("hits")
    """
    m = SyncManager(address=address, authkey=authkey, nested=nested, persist=persist,
                    fsync=fsync, ctx=ctx)
    m.start()
    return m


_REDIS_SCHEMES = ("redis://", "rediss://", "valkey://", "valkeys://")


def connect(address: Any, authkey: bytes | None = None, tls: Any = None,
            **redis_options: Any) -> SyncManager:
    """A SyncManager connected to the running server at ``address``: a socket path,
    ``(host, port)`` or ``"tcp://host:port"``; or, with ``"redis://host:port/db"`` (also
    ``rediss://`` and Valkey), the same proxies on Redis (``pip install 'shoal[redis]'``);
    ``redis_options`` go to redis-py (``password=``, ``ssl_ca_certs=`` ...). ``tls``: True (verify the server against the
    system's certificate authorities), a CA file's path, or an ``ssl.SSLContext``.

    Example::

        m = shoal.connect("tcp://127.0.0.1:7070", authkey=key, tls="ca.pem")
        m.root["jobs"] = []
    """
    if isinstance(address, str) and address.startswith(_REDIS_SCHEMES):
        from .redis import connect as redis_connect     # needs the redis extra
        if isinstance(tls, (str, os.PathLike)):
            redis_options.setdefault("ssl_ca_certs", os.fspath(tls))
        return redis_connect(address, **redis_options)  # type: ignore[return-value]
    m = SyncManager(address=address, authkey=authkey, tls=tls)
    m.connect()
    return m

