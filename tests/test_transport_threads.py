"""`Connection.send_from_thread`: a thread outside the loop writes an idle link's frame
itself, in order with what the loop sends, never blocking and never interleaving bytes.
`Connection.request_from_thread`: a thread's request, its reply waited for in that
thread, failed with the link, timed out, refused from the loop's own thread."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import transport
from transport import faults

TOKEN = b"thread-token"


class Collect:
    """A server handler that keeps every one-way message, in arrival order."""

    def __init__(self, expect: int) -> None:
        self.got: list[Any] = []
        self.expect = expect
        self.all_in = trio.Event()

    async def __call__(self, conn: transport.Connection, msg: Any,
                       reply: transport.Reply | None) -> None:
        self.got.append(msg)
        if len(self.got) >= self.expect:
            self.all_in.set()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Collect]]:
    handler = Collect(expect=400)
    server = transport.Server(f"unix:{tmp_path}/t.sock", TOKEN, handler, name="collect")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        yield address, handler
        nursery.cancel_scope.cancel()


async def test_frames_from_a_thread_and_from_the_loop_keep_one_order(
        server: tuple[str, Collect]) -> None:
    # One sequence of messages, each sent by a thread when the link is idle and by
    # the loop otherwise (as a core worker's outbox does): the peer reads them all,
    # whole, in the order they were sent.
    address, handler = server
    async with transport.open_connection(address, TOKEN) as conn:
        def sender() -> int:
            from_thread = 0
            for i in range(400):
                message = ("n", i, "x" * (i * 37 % 5000))
                if conn.send_from_thread(message):
                    from_thread += 1
                else:
                    trio.from_thread.run_sync(conn.send_nowait, message)
            return from_thread

        from_thread = await trio.to_thread.run_sync(sender)
        with trio.fail_after(10):
            await handler.all_in.wait()
        assert [m[1] for m in handler.got] == list(range(400))
        assert all(m[2] == "x" * (m[1] * 37 % 5000) for m in handler.got)
        assert from_thread > 0
        assert conn.statistics().frames_from_threads == from_thread


async def test_a_partial_write_from_a_thread_is_finished_by_the_writer(tmp_path: Path) -> None:
    # The peer stops reading; a thread writes frames until the socket takes only part
    # of one: the rest waits at the head of the queue, later frames go behind it (the
    # thread path refuses while it waits), and once the peer reads again every
    # frame arrives whole and in order.
    release = trio.Event()
    got: list[Any] = []
    expect = [0]
    all_in = trio.Event()

    async def handler(conn: transport.Connection, msg: Any, reply: Any) -> None:
        if msg == "block":
            await release.wait()  # the server's reader waits here: nothing is read
        got.append(msg)
        if expect[0] and len(got) >= expect[0]:
            all_in.set()

    server = transport.Server(f"unix:{tmp_path}/b.sock", TOKEN, handler, name="blocked")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            await conn.send("block")
            # The server's reader holds "block" and this link's writer is parked: only
            # then does a thread's write go straight to the socket.
            await trio.testing.wait_all_tasks_blocked()
            payload = "p" * 60_000  # one chunk per frame (under the join limit)

            def sender() -> tuple[int, int]:
                by_thread = 0
                for i in range(10_000):
                    if not conn.send_from_thread(("n", i, payload)):
                        break  # the socket is full and a remainder waits
                    by_thread += 1
                later = 0
                for k in range(i, i + 20):
                    assert not conn.send_from_thread(("n", k, payload))
                    trio.from_thread.run_sync(conn.send_nowait, ("n", k, payload))
                    later += 1
                return by_thread, later

            by_thread, later = await trio.to_thread.run_sync(sender)
            assert by_thread > 0
            assert conn.unsent >= 1  # the remainder and what queued behind it
            expect[0] = 1 + by_thread + later
            release.set()
            with trio.fail_after(20):
                await all_in.wait()
            assert got[0] == "block"
            assert [m[1] for m in got[1:]] == list(range(by_thread + later))
            assert all(m[2] == payload for m in got[1:])
        nursery.cancel_scope.cancel()


async def test_a_thread_does_not_send_on_a_closed_or_faulted_link(
        server: tuple[str, Collect]) -> None:
    address, _handler = server
    async with transport.open_connection(address, TOKEN) as conn:
        try:
            faults.add(faults.Rule("delay", delay=0.01))
            assert not await trio.to_thread.run_sync(conn.send_from_thread, ("faulted",))
        finally:
            faults.clear()
        await conn.aclose()
        assert not await trio.to_thread.run_sync(conn.send_from_thread, ("closed",))


async def test_a_frame_too_large_for_the_peer_is_refused_by_the_thread(tmp_path: Path) -> None:
    handler = Collect(expect=1)
    server = transport.Server(f"unix:{tmp_path}/small.sock", TOKEN, handler, name="small",
                              max_frame_size=1 << 16)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            with pytest.raises(transport.FrameTooLarge):
                await trio.to_thread.run_sync(conn.send_from_thread, "z" * (1 << 17))
            assert await trio.to_thread.run_sync(conn.send_from_thread, "fits")
            with trio.fail_after(10):
                await handler.all_in.wait()
            assert handler.got == ["fits"]
        nursery.cancel_scope.cancel()


class Answer:
    """A server handler that answers requests: ``("echo", x)`` with ``x``, ``"fail"``
    with an error, ``"hold"`` never (until ``release``), one-way messages kept."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.held: list[transport.Reply] = []
        self.holding = trio.Event()

    async def __call__(self, conn: transport.Connection, msg: Any,
                       reply: transport.Reply | None) -> None:
        self.got.append(msg)
        if reply is None:
            return
        if msg == "fail":
            reply.fail(ValueError("asked to fail"))
        elif msg == "hold":
            self.held.append(reply)
            self.holding.set()
        else:
            reply.send(msg[1])


