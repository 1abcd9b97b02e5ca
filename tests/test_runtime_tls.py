"""A cluster with TLS: a remote driver joins over TCP with TLS, a plaintext one is
refused clearly; plaintext on a network address is refused unless --insecure; the
session directory is owner-only. Real node, GCS replica processes and drivers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import actorcore
import transport
from actorcore.cli import _cli
from actorcore.session._launcher import start_head
from actorcore.session._session import root_dir

from .cluster_support import HANG_GUARD

DRIVER = textwrap.dedent(
    """
    import sys
    import actorcore as ray
    import transport
    try:
        ray.init(address=sys.argv[1])
    except transport.TlsError as exc:
        print("REFUSED", type(exc).__name__, exc)
        raise SystemExit(0)

    @ray.remote
    def double(x):
        return 2 * x

    print("OK", ray.get([double.remote(i) for i in range(4)]))
    ray.shutdown()
    """
)




pytestmark = pytest.mark.usefixtures("plaintext_default")  # tests/conftest.py


def run_driver(address: str, token: bytes, tmp: Path, tls: transport.TlsConfig | None) -> str:
    """A driver on "another machine": its own session root, the token and TLS files
    from the environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTORCORE_")}
    env.update(ACTORCORE_TMPDIR=str(tmp / "elsewhere"), ACTORCORE_TOKEN=token.hex())
    if tls is not None:
        env.update(ACTORCORE_TLS_CERT=tls.cert, ACTORCORE_TLS_KEY=tls.key, ACTORCORE_TLS_CA=tls.ca)
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, address], env=env, capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_tls_cluster_remote_driver(certs: dict[str, transport.TlsConfig], tmp_path: Path) -> None:
    a = certs["a"]
    head = start_head(num_cpus=1, port=0, tls=a, gcs_replicas=2, embedded=True)
    try:
        info = head.info
        assert info["security"]["mode"] == "tls" and info["security"]["tls"] == a.as_dict()
        session = head.session_dir
        for folder in (session, session / "sockets", session / "logs"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        assert stat.S_IMODE((session / "token").stat().st_mode) == 0o600
        for sock in (session / "sockets").iterdir():
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600, sock

        tcp = info["tcp_address"]
        assert run_driver(tcp, head.token, tmp_path, a) == "OK [0, 2, 4, 6]"
        line = run_driver(tcp, head.token, tmp_path, None)
        assert line.startswith("REFUSED TlsMismatch") and "TLS listener" in line, line
        other = run_driver(tcp, head.token, tmp_path, certs["b"])
        assert other.startswith("REFUSED TlsError") and "not accepted by our CA" in other, other

        # The GCS speaks only TLS too (its replica processes, gcs_replicas=2, could not
        # have joined the coordinator otherwise: they got the mode from the node).
        import trio

        async def probe_gcs() -> None:
            with pytest.raises(transport.TlsMismatch):
                async with transport.open_connection(info["gcs_address"], head.token, tls=None):
                    pass
            async with transport.open_connection(info["gcs_address"], head.token, tls=a) as conn:
                assert conn.tls is not None

        trio.run(probe_gcs)
        # ...and the cluster is healthy after the refusals
        assert run_driver(tcp, head.token, tmp_path, a) == "OK [0, 2, 4, 6]"
    finally:
        head.stop()


def test_plaintext_on_a_network_address_refused_unless_insecure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = set(root_dir().glob("session_*")) if root_dir().exists() else set()
    with pytest.raises(transport.InsecureListener, match="actorcore tls init.*--insecure"):
        start_head(num_cpus=1, port=0, host="0.0.0.0", embedded=True)
    assert _cli.main(["start", "--head", "--port", "0", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "refusing to listen on '0.0.0.0' without TLS" in err and "--tls-cert" in err
    after = set(root_dir().glob("session_*")) if root_dir().exists() else set()
    assert after == before  # refused before anything started

    head = start_head(num_cpus=1, port=0, host="0.0.0.0", insecure=True, embedded=True)
    try:
        assert head.info["security"]["mode"] == "insecure"
        assert head.info["tcp_address"].startswith("tcp:0.0.0.0:")
        log = (head.session_dir / "logs" / "node.log").read_text()
        assert "WITHOUT TLS (--insecure)" in log
    finally:
        head.stop()


def test_tls_init_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "cluster-tls"
    assert _cli.main(["tls", "init", str(target), "--days", "30", "--host", "10.0.0.7"]) == 0
    out = capsys.readouterr().out
    assert f"--tls-cert {target}/node.pem" in out
    config = transport.TlsConfig(target / "node.pem", target / "node.key", target / "ca.pem")
    config.check()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert stat.S_IMODE((target / "node.key").stat().st_mode) == 0o600
    assert _cli.main(["tls", "init", str(target)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_init_tls_arguments_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing init\(tls_key=\), init\(tls_ca=\)"):
        actorcore.init(tls_cert=tmp_path / "node.pem")
    with pytest.raises(transport.TlsError, match="nope.pem"):
        actorcore.init(tls_cert=tmp_path / "nope.pem", tls_key=tmp_path / "k", tls_ca=tmp_path / "c")
    assert not actorcore.is_initialized()
