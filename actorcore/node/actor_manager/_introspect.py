"""What the actor manager shows: its typed statistics, and how many actors the tree
lists per process (the views themselves are ``ActorManager`` methods)."""

from __future__ import annotations

import attrs

__all__ = ["TREE_LIMIT", "ActorManagerStatistics"]

#: Actor entries listed per worker in the tree (the rest are counted).
TREE_LIMIT = 50


@attrs.frozen(kw_only=True)
class ActorManagerStatistics:
    """Figures of a node's actor manager, from ``ActorManager.statistics()``.

    Attributes:
      pending, alive, restarting, dead: actors in each state now (``pending``: its
        constructor has not returned yet; dead actors are kept for ``actor_state``).
      created, died, restarts: actors created, dead for good, and restarted, since
        the node started.
      processes: actor processes (one per actor, or shared by several).
      processes_starting, processes_queued: actor processes launched and not up yet,
        and those waiting in the start queue (at most ``max_starting`` start at once).
      starting_peak, queued_peak: the most of each seen at once since the node started.
      unplaced: actors that no live node can host yet (they wait for one to join);
        unplaced_warnings: the warning logged for each (its request, the cluster).
      remote: proxies here of actors that live on other nodes.
    """

    pending: int
    alive: int
    restarting: int
    dead: int
    created: int
    died: int
    restarts: int
    processes: int
    processes_starting: int
    processes_queued: int
    max_starting: int
    starting_peak: int
    queued_peak: int
    unplaced: int = 0
    unplaced_warnings: tuple[str, ...] = ()
    remote: int = 0
