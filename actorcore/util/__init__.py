"""``actorcore.util``: utilities built on the core API, under Ray's names.

``ActorPool`` (``actor_pool``): a fixed set of actors that values are mapped over.
``queue.Queue`` (``from actorcore.util.queue import Queue, Empty, Full``): a FIFO
queue held by an actor, shared by the tasks and actors it is passed to.
``scheduling_strategies``: ``NodeAffinitySchedulingStrategy`` (and ``"SPREAD"``).
``placement_group`` and its kin (``placement_group`` module): gang-reserved
bundles of resources; ``scheduling_strategies.PlacementGroupSchedulingStrategy``
runs tasks and actors in them.
"""

from typing import TYPE_CHECKING, Any

from . import scheduling_strategies
from .actor_pool import ActorPool
from .placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

if TYPE_CHECKING:
    from . import queue


def __getattr__(name: str) -> Any:
    # ``queue`` is imported when first named (``actorcore.util.queue``, or the
    # ``from actorcore.util.queue import Queue`` that Ray's docs use): it imports
    # asyncio, which a program that never makes a queue need not load.
    if name == "queue":
        import importlib

        return importlib.import_module(".queue", __name__)
    raise AttributeError(f"module 'actorcore.util' has no attribute {name!r}")

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "queue",
    "remove_placement_group",
    "scheduling_strategies",
]
