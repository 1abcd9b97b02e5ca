"""Coordinator restart: real replica processes under the real kernel keep everything.

The coordinator (chain master) is crashed with the kernel's fault hook while
concurrent writers, readers and a subscriber run; the replicas re-register and the
restarted coordinator rebuilds the chains from their reports (`gcs/_coordinator.py`,
"Restart"). Nothing acknowledged is lost, reads never go backwards, the subscriber
sees every update once and in order, and no replica process is restarted.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import attrs
import pytest
import trio

import gcs
from actorcore.kernel import ChildSpec, Supervisor

from .cluster_support import HANG_GUARD
from .test_gcs_support import TOKEN, kernel_specs, replica_stats


async def _start(nursery: trio.Nursery, replicas: int, **options: Any) -> tuple[gcs.GcsPlan, Supervisor]:
    # The coordinator's probe of hung replicas (``heartbeat_timeout``, 3 s) fired
    # on a loaded machine, cutting a slow but live replica out of its chain: these
    # tests count on every replica staying. A killed replica is seen at once (its
    # link breaks), and the one test that hangs one says so.
    options.setdefault("heartbeat_timeout", 60.0)
    plan = gcs.plan(gcs.GcsConfig(shards=2, replicas=replicas, **options), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    return plan, root


def _pids(root: Supervisor, plan: gcs.GcsPlan) -> dict[str, int | None]:
    return {f"{s}/{j}": root.find(f"gcs/shard_{s}/replica_{j}").pid
            for s in range(plan.config.shards) for j in range(plan.config.replicas)}


async def _stats(address: str) -> gcs.ReplicaStatistics:
    return await replica_stats(address)


class _Load:
    """Writers (unique increasing values per key), readers and one subscriber."""

    def __init__(self, client: gcs.GcsClient, keys: int = 8) -> None:
        self.client = client
        self.keys = [f"w{i}" for i in range(keys)]
        self.acked = {k: -1 for k in self.keys}
        self.backwards: list[tuple[str, int, int]] = []
        self.events: dict[str, list[int]] = {k: [] for k in self.keys}
        self.seqs: dict[int, list[int]] = {}
        self.writing = True
        self.worst_put = 0.0
        self.progress = trio.Event()

    async def write(self, key: str) -> None:
        i = 0
        while self.writing:
            start = trio.current_time()
            await self.client.put("kv", key, i)
            self.worst_put = max(self.worst_put, trio.current_time() - start)
            self.acked[key] = i
            i += 1

    async def read(self, key: str) -> None:
        last = -1
        while self.writing:
            value = await self.client.get("kv", key, -1)
            if value < last:
                self.backwards.append((key, last, value))
            last = value

    async def consume(self, sub: gcs.Subscription) -> None:
        async for event in sub:
            self.events[event.key].append(event.value)
            self.seqs.setdefault(event.shard, []).append(event.seq)
            self.progress.set()

    async def run(self, nursery: trio.Nursery) -> None:
        for key in self.keys:
            nursery.start_soon(self.write, key)
            nursery.start_soon(self.read, key)

    async def check(self) -> None:
        for key in self.keys:
            assert await self.client.get("kv", key) == self.acked[key], key
        assert self.backwards == []
        with trio.fail_after(10):
            while any(not self.events[k] or self.events[k][-1] != self.acked[k]
                      for k in self.keys):
                self.progress = trio.Event()
                await self.progress.wait()
        for key in self.keys:
            values = self.events[key]
            assert values == list(range(values[0], values[0] + len(values))), key
        for seqs in self.seqs.values():
            assert seqs == sorted(set(seqs))
        assert sum(self.acked.values()) > 50


@pytest.mark.parametrize("replicas", [2, 3])
async def test_coordinator_crash_under_load_loses_nothing(nursery, replicas: int) -> None:
    plan, root = await _start(nursery, replicas)
    pids = _pids(root, plan)
    old = plan.coordinator
    assert old is not None
    chains = [old.chain(s) for s in range(2)]
    gcs_sup = root.find("gcs")
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as client:
        load = _Load(client)
        async with client.subscribe("kv", prefix="w") as sub, trio.open_nursery() as inner:
            inner.start_soon(load.consume, sub)
            async with trio.open_nursery() as writers:
                await load.run(writers)
                while sum(load.acked.values()) < 40:
                    load.progress = trio.Event()
                    await load.progress.wait()
                for restarts in (1, 2):  # twice: the second incarnation recovers too
                    gcs_sup.crash_child("coordinator")
                    await gcs_sup.wait_running("coordinator", restarts=restarts, timeout=20)
                    assert plan.coordinator is not old
                    await plan.coordinator.wait_recovered(20)
                    old = plan.coordinator
                    before = sum(load.acked.values())
                    while sum(load.acked.values()) < before + 40:
                        load.progress = trio.Event()
                        await load.progress.wait()
                load.writing = False
            await load.check()
            inner.cancel_scope.cancel()
        assert sub.resubscribes == 0  # the tails never changed: nothing to resume
        assert client.statistics().coordinator_reconnects >= 2

    # the same replicas, in the same chains, under a higher epoch
    coordinator = plan.coordinator
    assert coordinator is not None
    for s in range(2):
        cfg = coordinator.chain(s)
        assert cfg.chain == chains[s].chain and cfg.epoch > chains[s].epoch
        assert coordinator.recovery["shards"][s]["registered"] == replicas
    assert coordinator.removed_total == 0
    assert _pids(root, plan) == pids
    snapshot = root.snapshot()["children"][0]
    assert snapshot["name"] == "gcs" and snapshot["restarts"] == 0
    coordinator_node, *shards = snapshot["children"]
    assert coordinator_node["name"] == "coordinator" and coordinator_node["restarts"] == 2
    assert coordinator_node["recovering"] is False
    for shard in shards:
        assert shard["restarts"] == 0
        for replica in shard["children"]:
            assert replica["restarts"] == 0 and replica["pid"] != os.getpid()
            assert replica["role"] != "joining"


@pytest.mark.parametrize("victim", ["head", "tail"])
async def test_replica_killed_while_the_coordinator_is_down_is_repaired(nursery, victim: str) -> None:
    plan, root = await _start(nursery, 3)
    gcs_sup = root.find("gcs")
    coordinator_spec = plan.tree.children[0]
    assert coordinator_spec.factory is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=30) as client:
        for i in range(100):
            await client.put("kv", f"k{i}", i)
        async with client.subscribe("kv", key="late") as sub:
            await gcs_sup.terminate_child("coordinator")  # down until we start it again
            cfg = plan.coordinator.chain(0)
            name = cfg.chain[0] if victim == "head" else cfg.chain[-1]
            slot = next(f"replica_{j}" for j in range(3)
                        if root.find(f"gcs/shard_0/replica_{j}").name == name)
            service = root.find(f"gcs/shard_0/{slot}")
            os.kill(service.pid, signal.SIGKILL)
            await service.process.wait()

            # A write to the broken chain waits (no coordinator to repair it) ...
            done = trio.Event()
            key = next(f"late{i}" for i in range(1000) if gcs.shard_of(f"late{i}", 2) == 0)

            async def late_write() -> None:
                await client.put("kv", key, "v")
                await client.put("kv", "late", "seen")
                done.set()

            nursery.start_soon(late_write)
            # ... and goes through once the coordinator is back and repairs it.
            await gcs_sup.start_child(ChildSpec("coordinator", coordinator_spec.factory,
                                                kind="gcs_coordinator"))
            coordinator = plan.coordinator
            await coordinator.wait_recovered(20)
            with trio.fail_after(20):
                await done.wait()
            assert (await sub.next(10)).value == "seen"
            await root.find("gcs/shard_0").wait_running(slot, restarts=1, timeout=20)
            await plan.wait_ready(20)
        cfg = coordinator.chain(0)
        new = root.find(f"gcs/shard_0/{slot}").name
        assert name not in cfg.chain and new in cfg.chain and len(cfg.chain) == 3
        assert name in coordinator.dead
        assert [v for _, v in await client.scan("kv", "k")] == sorted(range(100), key=lambda i: f"k{i}")
        assert await client.get("kv", key) == "v"
        await client.put("kv", "barrier", 1)
        with trio.fail_after(10):
            while True:
                stats = [await _stats(cfg.addresses[n]) for n in cfg.chain]
                if len({(s.state.applied, s.state.keys) for s in stats}) == 1:
                    break
                await trio.sleep(0.05)  # replication to the new tail: no event to await here


async def test_a_stale_replica_view_is_told_to_leave(nursery) -> None:
    """A registrant that reports a chain the coordinator no longer has is removed
    (its log may hold updates numbered differently), and a fresh one joins."""
    plan, root = await _start(nursery, 2)
    coordinator = plan.coordinator
    assert coordinator is not None
    cfg = coordinator.chain(0)
    stale = gcs.Replica(plan.config, shard=0, token=TOKEN, coordinator=plan.address,
                        name="stale-one")
    stale.chain = attrs.evolve(cfg, epoch=cfg.epoch - 1, chain=(*cfg.chain, "stale-one"))
    stale.state.applied = 5
    with pytest.raises(gcs.ReplicaRemoved):
        with trio.fail_after(10):
            await stale.run()
    assert "stale-one" in coordinator.dead and coordinator.chain(0).chain == cfg.chain


async def test_clients_connecting_during_recovery_wait_for_the_rebuilt_layout(nursery) -> None:
    plan, root = await _start(nursery, 2, recovery_grace=1.0, heartbeat_timeout=3.0)
    gcs_sup = root.find("gcs")
    coordinator_spec = plan.tree.children[0]
    assert coordinator_spec.factory is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        await c.put("kv", "x", 1)
    await gcs_sup.terminate_child("coordinator")
    # Stop one replica: the restarted coordinator cannot hear from every slot, nor
    # every member of the chain, so shard 0 waits for the grace period.
    victim = root.find("gcs/shard_0/replica_0")
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        await gcs_sup.start_child(ChildSpec("coordinator", coordinator_spec.factory,
                                            kind="gcs_coordinator"))
        coordinator = plan.coordinator
        assert coordinator is not None
        async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
            # hello was answered only after recovery: the layout is complete
            assert coordinator.recovery.get("seconds", 0) >= 0.9
            assert all(s.head is not None for s in c.layout.shards)
            assert await c.get("kv", "x") == 1
            await c.put("kv", "y", 2)
        assert victim.name in coordinator.dead
    finally:
        try:
            os.kill(victim.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # the hung replica was killed by its service (declared dead) and replaced
    await root.find("gcs/shard_0").wait_running("replica_0", restarts=1, timeout=20)
    await plan.wait_ready(20)


async def test_coordinator_crash_during_the_first_start(nursery) -> None:
    """Crashed while the replicas are still registering and seeding: whatever was
    in flight (a seed reply, a "seeded" notice) is settled from the reports."""
    plan = gcs.plan(gcs.GcsConfig(shards=2, replicas=2), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_address(30)
    gcs_sup = root.find("gcs")
    gcs_sup.crash_child("coordinator")
    address = await plan.wait_ready(30)
    async with gcs.open_client(address, TOKEN, timeout=20) as c:
        for i in range(20):
            await c.put("kv", f"k{i}", i)
        assert len(await c.scan("kv")) == 20
    coordinator = plan.coordinator
    assert coordinator is not None and coordinator.recovery["recover"]
    assert all(len(coordinator.chain(s).chain) == 2 for s in range(2))


async def test_coordinator_crash_while_a_replacement_catches_up(nursery) -> None:
    """The learner's promotion request may die with the coordinator: the tail asks
    again under the recovered epoch, and the learner is appended as usual."""
    plan, root = await _start(nursery, 2, replay_buffer=50)
    coordinator = plan.coordinator
    assert coordinator is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        async with trio.open_nursery() as fill:
            for w in range(8):
                async def put_many(w: int = w) -> None:
                    for i in range(300):
                        await c.put("objects", f"o{w}-{i}", b"x" * 2000)
                fill.start_soon(put_many)
        tail = coordinator.chain(0).chain[-1]
        slot = next(f"replica_{j}" for j in range(2)
                    if root.find(f"gcs/shard_0/replica_{j}").name == tail)
        os.kill(root.find(f"gcs/shard_0/{slot}").pid, signal.SIGKILL)
        await coordinator.wait_until(lambda c: c.chain(0).learner is not None, 20)
        gcs_sup = root.find("gcs")
        gcs_sup.crash_child("coordinator")
        await gcs_sup.wait_running("coordinator", restarts=1, timeout=20)
        await plan.wait_ready(30)
        coordinator = plan.coordinator
        cfg = coordinator.chain(0)
        new = root.find(f"gcs/shard_0/{slot}").name
        assert cfg.chain[-1] == new and cfg.learner is None
        assert len(await c.scan("objects", "o")) == 2400
        await c.put("objects", "after", b"y")
        assert await c.get("objects", "after") == b"y"


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "in-memory"])
async def test_a_crash_of_the_whole_gcs_subtree(nursery, tmp_path, durable: bool) -> None:
    """Replicas restart with the subtree: a durable GCS recovers its state from the
    logs, an in-memory one starts empty (a documented limit). Either way the clients
    carry on: epochs stay above anything they saw, so the new chains win."""
    plan, root = await _start(nursery, 2, durable_dir=str(tmp_path) if durable else None)
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        for i in range(50):
            await c.put("kv", f"k{i}", i)
        epochs = [s.epoch for s in c.layout.shards]
        root.crash_child("gcs")
        await root.wait_running("gcs", restarts=1, timeout=20)
        await plan.wait_ready(30)
        await c.put("kv", "after", 1)  # through the new chain, same client
        assert await c.get("kv", "after") == 1
        assert all(s.epoch > e for s, e in zip(c.layout.shards, epochs, strict=True))
        rows = await c.scan("kv", "k")
        assert len(rows) == (50 if durable else 0)
        # the same history continues from the logs; an emptied shard starts a new one
        # (the client drops its "seen" sequence numbers instead of waiting for them)
        assert (c.statistics().shard_resets == 0) == durable


_USER_PROGRAM = """
import json, sys, time
import actorcore as ray
from actorcore.testing import faults
ray.init(num_cpus=1, gcs_shards=2, gcs_replicas={replicas}, log_to_driver=False)

