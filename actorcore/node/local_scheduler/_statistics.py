"""What a node's local scheduler reports: its queues, its workers, its resources
(``actorcore status``, ``actorcore.tree()`` and tests read it by field)."""

from __future__ import annotations

import attrs

__all__ = ["LeaseStatus", "SchedulerStatistics"]


@attrs.frozen(kw_only=True)
class LeaseStatus:
    """One lease of the node's lease book now (``SchedulerStatistics.leases``).

    Attributes:
      lease_id, owner: the lease's id and its submitter's worker id (hex).
      worker: the leased worker's index.
      holds: whether the lease itself holds its resources in the ledger (no task of
        it runs; while one does, the task holds them).
      running: its tasks the worker reported and that have not ended here;
        finished: those that ended; pushed: how many its submitter says it pushed
        (known once ``returned``).
    """

    lease_id: str
    owner: str
    worker: int
    resources: dict[str, float]
    holds: bool
    running: int
    finished: int
    pushed: int
    returned: bool


@attrs.frozen(kw_only=True)
class SchedulerStatistics:
    """Figures of a node's local scheduler, from ``SchedulerState.statistics()``.

    Attributes:
      waiting: tasks whose arguments are not all ready yet; ready: tasks queued for
        resources or a worker; running: tasks on a worker now.
      idle_workers: task workers free to take one.
      finished: tasks completed (with a value or the task's own exception);
        retried: attempts re-run (their worker died, or an exception they retry on);
        failed: tasks the node failed (worker died with no retries left, cancelled,
        unschedulable). All since the node started.
      available, total: resources free now and the node's capacity (tasks and
        actors both take from ``available``).
      unplaced: tasks this node can never run that wait for the global scheduler
        (for another node); unplaced_warnings: why, one line per resource shape.
      leased_workers: workers lent to submitters now (direct task submission);
        leases_granted, leases_refused: since the node started.
      leases: each lease now (`LeaseStatus`); leases_awaiting_lost: leases whose
        worker died, kept until their submitter hands back what it had pushed.
      ledger_available: what the ledger has free now (``available`` adds what
        idle leases hold; this does not).
      held_by_tasks: what the running tasks hold (a task blocked in ``get`` holds
        no CPU); held_by_leases: what leases hold themselves (none of their tasks
        runs). The ledger's account is exact when, per resource, ``total`` ==
        ``ledger_available`` + ``held_by_tasks`` + ``held_by_leases`` + what
        actors and placement groups hold: ``held_elsewhere`` is that last term,
        zero on a node without actors or groups unless the account leaks.
    """

    waiting: int
    ready: int
    running: int
    idle_workers: int
    finished: int
    retried: int
    failed: int
    available: dict[str, float]
    total: dict[str, float]
    unplaced: int = 0
    unplaced_warnings: tuple[str, ...] = ()
    leased_workers: int = 0
    leases_granted: int = 0
    leases_refused: int = 0
    leases: tuple[LeaseStatus, ...] = ()
    leases_awaiting_lost: int = 0
    ledger_available: dict[str, float] = attrs.Factory(dict)
    held_by_tasks: dict[str, float] = attrs.Factory(dict)
    held_by_leases: dict[str, float] = attrs.Factory(dict)

    @property
    def queued(self) -> int:
        """Tasks not running yet: ``waiting`` plus ``ready``."""
        return self.waiting + self.ready

    @property
    def held_elsewhere(self) -> dict[str, float]:
        """Per resource of ``total``, what neither the free pool nor the tasks nor
        the leases account for: what actors and placement groups hold (see the
        class docstring; rounded to 1e-9)."""
        out = {}
        for k, v in self.total.items():
            rest = (v - self.ledger_available.get(k, 0.0) - self.held_by_tasks.get(k, 0.0)
                    - self.held_by_leases.get(k, 0.0))
            out[k] = round(rest, 9)
        return out

    @property
    def used(self) -> dict[str, float]:
        """Resources taken now, per resource of ``total``."""
        return {k: v - self.available.get(k, 0.0) for k, v in self.total.items()}
