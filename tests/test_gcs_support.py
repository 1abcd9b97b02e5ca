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
