"""Blocks lent to a writer ahead of its puts (``store._core``, "Lending"): a put
copies into one without a round trip to the store, and the store's guarantees hold
(visibility the moment the put returns, refs taken meanwhile, memory given back
before anything spills, the writer's end, a crash of the service)."""

from __future__ import annotations

import numpy as np
import pytest
import trio

import store

from .store_support import (
    MB,
    TOKEN,
    restarted_on_crash,
    running_store,
    wait_for,
)

PUTS = b"puts-of-the-writer:"


def _no_create(*args, **kwargs):
    raise AssertionError("the put asked the store for its block")


async def _lending_writer(service, size: int = 8 * MB):
    writer = await store.StoreClient.connect(service.address, TOKEN, name="writer")
    await writer.lend_for(PUTS, size)
    await wait_for(lambda: service.statistics().lent >= size, "the first block lent")
    return writer, store.BlockingStoreClient(writer)


async def test_a_put_into_a_lent_block_asks_the_store_nothing_first(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        base = service.statistics()
        writer, blocking = await _lending_writer(service)
        stats = service.statistics()
        # A lent block is neither used by an object nor being written.
        assert (stats.used, stats.unsealed, stats.count) == (base.used, 0, 0)
        writer._call_from_thread = _no_create  # a create would raise in the put
        value = np.arange(500_000)  # 4 MB: fits the 8 MB block, whose tail is freed
        try:
            await trio.to_thread.run_sync(blocking.put, PUTS + b"1", value)
            np.testing.assert_array_equal(await client.get(PUTS + b"1", timeout=0), value)
            await wait_for(lambda: writer.holds(PUTS + b"1"), "the writer's view")
            # The put asked for the next block as it started, as large as itself.
            await wait_for(lambda: writer._lent is not None, "the next block")
            assert value.nbytes <= service.statistics().lent < 5 * MB
            stats = service.statistics()
            assert stats.count == 1 and stats.unsealed == 0
            assert stats.used < base.used + 5 * MB  # the block was cut to the object
            # An id outside the prefix (or larger than the block) asks as before.
            del writer._call_from_thread
            await trio.to_thread.run_sync(blocking.put, b"other", value)
            assert await client.contains(b"other")
        finally:
            await writer.aclose()
        await wait_for(lambda: service.statistics().lent == 0, "the block back at the end")
        assert service.statistics().used == base.used


async def test_a_writer_is_lent_a_block_as_large_as_its_last_put(tmp_path, prefix):
    # Nothing is lent before the first large put (a driver that never puts one
    # holds no block); then the block for the next put is as large as the last
    # put, smaller ones included, not as large as the largest yet.
    async with running_store(tmp_path, prefix) as (service, client):
        writer = await store.StoreClient.connect(service.address, TOKEN, name="writer")
        blocking = store.BlockingStoreClient(writer)
        try:
            await writer.lend_for(PUTS)
            assert service.statistics().lent == 0 and writer._lent is None
            await trio.to_thread.run_sync(blocking.put, PUTS + b"1", np.ones(4 * MB, np.uint8))
            await wait_for(lambda: writer._lent is not None, "the block for the next put")
            assert 4 * MB <= service.statistics().lent < 5 * MB
            writer._call_from_thread = _no_create  # the next put fits the block: no create
            await trio.to_thread.run_sync(blocking.put, PUTS + b"2", np.ones(MB, np.uint8))
            await wait_for(lambda: writer._lent is not None, "the block for the next put")
            assert MB <= service.statistics().lent < 2 * MB
        finally:
            await writer.aclose()


async def test_a_put_into_a_lent_block_is_visible_before_its_adopt_is_read(tmp_path, prefix):
    # The adopt is held back on the writer's link: another client's lookups of the
    # object ask the writer which adopts it sent, and wait for this one; a ref
    # taken meanwhile counts once the object is there. An id under the prefix that
    # was never put is not here.
    from transport import faults

    async with running_store(tmp_path, prefix) as (service, client):
        writer, blocking = await _lending_writer(service)
        value = np.arange(500_000)
        oid = PUTS + b"1"
        try:
            with faults.injected(faults.delay(1.5, src="writer", kind="request")):
                await trio.to_thread.run_sync(blocking.put, oid, value)
                assert service.statistics().count == 0  # its adopt is held back
                await client.add_ref(oid)
                assert await client.contains(oid)  # (it waited for the adopt)
                assert await client.missing([oid, PUTS + b"never"]) == [PUTS + b"never"]
                assert (await client.object_info(oid)).state == "sealed"
                np.testing.assert_array_equal(await client.get(oid, timeout=0), value)
                with pytest.raises(store.ObjectNotFoundError):
                    await client.get(PUTS + b"never", timeout=0)
            await wait_for(lambda: writer.holds(oid), "the writer's view")
            await writer.remove_ref(oid)
            assert await client.contains(oid)  # the reader's ref holds it
            await client.remove_ref(oid)
            await wait_for(lambda: service.statistics().count == 0, "freed with its last ref")
        finally:
            await writer.aclose()


async def test_a_lent_block_is_recalled_before_anything_spills(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=32 * MB, spill_dir=str(spill)) as (
            service, client):
        writer, _ = await _lending_writer(service, 20 * MB)
        try:
            await client.put(b"a", np.ones(10 * MB, dtype=np.uint8))
            await client.put(b"b", np.ones(10 * MB, dtype=np.uint8))  # needs the loan back
            stats = service.statistics()
            assert stats.spills == 0 and stats.lent == 0 and stats.count == 2
            assert writer._lent is None
        finally:
            await writer.aclose()


async def test_an_adopt_the_crashed_service_never_read_is_claimed_on_reconnect(tmp_path, prefix):
    # A put into a lent block returned; its adopt, held back on the link, dies with
    # the service. The restarted service finds the block unsealed under its lend
    # id; the writer's reconnect claims it as the object, and the value is there.
    from transport import faults

    service = store.ObjectStoreService(
        f"unix:{tmp_path}/store.sock", TOKEN, prefix=prefix, capacity=32 * MB,
        recovery_grace=0.5)
    async with restarted_on_crash(service) as ready_recv:
        await ready_recv.receive()
        writer, blocking = await _lending_writer(service)
        value = np.arange(500_000)
        oid = PUTS + b"1"
        with faults.injected(faults.delay(2, src="writer", kind="request")):
            await trio.to_thread.run_sync(blocking.put, oid, value)
            assert service.statistics().count == 0
            service.crash()
            await ready_recv.receive()
        await writer.reconnect()
        with trio.fail_after(10):
            await service.recovery_finished.wait()  # unclaimed blocks are gone now
        np.testing.assert_array_equal(await writer.get(oid), value)
        assert service.statistics().count == 1
        await writer.remove_ref(oid)
        await wait_for(lambda: service.statistics().count == 0, "freed with its last ref")
        await writer.aclose()
