"""Helpers shared by the GCS tests (no tests here)."""

from __future__ import annotations

from typing import Any

import gcs

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


async def start_in_process_chain(nursery: Any) -> gcs.GcsService:
    """One shard of R=3 replicas in this process, so that the transport's
    process-local fault rules reach every link; ``.address`` is the client address."""
    svc = gcs.GcsService(gcs.GcsConfig(shards=1, replicas=3, processes=False), TOKEN)
    svc.address = await nursery.start(svc.run)
    return svc


async def applied_per_replica(svc: gcs.GcsService) -> list[int]:
    """Each replica's applied sequence number, in chain order."""
    import transport

    cfg = svc.coordinator.chain(0)
    out = []
    for name in cfg.chain:
        async with transport.open_connection(cfg.addresses[name], TOKEN, name="probe") as conn:
            out.append((await conn.request(("stats",), timeout=5))["applied"])
    return out
