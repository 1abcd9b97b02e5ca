"""An actor as the node's actor manager knows it (`ActorRecord`), and which actors
live while handles to them do (`counted`).

Every part of the actor manager (creation, calls, names, holders, replay, the
cross-node proxies) works on these records in the manager's one table
(``ActorManager.actors``); the table, and so every record, outlives a restart of
the ``actor_manager`` component.
"""

from __future__ import annotations

import collections
import time

import attrs
import trio

from ...exceptions import ActorDiedError
from ...protocol._actors import ActorSpec
from ..worker_pool._actor_processes import ActorWorker
from ._calls import Call
from ._replay import CallLog

__all__ = ["ActorRecord", "counted"]


@attrs.define(eq=False)
class ActorRecord:
    """An actor as its node knows it: its spec, state, process, queued and
    in-flight calls, holders, resources, and (across nodes) where it lives."""

    spec: ActorSpec
    state: str = "pending"  # pending | alive | restarting | dead
    worker: ActorWorker | None = None
    incarnation: int = 0
    restarts: int = 0
    queues: dict[bytes, collections.deque] = attrs.Factory(dict)
    inflight: dict[bytes, Call] = attrs.Factory(dict)
    cause: str | None = None
    error_type: type = ActorDiedError
    kill_reason: str | None = None
    last_loss: str | None = None  # why its last process (or slot) was lost
    no_restart: bool = False
    drop_when_idle: bool = False
    # Who holds handles to it (worker ids; b"actor:" + id for an actor created with
    # one in its arguments): when the last lets go, it ends once idle (_actor_handle).
    holders: set[bytes] = attrs.Factory(set)
    held: dict[str, float] | None = None
    gpu_ids: tuple[int, ...] = ()  # the GPUs it holds (its CUDA_VISIBLE_DEVICES)
    deps_missing: int = 0
    dep_data: list | None = None
    ready: trio.Event = attrs.Factory(trio.Event)
    calls_done: int = 0
    created_at: float = attrs.Factory(time.time)
    # Across nodes (``_remote``): ``node``, the host's id when this record is a
    # proxy for an actor that lives there; ``authority``, this node created it and
    # restarts it if its host dies; ``origin``, on the host, the node that placed it
    # here; ``stub``, a proxy whose spec the host has not told yet.
    node: str | None = None
    authority: bool = False
    origin: str | None = None
    stub: bool = False
    log: CallLog | None = None  # an actor recovered by replay (``_replay``)

    def __attrs_post_init__(self) -> None:
        if self.spec.checkpoint_interval is not None:
            self.log = CallLog(self.spec.checkpoint_interval)

    def idle(self) -> bool:
        return not self.inflight and not any(self.queues.values())

    def died_error(self, extra: str = "") -> BaseException:
        return self.error_type(
            f"The actor {self.spec.describe()} died: {self.cause}{extra}"
        )


def counted(spec: ActorSpec) -> bool:
    """Whether the actor lives while handles to it do (``api._actor_handle``):
    unnamed, not detached, not under a user supervisor."""
    return spec.name is None and not spec.detached and spec.supervisor is None
