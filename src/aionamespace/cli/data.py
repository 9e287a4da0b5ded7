"""Data files from the command line: ``backup`` a live board into one, ``dump --data`` one;
reading and writing them for ``copy`` (copy.py).

``backup`` asks the server for a consistent copy of the whole board (the ``export`` op: every
namespace as it was at one instant) and writes it, value for value as the server holds them,
into a new data file: written beside its destination and renamed into place once complete, so
a backup interrupted leaves nothing behind. The server never opens a path a client names. A
backup is a new board: its epoch is its own, its namespaces keep their revisions and start
with no history.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator

from .._errors import DataFileError
from ..client import calls
from ..client.proxy import Target, format_namespace
from ..client.sync import Namespace
from ..protocol.addresses import Address
from ..server.stores import SQLiteStore
from .parser import CommandFailed

__all__ = ["backup", "dump_data_file", "read_data_file", "server_board", "write_data_file"]


def backup(address: Address, authkey: bytes | None, path: str) -> tuple[int, int]:
    """Copy the board at ``address`` into a new data file at ``path``: (namespaces, names)."""
    if os.path.lexists(path):
        raise CommandFailed(f"{path} exists: a backup is written to a new file")
    server = Namespace._from_target(Target.create(address, None, authkey=authkey))
    try:
        return write_data_file(path, server_board(server))
    finally:
        server._close()


def server_board(server: Namespace) -> Iterator[tuple[str, int, dict[str, bytes]]]:
    """Every namespace of a running server's board as it is at one instant (``export``):
    (key, revision, {name: encoded value})."""
    _, keys = server._run(calls.export())
    for key in keys:
        revision, values = server._run(calls.export_read(key))
        yield key, revision, values


def write_data_file(
    path: str, board: Iterable[tuple[str, int, dict[str, bytes]]]
) -> tuple[int, int]:
    """Write ``board``'s namespaces into a new data file at ``path``: (namespaces, names).
    Written beside it and renamed into place once complete; nothing is left otherwise."""
    if os.path.lexists(path):
        raise CommandFailed(f"{path} exists: a board is copied into a new data file")
    directory = os.path.dirname(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(prefix=".backup-", suffix=".db", dir=directory)
    os.close(handle)
    os.unlink(partial)  # SQLiteStore makes it, 0600
    namespaces = names = 0
    try:
        store = SQLiteStore(partial)
        try:
            for key, revision, values in board:
                store.restore(key, revision, values)
                namespaces += 1
                names += len(values)
            store.commit_now()
        finally:
            store.close()
        os.rename(partial, path)
    except BaseException:
        for leftover in (partial, partial + "-wal", partial + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise
    return namespaces, names


def dump_data_file(path: str, namespace: str | None) -> int:
    """``dump --data FILE [NAMESPACE]``: print a data file's namespaces, as ``dump`` does."""
    store = read_data_file(path)
    try:
        keys = store.keys()
        if namespace is not None:
            if namespace not in keys:
                raise CommandFailed(f"{path} holds no namespace {namespace!r}")
            keys = [namespace]
        for key in keys:
            print(f"{key}: {format_namespace(store.snapshot(key, None)[1])}")
    finally:
        store.close()
    return 0


def read_data_file(path: str, instead: str = "dump ADDRESS") -> SQLiteStore:
    """The store a data file holds, opened without a server (close it when done). If a
    server has it open, the error says to ask that server (``instead``) or back it up."""
    if not os.path.exists(path):
        raise DataFileError(f"there is no data file at {path}")
    try:
        return SQLiteStore(path)
    except DataFileError as exc:
        if "in use" in str(exc):
            raise DataFileError(
                f"{exc}: a data file is read here only while no server has it open; ask the "
                f"server instead ({instead}), or back it up (backup ADDRESS FILE)"
            ) from None
        raise
