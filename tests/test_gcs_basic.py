"""The GCS API on one node process (R=1, replicas in-process, two shards)."""

from __future__ import annotations

import os

import attrs
import pytest
import trio

import gcs
import transport

from .test_gcs_support import TOKEN, replica_stats, start_gcs


@pytest.fixture
async def service(nursery):
    return await start_gcs(nursery, gcs.GcsConfig(shards=2, replicas=1, max_value_bytes=10_000,
                                                  lineage_cap=2))


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


async def test_statistics_are_typed_also_over_the_wire(client, service) -> None:
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
            wire = await conn.request(gcs.messages.Stats(), timeout=5)
        assert isinstance(wire, gcs.CoordinatorStatistics)
        assert wire.shards[0].chain == coordinator.shards[0].chain

        keys = subscriptions = 0
        for shard in (0, 1):
            cfg = service.coordinator.chain(shard)
            report = await replica_stats(cfg.addresses[cfg.chain[0]])
            assert report.role == "head+tail" and report.state.applied >= 1
            keys += report.state.table_keys["kv"]
            subscriptions += report.pubsub.subscriptions
        assert keys == 7 and subscriptions == 1


async def test_bad_operations_get_typed_errors_and_the_shard_keeps_serving(client, service) -> None:
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

    # Well-formed messages carrying bad operations, straight to a replica.
    m = gcs.messages
    head = client.layout.shards[0].head
    async with transport.open_connection(head, TOKEN, name="fuzzer") as conn:
        answer = await conn.request(m.Write("cid", [1], [m.Put("kv", "k", "str-not-bytes")]),
                                    timeout=5)
        assert isinstance(answer, m.WriteDone) and isinstance(answer.results[0], gcs.BadRequest)
        answer = await conn.request(m.Write("cid", [2], [m.Put("kv", "k", b"x" * 20_000)]),
                                    timeout=5)
        assert isinstance(answer.results[0], gcs.ValueTooLarge)
        answer = await conn.request(m.Write("cid", [3], [("put", "kv", "k", b"x", None)]),
                                    timeout=5)
        assert isinstance(answer.results[0], gcs.BadRequest)
        assert "unknown write operation tuple" in str(answer.results[0])
        answer = await conn.request(m.Read(0, [m.Get("nope", "k"), m.Scan("kv", 1)]), timeout=5)
        assert isinstance(answer.results[0], gcs.UnknownTable)
        assert isinstance(answer.results[1], gcs.BadRequest)
    await client.put("kv", "still", "serving")
    assert await client.get("kv", "still") == "serving"


async def _refused(conn: transport.Connection, junk: object) -> gcs.BadRequest:
    """What a replica answers ``junk``: `Refused` with a `BadRequest`."""
    answer = await conn.request(junk, timeout=5)
    assert isinstance(answer, gcs.messages.Refused), answer
    assert isinstance(answer.error, gcs.BadRequest), answer.error
    return answer.error


async def test_a_hostile_peer_gets_typed_refusals_from_replica_processes_and_the_coordinator(
        nursery) -> None:
    """Garbage, unknown message types and known types with wrong fields, sent to a
    replica in its own process and to the coordinator: typed refusals naming the
    fault, and both keep serving."""
    m = gcs.messages
    running = await start_gcs(nursery, gcs.GcsConfig(shards=1, replicas=2))
    async with gcs.open_client(running.address, TOKEN, timeout=10) as client:
        await client.put("kv", "before", 1)
        head, tail = running.coordinator.chain(0).chain
        pids = {s.name: s.pid for s in running.replicas()}
        assert pids[head] != os.getpid() and pids[tail] != os.getpid()
        with attrs.validators.disabled():  # what a buggy or older peer would build
            wrong_write = m.Write("cid", [1, 2], [m.Put("kv", "k", b"v")])
            wrong_types = m.Write(42, ["1"], [m.Put("kv", "k", b"v")])
            wrong_read = m.Read(-1, "not a list")
            wrong_sub = m.Subscribe("one", "kv", None, "", None)
            wrong_forward = m.Forward([1, 2], ["P"], [], [], [], [], [], [])
        address = running.coordinator.chain(0).addresses[head]
        async with transport.open_connection(address, TOKEN, name="hostile") as conn:
            for junk, says in [
                (42, "does not handle messages of type int"),
                (("w", "cid", [(1, ("put", "kv", "k", b"v", None))]),
                 "does not handle messages of type tuple"),
                (m.Hello(), "does not handle messages of type Hello"),
                (wrong_write, "1 operations but 2 client sequence numbers"),
                (wrong_types, "malformed Write: 'client_id' must be"),
                (wrong_read, "malformed Read: 'min_seq' must be >= 0"),
                (wrong_sub, "malformed Subscribe: 'sub_id' must be <class 'int'>"),
                (wrong_forward, "'kinds' must be a list as long as 'seqs' (2)"),
            ]:
                error = await _refused(conn, junk)
                assert says in str(error), (says, str(error))
            await conn.send(m.Forward([1], ["P"], ["kv"], ["k"], [b"v"], [None], [0], [None]))
            # (from a link that is not its predecessor's: ignored)
            await conn.send(("fw", []))  # one-way junk: logged and dropped
            stats = await conn.request(m.Stats(), timeout=5)
            assert stats.bad_requests == 8  # the refusals above; one-way junk is only logged
        async with transport.open_connection(running.address, TOKEN, name="hostile") as conn:
            for junk, says in [(("hello",), "does not handle messages of type tuple"),
                               (m.Write("cid", [], []), "does not handle messages of type Write")]:
                with pytest.raises(transport.RemoteError) as info:
                    await conn.request(junk, timeout=5)
                assert isinstance(info.value.remote_exception, gcs.BadRequest)
                assert says in str(info.value.remote_exception)
            with pytest.raises(transport.RemoteError, match="no shard 7"):
                await conn.request(m.Seeded(7, "nobody"), timeout=5)
            assert isinstance(await conn.request(m.GetLayout(), timeout=5), m.Layout)
        # Nothing was restarted, and the shard serves on.
        assert {s.name: s.pid for s in running.replicas()} == pids
        await client.put("kv", "after", 2)
        assert [await client.get("kv", k) for k in ("before", "after")] == [1, 2]


