"""Transport tests within one process: addresses and arguments, request/reply
semantics, failure paths."""

from __future__ import annotations

import logging
import pickle
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import transport

from .transport_echo import TOKEN, Echo

pytestmark = pytest.mark.usefixtures("no_faults")


# ------------------------------------------------------------------ addresses, arguments


def test_parse_address() -> None:
    assert transport.parse_address("unix:/tmp/a.sock") == transport.Address("unix", path="/tmp/a.sock")
    assert transport.parse_address("tcp:10.0.0.1:80") == transport.Address("tcp", host="10.0.0.1", port=80)
    assert transport.parse_address("tcp::0").host == "127.0.0.1"  # loopback by default
    assert str(transport.parse_address("tcp:[::1]:5")) == "tcp:[::1]:5"
    for bad, match in [
        ("unix:relative.sock", "must be absolute"),
        ("tcp:host", "expected 'tcp:HOST:PORT'"),
        ("tcp:host:http", "'http' is not a number"),
        ("tcp:host:70000", "out of range"),
        ("udp:host:1", "unknown scheme 'udp'"),
        ("nothing", "expected 'unix:/path'"),
    ]:
        with pytest.raises(ValueError, match=match):
            transport.parse_address(bad)
    with pytest.raises(TypeError):
        transport.parse_address(5)  # type: ignore[arg-type]


