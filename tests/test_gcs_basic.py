"""The GCS API on one node process (R=1, replicas in-process, two shards)."""

from __future__ import annotations

import attrs
import pytest
import trio

import gcs
import transport

from .test_gcs_support import TOKEN


@pytest.fixture
async def service(nursery):
    svc = gcs.GcsService(gcs.GcsConfig(shards=2, replicas=1, max_value_bytes=10_000,
                                       lineage_cap=2), TOKEN)
    svc.address = await nursery.start(svc.run)
    return svc


@pytest.fixture
async def client(service):
    async with gcs.open_client(service.address, TOKEN, timeout=5) as c:
        yield c


async def test_put_get_delete_versions_and_scan(client) -> None:
    v1 = await client.put("kv", "a", {"x": 1})
    assert await client.get("kv", "a") == {"x": 1}
    entry = await client.get_entry("kv", "a")
    assert entry == gcs.Entry({"x": 1}, v1)
    with pytest.raises(gcs.VersionMismatch, match=r"kv\['a'\] is at version"):
        await client.put("kv", "a", 2, expect_version=v1 + 100)
    v2 = await client.put("kv", "a", 2, expect_version=v1)
    assert v2 > v1
    assert not await client.put_if_absent("kv", "a", 3)
    assert await client.put_if_absent("kv", "b", 3)
    assert await client.update("kv", "counter", lambda n: n + 1, default=0) == 1
    assert await client.update("kv", "counter", lambda n: n + 1, default=0) == 2
    for i in range(20):  # spread over both shards
        await client.put("kv", f"p/{i:02}", i)
    rows = await client.scan("kv", "p/")
    assert rows == [(f"p/{i:02}", i) for i in range(20)]
    assert {gcs.shard_of(f"p/{i:02}", 2) for i in range(20)} == {0, 1}
    assert len(await client.scan("kv", "p/", limit=5)) == 5
    assert await client.delete("kv", "a")
    assert not await client.delete("kv", "a")
    assert await client.get("kv", "a", "gone") == "gone"
    await client.put("kv", b"raw", b"\x00bytes")
    assert await client.get("kv", b"raw") == b"\x00bytes"


async def test_typed_tables(client) -> None:
    @attrs.frozen
    class Actor:
        state: str
        location: str | None = None

    await client.nodes.register("n1", {"address": "tcp:x:1", "alive": True})
    await client.nodes.heartbeat("n1", {"t": 1.0})
    assert await client.nodes.last_heartbeat("n1") == {"t": 1.0}
    await client.nodes.set_fields("n1", alive=False)
    assert await client.nodes.list() == [("n1", {"address": "tcp:x:1", "alive": False})]

    await client.actors.put("a1", Actor("pending"))
    assert await client.actors.set_fields("a1", state="alive", location="n1") == Actor("alive", "n1")
    with pytest.raises(ValueError, match="'zombie'"):
        await client.actors.set_fields("a1", state="zombie")

    await client.objects.put("o1", {"size": 10})
    assert await client.objects.add_location("o1", "n1")
    assert not await client.objects.add_location("o1", "n1")
    assert await client.objects.add_location("o1", "n2")
    assert await client.objects.locations("o1") == {"n1", "n2"}
    assert await client.objects.remove_location("o1", "n1")
    assert await client.objects.locations("o1") == {"n2"}
    await client.objects.remove("o1")
    assert await client.objects.locations("o1") == frozenset()

    await client.tasks.add("t1", {"fn": "f", "args": (1,)})
    assert (await client.tasks.set_status("t1", "done")).status == "done"
    assert await client.tasks.get("t1") == gcs.TaskEntry({"fn": "f", "args": (1,)}, "done")
    with pytest.raises(KeyError, match="no task 'missing'"):
        await client.tasks.set_status("missing", "done")

    assert await client.functions.export("f1", b"code")
    assert not await client.functions.export("f1", b"other code")
    assert await client.functions.get("f1") == b"code"
    await client.jobs.put("j1", {"driver": "d"})
    assert await client.jobs.scan() == [("j1", {"driver": "d"})]

    await client.kv.put("k", 1, namespace="ns1")
    await client.kv.put("k", 2, namespace="ns2")
    assert not await client.kv.put("k", 3, namespace="ns1", overwrite=False)
    assert await client.kv.get("k", namespace="ns1") == 1
    assert await client.kv.keys(namespace="ns2") == ["k"]
    assert await client.kv.exists("k", namespace="ns2")
    assert await client.kv.delete("k", namespace="ns2")
    assert not await client.kv.exists("k", namespace="ns2")


