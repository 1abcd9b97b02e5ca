"""Actors: a Trio task with a bounded mailbox and lifecycle hooks.

An :class:`Actor` handles one message at a time, in the order the messages were
put into its mailbox: that is what makes consecutive calls on a stateful actor a
chain (the paper's *stateful edges*). The mailbox is bounded, so a fast sender is
slowed down to the actor's pace (``tell`` waits for room) or told so at once
(``tell_nowait`` raises :class:`MailboxFull`) instead of growing memory without
limit.

An actor is a child-protocol service: ``run`` reports ready after ``on_start``,
returns after ``stop()``, raises when a message handler raises (a crash, so its
supervisor restarts a fresh instance from its ``ChildSpec.start`` factory), and
treats cancellation as a shutdown request.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import trio

from ._errors import ActorStopped, AskTimeout, MailboxFull

__all__ = ["Actor", "ActorStatistics"]

logger = logging.getLogger("actorcore.kernel")


class _Reply:
    """A one-shot reply slot for ``ask``."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def send(self, value: Any) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


@attrs.frozen
class _Envelope:
    message: Any
    reply: _Reply | None


@attrs.frozen
class ActorStatistics:
    """Counters from ``Actor.statistics()``.

    Attributes:
      name, state: the actor's name and lifecycle state (``new``, ``starting``,
        ``running``, ``stopping``, ``stopped``, ``failed``).
      queued: messages waiting in the mailbox; mailbox_size: its capacity.
      senders_waiting: tasks blocked in ``tell``/``ask`` on a full mailbox.
      processed: messages handled so far.
    """

    name: str
    state: str
    queued: int
    mailbox_size: float
    senders_waiting: int
    processed: int


def _short(message: Any) -> str:
    text = repr(message)
    return text if len(text) <= 80 else text[:77] + "..."


