"""Every test of the package signs and verifies shards with a key of its own session (never
the user's ``~/.config/boundkit/shard-key``); subprocesses inherit it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _shard_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.environ.get("BOUNDKIT_SHARD_KEY")
    os.environ["BOUNDKIT_SHARD_KEY"] = str(tmp_path_factory.mktemp("keys") / "shard-key")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BOUNDKIT_SHARD_KEY", None)
        else:
            os.environ["BOUNDKIT_SHARD_KEY"] = before