async def test_lineage_entries_marked_collectable_are_flushed_beyond_the_cap(client) -> None:
    # Use ids of one shard so the cap (2 per shard) applies to all of them.
    ids = [f"t{i}" for i in range(40) if gcs.shard_of(f"t{i}", 2) == 0][:6]
    for task_id in ids:
        await client.tasks.add(task_id, {"spec": task_id}, "done")
    for task_id in ids[:5]:
        assert await client.tasks.mark_collectable(task_id)
    remaining = [task_id for task_id in ids if await client.tasks.get(task_id) is not None]
    assert remaining == ids[3:]  # the 2 newest marked ones, and the unmarked one


async def test_name_registry_is_atomic(service) -> None:
    winners: list[str] = []
    losers: list[gcs.NameTaken] = []

    async def claim(c: gcs.GcsClient, actor_id: str) -> None:
        try:
            await c.actors.register_name("ps", actor_id, namespace="team")
        except gcs.NameTaken as exc:
            losers.append(exc)
        else:
            winners.append(actor_id)

    async with gcs.open_client(service.address, TOKEN) as c1, \
            gcs.open_client(service.address, TOKEN) as c2:
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(claim, c1 if i % 2 else c2, f"actor-{i}")
        assert len(winners) == 1 and len(losers) == 29
        assert all(exc.owner == winners[0] and exc.namespace == "team" for exc in losers)
        assert "actor name 'ps' is already taken in namespace 'team'" in str(losers[0])
        assert await c1.actors.lookup_name("ps", namespace="team") == winners[0]
        assert await c1.actors.lookup_name("ps") is None  # other namespace
        await c1.actors.register_name("ps", "other")  # default namespace is free
        assert await c1.actors.list_names(namespace="team") == [("ps", winners[0])]
        assert not await c1.actors.unregister_name("ps", namespace="team", actor_id="nobody")
        assert await c1.actors.unregister_name("ps", namespace="team", actor_id=winners[0])
        await c2.actors.register_name("ps", "again", namespace="team")


async def test_subscriptions_key_and_prefix(client) -> None:
    async with client.subscribe("kv", prefix="job/") as sub, \
            client.kv.subscribe("job/7") as one:
        for i in range(10):
            await client.put("kv", f"job/{i}", i)
        await client.put("kv", "other", 0)
        await client.delete("kv", "job/7")
        events = [await sub.next(5) for _ in range(11)]
        assert sorted((e.key, e.deleted, e.value or 0) for e in events) == sorted(
            [(f"job/{i}", False, i) for i in range(10)] + [("job/7", True, 0)])
        for shard in (0, 1):
            seqs = [e.seq for e in events if e.shard == shard]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert [(e.value, e.deleted) for e in [await one.next(5), await one.next(5)]] == [
            (7, False), (None, True)]
        with pytest.raises(TimeoutError):
            await sub.next(0.2)


#: The flat dict a replica's ``("stats",)`` request answers (its wire shape).
_REPLICA_REPORT_KEYS = {
    "name", "shard", "role", "epoch", "pending_replies", "subscriber_connections",
    "subscriptions", "published", "dropped_slow", "coordinator_reconnects", "writes", "reads",
    "bad_requests", "snapshots_sent", "snapshots_received", "suspects_reported", "applied",
    "acked", "keys", "table_keys", "log_length", "dedup_entries", "collectable", "evicted",
}


async def test_statistics_are_typed_and_stats_requests_keep_their_wire_shape(
        client, service) -> None:
    async with client.kv.subscribe("watched"):
        await client.put_many("kv", [(f"k{i}", i) for i in range(6)] + [("watched", 1)])
        assert await client.get("kv", "k1") == 1
        stats = client.statistics()
        assert isinstance(stats, gcs.GcsClientStatistics)
        assert stats.writes >= 7 and stats.reads >= 1 and stats.write_groups == 2
        assert stats.subscriptions == 1 and len(stats.layout.shards) == 2

        coordinator = service.coordinator.statistics()
        assert isinstance(coordinator, gcs.CoordinatorStatistics) and coordinator.clients >= 1
        assert [(c.shard, len(c.chain)) for c in coordinator.shards] == [(0, 1), (1, 1)]
        async with transport.open_connection(service.coordinator.address, TOKEN,
                                             name="probe") as conn:
            wire = await conn.request(("stats",), timeout=5)
        assert type(wire) is dict and wire["shards"][0]["chain"] == list(coordinator.shards[0].chain)

        keys = subscriptions = 0
        for shard in (0, 1):
            cfg = service.coordinator.chain(shard)
            async with transport.open_connection(cfg.addresses[cfg.chain[0]], TOKEN,
                                                 name="probe") as conn:
                report = await conn.request(("stats",), timeout=5)
            assert type(report) is dict and set(report) == _REPLICA_REPORT_KEYS, report
            assert report["role"] == "head+tail" and report["applied"] >= 1
            keys += report["table_keys"]["kv"]
            subscriptions += report["subscriptions"]
        assert keys == 7 and subscriptions == 1


