"""What the actor hosts of one worker process share (``HostContext``): the core
worker, the codecs and class cache, the answers to direct calls (from the method's
thread when the link is idle, else from the loop), ``exit_actor()``, and the replay
of actors that checkpoint (``_ReplayState``). The hosts themselves are in
``_threaded_host`` and ``_async_host``; ``_actor_host`` picks one per actor."""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import attrs
import trio

import transport

from ..core_worker import _worker_state
from ..core_worker._node_link import THREAD_SEND_GAP
from ..core_worker._object_ref import ObjectRef
from ..core_worker._store_link import STORE
from ..core_worker._worker_state import current_call, task_context
from ..exceptions import ActorDiedError, ActorExitRequest, MessageTooLargeError
from ..protocol import _serialization
from ..protocol import _wire as w
from ..protocol._actors import EXIT_CAUSE, ActorSpec, CallSpec
from ..session._config import env_value
from ._executor import StreamWriter, encode_returns, not_a_generator, run_task
from ._process import load_function, return_spill, stream_emitter

__all__ = ["CHECKPOINT_METHOD", "HostContext", "HostStatistics", "RESTORE_METHOD",
           "format_ctor_error", "format_recovery_error", "process_statistics"]

logger = logging.getLogger("actorcore.actor_host")


@attrs.frozen
class HostStatistics:
    """What the actor hosts of one process did (``process_statistics``)."""

    #: direct calls an actor's thread read off its caller's link itself (``_LinkInbox``)
    calls_read_by_thread: int
    #: direct calls the process's loop read and handed to an actor
    calls_read_by_loop: int
    #: frames of several calls (``DirectCalls``) among those the loop read
    call_frames_read_by_loop: int = 0
    #: answers to direct calls sent by the loop, and the frames they left in
    #: (``DirectResults`` carry several)
    answers_sent_by_loop: int = 0
    answer_frames_sent_by_loop: int = 0


_context: HostContext | None = None


def process_statistics() -> HostStatistics | None:
    """The statistics of this process's actor hosts (``None``: it hosts none)."""
    ctx = _context
    return ctx.statistics() if ctx is not None else None


class HostContext:
    """What every host in a process shares: the core worker, codecs, class cache."""

    def __init__(self, core: Any, node_id: str,
                 encode: Callable[[bytes, Any], bytes],
                 decode: Callable[[bytes, Any], Any]) -> None:
        self.core = core
        self.node_id = node_id
        self.encode = encode
        self._decode = decode
        self._classes: dict[bytes, type] = {}
        self._lock = threading.Lock()
        # task id -> the caller's direct link the call came on (``core_worker._direct_calls``)
        self.direct: dict[bytes, Any] = {}
        self.thread_sent_at = 0.0  # the last answer written from a method's thread
        self.thread_taken: bytes | None = None  # the last call an actor's thread read
        #: Read sides lent to an actor's thread (``_LinkInbox``): ``ACTORCORE_THREAD_READS``.
        self.thread_reads: bool = env_value("ACTORCORE_THREAD_READS")
        self.calls_read_by_thread = 0
        self.calls_read_by_loop = 0
        self.call_frames_read_by_loop = 0
        self.answers_sent_by_loop = 0
        self.answer_frames_sent_by_loop = 0
        # (conn, spec, results): direct answers for the loop to send, in the order
        # the calls ended; one wake-up of the loop sends them all (``_send_answers``).
        self._answers: list[tuple[Any, CallSpec, list]] = []
        self._answers_lock = threading.Lock()
        # The process's main thread (``worker.MainThread``) when this process hosts
        # one actor: a threaded actor of concurrency 1 runs on it, as in Ray.
        self.main_thread: Any = None
        self.emit = stream_emitter(core)  # a generator method's items, to the node
        # How a call's results over one frame go through the store (``Spill``): made
        # once (it reads the store link when it puts), used while the link is up.
        self._spill = return_spill(core)
        # Actors here that called ``exit_actor()``: their later calls are not run.
        self.exited: set[bytes] = set()
        # Actors here recovered by replay (``checkpoint_interval``), by actor id.
        self.replaying: dict[bytes, _ReplayState] = {}
        # task id -> (link, call, results): direct answers of such actors waiting for
        # the node to hold the call's log entry (``actor_logged``).
        self.unlogged: dict[bytes, tuple[Any, CallSpec, list]] = {}
        global _context
        _context = self

    def statistics(self) -> HostStatistics:
        return HostStatistics(self.calls_read_by_thread, self.calls_read_by_loop,
                              self.call_frames_read_by_loop, self.answers_sent_by_loop,
                              self.answer_frames_sent_by_loop)

    def decode(self, oid: bytes, data: Any) -> Any:
        if data is _FETCH:  # a direct call's argument ref: resolved here, in call order
            return self.core.get([ObjectRef(oid)], None)[0]
        return self._decode(oid, data)

    def load_class(self, spec: ActorSpec, record: dict | None) -> type:
        """The actor's class (unpickled once per process; fetched if not sent along)."""
        cls = self._classes.get(spec.class_id)
        if cls is not None:
            return cls
        with self._lock:
            cls = self._classes.get(spec.class_id)
            if cls is None:
                cls = load_function(self.core, spec.class_id, record)
                self._classes[spec.class_id] = cls
        return cls

    def construct(self, spec: ActorSpec, dep_data: list, record: dict | None) -> Any:
        if spec.runtime_env:  # before the class is unpickled: it may import from there
            from ._runtime_env import apply_runtime_env

            apply_runtime_env(self.core, spec.runtime_env)
        cls = self.load_class(spec, record)
        deps = [self.decode(oid, data) for oid, (_e, data) in zip(spec.deps, dep_data, strict=True)]
        args, kwargs = _serialization.loads_args(spec.args, deps)
        try:
            return cls(*args, **kwargs)
        except ActorExitRequest:
            raise RuntimeError(
                "the constructor called exit_actor(): the actor ended before it was up"
            ) from None

    def ready(self, spec: ActorSpec, incarnation: int, error: str | None) -> None:
        self.core.enqueue(w.ActorReady(spec.actor_id, incarnation, error))

    def done(self, spec: CallSpec, results: list, ran: bool = False) -> None:
        """Answer ``spec``: through the node, or on the direct link it came on.

        ``ran``: the method ran (not a call dropped, refused or cancelled before it
        started). For an actor that replays, such a call joins its log at the node
        before its caller can see the result; see ``_ReplayState``."""
        conn = self.direct.pop(spec.task_id, None)
        replay = self.replaying.get(spec.actor_id) if ran else None
        if conn is None:
            self.core.enqueue(w.ActorDone(spec.actor_id, spec.task_id, results,
                                           replay is not None))
        elif replay is not None:
            self.unlogged[spec.task_id] = (conn, spec, results)
            self.core.enqueue(w.ActorLog(spec.actor_id, replay.incarnation, spec, results))
        elif not self._answer_from_thread(conn, spec, results):
            self._queue_answer(conn, spec, results)

    def _queue_answer(self, conn: Any, spec: CallSpec, results: list) -> None:
        """Have the loop send a direct call's answer (any thread). Answers that end
        while the loop has not sent the last ones yet join them: the loop is woken
        once for all, and sends each link's answers as one frame (`DirectResults`)
        instead of one frame per answer -- in a burst, the loop's pass, the pickle
        and the caller's decode per answer were most of the answer's cost."""
        with self._answers_lock:
            answers = self._answers
            answers.append((conn, spec, results))
            if len(answers) > 1:
                return  # the loop is woken already
        try:
            self.core.trio_token.run_sync_soon(self._send_answers)
        except trio.RunFinishedError:
            pass

    def _send_answers(self) -> None:
        """Send the answers queued by ``_queue_answer`` (core loop): each link's in
        the order their calls ended, several as one `DirectResults` frame."""
        with self._answers_lock:
            answers, self._answers = self._answers, []
        by_link: dict[Any, list[tuple[Any, CallSpec, list]]] = {}
        for answer in answers:
            by_link.setdefault(answer[0], []).append(answer)
        for conn, batch in by_link.items():
            if len(batch) == 1:
                self._send_direct(*batch[0])
            else:
                self._send_batch(conn, batch)

    def _send_batch(self, conn: Any, batch: list[tuple[Any, CallSpec, list]]) -> None:
        """Several answers on one link in one frame (core loop); see `_send_direct`."""
        for _conn, spec, results in batch:
            if any(data == STORE for _oid, _err, data in results):
                self.core.enqueue(w.ActorDoneDirect(spec.actor_id, results))
        message = w.DirectResults([(spec.task_id, results) for _conn, spec, results in batch])
        try:
            conn.send_nowait(message)
        except trio.WouldBlock:
            self.core.loop.start_soon(self._send_batch_later, conn, batch, message)
        except transport.FrameTooLarge:  # each alone: only a too large one fails
            for _conn, spec, results in batch:
                self._send_direct(conn, spec, results, registered=True)
            return
        except Exception as exc:  # the caller is gone, or resends through the node
            logger.debug("answering %d calls failed: %s", len(batch), exc)
        self.answers_sent_by_loop += len(batch)
        self.answer_frames_sent_by_loop += 1

    async def _send_batch_later(self, conn: Any, batch: list[tuple[Any, CallSpec, list]],
                                message: w.DirectResults) -> None:
        try:
            await conn.send(message)
        except transport.FrameTooLarge:
            for _conn, spec, results in batch:
                self._send_direct(conn, spec, results, registered=True)
        except Exception as exc:  # the caller is gone, or resends through the node
            logger.debug("answering %d calls failed: %s", len(batch), exc)

    def _answer_from_thread(self, conn: Any, spec: CallSpec, results: list) -> bool:
        """Answer a direct call from the method's thread when its link is idle and the
        results are inline, without waking the loop (``transport.Connection.
        send_from_thread``); not within ``THREAD_SEND_GAP`` of the last such answer:
        a burst of answers coalesces in the loop. ``False``: the loop answers."""
        now = time.monotonic()
        if self.core.loop.in_loop():
            return False
        # A call the actor's thread read itself (``_LinkInbox``) came alone: there
        # is no burst to coalesce. (Not any call answered while the thread holds
        # the read side: in a burst the loop reads calls, the thread takes the side
        # whenever it is idle, and its answers would leave one frame each.)
        if now - self.thread_sent_at < THREAD_SEND_GAP and spec.task_id != self.thread_taken:
            return False
        if self._answers:  # the loop sends earlier answers: not ahead of them
            return False
        if any(data == STORE for _oid, _err, data in results):
            return False
        try:
            sent = conn.send_from_thread(w.DirectResult(spec.task_id, results))
        except Exception:  # too large, say: the loop's answer says so
            return False
        if sent:
            self.thread_sent_at = now
        return bool(sent)

    def logged(self, task_id: bytes) -> None:
        """The node holds the log entry of a direct call: answer its caller (core loop)."""
        waiting = self.unlogged.pop(task_id, None)
        if waiting is not None:
            self._send_direct(*waiting)

    # ------------------------------------------------------------ replay (recovery)

    def start_replay(self, spec: ActorSpec, incarnation: int) -> None:
        """``spec`` replays (``checkpoint_interval`` is set): from now on report its
        calls for its log and take its checkpoints."""
        if spec.replays:
            self.replaying[spec.actor_id] = _ReplayState(
                spec.checkpoint_interval or 0, incarnation)
        else:
            self.replaying.pop(spec.actor_id, None)

    def recover(self, instance: Any, spec: ActorSpec, recovery: tuple | None) -> None:
        """Restore the checkpoint and replay the logged calls, in their order, on the
        fresh ``instance`` (the actor's thread, before it is ready). Their results go
        nowhere: their callers had them from the lost incarnation. A call that raised
        then raises again now; that is part of the replay, not a failure of it."""
        state = self.replaying.get(spec.actor_id)
        if recovery is None or state is None:
            return
        checkpoint, calls = recovery
        if checkpoint is not None:
            restore = getattr(instance, RESTORE_METHOD)
            restore(_serialization.loads(checkpoint))
        for call, dep_data in calls:
            with _replayed(call):
                value = self._call_again(instance, call, dep_data)
                if inspect.isgenerator(value):  # its items went out the first time
                    for _item in value:
                        pass
        state.since = len(calls)

    async def recover_async(self, instance: Any, spec: ActorSpec,
                            recovery: tuple | None) -> None:
        """``recover`` for an async actor (on its event loop)."""
        state = self.replaying.get(spec.actor_id)
        if recovery is None or state is None:
            return
        checkpoint, calls = recovery
        if checkpoint is not None:
            value = getattr(instance, RESTORE_METHOD)(_serialization.loads(checkpoint))
            if inspect.isawaitable(value):
                await value
        for call, dep_data in calls:
            with _replayed(call):
                value = self._call_again(instance, call, dep_data)
                if inspect.isasyncgen(value):
                    async for _item in value:
                        pass
                elif inspect.isgenerator(value):
                    for _item in value:
                        pass
                elif inspect.isawaitable(value):
                    await value
        state.since = len(calls)

    def _call_again(self, instance: Any, call: CallSpec, dep_data: list | None) -> Any:
        """Call the logged ``call`` on ``instance`` again, with its arguments as the
        first time; what it returns (a generator or awaitable not yet run)."""
        args, kwargs = self._replay_args(call, dep_data)
        return _method(instance, call)(*args, **kwargs)

    def _replay_args(self, call: CallSpec, dep_data: list | None) -> tuple[tuple, dict]:
        if dep_data is None:  # a direct call's refs: read again, as the first time
            dep_data = [(False, _FETCH)] * len(call.deps)
        deps = [self.decode(oid, d) for oid, (_e, d) in zip(call.deps, dep_data, strict=True)]
        return _serialization.loads_args(call.args, deps)

    def after_call(self, instance: Any, spec: CallSpec) -> None:
        """A call of an actor that replays ran (its actor's thread or loop, before
        the next call starts): every ``checkpoint_interval`` calls, a checkpoint.

        It is sent after the call's own report on the same ordered queue to the
        node, so the node replaces exactly the log entries the state includes."""
        state = self.replaying.get(spec.actor_id)
        if state is None:
            return
        state.since += 1
        if state.interval <= 0 or state.since < state.interval:
            return
        try:
            data = _serialization.dumps(getattr(instance, CHECKPOINT_METHOD)())
        except Exception as exc:
            # The log keeps growing instead: recovery replays more, loses nothing.
            logger.error("%s of actor %s failed, no checkpoint taken (the call log keeps "
                         "every call since the last one): %s: %s", CHECKPOINT_METHOD,
                         spec.actor_id.hex()[:12], type(exc).__name__, exc)
            state.since = 0
            return
        state.since = 0
        state.checkpoints += 1
        self.core.enqueue(w.ActorCheckpoint(spec.actor_id, state.incarnation, data))

    def _send_direct(self, conn: Any, spec: CallSpec, results: list,
                     registered: bool = False) -> None:
        """Answer a direct call on its link (core loop); large results are registered
        with the node by us, who hold them in the store (``registered``: done)."""
        if not registered and any(data == STORE for _oid, _err, data in results):
            self.core.enqueue(w.ActorDoneDirect(spec.actor_id, results))
        self.answers_sent_by_loop += 1
        self.answer_frames_sent_by_loop += 1
        message = w.DirectResult(spec.task_id, results)
        try:
            conn.send_nowait(message)
        except trio.WouldBlock:
            self.core.loop.start_soon(_send_later, conn, spec, message)
        except transport.FrameTooLarge as exc:  # the caller must not wait for ever
            _send_too_large(conn, spec, results, exc)
        except Exception as exc:  # the caller is gone, or resends through the node
            logger.debug("answering %s failed: %s", spec.name, exc)

    def exit(self, spec: CallSpec) -> None:
        """The call ``spec`` ran ``exit_actor()``: it and every later call of the actor
        here get ``ActorDiedError``; the node ends the actor for good (``actor_exit``),
        which fails the calls queued there and stops this host."""
        aid = spec.actor_id
        run = _worker_state.actors.get(aid.hex())
        what = run.spec.describe() if run is not None and run.spec is not None else aid.hex()
        first = aid not in self.exited
        self.exited.add(aid)
        if first and self.main_thread is not None:
            # The process is the actor's own and ends with it: its atexit handlers
            # run now, as Ray runs them on exit_actor() (before the caller hears of
            # the exit; the node then stops the process).
            atexit._run_exitfuncs()
        self.done(spec, _died_results(spec, what))
        if first:
            logger.info("actor %s called exit_actor() in %s", what, spec.name)
            self.core.enqueue(w.ActorExit(aid, run.incarnation if run is not None else 0))

    def refuse_exited(self, spec: CallSpec) -> bool:
        """Answer ``spec`` with ``ActorDiedError`` if its actor exited here already."""
        if spec.actor_id not in self.exited:
            return False
        run = _worker_state.actors.get(spec.actor_id.hex())
        what = run.spec.describe() if run is not None and run.spec is not None else spec.name
        self.done(spec, _died_results(spec, what))
        return True

    def spill(self) -> Any:
        """The ``Spill`` of a call's results (None without a store link), as
        ``return_spill`` would make it now."""
        if self.core.store is None:
            return None
        spill = self._spill
        if spill is None:
            spill = self._spill = return_spill(self.core)
        return spill

    def run_sync(self, instance: Any, spec: CallSpec, dep_data: list | None) -> None:
        if self.refuse_exited(spec):
            return
        if spec.actor_id in self.replaying:
            self._run_sync(instance, spec, dep_data, True)
            self.after_call(instance, spec)
        else:
            self._run_sync(instance, spec, dep_data, False)

    def _run_sync(self, instance: Any, spec: CallSpec, dep_data: list | None,
                  replays: bool) -> None:
        if dep_data is None:
            dep_data = [(False, _FETCH)] * len(spec.deps)
        method = _method(instance, spec)
        try:
            results, _retry = run_task(
                spec, method, dep_data, self.node_id, self.encode, self.decode,  # type: ignore[arg-type]
                self.spill(),  # results over one frame go through the store
                self.emit,
            )
        except ActorExitRequest:
            self.exit(spec)
            return
        self.done(spec, results, replays)

    async def _stream(self, spec: CallSpec, value: Any) -> list:
        """Run a generator method's generator on the actor's loop (an ``async def``
        one, or a plain one as plain methods of async actors run); its end."""
        out = StreamWriter(spec, self.node_id, self.encode, self.emit)
        if inspect.isasyncgen(value):
            try:
                async for item in value:
                    out.add(item)
            except Exception as exc:
                out.fail(exc)
        elif inspect.isgenerator(value):
            try:
                for item in value:
                    out.add(item)
            except Exception as exc:
                out.fail(exc)
        else:
            out.fail(not_a_generator(spec, value))
        return out.end()

    async def run_async(self, instance: Any, spec: CallSpec, dep_data: list | None) -> None:
        if self.refuse_exited(spec):
            return
        replays = spec.actor_id in self.replaying
        task_context.task_id = spec.task_id
        current_call.set(spec)  # this call's own context (each call is a task of its own)
        try:
            try:
                if dep_data is None:  # a direct call: await its argument refs
                    deps = [await ObjectRef(oid) for oid in spec.deps]
                else:
                    deps = [self.decode(oid, d)
                            for oid, (_e, d) in zip(spec.deps, dep_data, strict=True)]
                args, kwargs = _serialization.loads_args(spec.args, deps)
                value = _method(instance, spec)(*args, **kwargs)
                if spec.num_returns < 0:  # a generator method: items as they come
                    self.done(spec, await self._stream(spec, value), replays)
                    if replays:
                        self.after_call(instance, spec)
                    return
                if inspect.isawaitable(value):
                    value = await value
            except ActorExitRequest:
                self.exit(spec)
                return
            except Exception as exc:
                tb = traceback.format_exc()
                payload = _serialization.error_payload(exc, spec.name, _pid(), self.node_id, tb)
                self.done(spec, [(oid, True, payload) for oid in spec.return_ids()], replays)
                if replays:
                    self.after_call(instance, spec)
                return
        finally:
            task_context.task_id = None
        # Results whose inline total would pass one frame go through the store, as a
        # task's do (``Spill``): to the node, and on the direct link to the caller.
        self.done(spec, encode_returns(spec, value, self.node_id, self.encode,
                                       what="actor method", spill=self.spill()),
                  replays)
        if replays:
            self.after_call(instance, spec)


_FETCH = object()  # marks an argument ref the actor resolves itself

#: The methods an actor class that checkpoints writes (``api._actor_class``).
CHECKPOINT_METHOD = "__actorcore_checkpoint__"
RESTORE_METHOD = "__actorcore_restore__"


@attrs.define(eq=False)
class _ReplayState:
    """One actor that replays, in this process.

    Every call that ran is reported to the node, in the order calls ran, on the one
    ordered queue to it: a call routed through the node in its ``actor_done``; a
    direct call in an ``actor_log`` sent *before* its caller is answered, which
    waits for the node's ``actor_logged``. So a result a caller has seen is always
    in the node's log, and a call whose report never reached the node (the process
    died first) was answered to nobody: it is resent and runs once after recovery.
    Every ``interval`` calls the state is checkpointed behind them
    (``actor_ckpt``), which lets the node drop the log up to there.
    """

    interval: int  # 0: never checkpoint, replay from the constructor
    incarnation: int
    since: int = 0  # calls since the last checkpoint (replayed ones included)
    checkpoints: int = 0


def _died_results(spec: CallSpec, what: str) -> list[tuple[bytes, bool, bytes]]:
    payload = _serialization.dumps(ActorDiedError(f"The actor {what} died: {EXIT_CAUSE}"))
    return [(oid, True, payload) for oid in spec.return_ids()]


def _ray_ready() -> bool:
    return True


def _ray_terminate() -> NoReturn:
    raise ActorExitRequest(0)


def _ray_call(instance: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not callable(fn):
        raise TypeError(f"__ray_call__ expects a callable taking the actor, got {fn!r:.80}")
    return fn(instance, *args, **kwargs)


def _builtin(instance: Any, name: str) -> Callable | None:
    """The built-in method ``name`` of every actor (``protocol.BUILTIN_METHODS``)."""
    if name == "__ray_ready__":
        return _ray_ready
    if name == "__ray_terminate__":
        return _ray_terminate
    if name == "__ray_call__":
        return functools.partial(_ray_call, instance)
    return None


async def _send_later(conn: Any, spec: CallSpec, message: w.DirectResult) -> None:
    try:
        await conn.send(message)
    except transport.FrameTooLarge as exc:
        _send_too_large(conn, spec, message.results or [], exc)
    except Exception as exc:  # the caller is gone, or resends through the node
        logger.debug("answering %s failed: %s", spec.name, exc)


def _send_too_large(conn: Any, spec: CallSpec, results: list, exc: BaseException) -> None:
    """The results of a direct call are over the caller's frame limit: it gets the
    error as the call's results instead (a retry would be refused the same way)."""
    logger.error("the results of %s are too large to send: %s", spec.name, exc)
    payload = _serialization.dumps(MessageTooLargeError(
        f"the results of {spec.name} could not be sent to the caller: {exc}"))
    try:
        conn.send_nowait(w.DirectResult(spec.task_id,
                                        [(oid, True, payload) for oid, _e, _d in results]))
    except Exception as exc2:
        logger.error("the error of %s could not be sent either: %s", spec.name, exc2)


def _pid() -> int:
    import os

    return os.getpid()


_descriptors: dict[tuple[type, str], Any] = {}


@contextlib.contextmanager
def _replayed(call: CallSpec) -> Iterator[None]:
    """Around one replayed call (`HostContext.recover`): what it raises is what it
    raised the first time, so it is logged and the replay goes on; but an
    ``exit_actor()`` it did not call the first time means its calls are not
    deterministic, and the recovery fails saying so."""
    try:
        yield
    except ActorExitRequest:
        raise RuntimeError(
            f"replaying {call.name} called exit_actor(), which it did not the "
            "first time: the actor's calls are not deterministic") from None
    except Exception as exc:
        logger.debug("replayed %s raised %r (as it did the first time)", call.name, exc)


def _method(instance: Any, spec: CallSpec) -> Callable:
    """The method a call names, looked up on the instance's class, as Ray does: an
    instance attribute of the same name does not shadow it, and static and class
    methods bind as they do in Python."""
    cls = type(instance)
    key = (cls, spec.method)
    raw = _descriptors.get(key)
    if raw is None:
        raw = inspect.getattr_static(cls, spec.method, None)
        if raw is None:
            builtin = _builtin(instance, spec.method)
            if builtin is not None:
                return builtin

            def missing(*args: Any, **kwargs: Any) -> Any:
                raise AttributeError(
                    f"actor {cls.__qualname__} has no method {spec.method!r}"
                )
            return missing
        _descriptors[key] = raw
    get = getattr(type(raw), "__get__", None)
    return get(raw, instance, cls) if get is not None else raw




def format_ctor_error(spec: ActorSpec, exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n{tb.rstrip()}"


def format_recovery_error(spec: ActorSpec, exc: BaseException) -> str:
    return ("its recovery failed (restoring its checkpoint or replaying its logged calls "
            f"raised): {format_ctor_error(spec, exc)}")

