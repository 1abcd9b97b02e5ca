"""The life of the node's actors over its table: creation and placement, their
processes, failure, restarts and death, and the records written to the GCS.

`ActorLifecycle` is the model half of the `ActorManager` (``_manager``, whose
docstring tells an actor's life): the operations the node, the manager's parts and
its message handlers call. The handlers and the tree component are ``_manager``'s.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import trio

import transport

from ...core_worker._store_link import STORE
from ...exceptions import ActorOutOfMemoryError, ActorUnschedulableError
from ...protocol import _serialization
from ...protocol import _wire as w
from ...protocol._actors import ActorSpec, CallSpec
from ..placement_groups import group_of
from ..worker_pool._actor_processes import ActorProcesses, ActorWorker, default_max_starting
from ._call_logs import CallLogs
from ._calls import ActorCalls
from ._gcs_records import RecordWriter
from ._holders import Holders
from ._introspect import TREE_LIMIT, ActorManagerStatistics, describe, worker_snapshots
from ._names import ActorNames
from ._record import ActorRecord, counted
from ._remote import RemoteActors
from ._resources import ActorResources

__all__ = ["SHARED_CAPACITY", "ActorLifecycle"]

logger = logging.getLogger("actorcore.actors")

#: Actors hosted by one shared actor process before another one is started.
SHARED_CAPACITY = 20000


class ActorLifecycle:
    """The node's actors and what happens to them (see the module docstring);
    ``node`` is the ``NodeRuntime``. `ActorManager` is the class to use."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.actors: dict[bytes, ActorRecord] = {}
        self.calls = ActorCalls(node, self.actors, end=self.end, kill_worker=self.kill_worker)
        self.remote = RemoteActors(self)
        self.calls.remote = self.remote
        self.processes = ActorProcesses(
            node, self._worker_exited, default_max_starting(), on_refused=self._worker_refused
        )
        self.workers: dict[bytes, ActorWorker] = self.processes.workers
        self.names = ActorNames(self)
        self.holders = Holders(self)  # who holds handles to which actor
        self.job_drivers: dict[bytes, bytes] = {}
        self.shared_hosts: list[ActorWorker] = []
        self.resources = ActorResources(node, self._place)
        self.records = RecordWriter(node)  # the actor table, written behind to the GCS
        self.logs = CallLogs(self)  # the call logs and checkpoints of actors that replay
        self.supervisors: dict[str, Any] = {}
        self.created_total = 0
        self.died_total = 0
        self.restarts_total = 0
        node.pool.extra_snapshots = self.worker_snapshots

    # ------------------------------------------------------------------ creation

    def submit(self, conn: Any, spec: Any) -> None:
        """An ``ActorSpec`` or ``CallSpec`` from a ``submit`` batch."""
        if type(spec) is CallSpec:
            self.calls.submit(spec)
        elif type(spec) is ActorSpec:
            self._create(conn, spec, None, False)
        else:
            logger.warning("unknown spec in submit: %r", type(spec))

    def _create(self, conn: Any, spec: ActorSpec, reply: Any, get_if_exists: bool) -> None:
        if spec.actor_id in self.actors:
            if reply is not None:
                reply.send(None)
            return
        client = self.node.clients.by_conn.get(conn)
        if client is not None and client.role == "driver":
            self.job_drivers.setdefault(spec.job_id, client.worker_id)
        if spec.name is not None and not self.names.free(spec, reply, get_if_exists):
            return
        rec = ActorRecord(spec)
        self.actors[spec.actor_id] = rec
        self.created_total += 1
        if counted(spec):
            rec.holders.add(spec.owner)
        for aid in spec.handles:  # held for as long as this new actor lives
            held = self.actors.get(aid)
            if held is not None and held.state != "dead":
                held.holders.add(b"actor:" + spec.actor_id)
        if spec.name is not None:
            self.names.take(rec, reply)  # answers once the name is claimed
        elif reply is not None:
            reply.send(None)
        group_error = self.node.groups.actor_verdict(spec.resources) \
            if group_of(spec.resources) is not None else None
        if group_error is not None:  # its placement group was removed (or never was)
            self.record(rec)
            rec.error_type = ActorUnschedulableError
            self.end(rec, f"its placement group cannot hold it: {group_error}")
            return
        deps = spec.deps
        if deps:
            self.node.directory.pin(deps)
            rec.deps_missing = len(deps)
            for oid in deps:
                self.node.directory.when_ready(oid, lambda _e, rec=rec: self._ctor_dep_ready(rec))
            if rec.deps_missing:
                self.node.dep_watch.watch(deps)
            self.record(rec)
        else:
            self.admit(rec)

    def admit(self, rec: ActorRecord) -> None:
        """Its constructor's arguments are ready: place it (``_remote``), and if it
        stays here, take its resources and start it."""
        if self.remote.place(rec):
            return
        rec.node = None
        if rec.state == "pending":
            self.record(rec)
        self.resources.acquire(rec)

    def create_forwarded(self, spec: ActorSpec, restarts: int, origin: str,
                         dep_data: list, *, start: bool = True) -> ActorRecord | None:
        """Another node placed this actor here (``_remote``): create it, with the
        values of its constructor's refs as that node resolved them. ``start``
        False: its large arguments are still being copied here; ``start_forwarded``
        starts it (calls queue on the record meanwhile). None: a duplicate."""
        old = self.actors.get(spec.actor_id)
        if old is not None and old.state != "dead" and old.node is None:
            return None  # a duplicate
        rec = ActorRecord(spec, restarts=restarts, origin=origin,
                          dep_data=list(dep_data) if spec.deps else None)
        if restarts:
            rec.state = "restarting"
        if old is not None:  # a proxy of ours, now the actor itself (a restart here)
            self.adopt_calls(old, rec)
        self.actors[spec.actor_id] = rec
        self.created_total += 1
        if counted(spec):
            rec.holders.add(spec.owner)
        if spec.name is not None:
            self.names.take(rec, None)
        self.record(rec)
        if start:
            self.resources.acquire(rec)
        return rec

    def start_forwarded(self, rec: ActorRecord) -> None:
        """The constructor arguments of a forwarded creation are here: start it."""
        if rec.state != "dead":
            self.resources.acquire(rec)

    def adopt_calls(self, old: ActorRecord, new: ActorRecord) -> None:
        """The calls queued on the proxy ``old`` go to ``new`` (the same actor)."""
        for owner, q in old.queues.items():
            new.queues.setdefault(owner, collections.deque()).extend(q)
        old.queues.clear()
        for call in old.inflight.values():
            new.queues.setdefault(call.spec.owner, collections.deque()).appendleft(call)
        old.inflight.clear()
        new.holders |= old.holders
        self.calls.pump(new)

    def proxy_record(self, actor_id: bytes) -> ActorRecord:
        """A proxy for an actor this node has not seen (``_remote.locate``)."""
        from ...protocol._actors import ClassMeta

        spec = ActorSpec(
            actor_id=actor_id, job_id=b"", class_id=b"",
            meta=ClassMeta(class_name="Actor", module=None, methods={}, is_async=False),
            args=b"", deps=[], resources={}, max_restarts=0, max_task_retries=0,
            max_concurrency=1, async_backend="asyncio", name=None, namespace="",
            detached=True, placement="process", supervisor=None, restart="permanent",
            owner=b"")
        rec = ActorRecord(spec, stub=True)
        self.actors[actor_id] = rec
        return rec

    def proxy_done(self, actor_id: bytes, task_id: bytes, results: list, host: str) -> None:
        """Results of a call this node forwarded to the actor's host (``host``)."""
        rec = self.actors.get(actor_id)
        if rec is None:
            return
        call = rec.inflight.pop(task_id, None)
        if call is None:
            return  # a call resent elsewhere meanwhile (its host died)
        rec.calls_done += 1
        if call.spec.deps:
            self.node.directory.unpin(call.spec.deps)
        if any(d == STORE and not err for _oid, err, d in results):
            # A large result is in the host's store: pulled here, then delivered
            # (the host keeps its copy until the owner frees the object).
            self.node.remote.results_arrived(call.spec.owner, host, results)
            return
        self.calls.finish(call.spec, results)

    def _ctor_dep_ready(self, rec: ActorRecord) -> None:
        rec.deps_missing -= 1
        if rec.deps_missing > 0 or rec.state == "dead":
            return
        entries = self.node.directory.entries
        for oid in rec.spec.deps:
            e = entries.get(oid)
            if e is not None and e.is_error:
                err = _serialization.loads(e.data)
                self.end(rec, f"an argument of its constructor failed:\n{err}")
                return
        rec.dep_data = [(entries[o].is_error, entries[o].data) for o in rec.spec.deps]
        self.admit(rec)

    def _place(self, rec: ActorRecord) -> None:
        if rec.spec.supervisor is not None:
            sup = self.supervisors.get(rec.spec.supervisor)
            if sup is None:
                self.end(rec, f"its supervisor {rec.spec.supervisor!r} does not exist "
                               f"(create it with actorcore.supervisor(...) first)")
                return
            sup.add_actor(rec)
            return
        if rec.spec.placement == "shared":
            host = next((h for h in self.shared_hosts
                         if len(h.actors) + len(h.waiting) < SHARED_CAPACITY), None)
            if host is None:
                host = self.spawn_worker(shared=True)
                self.shared_hosts.append(host)
        else:
            host = self.spawn_worker(shared=False)
        self.assign(rec, host)

    def assign(self, rec: ActorRecord, host: ActorWorker) -> None:
        """Create ``rec`` in ``host`` (now, or as soon as the process is up)."""
        rec.worker = host
        rec.ready = trio.Event()
        host.actors[rec.spec.actor_id] = rec
        if host.conn is None:
            host.waiting.append(rec)
        else:
            self.send_create(rec)

    def send_create(self, rec: ActorRecord) -> None:
        host = rec.worker
        assert host is not None and host.conn is not None
        log = rec.log
        if (log is not None and log.checkpoint is None and not log.entries
                and not log.fetched and rec.restarts
                and self.node.view.multi and self.node.control.backend == "gcs"):
            # Restarted on this node after its host node died (``_remote``): its
            # checkpoint and the calls logged since are in the GCS (``_replay``).
            log.fetched = True
            self._spawn_task(self.logs.fetch_checkpoint, rec, host)
            return
        rec.incarnation += 1
        record = self.node.functions.get(rec.spec.class_id)
        recovery = log.recovery() if log is not None else None
        try:
            host.conn.send_nowait(
                w.CreateActor(rec.spec, rec.incarnation, rec.dep_data or [], record,
                              tuple(rec.gpu_ids), recovery)
            )
        except Exception as exc:  # its link just died: the exit handler decides
            logger.info("sending a creation to worker_%d failed: %s", host.index, exc)

    # ------------------------------------------------------------------ processes

    def spawn_worker(self, *, shared: bool) -> ActorWorker:
        """Start a process for actors (its exit comes back to ``_worker_exited``)."""
        return self.processes.spawn(shared=shared)

    def kill_worker(self, aw: ActorWorker) -> None:
        self.processes.kill(aw)

    async def kill_all(self) -> None:
        await self.processes.kill_all()

    def _worker_exited(self, aw: ActorWorker, reason: str) -> None:
        reason = aw.exit_reason or reason
        aw.exited.set()
        self.workers.pop(aw.worker_id, None)
        if aw in self.shared_hosts:
            self.shared_hosts.remove(aw)
        for rec in list(aw.actors.values()) + aw.waiting:
            if rec.worker is aw:
                self._lost(rec, reason)
        aw.actors.clear()
        aw.waiting.clear()

    def _worker_refused(self, aw: ActorWorker, cause: str) -> None:
        """``aw`` was not started for want of memory (``worker_pool._memory``): its
        actors die with `ActorOutOfMemoryError`, not restarted (a restart would
        only be refused again; their constructors never ran)."""
        aw.exited.set()
        self.workers.pop(aw.worker_id, None)
        if aw in self.shared_hosts:
            self.shared_hosts.remove(aw)
        for rec in list(aw.actors.values()) + aw.waiting:
            if rec.worker is aw and rec.state != "dead":
                rec.error_type = ActorOutOfMemoryError
                self.end(rec, cause)
        aw.actors.clear()
        aw.waiting.clear()

    def client_gone(self, client: Any, how: str = "exited") -> None:
        """A worker disconnected, or a driver is gone for good (the node decides that,
        see ``NodeRuntime._driver_departed``): end the actors it owned (fate sharing),
        never the detached ones."""
        wid = client.worker_id
        if wid is None:
            return
        aw = self.workers.get(wid)
        if aw is not None:
            aw.conn = None
            self.kill_worker(aw)
        what = "driver" if client.role == "driver" else "worker"
        for rec in list(self.actors.values()):
            if rec.state == "dead" or rec.spec.detached:
                continue
            if rec.spec.owner == wid:
                self.end(rec, f"its owner (the {what} with pid {client.pid}) {how}")
            elif self.job_drivers.get(rec.spec.job_id) == wid:
                self.end(rec, f"its job's driver (pid {client.pid}) {how}")
            elif wid in rec.holders:
                self.holders.unhold(rec, wid)

    # ------------------------------------------------------------- failure and death

    def kill(self, actor_id: bytes, no_restart: bool) -> None:
        rec = self.actors.get(actor_id)
        if rec is None:
            raise ValueError(f"kill(): unknown actor {actor_id.hex()}")
        if rec.state == "dead":
            return
        if rec.node is not None:  # it lives on another node: its host decides
            self.remote.send(rec, w.RemoteActorKill(actor_id, no_restart))
            return
        reason = "it was killed with actorcore.kill()"
        spec = rec.spec
        if spec.supervisor is not None:
            sup = self.supervisors.get(spec.supervisor)
            if no_restart or sup is None:
                self.end(rec, reason)
                if sup is not None:
                    sup.remove_actor(rec)
            elif rec.worker is not None:
                self.kill_worker(rec.worker)  # its supervisor restarts it
                self._lost(rec, reason)
            return
        if no_restart or not self.can_restart(rec):
            self.end(rec, reason + self.limits(rec) if not no_restart else reason)
            return
        # Restart now: later calls queue for the new incarnation instead of going to
        # the dying process; the old process's exit is then no news.
        self._stop_in_host(rec)
        self._lost(rec, reason)

    def crash_actor(self, rec: ActorRecord) -> str:
        """Fault injection (``faults.crash`` of an actor's tree path): the actor fails
        as if its process crashed. A dedicated process is SIGKILLed (its exit then
        takes the usual path: a restart by ``max_restarts`` or its supervisor, else
        death with ``ActorDiedError``); in a shared actor process only this actor
        is stopped and lost, by the same rules."""
        host = rec.worker
        what = rec.spec.describe()
        if rec.state == "dead":
            raise ValueError(f"crash(): the actor {what} is dead already")
        if host is None or host.process is None:
            raise ValueError(f"crash(): the actor {what} is {rec.state}, not running yet")
        if not host.shared:
            self.kill_worker(host)
            return f"killed the process of actor {what} (pid {host.pid})"
        self._stop_in_host(rec)
        self._lost(rec, f"it crashed (a crash was injected into it in worker_{host.index})")
        return f"crashed actor {what} in worker_{host.index} (pid {host.pid})"

    def _stop_in_host(self, rec: ActorRecord) -> None:
        host = rec.worker
        if host is None:
            return
        host.actors.pop(rec.spec.actor_id, None)
        if rec in host.waiting:
            host.waiting.remove(rec)
        if host.shared:
            if host.conn is not None:
                try:
                    host.conn.send_nowait(w.StopActor(rec.spec.actor_id))
                except transport.TransportError:
                    pass
        else:
            self.kill_worker(host)
        rec.worker = None

    def can_restart(self, rec: ActorRecord) -> bool:
        mr = rec.spec.max_restarts
        return not rec.no_restart and (mr == -1 or rec.restarts < mr)

    def limits(self, rec: ActorRecord) -> str:
        mr = rec.spec.max_restarts
        if mr == 0:
            return " (max_restarts=0: it is not restarted)"
        return f" (restarted {rec.restarts} time(s); max_restarts={mr} allows no more)"

    def _lost(self, rec: ActorRecord, reason: str) -> None:
        """The actor's process (or slot) is gone. Restart it, or it is dead."""
        if rec.state == "dead":
            return
        if rec.kill_reason is not None:
            reason, rec.kill_reason = rec.kill_reason, None
        rec.worker = None
        supervised = rec.spec.supervisor is not None and rec.spec.supervisor in self.supervisors
        rec.last_loss = reason
        if supervised or self.can_restart(rec):
            rec.restarts += 1
            self.restarts_total += 1
            rec.state = "restarting"
            self.calls.requeue_inflight(rec, reason)
            self.record(rec)
            if not supervised:
                self._place(rec)
            return
        self.end(rec, reason + self.limits(rec))

    def end_where(self, match: Any, error_type: type, cause: str) -> int:
        """Every live actor whose spec ``match``es dies for good with ``error_type``
        (a removed placement group's actors); returns how many."""
        doomed = [r for r in self.actors.values() if r.state != "dead" and match(r.spec)]
        for rec in doomed:
            rec.error_type = error_type
            self.end(rec, cause)
        return len(doomed)

    def end(self, rec: ActorRecord, cause: str, *, notify: bool = True) -> None:
        """``rec`` is dead for good: fail its calls, free its name, process, resources.

        For a proxy (``rec.node``) its host is told to end it too (unless
        ``notify`` is false: the news came from there, or the host is dead); a host
        tells the node that placed the actor here."""
        if rec.state == "dead":
            return
        if notify and rec.node is not None:
            self.remote.send(rec, w.RemoteActorEnd(rec.spec.actor_id, cause))
        elif rec.origin is not None:
            try:
                self.node.peers.send(rec.origin, w.RemoteActorDied(rec.spec.actor_id, cause))
            except Exception as exc:
                logger.info("telling node %s that actor %s died failed: %s",
                            rec.origin[:12], rec.spec.describe(), exc)
        self.remote.forget(rec)
        rec.state = "dead"
        rec.cause = cause
        self.died_total += 1
        err = rec.died_error()
        for call in list(rec.inflight.values()):
            self.calls.fail_call(call, err)
        rec.inflight.clear()
        for q in rec.queues.values():
            for call in q:
                self.calls.fail_call(call, err)
        rec.queues.clear()
        if (rec.spec.deps and rec.deps_missing == 0 and rec.dep_data is not None
                and rec.origin is None):  # a forwarded creation pinned nothing here
            self.node.directory.unpin(rec.spec.deps)
            rec.dep_data = None
        if rec.log is not None:
            rec.log.answered.clear()
            unpin = rec.log.clear()
            if unpin:
                self.node.directory.unpin(unpin)
            if rec.log.checkpoint is not None or rec.log.in_gcs:
                rec.log.checkpoint = None
                rec.log.in_gcs = False
                if self.node.control.backend == "gcs" and rec.node is None:
                    self.logs.forget(rec.spec)
        self._stop_in_host(rec)
        self.resources.release(rec)
        spec = rec.spec
        if spec.name is not None:
            self.names.release(spec)
        rec.ready.set()
        self.record(rec)
        logger.info("actor %s died: %s", spec.describe(), cause.splitlines()[0])
        for aid in spec.handles:  # the handles its constructor was given
            other = self.actors.get(aid)
            if other is not None:
                self.holders.unhold(other, b"actor:" + spec.actor_id)

    # ------------------------------------------------------------- introspection

    def describe(self, rec: ActorRecord) -> dict:
        """The actor as ``actor_state`` and the GCS actor table show it."""
        return describe(rec, self.node.node_hex, self.node.tcp_address)

    def worker_snapshots(self) -> list[dict]:
        """Actor processes as children of ``worker_pool`` in the tree."""
        return worker_snapshots(self.workers.values(), self.node.node_hex)

    def statistics(self) -> ActorManagerStatistics:
        states = collections.Counter(r.state for r in self.actors.values()
                                     if r.node is None and not r.stub)
        procs = self.processes
        return ActorManagerStatistics(
            pending=states["pending"], alive=states["alive"], restarting=states["restarting"],
            dead=states["dead"], created=self.created_total, died=self.died_total,
            restarts=self.restarts_total, processes=len(self.workers),
            processes_starting=procs.starting, processes_queued=procs.queued,
            max_starting=procs.max_starting, starting_peak=procs.starting_peak,
            queued_peak=procs.queued_peak, unplaced=len(self.remote.infeasible),
            unplaced_warnings=tuple(self.remote.warnings.values())[:TREE_LIMIT],
            remote=sum(1 for r in self.actors.values()
                       if r.node is not None and r.state != "dead"),
            memory_refused=procs.memory.refused, memory_deferred=procs.memory.deferred)

    # -------------------------------------------------------------------- plumbing

    def _spawn_task(self, fn: Any, *args: Any) -> None:
        self.node.spawn(fn, *args)

    async def republish(self) -> tuple[int, int]:
        """The GCS restarted empty: write every actor's record, claim the names of
        the live named actors and write their checkpoints again (this node's tables
        are the truth for its actors). Returns (records, names)."""
        for rec in self.actors.values():
            self.record(rec)
        named = await self.names.republish()
        if self.node.control.backend == "gcs":
            self.logs.republish()
        return len(self.actors), named

    def record(self, rec: ActorRecord, *, force: bool = False) -> None:
        """Write the actor's record to the GCS actors table (behind, batched by
        ``run``), by its host only (``force``: by its authority, its host died)."""
        if self.node.control.backend != "gcs" or (rec.node is not None and not force):
            return
        if rec.stub:
            return
        d = self.describe(rec)
        d["state"] = rec.state
        self.records.write(rec.spec.actor_id, d)
