"""`Connection.lend_reads`: a thread reads an idle link's frames itself while the loop's
reader is parked, gives back every byte it does not keep, and the peer's stream is seen
in one order; the loop takes the read side back when the link closes."""

from __future__ import annotations

import os
import select
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import transport

TOKEN = b"loan-token"


class Seen:
    """Messages in the order they were handled, by the loop or the thread; the test
    waits for a count without polling (the thread reports through the loop's token)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.token = trio.lowlevel.current_trio_token()
        self._waiter: tuple[int, trio.Event] | None = None

    def add(self, who: str, message: Any) -> None:
        self.items.append((who, message))
        if who == "thread":
            self.token.run_sync_soon(self._check)
        else:
            self._check()

    def _check(self) -> None:
        if self._waiter is not None and len(self.items) >= self._waiter[0]:
            self._waiter[1].set()

    async def wait_for(self, n: int) -> None:
        event = trio.Event()
        self._waiter = (n, event)
        self._check()
        with trio.fail_after(10):
            await event.wait()


class Borrower:
    """A thread that borrows a connection's read side while it is idle, as an actor's
    mailbox does (``worker._threaded_host._LinkInbox``): it polls an eventfd (the loan
    handed over or closed) and, while it holds the side, the socket; it keeps the
    messages ``accept`` takes, in ``got`` beside the loop's."""

    def __init__(self, seen: Seen, accept: Any, many: bool = False) -> None:
        self.seen = seen
        self.accept = accept
        self.many = many  # ``take_many``: all the whole frames of a read, or none
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.loan: transport.ReadLoan | None = None
        self.stopped = threading.Event()
        self.holding = threading.Event()  # it held the read side once
        self.thread = threading.Thread(target=self.run, daemon=True)

    def wake(self) -> None:
        os.eventfd_write(self.efd, 1)

    def run(self) -> None:
        try:
            loan = self.loan
            assert loan is not None
            while not loan.closed:
                fds = [self.efd]
                if loan.want():
                    fds.append(loan.fileno())
                    self.holding.set()
                poll = select.poll()
                for fd in fds:
                    poll.register(fd, select.POLLIN)
                for fd, _ in poll.poll(1000):
                    if fd == self.efd:
                        try:
                            os.eventfd_read(self.efd)
                        except BlockingIOError:
                            pass
                    elif not loan.closed and self.many:
                        messages = loan.take_many(lambda ms: all(map(self.accept, ms)))
                        if messages is not transport.NOT_TAKEN:
                            for message in messages:
                                self.seen.add("thread", message)
                    elif not loan.closed:
                        message = loan.take(self.accept)
                        if message is not transport.NOT_TAKEN:
                            self.seen.add("thread", message)
            loan.release()
        finally:
            self.stopped.set()


@pytest.mark.parametrize("many", [False, True], ids=["take", "take_many"])
async def test_a_borrowing_thread_and_the_loop_see_one_stream_order(
        tmp_path: Path, many: bool) -> None:
    # Lone frames on an idle link are read by the thread; bursts (several frames in
    # one read; with ``take_many`` kept together when the thread takes them all), a
    # frame larger than the read buffer (partial reads) and messages the thread does
    # not accept are given back and read by the loop. Every message arrives once,
    # whole, in the order sent.
    seen = Seen()
    got = seen.items
    borrower = Borrower(seen, accept=lambda m: m[0] == "n", many=many)
    server_conn: list[transport.Connection] = []

    async def handler(conn: transport.Connection, msg: Any, reply: Any) -> None:
        seen.add("loop", msg)
        if borrower.loan is None:
            server_conn.append(conn)
            borrower.loan = conn.lend_reads(borrower.wake)
            assert borrower.loan is not None
            assert conn.lend_reads(borrower.wake) is None  # one loan at a time
            borrower.thread.start()

    server = transport.Server(f"unix:{tmp_path}/l.sock", TOKEN, handler, name="lender")
    big = "b" * 700_000  # over the 256 KiB read buffer: read in pieces
    sent: list[Any] = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            for i in range(120):
                if i % 10 == 3:
                    message: Any = ("c", i)  # not accepted by the thread
                elif i % 10 == 6:
                    message = ("n", i, big)
                else:
                    message = ("n", i)
                sent.append(message)
                await conn.send(message)
                if i % 4 != 1:  # else the next frame follows at once: a burst
                    await seen.wait_for(len(sent))
            await seen.wait_for(len(sent))
        # The client closed: the loop takes the read side back (the thread gives
        # back the end of the stream, or the loop's reader meets it), the loan closes
        # and the borrowing thread stops.
        with trio.fail_after(10):
            await server_conn[0].wait_closed()
        await trio.to_thread.run_sync(borrower.stopped.wait, 10)
        assert borrower.stopped.is_set()
        assert borrower.loan is not None and borrower.loan.closed
        assert borrower.loan.fileno() == -1  # its descriptor closed
        nursery.cancel_scope.cancel()
    assert [m for _who, m in got] == sent
    by_thread = [m for who, m in got if who == "thread"]
    assert by_thread, "the thread read no lone frame itself"
    assert all(m[0] == "n" and len(m) == 2 for m in by_thread)
    assert any(who == "loop" and m[0] == "c" for who, m in got[1:])
    assert server_conn[0].statistics().frames_read_by_threads == len(by_thread)


async def test_closing_the_connection_takes_the_read_side_back(tmp_path: Path) -> None:
    # The thread holds the read side, idle in poll, when this end closes the link:
    # it is woken, sees the loan closed and stops; the descriptor it polled closes.
    seen = Seen()
    borrower = Borrower(seen, accept=lambda m: True)
    lent = trio.Event()
    lender: list[transport.Connection] = []

    async def handler(conn: transport.Connection, msg: Any, reply: Any) -> None:
        seen.add("loop", msg)
        lender.append(conn)
        borrower.loan = conn.lend_reads(borrower.wake)
        borrower.thread.start()
        lent.set()

    server = transport.Server(f"unix:{tmp_path}/c.sock", TOKEN, handler, name="lender")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            await conn.send("first")
            with trio.fail_after(10):
                await lent.wait()
            await trio.to_thread.run_sync(borrower.holding.wait, 10)
            assert borrower.loan is not None and borrower.loan.held
            await lender[0].aclose()
            await trio.to_thread.run_sync(borrower.stopped.wait, 10)
            assert borrower.stopped.is_set()
            assert borrower.loan.closed and not borrower.loan.held
            assert borrower.loan.fileno() == -1
            with trio.fail_after(10):
                await conn.wait_closed()  # the peer saw the end of the link
        nursery.cancel_scope.cancel()
    assert seen.items == [("loop", "first")]
