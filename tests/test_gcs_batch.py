"""Batched writes (`GcsClient.write_many`, `put_many`, `mark_collectable_many`, and the
task table's `add_many` / `mark_collectable_many`): one waiting task per shard."""

from __future__ import annotations

import pytest
import trio

import gcs
from actorcore.kernel import Supervisor
from transport import faults

from .test_gcs_support import (
    TOKEN,
    applied_per_replica,
    kernel_specs,
    replica_stats,
    start_in_process_chain,
)

CAP = 5


@pytest.fixture(params=[1, 3], ids=["R1", "R3"])
async def tree(request, nursery):
    # Real replica processes (R=1 too), two shards, a small lineage cap.
    plan = gcs.plan(gcs.GcsConfig(shards=2, replicas=request.param, processes=True,
                                  lineage_cap=CAP, max_value_bytes=10_000), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    return plan


async def _replica_stats(plan: gcs.GcsPlan) -> list[gcs.ReplicaStatistics]:
    """Statistics of every replica of every shard."""
    coordinator = plan.coordinator
    assert coordinator is not None
    out = []
    for shard in range(plan.config.shards):
        cfg = coordinator.chain(shard)
        for name in cfg.chain:
            out.append(await replica_stats(cfg.addresses[name]))
    return out


async def test_batched_puts_and_marks_land_and_lineage_stays_bounded(tree) -> None:
    plan = tree
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as client:
        items = [(f"t{i}", {"spec": i}) for i in range(300)]
        versions = await client.tasks.add_many(items, "done")
        assert len(versions) == 300 and all(v > 0 for v in versions)
        # One waiting group per shard, not one task per op.
        assert client.statistics().write_groups == 2
        assert (await client.tasks.get("t7")) == gcs.TaskEntry({"spec": 7}, "done")

        # Mark all but the last 20: each shard keeps at most CAP marked entries.
        marked = await client.tasks.mark_collectable_many([k for k, _ in items[:280]])
        assert marked == [True] * 280
        for stats in await _replica_stats(plan):
            assert stats.state.collectable <= CAP
            assert stats.state.table_keys["tasks"] <= CAP + 20
        # Unmarked entries stay readable; a flushed key is gone; marking it again is False.
        for key, spec in items[280:]:
            assert (await client.tasks.get(key)).spec == spec
        assert await client.tasks.get("t0") is None
        assert await client.tasks.mark_collectable_many(["t0", "t299"]) == [False, True]

        # Generic put_many on another table, many rounds: memory of tasks stays bounded.
        assert await client.put_many("kv", []) == []
        await client.put_many("kv", [(f"k{i}", i) for i in range(50)])
        assert [v for _, v in await client.scan("kv", "k")] == sorted(range(50), key=str)
        for round_ in range(5):
            keys = [f"r{round_}-{i}" for i in range(200)]
            await client.tasks.add_many([(k, None) for k in keys])
            await client.tasks.mark_collectable_many(keys)
        for stats in await _replica_stats(plan):
            assert stats.state.table_keys["tasks"] <= CAP + 19
            assert stats.state.evicted >= 1000 // plan.config.shards - 200


async def test_a_bad_item_rejects_the_whole_call_before_anything_is_sent(tree) -> None:
    plan = tree
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as client:
        with pytest.raises(gcs.ValueTooLarge, match=r"kv\['big'\]"):
            await client.put_many("kv", [("small", 1), ("big", b"x" * 20_000)])
        assert await client.get("kv", "small") is None
        with pytest.raises(gcs.BadRequest, match="nope"):
            await client.mark_collectable_many("nope", ["a"])
        with pytest.raises(gcs.BadRequest):
            await client.put_many("kv", [(3.5, 1)])  # type: ignore[list-item]
        with pytest.raises(gcs.ValueTooLarge, match=r"tasks\['big'\]"):
            await client.tasks.add_many([("big", b"x" * 20_000)])
        # plain pickle refuses a lambda: that value falls back to cloudpickle.
        await client.put_many("kv", [("fn", lambda x: x + 1), ("n", 3)], plain_pickle=True)
        assert (await client.get("kv", "fn"))(1) == 2 and await client.get("kv", "n") == 3


async def test_a_failed_op_raises_or_is_returned(tree) -> None:
    plan = tree
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as client:
        await client.put("kv", "a", 1)
        add = gcs.messages.SetAdd
        ops = [("a", add("kv", "a", "m")), ("b", add("kv", "b", "m"))]
        with pytest.raises(gcs.BadRequest, match="plain value"):
            await client.write_many(ops)
        results = await client.write_many(ops, return_exceptions=True)
        assert isinstance(results[0], gcs.BadRequest)
        assert results[1] is False  # applied once by the first call already
        assert await client.get("kv", "b") == frozenset({"m"})


@pytest.fixture
async def chain(nursery):
    yield await start_in_process_chain(nursery)
    faults.clear()


async def test_batched_writes_are_applied_once_under_retry(chain) -> None:
    faults.seed(11)
    async with gcs.open_client(chain.address, TOKEN, name="lossy", request_timeout=0.1) as c:
        before = (await applied_per_replica(chain))[0]
        with faults.injected(faults.drop(src="gcs/s*", dst="lossy", kind="reply",
                                         probability=0.5)):
            for round_ in range(6):
                await c.tasks.add_many([(f"t{round_}-{i}", i) for i in range(50)])
                await c.tasks.mark_collectable_many([f"t{round_}-{i}" for i in range(0, 50, 2)])
        assert c.statistics().retries > 0
        # 6 x (50 puts + 25 marks), each one update: no retried op was applied twice.
        for _ in range(500):
            applied = await applied_per_replica(chain)
            if len(set(applied)) == 1:
                break
            await trio.sleep(0.01)
        assert applied == [before + 6 * 75] * 3
        assert (await c.tasks.get("t5-49")).spec == 49


def test_a_task_entry_pickles_as_its_two_fields_and_old_entries_still_load() -> None:
    # One entry is pickled per task the node records: as (class, (spec, status)),
    # not attrs' state dict. An entry stored in the old form loads the same.
    import copyreg
    import io
    import pickle

    entry = gcs.TaskEntry({"task_id": "ab", "args": b"x"}, "pending")
    assert entry.__reduce__() == (gcs.TaskEntry, (entry.spec, entry.status))
    assert pickle.loads(pickle.dumps(entry, protocol=5)) == entry

    buf = io.BytesIO()
    old = pickle.Pickler(buf, protocol=5)
    old.dispatch_table = {gcs.TaskEntry: lambda e: (copyreg.__newobj__, (gcs.TaskEntry,),
                                                    e.__getstate__())}
    old.dump(entry)
    assert b"status" in buf.getvalue()  # (the state dict's keys: the old form)
    assert pickle.loads(buf.getvalue()) == entry
