"""Proxies: local stand-ins for shared objects, written by hand on ``collections.abc``.

Each method is one round trip to the server. Reading a nested container gives another proxy, so
writes through it land. ``copy()``, ``dict(p)``, ``list(p)`` and ``shoal.unwrap`` give plain local
copies; ``repr``/``==`` work on such a copy, as on the local type.
"""

from __future__ import annotations

import array
import multiprocessing.managers
import operator
import os
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping, MutableSequence
from multiprocessing import process
from multiprocessing.context import get_spawning_popen
from typing import Any, NamedTuple

from . import _client
from ._client import Connection, get_connection
from ._errors import RemoteError
from ._objects import OWNER_DIED
from ._protocol import HEADER
from ._transport import Address

_pack_header = HEADER.pack

__all__ = ["Token", "BaseProxy", "pipeline", "Pipeline", "Pending", "DictProxy", "ListProxy", "NamespaceProxy", "ValueProxy",
           "ArrayProxy", "AutoProxy", "make_proxy_type", "unwrap"]


_tuple_new = tuple.__new__      # makes a Token without NamedTuple's keyword handling


class Token(NamedTuple):
    """What identifies a shared object: its type, its server and its id there."""

    typeid: str
    address: Address
    id: int


_repr_guard = threading.local()


def _guarded_repr(proxy: BaseProxy, render: Any, cycle: str = "[...]") -> str:
    """``render()``, or ``cycle`` for a proxy met again inside its own repr (an object that
    holds itself), as Python shows a list in itself."""
    active = getattr(_repr_guard, "active", None)
    if active is None:
        active = _repr_guard.active = set()
    key = (proxy._address, proxy._id)
    if key in active:
        return cycle
    active.add(key)
    try:
        return render()  # type: ignore[no-any-return]
    finally:
        active.discard(key)


class BaseProxy:
    """Base of all proxies; ``_callmethod(name, args, kwds)`` calls a method on the referent.

    The signature is multiprocessing.managers.BaseProxy's, so proxy classes written for Manager
    work unchanged.
    """

    _exposed_: tuple[str, ...] | None = None
    _conn: Connection
    _address: Address
    _authkey: bytes
    _serializer: str
    _instance: bytes
    _token: Token
    _id: int
    _manager: Any = None
    _tracked = False

    def __init__(self, token: Token, serializer: Any = None, manager: Any = None,
                 authkey: bytes | None = None, exposed: Any = None, incref: bool = True,
                 manager_owned: bool = False, tls: Any = None) -> None:
        if authkey is None:
            authkey = manager._authkey if manager is not None else process.current_process().authkey
        if serializer not in ("pickle", "xmlrpclib"):
            serializer = getattr(manager, "_serializer", "pickle")
        if tls is None and manager is not None:
            tls = getattr(manager, "_tls", None)
        conn = get_connection(token.address, bytes(authkey), serializer, tls)
        self._setup(token, conn, manager, exposed, incref)

    def _setup(self, token: Token, conn: Connection, manager: Any, exposed: Any,
               incref: bool, counted: bool = False) -> None:
        attrs = self.__dict__
        attrs.update(conn.proxy_attrs)     # _conn, _address, _authkey, _serializer
        attrs["_token"] = token
        attrs["_id"] = token.id
        if manager is not None:
            attrs["_manager"] = manager
        if exposed is not None:
            attrs["_exposed_"] = tuple(exposed)
        if not counted:
            conn.track(token.id, hold=incref)
        attrs["_tracked"] = True

    @classmethod
    def _from_ref(cls, conn: Connection, oid: int, typeid: str) -> BaseProxy:
        """The proxy of a reference the connection received (and counted: ``_make_proxy``).
        Made for every nested container read, so kept short."""
        self = cls.__new__(cls)
        self._setup(_tuple_new(Token, (typeid, conn.address, oid)), conn, None, None, False, True)
        return self

    def _shoal_ref(self) -> tuple[int, str]:
        return self._id, self._token.typeid

    def __del__(self) -> None:
        if self._tracked:
            try:
                self._conn.untrack(self._id)
            except Exception:
                pass

    def _reconnect(self) -> Connection:
        # After fork (or a broken connection): this process needs its own connection, and the
        # server must learn that this connection now holds the object.
        conn = get_connection(self._address, bytes(self._authkey), self._serializer,
                              self._conn.tls)
        _same_objects(conn, self._instance, self._token)
        conn.track(self._id, hold=True)
        self._conn = conn
        return conn

    def _call(self, name: str, *args: Any) -> Any:
        conn = self._conn
        if conn.closed:
            conn = self._reconnect()
        return conn.call(self._id, name, args)

    def _call_may_wait(self, name: str, *args: Any, undo: Any = None) -> Any:
        """``_call`` for a call that may wait in the server (for a lock, an item, a signal):
        what this process dropped is released with it, not with its next call, which may
        come much later. With ``undo``, an exception that interrupts the wait cancels the
        call in the server, or undoes it if it ran (``Connection.call_may_wait``)."""
        self._conn.release_dropped()
        if undo is None:
            return self._call(name, *args)
        conn = self._conn if not self._conn.closed else self._reconnect()
        return conn.call_may_wait(self._id, name, args, undo)

    def _callmethod(self, methodname: str, args: Iterable[Any] = (),
                    kwds: dict[str, Any] | None = None) -> Any:
        """Call ``methodname`` on the shared object (Manager's API)."""
        conn = self._conn
        if conn.closed:
            conn = self._reconnect()
        return conn.call(self._id, methodname, list(args), kwds or None)

    def _getvalue(self) -> Any:
        """A local copy of the shared object."""
        return self._callmethod("_getvalue")

    def __deepcopy__(self, memo: Any) -> Any:
        # A private copy, as Manager's proxies give (not another proxy of the same object).
        return self._getvalue()

    def locked(self) -> ObjectLockContext:
        """``with proxy.locked(): ...``: exclusive use of this object and of the containers made
        nested in it. Other processes' calls on them wait until the block ends; re-entrant.
        If the previous holder died inside its block, ``owner_died`` on the returned context is
        True (the data may be half-updated). Threads of this process that use ``locked()`` on
        this same object exclude each other too; their plain calls are not held back, nor
        their ``locked()`` on containers nested in it (the server sees one client)."""
        return ObjectLockContext(self)

    def _incref(self) -> None:
        self._conn.track(self._id, hold=True)

    def __reduce__(self) -> Any:
        authkey = bytes(self._authkey) if get_spawning_popen() is not None else None
        if type(self).__dict__.get("_auto"):     # a class made on the fly: no name to find
            return (_rebuild_auto, (self._token, authkey, self._exposed_, self._serializer,
                                    self._conn.tls, self._instance))
        origin = type(self).__dict__.get("_adopted_from")
        if origin is not None:                   # its name is multiprocessing's class's
            return (_rebuild_adopted, (origin, self._token, authkey, self._exposed_,
                                       self._serializer, self._conn.tls, self._instance))
        return (_rebuild, (type(self), self._token, authkey, self._exposed_, self._serializer,
                           self._conn.tls, self._instance))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        try:
            return self._callmethod("__repr__")  # type: ignore[no-any-return]
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