async def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="token must not be empty"):
        transport.Server("unix:/tmp/x.sock", "", None)
    with pytest.raises(TypeError, match="token must be bytes or str"):
        transport.Server("unix:/tmp/x.sock", 5, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_frame_size"):
        transport.Server("unix:/tmp/x.sock", "t", None, max_frame_size=10)
    with pytest.raises(ValueError, match="unknown scheme"):
        transport.Server("http://x", "t", None)


async def test_connect_to_nothing(tmp_path: Path) -> None:
    with pytest.raises(transport.ConnectError, match="cannot connect to 'unix:"):
        await transport.connect(f"unix:{tmp_path}/none.sock", TOKEN)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(transport.ConnectError, match=f"tcp:127.0.0.1:{port}"):
        await transport.connect(f"tcp:127.0.0.1:{port}", TOKEN)


async def test_connect_times_out_on_a_silent_server(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(f"{tmp_path}/silent.sock")
    lsock.listen()
    try:
        with pytest.raises(transport.ConnectError, match="handshake with .* timed out after 3s"):
            await transport.connect(f"unix:{tmp_path}/silent.sock", TOKEN, connect_timeout=3)
    finally:
        lsock.close()


async def test_server_drops_a_silent_client(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = transport.Server(f"unix:{tmp_path}/s.sock", TOKEN, Echo(), handshake_timeout=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        sock.connect(f"{tmp_path}/s.sock")
        with caplog.at_level(logging.WARNING, logger="transport"):
            with trio.fail_after(10):
                await trio.lowlevel.wait_readable(sock)
            assert sock.recv(10) == b""  # the server hung up
        assert "timed out after 2s" in caplog.text
        assert server.statistics().handshake_failures == 1
        sock.close()
        nursery.cancel_scope.cancel()


async def test_endpoint_name_too_long(echo_server: tuple[str, Echo, transport.Server]) -> None:
    address, _, _ = echo_server
    with pytest.raises(ValueError, match="endpoint name is 2000 bytes long"):
        await transport.connect(address, TOKEN, name="x" * 2000)


# ------------------------------------------------------------------ request / reply semantics


async def test_round_trip_over_tcp() -> None:
    server = transport.Server("tcp:127.0.0.1:0", TOKEN, Echo(), name="tcp-echo")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        assert address.startswith("tcp:127.0.0.1:") and not address.endswith(":0")
        assert server.address == address
        async with transport.open_connection(address, TOKEN, name="c") as conn:
            assert await conn.request(("echo", [1, "two", b"3"])) == [1, "two", b"3"]
            assert conn.peer_name == "tcp-echo" and conn.name == "c"
            assert [c.peer_name for c in server.connections] == ["c"]
            for sock in (conn._sock, server.connections[0]._sock):
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        nursery.cancel_scope.cancel()


async def test_remote_error_and_connection_survives(echo_server: tuple[str, Echo, transport.Server]) -> None:
    address, _, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        with pytest.raises(transport.RemoteError) as info:
            await conn.request(("fail", "k9"))
        assert info.value.remote_type == "builtins.KeyError"
        assert info.value.remote_message == "'k9'"
        assert 'raise KeyError(args[0])' in info.value.remote_traceback
        assert isinstance(info.value.remote_exception, KeyError)
        # RemoteError itself pickles (it may be forwarded)
        again = pickle.loads(pickle.dumps(info.value))
        assert again.remote_type == "builtins.KeyError" and again.remote_traceback
        assert await conn.request(("echo", 1)) == 1


async def test_remote_error_catchable_outside_open_connection(
    echo_server: tuple[str, Echo, transport.Server],
) -> None:
    address, _, _ = echo_server
    with pytest.raises(transport.RemoteError):  # not wrapped in an ExceptionGroup
        async with transport.open_connection(address, TOKEN) as conn:
            await conn.request(("fail", "x"))


async def test_request_timeout_then_late_reply_ignored(
    echo_server: tuple[str, Echo, transport.Server], autojump_clock: trio.testing.MockClock
) -> None:
    address, _, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        with pytest.raises(transport.RequestTimeout, match=r"within 5s"):
            await conn.request(("hang",), timeout=5)
        assert conn.statistics().requests_in_flight == 0
        with trio.move_on_after(1):  # a cancelled request is forgotten too
            await conn.request(("hang",))
        assert conn.statistics().requests_in_flight == 0
        assert await conn.request(("echo", "ok"), timeout=5) == "ok"


async def test_reply_rules(echo_server: tuple[str, Echo, transport.Server], caplog: pytest.LogCaptureFixture) -> None:
    address, _, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        with caplog.at_level(logging.ERROR, logger="transport"):
            assert await conn.request(("twice",)) == 1
        assert "already answered" in caplog.text
        with pytest.raises(transport.RemoteError) as info:
            await conn.request(("unpicklable",))
        assert info.value.remote_type == "builtins.TypeError"
        assert "cannot pickle" in info.value.remote_message
        assert await conn.request(("echo", 2)) == 2


async def test_request_from_own_handler_is_refused_not_deadlocked(tmp_path: Path) -> None:
    async def handler(conn: transport.Connection, msg: Any, reply: transport.Reply | None) -> None:
        assert reply is not None
        await conn.request("ping back")  # would wait forever for a reply only it can read

    server = transport.Server(f"unix:{tmp_path}/s.sock", TOKEN, handler)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            with pytest.raises(transport.RemoteError, match="would deadlock"):
                await conn.request("x", timeout=10)
        nursery.cancel_scope.cancel()


async def test_reply_dropped_unanswered_fails_the_request(
    echo_server: tuple[str, Echo, transport.Server],
) -> None:
    address, _, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        with pytest.raises(transport.RemoteError, match="dropped request 1 without answering"):
            await conn.request(("ignore",), timeout=10)
        assert await conn.request(("echo", 1)) == 1


async def test_reply_fail_needs_an_exception(tmp_path: Path) -> None:
    got: list[transport.Reply] = []

    async def handler(conn: transport.Connection, msg: Any, reply: transport.Reply | None) -> None:
        assert reply is not None
        got.append(reply)
        with pytest.raises(TypeError, match="needs an exception"):
            reply.fail("nope")  # type: ignore[arg-type]
        reply.fail(ValueError("proper"))
        assert reply.done
        with pytest.raises(RuntimeError, match="already answered"):
            reply.fail(ValueError("again"))

    server = transport.Server(f"unix:{tmp_path}/s.sock", TOKEN, handler)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            with pytest.raises(transport.RemoteError, match="proper"):
                await conn.request("x")
        assert "answered" in repr(got[0])
        got[0]._done = False
        got[0].send("after close: silently ignored")
        nursery.cancel_scope.cancel()


async def test_unpicklable_message_fails_locally(echo_server: tuple[str, Echo, transport.Server]) -> None:
    address, _, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        with pytest.raises(TypeError, match="cannot pickle") as info:
            await conn.request(("echo", threading.Lock()))
        assert any("transport: cannot pickle message" in n for n in info.value.__notes__)
        with pytest.raises(AttributeError, match="Can't pickle local object"):
            conn.send_nowait(lambda: None)
        import numpy

        strided = numpy.arange(100, dtype=numpy.uint8).reshape(10, 10)[:, ::2]
        with pytest.raises(pickle.PicklingError, match="non-contiguous"):
            await conn.send(pickle.PickleBuffer(strided))
        assert await conn.request(("echo", 3)) == 3


async def test_frame_too_large_for_the_peer_is_refused_before_sending(tmp_path: Path) -> None:
    server = transport.Server(f"unix:{tmp_path}/s.sock", TOKEN, Echo(), name="small", max_frame_size=64 * 1024)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            with pytest.raises(transport.FrameTooLarge, match="max_frame_size 65536 of peer 'small'"):
                await conn.request(("echo", b"x" * 100_000))
            with pytest.raises(transport.FrameTooLarge):
                await conn.send(pickle.PickleBuffer(bytearray(100_000)))
            assert await conn.request(("echo", b"y" * 1000)) == b"y" * 1000
            # the server's reply to us is checked against *our* limit (the default)
        nursery.cancel_scope.cancel()


async def test_oneway_handler_errors_are_logged(
    echo_server: tuple[str, Echo, transport.Server], caplog: pytest.LogCaptureFixture
) -> None:
    address, handler, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        with caplog.at_level(logging.ERROR, logger="transport"):
            await conn.send("raise")
            assert await conn.request(("echo", 1)) == 1  # in order: the one-way ran first
        assert "one-way handler failed" in caplog.text
        assert handler.oneways == ["raise"]


async def test_no_handler(echo_server: tuple[str, Echo, transport.Server]) -> None:
    address, _, server = echo_server
    async with transport.open_connection(address, TOKEN, name="nohandler"):
        (server_side,) = server.connections
        with pytest.raises(transport.RemoteError, match="'nohandler' has no handler"):
            await server_side.request("hello?")


async def test_connection_lost_fails_all_pending(echo_server: tuple[str, Echo, transport.Server]) -> None:
    address, _, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        failures: list[BaseException] = []

        async def hang() -> None:
            with pytest.raises(transport.ConnectionLost, match="'echo'") as info:
                await conn.request(("hang",))
            failures.append(info.value)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(hang)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(transport.ConnectionLost):
                await conn.request(("close",))  # the server closes the link
        assert len(failures) == 20 and len({id(f) for f in failures}) == 20
        assert conn.closed and conn.statistics().closed


async def test_server_stop_fails_every_client_promptly(tmp_path: Path) -> None:
    server = transport.Server(f"unix:{tmp_path}/stop.sock", TOKEN, Echo(), name="stopping")
    lost: list[str] = []
    async with trio.open_nursery() as outer:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            with server_scope:
                await server.run(task_status=task_status)

        address = await outer.start(run_server)
        conns = [await transport.connect(address, TOKEN, name=f"c{i}") for i in range(3)]

        async def hang(conn: transport.Connection) -> None:
            with pytest.raises(transport.ConnectionLost, match="'stopping'"):
                await conn.request(("hang",))
            lost.append(conn.name)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for conn in conns:
                    for _ in range(10):
                        nursery.start_soon(hang, conn)
                await trio.testing.wait_all_tasks_blocked()
                assert len(server.connections) == 3
                server_scope.cancel()
        assert len(lost) == 30 and all(c.closed for c in conns)
        assert not server.statistics().listening
        assert not (tmp_path / "stop.sock").exists()


async def test_connect_system_task_mode(echo_server: tuple[str, Echo, transport.Server]) -> None:
    address, handler, _ = echo_server
    conn = await transport.connect(address, TOKEN, name="sys")
    async with conn:
        assert await conn.request(("echo", 5)) == 5
        for i in range(100):
            conn.send_nowait(("n", i))
    assert conn.closed  # aclose flushed the queued one-ways first
    with trio.fail_after(5):
        while len(handler.oneways) < 100:
            await handler.got_oneway.wait()
            handler.got_oneway = trio.Event()
    assert handler.oneways == [("n", i) for i in range(100)]
    await conn.aclose()  # idempotent
    with pytest.raises(transport.ConnectionLost, match="closed locally"):
        await conn.send("x")


async def test_backpressure(echo_server: tuple[str, Echo, transport.Server], autojump_clock: trio.testing.MockClock) -> None:
    address, handler, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        await conn.send("block")  # the server's reader now waits in its handler
        chunk = b"z" * (1024 * 1024)
        sent = 0
        with trio.move_on_after(5):
            for _ in range(64):
                await conn.send(chunk)
                sent += 1
        assert 8 <= sent < 64, sent  # blocked once ~16 MiB were queued
        assert conn.statistics().queued_bytes > 8 * 1024 * 1024
        handler.release.set()
        with trio.fail_after(30):
            await conn.send(chunk)
            assert await conn.request(("echo", "drained")) == "drained"
        assert len(handler.oneways) == sent + 2


async def test_send_nowait_refuses_when_the_peer_is_stuck(
    echo_server: tuple[str, Echo, transport.Server], autojump_clock: trio.testing.MockClock
) -> None:
    address, handler, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        await conn.send("block")
        chunk = b"q" * (1024 * 1024)
        queued = 0
        with pytest.raises(trio.WouldBlock, match="use `await send\\(\\)`"):
            for _ in range(1000):
                conn.send_nowait(chunk)
                queued += 1
        assert 64 <= queued <= 66
        handler.release.set()
        with trio.fail_after(60):
            assert await conn.request(("echo", "drained")) == "drained"
        assert len(handler.oneways) == queued + 1


async def test_drain_waits_until_what_was_sent_is_written(
    echo_server: tuple[str, Echo, transport.Server], autojump_clock: trio.testing.MockClock
) -> None:
    """`drain` returns once the frames sent before it are in the socket (not those
    sent while it waits), and raises ConnectionLost when the link closes first."""
    address, handler, _ = echo_server
    async with transport.open_connection(address, TOKEN) as conn:
        await conn.drain()  # nothing queued: at once
        await conn.send("block")  # the server's reader now waits in its handler
        chunk = b"d" * (1024 * 1024)
        for _ in range(40):  # more than the socket buffers take: some stay queued
            conn.send_nowait(chunk)
        assert conn.unsent > 0
        drained = trio.Event()

        async def drain() -> None:
            await conn.drain()
            drained.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await trio.sleep(5)
            assert not drained.is_set()  # the peer reads nothing: still queued
            handler.release.set()
            conn.send_nowait(chunk)  # sent after drain began: not waited for
        assert drained.is_set()
    async with transport.open_connection(address, TOKEN) as conn:
        handler.release = trio.Event()
        await conn.send("block")
        for _ in range(40):
            conn.send_nowait(chunk)
        lost: list[BaseException] = []

        async def drain_lost() -> None:
            with pytest.raises(transport.ConnectionLost) as info:
                await conn.drain()
            lost.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_lost)
            await trio.sleep(1)
            await conn.aclose(flush_timeout=0)
        assert "closed" in str(lost[0])
    handler.release.set()

