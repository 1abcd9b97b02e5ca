"""Object transfer between nodes on real clusters: a node pulls an object from
another node's store over TCP (``node.transfers.pull``), driven here through the
node's `PullObject` hook with objects the test writes into one node's store.

Covered: 1 byte, an empty value and 50 MB arrive intact and sealed in the puller's
store, held by the puller and registered in the GCS object table (and released and
unregistered when the copy is dropped); concurrent pulls of one object are one
transfer; a source killed mid-transfer makes the pull use the next location, or
fail with ``ObjectTransferError`` naming the object, its size and the node, leaving
nothing in the puller's store; the nodes keep working afterwards."""

from __future__ import annotations

import os
import time

import attrs
import numpy as np
import pytest
import trio

import store
import transport
from actorcore.exceptions import ObjectTransferError
from actorcore.protocol._wire import (
    DropCopy,
    GetTransferStatistics,
    LocateObject,
    PullObject,
    SlowChunks,
)
from actorcore.testing import Cluster

from .cluster_support import FAST, STEADY, wait_at_rest


@pytest.fixture(scope="module")
def three():
    """Head, A and B (1 CPU each), shared by the tests that kill no node; each test
    drops what it pulled and removes what it wrote, and leaves the cluster at rest."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": STEADY})
    try:
        a = c.add_node(num_cpus=1, env_vars=STEADY)
        b = c.add_node(num_cpus=1, env_vars=STEADY)
        yield c, a, b
    finally:
        c.shutdown()


@pytest.fixture
def shared(three):
    yield three
    wait_at_rest(three[0])


@pytest.fixture
def cluster():
    """A cluster of its own (a head of 1 CPU) for a test that kills a node."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": FAST})
    try:
        yield c
    finally:
        c.shutdown()


def _since(after, before) -> dict[str, int]:
    """The change of each of a node's transfer figures (`TransferStatistics`)."""
    return {k: v - getattr(before, k) for k, v in attrs.asdict(after).items()}


def _token(cluster) -> bytes:
    return cluster.head_node.process.token


def _store_address(node) -> str:
    return f"unix:{node.session_dir / 'sockets' / 'store.sock'}"


async def _call(cluster, node, message, timeout: float = 60.0):  # noqa: ASYNC109
    """One request to ``node`` over its TCP listener; a remote error re-raised as
    the node raised it when it is one of ours."""
    from actorcore.session import _security

    # (TLS as the cluster's nodes have it: from ACTORCORE_TLS_*, if set.)
    async with transport.open_connection(
        f"tcp:{node.address}", _token(cluster), name="test-transfer",
        tls=_security.tls_config(),
    ) as conn:
        try:
            return await conn.request(message, timeout=timeout)
        except transport.RemoteError as exc:
            if isinstance(exc.remote_exception, ObjectTransferError):
                raise exc.remote_exception from None
            raise


def _oid(tag: int) -> bytes:
    return os.urandom(20) + tag.to_bytes(8, "big")


async def _until(fn, what: str, timeout: float = 20.0):  # noqa: ASYNC109
    with trio.fail_after(timeout):
        while True:
            value = await fn()
            if value:
                return value
            await trio.sleep(0.02)
    raise AssertionError(what)


def test_pull_one_byte_empty_and_50mb(shared):
    cluster, a, b = shared
    big = np.random.default_rng(0).integers(0, 255, 50 * 1024 * 1024, dtype=np.uint8)
    values = {_oid(1): b"x", _oid(2): b"", _oid(3): np.empty(0, dtype=np.uint8), _oid(4): big}

    async def main() -> None:
        token = _token(cluster)
        pulled0 = await _call(cluster, b, GetTransferStatistics())
        served0 = await _call(cluster, a, GetTransferStatistics())
        async with await store.StoreClient.connect(_store_address(a), token) as src, \
                await store.StoreClient.connect(_store_address(b), token) as dst:
            for oid, value in values.items():
                await src.put(oid, value)
            for oid, value in values.items():
                assert not await dst.contains(oid)
                await _call(cluster, b, PullObject(oid, [a.node_id]))
                assert await dst.contains(oid)
                got = await dst.get(oid)
                if isinstance(value, np.ndarray):
                    assert got.dtype == value.dtype and np.array_equal(got, value)
                else:
                    assert got == value
                del got
                # Registered in the GCS object table, read back by any node.
                where = await _call(cluster, a, LocateObject(oid))
                assert where == [b.node_id]
            # Pulled again: already here, no second transfer.
            await _call(cluster, b, PullObject(list(values)[3], [a.node_id]))
            stats = _since(await _call(cluster, b, GetTransferStatistics()), pulled0)
            assert stats["transfers"] == 4 and stats["local"] == 1 and stats["failed"] == 0
            assert stats["bytes_in"] >= big.nbytes and stats["copies"] == 4
            served = _since(await _call(cluster, a, GetTransferStatistics()), served0)
            assert served["bytes_out"] == stats["bytes_in"]
            # The puller holds the copy: the source's writer letting go changes nothing.
            for oid in values:
                await src.remove_ref(oid)
            assert await dst.contains(list(values)[3])
            # Dropping the copy releases it and unregisters the location.
            big_oid = list(values)[3]
            await _call(cluster, b, DropCopy(big_oid))

            async def gone() -> bool:
                return not await dst.contains(big_oid)

            await _until(gone, "the dropped copy freed")

            # Its location leaves the GCS object table as the node writes it behind.
            async def unregistered() -> bool:
                return await _call(cluster, a, LocateObject(big_oid)) == []

            await _until(unregistered, "the dropped copy's location unregistered")
            for oid in list(values)[:3]:
                await _call(cluster, b, DropCopy(oid))

    trio.run(main)