_MP_BASE_PROXY = multiprocessing.managers.BaseProxy   # (before patch_multiprocessing replaces it)
_adopted: dict[type, type[BaseProxy]] = {}


def adopt_proxy_type(cls: Any) -> Any:
    """A proxy class written on multiprocessing's own BaseProxy (its EventProxy, a user's
    subclass made for Manager) made one of shoal's: a subclass of shoal's BaseProxy and of
    ``cls``, whose methods reach the referent only through ``_callmethod``, which shoal's
    BaseProxy then gives (it comes first). What ``cls`` itself sets that shoal's BaseProxy
    also has (``_exposed_``, ``__repr__``...) is kept. Anything else is returned as it is."""
    if not isinstance(cls, type) or not issubclass(cls, _MP_BASE_PROXY) \
            or issubclass(cls, BaseProxy):
        return cls
    adopted = _adopted.get(cls)
    if adopted is None:
        ours = {name for klass in BaseProxy.__mro__ for name in vars(klass)}
        ns: dict[str, Any] = {"_adopted_from": cls}
        for klass in reversed(cls.__mro__[:cls.__mro__.index(_MP_BASE_PROXY)]):
            ns.update((k, v) for k, v in vars(klass).items() if k in ours and k not in (
                "__init__", "__reduce__", "__dict__", "__weakref__", "__module__",
                "__qualname__", "__doc__"))
        adopted = _adopted[cls] = type(cls.__name__, (BaseProxy, cls), ns)
    return adopted


def _rebuild_adopted(origin: type, *args: Any) -> BaseProxy:
    return _rebuild(adopt_proxy_type(origin), *args)


def _rebuild(cls: type[BaseProxy], token: Token, authkey: bytes | None,
             exposed: Any = None, serializer: str = "pickle", tls: Any = None,
             instance: bytes | None = None) -> BaseProxy:
    authkey = _unpickled_here(token, authkey, serializer, tls, instance)
    return cls(token, serializer, authkey=authkey, exposed=exposed, tls=tls)


