"""``copy SOURCE DESTINATION``: every namespace of one board into another.

A board is a running server (its address: whatever store it keeps the board in, memory, a data
file or Redis) or a data file no server has open (``--from-data FILE``, ``--to-data FILE``).
So a board grows from a file to a server over Redis, and back, without code:

    aionamespace copy --from-data board.db /run/aionamespace.sock
    aionamespace copy /run/aionamespace.sock --to-data board.db

What is copied is the source as it was at one instant (a running server's ``export``; a data
file is not changed while it is read, as no server has it open), value for value as encoded,
never decoded and encoded again. The destination's revisions are its own: each namespace it
gets is a change there, as watchers of it see. A data file is written as ``backup`` writes one:
a new file, complete before it appears. Into a running server, a copy refuses to touch a
namespace the destination already holds, unless ``--overwrite``: then the source's names
replace the destination's, and names only the destination has are kept. Anonymous namespaces
are copied too; on a running server, as ever, they are freed once unused for
``anonymous_grace``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..client import calls
from ..client.proxy import Target
from ..client.sync import Namespace
from ..protocol.addresses import Address
from ..protocol.limits import Limits
from .data import read_data_file, server_board, write_data_file
from .parser import CommandFailed

__all__ = ["Board", "copy_board"]

#: One namespace as a board gives it: (key, revision, {name: encoded value}).
Board = Iterator[tuple[str, int, dict[str, bytes]]]

#: The most bytes of values sent in one request to a running server (well under its frame
#: bound, ``Limits.max_frame_bytes``, whatever it is configured to).
CHUNK_BYTES = min(4 * 1024 * 1024, Limits().max_frame_bytes // 4)


def copy_board(
    source: Address | None,
    from_data: str | None,
    destination: Address | None,
    to_data: str | None,
    authkey: bytes | None,
    overwrite: bool,
) -> tuple[int, int]:
    """Copy every namespace of the source board into the destination: (namespaces, names)."""
    with contextlib.ExitStack() as stack:
        if from_data is not None:
            board = _data_file_board(from_data, stack)
        else:
            assert source is not None
            board = server_board(_connect(source, authkey, stack))
        if to_data is not None:
            return write_data_file(to_data, board)
        assert destination is not None
        return _into_server(_connect(destination, authkey, stack), board, overwrite)


def _connect(address: Address, authkey: bytes | None, stack: contextlib.ExitStack) -> Namespace:
    server: Namespace = Namespace._from_target(Target.create(address, None, authkey=authkey))
    stack.callback(server._close)
    return server


def _data_file_board(path: str, stack: contextlib.ExitStack) -> Board:
    store = read_data_file(path, instead="copy ADDRESS DESTINATION")
    stack.callback(store.close)
    return ((key, *store.snapshot(key, None)) for key in store.keys())


def _into_server(server: Namespace, board: Board, overwrite: bool) -> tuple[int, int]:
    held = set(server._run(calls.keys()))
    namespaces = names = 0
    for key, _, values in board:
        if key in held and not overwrite:
            raise CommandFailed(
                f"the destination already holds the namespace {key!r} "
                f"({namespaces} namespace(s) copied before it); --overwrite to write into it"
            )
        chunks = _chunks(values)
        if key not in held:  # made by its first chunk: an anonymous one takes nothing else
            server._run((calls.OPEN, (key, next(chunks, {}))))
        for chunk in chunks:
            server._run((calls.UPDATE, (key, chunk)))
        namespaces += 1
        names += len(values)
    return namespaces, names


def _chunks(values: dict[str, bytes]) -> Iterator[dict[str, bytes]]:
    """``values`` in requests of at most ``CHUNK_BYTES`` of values (a larger value alone)."""
    chunk: dict[str, bytes] = {}
    size = 0
    for name, value in values.items():
        if chunk and size + len(value) > CHUNK_BYTES:
            yield chunk
            chunk, size = {}, 0
        chunk[name] = value
        size += len(value) + len(name)
    if chunk:
        yield chunk
