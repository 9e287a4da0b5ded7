"""Connection-level errors (7): what came before the bad bytes is answered, then the error, always
the last frame; and the goodbye every open connection gets when the server stops.
"""

from __future__ import annotations

import os

from aionamespace import ServerThread
from doc_client import ERROR, HELLO, OK, PUSH, Client, connect, pack, recv_exactly
from doc_values import decode, encode
from protocol_md import doc_examples, hex_bytes


def test_connection_level_error(client: Client) -> None:
    client.send([0, "ping"])  # id 0 is never a request id
    (error,) = client.receive()
    assert error[:3] == [0, ERROR, "RemoteProtocolError"]
    assert client.at_eof()


def test_broken_frame_after_the_hello(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.send(HELLO, [1, "ping"], "not a request", [2, "ping"])
        hello, reply, error = client.receive(3)
        assert hello["version"] == 1
        assert reply == [1, OK, None]  # what came before the broken frame is answered
        assert error[:3] == [0, ERROR, "RemoteProtocolError"]
        assert client.at_eof()  # and nothing after it


def test_malformed_bytes_in_the_same_read(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.sock.sendall(pack(HELLO) + pack([1, "set", "k", "x", encode(1)]) + b"\xc1")
        hello, reply, error = client.receive(3)
        assert hello["version"] == 1  # the hello is answered...
        assert reply == [1, OK, 1]  # ...and so is the request completed before the bad byte
        assert error[:3] == [0, ERROR, "RemoteProtocolError"]
        assert client.at_eof()
    with connect(server) as other:
        assert decode(other.result("get", "k", "x")) == 1  # it was applied


def test_connection_level_error_is_the_last_frame(client: Client) -> None:
    """The breaking batch's pushes and deferred replies come before the error, never after."""
    watch_id = client.result("watch", "k", None, None)[0]
    assert client.result("acquire", "k", "lock", b"holder", None) is None
    waiting = client.frame("acquire", "k", "lock", b"waiter", None)
    client.send(waiting)
    assert client.quiet()
    change, release = (
        client.frame("set", "k", "x", encode(1)),
        client.frame("release", "k", "lock", b"holder"),
    )
    client.sock.sendall(pack(change) + pack(release) + b"\xc1")
    *frames, error = client.until_eof()
    assert error[:3] == [0, ERROR, "RemoteProtocolError"]
    push, grant = [0, PUSH, watch_id, 1, "x", encode(1)], [waiting[0], OK, None]
    assert sorted(frames, key=repr) == sorted(
        [[change[0], OK, 1], [release[0], OK, True], push, grant], key=repr
    )
    assert frames.index([change[0], OK, 1]) < frames.index(push) < frames.index(grant)
    assert frames.index([release[0], OK, True]) < frames.index(grant)


def test_goodbye_when_the_server_stops(short_tmp: str, server_backend: str) -> None:
    """Every open connection is told why it ends (7.4): the connection-level error, or the hello
    error form where no hello was accepted; then the connection closes."""
    goodbye = hex_bytes(doc_examples()["goodbye"])
    with ServerThread(os.path.join(short_tmp, "g.sock"), backend=server_backend) as server:
        with Client(server.address) as silent, Client(server.address) as partial:
            partial.sock.sendall(pack(HELLO)[:5])  # part of a hello: none accepted yet
            with connect(server) as greeted:
                # A round trip on a later connection: the server has taken the others in.
                assert greeted.result("ping") is None
                server.stop()
                assert recv_exactly(greeted.sock, len(goodbye) + 1) == goodbye  # then the end
            for client in (silent, partial):
                assert client.receive() == [
                    {
                        "protocol": "aionamespace",
                        "error": ["ConnectionLost", "the server is shutting down"],
                    }
                ]
                assert client.at_eof()
