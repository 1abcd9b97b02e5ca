"""Placement groups (Ray's ``ray.util.placement_group``): reserve bundles of
resources across the cluster, all or none, and run tasks and actors in them.

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    remove_placement_group(pg)

The group is created by the node this process is connected to, which reserves
its bundles (``node.placement_groups``); its record is in the GCS, so
``get_placement_group(name)`` and ``placement_group_table()`` work from any driver.
A group that the cluster cannot hold yet stays pending (``ready()`` unresolved,
``wait(t)`` False) until it can, as in Ray.
"""

from __future__ import annotations

import os
from typing import Any

from ..api._api import get, remote, wait
from ..api._job import default_namespace
from ..api._placement_group import (
    PlacementGroupHandle,
    PlacementGroupID,
    placement_group_table,
    request_group,
)
from ..api._strategies import PlacementGroupSchedulingStrategy
from ..core_worker import _worker_state
from ..exceptions import ActorcoreError
from ..protocol._placement import STRATEGIES, check_bundles, group_of
from ..protocol._wire import CreatePlacementGroup, GetPlacementGroup, RemovePlacementGroup
from ..runtime_context import get_runtime_context

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]


_check_fn: Any = None


def _bundle_reservation_check() -> Any:
    # One remote function for every ready() (exported once, as Ray's).
    global _check_fn
    if _check_fn is None:

        @remote(num_cpus=0, max_retries=0)
        def bundle_reservation_check(placement_group: Any) -> Any:
            return placement_group

        _check_fn = bundle_reservation_check
    return _check_fn


class PlacementGroup(PlacementGroupHandle):
    """A handle to a placement group: pass it to tasks, ``ready()``, ``wait()``."""

    @staticmethod
    def empty() -> PlacementGroup:
        return PlacementGroup(PlacementGroupID(bytes(16)))

    def ready(self) -> Any:
        """An ObjectRef resolved (to this group) once every bundle is reserved."""
        self._fill_bundle_cache()
        return _bundle_reservation_check().options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(self)).remote(self)

    def wait(self, timeout_seconds: float | int = 30) -> bool:
        """Whether the group is reserved within ``timeout_seconds``."""
        done, _ = wait([self.ready()], timeout=timeout_seconds)
        if not done:
            return False
        try:
            get(done[0], timeout=timeout_seconds)
        except ActorcoreError:  # removed meanwhile: it will never be ready
            return False
        return True

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.id.binary(), self.bundle_cache))


def _rebuild(raw: bytes, bundles: list[dict] | None) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID(raw), bundles)


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id: str | None = None,
                    bundle_label_selector: Any = None) -> PlacementGroup:
    """Create a placement group of ``bundles`` (reserved asynchronously, as Ray's:
    ``ready()`` / ``wait()`` tell when). ``strategy``: PACK, SPREAD, STRICT_PACK or
    STRICT_SPREAD. ``name``: unique in the namespace, for ``get_placement_group``.
    ``lifetime="detached"``: outlives its creator (else it goes with its driver)."""
    clean = check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"placement_group: strategy={strategy!r} must be one of "
                         f"{', '.join(STRATEGIES)}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"placement_group: lifetime={lifetime!r} must be None or 'detached'")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise TypeError(f"placement_group: name={name!r} must be a str")
    if _soft_target_node_id is not None:
        raise ValueError("placement_group: _soft_target_node_id is not supported by actorcore")
    if bundle_label_selector:
        raise ValueError("placement_group: bundle_label_selector is not supported by actorcore "
                         "(nodes have no labels)")
    core = _worker_state.auto_core()
    pg_id = PlacementGroupID(os.urandom(16))
    request_group(CreatePlacementGroup({
        "pg_id": pg_id.hex(), "bundles": clean, "strategy": strategy, "name": name,
        "namespace": default_namespace(), "lifetime": lifetime,
        "job_id": core.current_job_id().hex(),
    }))
    return PlacementGroup(pg_id, clean)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: its tasks and actors are killed, its bundles freed."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group: expected a PlacementGroup, got "
                        f"{placement_group!r}")
    request_group(RemovePlacementGroup(placement_group.id.hex()))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group named so in this job's namespace; ValueError if none."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError(f"get_placement_group: name={placement_group_name!r} must be a "
                         "non-empty str")
    entry = request_group(GetPlacementGroup(placement_group_name, default_namespace()))
    return PlacementGroup(PlacementGroupID(bytes.fromhex(entry["placement_group_id"])),
                          [dict(b) for _i, b in sorted(entry["bundles"].items())])


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the calling task or actor runs in, or None."""
    try:
        resources = get_runtime_context().get_assigned_resources()
    except RuntimeError:  # a driver holds no resources: it is in no group
        return None
    pg = group_of(resources)
    if pg is None:
        return None
    return PlacementGroup(PlacementGroupID(bytes.fromhex(pg)))
