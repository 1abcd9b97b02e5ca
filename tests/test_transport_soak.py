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
    """Thousands of requests under random drop/duplicate/delay rules on both sides
    (resets, breaks after a frame, slow frames): a client that redials and resends
    what was unanswered gets every answer, its own value; no request hangs."""
    proc, line = await spawn_peer("serve", f"unix:{tmp_path}/soak.sock", TOKEN, "peer")
    rng = random.Random(1234)
    faults.seed(1234)
    try:
        address = line.split()[1]
        actions = ("drop", "duplicate", "delay")
        remote = [faults.Rule(a, "peer", "driver", delay=0.05, probability=0.01) for a in actions]
        commands = [{"op": "seed", "value": 99}] + [{"op": "add", "rule": r.to_dict()} for r in remote]
        async with transport.open_connection(address, TOKEN, name="control") as control:
            await control.request(("faults_many", commands), timeout=10)  # in one go
            for action in actions:
                faults.add(faults.Rule(action, "driver", "peer", delay=0.05, probability=0.01))
            link: list[transport.Connection] = [await transport.connect(address, TOKEN, name="driver")]
            lock = trio.Lock()
            counts = {"ok": 0, "resent": 0, "redials": 0}

            async def current(seen: transport.Connection | None) -> transport.Connection:
                async with lock:
                    if link[0] is seen and link[0].closed:
                        link[0] = await transport.connect(address, TOKEN, name="driver")
                        counts["redials"] += 1
                    return link[0]

            async def worker(n: int) -> None:
                conn = await current(None)
                for i in range(n):
                    value = (rng.random(), bytes(rng.randrange(0, 5000)))
                    while True:
                        try:
                            got = await conn.request(("echo", value), timeout=30)
                            if i % 10 == 0:
                                await conn.send(("note",))
                            break
                        except transport.ConnectionLost:
                            counts["resent"] += 1
                            conn = await current(conn)
                    assert got == value
                    counts["ok"] += 1

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for _ in range(50):
                        nursery.start_soon(worker, 100)
            assert counts["ok"] == 5000
            assert counts["redials"] > 0 and counts["resent"] > 0, counts
            faults.clear()
            await control.request(("faults", {"op": "clear"}), timeout=5)  # "control": never faulted
            conn = await current(None)
            assert await conn.request(("echo", "healthy"), timeout=5) == "healthy"
            assert not conn.closed
            await conn.aclose()
    finally:
        faults.clear()
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
