"""Supervisor: strategies, restart types, intensity, start and shutdown."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from actorcore.kernel import (
    ChildNotRunning,
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    InjectedCrash,
    RestartIntensityExceeded,
    Supervisor,
    SupervisorFailed,
    SupervisorNotRunning,
    UnknownChild,
    WaitTimeout,
)

from .test_kernel_support import Behaviour, Log, Recorder, counting, spec


@asynccontextmanager
async def running(sup: Supervisor) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        yield nursery
        nursery.cancel_scope.cancel()


def abc(log: Log, **options: object) -> list[ChildSpec]:
    return [spec(name, log, **options) for name in "abc"]  # type: ignore[arg-type]


# -- start ---------------------------------------------------------------------------


async def test_children_start_in_order_each_ready_before_the_next(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    specs = [spec(n, log, Behaviour(start_delay=1.0)) for n in "abc"]
    sup = Supervisor("top", specs)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(sup.run) is None
        assert log.events == [
            ("start", "a"), ("ready", "a"),
            ("start", "b"), ("ready", "b"),
            ("start", "c"), ("ready", "c"),
        ]
        assert sup.state == "running"
        assert [info.state for info in sup.children()] == ["running"] * 3
        assert sup.child_info("b").value == "b-ready"
        assert isinstance(sup.child("b"), Recorder)
        nursery.cancel_scope.cancel()
    assert sup.state == "stopped"


async def test_supervisor_runs_once(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor("top")
    async with running(sup):
        pass
    with pytest.raises(RuntimeError, match="'top' has already run"):
        await sup.run()


# -- strategies ----------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_crashed_child(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", abc(log), strategy="one_for_one")
    async with running(sup):
        log.clear()
        sup.crash_child("b")
        await sup.wait_running("b", restarts=1)
        assert log.events == [("stop", "b"), ("stopped", "b"), ("start", "b"), ("ready", "b")]
        assert [i.restarts for i in sup.children()] == [0, 1, 0]
        assert isinstance(sup.child_info("b").last_error, InjectedCrash)


async def test_one_for_all_stops_others_in_reverse_then_restarts_all_in_order(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", abc(log), strategy="one_for_all")
    async with running(sup):
        log.clear()
        sup.crash_child("b")
        await sup.wait_for(lambda: all(i.state == "running" and i.restarts == 1 for i in sup.children()))
        assert log.of("stop") == ["b", "c", "a"]
        assert log.of("start") == ["a", "b", "c"]
        assert log.events.index(("stopped", "a")) < log.events.index(("start", "a"))
        assert sup.statistics().restarts == 3  # three children restarted ...
        assert sup.statistics().recent_restarts == 1  # ... for one crash


async def test_rest_for_one_restarts_the_child_and_those_started_after_it(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", [*abc(log), spec("d", log)], strategy="rest_for_one")
    async with running(sup):
        log.clear()
        sup.crash_child("b")
        await sup.wait_running("d", restarts=1)
        await sup.wait_running("b", restarts=1)
        assert log.of("stop") == ["b", "d", "c"]
        assert log.of("start") == ["b", "c", "d"]
        assert [i.restarts for i in sup.children()] == [0, 1, 1, 1]


async def test_crash_all_restarts_every_child_in_order_as_one_restart(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", abc(log), strategy="one_for_one", max_restarts=1)
    async with running(sup):
        log.clear()
        assert sup.crash_all() == ["a", "b", "c"]
        await sup.wait_for(lambda: all(i.state == "running" and i.restarts == 1 for i in sup.children()))
        assert log.of("start") == ["a", "b", "c"]
        assert all(isinstance(i.last_error, InjectedCrash) for i in sup.children())
        assert sup.statistics().recent_restarts == 1  # one failure, within max_restarts=1
        assert sup.state == "running"


async def test_one_for_all_drops_temporary_siblings(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top", [spec("a", log), spec("t", log, restart="temporary"), spec("c", log)],
        strategy="one_for_all",
    )
    async with running(sup):
        sup.crash_child("c")
        await sup.wait_running("c", restarts=1)
        assert [i.name for i in sup.children()] == ["a", "c"]
        assert log.of("start").count("t") == 1


# -- restart types -------------------------------------------------------------------


async def test_permanent_child_is_restarted_after_a_normal_exit(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", [spec("p", log, Behaviour(exit_after=1.0))])
    async with running(sup):
        await sup.wait_running("p", restarts=1)
        assert log.of("exit") == ["p"]


async def test_transient_child_is_restarted_after_a_crash_only(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top",
        [
            spec("crasher", log, Behaviour(crash_after=1.0), restart="transient"),
            spec("finisher", log, Behaviour(exit_after=1.0), restart="transient"),
        ],
    )
    async with running(sup):
        await sup.wait_running("crasher", restarts=1)
        await sup.wait_for(lambda: sup.child_info("finisher").state == "stopped")
        await trio.sleep(10)
        info = sup.child_info("finisher")
        assert (info.state, info.restarts, info.last_error) == ("stopped", 0, None)
        with pytest.raises(ChildNotRunning, match="'finisher' of supervisor 'top' is stopped"):
            sup.child("finisher")


async def test_temporary_child_is_never_restarted_and_is_removed(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top",
        [
            spec("once", log, Behaviour(crash_after=1.0), restart="temporary"),
            spec("done", log, Behaviour(exit_after=1.0), restart="temporary"),
            spec("stay", log),
        ],
    )
    async with running(sup):
        await sup.wait_for(lambda: [i.name for i in sup.children()] == ["stay"])
        assert log.of("start") == ["once", "done", "stay"]
        assert sup.statistics().restarts == 0


# -- restart intensity ----------------------------------------------------------------


async def test_intensity_exceeded_stops_children_and_fails_with_a_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "gcs",
        [spec("first", log), spec("flaky", log, default=Behaviour(crash_after=1.0)), spec("last", log)],
        max_restarts=2,
        max_seconds=10,
    )
    start = trio.current_time()
    with pytest.raises(RestartIntensityExceeded) as info:
        await sup.run()
    error = info.value
    assert str(error) == (
        "supervisor 'gcs' exceeded its restart intensity (more than 2 restart(s) in 10 s); "
        "last failure in child 'flaky': ValueError: flaky crashed"
    )
    assert (error.supervisor, error.child) == ("gcs", "flaky")
    assert isinstance(error.__cause__, ValueError) and error.error is error.__cause__
    assert trio.current_time() - start == pytest.approx(3.0)
    assert log.of("stop")[-2:] == ["last", "first"]
    assert sup.state == "failed"
    assert [i.state for i in sup.children()] == ["stopped", "failed", "stopped"]


async def test_restarts_spread_beyond_the_window_do_not_escalate(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top", [spec("slowflaky", log, default=Behaviour(crash_after=6.0))],
        max_restarts=1, max_seconds=5,
    )
    async with running(sup):
        await sup.wait_running("slowflaky", restarts=10)
        assert sup.statistics().recent_restarts == 1
    assert sup.state == "stopped"


async def test_max_restarts_zero_escalates_at_the_first_crash(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("strict", [spec("x", log, Behaviour(crash_after=1.0))], max_restarts=0)
    with pytest.raises(RestartIntensityExceeded, match="'strict'.*child 'x'"):
        await sup.run()
    assert log.of("start") == ["x"]


async def test_escalation_reaches_the_parent_which_restarts_a_fresh_supervisor(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    inner_factory, inners = counting(
        lambda: Supervisor("inner", [spec("leaf", log, Behaviour(crash_after=1.0), Behaviour(crash_after=1.0))], max_restarts=1)
    )
    top = Supervisor("top", [ChildSpec("inner", inner_factory, kind="supervisor")])
    async with running(top):
        await top.wait_running("inner", restarts=1)
        assert len(inners) == 2 and inners[0].state == "failed"
        assert isinstance(top.child_info("inner").last_error, RestartIntensityExceeded)
        assert top.find("inner") is inners[1]
        await inners[1].wait_running("leaf")


async def test_crash_deep_in_a_three_level_tree(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    leaf = spec("leaf", log, default=Behaviour(crash_after=1.0))
    mid = Supervisor.spec("mid", [leaf, spec("sibling", log)], max_restarts=2, max_seconds=10)
    branch = Supervisor.spec("branch", [mid], max_restarts=1, max_seconds=100)
    top = Supervisor("top", [spec("rpc", log), branch], max_restarts=2, max_seconds=100)
    with pytest.raises(RestartIntensityExceeded) as info:
        await top.run()
    # leaf crashes 3x -> mid fails; branch restarts mid once, mid fails again ->
    # branch fails (1 restart allowed) -> top restarts branch ... until top gives up.
    assert info.value.supervisor == "top" and info.value.child == "branch"
    branch_error = info.value.error
    assert isinstance(branch_error, RestartIntensityExceeded)
    assert branch_error.supervisor == "branch" and branch_error.child == "mid"
    assert isinstance(branch_error.error, RestartIntensityExceeded)
    assert branch_error.error.child == "leaf"
    assert isinstance(branch_error.error.error, ValueError)
    assert log.of("stop")[-1] == "rpc"  # top stopped its other children on the way out


async def test_deep_crash_is_contained_by_the_nearest_supervisor(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    top = Supervisor(
        "top",
        [spec("rpc", log), Supervisor.spec("gcs", [Supervisor.spec("shard_0", [spec("replica_0", log), spec("replica_1", log)])])],
    )
    async with running(top):
        shard = top.find("gcs/shard_0")
        shard.crash_child("replica_1")
        await shard.wait_running("replica_1", restarts=1)
        snap = top.snapshot()
        gcs = snap["children"][1]
        assert gcs["restarts"] == 0 and gcs["children"][0]["restarts"] == 0
        assert [r["restarts"] for r in gcs["children"][0]["children"]] == [0, 1]
        assert log.of("start").count("rpc") == 1


# -- crash during start / during shutdown ------------------------------------------


async def test_crash_during_start_counts_as_a_crash_and_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top", [spec("a", log), spec("b", log, Behaviour(fail_start=OSError("port in use"))), spec("c", log)],
    )
    async with running(sup):
        assert log.of("start") == ["a", "b", "b", "c"]
        assert sup.child_info("b").restarts == 1
        assert isinstance(sup.child_info("b").last_error, OSError)


async def test_crash_during_start_under_one_for_all_restarts_those_already_started(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top", [spec("a", log), spec("b", log, Behaviour(fail_start=OSError("no"))), spec("c", log)],
        strategy="one_for_all",
    )
    async with running(sup):
        assert log.of("start") == ["a", "b", "a", "b", "c"]
        assert log.of("stop") == ["a"]


async def test_persistent_crash_during_start_fails_the_start_of_the_supervisor(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", [spec("bad", log, default=Behaviour(fail_start=OSError("no disk")))])
    async with trio.open_nursery() as nursery:
        with pytest.raises(RestartIntensityExceeded, match="child 'bad': OSError: no disk"):
            await nursery.start(sup.run)
    assert log.of("start") == ["bad"] * 4


async def test_factory_that_raises_or_returns_a_non_service_counts_as_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    def broken() -> object:
        raise RuntimeError("factory broke")

    sup = Supervisor("top", [ChildSpec("x", broken)], max_restarts=1)
    with pytest.raises(RestartIntensityExceeded, match="RuntimeError: factory broke"):
        await sup.run()
    sup = Supervisor("top", [ChildSpec("y", object)], max_restarts=0)
    with pytest.raises(RestartIntensityExceeded, match="child 'y' returned <object object .*>, which has no run"):
        await sup.run()


async def test_crash_during_shutdown_is_recorded_and_shutdown_goes_on(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top", [spec("a", log), spec("b", log, Behaviour(crash_on_stop=ValueError("flush failed"))), spec("c", log)],
    )
    async with running(sup):
        pass
    assert log.of("stopped") == ["c", "b", "a"]
    assert sup.state == "stopped"
    info = sup.child_info("b")
    assert info.state == "failed" and str(info.last_error) == "flush failed"


class CrashOnceAtOnce:
    """Its first instance crashes right after reporting ready, without a
    checkpoint in between; later instances run until cancelled."""

    made = 0

    def __init__(self) -> None:
        type(self).made += 1
        self.first = type(self).made == 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.first:
            raise RuntimeError("crashed at once")
        await trio.sleep_forever()


@pytest.mark.parametrize("attempt", range(5))
async def test_cancelled_while_restarting_a_child_that_is_ready_at_once(
    autojump_clock: trio.testing.MockClock, attempt: int
) -> None:
    # Regression: the restarted child calls started() while the supervisor (its
    # starter) is already cancelled. Trio then does not adopt the child; it must
    # not be shielded, or nursery.start() would wait for it forever.
    CrashOnceAtOnce.made = 0
    sup = Supervisor("top", [ChildSpec("x", CrashOnceAtOnce)])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            nursery.cancel_scope.cancel()
    assert sup.state == "stopped"
    assert sup.child_info("x").state in ("stopped", "failed")


# -- shutdown ------------------------------------------------------------------------


async def test_shutdown_is_in_reverse_start_order(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", [*abc(log), Supervisor.spec("sub", [spec("x", log), spec("y", log)])])
    async with running(sup):
        log.clear()
    assert log.of("stop") == ["y", "x", "c", "b", "a"]
    assert [i.state for i in sup.children()] == ["stopped"] * 4


async def test_child_that_ignores_cancellation_is_abandoned_after_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top",
        [spec("a", log), spec("stuck", log, Behaviour(stop_delay=10.0), shutdown_timeout=1.0), spec("c", log)],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        t0 = trio.current_time()
        nursery.cancel_scope.cancel()
    # c stops at once, stuck gets 1 s, then a is stopped without waiting for stuck
    assert log.of("stop") == ["c", "stuck", "a"]
    assert log.time_of("stop", "a") - t0 == pytest.approx(1.0)
    # ... yet run() returned only once the stuck child ended: nothing outlives it
    assert log.time_of("stopped", "stuck") - t0 == pytest.approx(10.0)
    assert trio.current_time() - t0 == pytest.approx(10.0)
    assert sup.statistics().abandoned == 1 and sup.child_info("stuck").abandoned == 1
    assert sup.child_info("stuck").state == "stopped"


async def test_stuck_sibling_does_not_block_a_restart(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top",
        [spec("stuck", log, Behaviour(stop_delay=30.0), shutdown_timeout=2.0), spec("b", log)],
        strategy="one_for_all",
    )
    async with running(sup):
        t0 = trio.current_time()
        sup.crash_child("b")
        await sup.wait_running("b", restarts=1)
        assert trio.current_time() - t0 == pytest.approx(2.0)
        assert sup.child_info("stuck").state == "running"
        assert log.of("start") == ["stuck", "b", "stuck", "b"]


async def test_states_while_starting_and_stopping(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor(
        "top",
        [spec("slow", log, Behaviour(start_delay=5.0, stop_delay=5.0), shutdown_timeout=10.0)],
    )
    seen: list[tuple[str, str]] = []

    def look() -> None:
        snap = sup.snapshot()
        seen.append((snap["state"], snap["children"][0]["state"]))

    t0 = trio.current_time()

    async def observe() -> None:
        await trio.sleep_until(t0 + 1)
        look()
        await trio.sleep_until(t0 + 8)
        look()
        await trio.sleep_until(t0 + 11)
        look()

    async with trio.open_nursery() as outer:
        outer.start_soon(observe)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.sleep_until(t0 + 10)
            nursery.cancel_scope.cancel()
        look()
    assert seen == [
        ("starting", "starting"),
        ("running", "running"),
        ("stopping", "stopping"),
        ("stopped", "stopped"),
    ]


# -- run-time API ----------------------------------------------------------------------


async def test_start_and_terminate_children_at_run_time(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("pool")
    async with running(sup):
        assert await sup.start_child(spec("w1", log)) == "w1-ready"
        assert await sup.start_child(spec("w2", log)) == "w2-ready"
        with pytest.raises(DuplicateChild, match="'pool' already has a child named 'w1'"):
            await sup.start_child(spec("w1", log))
        await sup.terminate_child("w1")
        assert log.of("stopped") == ["w1"]
        assert [i.name for i in sup.children()] == ["w2"]
        with pytest.raises(UnknownChild, match="'pool' has no child 'w1' \\(children: 'w2'\\)"):
            await sup.terminate_child("w1")
        sup.crash_child("w2")
        await sup.wait_running("w2", restarts=1)
        await sup.start_child(spec("w3", log))
    assert log.of("stop")[-2:] == ["w3", "w2"]


async def test_start_child_that_crashes_while_starting_is_not_kept(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("pool")
    async with running(sup):
        with pytest.raises(ChildStartFailed, match="'bad' of supervisor 'pool' failed to start: OSError: nope") as info:
            await sup.start_child(spec("bad", log, Behaviour(fail_start=OSError("nope"))))
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(ChildStartFailed, match="returned before it was ready"):
            await sup.start_child(ChildSpec("quick", Quick))
        assert sup.children() == []
        assert sup.statistics().restarts == 0


class Quick:
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        return None


async def test_cancelled_start_child_leaves_nothing_behind(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("pool")
    async with running(sup):
        with trio.move_on_after(1.0):
            await sup.start_child(spec("slow", log, Behaviour(start_delay=5.0)))
        assert sup.children() == []
        assert await sup.start_child(spec("slow", log)) == "slow-ready"


async def test_operations_need_a_running_supervisor(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("idle", [spec("a", log)])
    with pytest.raises(SupervisorNotRunning, match="'idle' cannot start child 'b': it is starting"):
        await sup.start_child(spec("b", log))
    async with running(sup):
        pass
    for call in (lambda: sup.terminate_child("a"), lambda: sup.start_child(spec("b", log))):
        with pytest.raises(SupervisorNotRunning, match="it is stopped, not running"):
            await call()
    with pytest.raises(SupervisorNotRunning):
        sup.crash_child("a")
    with pytest.raises(SupervisorNotRunning):
        await sup.wait_running("a")


async def test_crash_child_errors_and_custom_exceptions(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", [spec("a", log, restart="transient"), spec("slow", log, Behaviour(), Behaviour(start_delay=5))])
    async with running(sup):
        with pytest.raises(UnknownChild, match="'top' has no child 'zz'"):
            sup.crash_child("zz")
        with pytest.raises(TypeError, match="needs an Exception"):
            sup.crash_child("a", KeyboardInterrupt())
        sup.crash_child("a", ConnectionResetError("peer gone"))
        with pytest.raises(ChildNotRunning):
            sup.crash_child("a")  # already crashing
        await sup.wait_running("a", restarts=1)  # transient: a crash means restart
        assert str(sup.child_info("a").last_error) == "peer gone"
        sup.crash_child("a", OSError)
        await sup.wait_running("a", restarts=2)
        assert "crash injected into child 'a'" in str(sup.child_info("a").last_error)
        sup.crash_child("slow")
        await sup.wait_for(lambda: sup.child_info("slow").state == "starting")
        with pytest.raises(ChildNotRunning, match="'slow' of supervisor 'top' is starting"):
            sup.crash_child("slow")


async def test_find_walks_paths_of_child_names(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    top = Supervisor("node", [spec("rpc", log), Supervisor.spec("gcs", [Supervisor.spec("shard_0", [spec("replica_0", log)])])])
    async with running(top):
        assert isinstance(top.find("gcs/shard_0/replica_0"), Recorder)
        assert top.find("gcs/shard_0") is top.find("gcs").child("shard_0")
        with pytest.raises(UnknownChild, match="'node' has no child 'gcs/shard_1/replica_0'"):
            top.find("gcs/shard_1/replica_0")
        with pytest.raises(UnknownChild, match="'rpc/x'"):
            top.find("rpc/x")
        with pytest.raises(ValueError, match="path"):
            top.find("")


async def test_wait_for_times_out_with_a_typed_error(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor("top")
    async with running(sup):
        with pytest.raises(WaitTimeout, match="'top': child 'x' running .* within 3 s"):
            await sup.wait_for(lambda: False, timeout=3, what="child 'x' running")
        with pytest.raises(UnknownChild):
            await sup.wait_running("x", timeout=3)
        t0 = trio.current_time()
        with pytest.raises(WaitTimeout, match="'top': running"):
            await sup.wait_for(lambda: sup.state == "stopped", timeout=2, what="running")
        assert trio.current_time() - t0 == pytest.approx(2)


async def test_statistics(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    sup = Supervisor("top", abc(log), max_restarts=7, max_seconds=2)
    async with running(sup):
        sup.crash_child("a")
        await sup.wait_running("a", restarts=1)
        stats = sup.statistics()
        assert (stats.name, stats.state, stats.strategy) == ("top", "running", "one_for_one")
        assert (stats.children, stats.running, stats.restarts, stats.recent_restarts) == (3, 3, 1, 1)
        assert (stats.max_restarts, stats.max_seconds, stats.abandoned) == (7, 2.0, 0)
        await trio.sleep(3)
        assert sup.statistics().recent_restarts == 0


# -- validation ------------------------------------------------------------------------


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="strategy must be one of .* got 'one_for_two'"):
        Supervisor("s", strategy="one_for_two")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_restarts must be an int >= 0, got -1"):
        Supervisor("s", max_restarts=-1)
    with pytest.raises(ValueError, match="max_seconds must be a number > 0, got 0"):
        Supervisor("s", max_seconds=0)
    with pytest.raises(ValueError, match="supervisor name .* got 'a/b'"):
        Supervisor("a/b")
    with pytest.raises(DuplicateChild, match="'s' already has a child named 'x'"):
        Supervisor("s", [ChildSpec("x", Quick), ChildSpec("x", Quick)])
    with pytest.raises(TypeError, match="children must be ChildSpecs"):
        Supervisor("s", ["x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="restart must be one of .* got 'sometimes'"):
        ChildSpec("x", Quick, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown_timeout must be a number >= 0, got -1"):
        ChildSpec("x", Quick, shutdown_timeout=-1)
    with pytest.raises(TypeError, match="zero-argument callable"):
        ChildSpec("x", 42)  # type: ignore[arg-type]
    assert ChildSpec("x", Quick).shutdown_timeout == 5.0
    assert ChildSpec("x", Quick, kind="supervisor").shutdown_timeout == math.inf
    assert Supervisor.spec("s").kind == "supervisor"


def test_supervisor_failed_is_the_base_of_intensity_errors() -> None:
    assert issubclass(RestartIntensityExceeded, SupervisorFailed)
