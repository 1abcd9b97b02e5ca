"""The supervisor: runs children from specs and restarts them by strategy.

How the cancel scopes are arranged
----------------------------------
Trio has no way to kill a task: a task stops when it leaves the cancel scopes that
were cancelled around it, and it can always defer that (a shielded ``finally``, a
blocking call, a thread it waits for). The supervisor therefore works with, not
against, cancellation:

* Each child runs inside its own ``CancelScope`` in the supervisor's nursery
  (``_Incarnation.scope``). It is started with ``nursery.start`` so that it counts
  as running only once it called ``task_status.started()``; until then its scope
  is *not* shielded, and whoever is starting it (the supervisor's task, or the
  caller of ``start_child``) can abort the start by being cancelled.
* The moment the child reports ready its scope becomes *shielded*. From then on a
  cancellation of the supervisor does not reach the children all at once (which
  is what a plain nursery would do); the supervisor's own shutdown code, itself
  shielded, cancels them one at a time in reverse start order. Every code path out
  of ``run`` goes through that shutdown in a ``finally``, so no child can be left
  behind in a shielded scope.
* Stopping a child means cancelling its scope (the protocol's "shutdown request";
  the child cleans up in ``finally``) and waiting at most ``shutdown_timeout`` for
  its task to end. A child that takes longer (e.g. a shielded cleanup that hangs)
  is *abandoned*: the error is logged and counted, and the supervisor goes on
  stopping (or restarting) the others instead of hanging behind it. Structured
  concurrency still holds: the supervisor's nursery waits for the abandoned task
  before ``run`` returns, so nothing outlives its supervisor; the timeout bounds
  how long one stuck child can delay everyone else, and the parent's own timeout
  bounds the supervisor as a whole.
* Injecting a crash (``crash_child``) reuses the same scope: the child is cancelled
  at its current checkpoint, runs its cleanup, and its exit is recorded as a crash
  with the injected exception, so it takes exactly the path of a real crash.

Child tasks never raise into the nursery (that would cancel their siblings): a
runner catches the child's exception and posts it to the supervisor's task, which
applies the strategy. All changes to the set of children (restarts, ``start_child``,
``terminate_child``, shutdown) happen under one lock, one at a time.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from ._child import ChildInfo, _Child, _ChildStatus, _EarlyExit, _Exit, _Incarnation
from ._errors import (
    ChildNotRunning,
    ChildStartFailed,
    DuplicateChild,
    InjectedCrash,
    RestartIntensityExceeded,
    SupervisorFailed,
    SupervisorNotRunning,
    UnknownChild,
    WaitTimeout,
)
from ._snapshot import child_entry
from ._spec import STRATEGIES, ChildSpec, RestartType, Strategy

__all__ = ["Supervisor", "SupervisorStatistics"]

logger = logging.getLogger("actorcore.kernel")


@attrs.frozen
class SupervisorStatistics:
    """Counters from ``Supervisor.statistics()``.

    Attributes:
      name, state, strategy, max_restarts, max_seconds: as configured / current.
      children: how many children it has; running: how many of them are running.
      restarts: total child restarts since it started.
      recent_restarts: restarts inside the current intensity window.
      abandoned: children that did not stop within their shutdown timeout.
    """

    name: str
    state: str
    strategy: str
    children: int
    running: int
    restarts: int
    recent_restarts: int
    max_restarts: int
    max_seconds: float
    abandoned: int


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"supervisor name must be a non-empty string without '/', got {name!r}")
    return name


class Supervisor:
    """A service that runs child services and restarts them by ``strategy``.

    Args:
      name: its name in snapshots and errors (no ``/``).
      children: ``ChildSpec``\\ s, started in this order and stopped in reverse.
      strategy: after a child's exit that calls for a restart,
        ``"one_for_one"`` restarts that child only, ``"one_for_all"`` stops all
        other children and restarts all of them, ``"rest_for_one"`` stops and
        restarts the children started after it as well.
      max_restarts, max_seconds: restart intensity. One more restart than
        ``max_restarts`` within ``max_seconds`` and the supervisor stops its
        children and fails with :class:`RestartIntensityExceeded` (so its own
        supervisor decides). ``max_restarts=0`` allows no restart at all.
      kind: its kind in snapshots.
      node_id: reported in snapshots (children without one inherit it).

    A supervisor is a service (``await sup.run(task_status=...)``), so trees nest;
    it runs once: restarts make a fresh one from its ``ChildSpec.start`` factory
    (see :meth:`spec`). A crash of a child while it starts counts as a crash.
    """

    def __init__(
        self,
        name: str,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        kind: str = "supervisor",
        node_id: str | None = None,
    ) -> None:
        self.name = _check_name(name)
        if strategy not in STRATEGIES:
            raise ValueError(
                f"supervisor {name!r}: strategy must be one of {', '.join(STRATEGIES)}, "
                f"got {strategy!r}"
            )
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(
                f"supervisor {name!r}: max_restarts must be an int >= 0, got {max_restarts!r}"
            )
        if (
            isinstance(max_seconds, bool)
            or not isinstance(max_seconds, int | float)
            or not max_seconds > 0
        ):
            raise ValueError(
                f"supervisor {name!r}: max_seconds must be a number > 0, got {max_seconds!r}"
            )
        self.strategy: Strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self.kind = kind
        self.node_id = node_id
        self._children: list[_Child] = []
        for spec in children:
            self._add(spec)
        self._state = "starting"
        self._ran = False
        self._finished = False
        self._nursery: trio.Nursery | None = None
        self._exits: trio.MemorySendChannel[_Exit] | None = None
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._restart_times: collections.deque[float] = collections.deque()
        self._restarts_total = 0
        self._abandoned_total = 0

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy} {self._state}>"

    @classmethod
    def spec(
        cls,
        name: str,
        children: Iterable[ChildSpec] = (),
        *,
        restart: RestartType = "permanent",
        shutdown_timeout: float = math.inf,
        **options: Any,
    ) -> ChildSpec:
        """A ``ChildSpec`` that runs a fresh ``Supervisor(name, children, **options)``
        on every (re)start: the way to nest trees."""
        specs = tuple(children)
        kind = options.get("kind", "supervisor")
        return ChildSpec(
            name,
            functools.partial(cls, name, specs, **options),
            restart=restart,
            kind=kind,
            shutdown_timeout=shutdown_timeout,
        )

    # -- the service ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, report ready, then supervise until
        cancelled (ordered shutdown, normal return) or until the restart intensity
        is exceeded (children stopped, :class:`RestartIntensityExceeded` raised)."""
        if self._ran:
            raise RuntimeError(
                f"supervisor {self.name!r} has already run; a supervisor runs once "
                f"(use Supervisor.spec(...) so that each restart makes a fresh one)"
            )
        self._ran = True
        send, receive = trio.open_memory_channel[_Exit](math.inf)
        self._exits = send
        failure: SupervisorFailed | None = None
        self._set_state("starting")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    async with self._lock:
                        await self._start_group(list(self._children))
                    self._set_state("running")
                    task_status.started()
                    async for exit_ in receive:
                        async with self._lock:
                            await self._handle_exit(exit_)
                except SupervisorFailed as exc:
                    # Kept out of the nursery so that it does not reach the parent
                    # wrapped in an ExceptionGroup.
                    failure = exc
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shutdown()
        finally:
            self._nursery = None
            self._finished = True
            self._set_state("failed" if failure is not None else "stopped")
        if failure is not None:
            logger.error("%s", failure)
            raise failure

    # -- run-time API -----------------------------------------------------------------

    async def start_child(self, spec: ChildSpec) -> Any:
        """Add a child and start it (after the existing ones); return the value it
        passed to ``task_status.started``. If it crashes (or returns) before it is
        ready, it is not kept and :class:`ChildStartFailed` is raised."""
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child needs a ChildSpec, got {spec!r}")
        self._check_running(f"start child {spec.name!r}")
        async with self._lock:
            self._check_running(f"start child {spec.name!r}")
            child = self._add(spec)
            self._notify()
            try:
                early = await self._start_one(child)
            except BaseException:
                if not child.is_running():
                    self._remove(child)
                raise
            if early is not None:
                self._remove(child)
                self._check_running(f"start child {spec.name!r}")
                raise ChildStartFailed(self.name, spec.name, early.error) from early.error
            return child.value

    async def terminate_child(self, name: str) -> None:
        """Stop a child (cancel it, give it its ``shutdown_timeout``) and remove it."""
        self._check_running(f"terminate child {name!r}")
        async with self._lock:
            self._check_running(f"terminate child {name!r}")
            child = self._get(name)
            await self._stop_one(child)
            self._remove(child)

    def crash_child(self, name: str, exc: BaseException | type[BaseException] | None = None) -> None:
        """Fault hook: make a running child crash with ``exc`` (default
        :class:`InjectedCrash`). The child is interrupted at its current checkpoint
        (it sees a cancellation and runs its cleanup) and its exit is handled as a
        crash with ``exc``: restarted by the strategy, counted for intensity."""
        self._check_running(f"crash child {name!r}")
        child = self._get(name)
        inc = child.current
        if inc is None or not child.is_running() or inc.stop_requested or inc.injected is not None:
            raise ChildNotRunning(self.name, name, child.state)
        if exc is None:
            exc = InjectedCrash(f"crash injected into child {name!r} of supervisor {self.name!r}")
        elif isinstance(exc, type) and issubclass(exc, BaseException):
            exc = exc(f"crash injected into child {name!r} of supervisor {self.name!r}")
        if not isinstance(exc, Exception):
            raise TypeError(f"crash_child needs an Exception instance or class, got {exc!r}")
        inc.injected = exc
        inc.scope.cancel()

    def crash_all(self, exc: BaseException | None = None) -> list[str]:
        """Fault hook: this supervisor's subtree crashes as a whole, as if its own
        parent restarted it. Every running child is interrupted (like
        ``crash_child``) and the group starts again in order as *one* restart,
        counted once for the restart intensity whatever the strategy — crashing a
        supervisor of N children is one failure, not N. Returns the names of the
        children crashed (those not running, e.g. restarting, are left alone)."""
        self._check_running("crash all children")
        if exc is None:
            exc = InjectedCrash(f"crash injected into supervisor {self.name!r}")
        if not isinstance(exc, Exception):
            raise TypeError(f"crash_all needs an Exception instance, got {exc!r}")
        crashed = []
        for child in self._children:
            inc = child.current
            if inc is None or not child.is_running() or inc.stop_requested or inc.injected is not None:
                continue
            inc.injected = exc
            inc.group = True
            inc.scope.cancel()
            crashed.append(child.name)
        return crashed

    def child(self, name: str) -> Any:
        """The service object of the running child ``name``."""
        child = self._get(name)
        if not child.is_running() or child.current is None:
            raise ChildNotRunning(self.name, name, child.state)
        return child.current.service

    def find(self, path: str) -> Any:
        """The running service at ``path`` below this supervisor, e.g.
        ``sup.find("gcs/shard_0/replica_1")``: each component is a child name; every
        component but the last must be a supervisor (anything with ``child()``)."""
        parts = [part for part in path.split("/") if part]
        if not parts:
            raise ValueError(f"find() needs a path of child names, got {path!r}")
        node: Any = self
        for depth, part in enumerate(parts):
            lookup = getattr(node, "child", None)
            if not callable(lookup):
                where = "/".join(parts[:depth])
                raise UnknownChild(self.name, path, known=None) from TypeError(
                    f"{where!r} is a {type(node).__name__}, not a supervisor"
                )
            try:
                node = lookup(part)
            except UnknownChild as exc:
                raise UnknownChild(self.name, path) from exc
        return node

    def child_info(self, name: str) -> ChildInfo:
        """A read-only view of one child (state, restarts, last error, ...)."""
        return ChildInfo._of(self._get(name))

    def children(self) -> list[ChildInfo]:
        """Read-only views of all children, in start order."""
        return [ChildInfo._of(child) for child in self._children]

    @property
    def state(self) -> str:
        """This supervisor's own state."""
        return self._state

    def snapshot(self) -> dict[str, Any]:
        """This subtree as plain data, in the shape of CONTRACTS.md §1."""
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self._state,
            "restarts": 0,
            "pid": os.getpid(),
            "node_id": self.node_id,
            "strategy": self.strategy,
            "children": [self._child_snapshot(child) for child in self._children],
        }

    def statistics(self) -> SupervisorStatistics:
        try:
            self._expire_restarts(trio.current_time())
        except RuntimeError:  # outside of trio.run: report the window as last seen
            pass
        return SupervisorStatistics(
            name=self.name,
            state=self._state,
            strategy=self.strategy,
            children=len(self._children),
            running=sum(child.is_running() for child in self._children),
            restarts=self._restarts_total,
            recent_restarts=len(self._restart_times),
            max_restarts=self.max_restarts,
            max_seconds=self.max_seconds,
            abandoned=self._abandoned_total,
        )

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = math.inf, what: str = ""  # noqa: ASYNC109
    ) -> None:
        """Wait until ``predicate()`` is true; it is re-checked after every state
        change of this supervisor or its children (no polling). Raises
        :class:`WaitTimeout` after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return
        raise WaitTimeout(
            f"supervisor {self.name!r}: {what or 'condition'} not reached within {timeout:g} s"
        )

    async def wait_running(
        self, name: str | None = None, *, restarts: int = 0, timeout: float = math.inf  # noqa: ASYNC109
    ) -> None:
        """Wait until child ``name`` (or, with no name, this supervisor) is running,
        and has been restarted at least ``restarts`` times. Raises
        :class:`UnknownChild` if the child goes away, :class:`SupervisorNotRunning`
        if the supervisor ends, :class:`WaitTimeout` after ``timeout``."""

        def reached() -> bool:
            if self._finished:
                operation = "reach running" if name is None else f"run child {name!r}"
                raise SupervisorNotRunning(self.name, self._state, operation)
            if name is None:
                return self._state == "running"
            child = self._get(name)
            return child.is_running() and child.restarts >= restarts

        what = "running" if name is None else f"child {name!r} running (restarts >= {restarts})"
        await self.wait_for(reached, timeout=timeout, what=what)

    # -- strategy ---------------------------------------------------------------------

    def _should_restart(self, child: _Child, error: BaseException | None) -> bool:
        restart = child.spec.restart
        return restart == "permanent" or (restart == "transient" and error is not None)

    def _affected(self, child: _Child) -> list[_Child]:
        if self.strategy == "one_for_one":
            return [child]
        if self.strategy == "one_for_all":
            return list(self._children)
        return self._children[self._children.index(child) :]

    def _expire_restarts(self, now: float) -> None:
        while self._restart_times and self._restart_times[0] <= now - self.max_seconds:
            self._restart_times.popleft()

    def _note_restart(self, child: _Child, error: BaseException | None) -> None:
        now = trio.current_time()
        self._expire_restarts(now)
        self._restart_times.append(now)
        if len(self._restart_times) > self.max_restarts:
            raise RestartIntensityExceeded(
                supervisor=self.name,
                child=child.name,
                error=error,
                max_restarts=self.max_restarts,
                max_seconds=self.max_seconds,
            ) from error

    async def _handle_exit(self, exit_: _Exit) -> None:
        child = exit_.child
        if child.current is not exit_.incarnation or child not in self._children:
            return  # stale: that incarnation was already replaced or removed
        if not self._should_restart(child, exit_.error):
            if child.spec.restart == "temporary":
                self._remove(child)
            return
        self._note_restart(child, exit_.error)
        # A group crash restarts every child (the others' exits are then stale).
        affected = list(self._children) if exit_.incarnation.group else self._affected(child)
        for other in reversed(affected):
            if other is not child:
                await self._stop_one(other, restarting=True)
        await self._start_group(affected)

    async def _start_group(self, group: list[_Child]) -> None:
        # Start ``group`` in order. A member that ends before it is ready counts as
        # a crash: it is restarted by the strategy (which may stop and re-queue
        # members already started), within the restart intensity.
        pending = list(group)
        while pending:
            child = pending[0]
            if child not in self._children or child.is_alive():
                pending.pop(0)
                continue
            if child.starts and child.spec.restart == "temporary":
                self._remove(child)  # stopped because of a sibling: never restarted
                pending.pop(0)
                continue
            early = await self._start_one(child)
            if early is None:
                pending.pop(0)
                continue
            error = early.error
            if not self._should_restart(child, error):
                pending.pop(0)
                if child.spec.restart == "temporary":
                    self._remove(child)
                continue
            self._note_restart(child, error)
            self._set_child_state(child, "restarting")
            affected = self._affected(child)
            for other in reversed(affected):
                if other is not child:
                    await self._stop_one(other, restarting=True)
            pending = [c for c in self._children if c in affected or c in pending]

    async def _start_one(self, child: _Child) -> _EarlyExit | None:
        """Start one incarnation of ``child``; ``None`` once it is ready, else how
        it ended before it was ready."""
        assert self._nursery is not None
        if child.starts:
            child.restarts += 1
            self._restarts_total += 1
        child.starts += 1
        child.value = None
        child.current = None
        self._set_child_state(child, "starting")
        try:
            service = child.spec.start()
            if not callable(getattr(service, "run", None)):
                raise TypeError(
                    f"ChildSpec.start of child {child.name!r} returned {service!r}, "
                    f"which has no run() method"
                )
        except Exception as exc:
            self._record_end(child, exc, stopping=False)
            return _EarlyExit(exc)
        inc = _Incarnation(service)
        child.current = inc
        result = await self._nursery.start(self._run_child, child, inc)
        if isinstance(result, _EarlyExit):
            return result
        return None

    async def _run_child(
        self, child: _Child, inc: _Incarnation, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        runner = trio.lowlevel.current_task()

        def on_ready(value: Any) -> None:
            # If whoever is starting the child is being cancelled, Trio's
            # started() leaves the task where it was (it is never adopted by our
            # nursery) and the cancellation will end it: it must not be shielded
            # then, or start() would wait for it forever.
            if runner.parent_nursery is not self._nursery:
                return
            inc.ready = True
            inc.scope.shield = True
            if child.current is inc:
                child.value = value
                self._set_child_state(child, "running")

        status = _ChildStatus(task_status, on_ready)
        error: BaseException | None = None
        try:
            try:
                with inc.scope:
                    await inc.service.run(task_status=status)
            except Exception as exc:
                error = exc
            if inc.injected is not None:
                error = inc.injected
            inc.error = error
        finally:
            inc.done.set()
        if not status.ready:
            if child.current is inc:
                self._record_end(child, error, stopping=inc.stop_requested)
            task_status.started(_EarlyExit(error))
            return
        if not inc.ready or child.current is not inc:
            # Never adopted (its start was cancelled), or an abandoned instance
            # that finished late: nobody is waiting for news from it.
            if child.current is inc:
                self._record_end(child, error, stopping=True)
            elif error is not None:
                logger.warning(
                    "supervisor %r: old instance of child %r ended late with %r",
                    self.name, child.name, error,
                )
            return
        self._record_end(child, error, stopping=inc.stop_requested)
        if not inc.stop_requested:
            assert self._exits is not None
            self._exits.send_nowait(_Exit(child, inc, error))

    def _record_end(self, child: _Child, error: BaseException | None, *, stopping: bool) -> None:
        if error is not None:
            child.last_error = error
        if stopping:
            if error is not None:
                logger.warning(
                    "supervisor %r: child %r crashed while stopping: %r",
                    self.name, child.name, error, exc_info=error,
                )
            self._set_child_state(child, "failed" if error is not None else "stopped")
            return
        if error is not None:
            logger.warning(
                "supervisor %r: child %r crashed: %r", self.name, child.name, error,
                exc_info=error,
            )
        if self._should_restart(child, error):
            self._set_child_state(child, "restarting")
        else:
            self._set_child_state(child, "failed" if error is not None else "stopped")

    # -- stopping ---------------------------------------------------------------------

    async def _stop_one(self, child: _Child, *, restarting: bool = False) -> None:
        # Ask ``child`` to stop (cancel its scope) and wait up to its shutdown
        # timeout. With ``restarting`` the child is about to be started again by
        # the strategy, so a child that overstays is detached from its record (its
        # late end is then ignored) instead of being waited for.
        inc = child.current
        if inc is None or inc.done.is_set():
            if restarting:
                self._set_child_state(child, "restarting")
            elif child.state != "failed":
                failed = inc is not None and inc.error is not None and not inc.stop_requested
                self._set_child_state(child, "failed" if failed else "stopped")
            return
        inc.stop_requested = True
        self._set_child_state(child, "stopping")
        inc.scope.cancel()
        timeout = child.spec.shutdown_timeout
        with trio.move_on_after(timeout):
            await inc.done.wait()
        if not inc.done.is_set():
            child.abandoned += 1
            self._abandoned_total += 1
            logger.error(
                "supervisor %r: child %r did not stop within %g s of being cancelled; "
                "abandoned (it is still waited for before the supervisor ends)",
                self.name, child.name, timeout,
            )
            if restarting:
                child.current = None
                self._set_child_state(child, "restarting")
        elif restarting:
            self._set_child_state(child, "restarting")

    async def _shutdown(self) -> None:
        # Runs shielded, from run()'s finally. Refuse new work, abort starts in
        # progress (a start_child caller holds the lock while its child starts),
        # then stop everyone in reverse start order.
        self._set_state("stopping")
        for child in self._children:
            inc = child.current
            if inc is not None and not inc.ready and not inc.done.is_set():
                inc.stop_requested = True
                inc.scope.cancel()
        async with self._lock:
            for child in reversed(self._children):
                await self._stop_one(child)

    # -- helpers ----------------------------------------------------------------------

    def _add(self, spec: ChildSpec) -> _Child:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"supervisor {self.name!r}: children must be ChildSpecs, got {spec!r}")
        if any(child.name == spec.name for child in self._children):
            raise DuplicateChild(self.name, spec.name)
        child = _Child(spec)
        self._children.append(child)
        return child

    def _remove(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)
            self._notify()

    def _get(self, name: str) -> _Child:
        for child in self._children:
            if child.name == name:
                return child
        raise UnknownChild(self.name, name, [child.name for child in self._children])

    def _check_running(self, operation: str) -> None:
        if self._state != "running":
            raise SupervisorNotRunning(self.name, self._state, operation)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _set_state(self, state: str) -> None:
        self._state = state
        self._notify()

    def _set_child_state(self, child: _Child, state: str) -> None:
        child.state = state
        self._notify()

    def _child_snapshot(self, child: _Child) -> dict[str, Any]:
        service = child.current.service if child.current is not None else None
        return child_entry(
            name=child.name,
            kind=child.spec.kind,
            state=child.state,
            restarts=child.restarts,
            node_id=self.node_id,
            service=service,
            last_error=child.last_error,
        )