def _unpickled_here(token: Token, authkey: bytes | None, serializer: str, tls: Any,
                    instance: bytes | None) -> bytes:
    """The authkey a proxy unpickled in this process uses; its object must still be there."""
    if authkey is None:
        authkey = bytes(process.current_process().authkey)
    if instance is not None:
        _same_objects(get_connection(token.address, bytes(authkey), serializer, tls),
                      instance, token)
    return authkey


def _same_objects(conn: Connection, instance: bytes, token: Token) -> None:
    """Refuse a proxy made under another start of the server at its address (one that persists
    nothing gets a new id at each start): its object is gone, and its number may now name
    another client's object."""
    if conn.instance != instance:
        raise ReferenceError(
            f"shared {token.typeid} #{token.id} no longer exists: the shoal server at "
            f"{conn.address!r} was restarted since this proxy was made, and its objects did not "
            f"survive the restart (only a server with persist=DIR keeps them)")


_local_locks: dict[tuple[Any, int], threading.RLock] = {}
_local_locks_guard = threading.Lock()


def _forget_local_locks() -> None:
    # In a forked child: a lock another thread of the parent held at the fork would stay held
    # for ever here (that thread does not exist in the child).
    global _local_locks_guard
    _local_locks_guard = threading.Lock()
    _local_locks.clear()


os.register_at_fork(after_in_child=_forget_local_locks)


def _wire_iterable(x: Any, proxy: BaseProxy, keys: bool = True) -> Any:
    """An iterable argument of a bulk call as the server takes it: a list, tuple or dict as
    they are, a shared container of the same server by reference, anything else (a subclass,
    a generator, another server's proxy) as a plain list, or dict when ``keys`` and it has
    keys."""
    if type(x) in (list, tuple):
        return wire_pairs(x) if keys else x
    if keys and type(x) is dict:
        return x
    if isinstance(x, (ListProxy, DictProxy)) and x._address == proxy._address:
        return x
    if keys and hasattr(x, "keys"):
        return dict(x)
    return list(x)


_PAIR_TYPES = frozenset({list, tuple})


def wire_pairs(pairs: list[Any] | tuple[Any, ...]) -> Any:
    """``dict()``'s or ``update()``'s sequence of pairs: a pair that is neither a list nor a
    tuple (an iterator, a str) made a tuple here, as the server cannot look inside one that
    would travel pickled. What is not iterable goes as it is, for the server's own error."""
    if set(map(type, pairs)) <= _PAIR_TYPES:
        return pairs
    return [p if type(p) in _PAIR_TYPES else _as_pair(p) for p in pairs]


def _as_pair(p: Any) -> Any:
    try:
        return tuple(p)
    except TypeError:
        return p


def _release_object_lock(_: Any) -> tuple[str, list[Any]]:
    return "_lock_release", []


class ObjectLockContext:
    """What ``proxy.locked()`` returns; see there."""

    owner_died = False

    def __init__(self, proxy: BaseProxy) -> None:
        self._proxy = proxy
        key = (proxy._address, proxy._id)
        with _local_locks_guard:
            lock = _local_locks.get(key)
            if lock is None:
                lock = _local_locks[key] = threading.RLock()
        self._local = lock

    def __enter__(self) -> ObjectLockContext:
        self._local.acquire()
        try:
            self.owner_died = self._proxy._call_may_wait(
                "_lock_acquire", undo=_release_object_lock) == OWNER_DIED
            self._conn = self._proxy._conn      # the connection that holds it
        except BaseException:
            self._local.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            conn = self._proxy._conn
            if conn.closed or conn is not self._conn:
                self._proxy._call("_lock_release")      # raises: the lock went with it
            else:
                # We hold it, so releasing cannot fail: sent without waiting for the reply
                # (it runs before any later call of this process).
                conn.send(self._proxy._id, "_lock_release", [])
        finally:
            self._local.release()


