"""Which bytes are a valid value: the check the server runs on every value it stores.

``check_value`` accepts exactly the values of docs/PROTOCOL.md section 9, whatever the bytes:
extension payloads in their grammar (``extensions``), container markers only where they lead
an array, no msgpack timestamps, at most ``max_depth`` levels of nesting, and sets,
frozensets and maps whose items (keys) are hashable and pairwise unequal, no more than
``max_keys_per_hash`` of them sharing a CPython hash value.

It never builds what a hostile value could make slow (PROTOCOL.md 9.3). The C unpacker runs
with hooks that see each container as it completes, innermost first: a list, map, set or
bytearray becomes a token of its kind and height (no dict and no set of its items is built), a
tuple a tuple, and a frozenset a frozenset only once its items have passed. Whether items are
distinct is decided by their hash values first: numbers hash alike on purpose (every multiple
of 2**61 - 1 hashes to 0), so a set built from a flood of them takes quadratic time, while
counting hash values takes linear time. Only items that share a hash are compared, at most
``max_keys_per_hash`` of them, with Python's ``==``, which is what every Python reader of the
value will do too; except that an integer of more than 1024 bits and a ``Decimal`` may not
share a hash, because comparing them converts the integer to decimal, in quadratic time.

Strings and bytes hash with randomised SipHash, so a container of them only has to be free of
duplicates (a set of them is built). Every other check is a type scan in C or a look at the
bytes: a value that cannot hold a container (a whole scalar, string, binary or extension) is
checked without running the unpacker's hooks at all.
"""

from __future__ import annotations

import collections
import decimal
import operator
import re
import reprlib
from collections.abc import Callable
from typing import Any

import msgpack

from .codec import SCALAR_LENGTHS
from .extensions import MAX_DEPTH, PAYLOAD_PARSERS, ExtCode, ValueDecodeError
from .limits import Limits

__all__ = ["MAX_INT_BITS_NEXT_TO_A_DECIMAL", "check_unpacked", "check_value"]

#: Two items of a container that share a hash may not be one holding an integer of more bits
#: than this and one holding a Decimal: Python compares those by converting the integer to
#: decimal, in time quadratic in its length.
MAX_INT_BITS_NEXT_TO_A_DECIMAL = 1024


class _Token:
    """What the check keeps of a list, map, set or bytearray: its kind and height, no items."""

    __slots__ = ("height", "kind")
    __hash__ = None  # type: ignore[assignment]  # unhashable, like what it stands for

    def __init__(self, kind: str, height: int) -> None:
        self.kind, self.height = kind, height


class _Tuple(tuple):  # type: ignore[type-arg]
    """A tuple that knows its height; hashes and compares as the plain tuple would."""

    height: int


class _FrozenSet(frozenset):  # type: ignore[type-arg]
    """A frozenset that knows its height; hashes and compares as the plain one would."""

    height: int


class _Marker:
    """A container marker, until the array it leads is complete."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


_TOKENS = {
    kind: [_Token(kind, height) for height in range(MAX_DEPTH + 2)]
    for kind in ("list", "map", "set")
}
_BYTEARRAY = _Token("bytearray", 0)
_MARKERS: dict[int, _Marker] = {
    code: _Marker(code) for code in (ExtCode.TUPLE, ExtCode.SET, ExtCode.FROZENSET)
}
_NESTED = frozenset({_Token, _Tuple, _FrozenSet})  # the types that have a height
_TEXT = frozenset({str, bytes})
_STR = {str}
#: Kinds whose equality is what a set of them says, in C: a set of one of them is checked by
#: building it (once no more than max_keys_per_hash share a hash).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
_KEY, _VALUE = operator.itemgetter(0), operator.itemgetter(1)


#: The bytes a msgpack timestamp starts with, in every form msgpack reads (ext -1 of 4, 8 or
#: 12 bytes): a value without them holds none, and its items need no type scan for one.
_TIMESTAMP_HEADER = re.compile(
    rb"[\xd6\xd7]\xff|\xc7[\x04\x08\x0c]\xff|\xc8\x00[\x04\x08\x0c]\xff"
    rb"|\xc9\x00\x00\x00[\x04\x08\x0c]\xff"
)
_MISPLACED_MARKER = "a container marker must be the first element of an array"
_TIMESTAMP = "msgpack timestamps (extension -1) are not supported values"


class _Check:
    """The unpacker's hooks for one value: each container checked as it completes.

    Markers are counted: each one the ext hook makes and no array starts with is misplaced.
    Item types are scanned (in C) only when ``scan``: when the value is long enough to nest
    deeper than ``max_depth`` (a container takes a byte at least) or may hold a timestamp.
    """

    __slots__ = ("markers", "max_depth", "max_keys_per_hash", "scan")

    def __init__(self, max_depth: int, max_keys_per_hash: int, scan: bool) -> None:
        self.max_depth = max_depth
        self.max_keys_per_hash = max_keys_per_hash
        self.scan = scan
        self.markers = 0  # made, and not at the head of an array

    def ext(self, code: int, data: bytes) -> Any:
        """Payloads parsed (and so checked) by their grammar."""
        marker = _MARKERS.get(code)
        if marker is not None:
            if data:
                raise ValueDecodeError(f"extension {code} is a zero-length container marker")
            self.markers += 1
            return marker
        if code == ExtCode.BYTEARRAY:
            return _BYTEARRAY  # any bytes; what matters here is that it is unhashable
        parse = PAYLOAD_PARSERS.get(code)
        if parse is None:
            raise ValueDecodeError(f"unknown value extension code {code}")
        return parse(data)

    def _height(self, kinds: set[type], *groups: list[Any]) -> int:
        """The height of a container of the items of ``groups``, whose types are ``kinds``."""
        if msgpack.Timestamp in kinds:
            raise ValueDecodeError(_TIMESTAMP)
        if kinds.isdisjoint(_NESTED):
            return 1
        height: int = 1 + max(
            item.height for items in groups for item in items if type(item) in _NESTED
        )
        if height > self.max_depth:
            raise ValueDecodeError(f"value nested deeper than {MAX_DEPTH} levels")
        return height

    def array(self, items: list[Any]) -> Any:
        marker = items[0] if items else None
        if type(marker) is not _Marker:
            if not self.scan:
                return _TOKENS["list"][0]  # a short list: nothing to look at
            return _TOKENS["list"][self._height(set(map(type, items)), items)]
        del items[0]
        self.markers -= 1
        code = marker.code
        if code == ExtCode.TUPLE:
            built: _Tuple | _FrozenSet = _Tuple(items)
            built.height = self._height(set(map(type, items)), items) if self.scan else 0
            return built
        kinds = set(map(type, items))
        height = self._height(kinds, items) if self.scan else 0
        self._distinct(items, kinds, "set item" if code == ExtCode.SET else "frozenset item")
        if code == ExtCode.SET:
            return _TOKENS["set"][height]
        built = _FrozenSet(items)  # cheap now: at most max_keys_per_hash share a hash
        built.height = height
        return built

    def map(self, pairs: list[tuple[Any, Any]]) -> Any:
        keys = list(map(_KEY, pairs))
        kinds = set(map(type, keys))
        height = 0
        if self.scan:
            values = list(map(_VALUE, pairs))
            height = self._height(kinds | set(map(type, values)), keys, values)
        if kinds == _STR:  # the commonest map, checked here: str hashes are randomised
            if len(set(keys)) != len(keys):
                raise ValueDecodeError(f"duplicate map key: {_short.repr(_duplicate(keys))}")
        else:
            self._distinct(keys, kinds, "map key")
        return _TOKENS["map"][height]

    def _distinct(self, items: list[Any], kinds: set[type], what: str) -> None:
        """Refuse items that are unhashable, equal, or too many of them sharing a hash."""
        if kinds <= _TEXT and len(kinds) == 1:  # randomised hashes: no flood possible
            if len(set(items)) != len(items):
                raise ValueDecodeError(f"duplicate {what}: {_short.repr(_duplicate(items))}")
            return
        try:
            hashes = list(map(hash, items))
        except TypeError:
            raise ValueDecodeError(_unhashable(items, what)) from None
        if len(set(hashes)) != len(hashes):  # hash values are ints: not floodable themselves
            self._shared_hashes(items, hashes, kinds, what)

    def _shared_hashes(
        self, items: list[Any], hashes: list[int], kinds: set[type], what: str
    ) -> None:
        counts = collections.Counter(hashes)
        most = max(counts.values())
        if most > self.max_keys_per_hash:
            raise ValueDecodeError(
                f"{most} {what}s share one hash value, more than max_keys_per_hash "
                f"({self.max_keys_per_hash}): Python readers would slow to a crawl "
                "building it (docs/PROTOCOL.md 9.3)"
            )
        if len(kinds) == 1 and kinds <= _PLAIN:
            # One plain kind (no Decimal beside a big int, no str beside bytes): equal means
            # what a set says, and with at most max_keys_per_hash items per hash the set is
            # built in C in time linear in their number.
            if len(set(items)) != len(items):
                raise ValueDecodeError(f"duplicate {what}: {_short.repr(_duplicate(items))}")
            return
        groups: dict[int, list[Any]] = {}
        for item, value in zip(items, hashes, strict=True):
            if counts[value] > 1:
                groups.setdefault(value, []).append(item)
        for group in groups.values():
            big = {index for index, item in enumerate(group) if _holds(item, _is_big_int)}
            decimals = {index for index, item in enumerate(group) if _holds(item, _is_decimal)}
            if big and decimals and len(big | decimals) > 1:
                raise ValueDecodeError(
                    f"a {what} holding an integer of more than {MAX_INT_BITS_NEXT_TO_A_DECIMAL} "
                    f"bits shares its hash value with a {what} holding a DECIMAL "
                    "(docs/PROTOCOL.md 9.3)"
                )
            for index, item in enumerate(group):
                for other in group[index + 1 :]:
                    if _equal(item, other):
                        raise ValueDecodeError(
                            f"duplicate {what}: {_short.repr(item)} equals {_short.repr(other)}"
                        )


def _equal(one: Any, other: Any) -> bool:
    """Python's ``==`` (what a reader's set or dict does), without comparing str to bytes."""
    if type(one) in _TEXT or type(other) in _TEXT:
        return type(one) is type(other) and bool(one == other)
    return bool(one == other)


def _is_big_int(item: Any) -> bool:
    return type(item) is int and item.bit_length() > MAX_INT_BITS_NEXT_TO_A_DECIMAL


def _is_decimal(item: Any) -> bool:
    return type(item) is decimal.Decimal


def _holds(item: Any, found: Callable[[Any], bool]) -> bool:
    """Whether ``item`` is, or holds (in its tuples and frozensets), something ``found``."""
    if type(item) is _Tuple or type(item) is _FrozenSet:
        return any(_holds(inner, found) for inner in item)
    return found(item)


def _unhashable(items: list[Any], what: str) -> str:
    """Why ``items`` cannot be hashed: the first item that cannot, and what it holds."""
    for item in items:
        try:
            hash(item)
        except TypeError as exc:
            found = _first_unhashable(item)
            if found is None:  # a signalling NaN, say
                return f"a {what} must be hashable: {exc}"
            inside = "" if found is item else f" holding a {found.kind}"
            return f"a {what} must be hashable, not a {_kind(item)}{inside}"
    return f"a {what} must be hashable"  # pragma: no cover - some item failed above


def _first_unhashable(item: Any) -> Any:
    if type(item) is _Token:
        return item
    if type(item) is _Tuple:
        for inner in item:
            found = _first_unhashable(inner)
            if found is not None:
                return found
    return None


def _kind(item: Any) -> str:
    return item.kind if type(item) is _Token else "tuple"


def _duplicate(items: list[Any]) -> Any:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None  # pragma: no cover - called only when there is a duplicate


class _ShortRepr(reprlib.Repr):
    """Short reprs for messages, safe for integers too long for ``repr``."""

    def __init__(self) -> None:
        super().__init__()
        self.maxother = 80

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 64:
            return f"<int of {x.bit_length()} bits>"
        return repr(x)

    def repr__Tuple(self, x: tuple[Any, ...], level: int) -> str:
        return self.repr_tuple(x, level)

    def repr__FrozenSet(self, x: frozenset[Any], level: int) -> str:
        return self.repr_frozenset(x, level)


_short = _ShortRepr()


# The first bytes of a str or a bin: a value that starts with one is that and nothing more.
_TEXT_FIRST = frozenset({*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6})
_FIXEXT_LENGTHS = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}  # fixext: payload length
_EXT_LENGTH_SIZES = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # ext 8/16/32: bytes of the payload length


_MAYBE_WHOLE = frozenset({*_TEXT_FIRST, *_FIXEXT_LENGTHS, *_EXT_LENGTH_SIZES})


def _whole_scalar(data: bytes) -> bool:
    """Check a value that is one str, bin or extension (True), or say it is none (False)."""
    first = data[0]
    if first in _TEXT_FIRST:  # the unpacker without hooks: a str or bin holds nothing else
        try:
            msgpack.unpackb(data)  # (strict UTF-8; ExtraData for anything after it)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ValueDecodeError(f"malformed value: {type(exc).__name__}: {exc}") from None
        return True
    if first in _FIXEXT_LENGTHS:
        start, length = 2, _FIXEXT_LENGTHS[first]
    elif first in _EXT_LENGTH_SIZES:
        start = 2 + _EXT_LENGTH_SIZES[first]
        length = int.from_bytes(data[1 : start - 1], "big")
    else:
        return False
    if start + length != len(data):
        return False  # (a truncated header too: the unpacker says what is wrong)
    code = (data[start - 1] ^ 0x80) - 0x80  # a signed byte
    if code in _MARKERS:
        if length:
            raise ValueDecodeError(f"extension {code} is a zero-length container marker")
        raise ValueDecodeError("a container marker alone is not a value")
    if code == -1:
        raise ValueDecodeError(_TIMESTAMP)
    parse = PAYLOAD_PARSERS.get(code)
    if parse is None:
        raise ValueDecodeError(f"unknown value extension code {code}")
    parse(data[start:])
    return True


def check_value(
    data: bytes,
    max_depth: int = MAX_DEPTH,
    max_keys_per_hash: int = Limits.max_keys_per_hash,
) -> None:
    """Raise ValueDecodeError unless ``data`` is one valid value (PROTOCOL.md section 9).

    ``max_depth`` is lower for a value that will sit inside another (an item appended to a
    list, at most ``MAX_DEPTH``); ``max_keys_per_hash`` is ``Limits.max_keys_per_hash``.
    """
    if not data:
        raise ValueDecodeError("malformed value: no bytes")
    first = data[0]
    if len(data) == SCALAR_LENGTHS[first] or (first in _MAYBE_WHOLE and _whole_scalar(data)):
        return  # an int, float, None, bool, str, bin or extension, whole: no container
    # A short value cannot nest too deeply, and one without a timestamp's header holds none:
    # then the hooks need not look at the types of the items of every container.
    scan = len(data) > max_depth or (b"\xff" in data and _TIMESTAMP_HEADER.search(data) is not None)
    check_unpacked(data, max_depth, max_keys_per_hash, scan)


def check_unpacked(data: bytes, max_depth: int, max_keys_per_hash: int, scan: bool) -> None:
    """``check_value`` the long way: through the unpacker, whatever the value; ``scan``: look
    at the types of every container's items (``check_value`` skips it where it cannot matter).
    """
    check = _Check(min(max_depth, MAX_DEPTH), max_keys_per_hash, scan)
    try:
        value = msgpack.unpackb(
            data,
            ext_hook=check.ext,
            list_hook=check.array,
            object_pairs_hook=check.map,
            raw=False,
            strict_map_key=False,
            use_list=True,
            timestamp=0,
        )
    except ValueDecodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise ValueDecodeError(f"malformed value: {type(exc).__name__}: {exc}") from None
    if type(value) is _Marker:
        raise ValueDecodeError("a container marker alone is not a value")
    if check.markers:
        raise ValueDecodeError(_MISPLACED_MARKER)
    if type(value) is msgpack.Timestamp:
        raise ValueDecodeError(_TIMESTAMP)
