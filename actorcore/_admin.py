"""Short-lived admin connections (CLI, ``tree(address=...)``, ``faults.crash``)."""

from __future__ import annotations

import os
from typing import Any

import trio

import transport

from ._launcher import find_cluster

__all__ = ["admin_call"]


def admin_call(address: str | None, name: str, *args: Any, timeout: float = 30.0) -> Any:
    """Run one ``("call", name, args)`` against the cluster at ``address``."""
    addr, token, _info = find_cluster(address)

    async def go() -> Any:
        async with transport.open_connection(addr, token, name=f"admin-{os.getpid()}") as conn:
            return await conn.request(("call", name, args), timeout=timeout)

    return trio.run(go)
