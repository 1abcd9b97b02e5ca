"""Durable mode: a whole-GCS restart recovers the control state from the shard logs."""

from __future__ import annotations

import os
import signal

import pytest

import gcs

from .test_gcs_support import TOKEN, RunningGcs, running_gcs


async def _run_gcs(config: gcs.GcsConfig, body) -> None:  # type: ignore[no-untyped-def]
    async with running_gcs(config) as service:
        async with gcs.open_client(service.address, TOKEN, timeout=20) as client:
            await body(client, service)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_whole_gcs_restart_recovers_state(tmp_path, replicas: int) -> None:
    config = gcs.GcsConfig(shards=2, replicas=replicas, durable_dir=str(tmp_path), lineage_cap=0)

    async def fill(client: gcs.GcsClient, service: RunningGcs) -> None:
        for i in range(200):
            await client.put("kv", f"k{i}", {"i": i})
        await client.actors.register_name("ps", "actor-1")
        await client.objects.add_location("o1", "node-a")
        await client.tasks.add("t-live", {"fn": "f"}, "done")
        await client.tasks.add("t-old", {"fn": "g"}, "done")
        await client.tasks.mark_collectable("t-old")  # cap 0: flushed at once
        await client.delete("kv", "k0")
        logs_of_every_replica()

    async def check(client: gcs.GcsClient, service: RunningGcs) -> None:
        rows = await client.scan("kv", "k")
        assert len(rows) == 199 and dict(rows)["k199"] == {"i": 199}
        assert await client.get("kv", "k0") is None
        assert await client.actors.lookup_name("ps") == "actor-1"
        with pytest.raises(gcs.NameTaken):
            await client.actors.register_name("ps", "actor-2")
        assert await client.objects.locations("o1") == {"node-a"}
        assert await client.tasks.get("t-live") == gcs.TaskEntry({"fn": "f"}, "done")
        assert await client.tasks.get("t-old") is None
        # new writes continue after the recovered sequence numbers
        version = await client.put("kv", "after", 1)
        assert version > 1
        logs_of_every_replica()

    def logs_of_every_replica() -> None:
        # Every replica logs, also one that joined without a snapshot. (Looked at
        # while the GCS runs: its supervisor stops the replicas one by one, and the
        # coordinator deletes the log of each one it sees go while another lives.)
        for shard in (0, 1):
            assert len(list((tmp_path / f"shard_{shard}").glob("*.log"))) == replicas

    await _run_gcs(config, fill)
    await _run_gcs(config, check)
    await _run_gcs(config, check)  # and again: the recovered log was rewritten correctly


async def test_restart_after_every_replica_process_was_killed(tmp_path) -> None:
    config = gcs.GcsConfig(shards=1, replicas=2, durable_dir=str(tmp_path))

    async def fill_and_crash(client: gcs.GcsClient, service: RunningGcs) -> None:
        for i in range(100):
            await client.put("jobs", f"j{i}", i)
        for svc in service.replicas():
            assert svc.pid is not None
            os.kill(svc.pid, signal.SIGKILL)

    async def check(client: gcs.GcsClient, service: RunningGcs) -> None:
        assert [v for _, v in await client.scan("jobs")] == sorted(range(100), key=lambda i: f"j{i}")

    await _run_gcs(config, fill_and_crash)
    await _run_gcs(config, check)


async def test_non_durable_gcs_writes_nothing(tmp_path) -> None:
    config = gcs.GcsConfig(shards=1, replicas=1)

    async def body(client: gcs.GcsClient, service: RunningGcs) -> None:
        await client.put("kv", "k", 1)

    await _run_gcs(config, body)
    assert list(tmp_path.iterdir()) == []


async def test_coordinator_crash_in_durable_mode_keeps_the_shards(tmp_path, nursery) -> None:
    from actorcore.kernel import Supervisor

    from .test_gcs_support import kernel_specs

    plan = gcs.plan(gcs.GcsConfig(shards=2, replicas=1, durable_dir=str(tmp_path)), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    address = await plan.wait_ready(30)
    async with gcs.open_client(address, TOKEN, timeout=20) as c:
        for i in range(20):
            await c.put("kv", f"k{i}", i)
        gcs_sup = root.find("gcs")
        gcs_sup.crash_child("coordinator")
        await gcs_sup.wait_running("coordinator", restarts=1, timeout=20)
        assert await plan.wait_ready(20) == address  # same address after the restart
        assert [v for _, v in await c.scan("kv")] == sorted(range(20), key=lambda i: f"k{i}")
        await c.put("kv", "after", 1)
        assert await c.get("kv", "after") == 1
    snapshot = root.snapshot()["children"][0]
    assert [child["name"] for child in snapshot["children"]] == ["coordinator", "shard_0", "shard_1"]
    assert snapshot["children"][0]["restarts"] == 1
    assert snapshot["children"][1]["restarts"] == 0  # one_for_one: the shards live on
