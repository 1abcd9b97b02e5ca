"""Helpers shared by the GCS tests (no tests here)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

import gcs
import transport

TOKEN = b"gcs-test-token"


def kernel_specs(spec: gcs.ServiceSpec) -> Any:
    """Turn the GCS plan into actorcore kernel child specs (what the node does)."""
    from actorcore.kernel import ChildSpec, Supervisor

    if spec.factory is not None:
        return ChildSpec(spec.name, spec.factory, kind=spec.kind, restart=spec.restart)  # type: ignore[arg-type]
    return Supervisor.spec(
        spec.name,
        [kernel_specs(child) for child in spec.children],
        strategy=spec.strategy,  # type: ignore[arg-type]
        max_restarts=spec.max_restarts,
        max_seconds=spec.max_seconds,
    )


@attrs.define
class RunningGcs:
    """A GCS supervised by the kernel (as in a node): its plan, the root supervisor
    and the address clients connect to."""

    plan: gcs.GcsPlan
    root: Any
    address: str

    @property
    def coordinator(self) -> gcs.Coordinator:
        assert self.plan.coordinator is not None
        return self.plan.coordinator

    def replicas(self) -> list[gcs.ReplicaService]:
        """The replica services running now, shard by shard."""
        config = self.plan.config
        return [self.root.find(f"gcs/shard_{s}/replica_{j}")
                for s in range(config.shards) for j in range(config.replicas)]


async def start_gcs(nursery: trio.Nursery, config: gcs.GcsConfig, token: bytes = TOKEN) -> RunningGcs:
    """Start a GCS under a kernel supervisor in ``nursery``; return once every shard
    has its full chain."""
    from actorcore.kernel import Supervisor

    plan = gcs.plan(config, token)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    return RunningGcs(plan, root, await plan.wait_ready(30))


@contextlib.asynccontextmanager
async def running_gcs(config: gcs.GcsConfig) -> AsyncIterator[RunningGcs]:
    """`start_gcs` in a nursery of its own, stopped when the block ends."""
    async with trio.open_nursery() as nursery:
        yield await start_gcs(nursery, config)
        nursery.cancel_scope.cancel()


async def start_in_process_chain(nursery: Any) -> RunningGcs:
    """One shard of R=3 replicas in this process, so that the transport's
    process-local fault rules reach every link; ``.address`` is the client address."""
    return await start_gcs(nursery, gcs.GcsConfig(shards=1, replicas=3, processes=False))


async def replica_stats(address: str, token: bytes = TOKEN) -> gcs.ReplicaStatistics:
    """A replica's statistics, asked over the wire (its `Stats` message)."""
    async with transport.open_connection(address, token, name="probe") as conn:
        stats = await conn.request(gcs.messages.Stats(), timeout=5)
    assert isinstance(stats, gcs.ReplicaStatistics), stats
    return stats


async def applied_per_replica(svc: RunningGcs) -> list[int]:
    """Each replica's applied sequence number, in chain order."""
    cfg = svc.coordinator.chain(0)
    return [(await replica_stats(cfg.addresses[name])).state.applied for name in cfg.chain]