@pytest.fixture
async def answering(tmp_path: Path) -> AsyncIterator[tuple[str, Answer, transport.Server]]:
    handler = Answer()
    server = transport.Server(f"unix:{tmp_path}/a.sock", TOKEN, handler, name="answer")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        yield address, handler, server
        nursery.cancel_scope.cancel()


async def test_requests_from_threads_get_their_own_replies_in_order_with_the_loop(
        answering: tuple[str, Answer, transport.Server]) -> None:
    # Two threads and the loop ask at once; each gets the reply to its own request,
    # and one thread's requests reach the peer in its order, one-way messages too.
    address, handler, _server = answering
    async with transport.open_connection(address, TOKEN) as conn:
        def asker(name: str) -> list[Any]:
            out = []
            for i in range(200):
                out.append(conn.request_from_thread(("echo", (name, i, "x" * (i * 97 % 3000)))))
                if not conn.send_from_thread(("note", name, i)):
                    trio.from_thread.run_sync(conn.send_nowait, ("note", name, i))
            return out

        async def loop_asks() -> None:
            for i in range(200):
                assert await conn.request(("echo", ("loop", i))) == ("loop", i)

        results: dict[str, list[Any]] = {}

        async def run(name: str) -> None:
            results[name] = await trio.to_thread.run_sync(asker, name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "a")
            nursery.start_soon(run, "b")
            nursery.start_soon(loop_asks)
        for name in "ab":
            assert results[name] == [(name, i, "x" * (i * 97 % 3000)) for i in range(200)]
            order = [("echo", m[1][1]) if m[0] == "echo" else ("note", m[2])
                     for m in handler.got
                     if m[0] == "echo" and m[1][0] == name or m[0] == "note" and m[1] == name]
            assert order == [(kind, i) for i in range(200) for kind in ("echo", "note")]
        assert conn.statistics().frames_from_threads > 0
        assert conn.statistics().requests_in_flight == 0


async def test_a_thread_request_fails_remotely_times_out_and_fails_with_the_link(
        answering: tuple[str, Answer, transport.Server]) -> None:
    address, handler, _server = answering
    async with transport.open_connection(address, TOKEN) as conn:
        with pytest.raises(transport.RemoteError, match="asked to fail") as info:
            await trio.to_thread.run_sync(conn.request_from_thread, "fail")
        assert isinstance(info.value.remote_exception, ValueError)
        with pytest.raises(transport.RequestTimeout, match="within 0.05s"):
            await trio.to_thread.run_sync(conn.request_from_thread, "hold", 0.05)
        assert conn.statistics().requests_in_flight == 0
        # A link that dies fails the thread waiting on it, at once.
        handler.holding = trio.Event()
        async with trio.open_nursery() as nursery:
            failed: list[BaseException] = []

            async def ask() -> None:
                try:
                    await trio.to_thread.run_sync(conn.request_from_thread, "hold")
                except transport.ConnectionLost as exc:
                    failed.append(exc)

            nursery.start_soon(ask)
            with trio.fail_after(10):
                await handler.holding.wait()
            conn.reset("reset by the test")
        assert len(failed) == 1 and "reset by the test" in str(failed[0])
        with pytest.raises(transport.ConnectionLost):
            await trio.to_thread.run_sync(conn.request_from_thread, ("echo", 1))


async def test_a_thread_request_goes_through_the_loop_on_a_faulted_link(
        answering: tuple[str, Answer, transport.Server]) -> None:
    # With a fault rule active the thread does not write: the loop queues its frame
    # (the faults see it) and the reply still comes back to the thread.
    address, _handler, _server = answering
    async with transport.open_connection(address, TOKEN) as conn:
        try:
            faults.add(faults.Rule("delay", delay=0.01))
            got = await trio.to_thread.run_sync(conn.request_from_thread, ("echo", "slow"))
        finally:
            faults.clear()
        assert got == "slow"
        assert conn.statistics().frames_from_threads == 0


async def test_a_request_from_the_loops_own_thread_is_refused(
        answering: tuple[str, Answer, transport.Server]) -> None:
    address, _handler, _server = answering
    async with transport.open_connection(address, TOKEN) as conn:
        with pytest.raises(RuntimeError, match="would deadlock"):
            conn.request_from_thread(("echo", 1))


async def test_a_thread_request_answered_later_on_the_loop(
        answering: tuple[str, Answer, transport.Server]) -> None:
    # `request_soon_from_thread` returns at once; each callback runs on the loop,
    # once, with the reply's outcome: a value, the remote error, or the link's loss.
    address, handler, _server = answering
    async with transport.open_connection(address, TOKEN) as conn:
        loop_thread = threading.get_ident()
        outcomes: list[tuple[str, Any]] = []
        first_two, done = trio.Event(), trio.Event()

        def callback(name: str) -> Any:
            def on_reply(result: Any) -> None:
                assert threading.get_ident() == loop_thread
                outcomes.append((name, result))
                if len(outcomes) == 2:
                    first_two.set()
                if len(outcomes) == 3:
                    done.set()
            return on_reply

        handler.holding = trio.Event()

        def ask() -> None:
            conn.request_soon_from_thread(("echo", 7), callback("echo"))
            conn.request_soon_from_thread("fail", callback("fail"))
            conn.request_soon_from_thread("hold", callback("hold"))

        await trio.to_thread.run_sync(ask)
        with trio.fail_after(10):
            await handler.holding.wait()
            await first_two.wait()  # the answers before the held request's
        conn.reset("reset by the test")
        with trio.fail_after(10):
            await done.wait()
        got = dict(outcomes)
        assert got["echo"].unwrap() == 7
        with pytest.raises(transport.RemoteError, match="asked to fail"):
            got["fail"].unwrap()
        with pytest.raises(transport.ConnectionLost, match="reset by the test"):
            got["hold"].unwrap()
        with pytest.raises(transport.ConnectionLost):
            await trio.to_thread.run_sync(
                conn.request_soon_from_thread, ("echo", 8), callback("late"))
        assert len(outcomes) == 3
