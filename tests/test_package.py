"""The package's metadata, as installed: what pip and PyPI show a newcomer."""

from __future__ import annotations

from importlib.metadata import metadata


def test_metadata_names_its_authors_and_extras() -> None:
    meta = metadata("aionamespace")
    assert meta["Author"] == "the aionamespace developers"
    extras = meta.get_all("Provides-Extra") or []
    assert {"trio", "uvloop", "redis", "test"} <= set(extras)
    requires = meta.get_all("Requires-Dist") or []
    assert "trio>=0.25; extra == 'trio'" in requires, requires
    assert "redis>=5; extra == 'redis'" in requires, requires
    runtime = sorted(entry for entry in requires if "extra ==" not in entry)
    assert [entry.split(">")[0] for entry in runtime] == ["anyio", "msgpack"]
