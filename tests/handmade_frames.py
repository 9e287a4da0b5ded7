"""Frames packed by hand, below the library's own checks, and a strategy for any msgpack frame.

``pack`` makes the bytes of any frame, well-formed or not (the sans-IO tests feed them to a
connection as a peer would send them); ``HELLO`` is a client's hello and ``ONE`` the encoded
value 1; ``frames`` is a hypothesis strategy for msgpack values of any shape, for fuzzing.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION


def pack(frame: Any) -> bytes:
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


HELLO = pack({"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION})
ONE = encode_value(1)

# Any msgpack frame (hypothesis): the shapes a peer may send, well-formed or not.

msgpack_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
frames = st.recursive(
    msgpack_leaves,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
