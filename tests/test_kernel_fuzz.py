"""Randomised fault storms on a three-level tree (seeded, virtual time).

Invariants after each storm: the tree shuts down without hanging, every service
instance that was ever started has finished its cleanup (nothing outlives the
tree), and the snapshot keeps the contract's shape throughout.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from actorcore.kernel import (
    ChildNotRunning,
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorNotRunning,
    UnknownChild,
    check_snapshot,
)

from .test_kernel_support import Behaviour, Log, Recorder

STRATEGIES: list[Strategy] = ["one_for_one", "one_for_all", "rest_for_one"]
RESTARTS: list[RestartType] = ["permanent", "permanent", "transient", "temporary"]


def random_behaviour(rng: random.Random) -> Behaviour:
    roll = rng.random()
    return Behaviour(
        start_delay=rng.choice([0, 0, 0.1, 0.5]),
        fail_start=OSError("start failed") if roll < 0.05 else None,
        crash_after=rng.uniform(0.5, 5) if 0.05 <= roll < 0.15 else None,
        exit_after=rng.uniform(0.5, 5) if 0.15 <= roll < 0.2 else None,
        stop_delay=rng.choice([0, 0, 0, 0.2, 3.0]),
        crash_on_stop=ValueError("cleanup failed") if rng.random() < 0.05 else None,
    )


def random_spec(rng: random.Random, name: str, log: Log, made: list[Recorder]) -> ChildSpec:
    def start() -> Recorder:
        made.append(Recorder(name, log, random_behaviour(rng)))
        return made[-1]

    return ChildSpec(
        name, start, restart=rng.choice(RESTARTS), shutdown_timeout=rng.choice([0.5, 1.0, 10.0])
    )


def random_tree(rng: random.Random, log: Log, made: list[Recorder]) -> Supervisor:
    def branch(name: str, depth: int) -> ChildSpec:
        children = [random_spec(rng, f"{name}_s{i}", log, made) for i in range(rng.randint(1, 3))]
        if depth < 2:
            children.insert(rng.randint(0, len(children)), branch(f"{name}_b", depth + 1))
        return Supervisor.spec(
            name, children, strategy=rng.choice(STRATEGIES), max_restarts=rng.randint(1, 4),
            max_seconds=rng.choice([1.0, 5.0]),
        )

    return Supervisor(
        "root",
        [random_spec(rng, "svc", log, made), branch("mid", 1)],
        strategy=rng.choice(STRATEGIES),
        max_restarts=1000,
        max_seconds=1.0,
    )


def supervisors(node: Any) -> list[Supervisor]:
    found = [node]
    for info in node.children():
        if isinstance(info.service, Supervisor) and info.state == "running":
            found.extend(supervisors(info.service))
    return found


@pytest.mark.parametrize("seed", range(30))
async def test_fault_storm(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    rng = random.Random(seed)
    log = Log()
    made: list[Recorder] = []
    root = random_tree(rng, log, made)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            for step in range(40):
                await trio.sleep(rng.uniform(0, 0.7))
                check_snapshot(root.snapshot())
                sup = rng.choice(supervisors(root))
                names = [info.name for info in sup.children()]
                action = rng.random()
                try:
                    if action < 0.6 and names:
                        sup.crash_child(rng.choice(names))
                    elif action < 0.8:
                        await sup.start_child(random_spec(rng, f"dyn{step}", log, made))
                    elif names:
                        await sup.terminate_child(rng.choice(names))
                except (ChildNotRunning, SupervisorNotRunning, UnknownChild, DuplicateChild,
                        ChildStartFailed):
                    pass
            nursery.cancel_scope.cancel()
    check_snapshot(root.snapshot())
    assert root.state == "stopped"
    started = log.of("ready")
    # every instance that became ready ran its cleanup to the end
    assert sorted(log.of("stopped")) == sorted(n for n in started), seed
