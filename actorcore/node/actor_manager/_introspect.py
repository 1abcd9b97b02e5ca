"""What the actor manager shows: records for ``actor_state``, tree entries, counters."""

from __future__ import annotations

import collections
from typing import Any

import attrs

__all__ = ["TREE_LIMIT", "ActorIntrospection", "ActorManagerStatistics"]

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


class ActorIntrospection:
    """Mixed into ``ActorManager``: read-only views of its state."""

    node: Any
    actors: dict
    workers: dict
    processes: Any
    created_total: int
    died_total: int
    restarts_total: int

    def describe(self, rec: Any) -> dict:
        spec = rec.spec
        return {
            "actor_id": spec.actor_id.hex(),
            "class_name": spec.meta.class_name,
            "name": spec.name,
            "namespace": spec.namespace,
            "state": rec.state,
            "restarts": rec.restarts,
            "pid": rec.worker.pid if rec.worker is not None else None,
            "shared": spec.placement == "shared",
            "detached": spec.detached,
            "supervisor": spec.supervisor,
            "death_cause": rec.cause,
            "calls_done": rec.calls_done,
        }

    def actor_entry(self, rec: Any) -> dict:
        spec = rec.spec
        state = {"alive": "running", "pending": "starting", "restarting": "restarting",
                 "dead": "stopped"}[rec.state]
        return {
            "name": spec.name or f"{spec.meta.class_name}_{spec.short_id()}",
            "kind": "actor",
            "class": spec.meta.class_name,
            "actor_name": spec.name,
            "actor_id": spec.actor_id.hex(),
            "state": state,
            "restarts": rec.restarts,
            "pid": rec.worker.pid if rec.worker is not None else None,
            "node_id": self.node.node_hex,
            "children": [],
        }

    def worker_snapshots(self) -> list[dict]:
        """Actor processes as children of ``worker_pool`` in the tree."""
        out = []
        for aw in sorted(self.workers.values(), key=lambda w: w.index):
            actors = [r for r in aw.actors.values() if r.state != "dead"]
            entry = {
                "name": f"worker_{aw.index}",
                "kind": "worker",
                "state": "running" if aw.conn is not None else "starting",
                "restarts": 0,
                "pid": aw.pid,
                "node_id": self.node.node_hex,
                "worker_id": aw.worker_id.hex(),
                "activity": "actor_host" if aw.shared else "actor",
                "start": aw.start,  # queued (no process yet) | starting | up | ended
                "actors": len(actors),
                "children": [self.actor_entry(r) for r in actors[:TREE_LIMIT]],
            }
            out.append(entry)
        return out

    def statistics(self) -> ActorManagerStatistics:
        states = collections.Counter(r.state for r in self.actors.values())
        procs = self.processes
        return ActorManagerStatistics(
            pending=states["pending"], alive=states["alive"], restarting=states["restarting"],
            dead=states["dead"], created=self.created_total, died=self.died_total,
            restarts=self.restarts_total, processes=len(self.workers),
            processes_starting=procs.starting, processes_queued=procs.queued,
            max_starting=procs.max_starting, starting_peak=procs.starting_peak,
            queued_peak=procs.queued_peak)

