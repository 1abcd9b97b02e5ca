"""The queues of a node's local scheduler: the ready queues (tasks whose arguments
are ready, one FIFO per resource shape and runtime env) and the record of a task
waiting for its arguments (`WaitingTask`).

Dispatch looks at the head of each shape only, so a long queue of tasks that
cannot run now costs nothing per dispatch; the global scheduler reads the same
queues to see what this node could hand on.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ...protocol._messages import TaskSpec

__all__ = ["ReadyQueues", "WaitingTask", "env_key"]


def env_key(spec: TaskSpec) -> str:
    """The key of a task's runtime env ("" for none)."""
    env = spec.runtime_env
    return env.get("key", "") if env else ""


class ReadyQueues:
    """Tasks whose inputs are ready, one FIFO per resource shape (Ray's scheduling
    classes): placing work looks at each shape's head only, so a long queue that
    cannot run now costs nothing per dispatch."""

    def __init__(self) -> None:
        self.queues: dict[tuple, collections.deque[TaskSpec]] = {}
        self._len = 0

    @staticmethod
    def shape(spec: TaskSpec) -> tuple:
        key = tuple(sorted(spec.resources.items()))
        env = spec.runtime_env
        if env:  # one queue per runtime env too: each waits for its own workers
            return (*key, ("~runtime_env", env.get("key", "")))
        return key

    def append(self, spec: TaskSpec) -> None:
        key = self.shape(spec)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = collections.deque()
        q.append(spec)
        self._len += 1

    def remove_task(self, task_id: bytes) -> TaskSpec | None:
        for key, q in self.queues.items():
            for spec in q:
                if spec.task_id == task_id:
                    q.remove(spec)
                    self._len -= 1
                    if not q:
                        del self.queues[key]
                    return spec
        return None

    def popleft(self, key: tuple) -> TaskSpec:
        q = self.queues[key]
        spec = q.popleft()
        self._len -= 1
        if not q:
            del self.queues[key]
        return spec

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Any:
        for q in list(self.queues.values()):
            yield from q


class WaitingTask:
    """A task waiting for its arguments (``SchedulerState.waiting``): its spec and how
    many of its arguments are not ready yet.

    It is also the callback each of those arguments' directory entries holds
    (``ObjectDirectory.when_ready``): one small object per queued task where a
    ``[spec, missing]`` list and a closure over it, with its two cells, took about
    300 bytes (a million tasks queued behind one argument: 300 MB of the node).
    """

    __slots__ = ("missing", "on_ready", "owed", "spec")

    def __init__(self, spec: TaskSpec, missing: int,
                 on_ready: Callable[[WaitingTask], None], owed: bool = False) -> None:
        self.spec = spec
        #: arguments not ready yet
        self.missing = missing
        #: called with this record when an argument becomes ready
        self.on_ready = on_ready
        #: its GCS lineage record is to be written when it leaves the waiting (a
        #: task submitted here: ``SchedulerState.submit``); a task that never does
        #: (cancelled, its owner gone) never ran and is never written
        self.owed = owed

    def __call__(self, _entry: Any) -> None:
        self.on_ready(self)
