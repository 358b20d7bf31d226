"""The core codec, as the Redis backend uses it.

Values are encoded exactly as the local server encodes them (msgpack with shoal's extension
types, ``shoal._codec``), with two differences:

* a reference (``REF``, code 6) carries ``[key, typeid]`` where ``key`` is the referred object's
  Redis key name (a str), not a server's int id;
* dict keys are Redis hash fields, compared by their bytes, so a key's encoding must not depend
  on anything but its value: the members of a ``frozenset`` key are written sorted by their own
  encodings (a frozenset's iteration order depends on the process's string hashing).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from .._codec import FROZENSET, REF, Codec

__all__ = ["RedisCodec", "ref_bytes"]


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def ref_bytes(key: str, typeid: str) -> bytes:
    """The encoding of a reference to the object at ``key``."""
    payload = msgpack.packb([key, typeid], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(REF, payload), use_bin_type=True)  # type: ignore[no-any-return]


class RedisCodec(Codec):
    """``Codec`` with Redis key names as reference ids; ``canonical=True`` for hash fields."""

    def __init__(self, ref_of: Callable[[Any], tuple[str, str] | None],
                 make_ref: Callable[[str, str], Any], canonical: bool = False) -> None:
        super().__init__(ref_of=ref_of, make_ref=make_ref)  # type: ignore[arg-type]
        self._canonical = canonical

    def _default(self, obj: Any) -> Any:
        if self._canonical and type(obj) is frozenset:
            items = sorted(self._packb(x) for x in obj)
            return msgpack.ExtType(FROZENSET, _array_header(len(items)) + b"".join(items))
        return super()._default(obj)

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == REF:
            key, typeid = msgpack.unpackb(data, raw=False)
            if type(key) is not str or type(typeid) is not str:
                raise ValueError("malformed reference")
            return self._make_ref(key, typeid)  # type: ignore[arg-type]
        return super()._ext_hook(code, data)
