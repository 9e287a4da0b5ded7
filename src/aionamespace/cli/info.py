"""``info ADDRESS``: what a running server holds and serves, as ``redis-cli INFO`` answers.

The figures come from the ``info`` operation (docs/PROTOCOL.md, section 5.4): printed one
subject a line, or with ``--json`` as the one JSON object the server sent. A figure this
version does not know (a newer server's) is printed at the end, as it came.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..client.proxy import Target
from ..client.sync import Namespace
from ..protocol.addresses import Address, format_address

__all__ = ["describe", "run_info"]


def run_info(address: Address, authkey: bytes | None, as_json: bool) -> int:
    server = Namespace._from_target(Target.create(address, None, authkey=authkey))
    try:
        figures = server._info()
    finally:
        server._close()
    if as_json:
        print(json.dumps(figures, indent=2, sort_keys=True))
    else:
        print("\n".join(describe(figures, address)))
    return 0


def describe(figures: dict[str, Any], address: Address) -> list[str]:
    """The lines ``info`` prints for ``figures``, which the server at ``address`` sent."""
    shown: set[str] = set()

    def get(name: str) -> Any:
        shown.add(name)
        return figures.get(name)

    def count(name: str) -> str:
        return _number(get(name))

    limits = get("limits") if isinstance(figures.get("limits"), dict) else {}
    limit: Callable[[str], str] = lambda name: _number(limits.get(name))  # noqa: E731
    lines = [
        f"aionamespace {get('version') or '?'} at {format_address(address)} "
        f"(protocol {get('protocol')})",
        f"epoch        {get('epoch') or '?'}",
        f"uptime       {_duration(get('uptime'))}",
        f"backend      {get('backend') or '?'} (event loop: {get('loop') or '?'})",
        f"store        {get('store') or '?'}{_place(get('store_location'), get('store_prefix'))}",
        f"connections  {count('connections')} open: {count('authenticated_connections')} "
        f"authenticated, {count('handshaking_connections')} in their handshake "
        f"(at most {limit('max_connections')}, {limit('max_handshakes')} in their handshake); "
        f"{count('connections_accepted')} accepted since the start",
        f"namespaces   {count('namespaces')}: {count('named_namespaces')} named, "
        f"{count('anonymous_namespaces')} anonymous (at most {limit('max_namespaces')})",
        f"names        {count('names')}, holding {count('value_bytes')} bytes of values",
        f"history      {count('history_revisions')} revisions, {count('history_bytes')} bytes; "
        f"the longest {count('largest_history_revisions')} revisions, the largest "
        f"{count('largest_history_bytes')} bytes (at most {limit('max_history_revisions')} "
        f"revisions and {limit('max_history_bytes')} bytes per namespace)",
        f"locks        {count('locks_held')} held, {count('lock_waits')} waits in line",
        f"watches      {count('watches')}",
        f"caches       {count('tracking_connections')} connections tracking, "
        f"{count('tracked_names')} names tracked",
        f"requests     {count('requests')} served: {_rate(get('requests_per_second'))} per "
        f"second since the start, {_rate(get('recent_requests_per_second'))} over the last "
        "10 seconds",
        "limits",
    ]
    lines += [f"  {name:<25}{_number(value)}" for name, value in sorted(limits.items())]
    lines += [f"{name:<13}{figures[name]!r}" for name in sorted(set(figures) - shown)]
    return lines


def _place(location: Any, prefix: Any) -> str:
    """Where the store keeps the board, after its kind: `` at URL (keys PREFIX...)``."""
    if not location:
        return ""
    return f" at {location}" + (f" (keys {prefix}...)" if prefix else "")


def _number(value: Any) -> str:
    if type(value) is int:
        return f"{value:,}"
    if type(value) is float:
        return f"{value:g}"
    return "?" if value is None else str(value)


def _rate(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, (int, float)) else "-"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02}m {secs:02}s" if whole >= 3600 else f"{minutes}m {secs:02}s"
    return f"{days}d {text}" if days else text
