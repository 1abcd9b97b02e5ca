"""Hosts of actors whose methods are plain functions (``_actor_host``): a Pykka
threading actor each (``ThreadedHost``), on a thread of its own or, for the one actor
of a process with ``max_concurrency=1``, on the process's main thread
(``_MainThreadHost``), whose mailbox also reads its caller's direct link while it is
idle (``_LinkInbox``)."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import queue
from collections.abc import Callable
from typing import Any

import pykka
from pykka._envelope import Envelope

import transport

from ..core_worker._worker_state import task_context
from ..protocol import _wire as w
from ..protocol._actors import ActorSpec, CallSpec
from ._cancel import CallGate
from ._host_context import HostContext, format_ctor_error, format_recovery_error

__all__ = ["ThreadedHost"]


class ThreadedHost(pykka.ThreadingActor):
    """A user actor whose methods are plain functions (see the module docstring)."""

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> Any:
        """The mailbox: a ``queue.SimpleQueue`` instead of Pykka's ``queue.Queue``.

        Every call the loop hands to the actor passes through it, and the actor's
        thread parks in its ``get`` between calls. ``queue.Queue`` does that with a
        ``Condition`` built in Python (a new lock per wait, a waiter list to notify);
        ``SimpleQueue`` is one C-level lock: the hand-off of a sync call costs less on
        both sides. Pykka uses only ``put``, ``get`` and ``empty``, which it has; it is
        unbounded, as Pykka's inbox is."""
        return queue.SimpleQueue()

    def __init__(self, ctx: HostContext, spec: ActorSpec, incarnation: int, dep_data: list,
                 record: dict | None, gate: CallGate, recovery: tuple | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.spec = spec
        self.gate = gate
        self._create = (incarnation, dep_data, record, recovery)
        self.instance: Any = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        # concurrency_groups: a pool of that many threads per named group.
        self.groups: dict[str, concurrent.futures.ThreadPoolExecutor] = {}

    def on_start(self) -> None:
        spec = self.spec
        incarnation, dep_data, record, recovery = self._create
        self._create = None  # type: ignore[assignment]
        task_context.actor_id = spec.actor_id.hex()
        task_context.job_id = spec.job_id  # tasks it submits belong to its job
        try:
            self.instance = self.ctx.construct(spec, dep_data, record)
        except Exception as exc:
            self.ctx.ready(spec, incarnation, format_ctor_error(spec, exc))
            self.stop()
            return
        try:
            self.ctx.recover(self.instance, spec, recovery)
        except Exception as exc:
            self.ctx.ready(spec, incarnation, format_recovery_error(spec, exc))
            self.stop()
            return
        aid = spec.actor_id.hex()
        job_id = spec.job_id

        def init() -> None:
            task_context.actor_id = aid
            task_context.job_id = job_id

        if spec.max_concurrency > 1:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                spec.max_concurrency, thread_name_prefix=f"actor-{aid[:8]}", initializer=init)
        for group, n in spec.meta.concurrency_groups.items():
            self.groups[group] = concurrent.futures.ThreadPoolExecutor(
                n, thread_name_prefix=f"actor-{aid[:8]}-{group}", initializer=init)
        self.ctx.ready(spec, incarnation, None)

    def _handle_receive(self, message: Any) -> Any:
        # A call (``(spec, dep_data)``, from ``_ThreadedHandle.submit`` or the
        # mailbox's own read) straight to ``on_receive``, past Pykka's four checks
        # for its own control messages.
        if type(message) is tuple:
            return self.on_receive(message)
        return super()._handle_receive(message)

    def on_receive(self, message: Any) -> None:
        spec, dep_data = message
        # A call of a named concurrency group runs in that group's pool, beside the
        # default group's calls (which keep the actor's own order and concurrency).
        pool = self.groups.get(spec.concurrency_group) if spec.concurrency_group else None
        if pool is None:
            pool = self.pool
        if pool is not None:
            pool.submit(self._run_call, spec, dep_data)
        else:
            self._run_call(spec, dep_data)

    def _run_call(self, spec: CallSpec, dep_data: list | None) -> None:
        # A call cancelled while queued is skipped (its refs were answered then);
        # a running one is never interrupted (``_cancel``).
        if self.gate.start(spec):
            self.ctx.run_sync(self.instance, spec, dep_data)

    def on_stop(self) -> None:
        self._shutdown_pools()

    def on_failure(self, exception_type: Any, exception_value: Any, tb: Any) -> None:
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        for pool in [self.pool, *self.groups.values()]:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


class _ThreadedHandle:
    def __init__(self, ref: Any, gate: CallGate) -> None:
        self.ref = ref
        self.gate = gate

    def cancel(self, task_id: bytes) -> None:
        self.gate.cancel(task_id)

    def submit(self, spec: CallSpec, dep_data: list | None) -> None:
        self.gate.queued(spec)
        try:
            self.ref.tell((spec, dep_data))
        except pykka.ActorDeadError:
            pass  # stopped (its constructor raised); the node knows it is dead

    def offer_reads(self, conn: Any) -> None:
        """A direct call came on ``conn`` (core loop): lend its read side to the
        actor's thread if its mailbox can take it (``_LinkInbox``)."""
        inbox = self.ref.actor_inbox
        if type(inbox) is _LinkInbox:
            inbox.offer(conn)

    def stop(self) -> None:
        self.ref.stop(block=False)




