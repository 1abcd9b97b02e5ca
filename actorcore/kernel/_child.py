"""Book-keeping for one child of a supervisor (private to the kernel).

A ``_Child`` lives as long as its spec is in the supervisor; each (re)start of it
is an ``_Incarnation`` with its own service object, cancel scope and ``done``
event. Keeping the incarnation as a separate object is what makes late news from
an old instance harmless: a runner only touches its child's state while it is
still ``child.current``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._spec import ChildSpec

__all__ = ["ChildInfo"]


@attrs.define(eq=False)
class _Incarnation:
    service: Any
    # Unshielded while the child starts (so whoever is starting it can cancel the
    # start), shielded from the moment it reports ready (so only the supervisor,
    # through this very scope, decides when and in which order it stops).
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)
    ready: bool = False
    stop_requested: bool = False
    injected: BaseException | None = None
    # Crashed with all its siblings (``crash_all``): the group restarts as one.
    group: bool = False
    error: BaseException | None = None  # how it ended, once ``done`` is set


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    state: str = "starting"
    restarts: int = 0
    starts: int = 0
    current: _Incarnation | None = None
    value: Any = None
    last_error: BaseException | None = None
    abandoned: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def is_running(self) -> bool:
        inc = self.current
        return inc is not None and inc.ready and not inc.done.is_set()

    def is_alive(self) -> bool:
        inc = self.current
        return inc is not None and not inc.done.is_set()


@attrs.frozen
class _EarlyExit:
    """What a runner reports through ``nursery.start`` when the child ended before
    it was ready: ``error`` is its exception, or ``None`` for a return (or a
    cancellation the supervisor asked for)."""

    error: BaseException | None


@attrs.frozen
class _Exit:
    """A ready child ended on its own (not asked to stop by the supervisor)."""

    child: _Child
    incarnation: _Incarnation
    error: BaseException | None


class _ChildStatus(trio.TaskStatus[Any]):
    """The ``task_status`` a child sees: forwards ``started`` to the real one from
    ``nursery.start``, then lets the supervisor record that the child is ready."""

    __slots__ = ("_on_started", "_real", "ready")

    def __init__(self, real: trio.TaskStatus[Any], on_started: Callable[[Any], None]) -> None:
        self._real = real
        self._on_started = on_started
        self.ready = False

    def started(self, value: Any = None) -> None:
        if self.ready:
            raise RuntimeError("task_status.started() called twice")
        self.ready = True
        self._real.started(value)
        self._on_started(value)


@attrs.frozen
class ChildInfo:
    """A read-only view of one child, from ``Supervisor.children()``/``child_info()``.

    Attributes:
      name, kind, restart: from its spec.
      state: ``starting``, ``running``, ``restarting``, ``stopping``, ``stopped`` or
        ``failed``.
      restarts: how many times it was started again after its first start.
      service: the current service object (``None`` before the first start).
      value: what the current service passed to ``task_status.started``.
      last_error: its most recent exception, if any.
      abandoned: how many times it did not stop within its ``shutdown_timeout``.
    """

    name: str
    kind: str
    restart: str
    state: str
    restarts: int
    service: Any
    value: Any
    last_error: BaseException | None
    abandoned: int

    @classmethod
    def _of(cls, child: _Child) -> ChildInfo:
        return cls(
            name=child.name,
            kind=child.spec.kind,
            restart=child.spec.restart,
            state=child.state,
            restarts=child.restarts,
            service=child.current.service if child.current is not None else None,
            value=child.value,
            last_error=child.last_error,
            abandoned=child.abandoned,
        )
