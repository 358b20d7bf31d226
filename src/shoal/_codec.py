"""Values on the wire: msgpack with extension types.

Built-in values travel natively and come back with their type; anything else travels as an opaque
pickle that the server stores as bytes and never unpickles. References to shared objects travel as
``REF``; each side decides what a reference becomes (a proxy in a client, the object in the server).

Extension codes (they never change meaning; new kinds get new codes):

====  ===========  ==========================================================
code  name         payload
====  ===========  ==========================================================
1     TUPLE        msgpack array of the items
2     SET          msgpack array of the items
3     FROZENSET    msgpack array of the items
4     BIGINT       two's-complement big-endian bytes (ints outside 64 bits)
5     OPAQUE       a pickle (protocol 5) of any other value, never unpickled by the server
6     REF          msgpack ``[object id, typeid]`` of a shared object
7     SLICE        msgpack ``[start, stop, step]``
====  ===========  ==========================================================

Native: None, bool, int (64-bit), float, str, bytes, list, dict (any hashable keys).
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = ["Codec", "Opaque", "TUPLE", "SET", "FROZENSET", "BIGINT", "OPAQUE", "REF", "SLICE"]

TUPLE, SET, FROZENSET, BIGINT, OPAQUE, REF, SLICE = 1, 2, 3, 4, 5, 6, 7

ExtType = msgpack.ExtType
MAX_EXT_DEPTH = 100
_REF_CACHE = 4096    # encoded references kept per codec (the same objects are sent again and again)


def _ext(code: int, data: bytes) -> Any:
    # msgpack's ExtType() checks its arguments in Python, which costs more than the rest of
    # encoding a tuple; ours are an int code and bytes by construction.
    return tuple.__new__(ExtType, (code, data))


class Opaque:
    """A pickled value held by the server as bytes; equal and hashable by those bytes."""

    __slots__ = ("data", "__weakref__")

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is Opaque and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"<opaque value, {len(self.data)} bytes>"


class _BadStr(str):
    """A str that UTF-8 cannot encode, marked to travel pickled."""

    __slots__ = ()


def _mark_bad_strs(obj: Any) -> Any:
    """``obj`` with each str that UTF-8 cannot encode (at any depth) made a ``_BadStr``."""
    t = type(obj)
    if t is str:
        try:
            obj.encode()
        except UnicodeEncodeError:
            return _BadStr(obj)
        return obj
    if t is list:
        return [_mark_bad_strs(x) for x in obj]
    if t is dict:
        return {_mark_bad_strs(k): _mark_bad_strs(v) for k, v in obj.items()}
    if t in (tuple, set, frozenset):
        return t(_mark_bad_strs(x) for x in obj)
    return obj


def _no_refs(obj: Any) -> tuple[int, str] | None:
    return None


def _bad_ref(oid: int, typeid: str) -> Any:
    raise TypeError("this side does not accept references to shared objects")


def _unpickle(data: bytes) -> Any:
    return pickle.loads(data)


class Codec:
    """Encodes and decodes values; the three hooks say what references and opaque values mean here.

    ``ref_of(obj)`` returns ``(id, typeid)`` when ``obj`` is a reference to a shared object;
    ``make_ref(id, typeid)`` turns a received reference into a local object; ``from_opaque(bytes)``
    turns a received opaque value into a local object (``Opaque`` on the server, unpickled in clients).
    """

    def __init__(
        self,
        ref_of: Callable[[Any], tuple[int, str] | None] = _no_refs,
        make_ref: Callable[[int, str], Any] = _bad_ref,
        from_opaque: Callable[[bytes], Any] = _unpickle,
        pickle_unknown: bool = True,
        tuples_as_lists: bool = False,
    ) -> None:
        self._ref_of = ref_of
        self._make_ref = make_ref
        self._from_opaque = from_opaque
        self._pickle_unknown = pickle_unknown
        self._tuples_as_lists = tuples_as_lists
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True)
        self._local = threading.local()
        self._refs: dict[tuple[int, str], Any] = {}     # of ExtType
        self._refs_read: dict[bytes, tuple[int, str]] = {}  # REF's data -> (id, typeid)

    def encode(self, obj: Any) -> bytes:
        """Encode one value. Not thread-safe: the caller serialises use of one Codec."""
        try:
            return self._packer.pack(obj)  # type: ignore[no-any-return]
        except UnicodeEncodeError:
            self._packer.reset()
            if not self._pickle_unknown:
                raise
            # A str that is not valid Unicode (lone surrogates, as os.listdir gives for names
            # it cannot decode) cannot travel as msgpack's UTF-8: such strs go pickled.
            try:
                return self._packer.pack(_mark_bad_strs(obj))  # type: ignore[no-any-return]
            except BaseException:
                self._packer.reset()
                raise
        except BaseException:
            self._packer.reset()
            raise

    def _packb(self, obj: Any) -> bytes:
        # A fresh packer: the shared one is busy higher up this same call.
        return msgpack.packb(obj, default=self._default, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]

    def _default(self, obj: Any) -> Any:
        t = type(obj)
        if t is tuple:
            if self._tuples_as_lists:
                return list(obj)
            return _ext(TUPLE, self._packb(list(obj)))
        if t is set:
            return _ext(SET, self._packb(list(obj)))
        if t is frozenset:
            return _ext(FROZENSET, self._packb(list(obj)))
        if t is int:
            return _ext(BIGINT, obj.to_bytes((obj.bit_length() + 8) // 8, "big", signed=True))
        if t is Opaque:
            return _ext(OPAQUE, obj.data)
        if t is _BadStr:
            return _ext(OPAQUE, pickle.dumps(str(obj), protocol=5))
        if t is slice:
            return _ext(SLICE, self._packb([obj.start, obj.stop, obj.step]))
        ref = self._ref_of(obj)
        if ref is not None:
            refs = self._refs
            ext = refs.get(ref)
            if ext is None:
                if len(refs) >= _REF_CACHE:
                    refs.clear()
                ext = refs[ref] = _ext(REF, msgpack.packb(ref))
            return ext
        if not self._pickle_unknown:
            raise TypeError(f"cannot send a value of type {t.__name__!r} (this connection "
                            f"carries built-in types only)")
        try:
            return _ext(OPAQUE, pickle.dumps(obj, protocol=5))
        except Exception as e:
            # The pickling error itself, as multiprocessing raises it, with what happened.
            e.add_note(f"shoal could not send a value of type {t.__name__!r}: it is not a "
                       f"built-in type, so it travels pickled, and pickling it failed")
            raise

    def decode(self, data: bytes | memoryview) -> Any:
        """Decode one value; raises ValueError/TypeError on malformed input."""
        return msgpack.unpackb(
            data, ext_hook=self._ext_hook, raw=False, strict_map_key=False, use_list=True
        )

    def decode_counting(self, data: bytes | memoryview) -> tuple[Any, int]:
        """``decode``, and how many maps and arrays the value holds (itself included; those in
        tuples and sets not counted). For a large request, this tells the server that a bulk
        argument holds no nested container without scanning its items."""
        count = 0

        def seen(container: Any) -> Any:
            nonlocal count
            count += 1
            return container
        value = msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False, strict_map_key=False,
                                use_list=True, list_hook=seen, object_hook=seen)
        return value, count

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == REF:     # [id, typeid]; decoded without this hook, so it cannot nest
            ref = self._refs_read.get(data)
            if ref is None:
                ref = msgpack.unpackb(data)
                if type(ref) is not list or len(ref) != 2 or type(ref[0]) is not int \
                        or type(ref[1]) is not str:
                    raise ValueError("malformed reference")
                if len(self._refs_read) >= _REF_CACHE:
                    self._refs_read.clear()
                self._refs_read[data] = ref = (ref[0], ref[1])
            return self._make_ref(*ref)
        # Other extension values nest through this hook (and msgpack's C code): bound the depth
        # so a hostile value cannot exhaust the C stack.
        local = self._local             # per thread: one codec decodes in many threads
        depth = getattr(local, "depth", 0) + 1
        if depth > MAX_EXT_DEPTH:
            raise ValueError(f"value nested deeper than {MAX_EXT_DEPTH} tuples/sets")
        local.depth = depth
        try:
            return self._ext_value(code, data)
        finally:
            local.depth = depth - 1

    def _ext_value(self, code: int, data: bytes) -> Any:
        if code == TUPLE:
            return tuple(self.decode(data))
        if code == SET:
            return set(self.decode(data))
        if code == FROZENSET:
            return frozenset(self.decode(data))
        if code == BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == OPAQUE:
            return self._from_opaque(data)
        if code == SLICE:
            start, stop, step = self.decode(data)
            return slice(start, stop, step)
        raise ValueError(f"unknown extension type {code}")
