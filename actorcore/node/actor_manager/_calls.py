"""Forwarding actor method calls: ``ActorCalls``, a part of ``ActorManager``.

Calls wait in one FIFO per (actor, caller); the head of each FIFO goes to the actor
once its argument refs are ready and the actor is alive, so a caller's calls reach
the actor — which starts them in arrival order — in the order they were submitted
(the paper's stateful edges). A call whose caller has nothing waiting goes out at
once. Calls in flight when an actor's process dies go back to the front of their
FIFOs while ``max_task_retries`` lasts (resent to the restarted actor), else fail
with an ``ActorDiedError`` that says the call was lost and why it was not resent.
Calls a caller lost on a broken direct link (``core_worker._direct_calls``) come back here with
the incarnation they were lost on and take the same rule.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import attrs

from ...exceptions import ActorDiedError, TaskCancelledError
from ...protocol import _serialization
from ...protocol import _wire as w
from ...protocol._actors import CallSpec

__all__ = ["ActorCalls", "Call"]

logger = logging.getLogger("actorcore.actors")


@attrs.define(eq=False, slots=True)
class Call:
    spec: CallSpec
    missing: int
    retries_left: int
    dep_data: list | None = None
    forwarded: bool = False  # from another node: its refs were resolved (pinned) there
    # A forwarded call whose large argument could not be copied here: it fails
    # with this when it reaches the head of its FIFO (``_remote``).
    error: BaseException | None = None


class ActorCalls:
    """The call path of the actor manager (see the module docstring).

    It keeps no state of its own: the FIFOs and in-flight calls are the actors'
    (``ActorRecord.queues``, ``.inflight``), in the manager's table ``actors``.
    ``end`` (an actor is dead for good) and ``kill_worker`` (end an actor process)
    are the manager's.
    """

    def __init__(
        self,
        node: Any,
        actors: dict,
        *,
        end: Callable[[Any, str], None],
        kill_worker: Callable[[Any], None],
    ) -> None:
        self.node = node
        self.actors = actors
        self.end = end
        self.kill_worker = kill_worker
        self.remote: Any = None  # the manager's ``RemoteActors`` (set by the manager)

    def submit(self, spec: CallSpec) -> None:
        """A method call for an actor of this node: send it, or queue it in order."""
        rec = self.actors.get(spec.actor_id)
        if rec is None:
            rec = self.remote.locate(spec.actor_id)  # on another node (or unknown)
        if rec is None:
            self._fail(spec, ActorDiedError(
                f"actor {spec.actor_id.hex()[:12]} is unknown to this node (call {spec.name})"
            ))
            return
        if rec.state == "dead":
            self._fail(spec, rec.died_error())
            return
        retries = rec.spec.max_task_retries
        if rec.log is not None and retries == 0:
            # An actor that replays runs the calls in flight at its loss again, once,
            # after its recovery: their callers see results (max_restarts bounds it).
            retries = -1
        call = Call(spec, len(spec.deps), retries)
        if spec.lost_incarnation:
            logged = rec.log.answer(spec.task_id) if rec.log is not None else None
            if logged is not None:  # it ran and is in the log: its caller gets that
                self.finish(spec, logged)
                return
            if not self._resent_lost_call(rec, call):
                return
        if not spec.deps and rec.state == "alive" and spec.owner not in rec.queues:
            self._send_call(rec, call)  # nothing of this caller's is waiting: send now
            return
        q = rec.queues.get(spec.owner)
        if q is None:
            q = rec.queues[spec.owner] = collections.deque()
        q.append(call)
        if spec.deps:
            directory = self.node.directory
            directory.pin(spec.deps)
            for oid in spec.deps:
                directory.when_ready(oid, lambda _e, c=call, r=rec: self._call_dep_ready(r, c))
            if call.missing:
                self.node.dep_watch.watch(spec.deps)
        elif len(q) == 1 and rec.state == "alive":
            self.pump(rec)

    def submit_forwarded(self, spec: CallSpec, dep_data: list, missing: int = 0) -> Call | None:
        """A call another node forwarded here, its refs resolved there: it joins its
        caller's FIFO as a local call does (its results go back: ``_remote``).
        ``missing``: its large arguments still being pulled here (it waits at the
        head of the FIFO until they are); returns the call, None if it failed."""
        rec = self.actors.get(spec.actor_id)
        if rec is None or rec.node is not None:
            self._fail(spec, ActorDiedError(
                f"actor {spec.actor_id.hex()[:12]} is not hosted by node "
                f"{self.node.node_hex[:12]} (call {spec.name})"))
            return None
        if rec.state == "dead":
            self._fail(spec, rec.died_error())
            return None
        retries = rec.spec.max_task_retries
        if rec.log is not None and retries == 0:
            retries = -1  # as in ``submit``: run once after the recovery
        call = Call(spec, missing, retries, dep_data=list(dep_data), forwarded=True)
        if not missing and rec.state == "alive" and spec.owner not in rec.queues:
            self._send_call(rec, call)
            return call
        q = rec.queues.get(spec.owner)
        if q is None:
            q = rec.queues[spec.owner] = collections.deque()
        q.append(call)
        if len(q) == 1 and rec.state == "alive":
            self.pump(rec)
        return call

    def cancel(self, actor_id: bytes, task_id: bytes) -> None:
        """``cancel(ref)`` of a call routed through this node (``worker._cancel``).

        A call still queued here is dropped (the caller's later calls keep their
        order); one sent to the actor's process is cancelled there, which answers
        it; a finished or unknown one is left alone.
        """
        rec = self.actors.get(actor_id)
        if rec is None or rec.state == "dead":
            return
        for owner, q in rec.queues.items():
            for call in q:
                if call.spec.task_id == task_id:
                    q.remove(call)
                    if not q:
                        del rec.queues[owner]
                    self.fail_call(call, TaskCancelledError(
                        task_id, f"actor call {call.spec.name} was cancelled before it started"))
                    self.pump(rec)  # it may have held back the calls behind it
                    if rec.drop_when_idle and rec.idle():
                        self.end(rec, "all handles to it were dropped")
                    return
        if task_id in rec.inflight and rec.node is not None:
            self.remote.send(rec, w.RemoteActorCancel(actor_id, task_id))
        elif task_id in rec.inflight and rec.worker is not None and rec.worker.conn is not None:
            try:
                rec.worker.conn.send_nowait(w.CancelActorCall(actor_id, task_id))
            except Exception as exc:  # its link died: the exit handler decides
                logger.info("sending a cancel to the actor failed: %s", exc)

    def _resent_lost_call(self, rec: Any, call: Call) -> bool:
        """A call lost in flight on a broken direct link, resent by its caller.

        If the node has not seen that incarnation's process end yet, the call joins
        its in-flight set (and the process is ended, so the exit surely comes): the
        restart then resends or fails it like any in-flight call. Otherwise the
        retry rule applies now. Returns whether to queue it as a new call.
        """
        spec = call.spec
        if spec.lost_incarnation == rec.incarnation and rec.state == "alive" and not spec.deps:
            rec.inflight[spec.task_id] = call
            if rec.worker is not None:
                self.kill_worker(rec.worker)
            return False
        mtr = rec.spec.max_task_retries
        if call.retries_left == 0:
            used = ("max_task_retries=0: calls in flight are not resent" if not mtr else
                    f"it was resent {spec.attempt} time(s) and max_task_retries={mtr} "
                    f"allows no more")
            self._fail(spec, ActorDiedError(
                f"The actor {rec.spec.describe()} failed while running {spec.name}: "
                f"{rec.last_loss or 'its process ended'}. The actor is restarting "
                f"(restart {rec.restarts}), but this call is lost ({used})."
            ))
            return False
        if call.retries_left > 0:
            call.retries_left -= 1
        spec.attempt += 1
        return True

    def _call_dep_ready(self, rec: Any, call: Call) -> None:
        call.missing -= 1
        if call.missing == 0 and rec.state == "alive":
            self.pump(rec)

    def pump(self, rec: Any) -> None:
        """Send every call at the head of a caller's FIFO whose inputs are ready."""
        if rec.state != "alive":
            return
        for owner, q in list(rec.queues.items()):
            while q and q[0].missing == 0:
                call = q.popleft()
                if call.error is not None:
                    self.fail_call(call, call.error)
                    continue
                self._send_call(rec, call)
                if rec.state != "alive":
                    return
            if not q:
                rec.queues.pop(owner, None)

    def _send_call(self, rec: Any, call: Call) -> None:
        spec = call.spec
        if rec.log is not None and (spec.attempt or spec.lost_incarnation):
            # A resent call that ran and reached the log is not run again; its
            # caller gets the logged results. Resent after its host node died: the
            # log was restored from the GCS. Resent by its caller after its direct
            # link broke: the caller's resend and the dying process's report of the
            # call (`ActorLog`) come on two connections, so the resend can reach
            # this node first (the log did not have it yet: it was queued) and the
            # report next (it joined the log: the replay runs it). Asked again
            # here, when the restarted actor takes it, the log has it.
            logged = rec.log.answer(spec.task_id)
            if logged is not None:
                if spec.deps and not call.forwarded:
                    self.node.directory.unpin(spec.deps)
                self.finish(spec, logged)
                return
        if call.dep_data is None:
            entries = self.node.directory.entries
            data = []
            for oid in spec.deps:
                e = entries[oid]
                if e.is_error:  # errors flow through data edges
                    self.node.directory.unpin(spec.deps)
                    self.finish(spec, [(o, True, e.data) for o in spec.return_ids()])
                    return
                data.append((False, e.data))
            call.dep_data = data
        rec.inflight[spec.task_id] = call
        if rec.node is not None:  # it lives on another node
            self.remote.forward_call(rec, call)
            return
        host = rec.worker
        try:
            host.conn.send_nowait(w.ActorCall(spec, call.dep_data))
        except Exception as exc:  # its link died: the exit handler resends or fails it
            logger.info("sending %s failed: %s", spec.name, exc)

    def finish(self, spec: CallSpec, results: list) -> None:
        if self.remote.origins and self.remote.deliver(spec, results):
            return  # a call from another node: its results go back there
        self.node.directory.put_many(results)
        self.node.deliver(spec.owner, results)

    def _fail(self, spec: CallSpec, error: BaseException) -> None:
        payload = _serialization.dumps(error)
        self.finish(spec, [(oid, True, payload) for oid in spec.return_ids()])

    def fail_call(self, call: Call, error: BaseException) -> None:
        if call.spec.deps and not call.forwarded:
            self.node.directory.unpin(call.spec.deps)
        self._fail(call.spec, error)

    def requeue_inflight(self, rec: Any, reason: str) -> None:
        """In-flight calls go back to the front of their FIFOs while retries last."""
        mtr = rec.spec.max_task_retries
        for call in reversed(list(rec.inflight.values())):
            if call.retries_left != 0:
                if call.retries_left > 0:
                    call.retries_left -= 1
                call.spec.attempt += 1
                q = rec.queues.get(call.spec.owner)
                if q is None:
                    q = rec.queues[call.spec.owner] = collections.deque()
                q.appendleft(call)
            else:
                used = (f"it was resent {call.spec.attempt} time(s) and max_task_retries={mtr}"
                        f" allows no more" if mtr else "max_task_retries=0: calls in flight "
                        "are not resent")
                self.fail_call(call, ActorDiedError(
                    f"The actor {rec.spec.describe()} failed while running {call.spec.name}: "
                    f"{reason}. The actor is restarting, but this call is lost ({used})."
                ))
        rec.inflight.clear()