class DictProxy(BaseProxy, MutableMapping[Any, Any]):
    """A shared dict. Also: ``incr``, ``cas`` and ``get_many``, each one atomic round trip."""

    # Manager's, for a type registered with proxytype=DictProxy (and for subclasses that add
    # to it); shoal's own dicts answer more.
    _exposed_ = ("__contains__", "__delitem__", "__getitem__", "__iter__", "__len__",
                 "__setitem__", "clear", "copy", "get", "items", "keys", "pop", "popitem",
                 "setdefault", "update", "values")
    _method_to_typeid_ = {"__iter__": "Iterator"}

    def __getitem__(self, key: Any) -> Any:
        return self._call("__getitem__", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._call("__setitem__", key, value)

    def __delitem__(self, key: Any) -> None:
        self._call("__delitem__", key)

    def __contains__(self, key: object) -> bool:
        return self._call("__contains__", key)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self._call("__len__")  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return self._call("__iter__")  # type: ignore[no-any-return]  # a ChunkedIterator

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self.keys())  # type: ignore[no-any-return]

    def keys(self) -> list[Any]:  # type: ignore[override]
        """The keys, as a list (one round trip; Manager gives a list too)."""
        return self._call("keys")  # type: ignore[no-any-return]

    def values(self) -> list[Any]:  # type: ignore[override]
        return self._call("values")  # type: ignore[no-any-return]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return self._call("items")  # type: ignore[no-any-return]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._call("get", key, default)

    def get_many(self, keys: Iterable[Any], default: Any = None) -> list[Any]:
        """``[d.get(k, default) for k in keys]`` in one round trip."""
        return self._call("get_many", list(keys), default)  # type: ignore[no-any-return]

    def pop(self, key: Any, *default: Any) -> Any:
        return self._call("pop", key, *default)

    def popitem(self) -> tuple[Any, Any]:
        return self._call("popitem")  # type: ignore[no-any-return]

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._call("setdefault", key, default)

    def update(self, other: Any = (), /, **kw: Any) -> None:
        other = _wire_iterable(other, self)
        if kw:
            self._callmethod("update", [other], kw)
        else:
            self._call("update", other)

    def clear(self) -> None:
        self._call("clear")

    def copy(self) -> dict[Any, Any]:
        """A plain, deep, local copy."""
        return self._call("copy")  # type: ignore[no-any-return]

    def incr(self, key: Any, by: int | float = 1, default: int | float = 0) -> Any:
        """Add ``by`` to ``d[key]`` (``default`` when missing) atomically; return the new value."""
        return self._call("incr", key, by, default)

    def cas(self, key: Any, expected: Any, new: Any) -> bool:
        """Set ``d[key] = new`` if ``d.get(key) == expected``, atomically; say whether it did."""
        return self._call("cas", key, expected, new)  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DictProxy):
            other = other.copy()
        return self.copy() == other

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: Any) -> dict[Any, Any]:
        return self.copy() | (other.copy() if isinstance(other, DictProxy) else other)

    def __ror__(self, other: Any) -> dict[Any, Any]:
        return other | self.copy()  # type: ignore[no-any-return]

    def __ior__(self, other: Any) -> DictProxy:
        self.update(other)
        return self

    def __repr__(self) -> str:
        return _guarded_repr(self, lambda: repr(self.copy()), "{...}")

    __str__ = __repr__


def _check_iterable_for_slice(index: slice, value: Any) -> None:
    """Raise the TypeError a list raises for assigning ``value`` to ``index`` when ``value`` is
    not iterable (its text depends on the slice)."""
    try:
        iter(value)
    except TypeError:
        operator.setitem([], index, value)   # raises: nothing is assigned to a non-iterable


