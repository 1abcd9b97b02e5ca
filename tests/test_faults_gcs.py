"""Link faults inside GCS replica processes (``gcs_replicas >= 2``): the harness
installs its rules there too, so the chain links between replicas, and the replicas'
side of the nodes' links to them, can be cut; ``heal_all`` reaches them.

A real cluster: a head whose GCS shard is a chain of three replica processes. The
test writes through a GCS client of its own (the cluster's token), so every write's
fate is visible: a conditional write executed twice would answer False the second
time, and a subscription sees each committed update once."""

from __future__ import annotations

import pytest
import trio

import actorcore
import gcs
import transport
from actorcore.testing import Cluster, faults

from .cluster_support import until

_until = until

#: Conditional writes made while the chain is cut.
N_WRITES = 40
PREFIX = "faults-gcs-test/"


@pytest.fixture(scope="module")
def chain_of_three():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_replicas": 3})
    try:
        c.connect()
        yield c
    finally:
        faults.heal_all()
        actorcore.shutdown()
        c.shutdown()


@actorcore.remote
def plus_one(x: int) -> int:
    return x + 1


def _gcs(cluster) -> dict[str, dict]:
    """The head's GCS entries of the tree by path below ``gcs/``."""
    head = cluster.head_node.node_id[:8]
    return {p[len(f"node:{head}/"):]: e for p, e in faults.Faults().paths()
            if p.startswith(f"node:{head}/gcs/")}


def _slots(cluster) -> dict[str, dict]:
    """Replica slot path (``gcs/shard_0/replica_1``) -> its tree entry."""
    return {p: e for p, e in _gcs(cluster).items() if e.get("kind") == "gcs_replica"}


def _stats(address: str, token: bytes) -> gcs.ReplicaStatistics:
    async def ask() -> gcs.ReplicaStatistics:
        async with transport.open_connection(address, token, name="test-gcs-probe") as conn:
            return await conn.request(gcs.messages.Stats(), timeout=10)

    return trio.run(ask)


def _whole(cluster, token: bytes) -> list[int] | None:
    """Each replica's applied sequence number once the chain is whole again (three
    running members: a head, a middle and a tail) and they agree; else None."""
    slots = _slots(cluster)
    if sorted(e.get("role") for e in slots.values()) != ["head", "middle", "tail"]:
        return None
    if any(e.get("state") != "running" or not e.get("address") for e in slots.values()):
        return None
    try:
        applied = [_stats(e["address"], token).state.applied for e in slots.values()]
    except (transport.TransportError, OSError):
        return None  # a replica just restarted: ask again
    return applied if len(set(applied)) == 1 else None


async def _write_under(address: str, token: bytes) -> tuple[list[bool], dict[str, int]]:
    """N conditional writes, concurrently; their answers, and how many committed
    updates a subscription saw per key."""
    seen: dict[str, int] = {}
    async with gcs.open_client(address, token, name="test-gcs-writer", timeout=60) as client:
        async with client.subscribe("kv", prefix=PREFIX) as sub:
            answers: list[bool] = [False] * N_WRITES

            async def write(i: int) -> None:
                answers[i] = await client.put_if_absent("kv", f"{PREFIX}{i:03d}", i)

            async with trio.open_nursery() as nursery:
                for i in range(N_WRITES):
                    nursery.start_soon(write, i)
            # Every write is committed: the subscription sees each one (and a write
            # applied twice would be seen twice: it would be two updates).
            with trio.fail_after(60):
                async for event in sub:
                    seen[event.key] = seen.get(event.key, 0) + 1
                    if len(seen) == N_WRITES:
                        break
    return answers, seen


async def _read_back(address: str, token: bytes) -> list[tuple[str, int]]:
    async with gcs.open_client(address, token, name="test-gcs-reader", timeout=60) as client:
        return [(k, v) for k, v in await client.scan("kv", PREFIX)]


def test_a_partition_inside_the_chain_under_writes_heals(chain_of_three):
    cluster = chain_of_three
    token = cluster.head_node.process.token
    coordinator = _gcs(cluster)["gcs/coordinator"]["address"]
    _until(lambda: _whole(cluster, token), what="the chain of three replicas formed")
    by_role = {e["role"]: p for p, e in _slots(cluster).items()}
    head, successor = by_role["head"], by_role["middle"]
    restarts = _slots(cluster)[successor]["restarts"]

    # Installed in the node and in each of the three replica processes (the chain
    # link is the replicas' own: no rule in the node could cut it).
    with faults.partition(head, successor) as cut:
        assert "3 GCS replica process(es)" in faults.record()[-1].detail, faults.record()[-1]
        answers, seen = trio.run(_write_under, coordinator, token)
    assert cut.healed
    assert answers == [True] * N_WRITES  # none executed twice (a second one answers False)
    assert seen == {f"{PREFIX}{i:03d}": 1 for i in range(N_WRITES)}
    # The head could not reach its successor: it reported it, the coordinator cut it
    # out of the chain, and its slot restarted a replica that joined by state transfer
    # (after the cut: the writes commit on the chain of two, before that restart).
    _until(lambda: _slots(cluster)[successor]["restarts"] > restarts,
           what="the cut replica's slot restarted it")
    applied = _until(lambda: _whole(cluster, token), what="the chain whole again")
    assert trio.run(_read_back, coordinator, token) == [
        (f"{PREFIX}{i:03d}", i) for i in range(N_WRITES)]
    assert len(applied) == 3
    assert actorcore.get(plus_one.remote(1), timeout=30) == 2


def test_heal_all_reaches_the_replica_processes(chain_of_three):
    cluster = chain_of_three
    token = cluster.head_node.process.token
    _until(lambda: _whole(cluster, token), what="the chain whole")
    names = {f"gcs/{e['replica']}" for e in _slots(cluster).values()}
    # The replicas' side of their links to the head node: rules in their processes.
    head = f"node:{cluster.head_node.node_id[:8]}"
    faults.delay(0.01, a="gcs/shard_0/replica_*", b=head, both=False)
    done = faults.heal_all()
    assert names <= set(done), (names, done)
    assert cluster.head_node.node_id in done
    assert all(done[name] is None for name in names)  # cleared
    assert transport.faults.rules() == {}
    assert actorcore.get(plus_one.remote(2), timeout=30) == 3


def test_a_replica_started_later_gets_the_rules_in_force(chain_of_three):
    cluster = chain_of_three
    token = cluster.head_node.process.token
    _until(lambda: _whole(cluster, token), what="the chain whole")
    slot = "gcs/shard_0/replica_2"
    old = _slots(cluster)[slot]
    # A rule that matches no link (nothing is named so): harmless, and countable.
    fault = faults.delay(0.001, a="gcs/shard_0/replica_*", b="gcs/nothing-*", both=False)
    faults.kill(slot)
    new = _until(lambda: (e := _slots(cluster)[slot])["state"] == "running"
                 and e.get("replica") not in (None, old["replica"]) and e,
                 what="the replica slot restarted")
    done = fault.heal()
    # The new process had the rule from its start (its launch parameters): it
    # removed one rule, as the other two did.
    assert done[f"gcs/{new['replica']}"] == 1, done
    assert sorted(v for k, v in done.items() if k.startswith("gcs/")) == [1, 1, 1], done
    _until(lambda: _whole(cluster, token), what="the chain whole again")


def test_bad_replica_slot_names_are_refused(chain_of_three):
    with pytest.raises(ValueError, match="'gcs/shard_x/replica_1'.*gcs/shard_<i>/replica_<j>"):
        faults.partition("gcs/shard_x/replica_1", "gcs")
    assert faults.Faults().paths()  # the cluster answers
