"""Shared objects as the server holds them: dict, list, Namespace, Value, Array, custom types.

Every method the wire may call is marked with ``@op(name)``; nothing else is reachable. Methods run
in the server's single loop thread, one at a time, so each is atomic with no lock. Values are kept
as plain Python objects (ints, strs, tuples, ``Opaque`` blobs ...) with no wrapper per entry; a
nested container is another shared object stored directly in its parent.
"""

from __future__ import annotations

import array
import builtins
import operator
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._codec import Opaque

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Shared", "SDict", "SList", "SNamespace", "SValue", "SArray", "SCustom", "op", "plain",
           "PENDING", "NATIVE_TYPES", "Plain"]

PENDING = object()   # an op's result meaning "the reply is sent later" (blocking primitives)
#: What a successful acquire returns when the previous holder died holding the lock.
OWNER_DIED = "owner-died"


class NoSuchMethod(Exception):
    """A call named a method the object does not have or does not expose (a RemoteError in the
    client, as in multiprocessing)."""
_LEAF = frozenset({int, str, float, bool, bytes, type(None)})
_NESTABLE = frozenset({dict, list})
# sys.getrefcount of a container's dict that only the container holds (its slot, the call's
# argument): more means a live iterator walks it.
_ONLY_OURS = 2


def op(*names: str, write: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as callable from the wire under ``names``; ``write`` marks one that may
    change the object (it goes to the journal when the server persists)."""
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._wire_names = names  # type: ignore[attr-defined]
        fn._writes = write  # type: ignore[attr-defined]
        return fn
    return mark


@op("_setitems", write=True)
def _setitems(self: Any, *pairs: Any) -> None:
    """``obj[k] = v`` calls that a pipeline sent together, ``[k, v]`` each: every one runs as
    it would alone, in order, and the first error is raised after all ran (as a pipeline
    reports it)."""
    error: Exception | None = None
    setitem = self.setitem
    for pair in pairs:
        try:
            if type(pair) is not list or len(pair) != 2:
                raise TypeError("malformed request: _setitems takes [key, value] pairs")
            setitem(pair[0], pair[1])
        except Exception as e:
            if error is None:
                error = e
    if error is not None:
        raise error


class Shared:
    """Base of every object in the server's table."""

    __slots__ = ("oid", "server", "parent", "guard", "__weakref__")
    typeid = "object"
    OPS: dict[str, Callable[..., Any]] = {}
    WRITES: frozenset[str] = frozenset()     # the wire names of the ops that may change it

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        ops = dict(cls.OPS)
        writes = set(cls.WRITES)
        for attr in vars(cls).values():
            for name in getattr(attr, "_wire_names", ()):
                ops[name] = attr
                if attr._writes:
                    writes.add(name)
        cls.OPS = ops
        cls.WRITES = frozenset(writes)

    def __init__(self, server: Server, parent: Shared | None = None) -> None:
        self.server = server
        self.oid = server.register(self)
        # The container this one was made in (by storing a plain dict or list), by id: a
        # per-object lock on an ancestor covers it. Not a reference, so no cycle.
        self.parent = parent.oid if parent is not None else -1
        self.guard: ObjectLock | None = None

    @op("_lock_acquire")
    def lock_acquire(self) -> Any:
        """Take this object's per-object lock (``with proxy.locked():``). The server's gate has
        already made any other holder's lock on it, or on a container around it, wait."""
        conn = self.server.current
        assert conn is not None
        g = self.guard
        if g is None:
            g = self.guard = ObjectLock()
        if g.owner is conn:
            g.count += 1
            return True
        g.owner, g.count, g.since = conn, 1, time.time()
        self.server.guarded.add(self)
        conn.involved.add(self)
        if g.died:
            g.died = False
            return OWNER_DIED
        return True

    @op("_lock_release")
    def lock_release(self) -> None:
        g = self.guard
        if g is None or g.owner is not self.server.current:
            raise RuntimeError("cannot release a per-object lock this client does not hold")
        g.count -= 1
        if g.count <= 0:
            self.server.unguard(self)

    def cancel(self, conn: Any, rid: int) -> bool:
        """Drop ``conn``'s request ``rid`` if it waits here (see ServerOps.cancel)."""
        g = self.guard
        if g is not None:
            for entry in g.queue:
                if rid and entry[0] is conn and entry[1] == rid:
                    g.queue.remove(entry)
                    conn.reply_error(rid, RuntimeError("cancelled"))
                    return True
        return False

    def client_gone(self, conn: Any, clean: bool) -> None:
        """The connection dropped (``clean``: its client ended normally): what it held or
        waited for here goes, its own (``drop_client``) first, then the per-object lock."""
        self.drop_client(conn, clean)
        g = self.guard
        if g is None:
            return
        # Its requests that wait here go, but for those sent without waiting: they were sent
        # (a put before the client died still lands when the lock is free).
        g.queue = type(g.queue)(q for q in g.queue if q[0] is not conn or not q[1])
        if g.owner is conn:
            g.died = not clean
            self.server.unguard(self)

    def drop_client(self, conn: Any, clean: bool) -> None:
        """What a type holds for a client beyond the per-object lock (see _sync)."""

    @classmethod
    def new(cls, server: Server, args: list[Any], kw: dict[str, Any]) -> Shared:
        """Make one from the arguments of ``manager.<typeid>(*args, **kw)``."""
        return cls(server, *args, **kw)

    def fallback(self, name: str) -> Callable[..., Any]:
        raise NoSuchMethod(f"shared {self.typeid} has no method {name!r}")

    def describe(self) -> str:
        return f"{self.typeid} #{self.oid}"

    def size(self) -> int:
        return 0


Shared.OPS = {name: fn for fn in vars(Shared).values() for name in getattr(fn, "_wire_names", ())}


class ObjectLock:
    """A per-object lock: its holder, its depth, and the requests of others waiting for it."""

    __slots__ = ("owner", "count", "queue", "died", "since")

    def __init__(self) -> None:
        self.owner: Any = None
        self.count = 0
        self.queue: deque[tuple[Any, int, bytes]] = deque()
        self.died = False
        self.since = 0.0


class Plain:
    """An op's result that goes as a plain deep copy (``copy()``): the server's encoder expands
    the shared dicts and lists in it as it meets them, without building the copy first."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def plain(v: Any, active: set[int] | None = None) -> Any:
    """A deep copy of ``v`` with shared dicts and lists turned into plain ones.

    A container met again inside itself stays a reference (it would otherwise never end).
    """
    t = type(v)
    if t in _LEAF:
        return v
    if t is SDict or t is SList:
        if active is None:
            active = set()
        if v.oid in active:
            return v
        active.add(v.oid)
        try:
            return plain(v.data, active)
        finally:
            active.discard(v.oid)
    if t is dict:
        # Leaves are copied as they are, without a call each (bulk copies of big dicts).
        leaf = _LEAF
        return {k: x if type(x) in leaf else plain(x, active) for k, x in v.items()}
    if t is list:
        leaf = _LEAF
        return [x if type(x) in leaf else plain(x, active) for x in v]
    if t is tuple:
        return tuple(plain(x, active) for x in v)
    return v


def _items(x: Any) -> Any:
    """The items of an iterable argument; a shared container passed by reference gives its own."""
    if isinstance(x, SList):
        return list(x.data)
    if isinstance(x, SDict):
        return list(x.data)
    if isinstance(x, (str, bytes, list, tuple, set, frozenset, dict)):
        return x
    raise TypeError(f"'{type(x).__name__}' object is not iterable")


def update_pair(pair: Any, i: int) -> tuple[Any, Any]:
    """Element ``i`` of a dict's update sequence as (key, value), with Python's errors (any
    iterable of two: a shared list too, here or a Redis one on the client)."""
    if isinstance(pair, (SList, SDict)):
        pair = list(pair.data)
    try:
        k, v = pair
    except TypeError:
        raise TypeError(f"cannot convert dictionary update sequence element #{i} to a "
                        f"sequence") from None
    except ValueError:
        raise ValueError(f"dictionary update sequence element #{i} has length "
                         f"{len(pair)}; 2 is required") from None
    return k, v


def _has_opaque(values: Iterable[Any], seen: set[int] | None = None) -> bool:
    """Does a value travel as pickled bytes, or one inside a tuple, list or shared list in it
    (what comparing the values compares), at any depth? Each list is looked into once: one
    may hold itself."""
    for v in values:
        t = type(v)
        if t is Opaque:
            return True
        if t is tuple or t is list or t is SList:
            if t is not tuple:
                if seen is None:
                    seen = set()
                if id(v) in seen:
                    continue
                seen.add(id(v))
            if _has_opaque(v.data if t is SList else v, seen):
                return True
    return False


def _client_names(message: str) -> str:
    """An error message about the server's nested containers, naming them as their clients know
    them ('SDict' -> 'dict')."""
    for cls in (SDict, SList, SNamespace, SValue, SArray):
        message = message.replace(f"'{cls.__name__}'", f"'{cls.typeid}'")
    return message


class SDict(Shared):
    __slots__ = ("data",)
    typeid = "dict"

    def __init__(self, server: Server, data: dict[Any, Any] | None = None,
                 parent: Shared | None = None) -> None:
        super().__init__(server, parent)
        share = server.share
        self.data = {k: share(v, self) for k, v in data.items()} if data else {}

    @classmethod
    def new(cls, server: Server, args: list[Any], kw: dict[str, Any]) -> Shared:
        if len(args) > 1:
            raise TypeError(f"dict expected at most 1 argument, got {len(args)}")
        data: dict[Any, Any] = {}
        if args:
            a = args[0]
            if isinstance(a, SDict):
                data = dict(a.data)
            elif type(a) is dict:
                data = a
            else:
                data = dict(update_pair(pair, i) for i, pair in enumerate(_items(a)))
        return cls(server, {**data, **kw} if kw else data)

    # Equal to a dict (shared or plain) with the same items, as the dict it stands for is:
    # ``in``, ``index``, ``count``, ``remove`` and ``cas`` compare values. Hashed by identity
    # all the same (the server keeps objects in sets).
    __hash__ = Shared.__hash__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SDict):
            return self.data == other.data
        if type(other) is dict:
            return self.data == other
        return NotImplemented

    def size(self) -> int:
        return len(self.data)

    def state(self) -> Any:
        return self.data

    def restore(self, state: Any) -> None:
        self.data = state

    @op("__getitem__")
    def getitem(self, key: Any) -> Any:
        return self.data[key]

    @op("__setitem__", write=True)
    def setitem(self, key: Any, value: Any) -> None:
        t = type(value)
        if t is dict or t is list:
            value = self.server.share(value, self)
        self.data[key] = value

    @op("__delitem__", write=True)
    def delitem(self, key: Any) -> None:
        del self.data[key]

    setitems = _setitems

    @op("__contains__")
    def contains(self, key: Any) -> bool:
        return key in self.data

    @op("__len__")
    def len(self) -> int:
        return len(self.data)

    @op("keys")
    def keys(self) -> list[Any]:
        return list(self.data)

    @op("__iter__")
    def iter(self) -> SIterator:
        return SIterator(self.server, iter(self.data))

    @op("values")
    def values(self) -> list[Any]:
        return list(self.data.values())

    @op("items")
    def items(self) -> list[Any]:
        return list(self.data.items())

    @op("get")
    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    @op("get_many")
    def get_many(self, keys: list[Any], default: Any = None) -> list[Any]:
        get = self.data.get
        return [get(k, default) for k in keys]

    @op("pop", write=True)
    def pop(self, key: Any, *default: Any) -> Any:
        return self.data.pop(key, *default)

    @op("popitem", write=True)
    def popitem(self) -> tuple[Any, Any]:
        return self.data.popitem()

    @op("setdefault", write=True)
    def setdefault(self, key: Any, default: Any = None) -> Any:
        data = self.data
        if key in data:
            return data[key]
        value = data[key] = self.server.share(default, self)
        return value

    @op("update", write=True)
    def update(self, other: Any = (), /, **kw: Any) -> None:     # (a key may be "other")
        share = self.server.share
        ours = type(other) is dict      # the request's own: nothing else refers to it
        if isinstance(other, SDict):
            other = other.data
        if type(other) is dict and not kw:
            # The bulk path: only nested plain containers need work, the rest goes as it is
            # (a large request was counted while decoded: flat_args says there is none).
            if not self.server.flat_args and not _NESTABLE.isdisjoint(map(type, other.values())):
                other = {k: share(v, self) if type(v) in _NESTABLE else v
                         for k, v in other.items()}
            if ours and not self.data and sys.getrefcount(self.data) <= _ONLY_OURS:
                # Filling an empty dict nothing iterates: no copy of each entry.
                self.data = other
            else:
                self.data.update(other)
            return
        if isinstance(other, dict):
            pairs: Iterable[Any] = other.items()
        else:
            pairs = _items(other)
        new = {}
        for i, pair in enumerate(pairs):
            k, v = update_pair(pair, i)
            new[k] = share(v, self)
        for k, v in kw.items():
            new[k] = share(v, self)
        self.data.update(new)

    @op("clear", write=True)
    def clear(self) -> None:
        self.data.clear()

    @op("copy", "_getvalue")
    def copy(self) -> Plain:
        return Plain(self)

    @op("incr", write=True)
    def incr(self, key: Any, by: Any = 1, default: Any = 0) -> Any:
        value = self.data.get(key, default)
        if type(value) not in (int, float) or type(by) not in (int, float):
            raise TypeError(f"incr needs numbers: the value at {key!r} is {type(value).__name__}, "
                            f"the increment is {type(by).__name__}")
        self.data[key] = value = value + by
        return value

    @op("cas", write=True)
    def cas(self, key: Any, expected: Any, new: Any) -> bool:
        if self.data.get(key) != expected:
            return False
        self.data[key] = self.server.share(new, self)
        return True


class SList(Shared):
    __slots__ = ("data",)
    typeid = "list"

    def __init__(self, server: Server, data: Iterable[Any] = (),
                 parent: Shared | None = None) -> None:
        super().__init__(server, parent)
        share = server.share
        self.data = [share(v, self) for v in data]

    @classmethod
    def new(cls, server: Server, args: list[Any], kw: dict[str, Any]) -> Shared:
        if kw or len(args) > 1:
            raise TypeError("list expected at most 1 argument")
        return cls(server, _items(args[0]) if args else ())

    # Compared (and ordered) by content, as the list it stands for: see SDict.
    __hash__ = Shared.__hash__

    def __eq__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.data == o

    def _other(self, other: object) -> Any:
        if isinstance(other, SList):
            return other.data
        return other if type(other) is list else None

    def __lt__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.data < o

    def __le__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.data <= o

    def __gt__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.data > o

    def __ge__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.data >= o

    def size(self) -> int:
        return len(self.data)

    def state(self) -> Any:
        return self.data

    def restore(self, state: Any) -> None:
        self.data = state

    @op("__getitem__")
    def getitem(self, index: Any) -> Any:
        return self.data[index]

    @op("__setitem__", write=True)
    def setitem(self, index: Any, value: Any) -> None:
        share = self.server.share
        if type(index) is slice:
            try:
                items = _items(value)
            except TypeError:
                operator.setitem([], index, value)   # a list's own error for this slice
                raise
            self.data[index] = [share(v, self) for v in items]
        else:
            self.data[index] = share(value, self)

    @op("__delitem__", write=True)
    def delitem(self, index: Any) -> None:
        del self.data[index]

    setitems = _setitems

    @op("__len__")
    def len(self) -> int:
        return len(self.data)

    @op("__iter__")
    def iter(self) -> SIterator:
        return SIterator(self.server, iter(self.data))

    @op("__contains__")
    def contains(self, value: Any) -> bool:
        return value in self.data

    @op("append", write=True)
    def append(self, value: Any) -> None:
        self.data.append(self.server.share(value, self))

    @op("extend", "__iadd__", write=True)
    def extend(self, values: Any) -> None:
        share = self.server.share
        self.data.extend([share(v, self) for v in _items(values)])

    @op("__imul__", write=True)
    def imul(self, n: int) -> None:
        self.data *= n

    @op("insert", write=True)
    def insert(self, index: int, value: Any) -> None:
        self.data.insert(index, self.server.share(value, self))

    @op("pop", write=True)
    def pop(self, index: int = -1) -> Any:
        return self.data.pop(index)

    @op("remove", write=True)
    def remove(self, value: Any) -> None:
        self.data.remove(value)

    @op("index")
    def index(self, value: Any, *args: int) -> int:
        return self.data.index(value, *args)

    @op("count")
    def count(self, value: Any) -> int:
        return self.data.count(value)

    @op("sort", write=True)
    def sort(self, reverse: bool = False) -> None:
        """Sort, as ``list.sort``. The server cannot order values it keeps pickled (it never
        unpickles them): a list whose order depends on them raises TypeError, never stays
        unsorted in silence (``ListProxy.sort`` calls ``_sort_or_defer`` and sorts those)."""
        if self.sort_or_defer(reverse):
            raise TypeError("this shared list holds values the server cannot compare (pickled "
                            "ones, such as Decimal or datetime): sort it through its proxy's "
                            "sort() outside a pipeline, which orders them in the calling process")

    @op("_sort_or_defer", write=True)
    def sort_or_defer(self, reverse: bool = False) -> bool:
        """Sort; or True, leaving the list as it was, when comparing its values met pickled ones:
        the client that asked sorts it then (``ListProxy.sort``)."""
        try:
            new = sorted(self.data, reverse=bool(reverse))
        except TypeError as e:
            if _has_opaque(self.data):
                return True
            raise TypeError(_client_names(str(e))) from None
        self.data[:] = new
        return False

    @op("reverse", write=True)
    def reverse(self) -> None:
        self.data.reverse()

    @op("clear", write=True)
    def clear(self) -> None:
        self.data.clear()

    @op("copy", "_getvalue")
    def copy(self) -> Plain:
        return Plain(self)



class SIterator(Shared):
    """A live iterator over a shared container, read in chunks (``next_chunk``)."""

    __slots__ = ("it",)
    typeid = "iterator"

    def __init__(self, server: Server, it: Any) -> None:
        super().__init__(server)
        self.it = it

    @op("next_chunk")
    def next_chunk(self, n: int) -> list[Any]:
        """Up to ``n`` next items; an empty list when the iterator is exhausted."""
        if type(n) is not int or n < 1:
            raise TypeError("malformed request: next_chunk takes a count of 1 or more")
        out: list[Any] = []
        for item in self.it:
            out.append(item)
            if len(out) >= n:
                break
        return out


class SNamespace(Shared):
    __slots__ = ("attrs",)
    typeid = "Namespace"

    def __init__(self, server: Server, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(server)
        share = server.share
        self.attrs = {k: share(v, self) for k, v in (attrs or {}).items()}

    @classmethod
    def new(cls, server: Server, args: list[Any], kw: dict[str, Any]) -> Shared:
        if args:
            raise TypeError("Namespace takes keyword arguments only")
        return cls(server, kw)

    def size(self) -> int:
        return len(self.attrs)

    def state(self) -> Any:
        return self.attrs

    def restore(self, state: Any) -> None:
        self.attrs = state

    @op("__getattribute__")
    def getattr(self, name: str) -> Any:
        try:
            return self.attrs[name]
        except KeyError:
            raise AttributeError(f"'Namespace' object has no attribute {name!r}") from None

    @op("__setattr__", write=True)
    def setattr(self, name: str, value: Any) -> None:
        if type(name) is not str:
            raise TypeError("attribute name must be string")
        self.attrs[name] = self.server.share(value, self)

    @op("__delattr__", write=True)
    def delattr(self, name: str) -> None:
        try:
            del self.attrs[name]
        except KeyError:
            raise AttributeError(f"'Namespace' object has no attribute {name!r}") from None

    @op("_dict", "_getvalue")
    def dict(self) -> Plain:
        return Plain(self.attrs)


class SValue(Shared):
    __slots__ = ("typecode", "value")
    typeid = "Value"

    def __init__(self, server: Server, typecode: Any, value: Any, lock: Any = True) -> None:
        super().__init__(server)
        self.typecode = typecode
        self.value = server.share(value, self)

    def state(self) -> Any:
        return [self.typecode, self.value]

    def restore(self, state: Any) -> None:
        self.typecode, self.value = state

    @op("get", "_getvalue")
    def get(self) -> Any:
        return self.value

    @op("set", write=True)
    def set(self, value: Any) -> None:
        self.value = self.server.share(value, self)

    @op("_typecode")
    def get_typecode(self) -> Any:
        return self.typecode

    @op("incr", write=True)
    def incr(self, by: Any = 1) -> Any:
        if type(self.value) not in (int, float) or type(by) not in (int, float):
            raise TypeError("incr needs a number")
        self.value += by
        return self.value


class SArray(Shared):
    __slots__ = ("array",)
    typeid = "Array"

    def __init__(self, server: Server, typecode: str, sequence: Any, lock: Any = True) -> None:
        super().__init__(server)
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            # Zeros made as bytes, not as a list of ints (8 bytes more per item, and slow);
            # at most as many bytes as one request could carry in items.
            a = array.array(typecode)
            if sequence * a.itemsize > server.max_frame:
                raise ValueError(f"an Array of {sequence} items of {a.itemsize} bytes is over the "
                                 f"server's limit of {server.max_frame} bytes per object")
            a.frombytes(bytes(max(sequence, 0) * a.itemsize))
            self.array = a
            return
        self.array = array.array(typecode, _items(sequence))

    def size(self) -> int:
        return len(self.array)

    def state(self) -> Any:
        return [self.array.typecode, self.array.tolist()]

    def restore(self, state: Any) -> None:
        self.array = array.array(state[0], state[1])

    @op("__len__")
    def len(self) -> int:
        return len(self.array)

    @op("__getitem__")
    def getitem(self, index: Any) -> Any:
        if type(index) is slice:
            return self.array[index].tolist()
        return self.array[index]

    @op("__setitem__", write=True)
    def setitem(self, index: Any, value: Any) -> None:
        if type(index) is slice:
            value = array.array(self.array.typecode, _items(value))
        self.array[index] = value

    setitems = _setitems

    @op("tolist", "_getvalue", "copy")
    def tolist(self) -> list[Any]:
        return self.array.tolist()

    @op("_typecode")
    def get_typecode(self) -> str:
        return self.array.typecode


class SCustom(Shared):
    """An object made by a callable registered with ``BaseManager.register``.

    Its methods are user code: they run in the server's worker threads (they may block, as a
    ``queue.Queue.get`` does), and their arguments are unpickled, by design (see docs/security.md).
    """

    __slots__ = ("obj", "typeid_", "exposed", "method_to_typeid")

    def __init__(self, server: Server, obj: Any, typeid: str, exposed: Iterable[str] | None,
                 method_to_typeid: dict[str, str] | None) -> None:
        super().__init__(server, None)
        self.obj = obj
        self.typeid_ = typeid
        self.exposed = frozenset(exposed) if exposed is not None else public_methods(obj)
        self.method_to_typeid = method_to_typeid or {}

    @property
    def typeid(self) -> str:  # type: ignore[override]
        return self.typeid_

    def fallback(self, name: str) -> Callable[..., Any]:
        if name not in self.exposed:
            raise NoSuchMethod(f"method {name!r} of {type(self.obj)!r} object is not in "
                               f"exposed={sorted(self.exposed)!r}")
        return self.server.custom_call(self, name)

    @op("__repr__")
    def repr(self) -> str:
        return repr(self.obj)

    @op("__str__")
    def str(self) -> str:
        return str(self.obj)

    @op("#GETVALUE", "_getvalue")
    def getvalue(self) -> Any:
        return self.obj

    @op("_exposed")
    def get_exposed(self) -> list[builtins.str]:
        return sorted(self.exposed)


def public_methods(obj: Any) -> frozenset[str]:
    return frozenset(name for name in dir(obj)
                     if not name.startswith("_") and callable(getattr(obj, name, None)))


NATIVE_TYPES: dict[str, Any] = {
    "dict": SDict, "list": SList, "Namespace": SNamespace, "Value": SValue, "Array": SArray,
}
