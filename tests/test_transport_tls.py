"""TLS on TCP links: mutual certificates from the cluster CA, the token inside TLS,
clear refusals of the other mode, of foreign certificates and of plaintext on a
network address. Real sockets, real certificates (made by `create_cluster_certs`,
the code behind ``actorcore tls init``), one peer in its own process."""

from __future__ import annotations

import os
import pickle
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import transport

from .transport_support import TOKEN, spawn_peer, stop

pytestmark = pytest.mark.usefixtures("plaintext_default")  # tests/conftest.py


async def echo(conn: transport.Connection, message: Any, reply: transport.Reply | None) -> None:
    if reply is not None:
        reply.send(pickle.PickleBuffer(message) if isinstance(message, memoryview) else message)


@pytest.fixture
async def tls_server(certs: dict[str, transport.TlsConfig]) -> AsyncIterator[transport.Server]:
    async with trio.open_nursery() as nursery:
        server = transport.Server(
            "tcp:127.0.0.1:0", TOKEN, echo, name="tls-server", tls=certs["a"], handshake_timeout=2
        )
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


async def until(condition: Any, what: str, limit: float = 5) -> None:
    """Let the server's task for the refused peer finish (it counts the refusal after
    the client has its answer): wait until every task of this run is blocked."""
    with trio.fail_after(limit):
        await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    assert condition(), what


async def still_serves(server: transport.Server, tls: transport.TlsConfig | None) -> None:
    async with transport.open_connection(server.address, TOKEN, tls=tls) as conn:
        assert await conn.request(("ping", 1), timeout=10) == ("ping", 1)


def test_create_cluster_certs_files_and_modes(
    certs: dict[str, transport.TlsConfig], tmp_path: Path
) -> None:
    config = certs["a"]
    directory = Path(config.cert).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name, mode in (("ca.key", 0o600), ("node.key", 0o600), ("ca.pem", 0o644), ("node.pem", 0o644)):
        assert stat.S_IMODE((directory / name).stat().st_mode) == mode, name
    assert (config.cert, config.key, config.ca) == tuple(
        str(directory / n) for n in ("node.pem", "node.key", "ca.pem")
    )
    config.check()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        transport.create_cluster_certs(directory)


async def test_tls_link_between_processes(certs: dict[str, transport.TlsConfig]) -> None:
    """A TLS peer in its own process (TLS as its process default): small and large
    out-of-band messages both ways, and the link reports TLS 1.3."""
    env_dir = str(Path(certs["a"].cert).parent)
    os.environ["PEER_TLS_DIR"] = env_dir
    try:
        proc, line = await spawn_peer("serve", "tcp:127.0.0.1:0", TOKEN, "tls-peer")
    finally:
        del os.environ["PEER_TLS_DIR"]
    try:
        assert line.startswith("LISTENING tcp:"), line
        address = line.split()[1]
        async with transport.open_connection(address, TOKEN, name="c", tls=certs["a"]) as conn:
            assert conn.tls is not None and conn.tls.startswith("TLSv1.3"), conn.tls
            assert await conn.request(("echo", "hello"), timeout=10) == "hello"
            data = os.urandom(3 * 1024 * 1024 + 17)
            size, digest, _ = await conn.request(
                ("checksum", pickle.PickleBuffer(data)), timeout=30
            )
            assert size == len(data)
            import hashlib

            assert digest == hashlib.sha256(data).hexdigest()
            back = await conn.request(("echo", pickle.PickleBuffer(data)), timeout=30)
            assert bytes(back) == data
            # many small requests in flight coalesce through the writer
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(conn.request, ("echo", i), 10)
        # plaintext to the same peer: a clear refusal, and the peer keeps serving
        with pytest.raises(transport.TlsMismatch, match="TLS listener but this end is plaintext"):
            async with transport.open_connection(address, TOKEN, tls=None, connect_timeout=5):
                pass
        async with transport.open_connection(address, TOKEN, tls=certs["a"]) as conn:
            assert await conn.request(("echo", 2), timeout=10) == 2
    finally:
        await stop(proc)


