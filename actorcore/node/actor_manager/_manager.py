"""The node's actor manager: creation, placement, call forwarding, restarts, death.

One ``ActorManager`` per node, owned by ``NodeRuntime`` (like the scheduler state, its
table outlives a restart), driven synchronously from the node's message handlers; it
is also the ``actor_manager`` child of the node's tree (``run``: the record writer).

Life of an actor::

    ActorSpec ──► pending: argument refs resolved, resources taken (num_cpus, ...)
                  ──► a process: its own worker process (default), or a slot in the
                      node's shared actor process (``placement="shared"``), or a
                      child of a user supervisor (``supervisor=``)
              ──► alive once its constructor returned (``actor_ready``)
              ──► process died / killed with restarts left: restarting (constructor
                  again in a new process; in-flight calls resent while their
                  ``max_task_retries`` last, else failed with a message saying so)
              ──► dead: constructor raised (with its traceback), killed, process died
                  and no restarts left, owner exited, all handles dropped, supervisor
                  gave up. Every queued, in-flight and later call fails with an
                  ``ActorDiedError`` carrying that cause. Its name is free again.

Call forwarding (``_calls``) keeps the stateful edges: calls wait in one FIFO
per (actor, caller) until the actor is alive and their argument refs are ready. The
node also tells callers where an alive actor's process listens (``route``), so that
steady-state calls skip the node (``core_worker._direct_calls``); calls lost on such a link come
back here and take the same restart and retry rules.

The manager composes its parts, each owning one job over the same table of
records (``_record``): calls (``_calls``), names claimed in the GCS (``_names``),
handle holders (``_holders``), call logs and checkpoints of actors that replay
(``_call_logs``), actors across nodes (``_remote``), the table written behind to
the GCS (``_gcs_records``), the resources its actors hold (``_resources``), and what it
shows (``_introspect``). Its own code is in two halves: the lifecycle of its actors
(``_lifecycle``: creation, placement, processes, failure and death) and, here, the
messages it handles and the tree component.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

import transport

from ...protocol import _wire as w
from ...protocol._actors import EXIT_CAUSE, CallSpec
from ...protocol._ids import task_id_of
from ._call_logs import is_current
from ._lifecycle import ActorLifecycle
from ._record import ActorRecord

__all__ = ["ActorManager", "ActorRecord"]

logger = logging.getLogger("actorcore.actors")


class ActorManager(ActorLifecycle):
    """See the module docstring. ``node`` is the ``NodeRuntime``."""

    def register(self, dispatcher: transport.Dispatcher) -> None:
        """Route the actor messages of callers, actor workers and other nodes here."""
        d = dispatcher
        self.remote.register(d)
        d.register(w.ActorUp, self._h_up, oneway=True)
        d.register(w.ActorReady, self._h_ready, oneway=True)
        d.register(w.ActorDone, self._h_done, oneway=True)
        d.register(w.ActorDoneDirect, self._h_done_direct, oneway=True)
        self.logs.register(d)
        d.register(w.ActorExit, self._h_exit, oneway=True)
        d.register(w.CancelActorCall, self._h_cancel, oneway=True)
        self.holders.register(d)
        d.register(w.CreateNamedActor,
                   lambda conn, m, reply: self._create(conn, m.spec, reply, m.get_if_exists))
        d.register(w.LookupActor, self.names.lookup)
        d.register(w.RouteActor, lambda conn, m, reply: self._route(m.actor_id, reply))
        d.register(w.KillActor, self._h_kill)
        d.register(w.GetActorState, self._h_state)
        d.register(w.ListActors, lambda conn, m, reply: reply.send(
            [self.describe(r) for r in self.actors.values()]))
        d.register(w.ActorNames, self.names.list_names)
        d.register(w.StartSupervisor, self._h_supervisor)

    # -------------------------------------------------------------------- handlers

    def _h_up(self, conn: Any, m: w.ActorUp) -> None:
        aw = self.workers.get(m.worker_id)
        if aw is None:
            conn.send_nowait(w.ExitWorker())
            return
        aw.conn = conn
        aw.direct_address = m.direct_address
        self.processes.connected(aw)  # frees its start slot: the next queued one starts
        waiting, aw.waiting = aw.waiting, []
        for rec in waiting:
            if rec.worker is aw and rec.state != "dead":
                self.send_create(rec)

    def _h_ready(self, conn: Any, m: w.ActorReady) -> None:
        actor_id, incarnation, error = m.actor_id, m.incarnation, m.error
        rec = self.actors.get(actor_id)
        if rec is None or rec.incarnation != incarnation or rec.state == "dead":
            return
        if error is not None:
            self.end(rec, f"its constructor raised an exception:\n{error}")
            rec.ready.set()
            return
        rec.state = "alive"
        self.record(rec)
        rec.ready.set()
        self.calls.pump(rec)

    def _h_done(self, conn: Any, m: w.ActorDone) -> None:
        actor_id, task_id, results = m.actor_id, m.task_id, m.results
        rec = self.actors.get(actor_id)
        node = self.node
        node.objects.hold_store_objects(results, conn)
        if rec is None:
            return
        log = rec.log
        if log is not None and not is_current(rec, conn):
            return  # a report of a process we gave up on: its calls run again
        call = rec.inflight.pop(task_id, None)
        if call is None:
            return  # a reply from an incarnation we gave up on
        rec.calls_done += 1
        if log is not None and m.ran:
            # It ran: logged before its caller hears (``_replay``); its argument
            # refs stay pinned until a checkpoint covers it.
            entry = log.append(call.spec, call.dep_data, results,
                               pinned=bool(call.spec.deps) and not call.forwarded)
            if self.logs.durable:
                self.logs.writer.entry(actor_id, log, entry,
                                      lambda: self._finish_logged(rec, call.spec, results))
                return
        elif call.spec.deps and not call.forwarded:
            node.directory.unpin(call.spec.deps)
        self._finish_logged(rec, call.spec, results)

    def _finish_logged(self, rec: ActorRecord, spec: CallSpec, results: list) -> None:
        self.calls.finish(spec, results)
        if rec.drop_when_idle and rec.idle() and rec.state != "dead":
            self.end(rec, "all handles to it were dropped")

    def _h_exit(self, conn: Any, m: w.ActorExit) -> None:
        """`ActorExit`: the actor called ``exit_actor()``
        (or ran ``__ray_terminate__``): it is dead for good, never restarted (as Ray's
        intended exit); the calls still queued for it fail saying so."""
        rec = self.actors.get(m.actor_id)
        if rec is None or rec.state == "dead" or rec.incarnation != m.incarnation:
            return
        rec.no_restart = True
        sup = self.supervisors.get(rec.spec.supervisor) if rec.spec.supervisor else None
        self.end(rec, EXIT_CAUSE)
        if sup is not None:
            sup.remove_actor(rec)

    def _h_cancel(self, conn: Any, m: w.CancelActorCall) -> None:
        """``cancel(ref)`` of a call."""
        self.calls.cancel(m.actor_id, m.task_id)

    def _h_done_direct(self, conn: Any, m: w.ActorDoneDirect) -> None:
        """Large results of a direct call: the node holds them, like any result."""
        results = m.results
        self.node.objects.hold_store_objects(results, conn)
        mark = self.node.objects.lineage.actor_call
        for oid, _e, _d in results:
            mark(task_id_of(oid))
        self.node.clients.held_for_drivers(oid for oid, _e, _d in results)
        self.node.directory.put_many(results)

    def _route(self, actor_id: bytes, reply: Any) -> None:
        """Where callers can reach the actor directly: an `ActorRoute` once it is
        alive, ``None`` if it is dead (or cannot be reached directly)."""
        rec = self.actors.get(actor_id)

        def answer() -> bool:
            if rec is None or rec.state == "dead" or rec.node is not None or rec.stub:
                # Dead, or on another node: calls take the node path (forwarded).
                reply.send(None)
            elif rec.state == "alive" and rec.worker is not None:
                # Lightweight actors (a shared process) stay on the node path: one
                # link per caller and actor would cost more than it saves there.
                direct = rec.worker.direct_address if not rec.worker.shared else None
                reply.send(w.ActorRoute(direct, rec.incarnation) if direct else None)
            else:
                return False
            return True

        if answer():
            return

        async def later() -> None:
            assert rec is not None
            with trio.move_on_after(120):
                while not reply.done:
                    await rec.ready.wait()
                    if answer():
                        return
                    await trio.sleep(0.01)
            if not reply.done:
                reply.fail(TimeoutError(f"actor {actor_id.hex()} is not alive after 120 s"))

        self._spawn_task(later)

    async def _remote_state(self, rec: ActorRecord, reply: Any) -> None:
        """``actor_state`` of an actor on another node: as its host sees it."""
        d = self.describe(rec)
        assert rec.node is not None
        try:
            hosted = await self.node.peers.request(
                rec.node, w.RemoteActorSpec(rec.spec.actor_id), timeout=10.0)
            d.update(state=hosted.state, death_cause=hosted.cause)
        except Exception as exc:
            logger.info("asking node %s for actor %s failed: %s", rec.node[:12],
                        rec.spec.describe(), exc)
        reply.send(d)

    def _h_kill(self, conn: Any, m: w.KillActor, reply: Any) -> None:
        self.kill(m.actor_id, m.no_restart)
        reply.send(None)

    def _h_state(self, conn: Any, m: w.GetActorState, reply: Any) -> None:
        rec = self.actors.get(m.actor_id)
        if rec is None:
            raise ValueError(f"unknown actor {m.actor_id.hex()}")
        if rec.node is not None and rec.state != "dead":
            self._spawn_task(self._remote_state, rec, reply)
            return
        reply.send(self.describe(rec))

    def _h_supervisor(self, conn: Any, m: w.StartSupervisor, reply: Any) -> None:
        from ._user_supervision import start_user_supervisor

        start_user_supervisor(self, reply, m.name, m.strategy, m.max_restarts, m.max_seconds)

    # ------------------------------------------------------------------ component

    # The ``actor_manager`` child of the node's tree is this object: the node owns
    # it (its actors, names, queues and processes outlive a restart of the child,
    # as the scheduler's state outlives ``local_scheduler``'s), and the child's
    # ``run`` is its long-lived loop: the record writer's (``_gcs_records``).

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await self.records.run(task_status=task_status)

    def snapshot(self) -> dict:
        stats = self.statistics()
        return {"kind": "actor_manager", "alive": stats.alive, "pending": stats.pending,
                "restarting": stats.restarting, "dead": stats.dead,
                "records_unwritten": self.records.unwritten}
