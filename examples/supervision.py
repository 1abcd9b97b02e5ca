"""Supervision in actorcore's kernel: strategies, restart types, restart intensity
and ordered shutdown with timeouts, each shown on a small tree.

Run it with ``python examples/supervision.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio
import trio.testing

try:
    import actorcore  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actorcore.kernel import (
    ChildSpec,
    RestartIntensityExceeded,
    RestartType,
    Strategy,
    Supervisor,
)


class Events:
    """What happened, in order: ``(what, name, time)``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, float]] = []

    def add(self, what: str, name: str) -> None:
        self.items.append((what, name, trio.current_time()))

    def names(self, what: str) -> list[str]:
        return [name for kind, name, _ in self.items if kind == what]

    def time(self, what: str, name: str) -> float:
        return next(t for kind, n, t in self.items if (kind, n) == (what, name))


class Service:
    """Records its starts and stops; ``end`` makes it return or crash right after
    it is ready; ``linger`` makes its cleanup ignore cancellation for a while."""

    def __init__(self, name: str, events: Events, end: str = "", linger: float = 0.0) -> None:
        self.name, self.events, self.end, self.linger = name, events, end, linger

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.events.add("start", self.name)
        task_status.started()
        try:
            if self.end == "return":
                return
            if self.end == "crash":
                raise RuntimeError(f"{self.name} failed")
            await trio.sleep_forever()
        finally:
            self.events.add("stop", self.name)
            if self.linger:
                with trio.CancelScope(shield=True):  # a cleanup that takes its time
                    await trio.sleep(self.linger)


def ends_once(name: str, events: Events, end: str) -> Callable[[], Service]:
    """A factory whose first service ends with ``end``; its restarts run on."""
    made: list[Service] = []

    def start() -> Service:
        made.append(Service(name, events, "" if made else end))
        return made[-1]

    return start


def all_running(sup: Supervisor) -> bool:
    return all(child.state == "running" for child in sup.children())


#: What each strategy stops and restarts when b crashes.
EXPECTED_STRATEGY = {
    "one_for_one": ({"b"}, ["b"]),
    "one_for_all": ({"a", "b", "c"}, ["a", "b", "c"]),
    "rest_for_one": ({"b", "c"}, ["b", "c"]),
}

EXPECTED_RESTART_TYPE = {
    ("permanent", "return"): "restarted",
    ("permanent", "crash"): "restarted",
    ("transient", "return"): "not restarted (stopped)",
    ("transient", "crash"): "restarted",
    ("temporary", "return"): "removed from the supervisor",
    ("temporary", "crash"): "removed from the supervisor",
}


async def strategies() -> None:
    print("1. Strategies: children a, b, c start in that order; then b crashes.")
    strategy: Strategy
    for strategy in ("one_for_one", "one_for_all", "rest_for_one"):
        events = Events()
        sup = Supervisor(strategy, [ChildSpec(n, partial(Service, n, events)) for n in "abc"], strategy=strategy)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            events.items.clear()
            sup.crash_child("b")
            await sup.wait_running("b", restarts=1)
            await sup.wait_for(partial(all_running, sup))
            stops, starts = ", ".join(events.names("stop")), ", ".join(events.names("start"))
            print(f"   {strategy:<13} stopped {stops:<8} then restarted {starts}")
            assert (set(events.names("stop")), events.names("start")) == EXPECTED_STRATEGY[strategy]
            nursery.cancel_scope.cancel()
    print()


async def restart_types() -> None:
    print("2. Restart types: each child ends once, by returning or by crashing.")
    events = Events()
    kinds: list[tuple[RestartType, str]] = [
        (restart, end)
        for restart in ("permanent", "transient", "temporary")
        for end in ("return", "crash")
    ]
    specs = [
        ChildSpec(f"{r}_{e}", ends_once(f"{r}_{e}", events, e), restart=r) for r, e in kinds
    ]
    sup = Supervisor("types", specs, max_restarts=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.testing.wait_all_tasks_blocked()  # until the tree is quiet
        present = {c.name: c for c in sup.children()}
        for restart, end in kinds:
            child = present.get(f"{restart}_{end}")
            if child is None:
                outcome = "removed from the supervisor"
            elif child.restarts:
                outcome = "restarted"
            else:
                outcome = f"not restarted ({child.state})"
            ended = "returned" if end == "return" else "crashed"
            print(f"   {restart:<9} child that {ended:<8} -> {outcome}")
            assert outcome == EXPECTED_RESTART_TYPE[restart, end], (restart, end, outcome)
        nursery.cancel_scope.cancel()
    print()


async def intensity() -> None:
    print("3. Restart intensity: a child that crashes at every start; max 3 restarts in 1 s.")
    events = Events()
    sup = Supervisor(
        "flaky_tree",
        [
            ChildSpec("ok", partial(Service, "ok", events)),
            ChildSpec("flaky", partial(Service, "flaky", events, "crash")),
        ],
        max_restarts=3,
        max_seconds=1.0,
    )
    try:
        await sup.run()
    except RestartIntensityExceeded as exc:
        print(f"   The supervisor gave up and failed to its parent with\n   {type(exc).__name__}: {exc}")
    else:
        raise AssertionError("the supervisor did not give up")
    print(f"   'flaky' was started {events.names('start').count('flaky')} times; "
          f"'ok' was stopped on the way out ({sup.child_info('ok').state}).\n")
    assert events.names("start").count("flaky") == 4  # the first start and 3 restarts
    assert sup.child_info("ok").state == "stopped"


async def shutdown() -> None:
    print("4. Ordered shutdown, in reverse start order. 'slow' ignores cancellation for")
    print("   0.5 s but has a 0.1 s shutdown timeout, so it does not hold the others up.")
    events = Events()
    sup = Supervisor(
        "node",
        [
            ChildSpec("first", partial(Service, "first", events)),
            ChildSpec("slow", partial(Service, "slow", events, linger=0.5), shutdown_timeout=0.1),
            ChildSpec("last", partial(Service, "last", events)),
        ],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        t0 = trio.current_time()
        nursery.cancel_scope.cancel()
    for name in events.names("stop"):
        print(f"   {name:<5} asked to stop at +{events.time('stop', name) - t0:.1f} s")
    returned = trio.current_time() - t0
    print(f"   run() returned at +{returned:.1f} s, once 'slow' had finished: "
          f"no task outlives its tree ({sup.statistics().abandoned} child abandoned).")
    assert events.names("stop") == ["last", "slow", "first"]
    assert events.time("stop", "first") - t0 < 0.5 <= returned  # not held up, yet awaited
    assert sup.statistics().abandoned == 1


async def main() -> None:
    await strategies()
    await restart_types()
    await intensity()
    await shutdown()


if __name__ == "__main__":
    # Crashes are logged to "actorcore.kernel"; here they are the point, so hush.
    logging.getLogger("actorcore.kernel").setLevel(logging.CRITICAL)
    trio.run(main)
