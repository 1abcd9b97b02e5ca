"""What the actor manager shows: its typed statistics, an actor as ``actor_state``
and the GCS actor table describe it, and actors and their processes as entries of
``actorcore tree`` (at most ``TREE_LIMIT`` actors listed per process)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["TREE_LIMIT", "ActorManagerStatistics", "actor_entry", "describe",
           "worker_snapshots"]

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
      memory_refused: actor processes not started because memory use was above the
        threshold (``worker_pool._memory``, policy ``fail``); memory_deferred: start
        attempts put off for that reason (policy ``wait``).
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
    memory_refused: int = 0
    memory_deferred: int = 0


def describe(rec: Any, node_hex: str, tcp_address: str | None) -> dict:
    """The actor ``rec`` (an ``ActorRecord``) as ``actor_state`` shows it; ``node_hex``
    and ``tcp_address``: the node describing it."""
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
        "node_id": rec.node or node_hex,
        "node_address": tcp_address if rec.node is None else None,
        "direct_address": (rec.worker.direct_address
                           if rec.worker is not None and not rec.worker.shared else None),
        "replay": rec.log.describe() if rec.log is not None else None,
    }


def actor_entry(rec: Any, node_hex: str) -> dict:
    """The actor ``rec`` as an entry of the tree."""
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
        "node_id": node_hex,
        "children": [],
    }


def worker_snapshots(workers: Iterable[Any], node_hex: str) -> list[dict]:
    """Actor processes as children of ``worker_pool`` in the tree."""
    out = []
    for aw in sorted(workers, key=lambda w: w.index):
        actors = [r for r in aw.actors.values() if r.state != "dead"]
        entry = {
            "name": f"worker_{aw.index}",
            "kind": "worker",
            "state": "running" if aw.conn is not None else "starting",
            "restarts": 0,
            "pid": aw.pid,
            "node_id": node_hex,
            "worker_id": aw.worker_id.hex(),
            "activity": "actor_host" if aw.shared else "actor",
            "start": aw.start,  # queued (no process yet) | starting | up | ended
            "actors": len(actors),
            "children": [actor_entry(r, node_hex) for r in actors[:TREE_LIMIT]],
        }
        out.append(entry)
    return out
