"""Where a task or an actor may run, as it travels in its spec.

``f.options(scheduling_strategy=...)`` takes ``"DEFAULT"``, ``"SPREAD"`` or an
object with ``node_id`` and ``soft`` (``actorcore.util.scheduling_strategies.
NodeAffinitySchedulingStrategy``); `strategy_of` turns it into the wire form the
node's schedulers read (``node.global_scheduler._placement``).
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["DEFAULT", "SPREAD", "NodeAffinity", "Strategy", "strategy_of"]

DEFAULT = "DEFAULT"
SPREAD = "SPREAD"


@attrs.frozen
class NodeAffinity:
    """Run on ``node_id`` (hex); ``soft``: elsewhere if it is dead or cannot."""

    node_id: str
    soft: bool = False


#: What a spec carries: ``None`` (DEFAULT), ``"SPREAD"`` or a `NodeAffinity`.
Strategy = str | NodeAffinity | None


def strategy_of(value: Any) -> Strategy:
    """The wire form of a user's ``scheduling_strategy`` option."""
    if value is None or value == DEFAULT:
        return None
    if value == SPREAD:
        return SPREAD
    if hasattr(value, "placement_group_bundle_index"):
        # PlacementGroupSchedulingStrategy: its resources are rewritten to the
        # group's bundle resources (``node.placement_groups``); placed by those.
        return None
    node_id = getattr(value, "node_id", None)
    if node_id is not None:
        if isinstance(node_id, bytes):
            node_id = node_id.hex()
        return NodeAffinity(str(node_id), bool(getattr(value, "soft", False)))
    raise ValueError(f"scheduling_strategy={value!r} is not supported (use 'DEFAULT', "
                     f"'SPREAD' or NodeAffinitySchedulingStrategy)")
