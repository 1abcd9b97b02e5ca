"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import store
import transport
from transport import faults

from .cluster_support import short_root
from .transport_echo import TOKEN as ECHO_TOKEN
from .transport_echo import Echo


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker keeps its clusters' sessions in a directory of its
    own: ``address="auto"``, ``actorcore stop`` and the session listings of one
    worker's tests then see only that worker's clusters, as on a machine of its own
    (two clusters on one machine, each found by its own temp dir)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        base = os.environ.get("ACTORCORE_TMPDIR", "/tmp/actorcore-sessions")
        os.environ["ACTORCORE_TMPDIR"] = f"{base}-{worker}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A real embedded cluster (2 CPUs, worker output not sent to the driver) for
    one test module, shut down after it; yields ``init()``'s info (address,
    session_dir, ...). A module that needs it for every test says
    ``pytestmark = pytest.mark.usefixtures("cluster")``."""
    # Imported here: modules that never start a cluster (transport, store, gcs) do
    # not import actorcore through this file.
    import actorcore as ray

    info = ray.init(num_cpus=2, log_to_driver=False)
    yield info
    ray.shutdown()


@pytest.fixture(scope="module")
def three() -> Iterator[tuple[Any, Any, Any]]:
    """``(cluster, a, b)``: a head (1 CPU), A (1 CPU, resource ``A``) and B (1 CPU,
    resource ``B``) that a module's tests share when they leave every node alive,
    each a driver of its own (``on_three``); see ``cluster_support.three_nodes``."""
    from .cluster_support import three_nodes

    with three_nodes() as nodes:
        yield nodes


@pytest.fixture
def on_three(three: tuple[Any, Any, Any]) -> Iterator[tuple[Any, Any, Any]]:
    """``three``, this process a new driver on its head for the test; afterwards the
    cluster must be back at rest (``cluster_support.driver``)."""
    from .cluster_support import driver

    with driver(three[0]):
        yield three


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two clusters' TLS material (``transport.TlsConfig``): ``a`` (the cluster) and
    ``b`` (another CA)."""
    import transport

    root = tmp_path_factory.mktemp("tls")
    return {
        "a": transport.create_cluster_certs(root / "a"),
        "b": transport.create_cluster_certs(root / "b"),
    }


@pytest.fixture
def plaintext_default() -> Iterator[None]:
    """The test starts (and leaves the process) with the plaintext TLS default; a
    TLS module says ``pytestmark = pytest.mark.usefixtures("plaintext_default")``."""
    import transport

    transport.set_default_tls(None)
    yield
    transport.set_default_tls(None)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A store session prefix of the test's own (its /dev/shm segments), checked
    empty after the test."""
    name = f"actorcore-test-{os.getpid()}-{request.node.name[:40]}".replace("[", "_").replace("]", "_")
    yield name
    leftovers = store.cleanup_session(name)
    assert leftovers == [], f"segments left in /dev/shm: {leftovers}"


@pytest.fixture
def no_faults() -> Iterator[None]:
    """No fault rule of ``transport.faults`` before the test or left after it."""
    faults.clear()
    yield
    faults.clear()


@pytest.fixture
async def echo_server(tmp_path: Path) -> AsyncIterator[tuple[str, Echo, transport.Server]]:
    """An `Echo` server on a Unix socket of the test's: its address, handler, server."""
    handler = Echo()
    server = transport.Server(f"unix:{tmp_path}/echo.sock", ECHO_TOKEN, handler, name="echo")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        yield address, handler, server
        nursery.cancel_scope.cancel()


@pytest.fixture
def root() -> Iterator[str]:
    """A short session root for the clusters a test starts in programs of their own
    (``cluster_support.short_root``)."""
    with short_root() as path:
        yield path
