"""store: objects larger than shared memory, created and read on disk (the disk
fallback), with real processes, sockets and /dev/shm."""

from __future__ import annotations

import gc
import os
import signal

import numpy as np
import pytest

import store
import store._arena
import store._client
import store._messages

from .store_support import (
    MB,
    TOKEN,
    python_child,
    read_line,
    running_store,
    wait_for,
)


def _mapped_files() -> set[str]:
    """Paths of the files this process maps (from /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def _on_disk(spill) -> list[str]:
    return sorted(os.listdir(spill)) if os.path.isdir(spill) else []


async def test_object_larger_than_the_store_is_created_on_disk_and_read_zero_copy(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill)) as (service, client):
        big = np.arange(6 * MB // 8, dtype=np.int64)  # 6 MB into 4 MB
        await client.put(b"big", big)
        stats = service.statistics()
        assert stats.disk_allocations == 1 and stats.spilled == 1 and stats.unsealed == 0
        assert stats.used == 0  # nothing of it in shared memory
        [name] = _on_disk(spill)
        assert name.endswith(".spill")
        path = str(spill / name)
        # Another process reads it zero-copy: a read-only view of the mapped file.
        proc = python_child(
            """
            import sys, store, trio
            async def main():
                c = await store.StoreClient.connect(sys.argv[1], b"store-test-token")
                a = await c.get(b"big")
                address = a.ctypes.data
                mapped = any(
                    int(lo, 16) <= address < int(hi, 16)
                    for line in open("/proc/self/maps") if sys.argv[2] in line
                    for lo, hi in [line.split()[0].split("-")]
                )
                print(a.flags.writeable, mapped, int(a.sum()), flush=True)
                await c.aclose()
            trio.run(main)
            """,
            service.address, path,
        )
        try:
            writeable, mapped, total = (await read_line(proc)).split()
        finally:
            proc.wait()
        assert (writeable, mapped, int(total)) == ("False", "True", int(big.sum()))
        got = await client.get(b"big")
        np.testing.assert_array_equal(got, big)
        assert not got.flags.writeable and path in _mapped_files()
        # Small objects still go to shared memory while it lives on disk.
        await client.put(b"small", np.ones(MB, dtype=np.uint8))
        assert service.statistics().used > 0
        # Freed with its last ref once its views are gone: the file goes too.
        await client.remove_ref(b"big")
        assert _on_disk(spill) == [name]  # ``got`` still maps it
        del got
        gc.collect()
        await wait_for(lambda: _on_disk(spill) == [], "the file of the freed object removed")
        assert not await client.contains(b"big")


async def test_get_of_more_than_the_store_maps_spilled_objects(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=8 * MB, spill_dir=str(spill)) as (service, client):
        arrays = [np.full(3 * MB // 8, i, dtype=np.int64) for i in range(5)]  # 15 MB
        for i, array in enumerate(arrays):
            await client.put(b"o%d" % i, array)
        assert service.statistics().spilled >= 2
        held = [await client.get(b"o%d" % i) for i in range(5)]  # all alive at once
        for got, array in zip(held, arrays, strict=True):
            np.testing.assert_array_equal(got, array)
        stats = service.statistics()
        assert stats.file_reads >= 1 and stats.file_views >= 1
        assert stats.disk_allocations == 0
        del held, got
        gc.collect()
        for i in range(5):
            await client.remove_ref(b"o%d" % i)
        await wait_for(lambda: service.statistics().count == 0, "all freed")
        assert _on_disk(spill) == []
        assert service.statistics().file_views == 0


async def test_full_store_of_pinned_and_viewed_objects_falls_back_to_disk(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill)) as (service, client):
        await client.put(b"pinned", np.zeros(2 * MB, dtype=np.uint8))
        await client.pin(b"pinned")
        await client.put(b"viewed", np.ones(MB + MB // 2, dtype=np.uint8))
        view = await client.get(b"viewed")
        await client.put(b"third", np.full(2 * MB, 3, dtype=np.uint8))  # no room, none spillable
        assert service.statistics().disk_allocations == 1
        assert (await client.object_info(b"third")).state == "spilled"
        assert (await client.object_info(b"pinned")).state == "sealed"
        assert int((await client.get(b"third"))[0]) == 3
        # Small values (sent inside the request) that no longer fit go to disk too.
        smalls = {b"small%d" % i: bytes([i]) * 60_000 for i in range(20)}  # 1.2 MB
        for oid, value in smalls.items():
            await client.put(oid, value)
            await client.pin(oid)  # so that the next one cannot spill it
        assert service.statistics().disk_allocations > 1
        async with await store.StoreClient.connect(service.address, TOKEN) as other:
            for oid, value in smalls.items():  # read back by the service, from disk
                assert await other.get(oid) == value
        del view
        await client.unpin(b"pinned")


async def test_full_disk_or_no_fallback_gives_a_clear_error_and_leaves_nothing(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(
        tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill), disk_threshold=0.0
    ) as (service, client):
        with pytest.raises(store.ObjectStoreFullError) as info:
            await client.put(b"big", np.zeros(6 * MB, dtype=np.uint8))
        text = str(info.value)
        assert "capacity 4194304 bytes" in text and "past its limit of 0%" in text, text
        assert info.value.requested > 6 * MB and info.value.capacity == 4 * MB
        # Spilling to make room is refused the same way, with the reason.
        await client.put(b"a", np.zeros(3 * MB, dtype=np.uint8))
        with pytest.raises(store.ObjectStoreFullError, match="nothing can be spilled"):
            await client.put(b"b", np.zeros(3 * MB, dtype=np.uint8))
        assert _on_disk(spill) == [] and service.statistics().unsealed == 0
        await client.remove_ref(b"a")
        await client.put(b"b", np.zeros(3 * MB, dtype=np.uint8))  # the store serves on
    async with running_store(
        tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill), disk_fallback=False
    ) as (service, client):
        with pytest.raises(store.ObjectStoreFullError, match="the disk fallback is disabled"):
            await client.put(b"big", np.zeros(6 * MB, dtype=np.uint8))
        assert _on_disk(spill) == []


async def test_writer_killed_while_writing_on_disk_leaves_no_file(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill)) as (service, client):
        proc = python_child(
            """
            import sys, trio, numpy as np, store
            async def main():
                c = await store.StoreClient.connect(sys.argv[1], b"store-test-token")
                value = store.serialize(np.ones(6 << 20, dtype=np.uint8))
                mapping, payload = await c._create(b"half", value, True, 10)
                mapping.write(payload, memoryview(value.buffers[0])[: 1 << 20])
                print("writing", mapping.path, flush=True)
                await trio.sleep_forever()
            trio.run(main)
            """,
            service.address,
        )
        try:
            word, path = (await read_line(proc)).split()
            assert word == "writing" and path.endswith(".spill.tmp")
            assert _on_disk(spill) == [path.rsplit("/", 1)[1]]
            assert not await client.contains(b"half")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        await wait_for(lambda: service.statistics().unsealed == 0, "unsealed reclaimed")
        assert _on_disk(spill) == []


async def test_stale_session_cleanup_removes_its_files_on_disk(tmp_path, prefix):
    spill = tmp_path / "spill"
    proc = python_child(
        """
        import sys, trio, numpy as np, store
        async def main():
            s = store.ObjectStoreService(sys.argv[1], b"store-test-token", capacity=4 << 20,
                                         prefix=sys.argv[2], spill_dir=sys.argv[3])
            async with trio.open_nursery() as n:
                address = await n.start(s.run)
                c = await store.StoreClient.connect(address, b"store-test-token")
                await c.put(b"big", np.ones(6 << 20, dtype=np.uint8))
                print("ready", flush=True)
                await trio.sleep_forever()
        trio.run(main)
        """,
        f"unix:{tmp_path}/node.sock", prefix, str(spill),
    )
    try:
        assert (await read_line(proc)).strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [name] = _on_disk(spill)
    removed = store.cleanup_stale_sessions(name_prefix=prefix)
    assert sorted(removed) == sorted([store.arena_path(prefix), str(spill / name)])
    assert _on_disk(spill) == []

