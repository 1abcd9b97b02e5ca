"""The host of an actor with ``async def`` methods (``_actor_host``): one thread
running an event loop through anyio, calls started in arrival order as tasks of one
task group, within ``max_concurrency`` and the actor's concurrency groups."""

from __future__ import annotations

import collections
import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

import trio

from ..core_worker._worker_state import task_context
from ..protocol._actors import ActorSpec, CallSpec, cancelled_results
from ._cancel import CallGate, TaskInterrupt, run_interruptible
from ._host_context import HostContext, format_ctor_error, format_recovery_error

__all__ = ["AsyncHost"]


class AsyncHost:
    """A user actor with ``async def`` methods: an event loop thread (via anyio)."""

    def __init__(self, ctx: HostContext, spec: ActorSpec, incarnation: int, dep_data: list,
                 record: dict | None, recovery: tuple | None = None) -> None:
        self.ctx = ctx
        self.spec = spec
        self._create = (incarnation, dep_data, record, recovery)
        self.gate = CallGate(ctx.done)
        self._queue: collections.deque = collections.deque()
        self._soon: Callable[..., Any] | None = None
        self._wake_pending = False
        self._event: Any = None
        self._thread = threading.Thread(
            target=self._thread_main, name=f"actor-{spec.actor_id.hex()[:8]}", daemon=True)
        self._thread.start()

    def submit(self, spec: CallSpec | None, dep_data: list | None) -> None:
        """Queue a call (``None``: stop) from any thread; wake the loop once."""
        if spec is not None:
            self.gate.queued(spec)
        self._queue.append((spec, dep_data))
        soon = self._soon
        if soon is not None and not self._wake_pending:
            self._wake_pending = True
            try:
                soon(self._wake)
            except RuntimeError:  # the loop is closed: the actor stopped
                pass

    def stop(self) -> None:
        self.submit(None, None)

    def offer_reads(self, conn: Any) -> None:
        """(``_ThreadedHandle.offer_reads``) Not lent: the actor's thread waits in its
        event loop, which reads nothing of ours."""

    def cancel(self, task_id: bytes) -> None:
        """Drop ``task_id`` if queued; cancel it (on the loop) if running."""
        self.gate.cancel(task_id)

    def _interrupt(self, scope: Any) -> None:
        soon = self._soon
        if soon is not None:
            try:
                soon(scope.cancel)  # cancel scopes belong to their loop's thread
            except RuntimeError:  # the loop is closed: the actor stopped
                pass

    def _wake(self) -> None:
        self._wake_pending = False
        self._event.set()

    def _thread_main(self) -> None:
        import anyio

        backend = self.spec.async_backend
        try:
            anyio.run(self._main, backend=backend)
        except BaseException as exc:  # noqa: BLE001 - logged: the loop itself failed
            print(f"actor {self.spec.describe()}: event loop failed: {exc!r}", file=sys.stderr)

    async def _main(self) -> None:
        import anyio
        import sniffio

        spec = self.spec
        incarnation, dep_data, record, recovery = self._create
        self._create = None  # type: ignore[assignment]
        task_context.actor_id = spec.actor_id.hex()
        task_context.job_id = spec.job_id
        self._event = anyio.Event()
        on_trio = sniffio.current_async_library() == "trio"
        if on_trio:
            self._soon = trio.lowlevel.current_trio_token().run_sync_soon
        else:
            import asyncio

            self._soon = asyncio.get_running_loop().call_soon_threadsafe
        try:
            instance = self.ctx.construct(spec, dep_data, record)
        except Exception as exc:
            self.ctx.ready(spec, incarnation, format_ctor_error(spec, exc))
            return
        try:
            await self.ctx.recover_async(instance, spec, recovery)
        except Exception as exc:
            self.ctx.ready(spec, incarnation, format_recovery_error(spec, exc))
            return
        self.ctx.ready(spec, incarnation, None)
        slots = anyio.Semaphore(spec.max_concurrency)
        run = self.ctx.run_async

        gate = self.gate

        async def one(call: CallSpec, data: list, scope: Any, slots: Any) -> None:
            try:
                # cancel(ref) while it runs (_actor_cancel): a Trio cancel scope, or
                # task.cancel() on asyncio (a scope per call would cost more there).
                if on_trio:
                    with scope:
                        await run(instance, call, data)
                    cancelled = scope.cancelled_caught
                else:
                    cancelled = await run_interruptible(scope, run(instance, call, data))
                if cancelled:
                    self.ctx.done(call, cancelled_results(call, "while it ran"))
            finally:
                gate.finished(call)
                slots.release()

        async def start(tg: Any, call: CallSpec, data: list, slots: Any) -> None:
            await slots.acquire()  # in arrival order: starts keep their order
            scope = trio.CancelScope() if on_trio else TaskInterrupt()
            if not gate.start(call, functools.partial(self._interrupt, scope)):
                slots.release()  # cancelled while it waited
                return
            tg.start_soon(one, call, data, scope, slots)

        # Concurrency groups. Without any, this loop starts every call itself, at
        # most ``max_concurrency`` at a time. With some, each group is a lane: its
        # own queue, limit (``concurrency_groups={name: n}``) and starter task, so
        # that a group at its limit holds back only its own later calls, never
        # another group's; calls of one group start in arrival order. The default
        # group (methods without ``concurrency_group``) is a lane like the others.
        async with anyio.create_task_group() as tg:
            groups = spec.meta.concurrency_groups
            lanes: dict[str | None, _Lane] = {}
            if groups:
                lanes[None] = _Lane(slots)
                for group, n in groups.items():
                    lanes[group] = _Lane(anyio.Semaphore(n))
                for lane in lanes.values():
                    tg.start_soon(lane.run, functools.partial(start, tg))
            queue = self._queue
            while True:
                while queue:
                    call, data = queue.popleft()
                    if call is None:
                        tg.cancel_scope.cancel()
                        return
                    if lanes:
                        lane = lanes.get(call.concurrency_group) or lanes[None]
                        lane.push(call, data)
                    else:
                        await start(tg, call, data, slots)
                await self._event.wait()
                self._event = anyio.Event()


class _Lane:
    """One concurrency group of an async actor: its calls, started in arrival order
    within its own limit (``AsyncHost._main``)."""

    def __init__(self, slots: Any) -> None:
        import anyio

        self.slots = slots
        self.queue: collections.deque = collections.deque()
        self.event = anyio.Event()

    def push(self, call: CallSpec, data: list | None) -> None:
        self.queue.append((call, data))
        self.event.set()

    async def run(self, start: Callable[..., Any]) -> None:
        import anyio

        while True:
            while self.queue:
                call, data = self.queue.popleft()
                await start(call, data, self.slots)
            await self.event.wait()
            self.event = anyio.Event()