class ListProxy(BaseProxy, MutableSequence[Any]):
    """A shared list."""

    # Manager's (see DictProxy), with ``__iter__``, which this class calls.
    _exposed_ = ("__add__", "__contains__", "__delitem__", "__getitem__", "__iter__", "__len__",
                 "__mul__", "__reversed__", "__rmul__", "__setitem__", "append", "count",
                 "extend", "index", "insert", "pop", "remove", "reverse", "sort", "__imul__",
                 "copy")     # (copy: read by ==, repr)
    _method_to_typeid_ = {"__iter__": "Iterator"}

    def __getitem__(self, index: Any) -> Any:
        return self._call("__getitem__", index)

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            try:
                value = _wire_iterable(value, self, keys=False)
            except TypeError:
                _check_iterable_for_slice(index, value)
                raise
        self._call("__setitem__", index, value)

    def __delitem__(self, index: Any) -> None:
        self._call("__delitem__", index)

    def __len__(self) -> int:
        return self._call("__len__")  # type: ignore[no-any-return]

    def __contains__(self, value: object) -> bool:
        return self._call("__contains__", value)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return self._call("__iter__")  # type: ignore[no-any-return]  # a ChunkedIterator

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self._call("__getitem__", slice(None)))  # type: ignore[no-any-return]

    def insert(self, index: int, value: Any) -> None:
        self._call("insert", index, value)

    def append(self, value: Any) -> None:
        self._call("append", value)

    def extend(self, values: Iterable[Any]) -> None:
        self._call("extend", _wire_iterable(values, self, keys=False))

    def pop(self, index: int = -1) -> Any:
        return self._call("pop", index)

    def remove(self, value: Any) -> None:
        self._call("remove", value)

    def index(self, value: Any, *args: Any) -> int:
        return self._call("index", value, *args)  # type: ignore[no-any-return]

    def count(self, value: Any) -> int:
        return self._call("count", value)  # type: ignore[no-any-return]

    def reverse(self) -> None:
        self._call("reverse")

    def clear(self) -> None:
        self._call("clear")

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        """Sort in place. The server sorts, unless there is a ``key`` (which never runs
        remotely) or values only this side can order (pickled ones, in nested lists too):
        then the list is read, sorted here and written back under its per-object lock."""
        if key is None:
            try:
                # Shoal's own list: sorts, or answers True when this side must.
                if self._call("_sort_or_defer", reverse) is not True:
                    return
            except RemoteError:
                # A registered type's list (no such method): its own sort, reverse by name
                # (list.sort takes no positional argument).
                self._callmethod("sort", (), {"reverse": reverse})
                return
        with self.locked():
            current = self._call("__getitem__", slice(None))
            if key is None:
                # Ordered by a plain copy: nested shared lists compare as the lists they stand
                # for without a round trip per comparison, and stay the same objects.
                plain = self._call("copy")
                order = sorted(range(len(current)), key=plain.__getitem__, reverse=reverse)
                current = [current[i] for i in order]
            else:
                current = sorted(current, key=key, reverse=reverse)
            self._call("__setitem__", slice(None), current)

    def copy(self) -> list[Any]:
        """A plain, deep, local copy."""
        return self._call("copy")  # type: ignore[no-any-return]

    def __iadd__(self, values: Iterable[Any]) -> ListProxy:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, n: int) -> ListProxy:
        self._call("__imul__", n)
        return self

    # + as a local list's: on the list itself, so that only a list (or a shared one) is taken,
    # with Python's own errors for the rest ((2,), "ab"); += takes any iterable (extend).
    def __add__(self, other: Any) -> Any:
        if isinstance(other, ListProxy):
            other = other[:]
        return self._call("__getitem__", slice(None)) + other

    def __radd__(self, other: Any) -> Any:
        return other + self._call("__getitem__", slice(None))

    def __mul__(self, n: int) -> list[Any]:
        return self._call("__getitem__", slice(None)) * n  # type: ignore[no-any-return]

    __rmul__ = __mul__

    def _plain(self, other: Any) -> Any:
        return other.copy() if isinstance(other, ListProxy) else other

    def __eq__(self, other: object) -> bool:
        return self.copy() == self._plain(other)  # type: ignore[no-any-return]

    def __lt__(self, other: Any) -> bool:
        return self.copy() < self._plain(other)  # type: ignore[no-any-return]

    def __le__(self, other: Any) -> bool:
        return self.copy() <= self._plain(other)  # type: ignore[no-any-return]

    def __gt__(self, other: Any) -> bool:
        return self.copy() > self._plain(other)  # type: ignore[no-any-return]

    def __ge__(self, other: Any) -> bool:
        return self.copy() >= self._plain(other)  # type: ignore[no-any-return]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return _guarded_repr(self, lambda: repr(self.copy()))

    __str__ = __repr__


def _own_repr(proxy: BaseProxy, render: Callable[[], str]) -> str:
    """``render()``, which asks shoal's own type; for a registered type's object (proxied with
    this class) the object's own repr, as Manager shows."""
    try:
        return render()
    except RemoteError:
        return BaseProxy.__str__(proxy)


class NamespaceProxy(BaseProxy):
    """A shared namespace: ``ns.x = 1`` from one process, ``ns.x`` from another."""

    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, name: str) -> Any:
        if name[0] == "_":
            return object.__getattribute__(self, name)
        return self._call("__getattribute__", name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name[0] == "_":
            object.__setattr__(self, name, value)
        else:
            self._call("__setattr__", name, value)

    def __delattr__(self, name: str) -> None:
        if name[0] == "_":
            object.__delattr__(self, name)
        else:
            self._call("__delattr__", name)

    def __repr__(self) -> str:
        return _guarded_repr(self, lambda: _own_repr(self, lambda: "Namespace({})".format(
            ", ".join(sorted(f"{k}={v!r}" for k, v in self._call("_dict").items()
                             if not k.startswith("_"))))), "Namespace(...)")

    __str__ = __repr__


class ValueProxy(BaseProxy):
    """A shared value: ``v.value``, ``v.get()``, ``v.set(x)``."""

    _exposed_ = ("get", "set")                  # Manager's

    def get(self) -> Any:
        return self._call("get")

    def set(self, value: Any) -> None:
        self._call("set", value)

    value = property(get, set)

    def __repr__(self) -> str:
        return _guarded_repr(self, lambda: _own_repr(
            self, lambda: f"Value({self._call('_typecode')!r}, {self.get()!r})"), "Value(...)")

    __str__ = __repr__


class ArrayProxy(BaseProxy):
    """A shared ``array.array``."""

    _exposed_ = ("__len__", "__getitem__", "__setitem__", "tolist")  # (Manager's, and tolist)

    def __len__(self) -> int:
        return self._call("__len__")  # type: ignore[no-any-return]

    def __getitem__(self, index: Any) -> Any:
        return self._call("__getitem__", index)

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice) and type(value) not in (list, tuple):
            value = list(value)
        self._call("__setitem__", index, value)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call("tolist"))

    def tolist(self) -> list[Any]:
        return self._call("tolist")  # type: ignore[no-any-return]

    def _getvalue(self) -> Any:
        """A local ``array.array``, as Manager's."""
        try:
            typecode = self._call("_typecode")
        except RemoteError:                 # a registered type's object: it comes as it is
            return BaseProxy._getvalue(self)
        return array.array(typecode, self.tolist())

    def __repr__(self) -> str:
        return _own_repr(self, lambda: f"array({self._call('_typecode')!r}, {self.tolist()!r})")

    __str__ = __repr__


