"""The core worker's link to its node: the connection, the outbox, and whether
the link still holds.

Submitting never crosses into the core loop synchronously: ``submit_task`` and
``put`` serialise in the calling thread, ``enqueue`` a message (a deque: thread-safe
appends) and, if no flush is pending, schedule one with ``TrioToken.run_sync_soon``
(no waiting). The core loop's sender task drains the queue and coalesces
consecutive submits into one `Submit` frame, so under load many tasks travel per
frame; the order of messages is kept (an export always precedes the tasks that use
it; a free follows the submit that used the ref).

A message that cannot be sent
-----------------------------
Only a dead link keeps a message queued (for the reconnect, see ``reconnect``).
A message the link refuses for what it is — a frame over the node's limit, a value
that does not pickle — would be refused again on every retry, and leaving it at the
head of the queue would hold back every later submission of this process for ever.
So it is taken out and its consumers fail instead (``_undeliverable``): a task or
actor call gets the error as its result (``get`` raises it), a put becomes an error
object at the node (a task taking it fails instead of waiting). The cases that can
be seen before anything is queued raise at ``.remote()`` already: a function too
large to export, arguments too large for the link when no store is reachable.
Large arguments normally never get near the limit: they travel by ref through the
object store (``_serialization.dumps_args``, ``put_argument``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

import transport

from ..exceptions import ActorcoreError, ActorcoreSystemError, MessageTooLargeError
from ..protocol import _serialization
from ..protocol import _wire as w
from ._loop import CoreLoop

__all__ = ["LAZY_FLUSH", "LINK_DOWN", "NodeLink", "SUBMIT_FRAME_BYTES", "format_bytes"]

logger = logging.getLogger("actorcore.core_worker")

#: Longest a message queued with ``wake=False`` waits for company.
LAZY_FLUSH = 0.02

#: A calling thread writes a message itself only this long after it last did (see
#: ``NodeLink._flush_from_thread``): closer together, they are a burst to coalesce.
THREAD_SEND_GAP = 0.0002

#: Coalesced submits stop growing a frame at about this many bytes of specs (or half
#: the node link's frame limit, if that is smaller): a batch of many tasks with
#: mid-sized arguments must never add up to a frame the node refuses.
SUBMIT_FRAME_BYTES = 4 << 20

#: A run of queued `Free`s merges into one message of at most this many objects.
FREE_FRAME_IDS = 4096

#: What a spec weighs in a frame besides its arguments (ids, name, resources).
_SPEC_OVERHEAD = 512


def _put_size(item: tuple) -> int:
    """About how many bytes one ``(object_id, is_error, data)`` of a Put takes."""
    data = item[2]
    return 64 + (len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 64)

#: Errors of a send that mean "the link is down": the message waits for a reconnect.
#: Any other error (a frame over the peer's limit, a message that does not pickle)
#: would fail the same way on every retry, so it is never put back in the queue.
LINK_DOWN = (transport.ConnectionLost, trio.ClosedResourceError, trio.BrokenResourceError)

#: Messages that carry objects ``[(object_id, is_error, data), ...]``, and in which field.
_RESULT_FIELD: dict[type, str] = {w.Put: "objects", w.TaskDone: "results",
                                  w.ActorDone: "results", w.StreamItems: "results"}


class _Results(list):
    """The inline results of direct calls queued for the node as one `Put`, open to
    more while it is the queue's last message (``NodeLink.enqueue_results``)."""

    __slots__ = ()


#: What leaves the queue as a `Put`.
_PUTS = (w.Put, _Results)


