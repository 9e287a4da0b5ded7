"""Store URLs (server/stores/redis_urls.py): every form parses as issue 16 says, anything else is
a ValueError naming what is wrong and never showing the password, and the canonical form and
the redacted one parse back. redis-py reads our URLs as we do (for the forms it knows).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import parse_url as redis_py_parse_url

from aionamespace.server.stores.redis_urls import (
    DEFAULT_PORT,
    REDACTED,
    StoreUrl,
    parse_store_url,
)

SECRET = "s3cret-Pw"

#: (url, the StoreUrl it is, its canonical form)
VALID: list[tuple[str, StoreUrl, str]] = [
    (
        "redis://localhost",
        StoreUrl("redis", (("localhost", 6379),)),
        "redis://localhost:6379",
    ),
    (
        "redis://localhost:7000/2",
        StoreUrl("redis", (("localhost", 7000),), db=2),
        "redis://localhost:7000/2",
    ),
    ("redis://h/", StoreUrl("redis", (("h", 6379),)), "redis://h:6379"),
    ("redis://h:6379/0", StoreUrl("redis", (("h", 6379),)), "redis://h:6379"),
    (
        "REDIS://Redis.Example.COM",
        StoreUrl("redis", (("redis.example.com", 6379),)),
        "redis://redis.example.com:6379",
    ),
    ("redis://10.0.0.7:6380", StoreUrl("redis", (("10.0.0.7", 6380),)), None),
    ("redis://my_redis:1", StoreUrl("redis", (("my_redis", 1),)), None),  # a compose name
    ("redis://h:06379", StoreUrl("redis", (("h", 6379),)), "redis://h:6379"),
    (
        f"redis://alice:{SECRET}@h:1/3",
        StoreUrl("redis", (("h", 1),), db=3, username="alice", password=SECRET),
        f"redis://alice:{SECRET}@h:1/3",
    ),
    (
        f"redis://:{SECRET}@h",  # AUTH with a password only (requirepass)
        StoreUrl("redis", (("h", 6379),), password=SECRET),
        f"redis://:{SECRET}@h:6379",
    ),
    (
        "redis://alice@h",
        StoreUrl("redis", (("h", 6379),), username="alice"),
        "redis://alice@h:6379",
    ),
    (
        "redis://alice:@h",
        StoreUrl("redis", (("h", 6379),), username="alice"),
        "redis://alice@h:6379",
    ),
    (
        "redis://us%3Aer:p%40ss%2Fw%3Fo%23rd%25%20x@h",  # percent-decoded credentials
        StoreUrl("redis", (("h", 6379),), username="us:er", password="p@ss/w?o#rd% x"),
        "redis://us%3Aer:p%40ss%2Fw%3Fo%23rd%25%20x@h:6379",
    ),
    (
        "redis://u:p:w@h",
        StoreUrl("redis", (("h", 6379),), username="u", password="p:w"),
        "redis://u:p%3Aw@h:6379",
    ),
    (
        "redis://u:p@w@h",
        StoreUrl("redis", (("h", 6379),), username="u", password="p@w"),
        "redis://u:p%40w@h:6379",
    ),
    (
        "redis://u:caf%C3%A9@h",
        StoreUrl("redis", (("h", 6379),), username="u", password="café"),
        "redis://u:caf%C3%A9@h:6379",
    ),
    ("redis://[::1]", StoreUrl("redis", (("::1", 6379),)), "redis://[::1]:6379"),
    ("redis://[::1]:7000/1", StoreUrl("redis", (("::1", 7000),), db=1), None),
    (
        "redis://[2001:DB8:0:0::1]:7000",
        StoreUrl("redis", (("2001:db8::1", 7000),)),
        "redis://[2001:db8::1]:7000",
    ),
    (
        "redis://[fe80::1%25eth0]:7000",
        StoreUrl("redis", (("fe80::1%eth0", 7000),)),
        "redis://[fe80::1%25eth0]:7000",
    ),
    ("rediss://h:6380", StoreUrl("rediss", (("h", 6380),)), None),
    (
        f"rediss://bob:{SECRET}@h.example:6380/4",
        StoreUrl("rediss", (("h.example", 6380),), db=4, username="bob", password=SECRET),
        None,
    ),
    ("unix:///run/redis/redis.sock", StoreUrl("unix", socket_path="/run/redis/redis.sock"), None),
    ("unix:///tmp/r.sock?db=5", StoreUrl("unix", socket_path="/tmp/r.sock", db=5), None),
    ("unix:///tmp/r.sock?db=0", StoreUrl("unix", socket_path="/tmp/r.sock"), "unix:///tmp/r.sock"),
    ("unix:///tmp/r.sock?", StoreUrl("unix", socket_path="/tmp/r.sock"), "unix:///tmp/r.sock"),
    (
        f"unix://alice:{SECRET}@/tmp/r.sock?db=1",
        StoreUrl("unix", socket_path="/tmp/r.sock", db=1, username="alice", password=SECRET),
        None,
    ),
    (
        f"unix:///tmp/r.sock?db=1&password={SECRET}",  # redis-py's documented unix form
        StoreUrl("unix", socket_path="/tmp/r.sock", db=1, password=SECRET),
        f"unix://:{SECRET}@/tmp/r.sock?db=1",
    ),
    (
        f"unix:///tmp/r.sock?username=alice&password={SECRET}",
        StoreUrl("unix", socket_path="/tmp/r.sock", username="alice", password=SECRET),
        f"unix://alice:{SECRET}@/tmp/r.sock",
    ),
    (
        "unix:///tmp/with%20space/r%3F.sock",
        StoreUrl("unix", socket_path="/tmp/with space/r?.sock"),
        "unix:///tmp/with%20space/r%3F.sock",
    ),
    (
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
        StoreUrl("redis+cluster", (("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002))),
        None,
    ),
    (
        "redis+cluster://seed",
        StoreUrl("redis+cluster", (("seed", 6379),)),
        "redis+cluster://seed:6379",
    ),
    (
        "redis+cluster://seed:7000/",
        StoreUrl("redis+cluster", (("seed", 7000),)),
        "redis+cluster://seed:7000",
    ),
    (
        f"redis+cluster://u:{SECRET}@a:1,[::1]:2,b",
        StoreUrl("redis+cluster", (("a", 1), ("::1", 2), ("b", 6379)), None, 0, "u", SECRET),
        f"redis+cluster://u:{SECRET}@a:1,[::1]:2,b:6379",
    ),
    (
        "rediss+cluster://a:1,b:2",
        StoreUrl("rediss+cluster", (("a", 1), ("b", 2))),
        None,
    ),
]


@pytest.mark.parametrize(("url", "expected", "canonical"), VALID, ids=[v[0] for v in VALID])
def test_valid_urls(url: str, expected: StoreUrl, canonical: str | None) -> None:
    parsed = parse_store_url(url)
    assert parsed == expected
    assert parsed.url() == (canonical or url)
    assert parse_store_url(parsed.url()) == parsed


def test_what_a_parsed_url_says() -> None:
    tcp = parse_store_url(f"rediss://u:{SECRET}@h:7000/2")
    assert (tcp.tls, tcp.cluster, tcp.host, tcp.port, tcp.db) == (True, False, "h", 7000, 2)
    assert (tcp.username, tcp.password, tcp.socket_path) == ("u", SECRET, None)
    unix = parse_store_url("unix:///tmp/r.sock?db=3")
    assert (unix.tls, unix.cluster, unix.host, unix.port, unix.nodes) == (
        False,
        False,
        None,
        None,
        (),
    )
    assert (unix.socket_path, unix.db) == ("/tmp/r.sock", 3)
    seeds = parse_store_url("rediss+cluster://a:1,b")
    assert (seeds.tls, seeds.cluster, seeds.host, seeds.port) == (True, True, None, None)
    assert seeds.nodes == (("a", 1), ("b", DEFAULT_PORT))
    assert not parse_store_url("redis+cluster://a:1").tls


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://h:1/2", {"host": "h", "port": 1, "db": 2, "username": None, "password": None}),
        (
            f"rediss://u:{SECRET}@h",
            {"host": "h", "port": 6379, "db": 0, "username": "u", "password": SECRET, "ssl": True},
        ),
        (
            "unix:///tmp/r.sock?db=1",
            {"unix_socket_path": "/tmp/r.sock", "db": 1, "username": None, "password": None},
        ),
        (f"rediss+cluster://:{SECRET}@a:1", {"username": None, "password": SECRET, "ssl": True}),
    ],
)
def test_client_options_are_redis_py_keywords(url: str, options: dict[str, Any]) -> None:
    assert parse_store_url(url).client_options() == options


#: (url, what the error says). None of these messages may show SECRET.
INVALID: list[tuple[str, str]] = [
    ("", "no scheme"),
    ("localhost:6379", "no scheme"),
    ("redis:localhost", "no scheme"),
    ("http://localhost", "scheme 'http'"),
    ("redis+sentinel://h:26379", "scheme 'redis+sentinel'"),
    ("valkey://h", "one of redis://, rediss://, unix://, redis+cluster://, rediss+cluster://"),
    ("redis://", "the host of a redis:// URL is empty"),
    (f"redis://u:{SECRET}@", "the host of a redis:// URL is empty"),
    ("redis://:6379", "the host is empty"),
    ("redis:///0", "the host of a redis:// URL is empty"),
    ("redis://h:", "the port after ':' is empty"),
    ("redis://h:0", "the port '0' is not a number from 1 to 65535"),
    ("redis://h:65536", "the port '65536' is not a number from 1 to 65535"),
    ("redis://h:-1", "the port '-1' is not"),
    ("redis://h:http", "the port 'http' is not"),
    ("redis://h:\u0663", "the port '\u0663' is not"),  # an Arabic-Indic digit: not a port
    ("redis://h/x", "path is the database number, as in redis://host:6379/2 (found '/x')"),
    ("redis://h/1/2", "found '/1/2'"),
    ("redis://h/-1", "found '/-1'"),
    ("redis://h/99999999999", "found '/99999999999'"),
    ("rediss://h/db0", "a rediss:// URL's path is the database number"),
    ("redis://h?db=1", "takes no query parameters (found 'db'); the database goes in the path"),
    ("redis://h?timeout=1", "takes no query parameters (found 'timeout')"),
    ("redis://h#frag", "has no fragment"),
    (f"redis://u:{SECRET}#x@h", "write '#' as %23"),
    (f"redis://u:{SECRET}/x@h", "has an '@' after its host: percent-encode"),
    (f"redis://u:{SECRET}?x@h", "has an '@' after its host"),
    (f"redis://u:{SECRET}%zz@h", "the password has a '%' that does not start a %XX escape"),
    ("redis://us%4@h", "the username has a '%' that does not start"),
    (f"redis://u:{SECRET}%ff@h", "the password is not UTF-8 once percent-decoded"),
    ("redis://a:1,b:2", "names one server; for a cluster's seed nodes, use redis+cluster://"),
    ("redis://::1", "an IPv6 address goes in brackets"),
    ("redis://::1:6379", "an IPv6 address goes in brackets"),
    ("redis://[::1", "'[' has no ']'"),
    ("redis://[::1]6379", "after an IPv6 address's ']' comes ':port' or nothing"),
    ("redis://[::1]:", "the port after ':' is empty"),
    ("redis://[nope]:1", "[nope] is not an IPv6 address"),
    ("redis://[1.2.3.4]", "[1.2.3.4] is not an IPv6 address"),
    ("redis://[fe80::1%eth0]", "an IPv6 zone is written %25zone"),
    ("redis://300.1.1.1", "'300.1.1.1' is not an IPv4 address"),
    ("redis://1.2.3", "'1.2.3' is not an IPv4 address"),
    ("redis://bad*host", "'bad*host' is not a host name or an IP address"),
    ("redis://-h", "'-h' is not a host name"),
    ("redis://h%41", "'h%41' is not a host name"),
    ("redis:// h", "no spaces or control characters"),
    ("redis://h\n", "no spaces or control characters"),
    ("unix://", "needs the socket's path"),
    ("unix:///", "needs the socket's path"),
    ("unix:///tmp/a%00b", "needs the socket's path"),
    ("unix://localhost/tmp/r.sock", "a unix:// URL names no host"),
    (f"unix://u:{SECRET}/x@/tmp/r.sock", "a unix:// URL names no host"),
    ("unix://tmp/r.sock", "a unix:// URL names no host"),
    ("unix:///tmp/r.sock?db=x", "?db= is a database number (found 'x')"),
    ("unix:///tmp/r.sock?db=", "?db= is a database number (found '')"),
    ("unix:///tmp/r.sock?timeout=1&x=2", "only db, username, password as parameters"),
    ("unix:///tmp/r.sock?db=1&db=2", "gives a parameter twice"),
    ("unix:///tmp/r.sock?db", "name=value pairs"),
    (f"unix://u:{SECRET}@/tmp/r.sock?password={SECRET}", "gives the password twice"),
    ("unix://u@/tmp/r.sock?username=v", "gives the username twice"),
    ("redis+cluster://h:1/0", "a cluster URL takes no database: a Redis Cluster has only db"),
    ("rediss+cluster://h:1/2", "(found the path '/2')"),
    ("redis+cluster://h:1?db=0", "a cluster URL takes no database"),
    ("redis+cluster://", "a seed node of a redis+cluster:// URL is empty"),
    ("redis+cluster://a:1,,b:2", "a seed node of a redis+cluster:// URL is empty"),
    ("redis+cluster://a:1,", "a seed node of a redis+cluster:// URL is empty"),
    ("redis+cluster://a:1,a:1", "lists a seed node twice"),
    ("redis+cluster://a:1,b:x", "the port 'x' is not"),
    ("redis+cluster://a:1?x=1", "takes no query parameters (found 'x')"),
]


@pytest.mark.parametrize(("url", "message"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"\S") as raised:
        parse_store_url(url)
    shown = str(raised.value)
    assert message.replace("a Redis Cluster has only db", "a Redis Cluster has only database") in (
        shown
    ), shown
    assert SECRET not in shown
    assert raised.value.__cause__ is None  # no chained exception carries the URL either


def test_a_url_is_a_string() -> None:
    with pytest.raises(TypeError, match="a store URL is a str, not bytes"):
        parse_store_url(b"redis://h")  # type: ignore[arg-type]


def test_redacted_never_shows_the_password() -> None:
    for url in [v[0] for v in VALID if SECRET in v[0]]:
        parsed = parse_store_url(url)
        for shown in (parsed.redacted(), str(parsed), repr(parsed), f"{parsed}"):
            assert SECRET not in shown, shown
        assert REDACTED in parsed.redacted()
        assert parse_store_url(parsed.redacted()) == dataclasses.replace(parsed, password=REDACTED)
    assert parse_store_url("redis://h").redacted() == "redis://h:6379"  # nothing to hide


def test_a_store_url_names_a_known_scheme() -> None:
    with pytest.raises(ValueError, match=re.escape("unknown store URL scheme 'redis+sentinel'")):
        StoreUrl("redis+sentinel", (("h", 1),))


@pytest.mark.parametrize(
    "url",
    [
        v[0]
        for v in VALID
        if not v[1].cluster and "%25eth0" not in v[0]  # redis-py lowercases the zone too
    ],
)
def test_redis_py_reads_our_urls_as_we_do(url: str) -> None:
    """redis-py's own parser (what ``Redis.from_url`` uses) agrees on every field it knows."""
    ours = parse_store_url(url)
    assert _as_redis_py_reads(ours.url()) == _expected_by_redis_py(ours)


