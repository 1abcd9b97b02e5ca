"""Services used by the kernel tests: real Trio services that record what happens
to them, with behaviour chosen per start (so a factory can fail its first start and
succeed on the next one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from actorcore.kernel import ChildSpec


@attrs.define
class Behaviour:
    """What one incarnation of a :class:`Recorder` does."""

    start_delay: float = 0.0
    fail_start: BaseException | None = None
    crash_after: float | None = None  # raise ValueError after this long (running)
    exit_after: float | None = None  # return normally after this long (running)
    stop_delay: float = 0.0  # shielded cleanup that ignores cancellation this long
    crash_on_stop: BaseException | None = None
    extra_snapshot: dict[str, Any] | None = None


@attrs.define
class Log:
    """Events ``(what, name)`` in the order they happened, with their times."""

    events: list[tuple[str, str]] = attrs.Factory(list)
    times: list[float] = attrs.Factory(list)

    def add(self, what: str, name: str) -> None:
        self.events.append((what, name))
        self.times.append(trio.current_time())

    def of(self, what: str) -> list[str]:
        return [name for kind, name in self.events if kind == what]

    def time_of(self, what: str, name: str, nth: int = 0) -> float:
        hits = [t for (k, n), t in zip(self.events, self.times, strict=True) if (k, n) == (what, name)]
        return hits[nth]

    def clear(self) -> None:
        self.events.clear()
        self.times.clear()


class Recorder:
    """A service that logs ``start``, ``ready``, ``stop`` (cancel seen),
    ``stopped`` (cleanup done), ``crash`` and ``exit``."""

    def __init__(self, name: str, log: Log, behaviour: Behaviour) -> None:
        self.name = name
        self.log = log
        self.behaviour = behaviour

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        b = self.behaviour
        self.log.add("start", self.name)
        if b.start_delay:
            await trio.sleep(b.start_delay)
        if b.fail_start is not None:
            self.log.add("crash", self.name)
            raise b.fail_start
        task_status.started(f"{self.name}-ready")
        self.log.add("ready", self.name)
        try:
            if b.crash_after is not None:
                await trio.sleep(b.crash_after)
                self.log.add("crash", self.name)
                raise ValueError(f"{self.name} crashed")
            if b.exit_after is not None:
                await trio.sleep(b.exit_after)
                self.log.add("exit", self.name)
                return
            await trio.sleep_forever()
        finally:
            self.log.add("stop", self.name)
            if b.stop_delay:
                with trio.CancelScope(shield=True):
                    await trio.sleep(b.stop_delay)
            self.log.add("stopped", self.name)
            if b.crash_on_stop is not None:
                raise b.crash_on_stop

    def snapshot(self) -> dict[str, Any]:
        return dict(self.behaviour.extra_snapshot or {})


def spec(
    name: str,
    log: Log,
    *behaviours: Behaviour,
    default: Behaviour | None = None,
    **options: Any,
) -> ChildSpec:
    """A spec whose n-th start behaves as ``behaviours[n]`` (then as ``default``)."""
    queue = list(behaviours)
    fallback = default or Behaviour()

    def start() -> Recorder:
        return Recorder(name, log, queue.pop(0) if queue else fallback)

    return ChildSpec(name, start, **options)


def counting(factory: Callable[[], Any]) -> tuple[Callable[[], Any], list[Any]]:
    """Wrap a factory; the list collects every object it made."""
    made: list[Any] = []

    def start() -> Any:
        made.append(factory())
        return made[-1]

    return start, made
