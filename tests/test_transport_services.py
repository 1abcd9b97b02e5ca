"""Transport tests within one process: client services and servers (callbacks,
restarts, the handshake), faults injected in process, ports."""

from __future__ import annotations

import functools
import os
import pickle
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

import transport
from transport import _handshake, faults

from .transport_echo import TOKEN, Echo

pytestmark = pytest.mark.usefixtures("no_faults")


# ------------------------------------------------------------------ services


async def test_client_service(tmp_path: Path) -> None:
    server = transport.Server(f"unix:{tmp_path}/s.sock", TOKEN, Echo(), name="svc")
    async with trio.open_nursery() as outer:
        address = await outer.start(server.run)
        client = transport.Client(address, TOKEN, name="holder")
        async with trio.open_nursery() as nursery:
            conn = await nursery.start(client.run)
            assert await conn.request(("echo", 1)) == 1
            assert client.snapshot() == {"kind": "connection", "address": address, "peer": "svc"}
            await conn.aclose()  # a local close: run returns normally
        client2 = transport.Client(address, TOKEN, name="holder2")
        with pytest.raises(ExceptionGroup) as info:  # the supervisor would see a crash
            async with trio.open_nursery() as nursery:
                conn = await nursery.start(client2.run)
                with pytest.raises(transport.ConnectionLost):
                    await conn.request(("close",))
        assert info.group_contains(transport.ConnectionLost, match="'holder2' -> 'svc'")
        outer.cancel_scope.cancel()


async def test_server_callbacks_statistics_and_cleanup(tmp_path: Path) -> None:
    events: list[str] = []

    async def on_connect(conn: transport.Connection) -> None:
        events.append(f"up {conn.peer_name}")

    path = tmp_path / "cb.sock"
    server = transport.Server(
        f"unix:{path}",
        TOKEN,
        Echo(),
        name="cb",
        on_connect=on_connect,
        on_disconnect=lambda conn: events.append(f"down {conn.peer_name}"),
    )
    assert server.address == f"unix:{path}" and not server.statistics().listening
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert path.exists()
        async with transport.open_connection(f"unix:{path}", TOKEN, name="a") as conn:
            await conn.request(("echo", 0))
            stats = server.statistics()
            assert (stats.listening, stats.connections, stats.accepted) == (True, 1, 1)
            assert server.snapshot()["kind"] == "rpc_server"
            cstats = conn.statistics()
            assert cstats.frames_sent == 1 and cstats.bytes_sent > 20 and cstats.peer_name == "cb"
        await trio.testing.wait_all_tasks_blocked()  # the server side has wound down
        nursery.cancel_scope.cancel()
    assert events == ["up a", "down a"]
    assert not path.exists()  # the socket file is removed on close


async def test_server_restart_keeps_its_port_and_replaces_stale_socket(tmp_path: Path) -> None:
    server = transport.Server("tcp:127.0.0.1:0", TOKEN, Echo())
    async with trio.open_nursery() as nursery:
        first = await nursery.start(server.run)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        second = await nursery.start(server.run)
        nursery.cancel_scope.cancel()
    assert first == second
    # a stale socket file (its server died without cleanup) is replaced
    stale = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()
    userver = transport.Server(f"unix:{stale}", TOKEN, Echo())
    async with trio.open_nursery() as nursery:
        await nursery.start(userver.run)
        # ...but a live one is not clobbered
        with pytest.raises(OSError, match="already listens"):
            await nursery.start(transport.Server(f"unix:{stale}", TOKEN, Echo()).run)
        nursery.cancel_scope.cancel()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="is not a socket"):
        await transport.Server(f"unix:{tmp_path}/file", TOKEN, Echo()).run()


async def test_handshake_rejects_a_replayed_or_wrong_proof(tmp_path: Path) -> None:
    # a client that answers the challenge with garbage is rejected with a clear error
    server = transport.Server(f"unix:{tmp_path}/s.sock", TOKEN, Echo(), name="hs")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        sock = await transport._address.dial(address, 5)
        with pytest.raises(transport.AuthenticationFailed, match="failed to prove the cluster token"):
            await _handshake.client_handshake(sock, b"other", "mallory", 2**20, address)
        sock.close()
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().authentication_failures == 1
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ faults (in process)