def test_concurrent_pulls_of_one_object_are_one_transfer(shared):
    cluster, a, b = shared
    value = np.arange(5 * 1024 * 1024, dtype=np.int32)  # 20 MiB
    oid = _oid(5)

    async def main() -> None:
        token = _token(cluster)
        pulled0 = await _call(cluster, b, GetTransferStatistics())
        served0 = await _call(cluster, a, GetTransferStatistics())
        async with await store.StoreClient.connect(_store_address(a), token) as src, \
                await store.StoreClient.connect(_store_address(b), token) as dst:
            await src.put(oid, value)
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(_call, cluster, b, PullObject(oid, [a.node_id]))
            stats = _since(await _call(cluster, b, GetTransferStatistics()), pulled0)
            assert stats["pulls"] == 8 and stats["transfers"] == 1
            assert stats["joined"] + stats["local"] == 7
            served = _since(await _call(cluster, a, GetTransferStatistics()), served0)
            assert served["bytes_out"] < 2 * value.nbytes  # one copy's worth, not eight
            assert np.array_equal(await dst.get(oid), value)
            await src.remove_ref(oid)
            await _call(cluster, b, DropCopy(oid))

    trio.run(main)


def test_source_killed_mid_transfer_next_location_or_typed_error(cluster):
    a = cluster.add_node(num_cpus=1, env_vars=FAST)
    b = cluster.add_node(num_cpus=1, env_vars=FAST)
    head = cluster.head_node
    value = np.random.default_rng(1).integers(0, 255, 24 * 1024 * 1024, dtype=np.uint8)
    both, only_a, later = _oid(6), _oid(7), _oid(8)

    async def main() -> None:
        token = _token(cluster)
        async with await store.StoreClient.connect(_store_address(a), token) as on_a, \
                await store.StoreClient.connect(_store_address(head), token) as on_head, \
                await store.StoreClient.connect(_store_address(b), token) as dst:
            await on_a.put(both, value)
            await on_a.put(only_a, value)
            await on_head.put(both, value)
            await on_head.put(later, b"still works")
            # A serves slowly (each chunk 0.4 s after its request): kill it while B pulls.
            await _call(cluster, a, SlowChunks(0.4))
            outcome: dict[str, object] = {}

            async def pull(oid: bytes, locations: list[str]) -> None:
                try:
                    await _call(cluster, b, PullObject(oid, locations))
                    outcome[oid.hex()] = "ok"
                except ObjectTransferError as exc:
                    outcome[oid.hex()] = exc

            async def started() -> bool:
                return (await _call(cluster, a, GetTransferStatistics())).chunks_out >= 2

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pull, both, [a.node_id, head.node_id])
                nursery.start_soon(pull, only_a, [a.node_id])
                await _until(started, "A serving chunks")
                assert (await _call(cluster, b, GetTransferStatistics())).in_flight == 2
                killed = time.monotonic()
                await trio.to_thread.run_sync(cluster.remove_node, a)
            took = time.monotonic() - killed
            assert took < 10.0, took
            # The next location gave it, whole.
            assert outcome[both.hex()] == "ok"
            assert np.array_equal(await dst.get(both), value)
            # The only location died: a typed error naming the object, size and node.
            err = outcome[only_a.hex()]
            assert isinstance(err, ObjectTransferError), err
            assert err.object_id == only_a.hex()
            assert err.size is not None and value.nbytes < err.size < value.nbytes + 4096
            assert list(err.tried) == [a.node_id]
            assert only_a.hex() in str(err) and a.node_id[:12] in str(err)
            assert f"{err.size} bytes" in str(err)
            # Nothing of the failed transfer is left in B's store.
            assert not await dst.contains(only_a)
            st = await dst.store_statistics()
            assert st.unsealed == 0 and st.count == 1
            # B keeps working: another pull, from the head, is served.
            await _call(cluster, b, PullObject(later, [head.node_id]))
            assert await dst.get(later) == b"still works"

    trio.run(main)


def test_no_location_is_a_typed_error(shared):
    cluster, _, b = shared
    head = cluster.head_node
    oid = _oid(9)

    async def main() -> None:
        with pytest.raises(ObjectTransferError, match="GCS object table lists none"):
            await _call(cluster, b, PullObject(oid, []))
        with pytest.raises(ObjectTransferError, match="does not hold the object") as info:
            await _call(cluster, b, PullObject(oid, [head.node_id, "ab" * 14]))
        assert set(info.value.tried) == {head.node_id, "ab" * 14}
        assert "not a member" in info.value.tried["ab" * 14]

    trio.run(main)
