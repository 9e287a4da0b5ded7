"""A Manager's parent that waits to be killed: it prints where its server is, then blocks."""

from __future__ import annotations

import json
import sys

from aionamespace import Manager

if __name__ == "__main__":
    manager = Manager()
    manager.start()
    manager.Namespace("board").ready = True
    process = manager._process
    assert process is not None
    print(json.dumps({"socket": manager.address, "server": process.pid}), flush=True)
    sys.stdin.read()  # until the test kills us