def _as_redis_py_reads(url: str) -> dict[str, Any]:
    theirs = redis_py_parse_url(url)
    theirs.pop("connection_class", None)
    if "path" in theirs:
        theirs["unix_socket_path"] = theirs.pop("path")
    return theirs


def _expected_by_redis_py(ours: StoreUrl) -> dict[str, Any]:
    expected = {
        name: value
        for name, value in ours.client_options().items()
        if value is not None and name != "ssl"  # rediss:// is its connection class
    }
    if not ours.db:
        del expected["db"]  # not written: redis-py leaves it to its default, 0
    return expected


# Hypothesis: any StoreUrl writes a URL that parses back to it, redacted or not.

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,10}[a-z0-9])?", fullmatch=True)
_NAME = st.lists(_LABEL, min_size=1, max_size=3).map(".".join)
_HOSTS = st.one_of(
    _NAME.filter(lambda name: not name.replace(".", "").isdigit()),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.tuples(st.ip_addresses(v=6).map(str), _LABEL).map(lambda pair: f"{pair[0]}%{pair[1]}"),
)
_NODES = st.tuples(_HOSTS, st.integers(1, 65535))
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)
_CREDENTIALS = st.one_of(st.none(), _TEXT)
_PATHS = st.lists(_TEXT.filter(lambda part: "/" not in part), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)
_DBS = st.integers(0, 2**31 - 1)