def test_fault_rules_are_plain_validated_data() -> None:
    rule = faults.delay(0.5, "driver", "node-*/gcs", kind="request", probability=0.5)
    assert faults.Rule.from_dict(rule.to_dict()) == rule
    assert pickle.loads(pickle.dumps(rule)) == rule
    assert rule.matches("driver", "node-1/gcs", "request")
    assert not rule.matches("driver", "node-1/gcs", "reply")
    assert not rule.matches("worker", "node-1/gcs", "request")
    with pytest.raises(ValueError, match="unknown fault action 'explode'"):
        faults.Rule("explode")
    with pytest.raises(ValueError, match="unknown message kind 'rpc'"):
        faults.drop(kind="rpc")
    with pytest.raises(ValueError, match="probability"):
        faults.drop(probability=2)
    with pytest.raises(ValueError, match="delay"):
        faults.delay(-1)
    with pytest.raises(ValueError, match="unknown fault rule fields"):
        faults.Rule.from_dict({"action": "drop", "colour": "red"})
    with pytest.raises(TypeError):
        faults.add({"action": "drop"})  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no fault rule with id 12345"):
        faults.remove(12345)
    with faults.injected(rule, faults.drop()) as ids:
        assert list(faults.rules()) == ids
    assert faults.rules() == {}


def test_fault_commands_as_plain_data() -> None:
    rule_id = faults.apply({"op": "add", "rule": {"action": "drop", "src": "a", "dst": None}})
    assert faults.apply({"op": "list"}) == {rule_id: faults.drop("a").to_dict()}
    faults.apply({"op": "seed", "value": 3})
    faults.apply({"op": "remove", "id": rule_id})
    faults.apply({"op": "add", "rule": faults.duplicate().to_dict()})
    faults.apply({"op": "clear"})
    assert faults.rules() == {}
    with pytest.raises(ValueError, match="unknown fault command op 'explode'"):
        faults.apply({"op": "explode"})
    with pytest.raises(ValueError, match="must be a dict"):
        faults.apply("clear")  # type: ignore[arg-type]


def test_fault_probability_is_seedable() -> None:
    faults.add(faults.drop(probability=0.5))
    faults.seed(7)
    first = [faults.decide("a", "b", "oneway") is not None for _ in range(50)]
    faults.seed(7)
    assert [faults.decide("a", "b", "oneway") is not None for _ in range(50)] == first
    assert 5 < sum(first) < 45


async def test_faults_in_process(
    echo_server: tuple[str, Echo, transport.Server], autojump_clock: trio.testing.MockClock
) -> None:
    address, handler, _ = echo_server
    async with transport.open_connection(address, TOKEN, name="me") as conn:
        with faults.injected(faults.drop("me", "echo", kind="oneway")):
            await conn.send("lost")
            await conn.wait_closed()  # the reset
            with pytest.raises(transport.ConnectionLost, match="injected fault"):
                await conn.send("after the reset")
    assert handler.oneways == []
    async with transport.open_connection(address, TOKEN, name="me") as conn:
        with faults.injected(faults.duplicate("me", "echo", kind="oneway")):
            await conn.send("sent, then the link breaks")
            await conn.wait_closed()
    assert handler.oneways == ["sent, then the link breaks"]
    async with transport.open_connection(address, TOKEN, name="me") as conn:
        with faults.injected(faults.delay(10, "echo", "me")):  # replies from the server
            start = trio.current_time()
            assert await conn.request(("echo", 2)) == 2
            assert await conn.request(("echo", 5)) == 5  # behind the first: 10 s more
            assert trio.current_time() - start >= 20
        with faults.injected(*faults.partition("me", "echo")):
            with pytest.raises(transport.ConnectionLost, match="injected fault"):
                await conn.request(("echo", 3), timeout=1)
            with pytest.raises(transport.ConnectError, match="fault rule"):
                await transport.connect(address, TOKEN, name="me")
        assert conn.statistics().dropped_by_faults == 1
    async with transport.open_connection(address, TOKEN, name="me") as conn:
        assert await conn.request(("echo", 4)) == 4


