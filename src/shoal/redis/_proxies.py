"""Proxies of containers on Redis: dict, list, Namespace, Value.

They subclass shoal's own proxies (``isinstance(p, shoal.DictProxy)`` holds on both backends,
and ``shoal.unwrap`` works), and answer the same call names through ``_call``, each call one run
of the Lua script. A dict is a Redis hash of encoded key -> encoded value; a list a Redis list;
a Namespace a hash like a dict; a Value a string key. Nested containers are keys of their own,
referenced from their parent.

Where Python's equality is wider than equal bytes (``1 == 1.0 == True``, a dict equal to a nested
container), the Lua side compares bytes and the client finishes the job: ``cas`` retries with the
stored bytes once they compare equal here, ``remove``/``index``/``count``/``in`` look at the
decoded items unless the value is a str, bytes or None (whose equality is their bytes').
"""

from __future__ import annotations

import operator
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from .._objects import update_pair
from .._proxies import DictProxy, ListProxy, NamespaceProxy, Token, ValueProxy
from .._proxies import ObjectLockContext as _CoreLockContext
from ._backend import Backend, Plan, Spec, get_backend
from ._scripts import FALLBACK

__all__ = [
    "PROXY_TYPES",
    "RedisDictProxy",
    "RedisListProxy",
    "RedisNamespaceProxy",
    "RedisProxy",
    "RedisValueProxy",
    "build_plain",
]

#: The most items ``list *= n`` may make (Python raises MemoryError only far beyond): one script
#: run copies them, and Redis serves nobody else meanwhile (about 0.4 s for this many here; a
#: later clear() of them about 1 s).
MAX_REPEAT_ITEMS = 2**22

_EXACT = (str, bytes, type(None))   # types whose equality is equality of their encodings
_NONE = b"\xc0"


def _rebuild(cls: type[RedisProxy], spec: Spec, key: str, typeid: str) -> Any:
    return cls._bind(get_backend(spec), key, typeid)


class RedisProxy:
    """What every proxy of an object on Redis has: its backend, key and typeid."""

    _backend: Backend
    _redis_key: str
    _typeid: str
    _tracked = False                      # shoal.BaseProxy's reference tracking: not used here

    @classmethod
    def _bind(cls, backend: Backend, key: str, typeid: str) -> Any:
        self = cls.__new__(cls)  # no __init__: a proxy is bound, not made
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "_redis_key", key)
        object.__setattr__(self, "_typeid", typeid)
        object.__setattr__(self, "_id", key)
        object.__setattr__(self, "_address", backend.spec)
        object.__setattr__(self, "_token", Token(typeid, backend.spec, key))  # type: ignore[arg-type]
        return self

    def __init__(self, *args: Any, **kw: Any) -> None:
        raise TypeError("Redis proxies are made by a RedisManager (shoal.redis.connect)")

    @property
    def _b(self) -> Backend:
        b = self._backend
        if b.stale:                      # forked, or closed: use this process's current one
            b = get_backend(b.spec)
            object.__setattr__(self, "_backend", b)
        return b

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self._backend.spec, self._redis_key, self._typeid))

    def __del__(self) -> None:
        pass

    def _callmethod(self, methodname: str, args: Any = (), kwds: dict[str, Any] | None = None) -> Any:
        if kwds:
            if methodname == "update":
                return self._call("update", *args, kwds)
            raise TypeError(f"{methodname}() takes no keyword arguments")
        return self._call(methodname, *args)

    def _call(self, name: str, *args: Any) -> Any:
        fn = self._CALLS.get(name)  # type: ignore[attr-defined]
        if fn is None:
            raise AttributeError(f"a shared {self._typeid} on Redis has no method {name!r}")
        return fn(self, *args)

    def locked(self) -> ObjectLockContext:
        """``with proxy.locked(): ...``: exclusive use of this object and of the containers made
        nested in it; other processes' calls on them wait until the block ends. Re-entrant.
        The lock is held in the name of this process's lease: if the process dies, it is free
        again within the lease, and the next ``locked()`` says ``owner_died``."""
        return ObjectLockContext(self)

    def _getvalue(self) -> Any:
        return self._call("_getvalue")

    # helpers shared by the containers

    def _run(self, op: str, *args: Any) -> list[Any]:
        return self._b.call(self._redis_key, op, *args)

    def _store(self, value: Any, plan: Plan) -> bytes:
        return self._b.store(value, self._redis_key, plan)


