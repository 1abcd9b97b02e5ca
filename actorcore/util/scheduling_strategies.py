"""Scheduling strategies of tasks (Ray's ``ray.util.scheduling_strategies``).

``f.options(scheduling_strategy=...)`` takes ``"DEFAULT"``, ``"SPREAD"`` or a
`NodeAffinitySchedulingStrategy`. The strategy travels in the task's spec; the
node's schedulers read it (``protocol._strategy``, ``node.global_scheduler._placement``).
"""

from __future__ import annotations

__all__ = ["NodeAffinitySchedulingStrategy"]


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``nodes()`` and
    ``get_runtime_context().get_node_id()`` give it).

    ``soft=False``: only there; the task fails with ``TaskUnschedulableError`` if
    that node is not alive or cannot provide its resources. ``soft=True``: there if
    it can, elsewhere otherwise.
    """

    __slots__ = ("node_id", "soft")

    def __init__(self, node_id: str, soft: bool,
                 _spill_on_unavailable: bool = False, _fail_on_unavailable: bool = False) -> None:
        if isinstance(node_id, bytes):
            node_id = node_id.hex()
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(f"NodeAffinitySchedulingStrategy: node_id={node_id!r} must be a "
                            f"node id (hex str)")
        for name, value in (("_spill_on_unavailable", _spill_on_unavailable),
                            ("_fail_on_unavailable", _fail_on_unavailable)):
            if value:
                raise ValueError(f"NodeAffinitySchedulingStrategy({name}=True) is not "
                                 f"supported by actorcore")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, NodeAffinitySchedulingStrategy)
                and (self.node_id, self.soft) == (other.node_id, other.soft))

    def __hash__(self) -> int:
        return hash((self.node_id, self.soft))