class NodeLink:
    """The connection to the node and the queue of one-way messages to it.

    ``fail_object(object_id, error_payload)`` makes an object this process owns
    ready with an error: the consumers of a message that can never be sent.
    """

    def __init__(self, conn: Any, loop: CoreLoop, stats: collections.Counter[str],
                 fail_object: Callable[[bytes, bytes], None]) -> None:
        #: The transport connection to the node (replaced by ``reconnect``).
        self.conn = conn
        #: Set once the link is closed (``close``) or lost for good (``lost``).
        self.closed = False
        #: Why the link was lost for good, if it was.
        self.lost_error: BaseException | None = None
        self._loop = loop
        self._stats = stats
        self._fail_object = fail_object
        self._queue: collections.deque = collections.deque()
        self._flush_pending = False
        self._solo = 0  # this many next specs go one per frame (after a refused batch)
        self._sender_busy = False
        self._wake_sender = trio.Event()
        self._lazy_armed = False
        self._lazy_event = trio.Event()
        # Taken by whoever takes messages off the queue to send them: the loop
        # (``flush``) or a calling thread (``_flush_from_thread``).
        self._send_lock = threading.Lock()
        self._thread_sent_at = 0.0
        # Inline results of direct actor calls in a queued Put, not sent yet
        # (``enqueue_results``), and those of them withdrawn since
        # (``withdraw_result``), under their own lock: a ref can die in any thread,
        # also while a flush holds ``_send_lock``.
        self._results_lock = threading.Lock()
        self._unsent_results: set[bytes] = set()
        self._withdrawn: set[bytes] = set()
        self._open_results: _Results | None = None  # (``enqueue_results``)

    def has_queued(self) -> bool:
        """Whether messages wait to be sent."""
        return bool(self._queue)

    def has_queued_of(self, kind: type) -> bool:
        """Whether a message of class ``kind`` waits to be sent (from any thread: a
        queue another thread appended to while this one looked counts as yes)."""
        kinds = (kind, _Results) if kind is w.Put else (kind,)
        try:
            return any(type(m) in kinds for m in self._queue)
        except RuntimeError:  # "deque mutated during iteration"
            return True

    def reconnect(self, conn: Any) -> None:
        """A new connection to the same node (core loop): send what waited."""
        self.conn = conn
        self.flush()

    def lost(self, exc: BaseException) -> None:
        """The link died for good (core loop): ``exc`` says why."""
        self.lost_error = exc
        self.closed = True

    def close(self) -> None:
        """This process leaves its node: nothing more is submitted."""
        self.closed = True

    def enqueue(self, message: Any, *, wake: bool = True, coalesce: bool = True) -> None:
        """Queue a one-way message for the node from any thread (never blocks).

        ``wake=False`` (frees, which nobody waits for): do not wake the core loop for
        it; it leaves with the next message, or within ``LAZY_FLUSH`` seconds. Waking
        a loop in another thread costs a GIL hand-off, about as much as a whole
        message, so the hot submit/get path wakes it once per task, not twice.
        ``coalesce=False``: a message the loop would send in a frame of its own
        anyway (a task worker's `TaskDone`, `LeasedStart`): a calling thread
        writes it whenever the link is idle, also within ``THREAD_SEND_GAP`` of
        its last write.
        """
        self._queue.append(message)
        if not wake:
            if not self._lazy_armed:
                self._lazy_armed = True
                try:
                    self._loop.trio_token.run_sync_soon(self._lazy_event.set)
                except trio.RunFinishedError:
                    pass
            return
        if not self._flush_pending:
            if self._loop.in_loop():
                self._flush_pending = True
                self.flush()
                return
            if self._flush_from_thread(coalesce):
                return
            self._flush_pending = True
            try:
                self._loop.trio_token.run_sync_soon(self.flush)
            except trio.RunFinishedError:
                pass

    # The node learns the inline results of direct actor calls (which it never saw)
    # only so that a ref passed on later resolves there. A sync call's result is
    # read and its ref dropped long before the lazy flush sends that Put
    # (``LAZY_FLUSH``); the Put and the Free behind it would then cost the node (and
    # this loop) a message each per call for an object nobody else can ever ask for.
    # So a result whose ref dies before its Put left is withdrawn from the Put, and
    # no Free is sent: only for a ref never passed on (``ReferenceTable.
    # remove_local_ref`` asks only for an entry not ``seen``, never pickled), so no
    # message naming it can be queued behind the Put or be at the node already.

    #
    # A burst of calls answers in a burst: results queued right behind results join
    # them (the open ``_Results`` at the queue's end, extended under
    # ``_results_lock``; the sender closes it under the same lock as it takes it off
    # the queue, ``_put_of``), so a thousand answers cost one queued message, not a
    # thousand `Put`s built, queued and coalesced one by one. Joining the last message
    # is what queueing a new one behind it would do: the order holds.

    def enqueue_results(self, items: list, wake: bool = False) -> None:
        """Queue the inline results ``[(object_id, is_error, data), ...]`` of direct
        actor calls for the node, lazily (see the comment above); ``wake``: a ref to
        them is being passed on (``ReferenceTable.direct_results``), send soon."""
        queue = self._queue
        with self._results_lock:
            self._unsent_results.update([item[0] for item in items])
            batch = self._open_results
            if not wake and batch is not None and queue and queue[-1] is batch:
                batch.extend(items)
                return
            batch = self._open_results = _Results(items)
        self.enqueue(batch, wake=wake)

    def count(self, what: str) -> None:
        """Count one ``what`` in the core worker's statistics (``stats``)."""
        self._stats[what] += 1

    def _put_of(self, message: Any) -> Any:
        """``message``, just taken off the queue: an open ``_Results`` closes and
        becomes its `Put`."""
        if type(message) is not _Results:
            return message
        with self._results_lock:
            if self._open_results is message:
                self._open_results = None
            return w.Put(list(message))

    def withdraw_result(self, oid: bytes) -> bool:
        """Take the result ``oid`` back out of its queued Put (any thread); ``False``:
        it is not queued (sent already, or never queued here): send a Free."""
        with self._results_lock:
            if oid not in self._unsent_results:
                return False
            self._unsent_results.discard(oid)
            self._withdrawn.add(oid)
            self._stats["results_withdrawn"] += 1
        return True

    def _without_withdrawn(self, message: w.Put) -> w.Put | None:
        """``message`` (leaving the queue) without the results withdrawn from it;
        ``None`` if that is all of them (under ``_send_lock``)."""
        with self._results_lock:
            unsent, withdrawn = self._unsent_results, self._withdrawn
            kept = []
            for item in message.objects:
                oid = item[0]
                if oid in withdrawn:
                    withdrawn.discard(oid)
                else:
                    unsent.discard(oid)
                    kept.append(item)
        if not kept:
            return None
        return message if len(kept) == len(message.objects) else w.Put(kept)

    # A message from a thread outside the loop (a driver's submit) is written by that
    # thread when the link is idle (``transport.Connection.send_from_thread``): the
    # loop is not woken, which costs as much as the message's trip to the node. Not
    # in a burst: a message within ``THREAD_SEND_GAP`` of the last one written this
    # way goes through the loop, where consecutive submits coalesce into one frame
    # (one frame for a thousand tasks, not a thousand). The queue's order holds:
    # messages leave it, in order, under ``_send_lock``, by whichever side sends.

    def _flush_from_thread(self, coalesce: bool = True) -> bool:
        """Send what is queued from this thread; ``False``: the loop must.
        ``coalesce=False``: whatever the time since the last such send."""
        now = time.monotonic()
        if (coalesce and now - self._thread_sent_at < THREAD_SEND_GAP) or self.closed:
            return False
        send = getattr(self.conn, "send_from_thread", None)
        if send is None or not self._send_lock.acquire(blocking=False):
            return False
        try:
            if self._flush_pending or self._sender_busy:
                return False
            while True:
                message = self._next_message()
                if message is None:
                    self._thread_sent_at = now
                    return True
                try:
                    sent = send(message)
                except Exception:  # refused for what it is: the loop fails its consumers
                    sent = False
                if not sent:
                    self._queue.appendleft(message)
                    return False
        finally:
            self._send_lock.release()

    def append_unsent(self, message: Any) -> None:
        """Queue a message without any wake-up: the caller flushes (``flush_now``)."""
        self._queue.append(message)

    def flush_now(self) -> None:
        """Send what is queued (core loop)."""
        if self._queue and not self._flush_pending:
            self.flush()

    def _next_message(self) -> Any:
        """Pop the next frame's message: consecutive submits coalesce into one, up to
        ``SUBMIT_FRAME_BYTES`` of specs (a longer run is split across frames)."""
        outq = self._queue
        batch: list = []
        used = 0
        budget = min(SUBMIT_FRAME_BYTES, self.frame_limit() // 2)
        solo = self._solo > 0
        while outq:
            m = outq[0]
            if type(m) is not w.Submit:
                if batch:
                    break
                m = self._put_of(outq.popleft())
                if type(m) is w.Free:
                    return self._coalesced_frees(m)
                if type(m) is w.Put:
                    m = self._coalesced_puts(m, budget)
                    if m is None:
                        continue
                return m
            outq.popleft()
            specs = m.specs
            for i, spec in enumerate(specs):
                size = len(spec.args) + 32 * len(spec.deps) + _SPEC_OVERHEAD
                if batch and (solo or used + size > budget):
                    outq.appendleft(w.Submit(list(specs[i:])))
                    self._stats["submit_frames"] += 1
                    return w.Submit(batch)
                batch.append(spec)
                used += size
                if solo:
                    self._solo -= 1
        if batch:
            self._stats["submit_frames"] += 1
            return w.Submit(batch)
        return None

    def _coalesced_puts(self, first: w.Put, budget: int) -> w.Put | None:
        """``first`` (just popped) and the Puts queued right behind it, as one Put of
        at most about ``budget`` bytes, without the results withdrawn from them;
        ``None`` if nothing is left of ``first``. A direct call's result is queued as
        a Put of its own (``enqueue_results``): a burst of calls would otherwise send
        the node one message per result, each encoded, decoded and dispatched alone."""
        outq = self._queue
        filtering = bool(self._unsent_results or self._withdrawn)
        message: w.Put | None = self._without_withdrawn(first) if filtering else first
        if not outq or type(outq[0]) not in _PUTS:
            return message
        objects = list(message.objects) if message is not None else []
        used = sum(_put_size(item) for item in objects)
        while outq and type(outq[0]) in _PUTS and used < budget:
            nxt = self._put_of(outq.popleft())
            if filtering:
                nxt = self._without_withdrawn(nxt)
                if nxt is None:
                    continue
            objects.extend(nxt.objects)
            used += sum(_put_size(item) for item in nxt.objects)
        if not objects:
            return None
        self._stats["puts_coalesced"] += 1
        return w.Put(objects)

    def _coalesced_frees(self, first: w.Free) -> w.Free:
        """``first`` (just popped) and the Frees queued right behind it, as one Free
        of at most ``FREE_FRAME_IDS`` objects. A task that read its children's
        results drops their refs one by one, each queuing a `Free` of its own: a
        nested task's eight refs would cost the node eight messages, each decoded
        and dispatched alone, for what one says. Only a run of Frees merges, so
        nothing else is reordered (a Free still follows what used the ref)."""
        outq = self._queue
        if not outq or type(outq[0]) is not w.Free:
            return first
        ids = list(first.object_ids)
        while outq and type(outq[0]) is w.Free and len(ids) < FREE_FRAME_IDS:
            ids.extend(outq.popleft().object_ids)
        self._stats["frees_coalesced"] += 1
        return w.Free(ids)

    def frame_limit(self) -> int:
        """The largest message the node link takes (its peer's frame limit)."""
        return getattr(self.conn, "peer_max_frame_size", transport.DEFAULT_MAX_FRAME_SIZE)

    def check_fits(self, size: int, what: str, hint: str) -> None:
        """Raise ``MessageTooLargeError`` now if a message of ``size`` bytes about
        ``what`` could never be sent to the node."""
        limit = self.frame_limit()
        if size + _SPEC_OVERHEAD > limit:
            raise MessageTooLargeError(
                f"{what}: {format_bytes(size)}, more than the node link's frame limit of "
                f"{format_bytes(limit)}; {hint}"
            )

    def check_args_fit(self, name: str, blob: bytes) -> None:
        """Raise ``MessageTooLargeError`` now if a call's pickled arguments could never
        be sent (large ones go by ref, so only without a reachable store)."""
        if len(blob) >= _serialization.ARG_INLINE_THRESHOLD:
            self.check_fits(len(blob), f"the arguments of {name}()",
                            "the object store is not reachable from this process, so "
                            "they cannot be passed by ref; pass smaller values")

    def _undeliverable(self, message: Any, exc: BaseException) -> None:
        """``message`` can never be sent (not a dead link: see the module docstring):
        fail what waits on it and go on with the next message (core loop)."""
        kind = type(message)
        if (kind is w.Submit and len(message.specs) > 1
                and isinstance(exc, transport.FrameTooLarge)):
            # A batch too large as a whole: send its specs one per frame, so that
            # only one that is too large by itself fails.
            self._solo = len(message.specs)
            self._queue.appendleft(message)
            return
        too_large = isinstance(exc, transport.FrameTooLarge)
        logger.error("cannot send %s to the node, dropped: %s: %s", kind.__name__,
                     type(exc).__name__, exc)

        def error(what: str) -> BaseException:
            if too_large:
                return MessageTooLargeError(f"{what} could not be sent to the node: {exc}")
            return ActorcoreSystemError(
                f"{what} could not be sent to the node: {type(exc).__name__}: {exc}")

        if kind is w.Submit:
            for spec in message.specs:
                err = error(f"{type(spec).__name__} {getattr(spec, 'name', '')}".strip())
                payload = _serialization.dumps(err)
                ids = spec.return_ids()
                if not ids:
                    logger.error("%s is lost: %s", spec, err)
                for oid in ids:
                    self._fail_object(oid, payload)
        elif kind in _RESULT_FIELD:
            # Objects (a put, a task's or actor call's results): the node must still
            # learn of them, as errors, or whoever waits for them would wait for ever.
            field = _RESULT_FIELD[kind]
            if kind is w.TaskDone or kind is w.ActorDone:
                what = (f"the results of {'task' if kind is w.TaskDone else 'actor call'} "
                        f"{message.task_id.hex()} (here {{}})")
            else:
                what = "object {}"
            items = [(oid, True, _serialization.dumps(error(what.format(oid.hex()))))
                     for oid, _is_error, _data in getattr(message, field)]
            self._queue.appendleft(attrs.evolve(message, **{field: items}))

    def flush(self) -> None:
        """Send what is queued now, without a task switch (core loop).

        ``send_nowait`` writes at once on an idle link. If the link is backed up
        (``WouldBlock``) the async sender takes over and waits for it to drain. A
        dead link keeps the message for the reconnect; any other failure drops it
        and fails its consumers (``_undeliverable``).
        """
        with self._send_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._flush_pending = False
        if self._sender_busy:
            self._wake_sender.set()
            return
        while True:
            message = self._next_message()
            if message is None:
                return
            try:
                self.conn.send_nowait(message)
            except trio.WouldBlock:
                self._queue.appendleft(message)
                self._sender_busy = True
                self._wake_sender.set()
                return
            except LINK_DOWN:  # keep it for after a reconnect
                self._queue.appendleft(message)
                return
            except Exception as exc:
                self._undeliverable(message, exc)

    async def run_lazy_flusher(self) -> None:
        while True:
            await self._lazy_event.wait()
            self._lazy_event = trio.Event()
            await trio.sleep(LAZY_FLUSH)
            self._lazy_armed = False
            if self._queue and not self._flush_pending:
                self.flush()

    async def run_sender(self) -> None:
        """The core loop's sender for a backed-up link: ``await send`` (backpressure)."""
        while True:
            await self._wake_sender.wait()
            self._wake_sender = trio.Event()
            while True:
                message = self._next_message()
                if message is None:
                    break
                try:
                    await self.conn.send(message)
                except LINK_DOWN:  # keep it for after a reconnect
                    self._queue.appendleft(message)
                    break
                except Exception as exc:
                    self._undeliverable(message, exc)
            self._sender_busy = False

    def link_error(self, prefix: str = "") -> ActorcoreError:
        """A fresh error saying why this process lost its node (``lost_error``)."""
        lost = self.lost_error
        if isinstance(lost, ActorcoreError):
            return type(lost)(prefix + str(lost))
        return ActorcoreSystemError(prefix + f"the connection to the node was lost: {lost}")

    def unreachable_error(self, actor_id: bytes | None) -> ActorcoreError:
        """The error of an object not ready when the link died for good: an actor
        call's (``actor_id``) says its actor is unreachable (``ActorDiedError``),
        anything else gets the link's error. ``connection_lost`` sets it on every
        such entry; a reader that finds the link closed first raises the same."""
        if actor_id is not None:
            from ..exceptions import ActorDiedError

            return ActorDiedError(f"The actor {actor_id.hex()[:12]} is unreachable "
                                  f"because its node died: {self.link_error()}")
        return self.link_error()

    def check_open(self) -> None:
        """Raise if the link is closed: why, if it was lost."""
        if self.closed:
            if self.lost_error is not None:
                raise self.link_error("this process is no longer connected to an actorcore node: ")
            raise ActorcoreSystemError("this process is no longer connected to an actorcore node")


def format_bytes(n: int) -> str:
    """``n`` bytes for an error message."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB ({n} bytes)"
    return f"{n} bytes"