_local_locks: dict[str, threading.RLock] = {}
_local_locks_guard = threading.Lock()


class ObjectLockContext(_CoreLockContext):
    """What ``proxy.locked()`` returns on Redis."""

    owner_died = False

    def __init__(self, proxy: RedisProxy) -> None:  # not super()'s: that one wants a connection
        self._rproxy = proxy
        with _local_locks_guard:
            lock = _local_locks.get(proxy._redis_key)
            if lock is None:
                lock = _local_locks[proxy._redis_key] = threading.RLock()
        self._local = lock
        self._token = ""

    def __enter__(self) -> ObjectLockContext:
        self._local.acquire()
        try:
            b = self._rproxy._b
            self._token = b.token
            r = b.call(self._rproxy._redis_key, "oacquire")
            self.owner_died = bool(r[1])
        except BaseException:
            self._local.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._rproxy._b.call(self._rproxy._redis_key, "orelease", self._token)
        finally:
            self._local.release()


def build_plain(backend: Backend, objects: list[Any]) -> Any:
    """Plain containers from a ``dump`` (the object first, then every dict and list it reaches
    through references; a container met twice is the same plain object, cycles included)."""
    from ._codec import RedisCodec
    made: dict[str, Any] = {}
    for key, typeid, _ in objects:
        made[key.decode()] = [] if typeid == b"list" else {}

    def make_ref(key: str, typeid: str) -> Any:
        found = made.get(key)
        return found if found is not None else backend.proxy(key, typeid)
    codec = RedisCodec(backend._ref_of, make_ref)
    decode, decode_key = codec.decode, backend.key_codec().decode
    for key, typeid, items in objects:
        target = made[key.decode()]
        if typeid == b"list":
            target.extend(decode(v) for v in items)
        elif typeid == b"Value":
            return decode(items[0])
        else:
            for i in range(0, len(items), 2):
                target[decode_key(items[i])] = decode(items[i + 1])
    return made[objects[0][0].decode()]


def _taken(proxy: RedisProxy, r: list[Any]) -> Any:
    """A value taken out of a container: a nested container it was the last to refer to comes
    back as a plain copy (it no longer exists on Redis)."""
    if len(r) > 2 and r[2]:
        return build_plain(proxy._b, r[2])
    return proxy._b.decode(r[1])


# -- dict -------------------------------------------------------------------------------------

def _d_getitem(self: RedisProxy, key: Any) -> Any:
    b = self._b
    r = b.call(self._redis_key, "get", b.encode_key(key))
    if r[1] is None:
        raise KeyError(key)
    return b.decode(r[1])


def _d_get(self: RedisProxy, key: Any, default: Any = None) -> Any:
    b = self._b
    r = b.call(self._redis_key, "get", b.encode_key(key))
    return default if r[1] is None else b.decode(r[1])


def _d_setitem(self: RedisProxy, key: Any, value: Any) -> None:
    b = self._b
    plan = Plan()
    raw = b.store(value, self._redis_key, plan)
    b.call(self._redis_key, "set", b.encode_key(key), raw, plan.packed())


def _d_delitem(self: RedisProxy, key: Any) -> None:
    b = self._b
    try:
        b.call(self._redis_key, "del", b.encode_key(key))
    except KeyError:
        raise KeyError(key) from None


def _d_contains(self: RedisProxy, key: Any) -> bool:
    b = self._b
    return bool(b.call(self._redis_key, "has", b.encode_key(key))[1])


def _d_len(self: RedisProxy) -> int:
    return self._run("len")[1]  # type: ignore[no-any-return]


def _d_keys(self: RedisProxy) -> list[Any]:
    decode = self._b.key_codec().decode
    return [decode(k) for k in self._run("keys")[1]]


def _d_values(self: RedisProxy) -> list[Any]:
    decode = self._b.decode
    return [decode(v) for v in self._run("vals")[1]]


def _d_items(self: RedisProxy) -> list[tuple[Any, Any]]:
    b = self._b
    decode, decode_key = b.decode, b.key_codec().decode
    flat = self._run("items")[1]
    return [(decode_key(flat[i]), decode(flat[i + 1])) for i in range(0, len(flat), 2)]


def _d_get_many(self: RedisProxy, keys: Any, default: Any = None) -> list[Any]:
    b = self._b
    encode_key, decode = b.encode_key, b.decode
    raw = self._run("getm", *[encode_key(k) for k in keys])[1]
    return [default if v is None else decode(v) for v in raw]


