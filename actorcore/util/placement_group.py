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

from ..protocol._placement import STRATEGIES, check_bundles, group_of
from ..protocol._wire import (
    CreatePlacementGroup,
    GetPlacementGroup,
    PlacementGroupTable,
    RemovePlacementGroup,
)

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]


class PlacementGroupID:
    """A placement group's id (``hex()``, ``binary()``), as Ray's."""

    __slots__ = ("_bytes",)

    def __init__(self, raw: bytes) -> None:
        self._bytes = bytes(raw)

    def hex(self) -> str:
        return self._bytes.hex()

    def binary(self) -> bytes:
        return self._bytes

    def is_nil(self) -> bool:
        return not any(self._bytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"


_check_fn: Any = None


def _bundle_reservation_check() -> Any:
    # One remote function for every ready() (exported once, as Ray's).
    global _check_fn
    if _check_fn is None:
        from ..api._api import remote

        @remote(num_cpus=0, max_retries=0)
        def bundle_reservation_check(placement_group: Any) -> Any:
            return placement_group

        _check_fn = bundle_reservation_check
    return _check_fn


class PlacementGroup:
    """A handle to a placement group: pass it to tasks, ``ready()``, ``wait()``."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict] | None = None) -> None:
        self.id = id
        self.bundle_cache = bundle_cache

    @staticmethod
    def empty() -> PlacementGroup:
        return PlacementGroup(PlacementGroupID(bytes(16)))

    @property
    def is_empty(self) -> bool:
        return self.id.is_nil()

    def ready(self) -> Any:
        """An ObjectRef resolved (to this group) once every bundle is reserved."""
        from .scheduling_strategies import PlacementGroupSchedulingStrategy

        self._fill_bundle_cache()
        return _bundle_reservation_check().options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(self)).remote(self)

    def wait(self, timeout_seconds: float | int = 30) -> bool:
        """Whether the group is reserved within ``timeout_seconds``."""
        from ..api._api import get, wait
        from ..exceptions import ActorcoreError

        done, _ = wait([self.ready()], timeout=timeout_seconds)
        if not done:
            return False
        try:
            get(done[0], timeout=timeout_seconds)
        except ActorcoreError:  # removed meanwhile: it will never be ready
            return False
        return True

    @property
    def bundle_specs(self) -> list[dict]:
        """The bundles, as given (resource name -> amount)."""
        self._fill_bundle_cache()
        assert self.bundle_cache is not None
        return [dict(b) for b in self.bundle_cache]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def _fill_bundle_cache(self) -> None:
        if self.bundle_cache is None:
            entry = placement_group_table(self)
            if not entry:
                raise ValueError(f"unknown placement group {self.id.hex()}")
            self.bundle_cache = [dict(b) for _i, b in sorted(entry["bundles"].items())]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()})"

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.id.binary(), self.bundle_cache))


def _rebuild(raw: bytes, bundles: list[dict] | None) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID(raw), bundles)


def _request(message: Any) -> Any:
    from ..api._actor_handle import request_node
    from ..core_worker import _worker_state

    core = _worker_state.auto_core()
    return request_node(core, message)


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id: str | None = None,
                    bundle_label_selector: Any = None) -> PlacementGroup:
    """Create a placement group of ``bundles`` (reserved asynchronously, as Ray's:
    ``ready()`` / ``wait()`` tell when). ``strategy``: PACK, SPREAD, STRICT_PACK or
    STRICT_SPREAD. ``name``: unique in the namespace, for ``get_placement_group``.
    ``lifetime="detached"``: outlives its creator (else it goes with its driver)."""
    from ..api._actor_handle import default_namespace
    from ..core_worker import _worker_state

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
    _request(CreatePlacementGroup({
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
    _request(RemovePlacementGroup(placement_group.id.hex()))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group named so in this job's namespace; ValueError if none."""
    from ..api._actor_handle import default_namespace

    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError(f"get_placement_group: name={placement_group_name!r} must be a "
                         "non-empty str")
    entry = _request(GetPlacementGroup(placement_group_name, default_namespace()))
    return PlacementGroup(PlacementGroupID(bytes.fromhex(entry["placement_group_id"])),
                          [dict(b) for _i, b in sorted(entry["bundles"].items())])


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """The group's state (Ray's keys: placement_group_id, name, bundles,
    bundles_to_node_id, strategy, state, stats), or every group's by id."""
    pg = None if placement_group is None else placement_group.id.hex()
    entry = _request(PlacementGroupTable(pg))
    if pg is not None and entry:
        return _without_internal(entry)
    return {k: _without_internal(v) for k, v in entry.items()} if pg is None else {}


def _without_internal(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "coordinator"}


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the calling task or actor runs in, or None."""
    from ..runtime_context import get_runtime_context

    try:
        resources = get_runtime_context().get_assigned_resources()
    except RuntimeError:  # a driver holds no resources: it is in no group
        return None
    pg = group_of(resources)
    if pg is None:
        return None
    return PlacementGroup(PlacementGroupID(bytes.fromhex(pg)))