class ChunkedIterator(BaseProxy):
    """A live iterator in the server over a shared container, fetched a chunk at a time (the
    first chunk on the first ``next``, so changes made before it are seen, as locally)."""

    _buffer: list[Any]
    _chunk = 1

    def __iter__(self) -> ChunkedIterator:
        return self

    def __next__(self) -> Any:
        buf = self.__dict__.get("_buffer")
        if not buf:
            size = self._chunk
            self._chunk = min(size * 8, 1024)
            buf = self._buffer = self._call("next_chunk", size)
            buf.reverse()
            if not buf:
                raise StopIteration
        return buf.pop()


class Pending:
    """The result of a call made in a pipeline: ``.value`` once the pipeline has ended."""

    __slots__ = ("_pipeline", "_index")

    def __init__(self, pipeline: Pipeline, index: int) -> None:
        self._pipeline, self._index = pipeline, index

    @property
    def value(self) -> Any:
        """The call's result (its exception raised if it failed); waits for it if needed."""
        status, value = self._pipeline._reply(self._index)
        if status:
            self._pipeline._conn.raise_reply(status, value)  # type: ignore[union-attr]
        return value


class Pipeline:
    """Calls sent without waiting for each reply; see ``shoal.pipeline``."""

    window = 8192      # calls in flight at most; older replies are collected past it
    chunk = 64 * 1024  # bytes of requests buffered before they are sent
    batch = 1000       # obj[key] = value calls sent as one request at most

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._encode: Any = None
        self._ids: Any = None             # the connection's request ids
        self._batch: list[bytes] = []     # encoded [key, value] of obj[key] = value calls in a row
        self._batch_oid = -1              # ... on this object
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._keep: list[BaseProxy] = []  # proxies in the requests not yet sent
        self._rids: list[int] = []        # every call's request id, in order
        self._replies: list[Any] = []     # (status, value) of the calls collected so far
        self._taken: list[Any] = []       # their replies as taken (Connection.results)
        self._error: tuple[int, Any] | None = None
        self._given_up = False            # its end was interrupted: see __exit__

    def __call__(self, proxy: BaseProxy) -> PipelinedProxy:
        """A view of ``proxy`` whose calls go through this pipeline."""
        conn = proxy._conn
        if conn.closed:
            conn = proxy._reconnect()
        if self._conn is None:
            self._conn = conn
            self._encode = conn.new_codec(keep=self._keep.append).encode
            self._ids = conn.ids
        elif self._conn is not conn:
            raise ValueError("one pipeline carries the calls of one server's objects")
        return PipelinedProxy(self, proxy)

    def set(self, oid: int, key: Any, value: Any) -> None:
        """Queue ``obj[key] = value``. Such calls in a row on one object travel together as
        one request (``_setitems``), which runs each as it would run alone, in order."""
        if self._batch_oid != oid:
            if self._batch:
                self._flush_batch()
            self._batch_oid = oid
        self._batch.append(self._encode([key, value]))   # an unsendable value raises here
        if len(self._batch) >= self.batch:
            self._flush_batch()

    def _flush_batch(self) -> None:
        pairs, self._batch = self._batch, []
        n = len(pairs)
        count = (bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
                 if n < 65536 else b"\xdd" + n.to_bytes(4, "big"))
        body = b"".join([b"\x93", self._encode(self._batch_oid), self._encode("_setitems"),
                         count, *pairs])       # msgpack of [oid, "_setitems", [[k, v], ...]]
        self._queue(body)

    def call(self, oid: int, name: str, args: list[Any]) -> int:
        """Queue a call; return its index in this pipeline."""
        if self._batch:
            self._flush_batch()
        return self._queue(self._encode([oid, name, args]))

    def _queue(self, body: bytes) -> int:
        rid = next(self._ids) & 0xFFFFFFFF or self._conn.next_rid()  # type: ignore[union-attr]
        self._buffer.append(_pack_header(len(body), rid) + body)
        self._buffered += len(body) + 8
        self._rids.append(rid)
        if self._buffered >= self.chunk:
            self._send()
            if len(self._rids) - len(self._replies) > self.window:
                self._collect(len(self._rids) - self.window // 2)
        return len(self._rids) - 1

    def _send(self) -> None:
        if self._batch:
            self._flush_batch()
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            self._conn.send_frames(data)  # type: ignore[union-attr]
            self._keep.clear()

    def _collect(self, upto: int) -> None:
        """Collect the replies of calls up to index ``upto`` (excluded)."""
        if self._given_up:
            raise RuntimeError("this pipeline's end was interrupted: the replies it had not "
                               "collected were dropped")
        self._send()
        done = len(self._replies)
        if upto > done:
            # The replies go from the connection into _taken with no step between that an
            # exception could come in; so one (a signal handler's) that interrupts this loses
            # none, and the next collect goes on where this one stopped.
            conn, taken = self._conn, self._taken
            taken += [None] * (len(self._rids) - len(taken))
            conn.results(self._rids, taken, done, upto)  # type: ignore[union-attr]
            replies = self._replies
            for i in range(len(replies), upto):
                r = conn.result(taken[i])                   # type: ignore[union-attr]
                if r[0] and self._error is None:
                    self._error = r
                replies.append(r)
                taken[i] = True                  # (decoded: its bytes are not needed)

    def _reply(self, index: int) -> Any:
        if index >= len(self._replies):
            self._collect(index + 1)
        return self._replies[index]

    def sync(self) -> None:
        """Wait for every call sent so far; raise the first error among them."""
        if self._batch:
            self._flush_batch()             # the last writes get their request id first
        self._collect(len(self._rids))
        error, self._error = self._error, None
        if error is not None:
            self._conn.raise_reply(*error)  # type: ignore[union-attr]

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, t: Any, v: Any, tb: Any) -> None:
        if self._conn is None:
            return
        # An error in the block: every reply is still read, and the block's error goes on
        # (rather than one that came out of this end).
        try:
            self.sync()
        except BaseException:
            self._given_up = True            # (first, with no call before it)
            self._give_up()
            if t is None:
                raise

    def _give_up(self) -> None:
        """The end was interrupted (Ctrl-C, a signal handler's exception), or failed: the
        replies not yet taken are dropped when they come, not kept by the connection for
        ever."""
        self._given_up = True
        conn, taken = self._conn, self._taken
        assert conn is not None
        for i in range(len(self._replies), len(self._rids)):
            if i >= len(taken) or taken[i] is None:
                conn.drop_reply(self._rids[i])


