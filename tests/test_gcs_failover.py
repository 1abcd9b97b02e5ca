"""Chain replication under SIGKILL: real replica processes supervised by the real kernel."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
import trio

import gcs
from actorcore.kernel import Supervisor

from .test_gcs_support import TOKEN, kernel_specs, replica_stats


@pytest.fixture
async def tree(nursery):
    plan = gcs.plan(gcs.GcsConfig(shards=1, replicas=3), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    return plan, root


def _slot(plan: gcs.GcsPlan, root: Supervisor, replica_name: str) -> tuple[str, gcs.ReplicaService]:
    for j in range(plan.config.replicas):
        service = root.find(f"gcs/shard_0/replica_{j}")
        if service.name == replica_name:
            return f"replica_{j}", service
    raise AssertionError(f"no slot runs {replica_name}")


async def _stats(address: str) -> gcs.ReplicaStatistics:
    return await replica_stats(address)


@pytest.mark.parametrize("victim", [0, 1, 2], ids=["head", "middle", "tail"])
async def test_sigkill_a_replica_under_load(tree, victim: int) -> None:
    plan, root = tree
    coordinator = plan.coordinator
    assert coordinator is not None
    acked: dict[str, int] = {}
    backwards: list[tuple[str, int, int]] = []
    writing = True

    async with gcs.open_client(plan.address, TOKEN, timeout=20) as writer, \
            gcs.open_client(plan.address, TOKEN, timeout=20) as reader:

        written = [trio.Event()]

        async def write(key: str) -> None:
            i = 0
            while writing:
                await writer.put("kv", key, i)  # unique, increasing values per key
                acked[key] = i
                written[0].set()
                i += 1

        async def every_key_acked(at_least: dict[str, int]) -> None:
            """Wait until each key's writes were acked up to ``at_least[key]``: the
            load is measured in writes, not seconds (a loaded machine makes few)."""
            with trio.fail_after(60):
                while any(acked.get(k, -1) < n for k, n in at_least.items()):
                    written[0] = trio.Event()
                    await written[0].wait()

        async def read(key: str) -> None:
            last = -1
            while writing:
                value = await reader.get("kv", key, -1)
                if value < last:
                    backwards.append((key, last, value))
                last = value

        keys = [f"w{i}" for i in range(8)]
        events: dict[str, list[int]] = {k: [] for k in keys}
        seqs: list[int] = []
        async with writer.subscribe("kv", prefix="w") as sub:

            progress = [trio.Event()]

            async def consume() -> None:
                async for event in sub:
                    events[event.key].append(event.value)
                    seqs.append(event.seq)
                    progress[0].set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                async with trio.open_nursery() as load:
                    for key in keys:
                        load.start_soon(write, key)
                        load.start_soon(read, key)
                    await every_key_acked({k: 10 for k in keys})
                    name = coordinator.chain(0).chain[victim]
                    slot, service = _slot(plan, root, name)
                    old_pid = service.pid
                    assert old_pid is not None and old_pid != os.getpid()
                    os.kill(old_pid, signal.SIGKILL)
                    shard_sup = root.find("gcs/shard_0")
                    await shard_sup.wait_running(slot, restarts=1, timeout=20)
                    await coordinator.wait_ready(20)
                    await every_key_acked({k: acked.get(k, -1) + 10 for k in keys})
                    writing = False
                # every acknowledged write is there, and reads never went backwards
                for key in keys:
                    assert await reader.get("kv", key) == acked[key]
                assert backwards == []
                # every update exactly once, in order, across the failover
                with trio.fail_after(10):
                    while any(not events[k] or events[k][-1] != acked[k] for k in keys):
                        progress[0] = trio.Event()
                        await progress[0].wait()
                nursery.cancel_scope.cancel()
        for key in keys:
            values = events[key]
            assert values == list(range(values[0], values[0] + len(values))), key
        assert seqs == sorted(set(seqs))

        # the replacement joined by state transfer and holds the same state
        new_service = root.find(f"gcs/shard_0/{slot}")
        assert new_service.pid != old_pid and new_service.name != name
        cfg = coordinator.chain(0)
        assert len(cfg.chain) == 3 and new_service.name in cfg.chain and name not in cfg.chain
        await writer.put("kv", "barrier", 1)
        stats = [await _stats(cfg.addresses[n]) for n in cfg.chain]
        joined = stats[cfg.chain.index(new_service.name)]
        assert joined.snapshots_received >= 1 or joined.state.applied == stats[-1].state.applied
        with trio.fail_after(5):
            while len({(s.state.applied, s.state.keys) for s in stats}) != 1:
                stats = [await _stats(cfg.addresses[n]) for n in cfg.chain]
        snapshot = root.snapshot()
        gcs_node = snapshot["children"][0]
        assert gcs_node["name"] == "gcs"
        shard = gcs_node["children"][1]
        assert shard["name"] == "shard_0"
        replica = next(c for c in shard["children"] if c["name"] == slot)
        assert replica["kind"] == "gcs_replica" and replica["pid"] == new_service.pid
        assert replica["restarts"] == 1


async def test_subscriber_resumes_without_gap_when_its_tail_dies(tree) -> None:
    plan, root = tree
    coordinator = plan.coordinator
    assert coordinator is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        async with c.subscribe("tasks", key="t") as sub:
            for i in range(50):
                await c.put("tasks", "t", i)
            first = [(await sub.next(5)).value for _ in range(50)]
            tail = coordinator.chain(0).chain[-1]
            _, service = _slot(plan, root, tail)
            os.kill(service.pid, signal.SIGKILL)
            for i in range(50, 100):
                await c.put("tasks", "t", i)
            rest = [(await sub.next(10)).value for _ in range(50)]
            assert first + rest == list(range(100))
            assert sub.resubscribes >= 1
            with pytest.raises(TimeoutError):
                await sub.next(0.2)


async def test_middle_replica_death_is_repaired_over_the_standby_link(tree) -> None:
    # The head holds a link to the tail (its successor's successor) before anything
    # fails; when the middle dies it streams to the tail over that link.
    plan, root = tree
    coordinator = plan.coordinator
    assert coordinator is not None
    head, middle, tail = coordinator.chain(0).chain
    head_address = coordinator.chain(0).addresses[head]
    with trio.fail_after(10):
        while (await _stats(head_address)).standby_link != tail:
            pass  # (another process's state: each ask is a round trip)
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        await c.put("kv", "before", 1)
        _, service = _slot(plan, root, middle)
        os.kill(service.pid, signal.SIGKILL)
        await plan.wait_removed(middle)
        await c.put("kv", "after", 2)
        stats = await _stats(head_address)
        assert stats.standby_links_taken == 1
        assert await c.get("kv", "before") == 1 and await c.get("kv", "after") == 2


async def test_a_writing_client_keeps_a_link_to_the_next_head(tree) -> None:
    # Opened on the first write to the shard, so that a head failover's resend
    # finds the link to the new head open.
    plan, root = tree
    coordinator = plan.coordinator
    assert coordinator is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        assert c.layout.shards[0].standby == coordinator.chain(0).addresses[
            coordinator.chain(0).chain[1]]
        await c.put("kv", "k", 1)
        with trio.fail_after(10):
            while c.statistics().connections < 2:  # the head's and the standby's
                await trio.lowlevel.checkpoint()  # (a task of the client's dials it)
        head = coordinator.chain(0).chain[0]
        _, service = _slot(plan, root, head)
        os.kill(service.pid, signal.SIGKILL)
        await c.put("kv", "k", 2)
        assert await c.get("kv", "k") == 2


async def test_a_hung_replica_is_cut_out_by_heartbeat_and_replaced(nursery) -> None:
    plan = gcs.plan(gcs.GcsConfig(shards=1, replicas=2, heartbeat_interval=0.1,
                                  heartbeat_timeout=0.5), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    coordinator = plan.coordinator
    assert coordinator is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        await c.put("kv", "before", 1)
        tail = coordinator.chain(0).chain[-1]
        slot, service = _slot(plan, root, tail)
        os.kill(service.pid, signal.SIGSTOP)  # alive, connected, silent
        try:
            await c.put("kv", "during", 2)  # stalls until the heartbeat cuts it out
            assert tail not in coordinator.chain(0).chain
        finally:
            with contextlib.suppress(ProcessLookupError):  # killed and reaped by now
                os.kill(service.pid, signal.SIGCONT)
        await root.find("gcs/shard_0").wait_running(slot, restarts=1, timeout=20)
        await coordinator.wait_ready(20)
        assert await c.get("kv", "before") == 1 and await c.get("kv", "during") == 2


async def test_replacement_gets_a_snapshot_when_the_log_was_trimmed(nursery) -> None:
    # A replay buffer of 10: the tail's log no longer reaches back to seq 1, so the
    # restarted replica can only catch up by state transfer (a snapshot), then updates.
    plan = gcs.plan(gcs.GcsConfig(shards=1, replicas=2, replay_buffer=10), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    coordinator = plan.coordinator
    assert coordinator is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        async with trio.open_nursery() as load:
            for w in range(10):
                async def fill(w: int = w) -> None:
                    for i in range(50):
                        await c.put("objects", f"o{w}-{i}", {"size": i})
                load.start_soon(fill)
        head = coordinator.chain(0).chain[0]
        slot, service = _slot(plan, root, head)
        os.kill(service.pid, signal.SIGKILL)
        await root.find("gcs/shard_0").wait_running(slot, restarts=1, timeout=20)
        await coordinator.wait_ready(20)
        await c.put("objects", "after", {"size": 0})  # flows through the new tail
        cfg = coordinator.chain(0)
        new = root.find(f"gcs/shard_0/{slot}").name
        assert cfg.chain[-1] == new
        stats = await _stats(cfg.addresses[new])
        assert stats.snapshots_received == 1
        assert stats.state.keys == 501 and stats.role == "tail"
        assert await c.get("objects", "o9-49") == {"size": 49}
        assert len(await c.scan("objects", "o")) == 500


async def test_a_snapshot_goes_in_parts_while_the_tail_commits(nursery) -> None:
    # 3,000 keys and as many dedup records: a snapshot of several `Transfer` parts
    # (2,000 entries each), sent while writers go on. The tail commits between the
    # parts and no update may overtake the snapshot on the learner's link. With a
    # replay buffer of 10 the writers commit more than the tail's log keeps while
    # the parts go out: the log holds what the learner still needs
    # (`ShardState.hold_log`), so one snapshot is enough (without the hold the
    # learner was sent one snapshot after another, 3-6 of them).
    plan = gcs.plan(gcs.GcsConfig(shards=1, replicas=2, replay_buffer=10), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    coordinator = plan.coordinator
    assert coordinator is not None
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        await c.put_many("objects", [(f"o{i}", i) for i in range(3000)])
        writing = True
        written: dict[str, int] = {}

        async def write(w: int) -> None:
            i = 0
            while writing:
                await c.put("kv", f"w{w}", i)
                written[f"w{w}"] = i
                i += 1

        async with trio.open_nursery() as load:
            for w in range(4):
                load.start_soon(write, w)
            head = coordinator.chain(0).chain[0]
            slot, service = _slot(plan, root, head)
            os.kill(service.pid, signal.SIGKILL)
            await root.find("gcs/shard_0").wait_running(slot, restarts=1, timeout=20)
            await coordinator.wait_ready(20)
            writing = False
        await c.put("kv", "after", 1)  # flows through the new tail
        cfg = coordinator.chain(0)
        new = root.find(f"gcs/shard_0/{slot}").name
        assert cfg.chain[-1] == new
        stats = await _stats(cfg.addresses[new])
        assert stats.snapshots_received == 1 and stats.role == "tail"
        assert stats.state.keys == 3000 + 4 + 1
        assert stats.state.dedup_entries == stats.state.applied  # one per write
        assert await c.get("objects", "o2999") == 2999
        for key, value in written.items():
            assert await c.get("kv", key) == value


async def test_a_replacement_starts_from_a_spare_process(tree) -> None:
    plan, root = tree
    coordinator = plan.coordinator
    assert coordinator is not None
    with trio.fail_after(60):
        await plan.spares.wait_ready()
    spare_pids = set(_descendants(os.getpid())) - {
        root.find(f"gcs/shard_0/replica_{j}").pid for j in range(3)}
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        await c.put("kv", "before", 1)
        tail = coordinator.chain(0).chain[-1]
        slot, service = _slot(plan, root, tail)
        os.kill(service.pid, signal.SIGKILL)
        await root.find("gcs/shard_0").wait_running(slot, restarts=1, timeout=20)
        await coordinator.wait_ready(20)
        replacement = root.find(f"gcs/shard_0/{slot}")
        assert replacement.pid in spare_pids  # started before the kill
        # Every replica process froze its imports at its start (a spare too): its
        # first full collection no longer walks them while it is in the chain.
        cfg = coordinator.chain(0)
        for name in cfg.chain:
            assert (await _stats(cfg.addresses[name])).frozen_objects > 10_000
        assert plan.spares.statistics().taken == 1
        assert await c.get("kv", "before") == 1
        await c.put("kv", "after", 2)
        assert await c.get("kv", "after") == 2
        with trio.fail_after(60):
            await plan.spares.wait_ready()  # the keeper started the next one
        assert plan.spares.statistics().started == 2


def _descendants(pid: int) -> list[int]:
    """The children of process ``pid`` (Linux: /proc)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found += [int(p) for p in children.read().split()]
    return found


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gcs.__file__)))
_NODE_SCRIPT = """
import sys, trio
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import gcs
from test_gcs_support import start_gcs

async def main():
    async with trio.open_nursery() as nursery:
        running = await start_gcs(nursery, gcs.GcsConfig(shards=1, replicas=2), b"t")
        await running.plan.spares.wait_ready()
        print(" ".join(str(s.pid) for s in running.replicas()), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_replica_processes_exit_when_their_node_process_is_killed() -> None:
    import sys

    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _NODE_SCRIPT.format(root=_ROOT, tests=os.path.dirname(__file__))],
        stdout=-1)
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2
        pids = _descendants(proc.pid)  # the replicas and the spare
        assert len(pids) == 3
        proc.kill()  # SIGKILL: no cleanup code runs in the node process
        await proc.wait()
        for _ in range(500):  # polling other processes' liveness: no event to wait on
            if not any(_alive(pid) for pid in pids):
                break
            await trio.sleep(0.02)
        assert not any(_alive(pid) for pid in pids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (its parent, the killed node, can no longer reap it)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
