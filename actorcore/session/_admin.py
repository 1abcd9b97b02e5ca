"""Short-lived admin connections (CLI, ``tree(address=...)``, ``faults.crash``)."""

from __future__ import annotations

import os
from typing import Any

import trio

import transport

from ..protocol._wire import AdminCall
from . import _security
from ._launcher import find_cluster

__all__ = ["admin_call"]


def admin_call(address: str | None, name: str, *args: Any, timeout: float = 30.0) -> Any:
    """Run one `AdminCall` (``name``, ``args``) against the cluster at ``address``."""
    addr, token, info = find_cluster(address)
    tls = _security.tls_config() or _security.session_tls(info)

    async def go() -> Any:
        async with transport.open_connection(
            addr, token, name=f"admin-{os.getpid()}", tls=tls
        ) as conn:
            return await conn.request(AdminCall(name, tuple(args)), timeout=timeout)

    return trio.run(go)
