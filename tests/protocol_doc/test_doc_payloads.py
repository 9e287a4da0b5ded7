"""The table of valid and invalid values (PROTOCOL.md 9.6), sent to a real server: it accepts
exactly the rows the document calls valid, and refuses the others with RemoteProtocolError.
"""

from __future__ import annotations

import msgpack
import pytest

from doc_client import Client, assert_error
from doc_values import BIGINT, COMPLEX, DATE, DATETIME, DECIMAL, TIME, TIMEDELTA, UUID
from protocol_md import doc_table

CODES = {
    "BIGINT": BIGINT,
    "COMPLEX": COMPLEX,
    "DATETIME": DATETIME,
    "DATE": DATE,
    "TIME": TIME,
    "TIMEDELTA": TIMEDELTA,
    "DECIMAL": DECIMAL,
    "UUID": UUID,
}


def encoded(extension: str, cell: str) -> bytes:
    """The value a row describes: a payload (text in quotes, hex, or empty) in its extension,
    or a whole value in hex."""
    written = cell.strip("`")
    if cell == "(empty)":
        payload = b""
    elif written.startswith('"'):
        payload = written[1:-1].encode()
    else:
        payload = bytes.fromhex(written)
    if extension == "value":
        return payload
    packed: bytes = msgpack.packb(msgpack.ExtType(CODES[extension.strip("`")], payload))
    return packed


ROWS = doc_table("payloads")


@pytest.mark.parametrize(("extension", "cell", "valid", "why"), ROWS, ids=[row[1] for row in ROWS])
def test_the_server_accepts_exactly_the_valid_rows(
    client: Client, extension: str, cell: str, valid: str, why: str
) -> None:
    assert valid in ("yes", "no")
    reply = client.call("set", "payloads", "v", encoded(extension, cell))
    if valid == "yes":
        assert reply[1:] == [0, 1], (why, reply)
        assert client.result("get", "payloads", "v") == encoded(extension, cell)
    else:
        assert_error(reply, "RemoteProtocolError")
        assert client.result("snapshot", "payloads", []) == [0, {}]  # nothing changed
