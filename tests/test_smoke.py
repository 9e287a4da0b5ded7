"""The basics end to end, on every transport and backend (detailed behaviour: other files)."""

from __future__ import annotations

import pytest

from aionamespace import AsyncNamespace, Namespace, ServerThread


def test_sync_set_get_del(server: ServerThread) -> None:
    ns = Namespace(server.address)
    ns.a = 1
    assert ns.a == 1
    del ns.a
    assert not hasattr(ns, "a")
    ns._close()


@pytest.mark.anyio
async def test_async_set_get(server: ServerThread) -> None:
    async with AsyncNamespace(server.address) as ns:
        ns.a = [1, (2, 3)]
        assert await ns.a == [1, (2, 3)]
        with pytest.raises(AttributeError):
            await ns.missing