async def test_unreachable_gcs_gives_gcs_unavailable(nursery) -> None:
    service_scope = trio.CancelScope()
    stopped = trio.Event()

    async def run_service(task_status: trio.TaskStatus[str]) -> None:
        try:
            with service_scope:
                async with trio.open_nursery() as inner:
                    task_status.started((await start_gcs(inner, gcs.GcsConfig())).address)
        finally:
            stopped.set()

    address = await nursery.start(run_service)
    async with gcs.open_client(address, TOKEN, timeout=0.5) as c:
        await c.put("kv", "k", 1)
        service_scope.cancel()  # the supervisor stops its children in order
        with trio.fail_after(10):
            await stopped.wait()
        with pytest.raises(gcs.GcsUnavailable, match="did not answer within 0.5s"):
            await c.get("kv", "other")
    with pytest.raises(gcs.GcsUnavailable, match="cannot reach the GCS coordinator"):
        async with gcs.open_client(address, TOKEN, timeout=0.3):
            pass


async def test_replica_processes_import_our_gcs_whatever_the_working_directory(
        nursery, tmp_path, monkeypatch) -> None:
    # A folder named gcs in the working directory must not shadow the package in the
    # replica processes (`python -m` puts the working directory first on sys.path).
    (tmp_path / "gcs").mkdir()
    (tmp_path / "gcs" / "__init__.py").write_text("")
    (tmp_path / "gcs" / "_replica_main.py").write_text("raise SystemExit('the wrong gcs')\n")
    monkeypatch.chdir(tmp_path)
    from actorcore.kernel import Supervisor

    from .test_gcs_support import kernel_specs

    plan = gcs.plan(gcs.GcsConfig(shards=1, replicas=1, processes=True), TOKEN)
    await nursery.start(Supervisor("node", [kernel_specs(plan.tree)]).run)
    address = await plan.wait_ready(15)
    async with gcs.open_client(address, TOKEN, timeout=10) as client:
        await client.put("kv", "k", 1)
        assert await client.get("kv", "k") == 1


def test_plan_describes_the_tree() -> None:
    p = gcs.plan(gcs.GcsConfig(shards=2, replicas=3), TOKEN)
    tree = p.tree
    assert tree.name == "gcs" and tree.strategy == "one_for_one"
    assert [c.name for c in tree.children] == ["coordinator", "shard_0", "shard_1",
                                               "replica_spares"]
    assert [r.name for r in tree.children[1].children] == ["replica_0", "replica_1", "replica_2"]
    assert {r.kind for r in tree.children[2].children} == {"gcs_replica"}
    assert tree.children[3].kind == "gcs_spares"
    # Replicas in the node's process have no process to start ahead.
    in_process = gcs.plan(gcs.GcsConfig(shards=1, replicas=1), TOKEN).tree
    assert [c.name for c in in_process.children] == ["coordinator", "shard_0"]
    no_spares = gcs.plan(gcs.GcsConfig(replicas=3, spare_replicas=0), TOKEN).tree
    assert [c.name for c in no_spares.children] == ["coordinator", "shard_0"]
    with pytest.raises(ValueError, match="spare_replicas must be an int >= 0, got -1"):
        gcs.GcsConfig(spare_replicas=-1)
    with pytest.raises(ValueError, match="shards must be an int >= 1, got 0"):
        gcs.GcsConfig(shards=0)
