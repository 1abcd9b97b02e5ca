"""Direct calls: from a caller straight to its actor's process, without the node.

Every actor process listens on a Unix socket of its own. A caller's first calls to an
actor go through the node (which creates, places, restarts the actor and holds the
truth about it); meanwhile the caller asks the node for the actor's address
(`RouteActor`, answered once the actor is alive), dials it,
and switches that actor's calls to the direct link once every call it sent through
the node has finished. From then on a call costs one hop each way instead of two.

Why the order of calls survives. A caller's calls to one actor travel on exactly one
path at a time: node-routed calls until the switch, direct ones after it, and the
switch waits until the node-routed ones have *finished* (their results are here), so
no direct call can overtake a node-routed one. On the direct link itself the actor
process receives calls in order and starts them in order.

Argument refs are waited for here, by the caller, before a call leaves: a call whose
refs are not ready yet holds back this caller's later calls to the actor (they stay
in ``outq`` behind it) but nobody else's, as in Ray, where calls are ordered per
caller only. The actor then reads the refs (ready by then) itself, in call order.

Failures. When the link breaks (the process died, was killed, or the actor is no
longer in that process), the calls still in flight on it go back through the node,
marked with the incarnation they were lost on; the node treats them exactly like its
own in-flight calls of a process that died — resent to the restarted actor while
``max_task_retries`` lasts, else failed with an ``ActorDiedError`` naming the cause —
and the caller is on the node path again until it rediscovers the actor. Results of
direct calls are also handed to the node (batched, lazily) so that a ref passed on to
a task resolves there; large results are registered by the actor's process, which
holds them in the store. A process's drop of its last handle waits for its direct
calls, so an actor never ends under a call its caller still expects an answer to.

Large arguments travel through the store (``_serialization.dumps_args``): the caller
puts them and the actor fetches them like argument refs. The node pins the
dependencies of a call it routes, but it never sees a direct call, so the caller
holds a direct call's argument objects until the answer is here (or until the call
is resubmitted through the node after its link broke).

A call the link refuses for what it is (a frame over the actor's limit) fails with
``MessageTooLargeError`` and leaves the queue; only a dead link keeps calls back.

Bursts and sync calls. Calls queued together leave as one `DirectCalls` frame
(``Route.flush``, ``_batch_length``), and the actor's process answers the calls
that end together in one `DirectResults` frame (``worker._host_context``). A sync
call -- the only one in flight, its caller's thread waiting -- leaves from that
thread marked ``alone`` (``_send_from_thread``, ``_alone``), and the actor's thread
reads and answers exactly such calls itself (``worker._threaded_host``).

A thread blocked in ``get`` of one direct call's result reads the answer off the
link itself (``_reply_reads``; ``Route.reply``): ``_accept_answer`` and
``_finish_answer`` are ``_answered`` done in that thread, in the same order.

``ACTORCORE_DIRECT_CALLS=0`` turns the direct path off (everything via the node).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import trio

import transport

from ..exceptions import ActorcoreSystemError, MessageTooLargeError
from ..protocol import _serialization
from ..protocol import _wire as w
from ..protocol._actors import CallSpec, cancelled_results
from ..protocol._ids import TASK_ID_SIZE
from ..session._config import env_value
from ._node_link import LINK_DOWN, THREAD_SEND_GAP
from ._reply_reads import CALLER_READS, ReplyReads
from ._store_link import STORE

__all__ = ["CALLER_READS", "DIRECT_CALLS", "submit_call", "drop_actor", "detach",
           "cancel_call", "reply_reads_for"]

logger = logging.getLogger("actorcore.actor_direct")

DIRECT_CALLS: bool = env_value("ACTORCORE_DIRECT_CALLS")

#: Failed discoveries of one actor before its caller stays on the node path.
MAX_DISCOVERY_FAILURES = 3

#: Seconds a direct link may take to connect and authenticate, both ways (a caller
#: dialing an actor, an actor dialing its caller's results server, either server's
#: handshake): the start budget of a worker process (``ACTORCORE_WORKER_START_TIMEOUT``),
#: not the transport's 10 s. Links to new actors are dialed while those actors and
#: hundreds of others are starting; on a loaded machine a 2,000-actor burst left the
#: processes on both ends too busy to finish a handshake in 10 s, and three failed
#: discoveries put a caller on the node path for good (`MAX_DISCOVERY_FAILURES`).
LINK_TIMEOUT: float = env_value("ACTORCORE_WORKER_START_TIMEOUT")

#: The most calls of a burst that leave in one `DirectCalls` frame (``Route.flush``).
MAX_CALLS_PER_FRAME = 256


class Route:
    """One caller process's path to one actor (see the module docstring)."""

    def __init__(self, core: Any, actor_id: bytes) -> None:
        self.core = core
        self.actor_id = actor_id
        self.lock = threading.RLock()
        # What the actor's process answers on the direct link.
        self._dispatcher = transport.Dispatcher(f"direct-link-{actor_id.hex()[:12]}")
        self._dispatcher.register(w.DirectResult, self._on_result, oneway=True)
        self._dispatcher.register(w.DirectResults, self._on_results, oneway=True)
        self.mode = "node"  # node | direct
        self.discovering = False
        self.failures = 0
        self.node_outstanding = 0
        self.direct: dict[bytes, CallSpec] = {}  # task id -> call in flight on the link
        # task id -> argument objects a direct call holds until its answer (the node
        # does not see direct calls, so it cannot pin them: see ``submit_call``)
        self.held: dict[bytes, Sequence[bytes]] = {}
        # calls to send, and a CancelActorCall behind the call it cancels
        self.outq: collections.deque[CallSpec | w.CancelActorCall] = collections.deque()
        self.conn: Any = None
        self.client: Any = None
        self.incarnation = 0
        self.flush_pending = False
        self.sender_busy = False
        self.drop_deferred = False
        self.epoch = 0  # bumped when the caller leaves the link (kill): stale discoveries
        self.dep_wait: CallSpec | None = None  # the head of outq, waiting for its refs
        self.thread_sent_at = 0.0
        # The link's answers as a waiting thread reads them (``_reply_reads``), and
        # what ``_accept_answer`` left for ``_finish_answer``: task id -> (held, drop).
        self.reply: ReplyReads | None = None
        self._thread_answers: dict[bytes, tuple[Sequence[bytes] | None, bool]] = {}

    # -------------------------------------------------------------- any thread

    def submit(self, spec: CallSpec, held: Sequence[bytes] | None) -> None:
        core = self.core
        release = held
        with self.lock:
            if self.mode == "direct":
                direct = self.direct
                direct[spec.task_id] = spec
                if held:
                    self.held[spec.task_id] = held  # until its answer
                    release = None
                if len(direct) > 1 and (reply := self.reply) is not None \
                        and reply in core.references.paused_reads:
                    reply.reclaim()  # a burst: the loop reads the answers
                self.outq.append(spec)
                if self.flush_pending:
                    return
                if self._send_from_thread():
                    return
                self.flush_pending = True
                wake, discover = True, False
            else:
                wake = False
                discover = not self.discovering and self.failures < MAX_DISCOVERY_FAILURES
                if discover:
                    self.discovering = True
                if self.failures < MAX_DISCOVERY_FAILURES:  # a switch may still come
                    self._track_node_call(spec)
                core.enqueue(w.Submit([spec]))
        if release:
            core.release_args(release)  # node-routed: the node pins them from here on
        if wake:
            self.soon(self.flush)
        if discover:
            self.soon(core.loop.start_soon, self.discover)

    def _send_from_thread(self) -> bool:
        """Write what ``outq`` holds from this thread, without waking the loop, when
        the link is idle and this is not a burst (see ``transport.Connection.
        send_from_thread``). ``False``: the loop sends what is left (lock held).

        Not a burst: this call is the only one in flight, and either a thread read
        the last answer itself and waits for this one (``_alone``: a sync call), or
        the last write from a thread is ``THREAD_SEND_GAP`` old (as ``NodeLink`` has
        it for tasks). The time alone would send a sync call answered within the
        gap the loop's way, and the actor's thread would leave it to its loop as
        part of a burst (``DirectCall.alone``)."""
        conn = self.conn
        if conn is None or self.sender_busy or len(self.direct) > 1 or self.core.loop.in_loop():
            return False
        now = time.monotonic()
        alone = self._alone()
        if not alone and now - self.thread_sent_at < THREAD_SEND_GAP:
            return False
        outq = self.outq
        while outq:
            spec = outq[0]
            if type(spec) is CallSpec and spec.deps:
                return False  # its refs may not be ready: the loop's flush waits for them
            try:
                sent = conn.send_from_thread(
                    w.DirectCall(spec, alone) if type(spec) is CallSpec else spec)
            except Exception:  # refused for what it is: the loop's flush says so
                return False
            if not sent:
                return False
            outq.popleft()
        self.thread_sent_at = now
        return True

    def _alone(self) -> bool:
        """Whether the call just queued is a sync call's (lock held): the only one in
        flight, and a thread read the last answer itself and keeps the read side
        (``_reply_reads``). The actor's thread then reads and answers it itself
        (``DirectCall.alone``)."""
        reply = self.reply
        return (len(self.direct) == 1 and reply is not None
                and reply in self.core.references.paused_reads)

    def _track_node_call(self, spec: CallSpec) -> None:
        """Count a node-routed call until its result is here (lock held)."""
        core = self.core
        oid = spec.task_id + b"\0\0\0\1"
        entry = core.references.entry(oid)
        if entry is None:
            return
        self.node_outstanding += 1
        core.add_local_ref(oid)  # keep the entry (and its news) even if the ref dies

        def finished() -> None:
            core.remove_local_ref(oid)
            with self.lock:
                self.node_outstanding -= 1
                ready = self.node_outstanding == 0 and self.conn is not None
            if ready:
                self._try_switch()

        core.references.register([entry], 1, finished)

    def cancel(self, task_id: bytes) -> bool:
        """``cancel(ref)`` of a call on the direct link; ``False``: it is not on the
        link (it went through the node, or is finished).

        A call not sent yet is answered here; otherwise a `CancelActorCall` follows it on
        the link and the actor's process drops or cancels it (``worker._cancel``).
        """
        with self.lock:
            spec = self.direct.get(task_id)
            if spec is None or self.conn is None:
                return False
            # The head of the queue may be on its way out (``_drain``): not removable.
            sending = self.sender_busy and self.outq and self.outq[0] is spec
            if not sending and spec in self.outq:
                self.outq.remove(spec)
                del self.direct[task_id]
                answer = True
            else:
                self.outq.append(w.CancelActorCall(self.actor_id, task_id))
                answer = False
                wake = not self.flush_pending
                self.flush_pending = True
        if answer:
            self.soon(self._answered, task_id, cancelled_results(spec, "before it started"))
        elif wake:
            self.soon(self.flush)
        return True

    def drop(self) -> bool:
        """This process dropped its last handle: defer the drop while calls fly direct."""
        with self.lock:
            if self.direct:
                self.drop_deferred = True
                return True
        return False

    def soon(self, fn: Any, *args: Any) -> None:
        """Call ``fn(*args)`` in the core loop (now, if this is it)."""
        self.core.loop.soon(fn, *args)

    # --------------------------------------------------------------- core loop

    async def discover(self) -> None:
        core = self.core
        epoch = self.epoch
        try:
            core.flush_now()
            route = await core.conn.request(w.RouteActor(self.actor_id), timeout=120)
            if route is None:  # dead, or no direct address: the node path for good
                with self.lock:
                    self.failures = MAX_DISCOVERY_FAILURES
                    self.discovering = False
                return
            address, incarnation = route.address, route.incarnation
            client = transport.Client(address, core.token, name=f"{core.role}-{core.pid}-direct",
                                      handler=self._dispatcher, connect_timeout=LINK_TIMEOUT)
            with self.lock:
                self.client = client
            conn = await core.loop.start(self._run_link, client)
        except Exception as exc:  # calls keep going through the node; tried again later
            logger.info("direct link to actor %s: discovery failed: %r", self.actor_id.hex(), exc)
            with self.lock:
                self.failures += 1
                self.discovering = False
            return
        reply = None
        if CALLER_READS and epoch == self.epoch:
            reply = ReplyReads(conn, core.references, functools.partial(self._accept_answer, conn),
                               self._finish_answer, self._calls_in_flight)
        with self.lock:
            stale = epoch != self.epoch
            if not stale:
                self.conn = conn
                self.incarnation = incarnation
                self.reply = reply
            else:
                self.client = None
                self.discovering = False
        if stale:  # the caller killed the actor meanwhile: that address is history
            core.loop.start_soon(conn.aclose)
            return
        self._try_switch()

    def _try_switch(self) -> None:
        with self.lock:
            if self.conn is None or self.mode == "direct" or self.node_outstanding:
                return
            self.mode = "direct"
            self.discovering = False

    async def _run_link(self, client: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await client.run(task_status=task_status)
        except Exception as exc:  # _link_lost resends what was in flight through the node
            logger.info("direct link to actor %s ended: %r", self.actor_id.hex(), exc)
        finally:
            self._link_lost(client)

    def _held_back(self, spec: CallSpec | w.CancelActorCall) -> bool:
        """Whether ``spec`` (the head of ``outq``) waits for argument refs; if so,
        ``flush`` runs again once they are ready (lock held, core loop)."""
        if type(spec) is not CallSpec or not spec.deps:
            return False
        entries = self.core.references.entries
        if all((e := entries.get(oid)) is not None and e.ready for oid in spec.deps):
            return False
        if self.dep_wait is not spec:
            self.dep_wait = spec
            token = self.core.trio_token

            def ready() -> None:  # never inline: we may be inside flush
                try:
                    token.run_sync_soon(self._deps_ready, spec)
                except trio.RunFinishedError:
                    pass

            self.core.on_ready_callback(spec.deps, ready)
        return True

    def _deps_ready(self, spec: CallSpec) -> None:
        with self.lock:
            if self.dep_wait is spec:
                self.dep_wait = None
        self.flush()

    def flush(self) -> None:
        refused: list[tuple[bytes, list]] = []
        with self.lock:
            self.flush_pending = False
            if self.sender_busy or self.conn is None:
                return
            conn = self.conn
            outq = self.outq
            alone = False  # after a refused batch: each call alone, to fail only its own
            while outq:
                spec = outq[0]
                if self._held_back(spec):
                    return
                n = 1 if alone else self._batch_length()
                try:
                    if n > 1:
                        conn.send_nowait(w.DirectCalls([outq[i] for i in range(n)]))
                    elif type(spec) is CallSpec:
                        conn.send_nowait(w.DirectCall(spec, self._alone()))
                    else:
                        conn.send_nowait(spec)
                except trio.WouldBlock:
                    self.sender_busy = True
                    self.core.loop.start_soon(self._drain, conn)
                    break
                except LINK_DOWN:
                    break  # the link is gone: _link_lost resends through the node
                except Exception as exc:
                    if n > 1:
                        alone = True
                        continue
                    self._refuse(spec, exc, refused)
                    continue
                for _ in range(n):
                    outq.popleft()
        for task_id, results in refused:
            self._answered(task_id, results)

    def _batch_length(self) -> int:
        """How many calls at the head of ``outq`` leave as one `DirectCalls` frame:
        the run of calls behind the head (which may go) that wait for no argument
        refs, at most `MAX_CALLS_PER_FRAME`; 1: the head alone (lock held).

        Why. A burst of calls (``[a.f.remote() for ...]``) otherwise costs one frame
        each way per call: a pickle, a header and a dispatch here, and a decode and a
        dispatch in the actor's process. One frame for the run costs a fraction of
        that per call (benchmarks/README.md, "Actor calls in batches"). A call with
        refs ends the run: it may wait for them (``_held_back``), and it is the head
        of the next one."""
        outq = self.outq
        if type(outq[0]) is not CallSpec:
            return 1
        n, end = 1, min(len(outq), MAX_CALLS_PER_FRAME)
        while n < end:
            spec = outq[n]
            if type(spec) is not CallSpec or spec.deps:
                break
            n += 1
        return n

    def _refuse(self, item: CallSpec | w.CancelActorCall, exc: BaseException,
                refused: list[tuple[bytes, list]]) -> None:
        """The link refused ``item`` for what it is (too large, unpicklable): a retry
        would fail the same way, so it leaves the queue and a call fails with the
        error instead of holding back every later call (lock held)."""
        self.outq.popleft()
        logger.error("cannot send %s to actor %s, dropped: %s: %s",
                     getattr(item, "name", type(item).__name__),
                     self.actor_id.hex()[:12], type(exc).__name__, exc)
        if type(item) is not CallSpec:
            return
        self.direct.pop(item.task_id, None)
        what = f"actor call {item.name}"
        err: BaseException
        if isinstance(exc, transport.FrameTooLarge):
            err = MessageTooLargeError(f"{what} could not be sent to the actor: {exc}")
        else:
            err = ActorcoreSystemError(
                f"{what} could not be sent to the actor: {type(exc).__name__}: {exc}")
        payload = _serialization.dumps(err)
        refused.append((item.task_id, [(oid, True, payload) for oid in item.return_ids()]))

    async def _drain(self, conn: Any) -> None:
        try:
            while True:
                with self.lock:
                    if not self.outq or self.conn is not conn or self._held_back(self.outq[0]):
                        return
                    spec = self.outq[0]
                try:
                    await conn.send(w.DirectCall(spec) if type(spec) is CallSpec else spec)
                except LINK_DOWN:
                    return
                except Exception as exc:
                    refused: list[tuple[bytes, list]] = []
                    with self.lock:
                        if self.outq and self.outq[0] is spec:
                            self._refuse(spec, exc, refused)
                    for task_id, results in refused:
                        self._answered(task_id, results)
                    continue
                with self.lock:
                    if self.outq and self.outq[0] is spec:
                        self.outq.popleft()
        finally:
            with self.lock:
                self.sender_busy = False
            self.flush()

    def leave(self, conn: Any) -> None:
        """Leave the link ``conn`` (core loop): its calls go back through the node."""
        self._link_lost(None)
        self.core.loop.start_soon(conn.aclose)

    def _on_result(self, conn: Any, message: w.DirectResult) -> None:
        task_id, results = message.task_id, message.results
        core = self.core
        if results is None:  # the actor is not in that process (any more)
            self._link_lost(None, not_run=task_id)
            core.loop.start_soon(conn.aclose)
            return
        self._answered(task_id, results)

    def _on_results(self, conn: Any, message: w.DirectResults) -> None:
        """The answers to several direct calls, in one frame (``DirectResults``)."""
        core = self.core
        answers = message.answers
        held: list[Sequence[bytes]] = []
        results: list = []
        with self.lock:
            direct, held_args = self.direct, self.held
            for task_id, call_results in answers:
                direct.pop(task_id, None)
                if held_args and (args := held_args.pop(task_id, None)):
                    held.append(args)
                results += call_results
            drop = self.drop_deferred and not direct
            if drop:
                self.drop_deferred = False
        self._ready(results)
        for args in held:
            core.release_args(args)
        if drop:
            core.enqueue(w.DropActor(self.actor_id), wake=False)

    def _answered(self, task_id: bytes, results: list) -> None:
        """The results of a direct call are here (core loop)."""
        core = self.core
        with self.lock:
            self.direct.pop(task_id, None)
            held = self.held.pop(task_id, None)
            drop = self.drop_deferred and not self.direct
            if drop:
                self.drop_deferred = False
        self._ready(results)
        if held:
            core.release_args(held)
        if drop:
            core.enqueue(w.DropActor(self.actor_id), wake=False)

    def _ready(self, results: list) -> None:
        """Direct calls' ``results`` are here: their entries become ready (core loop)."""
        core = self.core
        self._report(results)
        core.on_objects_ready(results)

    def _report(self, results: list) -> None:
        """Queue for the node the inline ``results`` it must hear of, before their
        entries are ready (any thread). Those of refs already passed on go now; the
        others only when a ref to them is passed on (``ReferenceTable.
        direct_results``), and never if it dies here unread elsewhere. A ref dropped
        before its result came has had its Free sent: no Put for it (``drop_late``
        forgets it). Results in the store were registered by the actor's process."""
        inline = [r for r in results if r[2] != STORE]
        if inline:
            report = self.core.references.direct_results(inline)
            if report:
                self.core.link.enqueue_results(report)

    # ------------------------------------------- the caller's thread reads the answer

    def _accept_answer(self, conn: Any, message: Any) -> bool:
        """Whether a thread that read ``message`` off ``conn`` handles it itself: a
        call's answer, its call still in flight on the route's current link (else the
        loop's reader handles it, as before). The call leaves the in-flight table here,
        under the lock ``_link_lost`` decides under: it is either answered or resent,
        never both (``_reply_reads``)."""
        if type(message) is not w.DirectResult or message.results is None:
            return False
        task_id = message.task_id
        with self.lock:
            if self.conn is not conn or task_id not in self.direct:
                return False
            del self.direct[task_id]
            held = self.held.pop(task_id, None)
            drop = self.drop_deferred and not self.direct
            if drop:
                self.drop_deferred = False
            if held or drop:
                self._thread_answers[task_id] = (held, drop)
        return True

    def _finish_answer(self, message: Any, own: Any) -> None:
        """The rest of ``_answered`` for an answer ``_accept_answer`` took, in the
        thread that read it (``own``: its wake-up, the one callback it may find)."""
        task_id, results = message.task_id, message.results
        held, drop = self._thread_answers.pop(task_id, (None, False))
        core = self.core
        references = core.references
        self._report(results)  # before the entries are ready (``_answered``)
        if not references.ready_from_thread(results, own):
            self.soon(core.on_objects_ready, results)
        if held:
            core.release_args(held)
        if drop:
            core.enqueue(w.DropActor(self.actor_id), wake=False)

    def _calls_in_flight(self) -> bool:
        return bool(self.direct)

    def _link_lost(self, client: Any, not_run: bytes | None = None) -> None:
        """Send what was in flight on the link back through the node, in order."""
        core = self.core
        with self.lock:
            if client is not None and client is not self.client:
                return  # an old link: its calls were handed back when it was left
            if self.conn is None and not self.direct:
                self.discovering = False
                return
            self.client = None
            self.reply = None  # (its loan closes with the link)
            unsent = {id(s) for s in self.outq}
            lost = list(self.direct.values())
            # Resent through the node, which pins their argument objects from the
            # submit on: free them behind it.
            held = [self.held.pop(spec.task_id, ()) for spec in lost]
            self.direct.clear()
            self.outq.clear()
            self.conn = None
            self.mode = "node"
            self.discovering = False
            self.sender_busy = False
            for spec in lost:
                if id(spec) not in unsent and spec.task_id != not_run:
                    spec.lost_incarnation = self.incarnation
                self._track_node_call(spec)
            if lost and not core.closed:
                core.enqueue(w.Submit(list(lost)))
            if self.drop_deferred:
                self.drop_deferred = False
                core.enqueue(w.DropActor(self.actor_id))
        for h in held:
            if h:
                core.release_args(h)


def detach(core: Any, actor_id: bytes) -> None:
    """Leave the direct link (before a kill): calls in flight on it go back through
    the node as lost, later calls take the node path until rediscovery."""
    route = core.actor_routes.get(actor_id)
    if route is None:
        return
    with route.lock:
        route.epoch += 1
        conn, route.conn = route.conn, None
        route.mode = "node"  # at once: the next call goes through the node
    if conn is None:
        return
    route.soon(route.leave, conn)


def reply_reads_for(core: Any, oid: bytes, entry: Any) -> ReplyReads | None:
    """The direct link the answer to ``oid`` comes on, if a waiting thread may read
    it itself (``_reply_reads``): an actor call's in flight on a direct link, or a
    task's pushed on a lease."""
    actor = entry.actor
    if actor is not None:
        route = core.actor_routes.get(actor)
        if route is None or route.reply is None or oid[:TASK_ID_SIZE] not in route.direct:
            return None
        return route.reply
    leased = core.leased
    return leased.reply_reads_for(oid[:TASK_ID_SIZE]) if leased is not None else None


def _route(core: Any, actor_id: bytes) -> Route:
    routes = core.actor_routes
    route = routes.get(actor_id)
    if route is None:
        route = routes.setdefault(actor_id, Route(core, actor_id))
    return route


def submit_call(core: Any, spec: CallSpec, held: Sequence[bytes] | None = None) -> None:
    """Send a call: directly once the route is up, else through the node.

    ``held``: the argument objects the call put in the store (``dumps_args``),
    freed here once the call no longer needs them: behind the submit for a call
    through the node (which pins them until the call is done), at its answer for a
    direct call (or behind its resubmission through the node if the link breaks).
    """
    try:
        core.check_args_fit(spec.name, spec.args)
        if not DIRECT_CALLS or getattr(core, "token", None) is None or core.role == "node":
            core.enqueue(w.Submit([spec]))
        else:
            _route(core, spec.actor_id).submit(spec, held)
            return
    except BaseException:
        if held:
            core.release_args(held)
        raise
    if held:
        core.release_args(held)


def cancel_call(core: Any, actor_id: bytes, task_id: bytes) -> None:
    """``cancel(ref)`` of an unfinished call: on its direct link, else via the node
    (behind the call's own submit on the same queue, so the node knows it)."""
    route = core.actor_routes.get(actor_id)
    if route is not None and route.cancel(task_id):
        return
    core.enqueue(w.CancelActorCall(actor_id, task_id))


def drop_actor(core: Any, actor_id: bytes) -> None:
    """Tell the node this process holds no handle to the actor any more (after its
    direct calls)."""
    route = core.actor_routes.get(actor_id)
    if route is not None and route.drop():
        return
    core.enqueue(w.DropActor(actor_id), wake=False)
