"""docs/PROTOCOL.md, tested: an independent client written from the document alone.

The client (doc_client.py, its values in doc_values.py) uses plain ``socket``, ``ssl`` and
``msgpack`` and nothing from aionamespace's protocol, ops or codec modules: if it can talk to a
real server (on asyncio and on trio, over Unix sockets, TCP and TLS) and exchange values, watch
events and locks with the real proxies, the document is precise enough to write a client from.
The worked examples, the authentication test vector and the value examples in the document are
hex dumps; they are parsed out of PROTOCOL.md (protocol_md.py) and compared with what the
library produces, and the document's tables and limits are compared with the library's (only
test_doc_examples.py and test_doc_tables.py import the library's internals, as the reference),
so the document cannot silently drift from the code.

This conftest.py gives the tests here ``client``: a connection of that client, past the hello,
to the suite's ``server``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aionamespace import ServerThread
from doc_client import Client, connect


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with connect(server) as connected:
        yield connected
