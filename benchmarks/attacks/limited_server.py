"""``python -m aionamespace serve``, with ``Limits`` that ``serve`` does not take.

    python benchmarks/attacks/limited_server.py PATH BACKEND LIMITS_JSON [AUTHKEY]

Runs ``aionamespace.Server(PATH, limits=Limits(**LIMITS_JSON), authkey=AUTHKEY)`` on BACKEND
(asyncio with the same busy-polling loop as ``serve``), prints ``serving on PATH`` once it
listens, and stops on SIGTERM or SIGKILL. An attack that needs a small ``max_connections`` or a
short ``anonymous_grace`` runs its server with this.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import anyio

from aionamespace import Limits, Server
from aionamespace.server.busypoll import DEFAULT_SPIN_SECONDS, busy_poll_loop_factory


async def main(path: str, limits: Limits, authkey: bytes | None) -> None:
    server = Server(path, limits=limits, authkey=authkey)
    async with anyio.create_task_group() as group:
        await group.start(server.serve)
        print(f"serving on {path}", flush=True)


if __name__ == "__main__":
    path, backend, limits_json = sys.argv[1:4]
    key = sys.argv[4] if len(sys.argv) > 4 else ""
    options: dict[str, Any] = {}
    if backend == "asyncio":
        options["loop_factory"] = functools.partial(busy_poll_loop_factory, DEFAULT_SPIN_SECONDS)
    anyio.run(
        main,
        path,
        Limits(**json.loads(limits_json)),
        key.encode() or None,
        backend=backend,
        backend_options=options,
    )
