"""Where a task or an actor runs: the placement policy of the bottom-up scheduler.

Paper §4.2.2: work is first offered to the local scheduler of the node where it
was submitted; it stays there when the node can run it soon, and otherwise spills
back to the global scheduler, which places it by feasibility, load (from the
heartbeats) and where its argument bytes live. One pure function decides both
steps, for tasks and actors alike, from a `ClusterView` and the request:

- ``keep_local`` — the local scheduler's question: run it here? Yes while this
  node could run it and is below the utilisation threshold (Ray's hybrid policy,
  50 % by default): below it, local work is cheaper than any hop; above it, the
  task is offered to the cluster. A cluster of one node always keeps it.
- ``choose_node`` — the global scheduler's question: which node? The feasible live
  nodes (capacity fits the request), then:
    * ``NodeAffinity(node_id, soft)``: that node if it is alive and feasible; else,
      when ``soft``, as DEFAULT; else no node (the caller fails the task, naming why);
    * ``SPREAD``: the feasible node that has received the fewest placements from
      this scheduler, ties to the least loaded (round-robin over the cluster);
    * DEFAULT: among the feasible nodes with the resources free now and no
      backlog (load below 1: a node whose queue already claims its free
      resources — its first task waiting for a worker to start — is not free),
      the one holding the most argument bytes, then the least loaded; if none is
      free, the least loaded feasible node (it queues there), another node before
      this one on a tie (its figures may be a heartbeat old; this node's are not).
  No feasible node at all: ``None`` with ``infeasible=True``: the work waits until a
  node that can run it joins (as in Ray), with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import attrs

from ...protocol._strategy import DEFAULT, SPREAD, NodeAffinity, Strategy, strategy_of
from ..gcs_client._membership import ClusterView, NodeStatus
from ..local_scheduler._ledger import fits

__all__ = [
    "DEFAULT",
    "SPREAD",
    "UTILISATION_THRESHOLD",
    "NodeAffinity",
    "Placement",
    "Strategy",
    "choose_node",
    "format_resources",
    "keep_local",
    "strategy_of",
]

#: The local node keeps work while it is below this load (Ray's hybrid policy).
UTILISATION_THRESHOLD = 0.5

@attrs.frozen
class Placement:
    """The answer of `choose_node`: a node id, or why there is none."""

    node_id: str | None
    infeasible: bool = False  # no live node could ever run it: wait for one
    reason: str = ""


def keep_local(resources: Mapping[str, float], strategy: Strategy, view: ClusterView,
               *, available: Mapping[str, float], total: Mapping[str, float],
               queued: int) -> bool:
    """Whether the local scheduler runs this work itself (see the module docstring).

    ``available``/``total``/``queued`` are this node's own live figures (its ledger
    and queue), fresher than its last heartbeat."""
    if not view.multi:
        return fits(resources, total)
    if isinstance(strategy, NodeAffinity):
        return strategy.node_id == view.node_id
    if strategy == SPREAD or not fits(resources, total):
        return False
    if not fits(resources, available):
        return False
    me = NodeStatus(node_id=view.node_id, address=None, resources=dict(total),
                    available=dict(available), queued=queued)
    return me.load() < UTILISATION_THRESHOLD


@attrs.define
class SpreadState:
    """Placements made per node by one scheduler (SPREAD's round robin)."""

    counts: dict[str, int] = attrs.Factory(dict)


def choose_node(resources: Mapping[str, float], strategy: Strategy, view: ClusterView,
                *, locality: Mapping[str, int] | None = None,
                spread: SpreadState | None = None,
                local_available: Mapping[str, float] | None = None) -> Placement:
    """The node for this work (see the module docstring).

    ``locality``: node id -> bytes of the work's arguments held there.
    ``local_available``: this node's live free resources (else its heartbeat's)."""
    alive = view.alive()
    if local_available is not None:
        alive = [attrs.evolve(s, available=dict(local_available))
                 if s.node_id == view.node_id else s for s in alive]
    fit = _fitter(resources)
    feasible = [s for s in alive if fit(s.resources)]
    if isinstance(strategy, NodeAffinity):
        target = view.get(strategy.node_id)
        if target is not None and target.alive and fits(resources, target.resources):
            return Placement(target.node_id)
        if not strategy.soft:
            why = ("is not a node of the cluster" if target is None else
                   f"is dead ({target.death_reason})" if not target.alive else
                   f"cannot provide {format_resources(resources)} (it has {format_resources(target.resources)})")
            return Placement(None, reason=f"NodeAffinitySchedulingStrategy(soft=False): "
                                          f"node {strategy.node_id[:12]} {why}")
    if not feasible:
        return Placement(None, infeasible=True, reason=(
            f"no node can provide {format_resources(resources)} (cluster: "
            f"{', '.join(f'{s.node_id[:8]} {format_resources(s.resources)}' for s in alive) or 'none'})"))
    if strategy == SPREAD:
        counts = spread.counts if spread is not None else {}
        best = min(feasible, key=lambda s: (counts.get(s.node_id, 0),
                                            not fit(s.available), s.load(),
                                            s.node_id))
        if spread is not None:
            spread.counts[best.node_id] = counts.get(best.node_id, 0) + 1
        return Placement(best.node_id)
    local = locality or {}
    free = [s for s in feasible if s.load() < 1.0 and fit(s.available)]
    if free:
        best = max(free, key=lambda s: (local.get(s.node_id, 0), -s.load(),
                                        s.node_id == view.node_id))
        return Placement(best.node_id)
    best = min(feasible, key=lambda s: (s.load(), -local.get(s.node_id, 0),
                                        s.node_id == view.node_id))
    return Placement(best.node_id)


def _fitter(need: Mapping[str, float]) -> Callable[[Mapping[str, float]], bool]:
    """``fits(need, ·)`` as one predicate, for the hundreds of nodes a placement
    checks: a request of one resource (most are ``{"CPU": n}``) is a single
    comparison instead of a loop (the same test as `fits`, tolerance included)."""
    if len(need) == 1:
        ((name, amount),) = need.items()
        floor = amount - 1e-9
        return lambda available: not available.get(name, 0.0) < floor
    return lambda available: fits(need, available)


def format_resources(res: Mapping[str, float]) -> str:
    """A resource request or capacity for messages: ``{CPU: 1, GPU: 0.5}``
    (``memory`` left out: its byte counts drown the rest)."""
    return "{" + ", ".join(
        f"{k}: {int(v) if math.isfinite(v) and v == int(v) else v}"
        for k, v in sorted(res.items()) if k != "memory") + "}"