async def test_fault_delay_keeps_order(
    echo_server: tuple[str, Echo, transport.Server], autojump_clock: trio.testing.MockClock
) -> None:
    # Random delays on half the frames: a slower stream, never a reordered one.
    address, handler, _ = echo_server
    faults.seed(3)
    async with transport.open_connection(address, TOKEN, name="me") as conn:
        with faults.injected(faults.delay(0.05, "me", "echo", probability=0.5)):
            for i in range(40):
                await conn.send(("n", i))
            assert await conn.request(("echo", "last")) == "last"
        assert conn.statistics().dropped_by_faults == 0
    assert handler.oneways == [("n", i) for i in range(40)]


def test_os_cleanup_sanity(tmp_path: Path) -> None:
    # the fixtures above leave no socket files behind
    assert not any(p.suffix == ".sock" for p in tmp_path.iterdir())
    assert os.path.isdir(tmp_path)


async def test_connections_in_their_own_nursery_outlive_a_listener_restart(tmp_path: Path) -> None:
    address = f"unix:{tmp_path}/keep.sock"
    server = transport.Server(address, TOKEN, Echo(), name="keeper")
    async with trio.open_nursery() as links:
        listen = functools.partial(server.run, connection_nursery=links)
        async with trio.open_nursery() as listener:
            await listener.start(listen)
            conn = await transport.connect(address, TOKEN, name="client")
            assert await conn.request(("echo", 1), timeout=5) == 1
            listener.cancel_scope.cancel()  # the listener stops (or crashes) ...
        assert server.connections and not conn.closed  # ... the link does not notice
        assert await conn.request(("echo", 2), timeout=5) == 2
        async with trio.open_nursery() as listener:  # run again: new peers connect too
            await listener.start(listen)
            other = await transport.connect(address, TOKEN, name="other")
            assert await other.request(("echo", 3), timeout=5) == 3
            listener.cancel_scope.cancel()
        await other.aclose()
        with trio.fail_after(5):
            await other.wait_closed()  # returns at once for a closed connection
            await conn.aclose()
            await conn.wait_closed()
        links.cancel_scope.cancel()


# ------------------------------------------------------------------ ports


def test_a_dial_connected_to_itself_is_refused_and_frees_its_port():
    # TCP's simultaneous open: a socket bound to a port and connecting to that same
    # port connects to itself (as a dial to a dead local listener's ephemeral port
    # may, when the kernel picks that port as the dial's own). Like a dial's, the
    # socket has no SO_REUSEADDR: closed plainly, its TIME_WAIT would hold the port
    # for a minute against any listener.
    from transport._address import refuse_self_connection

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.connect(("127.0.0.1", port))
    assert sock.getsockname() == sock.getpeername()
    with pytest.raises(transport.ConnectError, match="connected to itself"):
        refuse_self_connection(sock, f"tcp:127.0.0.1:{port}")
    assert sock.fileno() == -1
    server = socket.socket()  # the port is free for a listener again
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    server.close()


async def test_a_server_at_a_fixed_port_held_for_a_moment_listens_once_it_is_free() -> None:
    # The port of a restarting server is held by another socket (bound without
    # SO_REUSEADDR, as a dial's source port is) when it starts: it tries again, and
    # listens as soon as that socket closes.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    server = transport.Server(f"tcp:127.0.0.1:{port}", TOKEN, Echo())
    async with trio.open_nursery() as nursery:
        started: list[str] = []
        listening = trio.Event()

        async def start() -> None:
            started.append(await nursery.start(server.run))
            listening.set()

        nursery.start_soon(start)
        await trio.sleep(0.1)  # a real holder: the server tries while it is held
        assert not started
        probe.close()
        with trio.fail_after(transport._server.BIND_RETRY):
            await listening.wait()
        assert started == [f"tcp:127.0.0.1:{port}"]
        async with transport.open_connection(started[0], TOKEN) as conn:
            assert conn.peer_name
        nursery.cancel_scope.cancel()

