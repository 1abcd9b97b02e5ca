"""The core worker's reference table: every object this process knows, whether it
is ready, who waits for it, and how many refs to it live here.

``entries`` maps object id -> `Entry`. The owner of an object (the process that
submitted its task or put it) creates the entry at once; the node pushes the task's
results to their owner (`ObjectsReady`) without being asked, so ``get`` on an owned
ref costs no round trip. Refs that arrived from elsewhere get an entry when they are
first waited for, and are fetched from the node (``_waiting``). The core loop
makes an entry ready (``set_ready``), under ``lock``, which also guards the
callbacks registered on entries not ready yet (``register``): a waiter cannot miss a
``set_ready`` racing with its registration. The one other place is a thread that
read a direct call's answer off its link itself (``_reply_reads``): it makes the
entries ready under the same lock, and only if no callback but its own wake-up is
registered on them (``ready_from_thread``), so every callback still runs in the
core loop.

Reference counting: every ``ObjectRef`` instance counts in ``_refcounts``; when the
last one of an owned object dies and it never escaped (was never pickled), the entry
is dropped and the node is told to free it (batched).

Unhandled errors: an owned object that holds a task's error nobody ever looked at
(``get``, ``await``, ``wait`` that saw it ready, or a task it was passed to) is
reported as "Unhandled error" when its last ref dies, as Ray does, so that the
failure of a task whose result was never read is not silent. A ref that dies before
its task finished keeps its entry (marked ``dropped``) until the result is here.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from ..exceptions import TaskError, WorkerCrashedError
from ..protocol import _serialization
from ..protocol import _wire as w
from ..protocol._messages import ObjectData
from ._node_link import NodeLink

__all__ = ["Entry", "ReferenceTable"]

logger = logging.getLogger("actorcore.core_worker")


@attrs.define(slots=True, eq=False)
class Entry:
    """One object as this process knows it."""

    owned: bool
    ready: bool = False
    is_error: bool = False
    data: Any = None  # bytes (inline) or a store handle
    event: trio.Event | None = None  # created on demand, set in the core loop
    callbacks: list[Callable[[], None]] | None = None
    actor: bytes | None = None  # the actor, for an actor method call's result
    seen: bool = False  # its value (or error) was read, waited on or passed on
    dropped: bool = False  # its last ref died before it was ready
    # A direct call's inline result the node has not heard of (``direct_results``):
    # its (object id, is_error, data), queued for the node when a ref escapes.
    unreported: ObjectData | None = None


class ReferenceTable:
    """The objects this process knows (see the module docstring).

    ``entries`` is read by the core worker's other parts (a lookup on the hot
    path); entries are added with ``add`` and change state through this table.
    """

    def __init__(self, link: NodeLink) -> None:
        self._link = link
        #: object id -> its entry
        self.entries: dict[bytes, Entry] = {}
        #: Guards each entry's readiness and callbacks (``set_ready``, ``register``).
        self.lock = threading.Lock()
        self._refcounts: dict[bytes, int] = {}
        self._escaped: set[bytes] = set()
        self._refs_lock = threading.Lock()
        # task id -> the item ids pushed to us so far, of each generator task we own
        # whose ``ObjectRefGenerator`` lives (``register_stream``).
        self._streams: dict[bytes, set[bytes]] = {}
        #: Direct links whose read side a thread keeps without reading it
        #: (``_reply_reads.ReplyReads``): taken back when anyone else waits here.
        self.paused_reads: set[Any] = set()

    def entry(self, oid: bytes) -> Entry | None:
        """The entry of ``oid``, if this process knows it."""
        return self.entries.get(oid)

    def add(self, oid: bytes, entry: Entry) -> None:
        """Record ``entry`` for ``oid`` (an object this process creates)."""
        self.entries[oid] = entry

    def pending_owned(self) -> list[bytes]:
        """The objects this process owns that are not ready yet."""
        return [oid for oid, e in list(self.entries.items()) if e.owned and not e.ready]

    def fail_object(self, oid: bytes, payload: bytes) -> None:
        """Make ``oid`` ready with the error ``payload``, if it is still here (core loop)."""
        entry = self.entries.get(oid)
        if entry is not None:
            self.set_ready(entry, True, payload)

    def fail_all_pending(self, payload: bytes,
                         actor_payload: Callable[[bytes], bytes]) -> None:
        """The node link is lost for good (core loop): entries nobody can read any
        more go, every pending one is made ready with the error ``payload``, or, an
        actor call's result, with ``actor_payload(actor_id)`` (made once per actor)."""
        actor_err: dict[bytes, bytes] = {}
        for oid, entry in list(self.entries.items()):
            if entry.dropped:  # nobody can read it any more
                del self.entries[oid]
                continue
            if not entry.ready:
                if entry.actor is not None:
                    blob = actor_err.get(entry.actor)
                    if blob is None:
                        blob = actor_err[entry.actor] = actor_payload(entry.actor)
                    self.set_ready(entry, True, blob)
                    continue
                self.set_ready(entry, True, payload)

    def make_pending(self, entry: Entry) -> None:
        """``entry`` is ready no more: its value was lost and is being rebuilt."""
        with self.lock:
            entry.ready = False  # its data stays STORE: a reader meanwhile asks too

    def add_local_ref(self, oid: bytes) -> None:
        with self._refs_lock:
            self._refcounts[oid] = self._refcounts.get(oid, 0) + 1

    def remove_local_ref(self, oid: bytes) -> None:
        with self._refs_lock:
            n = self._refcounts.get(oid, 0) - 1
            if n > 0:
                self._refcounts[oid] = n
                return
            self._refcounts.pop(oid, None)
            if oid in self._escaped:
                return
        entry = self.entries.get(oid)
        if entry is None or not entry.owned or self._link.closed:
            return
        ready = entry.ready
        if entry.unreported is not None or not ready:
            with self.lock:  # atomic with ``direct_results``' decision
                unreported = entry.unreported is not None
                ready = entry.ready
                if not ready:
                    entry.dropped = True  # kept until its result is here (drop_late)
            if unreported:  # the node never heard of it: no Put, no Free
                self._link.count("results_unreported")
                if ready:
                    del self.entries[oid]
                    if entry.is_error and not entry.seen:
                        self.report_unhandled(oid, entry)
                return
        if ready:
            del self.entries[oid]
            seen = entry.seen
            if entry.is_error and not seen:
                self.report_unhandled(oid, entry)
            if not seen and self._link.withdraw_result(oid):
                return  # the node never hears of it (``NodeLink.enqueue_results``)
        self._link.enqueue(w.Free([oid]), wake=False)

    def drop_late(self, oid: bytes, entry: Entry) -> None:
        """The result of a ref that died before it was ready is here (core loop)."""
        with self._refs_lock:
            if self._refcounts.get(oid):  # a ref to it was made again meanwhile
                entry.dropped = False
                return
        if self.entries.get(oid) is entry:
            del self.entries[oid]
        if entry.is_error and not entry.seen:
            self.report_unhandled(oid, entry)

    def report_unhandled(self, oid: bytes, entry: Entry) -> None:
        """Log the error nobody read, as Ray's "Unhandled error" (any thread).

        Only a task's failure is one (its exception, or its worker's death), as in
        Ray (``IsUnhandledError`` in its memory store): a cancel was asked for, and
        an actor's death is told to every caller by its own error, so neither is
        news; a recursive cancel would otherwise log each child its parent
        dropped."""
        if self._link.closed or _ignore_unhandled():
            return
        try:
            error: Any = _serialization.loads(entry.data)
        except Exception as exc:
            error = f"(the error of object {oid.hex()} could not be read: {exc!r})"
        if isinstance(error, BaseException) and not isinstance(
                error, (TaskError, WorkerCrashedError)):
            return
        _unhandled_logger().error(
            "Unhandled error (suppress with 'ACTORCORE_IGNORE_UNHANDLED_ERRORS=1'): %s", error)

    def mark_seen(self, oids: Iterable[bytes]) -> None:
        """``oids`` were passed to a task or call: their errors reach its caller,
        and the node hears of their values (``direct_results``)."""
        entries = self.entries
        report = []
        with self.lock:
            for oid in oids:
                e = entries.get(oid)
                if e is not None:
                    e.seen = True
                    if e.unreported is not None:
                        report.append(e.unreported)
                        e.unreported = None
        if report:
            self._link.enqueue_results(report, wake=True)

    def mark_escaped(self, oid: bytes) -> None:
        """A ref to ``oid`` was pickled: it may be read anywhere from now on."""
        with self.lock:
            self._escaped.add(oid)
            e = self.entries.get(oid)
            item = e.unreported if e is not None else None
            if item is not None:
                e.unreported = None  # type: ignore[union-attr]
        if item is not None:
            self._link.enqueue_results([item], wake=True)

    def direct_results(self, items: Iterable[ObjectData]) -> list[ObjectData]:
        """Of a direct call's inline results (``items``, not yet ready), those the node
        must hear of now; the others it hears of only if a ref to them escapes.

        Why. The node knows a direct call's result only so that a ref passed on
        resolves there (a task's argument, a ref inside a pickled value). Most refs
        of direct calls are read and dropped here and never passed on: a `Put` of
        each result and a `Free` behind it would cost this process and the node a
        message each per call for an object nobody else can ever ask for. So a
        result whose ref has not been passed on or pickled (``seen``, escaped) is
        only marked ``unreported``, with its data: `mark_seen` and `mark_escaped`
        queue it for the node before the message that passes the ref on can be
        queued (the node's link keeps the order), and a ref that dies unreported
        sends nothing (``remove_local_ref``). The decision and the marks are taken
        under ``lock``, so a ref passed on while its result arrives is reported
        exactly once. A dropped ref's result (its ``Free`` sent) is neither."""
        entries = self.entries
        escaped = self._escaped
        report = []
        with self.lock:
            for item in items:
                e = entries.get(item[0])
                if e is None or e.dropped:
                    continue
                if e.seen or item[0] in escaped:
                    report.append(item)
                else:
                    e.unreported = item
        return report

    # -------------------------------------------------------- receiving results

    def on_objects_ready(self, items: Iterable[ObjectData]) -> None:
        """The node pushed values (core loop)."""
        entries = self.entries
        for oid, is_error, data in items:
            entry = entries.get(oid)
            if entry is None:
                entry = self._stream_item(oid)
                if entry is None:
                    continue  # freed by its owner meanwhile
            self.set_ready(entry, is_error, data)
            if entry.dropped:
                self.drop_late(oid, entry)

    # ------------------------------------------------------- generator tasks

    # A generator task's items reach its owner as the node records them, before the
    # caller asks for them (the caller sees the first before the generator ends).
    # The owner has made no entry for them at submission (it does not know how many
    # there will be), so a pushed item of a stream it still iterates gets an owned
    # entry here, and the ``ObjectRefGenerator`` takes the same entry when it reaches
    # that item (``stream_entry``: either side may come first; ``setdefault`` makes
    # them meet). Items of a stream whose generator is gone are freed on arrival.

    def register_stream(self, task_id: bytes) -> None:
        """Items of ``task_id`` pushed to us are kept for its ``ObjectRefGenerator``."""
        self._streams.setdefault(task_id, set())

    def stream_entry(self, oid: bytes) -> Entry:
        """The owned entry of a stream item (made if it has not arrived yet)."""
        entry = self.entries.get(oid)
        if entry is None:
            entry = self.entries.setdefault(oid, Entry(owned=True))
        items = self._streams.get(oid[:16])
        if items is not None:
            items.add(oid)
        return entry

    def _stream_item(self, oid: bytes) -> Entry | None:
        """The entry for a pushed item of a live stream (core loop), else ``None``;
        an item of a stream nobody iterates any more is freed at once."""
        from ..protocol._ids import is_stream_item

        if not is_stream_item(oid):
            return None
        items = self._streams.get(oid[:16])
        if items is None:  # its generator is gone: nobody will ask for it
            self._link.enqueue(w.Free([oid]), wake=False)
            return None
        items.add(oid)
        return self.entries.setdefault(oid, Entry(owned=True))

    def drop_stream(self, task_id: bytes) -> None:
        """The ``ObjectRefGenerator`` of ``task_id`` is gone (any thread): items that
        arrived and that no ref holds are freed, and later ones when they come."""
        items = self._streams.pop(task_id, None)
        if not items or self._link.closed:
            return
        free = []
        with self._refs_lock:
            for oid in items:
                if self._refcounts.get(oid) or oid in self._escaped:
                    continue
                entry = self.entries.get(oid)
                if entry is not None and entry.ready:
                    del self.entries[oid]
                    if entry.is_error and not entry.seen:
                        self.report_unhandled(oid, entry)
                    free.append(oid)
                elif entry is not None:
                    entry.dropped = True
                    free.append(oid)
        if free:
            self._link.enqueue(w.Free(free), wake=False)

    def set_ready(self, entry: Entry, is_error: bool, data: Any) -> None:
        """Make ``entry`` ready and run its callbacks (core loop)."""
        with self.lock:
            if entry.ready:
                return
            callbacks = _settle(entry, is_error, data)
        if callbacks:
            for cb in callbacks:
                try:
                    cb()
                except Exception:  # a user's callback must not break the loop
                    logger.exception("a callback on a ready object raised (ignored)")

    def ready_from_thread(self, items: Iterable[ObjectData], own: Callable[[], None]) -> bool:
        """Make the entries of ``items`` ready in this thread, which read them off a
        direct link (``_reply_reads``), if no callback but ``own`` waits on them and
        each is known and not a dropped ref's; ``False``: nothing done, the core
        loop must (``on_objects_ready``). Checked and set in one hold of ``lock``."""
        entries = self.entries
        with self.lock:
            found = []
            for oid, is_error, data in items:
                entry = entries.get(oid)
                if entry is None or entry.dropped:
                    return False
                callbacks = entry.callbacks
                if callbacks and (len(callbacks) > 1 or callbacks[0] != own):
                    return False
                found.append((entry, is_error, data))
            for entry, is_error, data in found:
                if not entry.ready:
                    _settle(entry, is_error, data)  # its one callback is our own
        return True

    def reclaim_paused_reads(self) -> None:
        """Take back every direct link's read side a thread keeps unread
        (``_reply_reads``): someone else waits here, or a burst's answers are due,
        and the loop must read them now."""
        for reads in list(self.paused_reads):
            reads.reclaim()

    def register_own(self, entry: Entry, fire: Callable[[], None]) -> bool:
        """``register_one`` for a thread that reads the entry's answer itself
        (``_reply_reads``): the same, without taking back the read sides kept unread."""
        with self.lock:
            if entry.ready:
                return False
            if entry.callbacks is None:
                entry.callbacks = [fire]
            else:
                entry.callbacks.append(fire)
        return True

    def register(self, entries: Sequence[Entry], needed: int, fire: Callable[[], None],
                  fail_fast: bool = False) -> Callable:
        """Call ``fire()`` (core loop) once ``needed`` more of ``entries`` are ready,
        or, with ``fail_fast``, as soon as one of them is ready with an error.

        Returns the callback registered, for ``unregister``. ``fire`` is called at
        most once; if enough are ready already, it is called now, in this thread.
        """
        if self.paused_reads:  # their answers must be read now (``_reply_reads``)
            self.reclaim_paused_reads()
        state = [needed, False]

        def one() -> None:
            state[0] -= 1
            if state[0] <= 0 and not state[1]:
                state[1] = True
                fire()

        callback = one
        if fail_fast:
            # One callback for every entry: it must tell which one became ready
            # (``set_ready`` sets ``is_error`` before it runs the callbacks).
            def one_of(entry: Entry) -> None:
                if entry.is_error and not state[1]:
                    state[1] = True
                    fire()
                    return
                one()

            callback = _PerEntry(one_of)

        with self.lock:
            ready = 0
            failed = False
            for e in entries:
                if e.ready:
                    ready += 1
                    failed = failed or e.is_error
            state[0] -= ready
            if state[0] <= 0 or (fail_fast and failed):
                state[1] = True
            else:
                for e in entries:
                    if not e.ready:
                        cb = callback.bind(e) if fail_fast else callback  # type: ignore[attr-defined]
                        if e.callbacks is None:
                            e.callbacks = [cb]
                        else:
                            e.callbacks.append(cb)
        if state[1]:
            fire()
        return callback

    def register_one(self, entry: Entry, fire: Callable[[], None]) -> bool:
        """Call ``fire()`` (core loop) once ``entry`` is ready: ``register`` for one
        entry without its counting (a blocking ``get`` of one ref); undo with
        ``unregister([entry], fire)``. ``False``: it is ready already, and ``fire``
        is not called."""
        if self.paused_reads:  # its answer must be read now (``_reply_reads``)
            self.reclaim_paused_reads()
        return self.register_own(entry, fire)

    def unregister(self, entries: Sequence[Entry], callback: Callable) -> None:
        with self.lock:
            for e in entries:
                if e.callbacks:
                    try:
                        e.callbacks.remove(
                            callback.bound[id(e)] if isinstance(callback, _PerEntry)
                            and id(e) in callback.bound else callback)
                    except ValueError:
                        pass