class _MainThreadHost(ThreadedHost):
    """A ``ThreadedHost`` whose actor loop runs on the process's main thread instead
    of a thread of its own: its constructor and every call, one at a time. Its
    mailbox is a ``_LinkInbox``: while idle, the thread reads its caller's direct
    link itself."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _LinkInbox()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inbox = self.actor_inbox
        assert type(inbox) is _LinkInbox
        if self.ctx.thread_reads:
            inbox.take = self._take_direct_call
        else:
            inbox.close()

    def _start_actor_loop(self) -> None:
        self.ctx.main_thread.submit(self._run_actor_loop)

    def _run_actor_loop(self) -> None:
        try:
            self._actor_loop()
        finally:
            self.actor_inbox.close()  # type: ignore[attr-defined]

    def _take_direct_call(self, conn: Any, message: Any) -> bool:
        """Whether the actor's thread takes ``message``, read from ``conn`` by itself:
        a call to this actor that left its caller alone (``DirectCall.alone``: no
        other call of the caller in flight). Calls of a burst are the loop's, which
        reads and answers them in batches (the thread would wake, read and answer
        once per call). A taken call is registered as ``_h_direct_call`` and
        ``submit`` register one (the actor's thread)."""
        if type(message) is not w.DirectCall or not message.alone:
            return False
        spec = message.spec
        if spec.actor_id != self.spec.actor_id:
            return False
        ctx = self.ctx
        ctx.direct[spec.task_id] = conn
        ctx.thread_taken = spec.task_id
        ctx.calls_read_by_thread += 1
        self.gate.queued(spec)
        return True


class _LinkInbox:
    """The mailbox of an actor on the process's main thread that also reads, while it
    is idle, the direct link its last call came on (``transport.ReadLoan``).

    Why. A direct call otherwise wakes the process's Trio loop, which reads and
    decodes it and puts it here, and then wakes the actor's thread: two wake-ups,
    each waiting for a core and then the GIL. With the read side lent, the kernel
    wakes the actor's thread, which reads, runs and answers the call (the answer
    written by the same thread, ``HostContext._answer_from_thread``): the loop does
    not run at all for a lone call.

    How. The thread waits in ``poll`` on an eventfd (messages put here, the loan
    handed over or closed) and, while it holds the loan, on the link's socket. When
    the socket has input, ``ReadLoan.take`` keeps it only if it is exactly one whole
    call to this actor (``take``, set by the host); anything else -- several frames,
    a partial one, a cancel -- goes back to the loop's reader with every byte read,
    and the loop hands it to this mailbox as before (ordering is the stream's: the
    bytes given back are its next ones). The thread asks for the read side again at
    its next idle wait. The loan ends when the link closes (the loop takes the side
    back) or the actor stops (``close``).

    ``put``, ``get`` and ``empty`` are what Pykka uses of a mailbox."""

    def __init__(self) -> None:
        self._queue: collections.deque = collections.deque()
        self._closed = False
        self._poll = transport.ThreadPoll()
        self.loan: transport.ReadLoan | None = None
        self._loan_conn: Any = None
        # (conn, message) -> whether the thread takes it as a call of its own
        self.take: Callable[[Any, Any], bool] | None = None

    # ---------------------------------------------------------------- any thread

    def put(self, envelope: Any) -> None:
        self._queue.append(envelope)
        self._poll.wake()

    def empty(self) -> bool:
        return not self._queue

    # ------------------------------------------------------------------ core loop

    def offer(self, conn: Any) -> None:
        """A direct call came on ``conn``: borrow its read side unless this mailbox
        holds a loan already (one link at a time: others stay with the loop)."""
        loan = self.loan
        if self._closed or self.take is None or (loan is not None and not loan.closed):
            return
        loan = conn.lend_reads(self._poll.wake)
        if loan is None:
            return
        self._loan_conn = conn
        self.loan = loan
        self._poll.wake()

    # ------------------------------------------------------------ actor's thread

    def get(self) -> Any:
        queue = self._queue
        while True:
            if queue:
                return queue.popleft()
            loan = self.loan
            fd = -1
            if loan is not None:
                if loan.closed:
                    loan.release()
                    self.loan = self._loan_conn = None
                    continue
                if loan.want():
                    fd = loan.fileno()
            self._poll.watch_one(fd)
            for polled in self._poll.sleep(functools.partial(self._has_work, loan, fd)):
                if polled == fd and loan is not None and self.take is not None:
                    message = loan.take(functools.partial(self.take, self._loan_conn))
                    if message is not transport.NOT_TAKEN:
                        return Envelope((message.spec, None))

    def _has_work(self, loan: transport.ReadLoan | None, fd: int) -> bool:
        """Whether the thread must not sleep: a message queued, the loan closed, or
        the side handed over since the thread chose what to poll (``fd`` < 0)."""
        return bool(self._queue) or (
            loan is not None and (loan.closed or (fd < 0 and loan.held)))

    def close(self) -> None:
        """The actor stopped (its thread): give the read side back for good."""
        self._closed = True
        loan, self.loan = self.loan, None
        self._loan_conn = None
        self._poll.watch(())
        if loan is not None:
            loan.release()

