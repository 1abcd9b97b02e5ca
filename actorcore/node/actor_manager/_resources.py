"""The resources the node's actors hold: taken from the node's ledger before an actor
is placed in a process, given back when it ends.

An actor that does not fit waits, in arrival order, with the others that did not;
they try again at each release in the ledger (no timer: ``Ledger.wait_release``),
and each that still does not fit waits again. One task waits for all of them, and
only while any waits.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ._record import ActorRecord

__all__ = ["ActorResources"]


class ActorResources:
    """``acquire`` an actor's resources and then ``place`` it; ``release`` them."""

    def __init__(self, node: Any, place: Callable[[ActorRecord], None]) -> None:
        self.node = node
        self._place = place
        self.waiting: collections.deque[ActorRecord] = collections.deque()
        self._waiter = False  # the task of ``_retry_at_releases`` runs
        self._releases_seen = 0

    def acquire(self, rec: ActorRecord) -> None:
        """Take the actor's resources (wait while the node has them in use), then place."""
        need = rec.spec.resources
        if need and rec.held is None:
            ledger = self.node.sched.ledger
            if not ledger.try_acquire(need):
                self.waiting.append(rec)
                if not self._waiter:
                    self._waiter = True
                    # The releases seen so far: one that comes before the task
                    # below starts waiting is not missed (it retries at once).
                    self._releases_seen = ledger.released
                    self.node.spawn(self._retry_at_releases)
                return
            rec.held = dict(need)
            if need.get("GPU"):
                rec.gpu_ids = ledger.gpus.assign(need["GPU"])
        self._place(rec)

    async def _retry_at_releases(self) -> None:
        ledger = self.node.sched.ledger
        try:
            while self.waiting:
                if ledger.released == self._releases_seen:
                    await ledger.wait_release()
                self._releases_seen = ledger.released
                waiting, self.waiting = self.waiting, collections.deque()
                for rec in waiting:
                    if rec.state != "dead":
                        self.acquire(rec)
        finally:
            self._waiter = False

    def release(self, rec: ActorRecord) -> None:
        """The actor ended: it waits no more, and what it held goes back to the
        ledger (which wakes the waiting actors and the scheduler)."""
        if rec in self.waiting:
            self.waiting.remove(rec)
        if rec.held:
            held, rec.held = rec.held, None
            gpus, rec.gpu_ids = rec.gpu_ids, ()
            ledger = self.node.sched.ledger
            ledger.gpus.release(gpus, held.get("GPU", 0.0))
            ledger.release(held)
