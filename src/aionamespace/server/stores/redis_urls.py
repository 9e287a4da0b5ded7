"""Store URLs: where a Redis store's board lives, read without a Redis client or any I/O.

The forms (issue 16), with Redis URLs' credentials (``user:password@``, percent-encoded)::

    redis://[user:password@]host[:port][/db]                 one server over TCP
    rediss://[user:password@]host[:port][/db]                the same over TLS
    unix://[user:password@]/path/redis.sock[?db=N]           one server on a Unix socket
    redis+cluster://[user:password@]host:port[,host:port]    a Redis Cluster: its seed nodes
    rediss+cluster://...                                     the same over TLS

An IPv6 address goes in brackets (``[::1]:6379``); the port defaults to 6379. A unix URL may
also carry ``username`` and ``password`` as query parameters, as redis-py's unix URLs do
(``unix:///run/redis.sock?db=2&password=...``). A cluster has only database 0, so a cluster
URL takes none. Anything else is a ``ValueError`` that names what is wrong and never shows the
password: a user reads it in a terminal or a log, and so does everyone who reads those.

``parse_store_url`` returns a ``StoreUrl``: cluster or not, TLS or not, the nodes (host, port)
or the socket path, the database, the credentials, and ``redacted()``, the URL with the
password replaced, for messages and logs (``str()`` and ``repr()`` never show the password
either). ``url()`` writes the URL back in one canonical form, which parses to an equal
``StoreUrl``; ``client_options()`` gives a redis-py client's keyword arguments.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

__all__ = ["DEFAULT_PORT", "REDACTED", "SCHEMES", "StoreUrl", "parse_store_url"]

DEFAULT_PORT = 6379
#: What ``redacted()`` shows in the password's place.
REDACTED = "***"
#: The schemes a store URL may have, each with what it means: (TLS, cluster).
SCHEMES = {
    "redis": (False, False),
    "rediss": (True, False),
    "unix": (False, False),
    "redis+cluster": (False, True),
    "rediss+cluster": (True, True),
}
_FORMS = ", ".join(f"{scheme}://" for scheme in SCHEMES)
_UNIX_PARAMETERS = ("db", "username", "password")
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_DIGITS = re.compile(r"[0-9]+")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# What a part of a URL may carry unencoded (RFC 3986's unreserved and sub-delims characters).
_USERINFO_SAFE = "!$&'()*+,;="
_PATH_SAFE = "/!$&'()*+,;=:@"


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL (see the module's docstring). ``nodes`` is the one (host, port) of
    redis:// and rediss://, the seed nodes of a cluster, and empty for unix://."""

    scheme: str
    nodes: tuple[tuple[str, int], ...] = ()
    socket_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, nor a log

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown store URL scheme {self.scheme!r}: one of {_FORMS}")

    @property
    def tls(self) -> bool:
        return SCHEMES[self.scheme][0]

    @property
    def cluster(self) -> bool:
        return SCHEMES[self.scheme][1]

    @property
    def host(self) -> str | None:
        """The host of a single server over TCP (None for unix:// and clusters)."""
        return self.nodes[0][0] if len(self.nodes) == 1 and not self.cluster else None

    @property
    def port(self) -> int | None:
        """The port of a single server over TCP (None for unix:// and clusters)."""
        return self.nodes[0][1] if len(self.nodes) == 1 and not self.cluster else None

    def url(self) -> str:
        """The URL in its canonical form, password included: it parses to an equal StoreUrl."""
        return self._write(self.password)

    def redacted(self) -> str:
        """The URL with the password replaced by ``***``: for messages and logs."""
        return self._write(None if self.password is None else REDACTED)

    def __str__(self) -> str:
        return self.redacted()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for a redis-py client (``redis.asyncio.Redis(**options)``): where
        (``unix_socket_path``, or ``host`` and ``port``; not for a cluster, whose seed nodes
        are ``nodes``), ``db``, ``username``, ``password`` and ``ssl``."""
        options: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.socket_path is not None:
            options["unix_socket_path"] = self.socket_path
        elif not self.cluster:
            options["host"], options["port"] = self.nodes[0]
        if not self.cluster:
            options["db"] = self.db
        if self.tls:
            options["ssl"] = True
        return options

    def _write(self, password: str | None) -> str:
        userinfo = ""
        if self.username is not None or password is not None:
            userinfo = quote(self.username or "", safe=_USERINFO_SAFE)
            if password is not None:
                userinfo += ":" + quote(password, safe=_USERINFO_SAFE)  # REDACTED stays
            userinfo += "@"
        if self.socket_path is not None:
            query = f"?db={self.db}" if self.db else ""
            return f"unix://{userinfo}{quote(self.socket_path, safe=_PATH_SAFE)}{query}"
        nodes = ",".join(_write_node(host, port) for host, port in self.nodes)
        path = f"/{self.db}" if self.db else ""
        return f"{self.scheme}://{userinfo}{nodes}{path}"


def _write_node(host: str, port: int) -> str:
    if ":" in host:  # IPv6, its zone's % written %25 (RFC 6874)
        return f"[{host.replace('%', '%25')}]:{port}"
    return f"{host}:{port}"


def parse_store_url(url: str) -> StoreUrl:
    """Parse a store URL (see the module's docstring); ValueError naming what is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"a store URL is a str, not {type(url).__name__}")
    if any(character <= " " or character == "\x7f" for character in url):
        raise ValueError("a store URL has no spaces or control characters (percent-encode them)")
    given, separator, rest = url.partition("://")
    scheme = given.lower()
    if not separator or scheme not in SCHEMES:
        shown = f"scheme {given!r}" if separator else "no scheme"
        raise ValueError(f"not a store URL ({shown}): it starts with one of {_FORMS}")
    if "#" in rest:
        raise ValueError(
            f"a {scheme}:// URL has no fragment ('#...'; in a password, write '#' as %23)"
        )
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    path = slash + path
    userinfo, at, location = authority.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    if scheme == "unix":
        return _unix(location, path, query, username, password)
    if "@" in path or "@" in query:  # not shown: what follows may be a password's end
        raise ValueError(
            f"a {scheme}:// URL has an '@' after its host: percent-encode '/', '?', '#' and "
            "'@' in a username or password (%2F, %3F, %23, %40)"
        )
    if query:
        name = query.partition("=")[0]
        if name == "db" and SCHEMES[scheme][1]:
            raise ValueError(_NO_CLUSTER_DB)
        raise ValueError(
            f"a {scheme}:// URL takes no query parameters (found {name!r})"
            + ("; the database goes in the path: redis://host:6379/2" if name == "db" else "")
        )
    if SCHEMES[scheme][1]:
        if path not in ("", "/"):
            raise ValueError(_NO_CLUSTER_DB + f" (found the path {path!r})")
        seeds = tuple(_node(text, scheme) for text in location.split(","))
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"a {scheme}:// URL lists a seed node twice")
        return StoreUrl(scheme, seeds, None, 0, username, password)
    if "," in location:
        raise ValueError(
            f"a {scheme}:// URL names one server; for a cluster's seed nodes, "
            f"use {scheme}+cluster://host:port,host:port"
        )
    wrong = f"a {scheme}:// URL's path is the database number, as in {scheme}://host:6379/2"
    db = _db(path.removeprefix("/"), f"{wrong} (found {path!r})")
    return StoreUrl(scheme, (_node(location, scheme),), None, db, username, password)


