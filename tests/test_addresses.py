"""Server addresses: ``parse_address`` reads every documented form (Unix paths, ``unix:``,
``host:port``, ``tcp://``, IPv6 in brackets, tuples) or raises ValueError, and
``format_address`` writes one that parses back to the same address.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace.protocol.connection import Address, format_address, parse_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("/tmp/ns.sock", "/tmp/ns.sock"),
        ("/tmp/with:colon/ns.sock", "/tmp/with:colon/ns.sock"),
        ("relative.sock", "relative.sock"),
        ("./dir/ns.sock", "./dir/ns.sock"),
        ("unix:/tmp/ns.sock", "/tmp/ns.sock"),
        ("unix:relative:with:colons", "relative:with:colons"),
        ("localhost:8000", ("localhost", 8000)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("example.com:65535", ("example.com", 65535)),
        (":8000", ("127.0.0.1", 8000)),
        ("tcp://localhost:8000", ("localhost", 8000)),
        ("tcp:localhost:8000", ("localhost", 8000)),
        ("tcp://[::1]:8000", ("::1", 8000)),
        ("[::1]:8000", ("::1", 8000)),
        ("[fe80::1]:1", ("fe80::1", 1)),
        (("h", 5), ("h", 5)),
        (("::1", 0), ("::1", 0)),
        (("h", "80"), ("h", 80)),
    ],
    ids=repr,
)
def test_parse_address(address: object, expected: Address) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "bad",
    [
        ("h", -1),
        ("h", 70000),
        ("h", 65536),
        ("h", "x"),
        ("h", None),
        ("h", 5.0),
        ("h", True),
        ("h", ""),
        "h:-1",
        "h:70000",
        "h:x",
        "h:",
        "[::1]:port",
        "tcp://host",
        "tcp://",
        "",
        None,
        5,
        b"/tmp/ns.sock",
        ("h",),
        ("h", 1, 2),
        (1, 2),
        ["h", 1],
    ],
    ids=repr,
)
def test_parse_address_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"address|port"):
        parse_address(bad)


@pytest.mark.parametrize(
    "address",
    [
        "/tmp/ns.sock",
        "unix:/tmp/ns.sock",
        "localhost:8000",
        "tcp://h:1",
        "[::1]:8000",
        ("::1", 9),
        ("h", 0),
        ("10.0.0.1", 65535),
    ],
    ids=repr,
)
def test_format_address_round_trips(address: object) -> None:
    parsed = parse_address(address)
    assert parse_address(format_address(parsed)) == parsed


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["::1", "::", "fe80::1", "2001:db8::42", "127.0.0.1", "0.0.0.0"]),
)
absolute_paths = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40
).map(lambda rest: "/" + rest)


@settings(max_examples=200, deadline=None)
@given(st.tuples(hosts, st.integers(0, 65535)) | absolute_paths)
def test_format_address_round_trips_any_address(address: Address) -> None:
    assert parse_address(format_address(address)) == address


@pytest.mark.parametrize("path", ["host:80", "a:b", "unix:x/y", "tcp:x"], ids=repr)
def test_format_address_round_trips_relative_paths_with_colons(path: str) -> None:
    """A relative Unix path given as unix:PATH must not come back as TCP, or fail to parse."""
    parsed = parse_address("unix:" + path)
    assert parsed == path
    assert parse_address(format_address(parsed)) == path
