"""What a node's local scheduler reports: its queues, its workers, its resources
(``actorcore status``, ``actorcore.tree()`` and tests read it by field)."""

from __future__ import annotations

import attrs

__all__ = ["SchedulerStatistics"]


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

    @property
    def queued(self) -> int:
        """Tasks not running yet: ``waiting`` plus ``ready``."""
        return self.waiting + self.ready

    @property
    def used(self) -> dict[str, float]:
        """Resources taken now, per resource of ``total``."""
        return {k: v - self.available.get(k, 0.0) for k, v in self.total.items()}