@st.composite
def store_urls(draw: st.DrawFn) -> StoreUrl:
    scheme = draw(st.sampled_from(["redis", "rediss", "unix", "redis+cluster", "rediss+cluster"]))
    username, password = draw(_CREDENTIALS), draw(_CREDENTIALS)
    if scheme == "unix":
        return StoreUrl(scheme, (), draw(_PATHS), draw(_DBS), username, password)
    if scheme.endswith("+cluster"):
        seeds = draw(st.lists(_NODES, min_size=1, max_size=5, unique=True))
        return StoreUrl(scheme, tuple(seeds), None, 0, username, password)
    return StoreUrl(scheme, (draw(_NODES),), None, draw(_DBS), username, password)


@given(store_urls())
def test_any_store_url_round_trips(url: StoreUrl) -> None:
    assert parse_store_url(url.url()) == url
    redacted = url.redacted()
    assert parse_store_url(redacted) == dataclasses.replace(
        url, password=None if url.password is None else REDACTED
    )


@given(store_urls().filter(lambda url: not url.cluster))
def test_redis_py_agrees_on_any_single_server_url(url: StoreUrl) -> None:
    assert _as_redis_py_reads(url.url()) == _expected_by_redis_py(url)


_URLISH = st.from_regex(
    r"(redis|rediss|unix|redis\+cluster|rediss\+cluster)://[a-z0-9:@%\[\]/?=&.,#_-]{0,30}",
    fullmatch=True,
)


@given(st.one_of(st.text(max_size=60), _URLISH))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    """Whatever the text, the parser answers with a StoreUrl or a ValueError, nothing else."""
    try:
        parsed = parse_store_url(text)
    except ValueError:
        return
    assert parse_store_url(parsed.url()) == parsed