def _d_pop(self: RedisProxy, key: Any, *default: Any) -> Any:
    if len(default) > 1:
        raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
    b = self._b
    r = b.call(self._redis_key, "pop", b.encode_key(key))
    if r[1] is None:
        if default:
            return default[0]
        raise KeyError(key)
    return _taken(self, r)


def _d_popitem(self: RedisProxy) -> tuple[Any, Any]:
    r = self._run("popitem")
    if r[1] is None:
        raise KeyError("popitem(): dictionary is empty")
    b = self._b
    value = build_plain(b, r[3]) if r[3] else b.decode(r[2])
    return b.key_codec().decode(r[1]), value


def _d_setdefault(self: RedisProxy, key: Any, default: Any = None) -> Any:
    b = self._b
    plan = Plan()
    raw = b.store(default, self._redis_key, plan)
    r = b.call(self._redis_key, "setdefault", b.encode_key(key), raw, plan.packed())
    return b.decode(r[1])


def _pairs(other: Any, kw: dict[str, Any] | None) -> list[tuple[Any, Any]]:
    if isinstance(other, (Mapping, DictProxy)):
        pairs = list(other.items())
    else:
        pairs = [update_pair(pair, i) for i, pair in enumerate(other)]
    if kw:
        pairs.extend(kw.items())
    return pairs


def _d_update(self: RedisProxy, other: Any = (), kw: dict[str, Any] | None = None) -> None:
    b = self._b
    encode_key = b.encode_key
    last: dict[bytes, Any] = {}
    for k, v in _pairs(other, kw):
        last[encode_key(k)] = v           # the last value of a key wins, as in dict.update
    plan = Plan()
    args: list[bytes] = []
    for field, v in last.items():
        args.append(field)
        args.append(b.store(v, self._redis_key, plan))
    b.call(self._redis_key, "update", plan.packed(), *args)


def _clear(self: RedisProxy) -> None:
    self._run("clear")


def _copy(self: RedisProxy) -> Any:
    return build_plain(self._b, self._run("dump")[1])


def _iter(self: RedisProxy) -> Iterator[Any]:
    return iter(self._call("keys"))


def _d_incr(self: RedisProxy, key: Any, by: Any = 1, default: Any = 0) -> Any:
    b = self._b
    if type(by) not in (int, float):
        raise TypeError(f"incr needs numbers: the increment is {type(by).__name__}")
    field = b.encode_key(key)
    r = b.call(self._redis_key, "incr", field, b.encode(by), b.encode(default))
    if r[0] != FALLBACK:
        return b.decode(r[1])
    while True:                 # a big int, or not a number: computed here, written with cas
        raw = b.call(self._redis_key, "get", field)[1]
        current = default if raw is None else b.decode(raw)
        if type(current) not in (int, float):
            raise TypeError(f"incr needs numbers: the value at {key!r} is "
                            f"{type(current).__name__}, the increment is {type(by).__name__}")
        new = current + by
        mode, expected = ("m", b"") if raw is None else ("b", raw)
        if b.call(self._redis_key, "cas", field, mode, expected, b.encode(new), b"")[1] == 1:
            return new


def _d_cas(self: RedisProxy, key: Any, expected: Any, new: Any) -> bool:
    b = self._b
    field = b.encode_key(key)
    plan = Plan()
    raw_new = b.store(new, self._redis_key, plan)
    packed = plan.packed()
    if expected is None:
        mode, want = "n", b""
    elif _has_nan(expected):
        return False            # nothing stored equals it (see _l_contains)
    else:
        mode, want = "b", b.encode(expected)
    while True:
        r = b.call(self._redis_key, "cas", field, mode, want, raw_new, packed)
        if r[1] == 1:
            return True
        current = r[2]
        if current is None:
            return False                  # missing: equals only None, which mode 'n' covered
        if want == current or b.decode(current) != expected:
            return False
        mode, want = "b", current         # equal here, other bytes: try again with them


_DICT_CALLS = {
    "__getitem__": _d_getitem, "__setitem__": _d_setitem, "__delitem__": _d_delitem,
    "__contains__": _d_contains, "__len__": _d_len, "__iter__": _iter, "keys": _d_keys,
    "values": _d_values, "items": _d_items, "get": _d_get, "get_many": _d_get_many,
    "pop": _d_pop, "popitem": _d_popitem, "setdefault": _d_setdefault, "update": _d_update,
    "clear": _clear, "copy": _copy, "_getvalue": _copy, "incr": _d_incr, "cas": _d_cas,
}