async def test_plaintext_client_to_tls_listener(tls_server: transport.Server) -> None:
    with pytest.raises(transport.TlsMismatch) as info:
        async with transport.open_connection(tls_server.address, TOKEN, tls=None, connect_timeout=5):
            pass
    assert isinstance(info.value, transport.TransportError)
    assert "is a TLS listener but this end is plaintext" in str(info.value)
    await until(lambda: tls_server.statistics().tls_failures == 1, "the server's count")
    await still_serves(tls_server, tls_server._tls)


async def test_tls_client_to_plaintext_listener(certs: dict[str, transport.TlsConfig]) -> None:
    async with trio.open_nursery() as nursery:
        server = transport.Server("tcp:127.0.0.1:0", TOKEN, echo, name="plain", tls=None)
        address = await nursery.start(server.run)
        with pytest.raises(transport.TlsMismatch, match="is a plaintext listener but this end uses TLS"):
            async with transport.open_connection(address, TOKEN, tls=certs["a"], connect_timeout=5):
                pass
        await until(lambda: server.statistics().tls_failures == 1, "the server's count")
        await still_serves(server, None)
        nursery.cancel_scope.cancel()


async def test_server_certificate_from_another_ca_refused(
    tls_server: transport.Server, certs: dict[str, transport.TlsConfig]
) -> None:
    """A client of cluster b does not accept cluster a's server."""
    with pytest.raises(transport.TlsError, match="not accepted by our CA") as info:
        async with transport.open_connection(tls_server.address, TOKEN, tls=certs["b"], connect_timeout=5):
            pass
    assert not isinstance(info.value, transport.TlsMismatch)
    await still_serves(tls_server, certs["a"])


async def test_client_certificate_from_another_ca_refused(
    tls_server: transport.Server, certs: dict[str, transport.TlsConfig]
) -> None:
    """A client that trusts the server's CA but holds a certificate of another CA is
    refused by the server: it must not get as far as the token handshake."""
    a, b = certs["a"], certs["b"]
    impostor = transport.TlsConfig(cert=b.cert, key=b.key, ca=a.ca)
    with pytest.raises(transport.TlsError, match="did not accept our certificate|refused our TLS certificate"):
        async with transport.open_connection(tls_server.address, TOKEN, tls=impostor, connect_timeout=5) as conn:
            await conn.request("never", timeout=5)
    await until(lambda: tls_server.statistics().tls_failures == 1, "the server's count")
    stats = tls_server.statistics()
    assert stats.authentication_failures == 0 and stats.connections == 0
    await still_serves(tls_server, a)


async def test_valid_certificate_without_the_token_refused(
    tls_server: transport.Server, certs: dict[str, transport.TlsConfig]
) -> None:
    with pytest.raises(transport.AuthenticationFailed):
        async with transport.open_connection(
            tls_server.address, "not-the-cluster-token", tls=certs["a"], connect_timeout=5
        ):
            pass
    await until(lambda: tls_server.statistics().authentication_failures == 1, "the server's count")
    await still_serves(tls_server, certs["a"])


