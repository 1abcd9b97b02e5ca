"""Receive buffers cost the pages a link wrote, not 256 KiB each (``_recv_buffer``):
an idle link keeps at most `KEEP` bytes of its buffer resident, a burst's pages go back
once the reader waits again, the stream reads the same across releases, and a
thousand idle links cost a few KiB each."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import transport
from transport._connection_core import RECV_CHUNK
from transport._recv_buffer import KEEP, RecvBuffer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/proc/self/pagemap"),
    reason="counts resident pages through /proc/self/pagemap (Linux)",
)

TOKEN = b"recv-buffer-token"
PAGE = mmap.PAGESIZE


def resident_bytes(buf: RecvBuffer) -> int:
    """Bytes of ``buf`` in memory now: the present bit of each page's pagemap entry
    (readable without privileges; only the frame numbers are hidden)."""
    anchor = ctypes.c_char.from_buffer(buf.view)
    try:
        first = ctypes.addressof(anchor) // PAGE
    finally:
        del anchor
    pages = -(-buf.size // PAGE)
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = struct.unpack(f"{pages}Q", f.read(pages * 8))
    return PAGE * sum(1 for e in entries if e >> 63)


def vm_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def lazy_free_bytes(buf: RecvBuffer) -> int:
    """``LazyFree`` of the mapping holding ``buf`` (pages given back by MADV_FREE and
    not yet taken by the kernel), from ``/proc/self/smaps``."""
    return int(smaps_field(buf, "LazyFree").split()[0]) * 1024


def smaps_field(buf: RecvBuffer, field: str) -> str:
    """A field of the ``/proc/self/smaps`` entry of the mapping holding ``buf``."""
    anchor = ctypes.c_char.from_buffer(buf.view)
    try:
        address = ctypes.addressof(anchor)
    finally:
        del anchor
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == field + ":":
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"the buffer's mapping has no {field} line")


def test_a_buffer_is_resident_only_where_written_and_release_gives_pages_back() -> None:
    buf = RecvBuffer(RECV_CHUNK)
    buf.advice = mmap.MADV_DONTNEED  # pages go at once: countable in the pagemap
    try:
        assert resident_bytes(buf) == 0  # nothing zero-filled up front
        buf.view[:100] = b"x" * 100
        assert resident_bytes(buf) == PAGE
        buf.view[:200_000] = b"y" * 200_000
        assert resident_bytes(buf) >= 200_000
        buf.release(200_000, live=30_000)  # keeps KEEP and the 30,000 live bytes
        assert buf.releases == 1
        kept = -(-max(KEEP, 30_000) // PAGE) * PAGE
        assert resident_bytes(buf) == kept
        assert bytes(buf.view[:30_000]) == b"y" * 30_000  # live bytes intact
        buf.release(KEEP)  # nothing beyond KEEP: no system call
        assert buf.releases == 1
    finally:
        buf.close()


@pytest.mark.skipif(getattr(mmap, "MADV_FREE", None) is None, reason="no MADV_FREE")
def test_the_default_advice_marks_pages_free_for_the_kernel() -> None:
    buf = RecvBuffer(RECV_CHUNK)
    try:
        assert buf.advice == mmap.MADV_FREE
        buf.view[:200_000] = b"z" * 200_000
        buf.release(200_000, live=20_000)
        assert buf.releases == 1
        assert bytes(buf.view[:20_000]) == b"z" * 20_000
        # Taken whenever the kernel needs memory (counted as available meanwhile).
        assert lazy_free_bytes(buf) >= 64 * 1024
    finally:
        buf.close()


@pytest.mark.skipif(getattr(mmap, "MADV_NOHUGEPAGE", None) is None, reason="no THP advice")
def test_a_buffer_is_never_a_transparent_huge_page() -> None:
    # Where THP is "always", a first write could otherwise fault in 2 MiB.
    buf = RecvBuffer(RECV_CHUNK)
    try:
        assert "nh" in smaps_field(buf, "VmFlags").split()
    finally:
        buf.close()


def test_close_leaves_a_still_viewed_buffer_to_the_garbage_collector() -> None:
    buf = RecvBuffer(RECV_CHUNK)
    part = buf.view[10:20]
    buf.close()  # a slice is alive: not unmapped under it
    part[:] = b"0123456789"
    assert bytes(part) == b"0123456789"


async def test_a_burst_s_pages_go_back_and_the_stream_reads_the_same(tmp_path: Path) -> None:
    # Bursts of frames that fill most of the server's buffer (frames cut across
    # reads, leftovers moved to the start), each followed by a wait: every message
    # arrives whole and in order, and the reader gave the burst's pages back each
    # time it waited.
    got: list[Any] = []
    arrived = trio.Event()
    expected = 0
    conns: list[transport.Connection] = []

    async def handler(conn: transport.Connection, msg: Any, reply: Any) -> None:
        if not conns:
            conns.append(conn)
        got.append(msg)
        if len(got) == expected:
            arrived.set()

    server = transport.Server(f"unix:{tmp_path}/b.sock", TOKEN, handler, name="burst")
    sent: list[Any] = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            for burst in range(3):
                for i in range(90):  # ~2.3 KB each, ~210 KB a burst
                    message = (burst, i, os.urandom(1100).hex())
                    sent.append(message)
                    conn.send_nowait(message)
                expected = len(sent)
                with trio.fail_after(20):
                    await arrived.wait()
                arrived = trio.Event()
                lender = conns[0]
                # Once every task is blocked the reader waits again: it released.
                await trio.testing.wait_all_tasks_blocked()
                assert lender.statistics().buffer_releases == burst + 1
            # A lone small frame after the releases reads as ever.
            sent.append("last")
            expected = len(sent)
            conn.send_nowait("last")
            with trio.fail_after(20):
                await arrived.wait()
        nursery.cancel_scope.cancel()
    assert got == sent


async def test_idle_links_cost_a_few_kib_each(tmp_path: Path) -> None:
    # 300 links, server and client ends in this process, a request and its reply
    # on each: was 2 x 256 KiB of zero-filled buffer per link; now the pages the
    # handshake and the two frames wrote.
    async def handler(conn: transport.Connection, msg: Any, reply: Any) -> None:
        reply.send(msg)

    n = 300
    server = transport.Server(f"unix:{tmp_path}/m.sock", TOKEN, handler, name="many")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        warm = await transport.connect(address, TOKEN)
        assert await warm.request("warm") == "warm"
        before = vm_anon_kib()
        conns = [await transport.connect(address, TOKEN) for _ in range(n)]
        for i, c in enumerate(conns):
            assert await c.request(i) == i
        per_link = (vm_anon_kib() - before) / n
        for c in [warm, *conns]:
            await c.aclose()
        nursery.cancel_scope.cancel()
    # Python objects, two tasks and two sockets' worth of bookkeeping per link;
    # 512 KiB a link before. (A bound on memory, not on time.)
    assert per_link < 96, f"{per_link:.1f} KiB of anonymous memory per link"