class RedisDictProxy(RedisProxy, DictProxy):
    """A shared dict on Redis (a hash). Key order is the hash's: insertion order while Redis
    keeps it a listpack, unordered for good once it has more than 128 fields or one key or value
    longer than 64 bytes (``hash-max-listpack-entries``, ``hash-max-listpack-value``).
    Iteration reads a snapshot of the keys."""

    _CALLS = _DICT_CALLS


# -- Namespace ----------------------------------------------------------------------------------

def _ns_get(self: RedisProxy, name: str) -> Any:
    b = self._b
    r = b.call(self._redis_key, "get", b.encode_key(name))
    if r[1] is None:
        raise AttributeError(f"'Namespace' object has no attribute {name!r}")
    return b.decode(r[1])


def _ns_set(self: RedisProxy, name: str, value: Any) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be string")
    _d_setitem(self, name, value)


def _ns_del(self: RedisProxy, name: str) -> None:
    try:
        _d_delitem(self, name)
    except KeyError:
        raise AttributeError(f"'Namespace' object has no attribute {name!r}") from None


class RedisNamespaceProxy(RedisProxy, NamespaceProxy):
    """A shared Namespace on Redis (a hash of attribute name -> value)."""

    _CALLS = {"__getattribute__": _ns_get, "__setattr__": _ns_set, "__delattr__": _ns_del,
              "_dict": _copy, "_getvalue": _copy}


# -- Value --------------------------------------------------------------------------------------

def _v_get(self: RedisProxy) -> Any:
    return self._b.decode(self._run("vget")[1])


def _v_set(self: RedisProxy, value: Any) -> None:
    plan = Plan()
    raw = self._store(value, plan)
    self._run("vset", raw, plan.packed())


def _v_typecode(self: RedisProxy) -> Any:
    b = self._b
    with b.errors():
        raw: bytes | None = b.redis.hget(self._redis_key + ":meta", "typecode")  # type: ignore[assignment]
    return None if raw is None else b.decode(raw)


class RedisValueProxy(RedisProxy, ValueProxy):
    """A shared Value on Redis (a string key)."""

    _CALLS = {"get": _v_get, "set": _v_set, "_typecode": _v_typecode, "_getvalue": _v_get}


# -- list ---------------------------------------------------------------------------------------

def _bound(x: Any) -> str:
    if x is None:
        return ""
    return str(max(min(operator.index(x), 2**62), -2**62))


def _l_getitem(self: RedisProxy, index: Any) -> Any:
    b = self._b
    if isinstance(index, slice):
        raw = self._run("lslice", _bound(index.start), _bound(index.stop), _bound(index.step))[1]
        return [b.decode(v) for v in raw]
    return b.decode(self._run("lget", _bound(index))[1])


def _l_setitem(self: RedisProxy, index: Any, value: Any) -> None:
    plan = Plan()
    if isinstance(index, slice):
        if isinstance(value, RedisListProxy):
            value = value._call("__getitem__", slice(None))
        raws = [self._store(v, plan) for v in value]
        self._run("lsetslice", _bound(index.start), _bound(index.stop), _bound(index.step),
                  plan.packed(), *raws)
        return
    raw = self._store(value, plan)
    self._run("lset", _bound(index), raw, plan.packed())


def _l_delitem(self: RedisProxy, index: Any) -> None:
    if isinstance(index, slice):
        self._run("ldelslice", _bound(index.start), _bound(index.stop), _bound(index.step))
    else:
        self._run("ldel", _bound(index))


def _l_len(self: RedisProxy) -> int:
    return self._run("llen")[1]  # type: ignore[no-any-return]


def _l_all(self: RedisProxy) -> list[bytes]:
    return self._run("lall")[1]  # type: ignore[no-any-return]


def _has_nan(value: Any) -> bool:
    """Does ``value`` hold a NaN (which equals nothing, its own bytes' copy included)?"""
    t = type(value)
    if t is float:
        return bool(value != value)
    if t in (list, tuple, set, frozenset):
        return any(_has_nan(v) for v in value)
    if t is dict:
        return any(_has_nan(k) or _has_nan(v) for k, v in value.items())
    return False


def _l_contains(self: RedisProxy, value: Any) -> bool:
    b = self._b
    if _has_nan(value):
        return False            # as the list it stands for: its items are copies, never it
    if self._run("lhas", b.encode(value))[1]:
        return True
    if type(value) in _EXACT:
        return False
    decode = b.decode
    return any(decode(v) == value for v in _l_all(self))