@pytest.mark.parametrize("send", [b"", b"\x16\x03\x01"], ids=["silent", "partial-hello"])
async def test_server_handshake_timeout_is_bounded(
    certs: dict[str, transport.TlsConfig], send: bytes
) -> None:
    """A peer that connects and stalls (before or inside the TLS handshake) is cut off
    after the handshake timeout; the listener keeps serving meanwhile."""
    async with trio.open_nursery() as nursery:
        server = transport.Server(
            "tcp:127.0.0.1:0", TOKEN, echo, name="tls-server", tls=certs["a"], handshake_timeout=0.5
        )
        address = await nursery.start(server.run)
        stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
        if send:
            await stream.send_all(send)
        start = trio.current_time()
        await still_serves(server, certs["a"])  # not blocked by the stalled peer
        with trio.fail_after(10):
            while await stream.receive_some(4096):
                pass
        assert 0.4 < trio.current_time() - start < 5
        assert server.statistics().handshake_failures == 1
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_client_handshake_timeout_is_bounded(certs: dict[str, transport.TlsConfig]) -> None:
    """A listener that accepts and never answers: the TLS client gives up after its
    connect timeout with `ConnectError`."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    start = trio.current_time()
    with pytest.raises(transport.ConnectError, match="timed out"):
        await transport.connect(f"tcp:127.0.0.1:{port}", TOKEN, tls=certs["a"], connect_timeout=0.5)
    assert trio.current_time() - start < 3
    listener.close()


async def test_plaintext_listener_on_a_network_address_refused(
    certs: dict[str, transport.TlsConfig], caplog: pytest.LogCaptureFixture
) -> None:
    server = transport.Server("tcp:0.0.0.0:0", TOKEN, echo, name="open", tls=None)
    with pytest.raises(transport.InsecureListener, match="without TLS.*TlsConfig.*insecure=True"):
        await server.run()
    assert not server.statistics().listening
    async with trio.open_nursery() as nursery:
        # TLS, or an explicit insecure=True (with a warning), may listen there
        secure = transport.Server("tcp:0.0.0.0:0", TOKEN, echo, name="secure", tls=certs["a"])
        await nursery.start(secure.run)
        loose = transport.Server("tcp:0.0.0.0:0", TOKEN, echo, name="loose", tls=None, insecure=True)
        await nursery.start(loose.run)
        assert any("WITHOUT TLS" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()


async def test_process_default_applies_to_tcp_only(
    certs: dict[str, transport.TlsConfig], tmp_path: Path
) -> None:
    """`set_default_tls` puts every TCP link of the process in TLS without ``tls=``;
    Unix sockets stay plaintext (and owner-only)."""
    transport.set_default_tls(certs["a"])
    assert transport.default_tls() == certs["a"]
    async with trio.open_nursery() as nursery:
        tcp = transport.Server("tcp:127.0.0.1:0", TOKEN, echo, name="tcp")
        tcp_address = await nursery.start(tcp.run)
        unix = transport.Server(f"unix:{tmp_path}/s.sock", TOKEN, echo, name="unix")
        unix_address = await nursery.start(unix.run)
        assert stat.S_IMODE(os.stat(tmp_path / "s.sock").st_mode) == 0o600
        async with transport.open_connection(tcp_address, TOKEN) as conn:
            assert conn.tls is not None
            assert await conn.request(1, timeout=10) == 1
        async with transport.open_connection(unix_address, TOKEN) as conn:
            assert conn.tls is None
            assert await conn.request(2, timeout=10) == 2
        assert tcp.statistics().tls and not unix.statistics().tls
        nursery.cancel_scope.cancel()


async def test_bad_tls_files_named(certs: dict[str, transport.TlsConfig], tmp_path: Path) -> None:
    a, b = certs["a"], certs["b"]
    missing = transport.TlsConfig(cert=tmp_path / "nope.pem", key=a.key, ca=a.ca)
    with pytest.raises(transport.TlsError, match="nope.pem"):
        await transport.Server("tcp:127.0.0.1:0", TOKEN, echo, tls=missing).run()
    mismatched = transport.TlsConfig(cert=a.cert, key=b.key, ca=a.ca)
    with pytest.raises(transport.TlsError, match="does not match|cannot load"):
        mismatched.check()
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(transport.TlsError, match="CA certificate"):
        transport.TlsConfig(cert=a.cert, key=a.key, ca=garbage).check()
    with pytest.raises(TypeError):
        transport.TlsConfig(cert="", key=a.key, ca=a.ca)


def test_is_loopback_host() -> None:
    for host in ("127.0.0.1", "127.0.1.1", "::1", "localhost", "[::1]"):
        assert transport.is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.1", "no-such-host.invalid"):
        assert not transport.is_loopback_host(host), host
    assert socket.gethostname()  # (a name resolving elsewhere is not loopback)
