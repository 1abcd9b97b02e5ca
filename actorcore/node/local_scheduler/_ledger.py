"""The node's resource ledger: one account of CPUs, GPUs and custom resources for
tasks and actors both.

Tasks are placed by the local scheduler's dispatch pass, synchronously, on the
node's Trio loop; actors wait for their resources in the actor manager. Both take
from and give back to this one ledger, through ``try_acquire`` / ``take`` /
``release``. Nobody writes ``available`` but the ledger.

Waiting without polling
-----------------------
A taker that finds the resources in use does not poll: it awaits ``wait_release()``,
which returns at the next ``release`` (an ``trio.Event`` that each release sets and
replaces). The taker then tries again; a release that frees too little simply wakes
it to wait once more. Releases happen on the same Trio loop as every take, so a
taker that awaits ``wait_release()`` right after a failed try (as ``acquire`` does)
cannot miss a release: nothing runs between the two but its own code. A taker that
waits from another task (the actor manager spawns one waiter for all its waiting
actors) notes ``released`` (a count of releases) when its try fails and waits only
if the count has not moved since.

The dispatch pass of the local scheduler is a waiter too, woken through
``on_release`` (a plain callback, since it is woken per change, not awaited).

``available`` may go below zero for a moment: a task that leaves ``get`` takes its
CPU back even if another task got it meanwhile (oversubscription, as in Ray).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping

import attrs
import trio

__all__ = ["GpuIds", "LedgerStatistics", "ResourceLedger", "fits"]

logger = logging.getLogger("actorcore.ledger")


def fits(need: Mapping[str, float], available: Mapping[str, float]) -> bool:
    """Whether ``need`` fits in ``available`` (with a tolerance for float sums)."""
    for k, v in need.items():
        if available.get(k, 0.0) < v - 1e-9:
            return False
    return True


@attrs.frozen(kw_only=True)
class LedgerStatistics:
    """Figures of the node's resource ledger since the node started.

    Attributes:
      acquired: successful ``try_acquire`` calls (actors and anything else that asks
        before taking); released: ``release`` calls that gave something back.
      waits: times a taker started waiting in ``wait_release``; wakeups: waiters
        woken by a release (one release wakes every waiter at once).
      waiting: takers waiting now.
      available, total: resources free now and the node's capacity.
    """

    acquired: int
    released: int
    waits: int
    wakeups: int
    waiting: int
    available: dict[str, float]
    total: dict[str, float]


@attrs.define(eq=False)
class GpuIds:
    """Which of the node's GPUs (ids ``0 .. n-1``) each task and actor holds.

    The ledger counts GPUs as an amount; this names them, as Ray does, so a task
    sees its own ``CUDA_VISIBLE_DEVICES``. A request of ``g >= 1`` GPUs (whole, as
    the options demand) gets ``g`` ids that nobody else uses; a fraction gets one id
    with that much left, the fullest such id first (fractions pack onto one GPU and
    leave the others whole, as in Ray). ``assign`` is called right after the ledger
    took the amount, so the ids exist unless fractions were spread over several
    GPUs; then the least used ids are shared, with a warning.
    """

    free: list[float]

    @classmethod
    def of(cls, count: float) -> GpuIds:
        return cls([1.0] * int(math.floor(count + 1e-9)))

    def assign(self, amount: float) -> tuple[int, ...]:
        if amount <= 0 or not self.free:
            return ()
        free = self.free
        if amount >= 1 - 1e-9:
            want = int(round(amount))
            whole = [i for i, f in enumerate(free) if f >= 1 - 1e-9][:want]
            if len(whole) < want:
                logger.warning("%g GPUs taken but only %d whole ones free (%s): sharing",
                               amount, len(whole), free)
                rest = sorted((i for i in range(len(free)) if i not in whole),
                              key=lambda i: -free[i])
                whole += rest[:want - len(whole)]
            for i in whole:
                free[i] -= 1.0
            return tuple(sorted(whole))
        fitting = [i for i, f in enumerate(free) if f >= amount - 1e-9]
        if fitting:
            i = min(fitting, key=lambda i: (free[i], i))
        else:
            logger.warning("%g GPU taken but no single GPU has that much free (%s): sharing",
                           amount, free)
            i = max(range(len(free)), key=lambda i: free[i])
        free[i] -= amount
        return (i,)

    def release(self, ids: tuple[int, ...], amount: float) -> None:
        if not ids:
            return
        each = amount if amount < 1 - 1e-9 else 1.0
        for i in ids:
            if 0 <= i < len(self.free):
                self.free[i] = min(1.0, self.free[i] + each)


@attrs.define(eq=False)
class ResourceLedger:
    """The node's resources: what it has (``total``) and what is free (``available``)."""

    total: dict[str, float]
    available: dict[str, float] = attrs.field(init=False)
    #: Called after every release (the local scheduler's wake-up), or None.
    on_release: Callable[[], None] | None = None
    _released: trio.Event = attrs.field(init=False, factory=trio.Event)
    _waiting: int = attrs.field(init=False, default=0)
    acquired: int = attrs.field(init=False, default=0)
    released: int = attrs.field(init=False, default=0)
    waits: int = attrs.field(init=False, default=0)
    wakeups: int = attrs.field(init=False, default=0)

    #: The node's GPUs by id (``GpuIds``): who holds which.
    gpus: GpuIds = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.available = dict(self.total)
        self.gpus = GpuIds.of(self.total.get("GPU", 0.0))

    def feasible(self, need: dict[str, float]) -> bool:
        """Whether ``need`` could ever be met on this node (fits its capacity)."""
        return fits(need, self.total)

    def fits(self, need: dict[str, float]) -> bool:
        """Whether ``need`` is free now."""
        return fits(need, self.available)

    def try_acquire(self, need: dict[str, float]) -> bool:
        """Take ``need`` if it is free now; return whether it was taken."""
        available = self.available
        if not fits(need, available):
            return False
        for k, v in need.items():
            available[k] = available.get(k, 0.0) - v
        self.acquired += 1
        return True

    def take(self, need: dict[str, float]) -> None:
        """Take ``need`` unconditionally (the caller checked, or oversubscribes on purpose)."""
        available = self.available
        for k, v in need.items():
            available[k] = available.get(k, 0.0) - v

    def release(self, held: dict[str, float]) -> None:
        """Give ``held`` back and wake every waiter (and the local scheduler)."""
        if not held:
            return
        available = self.available
        total = self.total
        for k, v in held.items():
            if k in total:  # not a placement group's resource removed meanwhile
                available[k] = available.get(k, 0.0) + v
        self.released += 1
        self._wake()

    def add_resources(self, extra: Mapping[str, float]) -> None:
        """Grow the node by ``extra`` (a reserved placement-group bundle's renamed
        resources), free at once, and wake every waiter as a release does."""
        total, available = self.total, self.available
        for k, v in extra.items():
            total[k] = total.get(k, 0.0) + v
            available[k] = available.get(k, 0.0) + v
        self.released += 1
        self._wake()

    def remove_resources(self, names: Iterable[str]) -> None:
        """Drop the resources ``names`` (a removed group's): whoever still holds
        some gives nothing back when it releases them."""
        for k in names:
            self.total.pop(k, None)
            self.available.pop(k, None)

    def _wake(self) -> None:
        if self._waiting:
            self.wakeups += self._waiting
            self._released.set()
            self._released = trio.Event()
        if self.on_release is not None:
            self.on_release()

    async def wait_release(self) -> None:
        """Return at the next ``release`` (then try again: it may have freed too little)."""
        event = self._released
        self._waiting += 1
        self.waits += 1
        try:
            await event.wait()
        finally:
            self._waiting -= 1

    async def acquire(self, need: dict[str, float]) -> None:
        """Take ``need``, waiting for releases until it is free.

        Raises ``ValueError`` at once for a request the node can never meet.
        """
        if not self.feasible(need):
            raise ValueError(f"request {need} exceeds the node's capacity {self.total}")
        while not self.try_acquire(need):
            await self.wait_release()

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(
            acquired=self.acquired,
            released=self.released,
            waits=self.waits,
            wakeups=self.wakeups,
            waiting=self._waiting,
            available=dict(self.available),
            total=dict(self.total),
        )