def _l_extend(self: RedisProxy, values: Any) -> None:
    if isinstance(values, RedisListProxy):
        values = values._call("__getitem__", slice(None))
    plan = Plan()
    raws = [self._store(v, plan) for v in values]
    if raws:
        self._run("lextend", plan.packed(), *raws)


def _l_append(self: RedisProxy, value: Any) -> None:
    plan = Plan()
    raw = self._store(value, plan)
    self._run("lextend", plan.packed(), raw)


def _l_insert(self: RedisProxy, index: Any, value: Any) -> None:
    plan = Plan()
    raw = self._store(value, plan)
    self._run("linsert", _bound(index), raw, plan.packed())


def _l_pop(self: RedisProxy, index: Any = -1) -> Any:
    return _taken(self, self._run("lpop", _bound(index)))


def _l_remove(self: RedisProxy, value: Any) -> None:
    b = self._b
    if type(value) in _EXACT:
        if not self._run("lremove", b.encode(value))[1]:
            raise ValueError("list.remove(x): x not in list")
        return
    while True:
        items = _l_all(self)
        for i, raw in enumerate(items):
            if b.decode(raw) == value:
                if self._run("ldelat_if", str(i), raw)[1]:
                    return
                break                     # changed meanwhile: look again
        else:
            raise ValueError("list.remove(x): x not in list")


def _l_index(self: RedisProxy, value: Any, *args: Any) -> int:
    b = self._b
    if type(value) in _EXACT and not args:
        i = self._run("lindex", b.encode(value))[1]
        if i < 0:
            raise ValueError(f"{value!r} is not in list")
        return i  # type: ignore[no-any-return]
    return [b.decode(v) for v in _l_all(self)].index(value, *args)


def _l_count(self: RedisProxy, value: Any) -> int:
    b = self._b
    if type(value) in _EXACT:
        return self._run("lcount", b.encode(value))[1]  # type: ignore[no-any-return]
    return [b.decode(v) for v in _l_all(self)].count(value)


def _l_reverse(self: RedisProxy) -> None:
    self._run("lreverse")


def _l_imul(self: RedisProxy, n: Any) -> None:
    n = operator.index(n)
    if not -sys.maxsize - 1 <= n <= sys.maxsize:
        raise OverflowError("cannot fit 'int' into an index-sized integer")  # as list's *=
    if n > MAX_REPEAT_ITEMS:
        # Refused before the script, which could not even count to such an n exactly.
        length = _l_len(self)
        if length:
            raise MemoryError(f"a list on Redis can be repeated to at most {MAX_REPEAT_ITEMS} "
                              f"items, not {length} * {n}")
        return
    self._run("limul", str(n), str(MAX_REPEAT_ITEMS))


def _l_sort(self: RedisProxy, reverse: bool = False, key: Any = None) -> None:
    b = self._b
    while True:
        raws = _l_all(self)
        decoded = [b.decode(v) for v in raws]
        keyed = decoded if key is None else [key(v) for v in decoded]
        order = sorted(range(len(raws)), key=keyed.__getitem__, reverse=bool(reverse))
        if self._run("lreplace", str(len(raws)), *raws, *[raws[i] for i in order])[1]:
            return


_LIST_CALLS = {
    "__getitem__": _l_getitem, "__setitem__": _l_setitem, "__delitem__": _l_delitem,
    "__len__": _l_len, "__contains__": _l_contains, "__iter__": lambda self: iter(
        _l_getitem(self, slice(None))), "append": _l_append, "extend": _l_extend,
    "__iadd__": _l_extend, "insert": _l_insert, "pop": _l_pop, "remove": _l_remove,
    "index": _l_index, "count": _l_count, "reverse": _l_reverse, "clear": _clear,
    "copy": _copy, "_getvalue": _copy, "__imul__": _l_imul, "sort": _l_sort,
}


class RedisListProxy(RedisProxy, ListProxy):
    """A shared list on Redis (a Redis list)."""

    _CALLS = _LIST_CALLS

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        """Sort in place: the items are compared here and the list replaced at once, retried
        if another client changed it meanwhile."""
        _l_sort(self, reverse, key)


PROXY_TYPES: dict[str, Any] = {
    "dict": RedisDictProxy, "list": RedisListProxy, "Namespace": RedisNamespaceProxy,
    "Value": RedisValueProxy,
}
