"""Transport soak tests (``pytest -m slow``): long random fault mixes across processes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import transport
from transport import faults

from .transport_support import TOKEN, spawn_peer, stop

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_faults() -> Iterator[None]:
    faults.clear()
    yield
    faults.clear()


async def test_random_faults_never_hang_or_corrupt(tmp_path: Path) -> None:
    """Thousands of requests under random drop/duplicate/delay rules on both sides:
    each returns its own value or times out; afterwards the link is healthy."""
    proc, line = await spawn_peer("serve", f"unix:{tmp_path}/soak.sock", TOKEN, "peer")
    rng = random.Random(1234)
    faults.seed(1234)
    try:
        address = line.split()[1]
        async with transport.open_connection(address, TOKEN, name="driver") as conn:
            actions = ("drop", "duplicate", "delay")
            remote = [faults.Rule(a, "peer", "driver", delay=0.05, probability=0.05) for a in actions]
            commands = [{"op": "seed", "value": 99}] + [{"op": "add", "rule": r.to_dict()} for r in remote]
            await conn.request(("faults_many", commands), timeout=10)  # in one go
            for action in actions:
                faults.add(faults.Rule(action, "driver", "peer", delay=0.05, probability=0.05))
            counts = {"ok": 0, "timeout": 0}

            async def worker(n: int) -> None:
                for i in range(n):
                    value = (rng.random(), bytes(rng.randrange(0, 5000)))
                    try:
                        got = await conn.request(("echo", value), timeout=1.0)
                    except transport.RequestTimeout:
                        counts["timeout"] += 1
                    else:
                        assert got == value
                        counts["ok"] += 1
                    if i % 10 == 0:
                        await conn.send(("note",))

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for _ in range(50):
                        nursery.start_soon(worker, 100)
            assert counts["ok"] + counts["timeout"] == 5000
            assert counts["timeout"] > 0 and counts["ok"] > 4000
            faults.clear()
            while True:  # the peer's rules may drop our clear command's reply: retry
                try:
                    await conn.request(("faults", {"op": "clear"}), timeout=1)
                    break
                except transport.RequestTimeout:
                    pass
            assert await conn.request(("echo", "healthy"), timeout=5) == "healthy"
            assert not conn.closed
    finally:
        await stop(proc)


async def test_many_clients_many_messages(tmp_path: Path) -> None:
    """Five client processes' worth of traffic against one peer server, 100k one-ways."""
    proc, line = await spawn_peer("serve", f"unix:{tmp_path}/many.sock", TOKEN, "peer")
    try:
        address = line.split()[1]

        async def client(k: int) -> None:
            async with transport.open_connection(address, TOKEN, name=f"c{k}") as conn:
                for _ in range(20_000):
                    await conn.send(("note",))
                assert await conn.request(("echo", k), timeout=30) == k

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for k in range(5):
                    nursery.start_soon(client, k)
        async with transport.open_connection(address, TOKEN, name="count") as conn:
            assert await conn.request(("notes",), timeout=10) == 100_000
    finally:
        await stop(proc)