def _settle(entry: Entry, is_error: bool, data: Any) -> list | None:
    """Make ``entry`` ready with its value (the table's lock held); its callbacks,
    taken off it, for the caller to run or drop."""
    entry.is_error = is_error
    entry.data = data
    entry.ready = True
    callbacks, entry.callbacks = entry.callbacks, None
    return callbacks


def _ignore_unhandled() -> bool:
    from ..session._config import env_value

    return bool(env_value("ACTORCORE_IGNORE_UNHANDLED_ERRORS")
                or os.environ.get("RAY_IGNORE_UNHANDLED_ERRORS"))


def _unhandled_logger() -> logging.Logger:
    """``actorcore.unhandled``: to stderr (the driver's console; a worker's output
    goes to the driver with ``log_to_driver``) and, propagated, the session log."""
    log = logging.getLogger("actorcore.unhandled")
    if not _stderr_handler and not _root_writes_to_stderr():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s ERROR %(message)s"))
        log.addHandler(handler)
        _stderr_handler.append(handler)
    return log


_stderr_handler: list[logging.Handler] = []


def _root_writes_to_stderr() -> bool:
    """A worker's root logger writes to stderr already (``basicConfig``): a
    handler of our own would print each report twice."""
    return any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
               for h in logging.getLogger().handlers)


class _PerEntry:
    """A ``register`` callback made once per entry (``bind``), remembered by entry
    so that ``unregister`` removes the right one from each."""

    __slots__ = ("fn", "bound")

    def __init__(self, fn: Callable[[Entry], None]) -> None:
        self.fn = fn
        self.bound: dict[int, Callable[[], None]] = {}

    def bind(self, entry: Entry) -> Callable[[], None]:
        cb = self.bound[id(entry)] = functools.partial(self.fn, entry)
        return cb

    def __call__(self) -> None:  # never registered itself
        raise AssertionError("_PerEntry is not a callback")

