"""The codec on in-memory bytes: every built-in value round-trips with its type."""

from __future__ import annotations

import fractions
import pickle

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._codec import OPAQUE, Codec, Opaque

hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4),
    max_leaves=8,
)
values = st.recursive(
    hashables,
    lambda inner: (st.lists(inner, max_size=5) | st.dictionaries(hashables, inner, max_size=5)
                   | st.sets(hashables, max_size=5) | st.tuples(inner, inner)),
    max_leaves=20,
)


def same(a: object, b: object) -> bool:
    """Equal and of the same type, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)  # type: ignore[attr-defined]
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return a == b


@settings(max_examples=300, deadline=None)
@given(values)
def test_roundtrip_keeps_types(v: object) -> None:
    c = Codec()
    assert same(c.decode(c.encode(v)), v)


@pytest.mark.parametrize("v", [2**64, -2**63 - 1, 2**1000, -(2**1000), 0, -1, 2**63])
def test_big_ints(v: int) -> None:
    c = Codec()
    out = c.decode(c.encode(v))
    assert out == v and type(out) is int


def test_other_values_travel_as_opaque_pickles() -> None:
    client = Codec()
    server = Codec(from_opaque=Opaque)
    data = client.encode({"f": fractions.Fraction(1, 3)})
    held = server.decode(data)
    assert type(held["f"]) is Opaque             # the server never unpickles it
    back = client.decode(server.encode(held))     # and gives back the same bytes
    assert back == {"f": fractions.Fraction(1, 3)}


def test_the_server_side_does_not_unpickle() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (exec, ("raise SystemExit('unpickled!')",))
    blob = msgpack.packb(msgpack.ExtType(OPAQUE, pickle.dumps(Boom())))
    held = Codec(from_opaque=Opaque).decode(blob)
    assert type(held) is Opaque


def test_unpicklable_value_raises_the_pickling_error_with_a_note() -> None:
    with pytest.raises(Exception) as info:
        Codec().encode(lambda: 1)
    assert "could not send a value of type 'function'" in "".join(info.value.__notes__)


def test_builtin_only_codec_refuses_other_values() -> None:
    c = Codec(pickle_unknown=False, tuples_as_lists=True)
    assert c.decode(c.encode((1, (2, 3)))) == [1, [2, 3]]
    with pytest.raises(TypeError, match="built-in types only"):
        c.encode(fractions.Fraction(1, 2))


def test_codec_usable_after_an_encode_error() -> None:
    c = Codec()
    with pytest.raises(Exception):
        c.encode([1, lambda: 2])
    assert c.decode(c.encode([1, 2])) == [1, 2]


@pytest.mark.parametrize("junk", [b"\xc1", b"\x92\x01", b"\xd4\x63\x00", b"\x81\x91\x01\x02"])
def test_malformed_input_raises_not_crashes(junk: bytes) -> None:
    with pytest.raises((ValueError, TypeError, msgpack.ExtraData)):
        Codec().decode(junk)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash(junk: bytes) -> None:
    try:
        Codec(from_opaque=Opaque).decode(junk)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError):
        pass


class _Shared:
    def __init__(self, oid: int, typeid: str) -> None:
        self.oid, self.typeid = oid, typeid


def test_references_encode_the_same_past_the_cache() -> None:
    """Encoded references are memoized per codec: more of them than it keeps, each sent
    several times, still decode to the reference that was sent."""
    codec = Codec(ref_of=lambda o: (o.oid, o.typeid) if type(o) is _Shared else None,
                  make_ref=lambda oid, typeid: (oid, typeid))
    objs = [_Shared(i, "dict" if i % 2 else "list") for i in range(10_000)]
    for _ in range(2):
        got = codec.decode(codec.encode([objs, (objs[0], objs[-1])]))
        assert got == [[(o.oid, o.typeid) for o in objs], ((0, "list"), (9_999, "dict"))]


def test_strings_that_are_not_valid_unicode_travel_pickled() -> None:
    """A str with lone surrogates (os.listdir's undecodable names) cannot be UTF-8: it travels
    pickled, wherever it is, and comes back equal; the server holds its bytes."""
    client, server = Codec(), Codec(from_opaque=Opaque)
    bad = "caf\udce9"
    value = {bad: [bad, (bad, "ok")], "ok": {bad}}
    data = client.encode(value)
    assert client.decode(data) == value
    held = server.decode(data)
    assert isinstance(next(iter(held)), Opaque) and held["ok"] == {Opaque(pickle.dumps(bad, 5))}
    assert client.decode(server.encode(held)) == value
    assert client.encode("fine") == msgpack.packb("fine")    # valid strings as before
    with pytest.raises(UnicodeEncodeError):
        Codec(pickle_unknown=False).encode(bad)             # built-in types only: refused
