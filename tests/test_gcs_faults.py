"""Lost, duplicated and delayed messages (transport fault injection, replicas in-process)."""

from __future__ import annotations

import pytest
import trio

import gcs
from transport import faults

from .test_gcs_support import (
    TOKEN,
    RunningGcs,
    applied_per_replica,
    start_gcs,
    start_in_process_chain,
)


@pytest.fixture
async def chain(nursery):
    yield await start_in_process_chain(nursery)
    faults.clear()


async def _settled(svc: RunningGcs) -> list[int]:
    """The replicas' applied sequence numbers once they agree (polled: other tasks'
    state, no event to wait on; bounded)."""
    for _ in range(500):
        applied = await applied_per_replica(svc)
        if len(set(applied)) == 1:
            break
        await trio.sleep(0.01)
    return applied


async def test_lost_replies_are_retried_and_applied_once(chain) -> None:
    faults.seed(7)
    async with gcs.open_client(chain.address, TOKEN, name="lossy", request_timeout=0.1) as c:
        before = (await applied_per_replica(chain))[0]
        with faults.injected(faults.drop(src="gcs/s*", dst="lossy", kind="reply", probability=0.3)):
            for i in range(20):
                await c.put("kv", "k", i)
        assert c.statistics().retries > 0
        assert await c.get("kv", "k") == 19
        # 20 writes, 20 updates: no retried write was applied twice
        assert await _settled(chain) == [before + 20] * 3


async def test_duplicated_and_delayed_messages_change_nothing(chain) -> None:
    async with gcs.open_client(chain.address, TOKEN, name="dup") as c:
        before = (await applied_per_replica(chain))[0]
        # A "duplicate" breaks the link right after its frame: the sender resends on
        # a new link, the receiver sees it twice. (Not every frame: a link that
        # breaks after each of its frames never carries a reply back.)
        faults.seed(11)
        rules = (faults.duplicate(src="gcs/*", dst="gcs/*", probability=0.2),  # forwards, acks, syncs
                 faults.duplicate(src="dup", dst="gcs/*", kind="request", probability=0.3),
                 faults.delay(0.01, src="gcs/*", dst="dup", kind="reply", probability=0.5))
        with faults.injected(*rules):
            async with trio.open_nursery() as nursery:
                for w in range(10):
                    nursery.start_soon(c.put, "kv", f"k{w}", w)
            assert [v for _, v in await c.scan("kv", "k")] == list(range(10))
        assert await _settled(chain) == [before + 10] * 3


@pytest.mark.parametrize("broken", ["reset", "refused"])
async def test_a_partition_between_replicas_is_reported_and_repaired(nursery, broken: str) -> None:
    svc = await start_gcs(nursery, gcs.GcsConfig(shards=1, replicas=3, processes=False,
                                                 heartbeat_interval=0.05, heartbeat_timeout=0.3))
    address = svc.address
    try:
        async with gcs.open_client(address, TOKEN, timeout=20) as c:
            await c.put("kv", "k", 0)
            head, middle, tail = svc.coordinator.chain(0).chain
            if broken == "refused":  # no message passes, no new link either
                rule = faults.partition(f"gcs/{middle}", f"gcs/{tail}")
            else:  # connections are made, but each resets at its first frame
                rule = faults.drop(src=f"gcs/{middle}", dst=f"gcs/{tail}")
            with faults.injected(*(rule if isinstance(rule, tuple | list) else (rule,))):
                await c.put("kv", "k", 1)  # stalls until the middle reports the tail
                cfg = svc.coordinator.chain(0)
                assert tail not in cfg.chain and middle in cfg.chain
            assert svc.coordinator.suspects >= 1
            await svc.coordinator.wait_ready(20)
            assert await c.get("kv", "k") == 1
    finally:
        faults.clear()
