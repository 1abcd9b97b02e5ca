"""Lineage on a real embedded cluster: every task's spec is recorded in the GCS task
table, and once all of a task's returns are freed it is marked collectable, so the
table stays bounded (the GCS flushes marked entries beyond its ``lineage_cap``)."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import actorcore as ray
import gcs
import transport

CAP = 50


@pytest.fixture(scope="module")
def small_cap_cluster() -> Iterator[tuple[str, bytes]]:
    old = os.environ.get("ACTORCORE_GCS_LINEAGE_CAP")
    os.environ["ACTORCORE_GCS_LINEAGE_CAP"] = str(CAP)
    try:
        info = ray.init(num_cpus=2, log_to_driver=False, gcs_shards=1)
    finally:
        if old is None:
            del os.environ["ACTORCORE_GCS_LINEAGE_CAP"]
        else:
            os.environ["ACTORCORE_GCS_LINEAGE_CAP"] = old
    from actorcore.api import _api

    token = _api._state["head"].token
    assert info["gcs_address"] is not None
    yield info["gcs_address"], token
    ray.shutdown()


@ray.remote
def inc(x):
    return x + 1


@ray.remote(num_returns=2)
def pair(x):
    return x, -x


def _task_stats(address: str, token: bytes) -> gcs.ShardStateStatistics:
    """The tail replica's statistics of its copy of the (single) GCS shard."""

    async def probe() -> gcs.ShardStateStatistics:
        async with gcs.open_client(address, token, timeout=10) as client:
            tail = client.layout.shards[0].tail
            async with transport.open_connection(tail, token, name="probe") as conn:
                stats = await conn.request(gcs.messages.Stats(), timeout=5)
                assert isinstance(stats, gcs.ReplicaStatistics), stats
                return stats.state

    return trio.run(probe)


def _read_task(address: str, token: bytes, task_id: bytes) -> Any:
    async def read() -> Any:
        async with gcs.open_client(address, token, timeout=10) as client:
            return await client.tasks.get(task_id.hex())

    return trio.run(read)


def _settle(address: str, token: bytes, bound: int) -> gcs.ShardStateStatistics:
    """Poll (bounded: the marks are flushed by the node every 50 ms; no event of another
    process to await) until the task table is within ``bound`` entries."""
    deadline = time.monotonic() + 20
    while True:
        stats = _task_stats(address, token)
        if stats.table_keys.get("tasks", 0) <= bound or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def test_task_table_stays_bounded_while_live_lineage_stays_readable(small_cap_cluster) -> None:
    address, token = small_cap_cluster
    kept = inc.remote(41)
    kept_pair = pair.remote(5)
    assert ray.get(kept) == 42 and ray.get(kept_pair) == [5, -5]
    put_ref = ray.put("not a task")  # a put object has no lineage: freeing it is harmless

    rounds, per_round = 6, 500
    peaks = []
    for r in range(rounds):
        refs = [inc.remote(i) for i in range(per_round)]
        pairs = [pair.remote(i) for i in range(20)]
        ray.get(refs)
        ray.get([p[0] for p in pairs])
        del refs, pairs[:10]  # half the pairs lose both refs; the rest lose one below
        for p in pairs:
            del p[1]
        inc.options(num_returns=0).remote(r)  # no output: its lineage is done at once
        gc.collect()
        peaks.append(_settle(address, token, CAP + 50).table_keys.get("tasks", 0))
        del pairs

    stats = _settle(address, token, CAP + 20)
    total = rounds * (per_round + 21) + 2
    # Bounded: the cap, the tasks whose results are still referenced, and a little
    # slack for marks still in the node's 50 ms buffer -- not the ~3,100 tasks run.
    assert stats.table_keys.get("tasks", 0) <= CAP + 20, stats
    assert max(peaks) <= CAP + 50, peaks
    # A task whose returns were all freed before its record left the node's buffer
    # is never written (lineage elision), so never evicted either.
    from actorcore import _api

    elided = _api._call("status")["control"].lineage_elided
    assert stats.evicted + elided >= total - CAP - 40, (stats.evicted, elided, total)

    # The node's own bookkeeping is bounded too: a count per task with a live return.
    control = ray._api._call("status")["control"]
    assert control.lineage_live_tasks is not None and control.lineage_live_tasks <= 20, control
    assert control.lineage_collectable + control.lineage_elided >= total - 20, control
    # The lineage of results still referenced stays readable.
    for ref in (kept, kept_pair[0]):
        entry = _read_task(address, token, ref.task_id())
        assert entry is not None and entry.spec["task_id"] == ref.task_id().hex()
    assert ray.get(put_ref) == "not a task"
    # Freeing one of two returns keeps the lineage (the other still needs it).
    first, second = kept_pair
    del kept_pair
    del first
    gc.collect()
    assert _read_task(address, token, second.task_id()) is not None