async def test_bad_requests_get_typed_errors_and_the_shard_keeps_serving(client, service) -> None:
    with pytest.raises(gcs.UnknownTable, match="unknown table 'nope'"):
        await client.put("nope", "k", 1)
    with pytest.raises(gcs.BadRequest, match="key must be str or bytes, got int"):
        await client.get("kv", 42)
    with pytest.raises(gcs.ValueTooLarge, match="over the limit of 10000 bytes"):
        await client.put("kv", "big", b"x" * 20_000)
    await client.put("kv", "plain", 1)
    with pytest.raises(gcs.BadRequest, match="holds a plain value, not a set"):
        await client.set_add("kv", "plain", "m")
    with pytest.raises(gcs.UnknownTable):
        async with client.subscribe("nope"):
            pass

    # A raw peer (authenticated, but speaking nonsense) straight to a replica.
    head = client.layout.shards[0].head
    async with transport.open_connection(head, TOKEN, name="fuzzer") as conn:
        answer = await conn.request(("w", "cid", "not a list"), timeout=5)
        assert answer[0] == "err" and isinstance(answer[1], gcs.BadRequest)
        answer = await conn.request(("w", "cid", [(1, ("put", "kv", "k", "str-not-bytes", None))]),
                                    timeout=5)
        assert answer[0] == "ok" and isinstance(answer[1][0], gcs.BadRequest)
        answer = await conn.request(("w", "cid", [(2, ("put", "kv", "k", b"x" * 20_000, None))]),
                                    timeout=5)
        assert isinstance(answer[1][0], gcs.ValueTooLarge)
        answer = await conn.request(("r", 0, [("get", "nope", "k"), ("scan", "kv", 1, None)]),
                                    timeout=5)
        assert isinstance(answer[2][0], gcs.UnknownTable) and isinstance(answer[2][1], gcs.BadRequest)
        for junk in [("zzz",), 42, (), ("sub", 1)]:
            answer = await conn.request(junk, timeout=5)
            assert answer[0] == "err" and isinstance(answer[1], gcs.BadRequest)
    await client.put("kv", "still", "serving")
    assert await client.get("kv", "still") == "serving"


async def test_unreachable_gcs_gives_gcs_unavailable(nursery) -> None:
    svc = gcs.GcsService(gcs.GcsConfig(), TOKEN)
    service_scope = trio.CancelScope()

    async def run_service(task_status: trio.TaskStatus[str]) -> None:
        with service_scope:
            await svc.run(task_status=task_status)

    address = await nursery.start(run_service)
    async with gcs.open_client(address, TOKEN, timeout=0.5) as c:
        await c.put("kv", "k", 1)
        service_scope.cancel()
        with pytest.raises(gcs.GcsUnavailable, match="did not answer within 0.5s"):
            await c.get("kv", "other")
    with pytest.raises(gcs.GcsUnavailable, match="cannot reach the GCS coordinator"):
        async with gcs.open_client(address, TOKEN, timeout=0.3):
            pass


def test_plan_describes_the_tree() -> None:
    p = gcs.plan(gcs.GcsConfig(shards=2, replicas=3), TOKEN)
    tree = p.tree
    assert tree.name == "gcs" and tree.strategy == "one_for_one"
    assert [c.name for c in tree.children] == ["coordinator", "shard_0", "shard_1"]
    assert [r.name for r in tree.children[1].children] == ["replica_0", "replica_1", "replica_2"]
    assert {r.kind for r in tree.children[2].children} == {"gcs_replica"}
    with pytest.raises(ValueError, match="shards must be an int >= 1, got 0"):
        gcs.GcsConfig(shards=0)
