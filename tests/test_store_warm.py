"""store: the arena kept warm (faulted in) ahead of use, by the service and by a
client's mapping."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest
import trio

import store
import store._arena
import store._client
import store._messages

from .store_support import (
    MB,
    TOKEN,
    running_store,
)


def _faulted_in(path: str) -> int:
    """Bytes of a /dev/shm file that have pages (tmpfs allocates them on first use)."""
    return os.stat(path).st_blocks * 512


def _rss_shmem() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("RssShmem:"))


async def test_arena_is_kept_warm_ahead_of_use(tmp_path, prefix):
    header = 4096
    rss = _rss_shmem()
    async with running_store(tmp_path, prefix, capacity=64 * MB, warm=16 * MB) as (service, client):
        with trio.fail_after(30):
            await service.wait_warm()
        # Faulted in at start, without a put: the header and 16 MiB above it; not
        # left mapped in the service's process (it would count in its RSS).
        assert service.statistics().prefaulted == header + 16 * MB
        assert _faulted_in(service.arena_path) == header + 16 * MB
        assert _rss_shmem() - rss < 4 * MB
        # A put raises the high water mark: the margin moves up with it.
        await client.put(b"a", np.full(24 * MB, 7, dtype=np.uint8))
        with trio.fail_after(30):
            await service.wait_warm()
        stats = service.statistics()
        assert stats.used > 24 * MB
        assert stats.prefaulted >= header + stats.used + 12 * MB
        # (give or take the page the free remainder's header was written to)
        assert 0 <= _faulted_in(service.arena_path) - stats.prefaulted <= 4096
        assert int(np.asarray(await client.get(b"a")).sum()) == 7 * 24 * MB


async def test_warm_never_goes_past_the_capacity_and_can_be_turned_off(tmp_path, prefix):
    async with running_store(tmp_path, prefix, capacity=8 * MB) as (service, _client):
        with trio.fail_after(30):
            await service.wait_warm()  # the default margin (256 MiB) is more than the arena
        assert service.statistics().prefaulted == 4096 + 8 * MB
        assert _faulted_in(service.arena_path) == 4096 + 8 * MB
    async with running_store(tmp_path, prefix, capacity=8 * MB, warm=0) as (service, client):
        await client.put(b"a", np.ones(MB, dtype=np.uint8))
        assert service.statistics().prefaulted == 0
        assert _faulted_in(service.arena_path) < 2 * MB
    with pytest.raises(ValueError, match="warm"):
        store.ObjectStoreService("unix:/tmp/x.sock", TOKEN, capacity=MB, warm=-1)


async def test_puts_racing_the_warmer_keep_their_bytes(tmp_path, prefix):
    # The whole arena is faulted in from the start while puts land on pages the
    # warmer has not reached yet: it must never change a byte already written.
    async with running_store(tmp_path, prefix, capacity=160 * MB, prefault=True) as (service, client):
        for i in range(16):
            await client.put(b"v%d" % i, np.full(8 * MB, i + 1, dtype=np.uint8))
        with trio.fail_after(60):
            await service.wait_warm()
        assert service.statistics().prefaulted == 4096 + 160 * MB
        for i in range(16):
            value = np.asarray(await client.get(b"v%d" % i))
            assert value.min() == value.max() == i + 1



def _thread_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def test_a_mapping_maps_its_pages_in_once(prefix):
    # A write into pages this process has not mapped maps them in first (bulk read
    # faults); a later write into the same pages takes no fault at all, and skips
    # the walk too (the mapping remembers what it mapped) until told they are gone.
    path = f"/dev/shm/{prefix}.mapping"
    with open(path, "wb") as f:
        f.truncate(32 * MB)
    try:
        mapping = store._arena.Mapping(path)
        value = np.arange(16 * MB, dtype=np.uint8)
        reversed_value = value[::-1].copy()
        before = _thread_faults()
        mapping.write(4096, value)
        first = _thread_faults() - before
        before = _thread_faults()
        mapping.write(4096, reversed_value)
        second = _thread_faults() - before
        assert first >= 16 * MB // 65536, first  # one read fault per 64 KiB at best
        assert second < 8, second
        assert bytes(mapping.view[4096 : 4096 + 16 * MB]) == reversed_value.tobytes()
        # A range dropped from this process's page tables is mapped in again.
        store._arena._advise(mapping.address, 32 * MB, store._arena.MADV_DONTNEED)
        mapping.forget(0, 32 * MB)
        before = _thread_faults()
        mapping.write(4096, value)
        assert _thread_faults() - before >= 16 * MB // 65536
        assert bytes(mapping.view[4096 : 4096 + 16 * MB]) == value.tobytes()
    finally:
        os.unlink(path)


async def test_a_client_maps_the_warm_margin_ahead_of_its_puts(tmp_path, prefix):
    async with running_store(tmp_path, prefix, capacity=64 * MB, warm=24 * MB) as (service, client):
        with trio.fail_after(30):
            await service.wait_warm()
        rss = _rss_shmem()
        with trio.fail_after(30):
            assert await client.map_ahead() == 24 * MB
        # Mapped into this process: its RSS counts the (shared, existing) pages.
        assert _rss_shmem() - rss >= 23 * MB
        stats = client.statistics()
        assert stats.mapped_ahead == 24 * MB and stats.map_ahead_seconds > 0
        # Mapping again maps nothing new; a put into the margin needs no page-table
        # entries of its own (an unmapped 6 MiB would take 96 read faults or more).
        # Below the client's copy-in-a-thread size, so that the copy runs in this
        # thread and only this thread's faults are counted (the service's warmer
        # runs in this process too, in threads of its own).
        assert await client.map_ahead() == 0
        fives = np.full(6 * MB, 5, dtype=np.uint8)
        assert fives.nbytes < store._client.COPY_IN_THREAD
        before = _thread_faults()
        await client.put(b"a", fives)
        assert _thread_faults() - before < 32
        value = np.asarray(await client.get(b"a"))
        assert value.min() == value.max() == 5
    async with running_store(tmp_path, prefix, capacity=8 * MB, warm=0) as (service, client):
        assert await client.map_ahead() == 0  # no margin: nothing to map

