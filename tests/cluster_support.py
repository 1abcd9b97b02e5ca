"""Helpers shared by the tests that run real clusters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actorcore.session._session import pid_alive

__all__ = ["FAST", "alive", "node_call", "until"]

#: Node environment for multi-node tests: a killed node is declared dead within
#: 3 s (heartbeats every 0.1 s) instead of the default 10 s. Not less: on a loaded
#: 2-core machine a node that is starting (imports, its store's arena faulted in,
#: workers spawned) can miss heartbeats for well over a second, and a live node
#: declared dead stops itself, leaving a test's cluster without the node it added.
FAST = {"ACTORCORE_NODE_TIMEOUT": "3", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}

#: Whether a process runs (a zombie is dead): the runtime's own test.
alive = pid_alive


def until(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``pred`` until it returns something true, and return that; fail the test
    naming ``what`` after ``timeout`` seconds. For state only visible by asking (a
    process's exit, a component's restart): where an event exists, wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def node_call(cluster: Any, node: Any, message: Any, timeout: float = 30.0) -> Any:
    """One request to ``node`` of a `testing.Cluster` over its TCP listener (the
    cluster's TLS from ``ACTORCORE_TLS_*``, if set); its answer."""
    import trio

    import transport
    from actorcore.session._security import tls_config

    async def go() -> Any:
        async with transport.open_connection(
            f"tcp:{node.address}", cluster.head_node.process.token, name="test-node-call",
            tls=tls_config(),
        ) as conn:
            return await conn.request(message, timeout=timeout)

    return trio.run(go)