_NO_CLUSTER_DB = "a cluster URL takes no database: a Redis Cluster has only database 0"


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    """(username, password) from ``user:password``, percent-decoded; empty ones are None."""
    user, colon, password = userinfo.partition(":")
    return (
        _decoded(user, "the username") or None,
        (_decoded(password, "the password") or None) if colon else None,
    )


def _decoded(text: str, what: str) -> str:
    """Percent-decode ``text`` (strictly: ``%`` must start a %XX escape of UTF-8); the error
    names ``what``, never the text (it may be a password)."""
    if _BAD_ESCAPE.search(text):
        raise ValueError(f"{what} has a '%' that does not start a %XX escape (write % as %25)")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 once percent-decoded") from None


def _node(text: str, scheme: str) -> tuple[str, int]:
    """(host, port) from ``host[:port]`` or ``[ipv6][:port]``."""
    if not text:
        where = "a seed node" if SCHEMES[scheme][1] else "the host"
        raise ValueError(f"{where} of a {scheme}:// URL is empty")
    if text.startswith("["):
        literal, bracket, after = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r}: an IPv6 address's '[' has no ']'")
        host = _ipv6(literal)
        if after and not after.startswith(":"):
            raise ValueError(f"{text!r}: after an IPv6 address's ']' comes ':port' or nothing")
        return host, _port(after[1:], text) if after else DEFAULT_PORT
    if text.count(":") > 1:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, as in [::1]:6379")
    host, colon, port = text.partition(":")
    if not host:
        raise ValueError(f"{text!r}: the host is empty")
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or an IP address")
    if _DIGITS.fullmatch(host.replace(".", "")):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    return host.lower(), _port(port, text) if colon else DEFAULT_PORT