class Actor:
    """Subclass and override :meth:`receive` (and any of the hooks).

    Args:
      name: used in errors, logs and statistics (default: the class name).
      mailbox_size: capacity of the mailbox (default: the class attribute
        ``mailbox_size``, 1000). ``0`` makes every ``tell`` wait for the actor.

    Subclasses with their own ``__init__`` must call ``super().__init__()``. The
    mailbox exists from construction, so messages sent before ``run`` starts are
    kept (up to its capacity) and handled once it runs.

    Class attribute ``stop_timeout`` (5 s) bounds ``on_stop``/``on_failure``, which
    run shielded from cancellation so that they can await their cleanup.
    """

    mailbox_size: int = 1000
    stop_timeout: float = 5.0

    def __init__(self, *, name: str | None = None, mailbox_size: int | None = None) -> None:
        self.name = name if name is not None else type(self).__name__
        size = type(self).mailbox_size if mailbox_size is None else mailbox_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(
                f"actor {self.name!r}: mailbox_size must be an int >= 0, got {size!r}"
            )
        self._mailbox_size = size
        self._send, self._receive = trio.open_memory_channel[_Envelope](size)
        self._state = "new"
        self._processed = 0
        self._stop_requested = False
        self._idle_scope: trio.CancelScope | None = None
        self._current: _Envelope | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._state}>"

    # -- hooks to override ------------------------------------------------------------

    async def on_start(self) -> None:
        """Called in the actor's task before it reports ready; raising here is a
        crash during start."""

    async def on_stop(self) -> None:
        """Called when the actor stops normally (``stop()`` or cancellation), after
        pending asks were failed with :class:`ActorStopped`. Shielded, bounded by
        ``stop_timeout``."""

    async def on_failure(self, exc: BaseException) -> None:
        """Called instead of ``on_stop`` when a handler raised ``exc`` (the actor
        then crashes with ``exc``). Shielded, bounded by ``stop_timeout``."""

    async def receive(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an ``ask``."""
        raise NotImplementedError(f"{type(self).__name__} must override receive()")

    # -- sending ----------------------------------------------------------------------

    async def tell(self, message: Any) -> None:
        """Put ``message`` in the mailbox, waiting for room if it is full."""
        await self._put(_Envelope(message, None))

    def tell_nowait(self, message: Any) -> None:
        """Put ``message`` in the mailbox or raise :class:`MailboxFull` at once."""
        try:
            self._send.send_nowait(_Envelope(message, None))
        except trio.WouldBlock:
            raise MailboxFull(
                f"mailbox of actor {self.name!r} is full ({self._mailbox_size} messages); "
                f"dropped {_short(message)}",
                actor=self.name,
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._stopped_error(message) from None

    async def ask(self, message: Any, *, timeout: float = math.inf) -> Any:  # noqa: ASYNC109
        """Send ``message`` and wait for the value ``receive`` returns for it.

        Raises what the handler raised, :class:`ActorStopped` if the actor stops
        before replying, :class:`AskTimeout` if no reply came within ``timeout``
        seconds (the time spent waiting for mailbox room counts).
        """
        reply = _Reply()
        with trio.move_on_after(timeout):
            await self._put(_Envelope(message, reply))
            return await reply.wait()
        raise AskTimeout(
            f"actor {self.name!r} did not reply to {_short(message)} within {timeout:g} s",
            actor=self.name,
        )

    def stop(self) -> None:
        """Stop after the message being handled (if any): ``run`` then returns
        normally, so a ``transient`` child is not restarted. Messages still queued
        are dropped and their asks fail with :class:`ActorStopped`."""
        self._stop_requested = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def _put(self, envelope: _Envelope) -> None:
        if self._state in ("stopped", "failed"):
            raise self._stopped_error(envelope.message)
        try:
            await self._send.send(envelope)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._stopped_error(envelope.message) from None

    def _stopped_error(self, message: Any) -> ActorStopped:
        return ActorStopped(
            f"actor {self.name!r} is {self._state}; cannot deliver {_short(message)}",
            actor=self.name,
        )

    # -- the service ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Child protocol: ``on_start``, report ready, handle messages in order."""
        if self._state != "new":
            raise RuntimeError(
                f"actor {self.name!r} has already run (state {self._state}); "
                f"actors run once: create a fresh one"
            )
        self._state = "starting"
        failure: BaseException | None = None
        try:
            await self.on_start()
            self._state = "running"
            task_status.started()
            while not self._stop_requested:
                envelope: _Envelope | None = None
                # stop() cancels this scope to end an idle wait.
                with trio.CancelScope() as self._idle_scope:
                    envelope = await self._receive.receive()
                self._idle_scope = None
                if envelope is not None:
                    await self._handle(envelope)
        except Exception as exc:
            failure = exc
            raise
        finally:
            self._idle_scope = None
            self._state = "stopping"
            self._close_mailbox()
            hook_ok = False
            try:
                await self._run_final_hook(failure)
                hook_ok = True
            finally:
                self._state = "stopped" if failure is None and hook_ok else "failed"

    async def _handle(self, envelope: _Envelope) -> None:
        # On cancellation ``_current`` stays set, so that _close_mailbox fails its
        # ask with ActorStopped instead of leaving the asker waiting.
        self._current = envelope
        try:
            result = await self.receive(envelope.message)
        except Exception as exc:
            self._current = None
            if envelope.reply is not None:
                envelope.reply.fail(exc)
            raise
        self._current = None
        if envelope.reply is not None:
            envelope.reply.send(result)
        self._processed += 1

    def _close_mailbox(self) -> None:
        # No new messages; everything not handled fails its ask with ActorStopped.
        self._send.close()
        pending: list[_Envelope] = [] if self._current is None else [self._current]
        while True:
            try:
                pending.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._receive.close()
        for envelope in pending:
            if envelope.reply is not None:
                envelope.reply.fail(
                    ActorStopped(
                        f"actor {self.name!r} stopped before replying to "
                        f"{_short(envelope.message)}",
                        actor=self.name,
                    )
                )

    async def _run_final_hook(self, failure: BaseException | None) -> None:
        with trio.move_on_after(self.stop_timeout, shield=True) as scope:
            if failure is None:
                await self.on_stop()
            else:
                try:
                    await self.on_failure(failure)
                except Exception:
                    logger.exception("actor %r: on_failure hook raised", self.name)
        if scope.cancelled_caught:
            logger.error(
                "actor %r: %s hook did not finish within %g s; abandoned",
                self.name, "on_stop" if failure is None else "on_failure", self.stop_timeout,
            )

    # -- introspection ----------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def statistics(self) -> ActorStatistics:
        stats = self._send.statistics()
        return ActorStatistics(
            name=self.name,
            state=self._state,
            queued=stats.current_buffer_used,
            mailbox_size=stats.max_buffer_size,
            senders_waiting=stats.tasks_waiting_send,
            processed=self._processed,
        )

    def snapshot(self) -> dict[str, Any]:
        """Fields merged into the supervisor's snapshot of this actor."""
        stats = self.statistics()
        return {
            "kind": "actor",
            "class": type(self).__qualname__,
            "mailbox": stats.queued,
            "mailbox_size": self._mailbox_size,
            "processed": stats.processed,
        }
