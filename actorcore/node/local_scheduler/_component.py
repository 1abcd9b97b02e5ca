"""The ``local_scheduler`` child of the node's tree: the loop that places work.

The state it places from (queues, running tasks, the resource ledger) is
``SchedulerState``, owned by the node so that this component can crash and be
restarted without losing a task; this module is only the loop and its snapshot.
"""

from __future__ import annotations

from typing import Any

import trio

from ._scheduler import SchedulerState

__all__ = ["LocalScheduler"]


class LocalScheduler:
    """The ``local_scheduler`` component: the dispatch loop over ``SchedulerState``.

    Message handlers change the state (a task submitted, finished, blocked; a
    release in the ledger) and only mark it: they set ``state.wakeup``. This loop
    is the one place that places work. An unexpected exception in placement
    therefore propagates out of ``run``: the component crashes, its supervisor
    restarts it, and the new loop starts with a full pass over the same state —
    the queues, the running table and the ledger live in ``SchedulerState``, which
    the node owns, so nothing queued or running is lost. While the component is
    down nothing new starts; handlers keep recording work.

    One pass places everything placeable, so a burst of submits (or of results)
    costs one pass, not one per message.
    """

    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        state = self.state
        task_status.started()
        while True:
            # A fresh event before the pass: a wake during it (nothing in dispatch
            # wakes us today, but a callback might) costs one more pass, never a
            # missed one. ``wait`` on a set event still checkpoints.
            state.wakeup = trio.Event()
            state.dispatch_passes += 1
            state.dispatch()
            await state.wakeup.wait()

    def snapshot(self) -> dict:
        st = self.state.statistics()
        return {"kind": "local_scheduler", "queued": st.queued, "running": st.running,
                "leased_workers": st.leased_workers, "leases_granted": st.leases_granted}
