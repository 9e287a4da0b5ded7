"""A batch's rounds over the Redis store's own connections (redis_link.py): the hot path.

Each round packs the calls still to run (redis_wire.py), each an ``EVALSHA`` of the namespace
script, the first round with the read of the board's epoch, and sends them, every node's in one
write; then it reads each call's reply (redis_calls.py). A get or a snapshot of named values
goes as plain reads in ``MULTI``/``EXEC`` instead (``Call.transaction``: as atomic, and it
costs Redis a fraction of the script's Lua), unless a write follows it on its namespace in
the round: a read that finds a list goes to the script in the next round, and must not be
answered after a write that was sent after it. A call is sent again only when its
reply says the script did not run: ``NOSCRIPT`` (the script is loaded again, once) or ``MOVED``
(the cluster's slot map is read again, ``MAX_MOVES`` times at most), and after a conditional
write that failed (redis_scripts.py, Rounds); a plain read after such a call on its
namespace is read again after it. Whatever else fails is the call's ``StoreUnavailable``:
nothing that may have run runs twice.

**At once.** A batch of plain reads only (``read_now``: gets and snapshots of names, each sent
as its ``MULTI``/``EXEC``, after the epoch's read), or of one write that needs no more than one
script call (``write_now``: a set, an update), may go without a round at all: written from the
caller's callback, its replies parsed in the link's (``submit_then``), no await (in a cluster,
the epoch's read and each call go to their nodes, and the last node's reply calls back,
``submit_each_then``). If a read's reply is not a plain read's answer (an error, a node that
failed, a list found, the epoch changed), the caller is told None and serves the batch the
usual way: reads have no effect. A write is told None only if its script did not run
(``NOSCRIPT``, ``MOVED``): what may have run is never sent again.

What most calls send is the same but for their names and values, so it is packed once: the
script call's head (``ScriptCall``), the usual leading arguments (the operation, the history's
bounds, the flags, the epoch) per (operation, flags, epoch), each namespace's base, and the
plain reads of a name or of a snapshot's names (``PackedReads``); these caches are bounded
(``MAX_PACKED``, and ``PackedReads``'s entries and bytes).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..._errors import StoreUnavailable
from .redis_calls import Ahead, Call, full
from .redis_link import Link, Links, Then, _grouped
from .redis_wire import Packed, PackedReads, ReplyError, ScriptCall, pack, pack_args

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["MAX_MOVES", "MAX_PACKED", "Rounds"]

#: Keys whose bases, and argument heads, a store keeps packed (then it starts again).
MAX_PACKED = 10_000
#: The replies of a read sent as MULTI, its two commands, EXEC (Call.transaction).
TRANSACTION_REPLIES = 4
#: MOVED replies one batch follows (the slot map read again each time) before it gives up.
MAX_MOVES = 3


class Rounds:
    """Runs a store's batches in rounds over its links (``links``: set once it started)."""

    def __init__(self, store: RedisStore, sha: str, epoch_key: str) -> None:
        self._store = store
        self.links: Links | None = None
        self._script_call = ScriptCall(sha)
        self._read_epoch = (epoch_key.encode(), pack("GET", epoch_key), 1)
        self._packed: dict[tuple[str, int, int, str], bytes] = {}
        self._bases: dict[str, bytes] = {}  # key -> its base, encoded
        self._reads = PackedReads()  # the plain reads packed, by (base, names)
        self._id = secrets.token_hex(8)  # with a count, the tokens of its rounds
        self._rounds = 0

    def base(self, key: str) -> bytes:
        """The key's base, encoded (kept)."""
        base = self._bases.get(key)
        if base is None:
            if len(self._bases) >= MAX_PACKED:
                self._bases.clear()
            base = self._bases[key] = self._store.base(key).encode()
        return base

    def read_now(self, calls: list[Call], done: Callable[[list[Call] | None], None]) -> bool:
        """Send plain reads at once (module's docstring): False, and nothing sent, if one of
        them is not one or the link is not connected; else ``done`` is told the calls, done,
        or None (serve them the usual way)."""
        links, plain_reads = self.links, self._reads
        if links is None:
            return False
        store = self._store
        if store._cluster:  # (each read, and the epoch's, to its node)
            triples = [self._read_epoch]
            for call in calls:
                base = self.base(call.key)
                reads = call.transaction(base, plain_reads)
                if not reads:
                    return False
                triples.append((base, reads, TRANSACTION_REPLIES))
            then = functools.partial(self._read_grouped, calls, done)
            return submit_each_then(links, triples, store._timeout, then)
        commands = [self._read_epoch[1]]
        for call in calls:
            reads = call.transaction(self.base(call.key), plain_reads)
            if not reads:
                return False
            commands.append(reads)
        count = 1 + TRANSACTION_REPLIES * len(calls)
        then = functools.partial(self._read, calls, done)
        return links.submit_then(b"".join(commands), count, store._timeout, then)

    def write_now(self, call: Call, done: Callable[[tuple[str | None, bool] | None], None]) -> bool:
        """Send one write of a namespace the store registered, at once (module's docstring):
        False, and nothing sent, if the link is not connected; else ``done`` is told, once
        the call is done, the board's epoch read with it and whether it made its namespace,
        or None if its script did not run."""
        links = self.links
        if links is None:
            return False
        store = self._store
        op, args = call.request()
        head = self._usual_head(op, 1, int(call.want_list))
        base = self.base(call.key)
        if type(args) is Packed:
            command = self._script_call.pack(base, (), head + args.data, 8 + args.arguments)
        else:
            command = self._script_call.pack(base, args, head, 8)
        then = functools.partial(self._written, call, done)
        if store._cluster:  # (the epoch and the namespace in slots of their own)
            commands = [self._read_epoch, (base, command, 1)]
            return submit_each_then(links, commands, store._timeout, then)
        return links.submit_then(self._read_epoch[1] + command, 2, store._timeout, then)

    def _written(
        self,
        call: Call,
        done: Callable[[tuple[str | None, bool] | None], None],
        replies: list[Any] | Exception,
    ) -> None:
        store = self._store
        if isinstance(replies, Exception):  # (lost, or timed out: it may have run)
            call.finish(store._unavailable(replies))
            done((store.epoch, False))
            return
        found, reply = replies
        epoch: str | None = store.epoch
        if not isinstance(found, Exception):
            epoch = None if found is None else found.decode()
        made = False
        if type(reply) is ReplyError:
            if str(reply).startswith(("NOSCRIPT", "MOVED ")):
                done(None)  # (it did not run)
                return
            call.finish(store._unavailable(reply))
        elif isinstance(reply, Exception):
            call.finish(store._unavailable(reply))
        else:
            made, answer = reply
            if answer[0] == b"skipped":  # (only after a conditional write: none here)
                done(None)
                return
            if answer[0] == b"full":
                call.finish(full(call.key, store.max_namespaces))
            else:
                try:
                    call.answer(answer)
                except Exception as exc:
                    call.finish(exc)
        done((epoch, bool(made)))

    def _usual_head(self, op: str, may_create: int, want_list: int) -> bytes:
        """The leading arguments of a call of no round token, packed (kept)."""
        store, packed = self._store, self._packed
        usual = (op, may_create, want_list, store.epoch)
        head = packed.get(usual, b"")
        if not head:
            if len(packed) >= MAX_PACKED:
                packed.clear()
            revisions, size = store._bounds
            head = packed[usual] = pack_args(
                op, revisions, size, may_create, want_list, "", 0, store.epoch
            )
        return head

    def _read_grouped(
        self,
        calls: list[Call],
        done: Callable[[list[Call] | None], None],
        replies: list[Any] | Exception,
    ) -> None:
        """``_read`` of a cluster's replies (``submit_each_then``'s: each read's four in a list
        of their own, or its node's failure in their place: the usual way then reads again)."""
        if isinstance(replies, list):
            flat = [replies[0]]
            for group in replies[1:]:
                flat.extend(group if type(group) is list else [group] * TRANSACTION_REPLIES)
            replies = flat
        self._read(calls, done, replies)

    def _read(
        self,
        calls: list[Call],
        done: Callable[[list[Call] | None], None],
        replies: list[Any] | Exception,
    ) -> None:
        store = self._store
        if isinstance(replies, Exception):  # (the link was lost, or timed out)
            failure = store._unavailable(replies)
            for call in calls:
                lost = StoreUnavailable(*failure.args)
                lost.__cause__ = replies
                call.finish(lost)
            done(calls)
            return
        found = replies[0]
        if isinstance(found, Exception) or found is None or found.decode() != store.epoch:
            done(None)  # (the usual way takes the new epoch)
            return
        at = 1
        for call in calls:
            reply = replies[at : at + TRANSACTION_REPLIES]
            at += TRANSACTION_REPLIES
            executed = reply[-1]
            if any(isinstance(r, Exception) for r in reply) or executed is None:
                done(None)
                return
            try:
                call.answer_plain(executed)
            except Exception as exc:
                call.finish(exc)
            if not call.done:  # (a list found: the script reads it)
                done(None)
                return
        done(calls)

    async def run(self, calls: list[Call], refused: set[str]) -> tuple[str | None, set[str]]:
        """Run the calls (rounds of one pipeline each): the board's epoch, read first, and the
        namespaces made that the store did not know were registered (``refused``: those it
        may not create)."""
        store = self._store
        epoch: str | None = store.epoch
        queues: dict[str, list[Call]] = {}
        for call in calls:
            if not call.done:
                queues.setdefault(call.key, []).append(call)
        created: set[str] = set()
        reloaded = False
        moves = 0
        first_round = True
        links = self.links
        if links is None:
            raise RuntimeError("the store was not started")
        revisions, size = store._bounds
        bases, script, plain_reads = self._bases, self._script_call, self._reads
        while queues:
            self._rounds += 1
            token = ""
            sending: list[Call] = []
            plain: list[bool] = []  # whether each call was sent as a transaction
            commands: list[tuple[bytes, bytes, int]] = [self._read_epoch] if first_round else []
            ahead: Ahead = {}
            for key, queue in queues.items():
                base = bases.get(key) or self.base(key)
                may_create = int(key not in refused)
                blocking = False  # a conditional write came first: the rest waits for it
                # A read goes as a transaction only if no write follows it on its key: one
                # that finds a list is sent again to the script, after what came later.
                writes = [at for at, call in enumerate(queue) if not call.reads]
                last_write = writes[-1] if writes else -1
                for at, call in enumerate(queue):
                    sending.append(call)
                    reads = b""
                    if not blocking and at >= last_write:
                        reads = call.transaction(base, plain_reads)
                    plain.append(bool(reads))
                    if reads:  # (MULTI, its reads, EXEC: a reply each)
                        commands.append((base, reads, TRANSACTION_REPLIES))
                        continue
                    followed = at + 1 < len(queue)
                    # (what a call leaves matters only to the calls after it on its key; an
                    # incr or a cas also reads what the calls before it leave)
                    if followed or call.again:
                        call.foresee(ahead)
                    op, args = call.request()
                    blocks = call.again and followed
                    if blocking or blocks:
                        token = token or f"{self._id}:{self._rounds}"
                        head = pack_args(
                            op, revisions, size, may_create, int(call.want_list), token,
                            int(blocks), store.epoch,
                        )  # fmt: skip
                    else:
                        head = self._usual_head(op, may_create, int(call.want_list))
                    if type(args) is Packed:
                        command = script.pack(base, (), head + args.data, 8 + args.arguments)
                    else:
                        command = script.pack(base, args, head, 8)
                    commands.append((base, command, 1))
                    blocking = blocking or blocks
            replies = await links.execute(commands, store._timeout)
            if first_round:
                first_round, found = False, replies.pop(0)
                if not isinstance(found, Exception):
                    epoch = None if found is None else found.decode()
            missing_script = moved = False
            again: set[str] = set()  # keys with a call that did not run, sent again
            for call, reply, read in zip(sending, replies, plain, strict=True):
                if read and call.key in again:
                    continue  # (it read before a write sent again: it reads again after it)
                if type(reply) is ReplyError:
                    text = str(reply)
                    if text.startswith("NOSCRIPT"):
                        missing_script = True  # nothing ran: sent again, in order
                        again.add(call.key)
                    elif text.startswith("MOVED "):
                        moved = True  # nothing ran: sent again, to the slot's node
                        again.add(call.key)
                    else:
                        call.finish(store._unavailable(reply))
                elif isinstance(reply, Exception):
                    call.finish(store._unavailable(reply))
                elif read:
                    failed = next((r for r in reply if isinstance(r, Exception)), None)
                    if failed is None:
                        try:
                            call.answer_plain(reply[-1])
                        except Exception as exc:
                            call.finish(exc)
                    elif str(failed).startswith("MOVED "):
                        moved = True  # nothing ran: sent again, to the slot's node
                    else:
                        call.finish(store._unavailable(failed))
                else:
                    made, answer = reply
                    if answer[0] == b"skipped":
                        continue  # after a conditional write that did not happen: again
                    if made:
                        created.add(call.key)
                    if answer[0] == b"full":
                        call.finish(full(call.key, store.max_namespaces))
                        continue
                    try:
                        call.answer(answer)
                    except Exception as exc:
                        call.finish(exc)
            if moved:
                moves += 1
                if moves > MAX_MOVES:
                    raise store._unavailable(
                        ReplyError(f"the cluster moved a slot {MAX_MOVES} times in one batch")
                    )
                async with store._guard():
                    await links.refresh()
            if missing_script:
                if reloaded:
                    raise store._unavailable(RuntimeError("the script vanished again once loaded"))
                async with store._guard():
                    await store._load_script(refresh=True)
                reloaded = True
            queues = {k: left for k, q in queues.items() if (left := [c for c in q if not c.done])}
        return epoch, created