class PipelinedProxy:
    """``proxy`` seen through a pipeline: each call returns a ``Pending`` at once."""

    __slots__ = ("_pipeline", "_proxy", "_batched")

    def __init__(self, pipeline: Pipeline, proxy: BaseProxy) -> None:
        self._pipeline, self._proxy = pipeline, proxy
        self._batched = isinstance(proxy, (DictProxy, ListProxy, ArrayProxy))

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._batched:
            self._pipeline.set(self._proxy._id, key, value)
        else:
            self._pipeline.call(self._proxy._id, "__setitem__", [key, value])

    def __getitem__(self, key: Any) -> Pending:
        pipe = self._pipeline
        return Pending(pipe, pipe.call(self._proxy._id, "__getitem__", [key]))

    def __delitem__(self, key: Any) -> None:
        self._pipeline.call(self._proxy._id, "__delitem__", [key])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        pipe, oid = self._pipeline, self._proxy._id

        def call(*args: Any) -> Pending:
            return Pending(pipe, pipe.call(oid, name, list(args)))
        return call


def pipeline(*proxies: BaseProxy) -> Any:
    """Send many calls without waiting for each reply, and collect the replies once.

    ``with shoal.pipeline(d) as pd:`` gives a view of ``d`` whose calls return at once (a
    ``Pending`` each; its ``.value`` is there after the block); the block's end waits for every
    reply and raises the first error among them. Calls run in the order sent, each still atomic,
    but others' calls may come between them. Several proxies of one server:
    ``with shoal.pipeline(d, lst) as (pd, pl):``.

    Example::

        with shoal.pipeline(d) as pd:
            for i in range(100_000):
                pd[i] = i
            n = pd.incr("count")
        print(n.value)
    """
    for p in proxies:
        if not isinstance(getattr(p, "_conn", None), Connection):
            raise TypeError(f"shoal.pipeline takes proxies of a shoal server, not "
                            f"{type(p).__name__} (on Redis, use bulk calls: update, extend, "
                            f"get_many)")
    pipe = Pipeline()
    views = [pipe(p) for p in proxies]
    return _PipelineContext(pipe, views[0] if len(views) == 1 else tuple(views))