def _spec(args: bytes) -> Any:
    from actorcore.protocol._ids import new_task_id
    from actorcore.protocol._messages import TaskSpec

    return TaskSpec(task_id=new_task_id(), job_id=b"\0\0\0\1", function_id=b"f" * 16,
                    name="t", args=args, deps=[], num_returns=1, resources={"CPU": 1.0},
                    max_retries=3, retry_exceptions=False, parent_task_id=None,
                    owner=b"o" * 16)


async def _until(predicate: Any) -> None:
    """Bounded poll of the buffer's counters (its own 50 ms flush timer drives it)."""
    with trio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 (a counter, no event to await)
            await trio.sleep(0.01)


async def test_control_state_writes_and_marks_in_batches_and_skips_refused_records(
        nursery) -> None:
    # The node's GcsControlState over a real GCS (in this process) with a small value
    # limit: a record the GCS refuses is logged and dropped, the rest of its batch lands.
    from actorcore.node.gcs_client._control import GcsControlState

    from .test_gcs_support import start_gcs

    running = await start_gcs(nursery, gcs.GcsConfig(shards=2, replicas=1, max_value_bytes=4_000,
                                                     lineage_cap=0), b"tok")
    address = running.address
    async with gcs.open_client(address, b"tok", timeout=10) as client:
        control = GcsControlState()
        control.attach(client, address)
        nursery.start_soon(control.flush_forever)
        refused = [_spec(b"a"), _spec(b"y" * 10_000), _spec(b"b")]
        for spec in refused:
            control.record_task(spec)
        await _until(lambda: control.statistics().tasks_recorded >= 3)
        assert await client.tasks.get(refused[1].task_id.hex()) is None
        assert (await client.tasks.get(refused[2].task_id.hex())).spec["args"] == b"b"

        groups = client.statistics().write_groups
        good = [_spec(b"x") for _ in range(300)]
        for spec in good:
            control.record_task(spec)
        # Written first: a mark of a record still buffered would elide both.
        await _until(lambda: control.statistics().tasks_recorded >= 303)
        for spec in good[:100]:
            control.lineage_done(spec.task_id)
        await _until(lambda: not control.statistics().lineage_pending
                     and control.statistics().lineage_collectable >= 100)
        assert control.statistics().tasks_recorded == 303
        assert control.statistics().lineage_elided == 0
        # lineage_cap=0: marked entries are flushed at once; the others stay readable.
        assert await client.tasks.get(good[0].task_id.hex()) is None
        entry = await client.tasks.get(good[200].task_id.hex())
        assert entry.spec["task_id"] == good[200].task_id.hex()
        # Two shards, 300 records and 100 marks: a few batched groups, not 400 ops
        # (writes of at most _WRITE_CHUNK items each, so no write blocks the node's
        # loop for long; each reaches both shards).
        from actorcore.node.gcs_client._control import _WRITE_CHUNK

        writes = -(-300 // _WRITE_CHUNK) + -(-100 // _WRITE_CHUNK)
        assert client.statistics().write_groups - groups <= 2 * writes < 400


async def test_lineage_of_tasks_freed_before_it_was_written_is_never_written(nursery) -> None:
    # A task whose returns are all freed while its record is still in the node's
    # buffer needs no lineage: neither the record nor the mark reaches the GCS. A
    # record already written is marked as before, and a task recorded again (a
    # retry) keeps only its latest record.
    from actorcore.node.gcs_client._control import GcsControlState

    from .test_gcs_support import start_gcs

    running = await start_gcs(nursery, gcs.GcsConfig(shards=1, replicas=1), b"tok")
    async with gcs.open_client(running.address, b"tok", timeout=10) as client:
        control = GcsControlState()
        control.attach(client, running.address)
        written = [_spec(b"w") for _ in range(5)]
        for spec in written:
            control.record_task(spec)
        nursery.start_soon(control.flush_forever)
        await _until(lambda: control.statistics().tasks_recorded >= 5)

        freed = [_spec(b"f") for _ in range(40)]
        kept = [_spec(b"k") for _ in range(10)]
        for spec in freed + kept:
            control.record_task(spec)
        for spec in freed[:20]:
            control.record_task(spec)  # recorded again before the flush: still one
        for spec in freed + written:
            control.lineage_done(spec.task_id)
        await _until(lambda: not control.statistics().lineage_pending
                     and control.statistics().lineage_collectable >= 5)
        stats = control.statistics()
        assert (stats.tasks_recorded, stats.lineage_collectable, stats.lineage_elided) == (
            15, 5, 40), stats
        for spec in freed:
            assert await client.tasks.get(spec.task_id.hex()) is None
        for spec in kept:
            assert (await client.tasks.get(spec.task_id.hex())).spec["args"] == b"k"
        assert await client.tasks.get_entry(written[0].task_id.hex()) is not None


async def test_a_flush_leaves_a_young_record_for_the_next_one(nursery, autojump_clock) -> None:
    # A sync task's returns are freed a few ms after its end (the driver's lazy
    # `Free`): a record that came just before a flush waits for the next one, so a
    # free within _ELISION_AGE of its arrival elides it, whenever in the flush
    # interval it came. Records old enough are written as before.
    from actorcore.node.gcs_client._control import (
        _ELISION_AGE,
        _FLUSH_INTERVAL,
        MemoryControlState,
    )

    control = MemoryControlState()
    nursery.start_soon(control.flush_forever)
    old, young = _spec(b"o"), _spec(b"y")
    control.record_task(old)  # starts the flush interval
    await trio.sleep(_FLUSH_INTERVAL - 0.01)
    control.record_task(young)
    await trio.sleep(0.02)  # the first flush has run
    assert control.statistics().tasks_recorded == 1
    control.lineage_done(young.task_id)  # freed 20 ms after it came
    await trio.sleep(_ELISION_AGE + 2 * _FLUSH_INTERVAL)
    stats = control.statistics()
    assert (stats.tasks_recorded, stats.lineage_collectable, stats.lineage_elided,
            stats.lineage_pending) == (1, 0, 1, 0), stats
    assert old.task_id in control.tasks and young.task_id not in control.tasks


async def test_a_burst_s_lineage_waits_for_the_ready_queue_and_the_frees_that_follow(
        nursery, autojump_clock) -> None:
    # While tasks wait in the node's ready queue, a flush holds its records back;
    # once the queue is empty it waits while marks keep coming (a burst's refs
    # freed after its last result), so the records of freed tasks are never
    # written. The rest are written then.
    from actorcore.node.gcs_client._control import _FLUSH_INTERVAL, MemoryControlState

    control = MemoryControlState()
    ready_queue = [object()]  # the node's ready queue, as the flusher sees it
    control.defer_lineage_while(lambda: bool(ready_queue))
    nursery.start_soon(control.flush_forever)
    burst = [_spec(b"b") for _ in range(100)]
    for spec in burst:
        control.record_task(spec)
    await trio.sleep(1.0)  # (the mock clock's time: 20 flush intervals)
    stats = control.statistics()
    assert (stats.tasks_recorded, stats.lineage_pending, stats.lineage_deferrals) == (0, 100, 1)

    ready_queue.clear()
    for first in range(0, 60, 10):  # the frees trickle in after the queue emptied
        for spec in burst[first : first + 10]:
            control.lineage_done(spec.task_id)
        await trio.sleep(_FLUSH_INTERVAL * 0.6)
    await _until(lambda: not control.statistics().lineage_pending)
    stats = control.statistics()
    assert (stats.tasks_recorded, stats.lineage_elided, stats.lineage_collectable) == (
        40, 60, 0), stats
    assert sorted(control.tasks) == sorted(spec.task_id for spec in burst[60:])


async def test_a_flush_held_back_by_a_busy_node_waits_at_most_its_bounds(
        nursery, autojump_clock, monkeypatch) -> None:
    # A node that is never idle still writes its lineage: after ``_BUSY_DEFER``
    # seconds, or at once when ``_BUSY_HOLD`` items wait.
    from actorcore.node.gcs_client import _control

    monkeypatch.setattr(_control, "_BUSY_HOLD", 50)
    control = _control.MemoryControlState()
    control.defer_lineage_while(lambda: True)
    nursery.start_soon(control.flush_forever)
    start = trio.current_time()
    for _ in range(10):
        control.record_task(_spec(b"s"))
    await trio.sleep(_control._BUSY_DEFER - 1.0)
    assert control.statistics().tasks_recorded == 0
    await _until(lambda: control.statistics().tasks_recorded == 10)
    assert trio.current_time() - start >= _control._BUSY_DEFER

    start = trio.current_time()
    for _ in range(60):
        control.record_task(_spec(b"h"))
    await _until(lambda: control.statistics().tasks_recorded == 70)
    assert trio.current_time() - start < 1.0