def submit_each_then(
    links: Links, commands: Sequence[tuple[bytes, bytes, int]], timeout: float, then: Then
) -> bool:
    """``Links.execute`` without a task, in a cluster: each (key, packed commands, how many) to
    its key's node, and ``then`` told, from the callback that read the last node's, the
    replies as ``execute`` returns them (a failed node's: its error, each). False, and nothing
    written, if a node's link is not connected or the slot map is to be read again."""
    if links._stale:
        return False
    groups: dict[Link, tuple[list[int], list[tuple[bytes, bytes, int]]]] = {}
    try:
        for at, triple in enumerate(commands):
            group = groups.setdefault(links.link_for(triple[0]), ([], []))
            group[0].append(at)
            group[1].append(triple)
    except ConnectionError:  # (a slot no node holds: execute says so)
        return False
    if any(link.connection is None or link.connection.transport is None for link in groups):
        return False
    replies: list[Any] = [None] * len(commands)
    waiting = [len(groups)]

    def told(places: list[int], triples: list[Any], answers: list[Any] | Exception) -> None:
        if isinstance(answers, Exception):
            links._stale = links._stale or isinstance(answers, OSError)
            answers = [answers] * len(places)
        elif len(answers) != len(triples):
            answers = _grouped(answers, triples)
        for at, answer in zip(places, answers, strict=True):
            replies[at] = answer
        waiting[0] -= 1
        if not waiting[0]:
            then(replies)

    for link, (places, triples) in groups.items():
        payload = b"".join([command for _, command, _ in triples])
        total = sum([count for _, _, count in triples])
        link.submit_then(payload, total, timeout, functools.partial(told, places, triples))
    return True
