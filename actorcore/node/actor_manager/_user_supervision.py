"""User actors under the kernel's supervisors (beyond Ray): the node's side.

::

    sup = actorcore.supervisor("pipeline", strategy="one_for_all", max_restarts=3,
                               max_seconds=10)
    a = Stage.options(supervisor=sup).remote(1)
    b = Stage.options(supervisor=sup).remote(2)

``supervisor(...)`` (``api._supervisor``, in the caller) asks the node, and
``start_user_supervisor`` here starts a kernel ``Supervisor`` inside the node's tree (a
``transient`` child of ``node``, kind ``user_supervisor``). If it crashes (e.g.
``faults.crash("<name>")``) the node restarts it, and the fresh supervisor
re-creates its actors in order, as an Erlang parent restarts a child supervisor;
when it gives up (restart intensity exceeded) it ends normally, so that never
counts against the node's own restart intensity, and it leaves the tree. Each actor created with
``supervisor=`` is a ``transient`` child service of it: the service starts the
actor's own worker process, reports ready once the constructor returned, and crashes
when the process dies. So the kernel's strategies apply across processes exactly as
they do to system components: ``one_for_one`` re-creates the dead actor,
``one_for_all`` stops (kills the processes of) its siblings and re-creates them all
in order, ``rest_for_one`` those created after it — each re-running its constructor
in a fresh process — within the restart intensity. Calls keep queueing while an actor
restarts (resent per ``max_task_retries`` if in flight). When the intensity is
exceeded the supervisor gives up: every actor under it dies with an
``ActorDiedError`` saying so. The subtree shows in ``actorcore tree``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from ...kernel import ChildSpec, Supervisor, SupervisorFailed
from ._introspect import actor_entry

__all__ = ["start_user_supervisor"]

logger = logging.getLogger("actorcore.actors")


class ProcessDied(Exception):
    """A supervised actor's process died (its service's crash)."""


class SupervisedActor:
    """The child service of one supervised actor (one incarnation per run)."""

    def __init__(self, manager: Any, rec: Any) -> None:
        self.manager = manager
        self.rec = rec
        self.host: Any = None

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        manager, rec = self.manager, self.rec
        if rec.state == "dead":
            return
        host = self.host = manager.spawn_worker(shared=False)
        manager.assign(rec, host)
        ready = rec.ready
        try:
            await ready.wait()
            if rec.state == "dead":
                return  # its constructor raised: a normal end, not restarted
            task_status.started(host.pid)
            await host.exited.wait()
            if rec.state == "dead":
                return
            raise ProcessDied(host.exit_reason or f"its worker process (pid {host.pid}) died")
        finally:
            if not host.exited.is_set():
                manager.kill_worker(host)
                # Wait for the exit to be handled (the actor is then "restarting" and
                # its calls in flight are queued again) before a restart assigns the
                # actor to a new process: an exit noticed after that would be taken
                # for a stale process's and those calls would never be resent.
                if not manager.node.shutdown_requested.is_set():  # else nobody watches
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await host.exited.wait()

    def snapshot(self) -> dict:
        rec = self.rec
        entry = actor_entry(rec, self.manager.node.node_hex)
        return {k: entry[k] for k in ("kind", "class", "actor_name", "actor_id")} | {
            "pid": self.host.pid if self.host is not None else None
        }


class UserSupervisor:
    """The node's child running one user supervisor (a kernel ``Supervisor``)."""

    def __init__(self, manager: Any, name: str, strategy: Any, max_restarts: int,
                 max_seconds: float) -> None:
        self.manager = manager
        self.name = name
        self._options = {"strategy": strategy, "max_restarts": max_restarts,
                         "max_seconds": max_seconds}
        self.sup = self._fresh([])
        self.members: dict[str, Any] = {}  # child name -> actor record
        self.failure: str | None = None
        self.runs = 0

    def _fresh(self, children: list[ChildSpec]) -> Supervisor:
        return Supervisor(self.name, children, kind="user_supervisor",
                          node_id=self.manager.node.node_hex, **self._options)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs > 1:
            # Restarted after a crash: a kernel supervisor runs once, so a fresh one
            # re-creates the actors that are still ours, in their order.
            live = [(n, r) for n, r in self.members.items() if r.state != "dead"]
            self.sup = self._fresh([self._spec(n, r) for n, r in live])
        try:
            await self.sup.run(task_status=task_status)
        except SupervisorFailed as exc:
            # It gave up: its actors die saying so; it ends normally (a transient child
            # is then not restarted) and leaves the node's tree.
            self.failure = f"its supervisor {self.name!r} gave up: {exc}"
            self._stopped_for_good(self.failure)

            async def leave_tree() -> None:
                try:
                    await self.manager.node.supervisor.terminate_child(self.name)
                except Exception as exc:  # already removed, or the node stops
                    logger.debug("removing supervisor %r from the tree: %s", self.name, exc)

            self.manager.node.spawn(leave_tree)
        # Cancelled: a crash (the node restarts us, and we re-create the actors) or
        # the node's shutdown (everything stops): the actors stay ours either way.

    def _stopped_for_good(self, cause: str) -> None:
        self.manager.supervisors.pop(self.name, None)
        for rec in list(self.members.values()):
            self.manager.end(rec, cause)

    def snapshot(self) -> dict:
        snap = self.sup.snapshot()
        return {"kind": "user_supervisor", "strategy": snap["strategy"],
                "children": snap["children"]}

    def child_name(self, rec: Any) -> str:
        return rec.spec.name or f"{rec.spec.meta.class_name}_{rec.spec.short_id()}"

    def _spec(self, name: str, rec: Any) -> ChildSpec:
        return ChildSpec(name, lambda: SupervisedActor(self.manager, rec), restart="transient",
                         kind="actor")

    def add_actor(self, rec: Any) -> None:
        name = self.child_name(rec)
        self.members[name] = rec
        spec = self._spec(name, rec)

        async def start() -> None:
            try:
                await self.sup.start_child(spec)
            except Exception as exc:
                if rec.state != "dead":
                    self.manager.end(rec, f"it could not be started under supervisor "
                                           f"{self.name!r}: {exc}")

        self.manager.node.spawn(start)

    def remove_actor(self, rec: Any) -> None:
        name = self.child_name(rec)
        self.members.pop(name, None)

        async def stop() -> None:
            try:
                await self.sup.terminate_child(name)
            except Exception as exc:  # already gone
                logger.debug("terminate %s: %s", name, exc)

        self.manager.node.spawn(stop)


def start_user_supervisor(manager: Any, reply: Any, name: str, strategy: str,
                          max_restarts: int, max_seconds: float) -> None:
    """The node side of ``supervisor(...)``: start it under ``node``, then reply."""
    if name in manager.supervisors:
        reply.fail(ValueError(f"a supervisor named {name!r} already exists"))
        return
    us = UserSupervisor(manager, name, strategy, max_restarts, max_seconds)
    manager.supervisors[name] = us

    async def start() -> None:
        try:
            await manager.node.supervisor.start_child(
                ChildSpec(name, lambda: us, restart="transient", kind="user_supervisor",
                          shutdown_timeout=math.inf)
            )
        except Exception as exc:
            manager.supervisors.pop(name, None)
            reply.fail(ValueError(f"could not start supervisor {name!r}: {exc}"))
            return
        reply.send(None)

    manager.node.spawn(start)