@ray.remote
def f(x):
    return x + 1

@ray.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n

c = Counter.options(name="counter").remote()
assert ray.get(c.add.remote()) == 1

def walk(s):
    yield s
    for child in s.get("children", []):
        yield from walk(child)

def replicas():
    return sorted((s["pid"], s["restarts"]) for s in walk(ray.tree()) if s["kind"] == "gcs_replica")

before = replicas()
pending = [f.remote(i) for i in range(20)]
faults.crash("gcs/coordinator")
assert ray.get(pending, timeout=30) == [i + 1 for i in range(20)]
deadline = time.monotonic() + 30
while True:
    coord = next(s for s in walk(ray.tree()) if s["name"] == "coordinator")
    if coord["restarts"] == 1 and coord["state"] == "running" and not coord.get("recovering"):
        break
    assert time.monotonic() < deadline, coord
    time.sleep(0.02)
assert ray.get(ray.get_actor("counter").add.remote(), timeout=30) == 2
assert ray.get([f.remote(i) for i in range(5)], timeout=30) == [1, 2, 3, 4, 5]
d = Counter.options(name="other").remote()
assert ray.get(d.add.remote(), timeout=30) == 1
assert replicas() == before, (before, replicas())
print("OK", json.dumps(before))
ray.shutdown()
"""


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_coordinator_crash_is_invisible_to_a_user_program(replicas: int) -> None:
    import shutil
    import subprocess
    import sys
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(gcs.__file__)))
    tmpdir = tempfile.mkdtemp(prefix="ac")  # short: Unix socket paths are limited
    env = dict(os.environ, PYTHONPATH=root, ACTORCORE_TMPDIR=tmpdir)
    try:
        out = subprocess.run([sys.executable, "-c", _USER_PROGRAM.format(replicas=replicas)],
                             env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout
