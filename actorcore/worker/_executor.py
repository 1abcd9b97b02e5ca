"""Running user code in a worker: tasks as Pykka actors beside the worker's Trio loop.

A worker process has two sides. Its Trio loop (main thread) keeps the link to the
node: it receives ``execute`` messages, fetches and caches functions, and answers
the node at once, whatever user code is doing. User code never runs on it: each task
runs in an executor, a Pykka threading actor, and reports back to the loop with
``TrioToken.run_sync_soon`` (non-blocking). A task that calls ``get`` or ``.remote()``
enters the loop through the core worker like a driver does.

A task is an ephemeral actor: it has its own identity (its task id), a lifecycle
(``running`` until it reports), appears under its worker in ``actorcore tree`` while it
runs, and is gone afterwards. Physically, the executor actor and its thread are reused
across the tasks of a worker: starting a Pykka actor costs ~230 µs here (a thread
start), more than a whole small task; reuse keeps one task per executor at a time, so
the semantics are the same. An executor that fails (a ``BaseException`` escaping user
code, e.g. ``SystemExit``) is replaced by a fresh one.

Cancellation: ``cancel(ref)`` without ``force`` raises ``TaskCancelledError`` inside
the running task (``PyThreadState_SetAsyncExc``) and wakes it if it waits in ``get``;
with ``force`` the node kills the worker process.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import attrs
import pykka

from ..core_worker._generator import DynamicObjectRefGenerator
from ..core_worker._store_link import STORE
from ..core_worker._worker_state import task_context
from ..exceptions import ActorExitRequest, SerializationError, TaskCancelledError
from ..protocol import _serialization
from ..protocol._ids import STREAMING, stream_item_id
from ..protocol._messages import TaskSpec
from ._cancel import TaskStartGate

__all__ = ["Executor", "Spill", "encode_returns", "run_task"]

logger = logging.getLogger("actorcore.executor")


def _retryable(spec: TaskSpec, exc: BaseException) -> bool:
    rule = spec.retry_exceptions
    if rule is False or spec.max_retries == 0:
        return False
    if rule is True:
        return True
    try:
        types = _serialization.loads(rule)
    except Exception as err:  # e.g. the exception classes cannot be imported here
        logger.warning("task %s: its retry_exceptions could not be decoded (%r); "
                       "the %s it raised is not retried", spec.name, err, type(exc).__name__)
        return False
    return isinstance(exc, types)


def _plain_encode(oid: bytes, value: Any) -> bytes:
    return _serialization.dumps(value, what="the return value")


def _plain_decode(oid: bytes, data: bytes) -> Any:
    return _serialization.loads(data)


def run_task(
    spec: TaskSpec,
    function: Callable,
    dep_data: list[tuple[bool, bytes]],
    node_id: str,
    encode: Callable[[bytes, Any], bytes] = _plain_encode,
    decode: Callable[[bytes, bytes], Any] = _plain_decode,
    spill: Spill | None = None,
    emit: Emit | None = None,
) -> tuple[list[tuple[bytes, bool, bytes]], bool]:
    """Run one task in the calling thread; return ``(results, retryable)``.

    ``encode(object_id, value)`` serialises a result (into the store when large);
    ``decode(object_id, data)`` reads a dependency; ``spill`` (see ``encode_returns``)
    keeps the results, together, within one frame; ``emit`` sends the items of a
    generator task as they are yielded (see ``run_generator``).
    """
    return_ids = spec.return_ids()
    task_context.task_id = spec.task_id
    task_context.spec = spec
    try:
        try:
            deps = [
                decode(oid, data) for oid, (_is_error, data) in zip(spec.deps, dep_data, strict=True)
            ] if spec.deps or dep_data else []
            args, kwargs = _serialization.loads_args(spec.args, deps)
            value = function(*args, **kwargs)
            if spec.num_returns < 0:
                if emit is None:
                    raise TypeError(f"{spec.name}: generator tasks cannot run here")
                return run_generator(spec, value, node_id, encode, emit), False
        except TaskCancelledError as exc:
            # The interrupt raises the bare class (no task id): name the task instead.
            text = str(exc) if exc.task_id is not None else (
                f"task {spec.name} was cancelled while it ran")
            payload = _serialization.dumps(TaskCancelledError(spec.task_id, text))
            return [(oid, True, payload) for oid in return_ids], False
        except Exception as exc:
            tb = traceback.format_exc()
            payload = _serialization.error_payload(exc, spec.name, os.getpid(), node_id, tb)
            return [(oid, True, payload) for oid in return_ids], _retryable(spec, exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, ... in user code
            if isinstance(exc, ActorExitRequest) and hasattr(spec, "actor_id"):
                raise  # exit_actor() in an actor method: its host ends the actor
            # Reported like any error (the executor and the worker live on); never
            # retried: the code asked to stop.
            tb = traceback.format_exc()
            payload = _serialization.error_payload(exc, spec.name, os.getpid(), node_id, tb)
            return [(oid, True, payload) for oid in return_ids], False
        return encode_returns(spec, value, node_id, encode, spill=spill), False
    finally:
        task_context.task_id = None
        task_context.spec = None


#: ``CUDA_VISIBLE_DEVICES`` as this worker process started (restored after each task
#: that held GPUs: a task that holds none sees what the process was given).
_CUDA_AT_START = os.environ.get("CUDA_VISIBLE_DEVICES")


def set_gpu_ids(ids: tuple[int, ...] | list[int]) -> None:
    """The GPUs the node assigned to the task this thread runs next: what
    ``get_gpu_ids()`` answers, and the process's ``CUDA_VISIBLE_DEVICES`` (a worker
    runs one task at a time; a task blocked in ``get`` keeps its GPUs)."""
    ids = tuple(ids)
    task_context.gpu_ids = ids
    value = ",".join(str(i) for i in ids) if ids else _CUDA_AT_START
    if os.environ.get("CUDA_VISIBLE_DEVICES") == value:
        return  # as it is (most tasks hold no GPU: no write to the environment)
    if value is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = value


#: ``emit(spec, results, push)``: send a generator's items to the node, which records
#: them and, with ``push``, sends them on to the caller (``("stream_items", ...)``).
Emit = Callable[[Any, list, bool], None]


def _is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def not_a_generator(spec: Any, value: Any) -> TypeError:
    mode = "streaming" if spec.num_returns == STREAMING else "dynamic"
    return TypeError(
        f"{spec.name} has num_returns={mode!r} but returned {type(value).__name__} "
        f"{value!r:.80}, not a generator (a function with yield)")


def item_error(spec: Any, exc: BaseException, node_id: str) -> bytes:
    """The error payload of a generator item for ``exc`` raised where it was made."""
    if isinstance(exc, TaskCancelledError):
        text = str(exc) if exc.task_id is not None else (
            f"task {spec.name} was cancelled while it ran")
        return _serialization.dumps(TaskCancelledError(spec.task_id, text))
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _serialization.error_payload(exc, spec.name, os.getpid(), node_id, tb)


class StreamWriter:
    """Turns the values a generator yields into its items and its end (any loop).

    ``add(value)`` encodes and emits item ``i``; ``fail(exc)`` makes the error the
    next item (streaming: the caller meets it as the next ref) or the end (dynamic:
    ``get`` of its one ref raises it); ``end()`` is the task's results.
    """

    def __init__(self, spec: Any, node_id: str, encode: Callable[[bytes, Any], bytes],
                 emit: Emit) -> None:
        self.spec = spec
        self.node_id = node_id
        self.encode = encode
        self.emit = emit
        self.push = spec.num_returns == STREAMING
        self.count = 0
        self.error: bytes | None = None

    def add(self, value: Any) -> None:
        spec = self.spec
        oid = stream_item_id(spec.task_id, self.count)
        try:
            item = (oid, False, self.encode(oid, value))
        except Exception as exc:  # not serialisable, the store full: this item's error
            logger.warning("%s: storing item %d failed: %r", spec.name, self.count, exc)
            item = (oid, True, item_error(spec, exc, self.node_id))
        self.count += 1
        self.emit(spec, [item], self.push)

    def fail(self, exc: BaseException) -> None:
        payload = item_error(self.spec, exc, self.node_id)
        if self.push:
            oid = stream_item_id(self.spec.task_id, self.count)
            self.count += 1
            self.emit(self.spec, [(oid, True, payload)], True)
        else:
            self.error = payload

    def end(self) -> list[tuple[bytes, bool, bytes]]:
        (oid,) = self.spec.return_ids()
        if self.error is not None:
            return [(oid, True, self.error)]
        if self.push:
            return [(oid, False, _serialization.dumps(self.count))]
        ids = [stream_item_id(self.spec.task_id, i) for i in range(self.count)]
        return [(oid, False, _serialization.dumps(DynamicObjectRefGenerator.of_ids(ids)))]


def run_generator(spec: Any, value: Any, node_id: str, encode: Callable[[bytes, Any], bytes],
                  emit: Emit) -> list[tuple[bytes, bool, bytes]]:
    """Run the generator a generator task returned (``value``) in this thread, each
    item sent as it is yielded; return the task's results (its end)."""
    out = StreamWriter(spec, node_id, encode, emit)
    if not _is_generator(value):
        out.fail(not_a_generator(spec, value))
        return out.end()
    if inspect.isasyncgen(value):
        import asyncio

        async def drain() -> None:
            async for item in value:
                out.add(item)

        try:
            asyncio.run(drain())
        except (Exception, TaskCancelledError) as exc:
            out.fail(exc)
        return out.end()
    try:
        for item in value:
            out.add(item)
    except (Exception, TaskCancelledError) as exc:
        out.fail(exc)
    return out.end()


#: Bytes a result ``(object_id, is_error, data)`` adds to a message besides its data.
RESULT_OVERHEAD = 64


@attrs.frozen
class Spill:
    """How a worker keeps a call's inline results within one frame.

    Each result under the store's inline threshold travels inside the messages that
    report it ("done" to the node, "ready" pushed to a driver that listens), all of a
    call's results in one message. Many mid-sized results (``num_returns=16`` of
    90 KiB each) can make that message larger than the node's frame limit: the node
    would then record errors for results the driver may already have from the push.
    So when their inline total passes ``budget()`` bytes, the largest of them are
    written to the store by ``put(object_id, value)`` (which returns the ``STORE``
    marker), as large values are, until the rest fits: every reader then sees the
    same values.
    """

    put: Callable[[bytes, Any], bytes]
    budget: Callable[[], int]


def encode_returns(
    spec: Any,
    value: Any,
    node_id: str,
    encode: Callable[[bytes, Any], bytes],
    what: str = "task",
    *,
    spill: Spill | None = None,
) -> list[tuple[bytes, bool, bytes]]:
    """The results ``(object_id, is_error, data)`` of a call that returned ``value``.

    ``spec`` is a task's ``TaskSpec`` or an actor method call's ``CallSpec`` (its
    ``name``, ``num_returns`` and ``return_ids()``); ``what`` names it in the error when
    ``value`` is not ``num_returns`` values. A value that cannot be encoded becomes
    that return's error; the others are still returned. With ``spill``, results
    whose inline total would not fit in one frame go to the store (see ``Spill``).
    """
    return_ids = spec.return_ids()
    n = spec.num_returns
    if n <= 1:
        values = [value if n == 1 else None]
    else:
        try:
            values = list(value)
        except TypeError:
            values = []
        if len(values) != n:
            err = ValueError(
                f"{what} {spec.name} has num_returns={n} but returned "
                f"{type(value).__name__} {value!r:.80}, not a sequence of {n} values"
            )
            payload = _serialization.error_payload(err, spec.name, os.getpid(), node_id, str(err))
            return [(oid, True, payload) for oid in return_ids]
    results = []
    for oid, v in zip(return_ids, values, strict=True):
        try:
            results.append((oid, False, encode(oid, v)))
        except SerializationError as exc:
            payload = _serialization.error_payload(
                exc, spec.name, os.getpid(), node_id, f"{type(exc).__name__}: {exc}\n"
            )
            results.append((oid, True, payload))
        except Exception as exc:
            # Storing the value failed (the store is full, its link is gone, ...): this
            # return is an error, the executor and the caller's other returns live on.
            # An escape here would kill the executor with the call unanswered for ever.
            logger.warning("%s %s: storing return %s failed: %r", what, spec.name, oid.hex(), exc)
            payload = _serialization.error_payload(
                exc, spec.name, os.getpid(), node_id, traceback.format_exc()
            )
            results.append((oid, True, payload))
    if spill is not None:
        _spill_results(spec, values, results, node_id, spill, what)
    return results


def _spill_results(
    spec: Any, values: list, results: list, node_id: str, spill: Spill, what: str
) -> None:
    """Move the largest inline results of ``results`` to the store (in place) until
    the rest fit in ``spill.budget()`` bytes (see ``Spill``)."""
    if len(results) == 1:  # (most calls: no generator for one)
        total = len(results[0][2]) + RESULT_OVERHEAD
    else:
        total = sum(len(data) + RESULT_OVERHEAD for _oid, _err, data in results)
    budget = spill.budget()
    if total <= budget:
        return
    inline = sorted(
        (i for i, (_oid, is_error, data) in enumerate(results) if not is_error and data != STORE),
        key=lambda i: len(results[i][2]), reverse=True)
    for i in inline:
        if total <= budget:
            return
        oid, _is_error, data = results[i]
        try:
            results[i] = (oid, False, spill.put(oid, values[i]))
        except Exception as exc:
            # The store cannot take it (full, its link gone): that return is an
            # error, as when a large value cannot be stored; the others live on.
            logger.warning("%s %s: storing return %s (its results together exceed "
                           "%d bytes) failed: %r", what, spec.name, oid.hex(), budget, exc)
            results[i] = (oid, True, _serialization.error_payload(
                exc, spec.name, os.getpid(), node_id, traceback.format_exc()))
        total -= len(data) - len(results[i][2])


class Executor(pykka.ThreadingActor):
    """A Pykka actor that runs tasks one at a time and reports to the Trio loop."""

    use_daemon_thread = True

    def __init__(
        self,
        report: Callable[[TaskSpec, list, bool, float], None],
        node_id: str,
        register: Callable[[Executor], None] | None = None,
        encode: Callable[[bytes, Any], bytes] = _plain_encode,
        decode: Callable[[bytes, bytes], Any] = _plain_decode,
        spill: Spill | None = None,
        emit: Emit | None = None,
        gate: TaskStartGate | None = None,
    ) -> None:
        super().__init__()
        self._gate = gate
        self._emit = emit
        self._encode = encode
        self._decode = decode
        self._spill = spill
        if register is not None:
            register(self)
        self._report = report
        self._node_id = node_id
        self.thread_ident: int | None = None
        self.current: TaskSpec | None = None
        self._lock = threading.Lock()

    def on_start(self) -> None:
        self.thread_ident = threading.get_ident()

    def on_receive(self, message: Any) -> None:
        spec, function, dep_data, *more = message
        started = time.monotonic()
        try:
            if not self._claim(spec):  # cancelled before it started (``TaskStartGate``)
                payload = _serialization.dumps(
                    TaskCancelledError(spec.task_id, f"task {spec.name} was cancelled"))
                results, retry = [(oid, True, payload) for oid in spec.return_ids()], False
            else:
                set_gpu_ids(more[0] if more else ())
                if spec.runtime_env:
                    self._prepare(spec.runtime_env)
                results, retry = run_task(
                    spec, function, dep_data, self._node_id, self._encode, self._decode,
                    self._spill, self._emit,
                )
        except TaskCancelledError:
            # The async exception landed outside user code: still a cancellation.
            payload = _serialization.dumps(
                TaskCancelledError(spec.task_id, f"task {spec.name} was cancelled while it ran"))
            results, retry = [(oid, True, payload) for oid in spec.return_ids()], False
        except Exception as exc:
            # A failure outside user code (e.g. reporting an error that would not
            # pickle): the task fails, the executor keeps serving. Unreported, the
            # task would hold its worker and CPU for ever.
            logger.exception("task %s: the executor failed running it", spec.name)
            payload = _serialization.error_payload(
                exc, spec.name, os.getpid(), self._node_id, traceback.format_exc()
            )
            results, retry = [(oid, True, payload) for oid in spec.return_ids()], False
        finally:
            with self._lock:
                self.current = None
        self._report(spec, results, retry, time.monotonic() - started)

    def _claim(self, spec: TaskSpec) -> bool:
        """Make ``spec`` the task this thread runs; ``False``: it was cancelled."""

        def claim() -> None:
            with self._lock:
                self.current = spec

        if self._gate is None:
            claim()
            return True
        return self._gate.start(spec.task_id, claim)

    def _prepare(self, env: dict) -> None:
        """Apply a task's runtime env (``worker._runtime_env``); a failure to is the
        task's error, raised here where ``on_receive`` reports it."""
        from ..core_worker._worker_state import current_core
        from ._runtime_env import apply_runtime_env

        apply_runtime_env(current_core(), env)

    def interrupt(self, task_id: bytes) -> bool:
        """Raise ``TaskCancelledError`` in the thread if it still runs ``task_id``."""
        with self._lock:
            if self.current is None or self.current.task_id != task_id:
                return False
            if self.thread_ident is None:
                return False
            n = ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread_ident), ctypes.py_object(TaskCancelledError)
            )
            return n == 1
