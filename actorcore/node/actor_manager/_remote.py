"""Actors across nodes: placement, forwarding, and the death of the node they ran on.

Every actor has one *host* node, whose actor manager owns its record and process
exactly as on a single node. Every other node that deals with it — the node of
the process that created it, the nodes of its callers — keeps a *proxy*: an
``ActorRecord`` with ``node`` set to the host's id, whose per-caller FIFOs hold the
calls until their argument refs are ready here and then forward them, in order,
over the one ordered link to the host (``NodePeers``). The host queues them as its
own, runs them, and sends their results back to the node they came from, which
stores them in its directory (it is the owner's node) and delivers them to the
owner. So the stateful edges hold across nodes: one caller's calls leave its node
in order, travel one ordered link, and enter one FIFO at the host.

Node-to-node messages (one-way unless said)::

    RemoteActorCreate(ActorSpec, restarts, origin, dep_data, class_record)
    RemoteActorCall(CallSpec, dep_data, origin)
    RemoteActorDone(actor_id, task_id, results, host)   host -> calling node
    RemoteActorDied(actor_id, cause)                    host -> creating node
    RemoteActorEnd(actor_id, cause)                     creating node -> host
    RemoteActorKill(actor_id, no_restart)
    RemoteActorHold | RemoteActorDrop(actor_id, holder)
    RemoteActorCancel(actor_id, task_id)
    RemoteActorSpec(actor_id)  request -> HostedActor(spec, state, cause)

Placement. A creation is offered to this node first (``keep_local``); otherwise
``choose_node`` names a node and the creation is forwarded there (this node keeps
the proxy and becomes the actor's *authority*). No node can host it: it waits,
with a warning, until a node that can joins (as in Ray); a hard NodeAffinity to a
node that cannot is an ``ActorUnschedulableError`` at once.

Death of a host node. The authority (the creating node, which holds the spec)
decides: with restarts left the actor is placed again by the same policy (calls in
flight are resent while ``max_task_retries`` lasts), else it is dead with a cause
that says its node died, and the authority writes that record to the GCS (the host
cannot). Other nodes' proxies wait for the actors table to name a live new host,
or the death, and resend or fail their calls the same way. An actor whose creator
lived on the dead node died with its owner (fate sharing) unless detached.

Large values. Arguments (of calls and constructors) and results travel as the
``STORE`` marker: the receiving node pulls the value from the sender's store
(``node.transfers.pull``, see "large arguments at the host" below for the host's
side; a proxy hands large results to ``object_manager``'s ``results_arrived``, as
for a forwarded task). The node that keeps a value tells the other to drop its copy
when the owner frees it (``n_free`` to the nodes recorded by ``copied_to``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ...core_worker._store_link import STORE
from ...exceptions import ActorUnschedulableError, ObjectLostError, ObjectStoreFullError
from ...protocol import _wire as w
from .._peers import PeerUnavailable
from ..global_scheduler._placement import SpreadState, choose_node, keep_local
from ..local_scheduler._ledger import fits

__all__ = ["RemoteActors"]

logger = logging.getLogger("actorcore.actors")

#: Seconds between reads of the actors table while a proxy waits for a new host.
RELOCATE_POLL = 0.1
#: How long a proxy waits for the actors table to say where its actor went.
RELOCATE_TIMEOUT = 120.0


class RemoteActors:
    """The cross-node part of ``ActorManager`` (see the module docstring)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.node = manager.node
        self.spread = SpreadState()
        # Actors no live node can host yet, in arrival order: placed again when a
        # node joins.
        self.infeasible: dict[bytes, Any] = {}
        self.warnings: dict[bytes, str] = {}
        # Forwarded calls being run here: task id -> the node that sent them.
        self.origins: dict[bytes, str] = {}
        view = self.node.view
        view.on_node_dead(self._node_dead)
        view.on_node_joined(lambda _status: self._retry_infeasible())

    def register(self, dispatcher: Any) -> None:
        """Route the actor messages of other nodes to this component."""
        d = dispatcher
        d.register(w.RemoteActorCreate, self._h_create, oneway=True)
        d.register(w.RemoteActorCall, self._h_call, oneway=True)
        d.register(w.RemoteActorDone, self._h_done, oneway=True)
        d.register(w.RemoteActorDied, self._h_died, oneway=True)
        d.register(w.RemoteActorEnd, self._h_end, oneway=True)
        d.register(w.RemoteActorKill, self._h_kill, oneway=True)
        d.register(w.RemoteActorHold, self._h_hold, oneway=True)
        d.register(w.RemoteActorDrop, self._h_drop, oneway=True)
        d.register(w.RemoteActorCancel, self._h_cancel, oneway=True)
        d.register(w.RemoteActorSpec, self._h_spec)

    # ----------------------------------------------------------------- placement

    def place(self, rec: Any) -> bool:
        """Decide where a new (or restarting) actor of this node lives. ``False``:
        here (the caller goes on with it); ``True``: forwarded to another node,
        waiting for one to join, or failed."""
        spec = rec.spec
        node = self.node
        sched = node.sched
        view = node.view
        if spec.supervisor is not None:
            return False  # user supervision trees live on one node
        if not view.multi:
            if fits(spec.resources, sched.total):
                return False
            self._wait(rec, f"it requests {format_amounts(spec.resources)} but the node has only "
                            f"{format_amounts(sched.total)}")
            return True
        strategy = spec.strategy
        if keep_local(spec.resources, strategy, view, available=sched.available,
                      total=sched.total, queued=len(sched.waiting) + len(sched.ready)):
            return False
        placement = choose_node(spec.resources, strategy, view, spread=self.spread,
                                local_available=sched.available)
        if placement.node_id == view.node_id:
            return False
        if placement.node_id is None:
            if placement.infeasible:
                self._wait(rec, placement.reason)
            else:
                rec.error_type = ActorUnschedulableError
                self.manager.end(rec, placement.reason)
            return True
        self._forward_create(rec, placement.node_id)
        return True

    def _forward_create(self, rec: Any, node_id: str) -> None:
        spec = rec.spec
        rec.node = node_id
        rec.authority = True
        rec.state = "alive"  # forwarding: the host queues calls until it is up
        rec.ready.set()
        record = self.node.functions.get(spec.class_id)
        try:
            self._copied_to(spec.deps, rec.dep_data or [], node_id)
            self.node.peers.send(node_id, w.RemoteActorCreate(
                spec, rec.restarts, self.node.node_hex, rec.dep_data or [], record))
        except PeerUnavailable as exc:  # it died since the view said otherwise
            logger.info("forwarding actor %s to node %s failed: %s", spec.describe(),
                        node_id[:12], exc)
        logger.info("actor %s placed on node %s", spec.describe(), node_id[:12])
        self.manager.calls.pump(rec)

    def _wait(self, rec: Any, reason: str) -> None:
        spec = rec.spec
        rec.state = "pending"
        self.infeasible[spec.actor_id] = rec
        warning = (f"actor {spec.describe()} cannot be placed yet: {reason}; it waits "
                   f"for a node that can host it")
        self.warnings[spec.actor_id] = warning
        logger.warning("%s", warning)

    def _retry_infeasible(self) -> None:
        waiting, self.infeasible = self.infeasible, {}
        for aid, rec in waiting.items():
            self.warnings.pop(aid, None)
            if rec.state != "dead":
                self.manager.admit(rec)

    def forget(self, rec: Any) -> None:
        """``rec`` is dead: it waits for no node any more."""
        aid = rec.spec.actor_id
        self.infeasible.pop(aid, None)
        self.warnings.pop(aid, None)

    # ------------------------------------------------------------------- proxies

    def locate(self, actor_id: bytes) -> Any:
        """A proxy for an actor this node has not seen (its handle came from
        elsewhere): ``None`` on a single node. Its calls queue until the actors
        table names the host."""
        if not self.node.view.multi:
            return None
        rec = self.manager.proxy_record(actor_id)
        self.node.spawn(self.find_host, rec)
        return rec

    async def find_host(self, rec: Any) -> None:
        await self._find_host(rec, None, None)

    async def _find_host(self, rec: Any, dead_node: str | None, reason: str | None) -> None:
        """Read the actors table until it names a live host for ``rec`` (other than
        ``dead_node``), or says it is dead; then forward or fail its calls."""
        aid = rec.spec.actor_id
        deadline = trio.current_time() + RELOCATE_TIMEOUT
        manager = self.manager
        while rec.state != "dead":
            try:
                record = await self.node.control.call(lambda gcs: gcs.actors.get(aid.hex()))
            except Exception as exc:
                logger.info("reading the record of actor %s failed: %s", aid.hex()[:12], exc)
                record = None
            if isinstance(record, dict):
                host = record.get("node_id")
                status = self.node.view.get(host) if isinstance(host, str) else None
                if record.get("state") == "dead":
                    manager.end(rec, record.get("death_cause") or "it died", notify=False)
                    return
                if host == self.node.node_hex:
                    # It came here (a restart placed it on this node): the local record
                    # replaced the proxy; give it the calls that waited.
                    local = manager.actors.get(aid)
                    if local is not None and local is not rec:
                        manager.adopt_calls(rec, local)
                    return
                if status is not None and status.alive and host != dead_node:
                    if rec.stub:
                        try:
                            hosted = await self.node.peers.request(
                                host, w.RemoteActorSpec(aid), timeout=10.0)
                            rec.spec = hosted.spec
                            rec.stub = False
                        except Exception as exc:
                            logger.info("asking node %s for actor %s failed: %s",
                                        str(host)[:12], aid.hex()[:12], exc)
                            await trio.sleep(RELOCATE_POLL)
                            continue
                    rec.node = host
                    rec.state = "alive"
                    rec.ready.set()
                    for holder in rec.holders:  # handles held here before it was found
                        self.send(rec, w.RemoteActorHold(aid, holder))
                    manager.calls.pump(rec)
                    return
            if trio.current_time() > deadline:
                why = reason or "its record never named a live node"
                manager.end(rec, f"{why}, and no node hosts it after "
                                 f"{RELOCATE_TIMEOUT:g} s", notify=False)
                return
            await trio.sleep(RELOCATE_POLL)

    def send(self, rec: Any, message: Any) -> None:
        """A message for the host of the proxy ``rec`` (dropped if it just died:
        the death listener redoes the work)."""
        try:
            self.node.peers.send(rec.node, message)
        except PeerUnavailable as exc:
            logger.info("message %s for actor %s not sent: %s", type(message).__name__,
                        rec.spec.actor_id.hex()[:12], exc)

    def forward_call(self, rec: Any, call: Any) -> None:
        data = call.dep_data or []
        # The host pulls the large arguments from this node's store; this node
        # keeps them (the call's deps stay pinned until its results are back) and
        # tells the host to drop its copy once their owner frees them.
        self._copied_to(call.spec.deps, data, rec.node)
        self.send(rec, w.RemoteActorCall(call.spec, data, self.node.node_hex))

    def _copied_to(self, deps: list[bytes], data: list, node_id: str | None) -> None:
        if node_id is None:
            return
        for oid, (_err, d) in zip(deps, data, strict=False):
            if d == STORE:
                self.node.remote.copied_to(oid, node_id)

    def deliver(self, spec: Any, results: list) -> bool:
        """Results of a call that came from another node go back there. A large
        result stays in this node's store, held by its directory entry, and the
        calling node pulls it; its owner's free reaches this entry (``n_free``)."""
        origin = self.origins.pop(spec.task_id, None)
        if origin is None:
            return False
        if any(d == STORE for _oid, _err, d in results):
            self.node.directory.put_many([r for r in results if r[2] == STORE])
        try:
            self.node.peers.send(origin, w.RemoteActorDone(spec.actor_id, spec.task_id,
                                                           results, self.node.node_hex))
        except PeerUnavailable as exc:
            logger.info("results of %s not returned: %s", spec.name, exc)
        return True

    # ------------------------------------------------ large arguments at the host

    # A forwarded call or creation carries its arguments as the sending node
    # resolved them: inline values, or ``STORE`` for a large value in *that* node's
    # store. Before the actor may see one, the host pulls it into its own store
    # (``node.transfers.pull``) and enters it in its directory (the copy's store
    # ref is the transfers', released with the entry when the owner frees it).
    #
    # Order. Pulls take time, and one caller's next call (small, nothing to pull)
    # may arrive meanwhile; it must not overtake. So a call with something to pull
    # joins its caller's FIFO at once with ``missing`` set to the number of pulls,
    # and the FIFO's head is only sent once it is zero (``ActorCalls.pump``), as for
    # a local call waiting for its refs. A creation likewise: the record exists at
    # once (calls queue on it), and the actor starts once its arguments are here.
    # A pull that fails fails that call (or the creation) with the typed
    # ``ObjectTransferError`` naming the object, its size and the nodes tried.

    def _to_pull(self, deps: list[bytes], data: list) -> list[bytes]:
        entries = self.node.directory.entries
        out = []
        for oid, (_err, d) in zip(deps, data, strict=False):
            if d != STORE:
                continue
            e = entries.get(oid)
            if e is not None and e.ready and e.data == STORE:
                continue  # already in this node's store (owned here, or pulled)
            out.append(oid)
        return out

    async def _pull_arg(self, oid: bytes, origin: str) -> BaseException | None:
        node = self.node
        try:
            await node.transfers.pull(oid, [origin])
        except (ObjectLostError, ObjectStoreFullError) as exc:
            return exc
        except Exception as exc:
            logger.warning("pulling argument %s from node %s failed", oid.hex(), origin[:12],
                           exc_info=True)
            return ObjectLostError(f"argument {oid.hex()} could not be copied from node "
                                   f"{origin[:12]}: {type(exc).__name__}: {exc}")
        node.directory.put(oid, False, STORE)
        return None

    async def _pull_call_arg(self, call: Any, oid: bytes, origin: str) -> None:
        error = await self._pull_arg(oid, origin)
        if error is not None and call.error is None:
            call.error = error
        call.missing -= 1
        rec = self.manager.actors.get(call.spec.actor_id)
        if call.missing == 0 and rec is not None and rec.state == "alive":
            self.manager.calls.pump(rec)

    async def _pull_ctor_args(self, rec: Any, oids: list[bytes], origin: str) -> None:
        errors = []
        async with trio.open_nursery() as nursery:
            async def one(oid: bytes) -> None:
                error = await self._pull_arg(oid, origin)
                if error is not None:
                    errors.append(error)
            for oid in oids:
                nursery.start_soon(one, oid)
        if rec.state == "dead":
            return
        if errors:
            self.manager.end(rec, f"an argument of its constructor could not be copied to "
                                  f"node {self.node.node_hex[:12]}: {errors[0]}")
            return
        self.manager.start_forwarded(rec)

    # ------------------------------------------------------------- node death

    def _node_dead(self, status: Any) -> None:
        dead = status.node_id
        why = f"the node {dead[:12]} it ran on died ({status.death_reason or 'no reason'})"
        manager = self.manager
        for rec in list(manager.actors.values()):
            if rec.state == "dead":
                continue
            if rec.node == dead:
                self._host_died(rec, dead, why)
            elif rec.origin == dead and rec.node is None:
                # Its creator's node died: the owner died with it (fate sharing).
                if not rec.spec.detached and rec.spec.name is None:
                    manager.end(rec, f"its owner's node {dead[:12]} died "
                                     f"({status.death_reason or 'no reason'})")
                else:
                    rec.origin = None  # this node is its authority now
        for tid, origin in list(self.origins.items()):
            if origin == dead:
                del self.origins[tid]

    def _host_died(self, rec: Any, dead: str, why: str) -> None:
        manager = self.manager
        calls = manager.calls
        if not rec.authority:
            rec.state = "restarting"
            rec.node = None
            rec.last_loss = why
            rec.ready = trio.Event()
            calls.requeue_inflight(rec, why)
            self.node.spawn(self._find_host, rec, dead, why)
            return
        rec.node = None
        rec.last_loss = why
        if manager.can_restart(rec):
            rec.restarts += 1
            manager.restarts_total += 1
            rec.state = "restarting"
            rec.ready = trio.Event()
            calls.requeue_inflight(rec, why)
            logger.warning("actor %s: %s; restarting it (restart %d)", rec.spec.describe(),
                           why, rec.restarts)
            manager.admit(rec)
            return
        manager.end(rec, why + manager.limits(rec), notify=False)
        manager.record(rec, force=True)

    # ------------------------------------------------------------------ handlers

    def _h_create(self, conn: Any, m: w.RemoteActorCreate) -> None:
        spec, restarts, origin = m.spec, m.restarts, m.origin
        dep_data, record = m.dep_data, m.class_record
        if record is not None and spec.class_id not in self.node.functions:
            self.node.functions[spec.class_id] = record
        pulls = self._to_pull(spec.deps, dep_data) if spec.deps else []
        rec = self.manager.create_forwarded(spec, restarts, origin, dep_data,
                                            start=not pulls)
        if pulls and rec is not None:
            self.node.spawn(self._pull_ctor_args, rec, pulls, origin)

    def _h_call(self, conn: Any, m: w.RemoteActorCall) -> None:
        spec, dep_data, origin = m.spec, m.dep_data, m.origin
        self.origins[spec.task_id] = origin
        pulls = self._to_pull(spec.deps, dep_data) if spec.deps else []
        call = self.manager.calls.submit_forwarded(spec, dep_data, missing=len(pulls))
        if call is not None:
            for oid in pulls:
                self.node.spawn(self._pull_call_arg, call, oid, origin)

    def _h_done(self, conn: Any, m: w.RemoteActorDone) -> None:
        self.manager.proxy_done(m.actor_id, m.task_id, m.results, m.host)

    def _h_died(self, conn: Any, m: w.RemoteActorDied) -> None:
        rec = self.manager.actors.get(m.actor_id)
        if rec is not None and rec.node is not None:
            self.manager.end(rec, m.cause, notify=False)

    def _h_end(self, conn: Any, m: w.RemoteActorEnd) -> None:
        rec = self.manager.actors.get(m.actor_id)
        if rec is not None and rec.node is None:
            self.manager.end(rec, m.cause)

    def _h_kill(self, conn: Any, m: w.RemoteActorKill) -> None:
        try:
            self.manager.kill(m.actor_id, m.no_restart)
        except ValueError as exc:
            logger.info("kill from another node: %s", exc)

    def _h_hold(self, conn: Any, m: w.RemoteActorHold) -> None:
        self.manager.holders.hold(m.actor_id, m.holder)

    def _h_drop(self, conn: Any, m: w.RemoteActorDrop) -> None:
        rec = self.manager.actors.get(m.actor_id)
        if rec is not None:
            self.manager.holders.unhold(rec, m.holder)

    def _h_cancel(self, conn: Any, m: w.RemoteActorCancel) -> None:
        self.manager.calls.cancel(m.actor_id, m.task_id)

    def _h_spec(self, conn: Any, m: w.RemoteActorSpec, reply: Any) -> None:
        rec = self.manager.actors.get(m.actor_id)
        if rec is None or rec.stub:
            raise ValueError(f"actor {m.actor_id.hex()} is not known to this node")
        reply.send(w.HostedActor(rec.spec, rec.state, rec.cause))


def format_amounts(res: Any) -> str:
    """Resource amounts for messages: ``{CPU: 1, GPU: 0.5}``."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"
