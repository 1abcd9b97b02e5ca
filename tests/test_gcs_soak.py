"""Soak: repeated SIGKILLs of random replicas (any role, learners too) under load."""

from __future__ import annotations

import os
import random
import signal

import pytest
import trio

import gcs
from actorcore.kernel import ChildNotRunning, Supervisor

from .test_gcs_support import TOKEN, kernel_specs


async def soak(nursery: trio.Nursery, *, shards: int, kills: int, seed: int,
               coordinator_crashes: bool = False) -> None:
    rng = random.Random(seed)
    plan = gcs.plan(gcs.GcsConfig(shards=shards, replicas=3), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    coordinator = plan.coordinator
    assert coordinator is not None
    keys = [f"s{i}" for i in range(12)]
    acked: dict[str, int] = dict.fromkeys(keys, -1)
    backwards: list[tuple[str, int, int]] = []
    events: dict[str, list[int]] = {k: [] for k in keys}
    writing = True
    killed: list[str] = []
    removals: list[tuple[str, str]] = []  # of coordinator incarnations that crashed
    crashes = 0
    async with gcs.open_client(plan.address, TOKEN, timeout=30) as writer, \
            gcs.open_client(plan.address, TOKEN, timeout=30) as reader:

        async def write(key: str) -> None:
            i = 0
            while writing:
                await writer.put("kv", key, i)
                acked[key] = i
                i += 1

        async def read(key: str) -> None:
            last = -1
            while writing:
                value = await reader.get("kv", key, -1)
                if value < last:
                    backwards.append((key, last, value))
                last = value

        async with reader.subscribe("kv", prefix="s") as sub:
            progress = [trio.Event()]

            async def consume() -> None:
                async for event in sub:
                    events[event.key].append(event.value)
                    progress[0].set()

            async with trio.open_nursery() as inner:
                inner.start_soon(consume)
                async with trio.open_nursery() as load:
                    for key in keys:
                        load.start_soon(write, key)
                        load.start_soon(read, key)
                    for _ in range(kills):
                        await trio.sleep(rng.uniform(0.05, 0.4))
                        shard = rng.randrange(shards)
                        if coordinator_crashes and rng.random() < 0.4:
                            # crash the coordinator, and maybe kill a replica while
                            # it is down (before the new one recovers)
                            removals.extend(coordinator.removals)
                            cfg = coordinator.chain(shard)
                            gcs_sup = root.find("gcs")
                            gcs_sup.crash_child("coordinator")
                            crashes += 1
                            if len(cfg.chain) == 3 and cfg.learner is None and rng.random() < 0.5:
                                victim = rng.choice(cfg.chain)
                                service = next(root.find(f"gcs/shard_{shard}/replica_{j}")
                                               for j in range(3)
                                               if root.find(f"gcs/shard_{shard}/replica_{j}").name == victim)
                                os.kill(service.pid, signal.SIGKILL)
                                killed.append(victim)
                            await gcs_sup.wait_running("coordinator", restarts=crashes, timeout=20)
                            coordinator = plan.coordinator
                            assert coordinator is not None
                            await coordinator.wait_recovered(20)
                            continue
                        cfg = coordinator.chain(shard)
                        names = [*cfg.chain, *([cfg.learner] if cfg.learner else [])]
                        if len(cfg.chain) < 2:
                            names = names[len(cfg.chain):]  # keep one member: R-1 failures
                        if not names:
                            continue
                        victim = rng.choice(names)
                        for j in range(3):
                            try:
                                service = root.find(f"gcs/shard_{shard}/replica_{j}")
                            except ChildNotRunning:
                                continue  # being restarted
                            if service.name == victim and service.pid:
                                os.kill(service.pid, signal.SIGKILL)
                                killed.append(victim)
                                # let the coordinator see it before choosing the next
                                # victim, so that never more than R-1 members are down
                                with trio.fail_after(10):
                                    await plan.wait_removed(victim)
                    await coordinator.wait_ready(30)
                    await trio.sleep(0.2)
                    writing = False
                    # only our kills removed replicas (no false suspicion under load)
                    stats = coordinator.statistics()
                    removals.extend(coordinator.removals)
                    assert [r for r in removals if r[0] not in killed] == []
                    if not crashes:
                        assert stats.removed_total == len(killed)
                for key in keys:
                    assert await reader.get("kv", key) == acked[key]
                with trio.fail_after(20):
                    while any(not events[k] or events[k][-1] != acked[k] for k in keys):
                        progress[0] = trio.Event()
                        await progress[0].wait()
                inner.cancel_scope.cancel()
    assert backwards == []
    for key in keys:
        values = events[key]
        assert values == list(range(values[0], values[0] + len(values))), key
    assert min(acked.values()) > 10


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
async def test_soak_random_kills(nursery, seed: int) -> None:
    await soak(nursery, shards=2, kills=8, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
async def test_soak_random_kills_and_coordinator_crashes(nursery, seed: int) -> None:
    await soak(nursery, shards=2, kills=10, seed=seed, coordinator_crashes=True)