def _ipv6(literal: str) -> str:
    address, percent, zone = literal.partition("%")
    if percent:  # RFC 6874: the zone's % is written %25
        if not zone.startswith("25") or not zone[2:]:
            raise ValueError(
                f"[{literal}]: an IPv6 zone is written %25zone, as in [fe80::1%25eth0]"
            )
        literal = f"{address}%{unquote(zone[2:])}"
    try:
        return str(ipaddress.IPv6Address(literal))
    except ValueError:
        raise ValueError(f"[{literal}] is not an IPv6 address") from None


def _port(text: str, node: str) -> int:
    if not text:
        raise ValueError(f"{node!r}: the port after ':' is empty")
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{node!r}: the port {text!r} is not a number from 1 to 65535")
    return int(text)


def _db(number: str, wrong: str) -> int:
    """The database number ``number`` ('' for 0); ``wrong``: the error's message."""
    if not number:
        return 0
    if not _DIGITS.fullmatch(number) or int(number) > 2**31 - 1:
        raise ValueError(wrong)
    return int(number)


def _unix(
    location: str, path: str, query: str, username: str | None, password: str | None
) -> StoreUrl:
    if location:  # not shown: it may be a password with a '/' left unencoded
        raise ValueError(
            "a unix:// URL names no host: the socket's absolute path follows the '//', "
            "as in unix:///run/redis/redis.sock"
        )
    socket_path = _decoded(path, "the socket path")
    if socket_path in ("", "/") or "\x00" in socket_path:
        raise ValueError("a unix:// URL needs the socket's path, as in unix:///run/redis.sock")
    try:
        parameters = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("a unix:// URL's query is name=value pairs joined by '&'") from None
    given = [name for name, _value in parameters]
    unknown = sorted(set(given) - set(_UNIX_PARAMETERS))
    if unknown:
        raise ValueError(
            f"a unix:// URL takes only {', '.join(_UNIX_PARAMETERS)} as parameters "
            f"(found {', '.join(map(repr, unknown))})"
        )
    if len(set(given)) != len(given):
        raise ValueError("a unix:// URL gives a parameter twice")
    values = dict(parameters)
    if "username" in values:
        if username is not None:
            raise ValueError("a unix:// URL gives the username twice (before '@' and in ?)")
        username = values["username"] or None
    if "password" in values:
        if password is not None:
            raise ValueError("a unix:// URL gives the password twice (before '@' and in ?)")
        password = values["password"] or None
    number = values.get("db")
    wrong = f"a unix:// URL's ?db= is a database number (found {number!r})"
    db = 0 if number is None else _db(number or "-", wrong)
    return StoreUrl("unix", (), socket_path, db, username, password)
