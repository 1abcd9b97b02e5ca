"""What the node owes a connected process: sent in order, never dropped, however much
(`Client.send_in_order`); and a directory entry's waiters all woken when one fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import transport
from actorcore.node._clients import Client
from actorcore.node.object_manager._directory import ObjectDirectory
from actorcore.protocol._ids import new_put_id

TOKEN = b"clients-token"


class _SlowReader:
    """A process that stops reading at its first message until ``release``, and
    says when it has ``expected`` messages."""

    def __init__(self, expected: int) -> None:
        self.got: list[Any] = []
        self.expected = expected
        self.first = trio.Event()
        self.release = trio.Event()
        self.all = trio.Event()

    async def __call__(self, conn: Any, msg: Any, reply: Any) -> None:
        self.got.append(msg)
        if len(self.got) == self.expected:
            self.all.set()
        if len(self.got) == 1:
            self.first.set()
            await self.release.wait()


async def test_what_a_link_cannot_take_now_waits_in_order_and_is_all_sent(tmp_path: Path) -> None:
    reader = _SlowReader(expected=101)
    server = transport.Server(f"unix:{tmp_path}/c.sock", TOKEN, reader)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            client = Client(conn=conn, role="driver")
            chunk = b"r" * (1 << 20)
            client.send_in_order(("first", b""), nursery.start_soon)
            with trio.fail_after(30):
                await reader.first.wait()
            for i in range(100):  # 100 MiB: past the link's 64 MiB of send_nowait
                client.send_in_order((i, chunk), nursery.start_soon)
            assert client.backlog  # some wait, none was refused or dropped
            reader.release.set()
            with trio.fail_after(60):
                await reader.all.wait()
            assert [m[0] for m in reader.got] == ["first", *range(100)]
            await trio.testing.wait_all_tasks_blocked()
            assert client.backlog is None  # its sender ended with it
        nursery.cancel_scope.cancel()


def test_a_waiter_that_fails_does_not_strand_the_others(caplog: pytest.LogCaptureFixture) -> None:
    directory = ObjectDirectory()
    oid = new_put_id()
    woken: list[int] = []

    def failing(_entry: Any) -> None:
        raise RuntimeError("a waiter's bug")

    directory.when_ready(oid, lambda _e: woken.append(1))
    directory.when_ready(oid, failing)
    directory.when_ready(oid, lambda _e: woken.append(3))
    directory.put(oid, False, b"value")
    assert woken == [1, 3]
    assert "a waiter of object" in caplog.text and "a waiter's bug" in caplog.text