class _PipelineContext:
    def __init__(self, pipe: Pipeline, views: Any) -> None:
        self._pipe, self._views = pipe, views

    def __enter__(self) -> Any:
        return self._views

    def __exit__(self, *exc: Any) -> None:
        self._pipe.__exit__(*exc)


def _method(name: str) -> Any:
    def call(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:    # (a keyword may be "self")
        return self._callmethod(name, args, kwds)
    call.__name__ = name
    return call


_proxy_type_cache: dict[tuple[str, tuple[str, ...], bool], type[BaseProxy]] = {}


def make_proxy_type(name: str, exposed: Iterable[str], auto: bool = False) -> type[BaseProxy]:
    """A proxy class forwarding the methods ``exposed`` (Manager's MakeProxyType, without exec).
    ``auto``: an AutoProxy's, which pickles as a call of ``_rebuild_auto``."""
    exposed = tuple(exposed)
    key = (name, exposed, auto)
    cls = _proxy_type_cache.get(key)
    if cls is None:
        ns: dict[str, Any] = {m: _method(m) for m in exposed}
        ns["_exposed_"] = exposed
        if auto:
            ns["_auto"] = True
        cls = _proxy_type_cache[key] = type(name, (BaseProxy,), ns)
    return cls


def AutoProxy(token: Token, serializer: Any = None, manager: Any = None, authkey: Any = None,
              exposed: Any = None, incref: bool = True, manager_owned: bool = False) -> BaseProxy:
    """A proxy for a registered type with no proxy class of its own (asks the server what the
    object exposes when ``exposed`` is not given)."""
    if authkey is None:
        authkey = manager._authkey if manager is not None else process.current_process().authkey
    if exposed is None:
        conn = get_connection(token.address, bytes(authkey),
                              serializer if serializer in ("pickle", "xmlrpclib") else "pickle")
        exposed = conn.call(0, "exposed", [token.id])
    cls = make_proxy_type(f"AutoProxy[{token.typeid}]", exposed, auto=True)
    return cls(token, serializer, manager=manager, authkey=authkey, exposed=exposed,
               incref=incref)


def _rebuild_auto(token: Token, authkey: bytes | None, exposed: Any, serializer: str,
                  tls: Any = None, instance: bytes | None = None) -> BaseProxy:
    """An AutoProxy from a pickle: its class is made on the fly, so the pickle names this."""
    authkey = _unpickled_here(token, authkey, serializer, tls, instance)
    cls = make_proxy_type(f"AutoProxy[{token.typeid}]", exposed, auto=True)
    return cls(token, serializer, authkey=authkey, exposed=exposed, tls=tls)


AutoProxy._from_ref = lambda conn, oid, typeid: _auto_from_ref(conn, oid, typeid)  # type: ignore[attr-defined]


def _auto_from_ref(conn: Connection, oid: int, typeid: str) -> BaseProxy:
    exposed = conn.call(0, "exposed", [oid])
    return make_proxy_type(f"AutoProxy[{typeid}]", exposed, auto=True)._from_ref(conn, oid, typeid)


def unwrap(x: Any) -> Any:
    """A plain, deep, local copy of ``x``: proxies of containers become dicts and lists."""
    if isinstance(x, (DictProxy, ListProxy)):
        return unwrap(x.copy())
    if isinstance(x, ValueProxy):
        return unwrap(x.get())
    if isinstance(x, ArrayProxy):
        return x.tolist()
    if isinstance(x, NamespaceProxy):
        import types
        return types.SimpleNamespace(**unwrap(x._call("_dict")))
    t = type(x)
    if t is dict:
        return {k: unwrap(v) for k, v in x.items()}
    if t is list:
        return [unwrap(v) for v in x]
    if t is tuple:
        return tuple(unwrap(v) for v in x)
    return x


_client.proxy_types.update({
    "iterator": ChunkedIterator, "dict": DictProxy, "list": ListProxy, "Namespace": NamespaceProxy, "Value": ValueProxy,
    "Array": ArrayProxy,
})
_client.default_proxy_factory.append(_auto_from_ref)
