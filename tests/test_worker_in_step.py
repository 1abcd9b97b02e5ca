"""A task worker and its node keep the same account of what runs there.

The node decides when a task queued on a worker behind another holds its CPU
(``SchedulerState._promote``), the worker when it starts (``WorkerProcess._pump``),
each by the same rule over its own record of the blocks, unblocks and ends; the
worker queues each message for the node in one step with the change of its record
(``worker._process``, "In step with the node"). Here a real ``WorkerProcess`` (its
executors and its link to the node replaced by recorders) and a real
``SchedulerState`` play random bursts of a task tree, every message the worker
queues read by the node in order: after every step the two name the same tasks as
started, and the node's CPUs are held by exactly the started tasks that are not
blocked.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import attrs
import pytest

from actorcore.node.local_scheduler._scheduler import SchedulerState, WorkerInfo
from actorcore.node.object_manager._directory import ObjectDirectory
from actorcore.protocol import _wire as w
from actorcore.protocol._messages import TaskSpec
from actorcore.worker._process import WorkerProcess

from .test_runtime_scheduling import _Conn, _Host


class _Core:
    """What the worker's task-ending path asks of its core worker."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def enqueue(self, message: Any, **_kw: Any) -> None:
        self.sent.append(message)

    def frame_limit(self) -> int:
        return 1 << 20

    def task_finished(self, task_id: bytes) -> None: ...


class _Executor:
    """An executor thread: records the tasks it is told to start."""

    def __init__(self, started: list[bytes]) -> None:
        self.started = started

    def tell(self, item: tuple) -> None:
        self.started.append(item[0].task_id)

    def is_alive(self) -> bool:
        return True


def _spec(i: int, parent: TaskSpec | None = None) -> TaskSpec:
    return TaskSpec(
        task_id=i.to_bytes(4, "big") * 5, job_id=b"j" * 4, function_id=b"f" * 8,
        name=f"t{i}", args=b"", deps=[], num_returns=1, resources={"CPU": 1.0},
        max_retries=0, retry_exceptions=False,
        parent_task_id=parent.task_id if parent is not None else None, owner=b"o" * 20,
    )


@attrs.define
class _Pair:
    """One worker process and the node's record of it, and the messages between."""

    state: SchedulerState
    info: WorkerInfo
    worker: WorkerProcess
    core: _Core
    started: list[bytes]
    executes_read: int = 0

    @classmethod
    def make(cls, cpus: float) -> _Pair:
        state = SchedulerState(directory=ObjectDirectory(), total={"CPU": cpus}, host=_Host())
        info = WorkerInfo(index=0, worker_id=b"w" * 20, conn=_Conn(10**6), state="idle",
                          in_idle=True)
        state.idle.append(info)
        worker = WorkerProcess(b"w" * 20, b"n" * 20, 0)
        core = _Core()
        worker.core = core  # type: ignore[assignment]
        started: list[bytes] = []
        worker._free = collections.deque()
        worker._new_executor = lambda: _Executor(started)  # type: ignore[method-assign]
        return cls(state, info, worker, core, started)

    def settle(self) -> None:
        """Deliver everything in flight, both ways, until nothing moves."""
        while True:
            self.state.dispatch()
            sent = self.info.conn.sent
            moved = False
            while self.executes_read < len(sent):
                m = sent[self.executes_read]
                self.executes_read += 1
                self.worker._h_execute(None, m)
                moved = True
            messages, self.core.sent[:] = list(self.core.sent), []
            for m in messages:
                moved = True
                if type(m) is w.Blocked:
                    self.state.blocked(self.info, m.task_id)
                elif type(m) is w.Unblocked:
                    self.state.unblocked(self.info, m.task_id)
                else:
                    assert type(m) is w.TaskDone
                    self.state.task_done(self.info, m.task_id, m.results, m.retry, m.pushed)
            if not moved:
                return

    def check(self) -> None:
        node_started = {t for t in self.info.tasks if t not in self.info.queued}
        worker_started = set(self.worker._running)
        assert node_started == worker_started
        assert worker_started <= set(self.started)
        assert not self.worker._pending or list(self.info.queued) == [
            item[0].task_id for item in self.worker._pending]
        running = [t for t, blocked in self.worker._running.items() if not blocked]
        held = self.state.total["CPU"] - self.state.available["CPU"]
        assert held == pytest.approx(len(running))


@pytest.mark.parametrize("seed", range(12))
def test_the_worker_and_the_node_agree_on_what_runs_after_every_step(seed):
    rng = random.Random(seed)
    pair = _Pair.make(cpus=1.0)
    specs: dict[bytes, TaskSpec] = {}
    n = 0
    blocked: set[bytes] = set()
    beside = 0  # steps with tasks queued beside a blocked one
    for _step in range(300):
        running = [t for t, b in pair.worker._running.items() if not b]
        moves = ["submit"] * (len(specs) < 40) + ["block"] * bool(running) \
            + ["end"] * bool(running) * 2 + ["unblock"] * bool(blocked)
        if not moves:
            break
        move = rng.choice(moves)
        if move == "submit":
            # A parent (a blocked task, else none) submits a few children at once.
            parent = specs.get(rng.choice(sorted(blocked))) if blocked else None
            for _ in range(rng.randint(1, 6)):
                n += 1
                spec = specs.setdefault(_spec(n, parent).task_id, _spec(n, parent))
                pair.state.submit(spec)
        elif move == "block":
            tid = rng.choice(running)
            blocked.add(tid)
            pair.worker._on_blocked(tid, True)
        elif move == "unblock":
            tid = rng.choice(sorted(blocked))
            blocked.discard(tid)
            pair.worker._on_blocked(tid, False)
        else:
            tid = rng.choice(running)
            spec = specs.pop(tid)
            done, _pushed_on = pair.worker._finish_here(
                None, tid, [(spec.return_ids()[0], False, b"x")], False)
            assert done
        pair.settle()
        pair.check()
        beside += bool(pair.info.queued and pair.info.blocked_tasks)
    assert beside
    # Everything ends: the unblocked, then the blocked once they unblock.
    while pair.worker._running:
        for tid, b in list(pair.worker._running.items()):
            if b:
                pair.worker._on_blocked(tid, False)
            else:
                spec = specs.pop(tid)
                pair.worker._finish_here(None, tid, [(spec.return_ids()[0], False, b"x")], False)
            pair.settle()
            pair.check()
    assert not pair.info.tasks and not pair.state.ready and not specs
    assert pair.state.available == {"CPU": 1.0}
