"""Transport tests across real processes (peers run tests/transport_peer.py)."""

from __future__ import annotations

import hashlib
import logging
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
import trio

import transport
from transport import faults

from .transport_support import PEER, TOKEN, run_peer, spawn_peer, stop


@pytest.fixture(scope="module")
def peer_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One peer server process shared by the module's tests (over a Unix socket)."""
    path = tmp_path_factory.mktemp("peer") / "peer.sock"
    proc = subprocess.Popen(
        [sys.executable, PEER, "serve", f"unix:{path}", TOKEN, "peer"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("LISTENING "), line
    yield line.split()[1]
    proc.kill()
    proc.wait()


@pytest.fixture(autouse=True)
def _no_faults() -> Iterator[None]:
    faults.clear()
    yield
    faults.clear()


@pytest.fixture
async def server(tmp_path: Path) -> transport.Server:
    """An in-test server (this process) that echoes, for peers to connect to."""

    async def handler(conn: transport.Connection, msg: object, reply: transport.Reply | None) -> None:
        if reply is not None:
            op, value = msg  # type: ignore[misc]
            reply.send(value)

    srv = transport.Server(f"unix:{tmp_path}/srv.sock", TOKEN, handler, name="test-server")
    return srv


async def test_round_trip_and_pid(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        assert conn.peer_name == "peer"
        assert await conn.request(("echo", {"k": [1, 2.5, "x", None]})) == {"k": [1, 2.5, "x", None]}
        pid = await conn.request(("pid",))
        assert isinstance(pid, int) and pid != __import__("os").getpid()
        stats = conn.statistics()
        assert stats.frames_sent == 2 and stats.frames_received == 2 and stats.requests_in_flight == 0


async def test_round_trip_over_tcp_between_processes() -> None:
    proc, line = await spawn_peer("serve", "tcp:127.0.0.1:0", TOKEN, "tcp-peer")
    try:
        address = line.split()[1]
        assert address.startswith("tcp:127.0.0.1:")
        async with transport.open_connection(address, TOKEN, name="driver") as conn:
            assert await conn.request(("echo", ("x", 1))) == ("x", 1)
            data = bytes(range(256)) * 40_000
            n, digest, _ = await conn.request(("checksum", pickle.PickleBuffer(data)), timeout=30)
            assert (n, digest) == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        await stop(proc)


async def test_10000_requests_in_flight(peer_address: str) -> None:
    results: dict[int, int] = {}
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:

        async def one(i: int) -> None:
            results[i] = await conn.request(("echo", i), timeout=30)

        async with trio.open_nursery() as nursery:
            for i in range(10_000):
                nursery.start_soon(one, i)
        assert results == {i: i for i in range(10_000)}
        # many frames went out per write: coalescing under load
        assert conn.statistics().writes < 10_000


async def test_reply_from_another_task_and_out_of_order(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        order: list[str] = []

        async def ask(delay: float, tag: str) -> None:
            order.append(await conn.request(("later", delay, tag), timeout=10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 0.3, "slow")
            nursery.start_soon(ask, 0.0, "fast")
        assert order == ["fast", "slow"]


async def test_remote_error_carries_type_message_traceback(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        with pytest.raises(transport.RemoteError) as info:
            await conn.request(("fail", "no such key: k1"))
        err = info.value
        assert err.remote_type == "builtins.ValueError"
        assert err.remote_message == "no such key: k1"
        assert "raise ValueError(args[0])" in err.remote_traceback
        assert isinstance(err.remote_exception, ValueError)
        assert "peer" in str(err) and "remote traceback" in str(err)
        # the connection lives on
        assert await conn.request(("echo", 1)) == 1


async def test_request_timeout(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        with pytest.raises(transport.RequestTimeout, match="no reply from 'peer'"):
            await conn.request(("hang",), timeout=0.2)
        assert conn.statistics().requests_in_flight == 0
        assert await conn.request(("echo", 2)) == 2


async def test_peer_killed_mid_request_fails_all_pending(tmp_path: Path) -> None:
    proc, line = await spawn_peer("serve", f"unix:{tmp_path}/k.sock", TOKEN, "victim")
    try:
        address = line.split()[1]
        async with transport.open_connection(address, TOKEN, name="driver") as conn:
            errors: list[BaseException] = []

            async def hang() -> None:
                try:
                    await conn.request(("hang",))
                except transport.ConnectionLost as exc:
                    errors.append(exc)

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for _ in range(50):
                        nursery.start_soon(hang)
                    await conn.request(("pid",))  # all 50 are sent and pending now
                    proc.kill()
            assert len(errors) == 50
            assert "victim" in str(errors[0])
            assert conn.closed
            with pytest.raises(transport.ConnectionLost, match="victim"):
                await conn.request(("echo", 1))
            with pytest.raises(transport.ConnectionLost):
                conn.send_nowait(("note",))
    finally:
        await stop(proc)


async def test_wrong_token_client_side(peer_address: str) -> None:
    with pytest.raises(transport.AuthenticationFailed, match="failed to prove the cluster token"):
        await transport.connect(peer_address, "wrong-token", name="intruder")


async def test_wrong_token_server_side(server: transport.Server, caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        with caplog.at_level(logging.WARNING, logger="transport"):
            out = await run_peer("client", address, "wrong-token", "intruder")
        assert out.startswith("ERROR AuthenticationFailed")
        assert server.statistics().authentication_failures == 1
        assert "authentication failed" in caplog.text and "intruder" in caplog.text
        # an honest client still gets through
        assert await run_peer("client", address, TOKEN, "honest") == "OK hello"
        nursery.cancel_scope.cancel()


async def test_garbage_bytes_disconnected_server_keeps_serving(
    server: transport.Server, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN, name="bystander") as conn:
            with caplog.at_level(logging.WARNING, logger="transport"):
                assert await run_peer("garbage", address) == "CLOSED"
            assert "not an actorcore transport peer" in caplog.text
            assert server.statistics().handshake_failures == 1
            assert await conn.request(("echo", "fine")) == "fine"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("what", "log_text"),
    [
        ("oversized", "sent a frame of 2147483648 bytes; max_frame_size is"),
        ("badkind", "unknown kind 9"),
        ("badbuffers", "closing connection"),
        ("truncated", "closed the connection mid-frame"),
    ],
)
async def test_bad_frame_closes_only_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, what: str, log_text: str
) -> None:
    gone = trio.Event()

    async def echo(conn: transport.Connection, msg: object, reply: transport.Reply | None) -> None:
        assert reply is not None
        reply.send(msg[1])  # type: ignore[index]

    server = transport.Server(
        f"unix:{tmp_path}/s.sock", TOKEN, echo, name="test-server", on_disconnect=lambda c: gone.set()
    )
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN, name="bystander") as conn:
            with caplog.at_level(logging.INFO, logger="transport"):
                assert await run_peer("raw", address, TOKEN, "evil", what) == "CLOSED"
                with trio.fail_after(5):
                    await gone.wait()
            assert log_text in caplog.text
            assert "evil" in caplog.text
            assert await conn.request(("echo", "still here")) == "still here"
            assert [c.peer_name for c in server.connections] == ["bystander"]
        nursery.cancel_scope.cancel()


async def test_undecodable_request_is_answered_with_error(server: transport.Server) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        out = await run_peer("raw", address, TOKEN, "sloppy", "badpickle")
        assert out.startswith("REPLY ")
        assert "(3, 7, ('transport._errors.ProtocolError'" in out  # request 7: error reply
        assert "(2, 8, 'still alive')" in out  # request 8 on the same link: answered
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", [1, 100_000, 64 * 1024 * 1024 + 3])
async def test_out_of_band_buffers_arrive_intact(peer_address: str, size: int) -> None:
    data = bytearray(numpy.random.default_rng(size).integers(0, 256, size, dtype=numpy.uint8).tobytes())
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        n, digest, kind = await conn.request(("checksum", pickle.PickleBuffer(data)), timeout=60)
        assert (n, digest, kind) == (size, hashlib.sha256(data).hexdigest(), "memoryview")
        echoed = await conn.request(("echo", pickle.PickleBuffer(bytes(data))), timeout=60)
        assert isinstance(echoed, memoryview) and echoed.readonly and echoed == data


async def test_numpy_arrays_travel_out_of_band(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        arr = await conn.request(("numpy", 1_000_000), timeout=30)
        assert arr.dtype == numpy.float64 and arr[-1] == 999_999.0
        assert conn.statistics().bytes_received > 8_000_000
        big = numpy.arange(3_000_000, dtype=numpy.int32).reshape(1000, 3000)
        back = await conn.request(("echo", big), timeout=30)
        assert numpy.array_equal(back, big)
        n, digest, _ = await conn.request(("checksum", pickle.PickleBuffer(big)), timeout=30)
        assert n == big.nbytes and digest == hashlib.sha256(big.tobytes()).hexdigest()


async def test_peer_can_request_back_on_the_same_connection(peer_address: str) -> None:
    got = trio.Event()
    results: list[object] = []

    async def handler(conn: transport.Connection, msg: object, reply: transport.Reply | None) -> None:
        if reply is not None:
            reply.send(("driver saw", msg))
        else:
            results.append(msg)
            got.set()

    async with transport.open_connection(peer_address, TOKEN, name="driver", handler=handler) as conn:
        await conn.send(("request_me", 42))
        with trio.fail_after(10):
            await got.wait()
    assert results == [("requested", ("driver saw", ("echo", 42)))]


# --------------------------------------------------------------------- fault injection


async def test_fault_drop_in_peer_installed_remotely(peer_address: str) -> None:
    # A dropped frame resets its link (a stream loses nothing inside a live
    # connection): the pending request fails at once, the link is closed.
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        rule = faults.drop(src="peer", dst="driver", kind="reply")
        with pytest.raises(transport.ConnectionLost, match="peer closed"):
            await conn.request(("faults", {"op": "add", "rule": rule.to_dict()}), timeout=5)
        assert conn.closed
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        with pytest.raises(transport.ConnectionLost, match="peer closed"):
            await conn.request(("echo", 1), timeout=5)
    async with transport.open_connection(peer_address, TOKEN, name="other") as conn:
        # the rule names "driver": another endpoint's link is untouched
        assert await conn.request(("echo", 1), timeout=5) == 1
        assert await conn.request(("faults", {"op": "clear"}), timeout=5) is None
        assert await conn.request(("faults", {"op": "list"}), timeout=5) == {}
        with pytest.raises(transport.RemoteError, match="unknown op"):
            await conn.request(("nonsense",), timeout=5)
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        assert await conn.request(("echo", 2), timeout=5) == 2


async def test_fault_drop_local_requests(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        with faults.injected(faults.drop("driver", "pee*", kind="oneway")):
            assert await conn.request(("echo", 1), timeout=5) == 1  # not matched by kind
        with faults.injected(faults.drop("driver", "pee*", kind="request")):
            await conn.send(("note",))  # one-way is not matched by kind="request"
            with pytest.raises(transport.ConnectionLost, match="injected fault"):
                await conn.request(("echo", 1), timeout=5)
            assert conn.statistics().dropped_by_faults == 1
            with pytest.raises(transport.ConnectionLost):
                await conn.send(("note",))
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        assert await conn.request(("echo", 3)) == 3


async def test_fault_delay(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        with faults.injected(faults.delay(0.4, "driver", "peer")):
            start = trio.current_time()
            assert await conn.request(("echo", 1), timeout=5) == 1
            assert trio.current_time() - start >= 0.4
            with pytest.raises(transport.RequestTimeout):
                await conn.request(("echo", 1), timeout=0.1)


async def test_fault_duplicate(peer_address: str) -> None:
    # A "duplicate" delivers the frame, then breaks the link: the sender cannot
    # tell it arrived (it resends on its next link; the receiver sees it twice).
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        before = await conn.request(("notes",))
        with faults.injected(faults.duplicate("driver", None, kind="oneway")):
            await conn.send(("note",))
            with trio.fail_after(10):
                await conn.wait_closed()
        assert conn.closed
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        assert await conn.request(("notes",)) == before + 1  # it did arrive


async def test_fault_refuse_partition(peer_address: str) -> None:
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        ids = [faults.add(r) for r in faults.partition("driver", "peer")]
        with pytest.raises(transport.ConnectError, match="refused by fault rule"):
            await transport.connect(peer_address, TOKEN, name="driver")
        with pytest.raises(transport.ConnectionLost, match="injected fault"):  # existing link
            await conn.request(("echo", 1), timeout=5)
        other = await transport.connect(peer_address, TOKEN, name="someone-else")
        async with other:
            assert await other.request(("echo", 1)) == 1
        for i in ids:
            faults.remove(i)
    async with transport.open_connection(peer_address, TOKEN, name="driver") as conn:
        assert await conn.request(("echo", 9)) == 9


async def test_fault_refuse_on_the_server_side(server: transport.Server) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        with faults.injected(faults.refuse("test-server", "blocked")):
            out = await run_peer("client", address, TOKEN, "blocked")
            assert out.startswith("ERROR ConnectError"), out
            assert "refused the connection by a fault rule" in out
            assert await run_peer("client", address, TOKEN, "allowed") == "OK hello"
        nursery.cancel_scope.cancel()
