"""The scheduling components are real components: placement runs in
``local_scheduler`` (a fault in it crashes and restarts that component, over state
that outlives it), ``global_scheduler`` keeps nothing a restart loses, and tasks and
actors share one resource ledger whose waiters are woken by releases (no polling)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.kernel import ChildSpec, Supervisor
from actorcore.node.local_scheduler import _scheduler, _workers
from actorcore.node.local_scheduler._component import LocalScheduler
from actorcore.node.local_scheduler._ledger import ResourceLedger
from actorcore.node.local_scheduler._queues import ReadyQueues
from actorcore.node.local_scheduler._scheduler import SchedulerState, WorkerInfo
from actorcore.node.local_scheduler._workers import DEEP_PIPELINE_DEPTH, PIPELINE_DEPTH
from actorcore.node.object_manager._directory import ObjectDirectory
from actorcore.protocol._messages import TaskSpec
from actorcore.testing import faults

from .cluster_support import tree_entry
from .cluster_support import until as _until

# -- in process: the component and the ledger on their own ------------------------


@attrs.define(eq=False)
class _FlakyState(SchedulerState):
    """Scheduler state whose placement has a bug that strikes ``faults_left`` times."""

    faults_left: int = 1

    def dispatch(self) -> None:
        if self.faults_left and self.ready:
            self.faults_left -= 1
            raise RuntimeError("bug in placement")
        super().dispatch()


class _Conn:
    def __init__(self, expect: int) -> None:
        self.sent: list[Any] = []
        self.expect = expect
        self.all_sent = trio.Event()

    def send_nowait(self, message: Any) -> None:
        self.sent.append(message)
        if len(self.sent) >= self.expect:
            self.all_sent.set()


class _Host:
    """A node with nothing behind it (``SchedulerHost``)."""

    def deliver(self, owner: bytes, results: list) -> None: ...
    def request_worker(self) -> None: ...
    def kill_worker(self, worker: WorkerInfo) -> None: ...
    def record_lineage(self, spec: TaskSpec) -> None: ...
    def keep_lineage(self, spec: TaskSpec) -> None: ...
    def write_lineage(self, spec: TaskSpec) -> None: ...
    def call_later(self, delay: float, fn: Any) -> None: ...
    def owner_address(self, owner: bytes) -> str | None:
        return None
    def watch_deps(self, oids: list[bytes], dep_node: str | None = None) -> None: ...
    def keep_local(self, spec: TaskSpec, state: Any) -> bool:
        return True
    def pool_starting(self) -> int:
        return 0
    def pool_can_grow(self) -> bool:
        return False


def _spec(i: int) -> TaskSpec:
    return TaskSpec(
        task_id=i.to_bytes(4, "big") * 5, job_id=b"j" * 4, function_id=b"f" * 8,
        name=f"t{i}", args=b"", deps=[], num_returns=1, resources={"CPU": 1.0},
        max_retries=0, retry_exceptions=False, parent_task_id=None, owner=b"o" * 20,
    )


def test_a_fault_in_placement_crashes_local_scheduler_and_its_restart_places_the_queue():
    conns = [_Conn(1), _Conn(1)]
    state = _FlakyState(directory=ObjectDirectory(), total={"CPU": 2.0}, host=_Host())
    for i, conn in enumerate(conns):
        w = WorkerInfo(index=i, worker_id=bytes([i]) * 20, conn=conn, state="idle", in_idle=True)
        state.idle.append(w)

    async def main() -> None:
        sup = Supervisor("node", [ChildSpec("local_scheduler", lambda: LocalScheduler(state))],
                         max_restarts=5, max_seconds=10)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            # The handler's part only records the work: the bug does not reach it.
            state.submit(_spec(1))
            state.submit(_spec(2))
            with trio.fail_after(5):
                for conn in conns:
                    await conn.all_sent.wait()
            assert sup.statistics().restarts == 1
            assert state.faults_left == 0
            # Each task went to exactly one worker, once.
            assert sorted(c.sent[0].spec.name for c in conns) == ["t1", "t2"]
            assert [len(c.sent) for c in conns] == [1, 1]
            assert len(state.running) == 2 and not state.ready
            assert state.available == {"CPU": 0.0}
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_queued_task_blocked_before_the_one_ahead_is_done_lends_its_cpu():
    # One CPU, one worker: t1 runs, t2 queues behind it on the same worker. The
    # worker starts t2 when t1 ends there, and t2's Blocked reaches the node before
    # t1's TaskDone (a worker reports "done" only once t1's results pushed to their
    # owner have left). t2 must lend its CPU from the start: it used to be promoted
    # at its Blocked and hold the CPU, blocked, until it ended (a task tree whose
    # CPUs were all held so stopped).
    state = SchedulerState(directory=ObjectDirectory(), total={"CPU": 1.0}, host=_Host())
    w = WorkerInfo(index=0, worker_id=b"w" * 20, conn=_Conn(2), state="idle", in_idle=True)
    state.idle.append(w)
    t1, t2 = _spec(1), _spec(2)
    state.submit(t1)
    state.submit(t2)
    state.dispatch()
    assert list(w.queued) == [t2.task_id] and state.available == {"CPU": 0.0}
    state.blocked(w, t2.task_id)
    state.task_done(w, t1.task_id, [(t1.return_ids()[0], False, b"x")], False, pushed=True)
    assert state.available == {"CPU": 1.0}, "a blocked task holds its CPU"
    assert state.held_by_tasks() == {}
    state.unblocked(w, t2.task_id)
    assert state.available == {"CPU": 0.0}
    state.task_done(w, t2.task_id, [(t2.return_ids()[0], False, b"y")], False, pushed=True)
    assert state.available == {"CPU": 1.0} and not state.running


def _child(i: int, parent: TaskSpec, **resources: float) -> TaskSpec:
    return attrs.evolve(_spec(i), parent_task_id=parent.task_id,
                        resources=resources or {"CPU": 1.0})


def _end(state: SchedulerState, w: WorkerInfo, spec: TaskSpec) -> None:
    state.task_done(w, spec.task_id, [(spec.return_ids()[0], False, b"x")], False, pushed=True)
    state.dispatch()


def test_children_queue_behind_a_running_child_beside_their_blocked_parent():
    # One CPU, one worker: the parent blocks in get (lends its CPU), its first child
    # starts beside it, and the other children, which do not fit, queue behind that
    # child on the same worker (they waited at the node for each `TaskDone` before:
    # a round trip per child). They start in order, one at a time, each taking the
    # CPU the one ahead gave back; one that blocks lends it to the next.
    state = SchedulerState(directory=ObjectDirectory(), total={"CPU": 1.0}, host=_Host())
    w = WorkerInfo(index=0, worker_id=b"w" * 20, conn=_Conn(10**6), state="idle", in_idle=True)
    state.idle.append(w)
    parent = _spec(1)
    state.submit(parent)
    state.dispatch()
    state.blocked(w, parent.task_id)
    kids = [_child(i, parent) for i in range(2, 2 + PIPELINE_DEPTH + 2)]
    for kid in kids:
        state.submit(kid)
    state.dispatch()
    assert [m.spec.name for m in w.conn.sent] == ["t1"] + [k.name for k in kids[:1 + PIPELINE_DEPTH]]
    assert list(w.queued) == [k.task_id for k in kids[1:1 + PIPELINE_DEPTH]]
    assert state.available == {"CPU": 0.0} and len(state.ready) == 1
    _end(state, w, kids[0])  # the next one starts there, the last one queues
    assert list(w.queued) == [k.task_id for k in kids[2:]] and state.available == {"CPU": 0.0}
    state.blocked(w, kids[1].task_id)  # it lends its CPU to the one behind it
    assert list(w.queued) == [k.task_id for k in kids[3:]] and state.available == {"CPU": 0.0}
    assert w.active() == 1
    for kid in kids[2:]:
        _end(state, w, kid)
    state.unblocked(w, kids[1].task_id)
    _end(state, w, kids[1])
    state.unblocked(w, parent.task_id)
    _end(state, w, parent)
    names = [m.spec.name for m in w.conn.sent]
    assert names == [f"t{i}" for i in range(1, len(names) + 1)] == [f"t{i}" for i in range(1, 8)]
    assert state.available == {"CPU": 1.0} and not state.running and not state.ready


def test_nothing_queues_beside_a_blocked_task_of_another_shape_or_with_nothing_running():
    # The rule holds only where every task of the worker has the queued shape, and
    # only behind a task that runs: a worker whose tasks are all blocked would start
    # a queued task at once, with no CPU taken for it.
    state = SchedulerState(directory=ObjectDirectory(), total={"CPU": 1.0, "R": 1.0}, host=_Host())
    w = WorkerInfo(index=0, worker_id=b"w" * 20, conn=_Conn(10**6), state="idle", in_idle=True)
    state.idle.append(w)
    parent = attrs.evolve(_spec(1), resources={"CPU": 1.0, "R": 1.0})
    state.submit(parent)
    state.dispatch()
    state.blocked(w, parent.task_id)
    kids = [_child(i, parent) for i in range(2, 5)]
    for kid in kids:
        state.submit(kid)
    state.dispatch()
    assert [m.spec.name for m in w.conn.sent] == ["t1", "t2"]
    assert not w.queued and len(state.ready) == 2
    # Every task of the worker blocked: it starts the next task when the CPU frees.
    state.blocked(w, kids[0].task_id)
    state.dispatch()
    assert [m.spec.name for m in w.conn.sent] == ["t1", "t2", "t3"] and not w.queued
    v = WorkerInfo(index=1, worker_id=b"v" * 20, conn=_Conn(1), state="busy")
    v.tasks[parent.task_id] = _spec(9)
    v.blocked_tasks.add(parent.task_id)
    v.shape = ReadyQueues.shape(_spec(9))
    assert not v.can_pipeline(v.shape), "nothing runs there to queue behind"


def test_a_task_waiting_for_its_argument_is_one_small_record_its_argument_holds():
    # A million tasks queued behind one argument: each is one `WaitingTask`, which
    # the argument's directory entry holds as its callback (a list and a closure
    # with two cells before: about 300 bytes a task). Ready, it runs as before.
    directory = ObjectDirectory()
    state = SchedulerState(directory=directory, total={"CPU": 1.0}, host=_Host())
    w = WorkerInfo(index=0, worker_id=b"w" * 20, conn=_Conn(1), state="idle", in_idle=True)
    state.idle.append(w)
    gate = b"g" * 20
    specs = [attrs.evolve(_spec(i), deps=[gate]) for i in range(3)]
    for spec in specs:
        state.submit(spec)
    records = [state.waiting[s.task_id] for s in specs]
    assert directory.entries[gate].waiters == records
    assert [(r.spec, r.missing) for r in records] == [(s, 1) for s in specs]
    assert sys.getsizeof(records[0]) <= 64 and not hasattr(records[0], "__dict__")
    assert records[0].on_ready is records[1].on_ready  # one bound method for all
    directory.put(gate, False, b"v")
    state.dispatch()
    assert not state.waiting and state.running.get(specs[0].task_id) is w
    queued = [s.task_id for s in state.ready] + list(w.queued)
    assert sorted(queued) == [s.task_id for s in specs[1:]]


def test_a_worker_ending_short_tasks_back_to_back_gets_a_deeper_pipeline(monkeypatch):
    # One CPU, one worker, a long queue. Tasks queue behind the running one
    # PIPELINE_DEPTH deep; once the worker has ended PIPELINE_DEPTH tasks in a row
    # each within SHORT_TASK of the last, up to DEEP_PIPELINE_DEPTH; one long end
    # sets it back (what is queued stays queued), and so does a pause.
    clock = [100.0]
    fake = types.SimpleNamespace(monotonic=lambda: clock[0])
    monkeypatch.setattr(_scheduler, "time", fake)
    monkeypatch.setattr(_workers, "time", fake)
    state = SchedulerState(directory=ObjectDirectory(), total={"CPU": 1.0}, host=_Host())
    w = WorkerInfo(index=0, worker_id=b"w" * 20, conn=_Conn(10**6), state="idle", in_idle=True)
    state.idle.append(w)
    for i in range(1, 80):
        state.submit(_spec(i))
    state.dispatch()
    assert len(w.queued) == PIPELINE_DEPTH

    def end(after: float) -> None:
        clock[0] += after
        [tid] = [t for t in w.tasks if t not in w.queued]
        spec = w.tasks[tid]
        state.task_done(w, tid, [(spec.return_ids()[0], False, b"x")], False, pushed=True)
        state.dispatch()

    end(0.5)  # the first end follows nothing: not a quick one
    for _ in range(PIPELINE_DEPTH - 1):
        end(0.0005)
        assert len(w.queued) == PIPELINE_DEPTH
    end(0.0005)
    assert len(w.queued) == DEEP_PIPELINE_DEPTH
    end(0.0005)
    assert len(w.queued) == DEEP_PIPELINE_DEPTH
    end(0.5)  # a long task: no more queue behind the worker until it is fed again
    assert len(w.queued) == DEEP_PIPELINE_DEPTH - 1
    end(0.0005)
    assert len(w.queued) == DEEP_PIPELINE_DEPTH - 2
    # Every task went to the worker once, in order.
    names = [m.spec.name for m in w.conn.sent]
    assert names == [f"t{i}" for i in range(1, len(names) + 1)]
    # A run of short ends is forgotten after a pause: the worker idle since then
    # takes the usual depth until its ends come quickly again.
    v = WorkerInfo(index=1, worker_id=b"v" * 20)
    for _ in range(PIPELINE_DEPTH + 1):
        clock[0] += 0.0005
        v.note_end(clock[0])
    assert v.pipeline_depth() == DEEP_PIPELINE_DEPTH
    clock[0] += 1.0
    assert v.pipeline_depth() == PIPELINE_DEPTH


def test_a_waiter_that_makes_the_entry_pending_again_keeps_it_and_the_rest_wait():
    # The end of a generator's rebuild run may start the next rebuild from its
    # waiter (the entry pending again, a new waiter on it). The freed entry stays
    # until the next put; the waiters not called yet wait for that put too.
    directory = ObjectDirectory()
    dropped: list[bytes] = []
    directory.on_drop = lambda oid, entry: dropped.append(oid)
    oid = b"e" * 20
    seen: list[tuple[str, Any]] = []

    def rerun(entry: Any) -> None:
        seen.append(("rerun", entry.ready))
        directory.reset(oid)
        directory.when_ready(oid, lambda e: seen.append(("next run's end", e.data)))

    directory.when_ready(oid, rerun)
    directory.when_ready(oid, lambda e: seen.append(("reader", e.data)))
    directory.free([oid])  # its owner let it go: it goes once ready, nobody waiting
    directory.put(oid, False, b"first")
    assert seen == [("rerun", True)]
    assert not directory.entries[oid].ready and not dropped
    directory.put(oid, False, b"again")
    assert seen == [("rerun", True), ("reader", b"again"), ("next run's end", b"again")]
    assert dropped == [oid] and oid not in directory.entries


def test_ledger_wakes_waiters_on_release_without_a_timer():
    async def main() -> None:
        ledger = ResourceLedger({"CPU": 2.0})
        assert ledger.try_acquire({"CPU": 2.0})
        assert not ledger.try_acquire({"CPU": 1.0})
        got: list[int] = []
        async with trio.open_nursery() as nursery:
            async def taker(i: int) -> None:
                await ledger.acquire({"CPU": 1.0})
                got.append(i)
            nursery.start_soon(taker, 1)
            nursery.start_soon(taker, 2)
            await trio.testing.wait_all_tasks_blocked()
            # Both wait, and nothing wakes them while nothing is released: no timer.
            assert ledger.statistics().waiting == 2 and ledger.statistics().waits == 2
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and ledger.statistics().wakeups == 0
            ledger.release({"CPU": 2.0})
        st = ledger.statistics()
        assert sorted(got) == [1, 2] and st.wakeups == 2 and st.waits == 2
        assert st.available == {"CPU": 0.0} and st.waiting == 0
        with pytest.raises(ValueError, match="capacity"):
            await ledger.acquire({"CPU": 3.0})

    trio.run(main)


# -- a real cluster -----------------------------------------------------------------

@ray.remote
def hold(path: str, x: int) -> int:
    """Runs until ``path`` exists (at most 30 s), then returns ``x * 10``."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return x * 10


@ray.remote
def inc(x: int) -> int:
    return x + 1


@ray.remote(num_cpus=1)
class Cpu:
    def pid(self) -> int:
        return os.getpid()


def _find(snap: dict, name: str) -> dict:
    return tree_entry(snap, name) or {}


def _status() -> dict[str, Any]:
    return ray._api._call("status")


def _crash_and_wait(component: str) -> None:
    before = _find(ray.tree(), component)["restarts"]
    assert "crashed" in faults.crash(component)
    _until(lambda: _find(ray.tree(), component)["restarts"] == before + 1
           and _find(ray.tree(), component)["state"] == "running",
           f"{component} to restart")


@pytest.mark.usefixtures("cluster")
def test_scheduler_crashes_with_work_queued_running_and_actors_waiting_lose_nothing():
    gate = Path(tempfile.mkdtemp(prefix="acs-gate-")) / "open"
    st0 = _status()["scheduler"]
    # Both CPUs busy (running), 30 tasks queued behind them, one actor waiting for a
    # CPU, and a task no node can take on its way to the global scheduler.
    running = [hold.remote(str(gate), i) for i in range(2)]
    _until(lambda: _status()["scheduler"].running - st0.running >= 2, "both holds to run")
    queued = [inc.remote(i) for i in range(30)]
    actor = Cpu.remote()
    _until(lambda: _status()["ledger"].waiting >= 1, "the actor to wait for a CPU")
    infeasible = inc.options(resources={"TPU": 1}).remote(0)

    _crash_and_wait("local_scheduler")
    _crash_and_wait("global_scheduler")
    with pytest.raises(exc.GetTimeoutError):  # it waits for a node with a TPU
        ray.get(infeasible, timeout=0.5)
    assert _status()["scheduler"].unplaced == 1
    ray.cancel(infeasible)

    gate.touch()
    assert ray.get(running, timeout=30) == [0, 10]
    assert ray.get(queued, timeout=30) == [i + 1 for i in range(30)]
    assert isinstance(ray.get(actor.pid.remote(), timeout=30), int)
    st = _status()["scheduler"]
    # Exactly once each: nothing re-ran, nothing is left.
    assert st.retried == st0.retried
    assert st.finished - st0.finished == 2 + 30 + 1
    assert ray.get(inc.remote(41), timeout=30) == 42
    ray.kill(actor)


@pytest.mark.usefixtures("cluster")
def test_an_actor_waiting_for_a_cpu_gets_it_when_it_frees_without_polling():
    a, b = Cpu.remote(), Cpu.remote()  # the cluster's 2 CPUs
    ray.get([a.pid.remote(), b.pid.remote()], timeout=30)
    led0 = _status()["ledger"]
    c = Cpu.remote()
    _until(lambda: _status()["ledger"].waiting == 1, "the third actor to wait")
    # Half a second of waiting costs one wait: nothing polls (a 20 ms timer would
    # have woken it ~25 times).
    time.sleep(0.5)
    led = _status()["ledger"]
    assert led.waits - led0.waits == 1 and led.wakeups == led0.wakeups
    ray.kill(a)
    assert isinstance(ray.get(c.pid.remote(), timeout=30), int)
    led = _status()["ledger"]
    assert led.wakeups - led0.wakeups == 1 and led.waiting == 0
    assert led.available.get("CPU", 0.0) == pytest.approx(0.0)
    ray.kill(b)
    ray.kill(c)
    assert ray.get(inc.remote(1), timeout=30) == 2


@ray.remote
def _level(depth: int, fanout: int) -> int:
    if depth == 0:
        return 1
    return sum(ray.get([_level.remote(depth - 1, fanout) for _ in range(fanout)]))


@pytest.mark.usefixtures("cluster")
def test_a_deep_tree_whose_queued_children_block_in_turn_runs_to_its_end():
    # Children queue behind a running sibling beside their blocked parent; here
    # those queued children themselves submit and block in get when they start
    # (four levels, 1 + 4 + 16 + 64 + 256 tasks on 2 CPUs), so a worker's queue
    # moves on only through its tasks' blocks. Every tree ends, and the node is at
    # rest afterwards: nothing running, both CPUs free (none held by a blocked or
    # a queued task).
    st0 = _status()["scheduler"]
    for _ in range(2):
        assert ray.get(_level.remote(4, 4), timeout=120) == 256
    assert ray.get([_level.remote(2, 6) for _ in range(3)], timeout=120) == [36] * 3
    st = _until(lambda: (s := _status()["scheduler"]).running == 0
                and s.ledger_available.get("CPU") == 2.0 and s, "the node to be at rest")
    assert st.finished - st0.finished == 2 * 341 + 3 * 43
    assert st.failed == st0.failed and st.retried == st0.retried


async def _gcs_nodes(address: str, token: str, op: str, node_id: str, info: Any = None) -> None:
    import gcs

    async with gcs.open_client(address, bytes.fromhex(token), name="test") as client:
        if op == "register":
            await client.nodes.register(node_id, info)
        else:
            await client.nodes.set_fields(node_id, alive=False)


@pytest.mark.usefixtures("cluster")
def test_a_task_no_node_can_run_waits_with_one_warning_and_survives_restarts(cluster):
    # As in Ray: an infeasible task waits (for a node that can run it to join),
    # with a warning naming the request and the cluster, logged once per shape.
    from actorcore.cli._cli import _status_lines

    first = inc.options(num_gpus=1).remote(1)
    second = inc.options(num_gpus=1).remote(2)
    st = _until(lambda: (s := _status()["scheduler"]).unplaced == 2
                and s.unplaced_warnings and s, "both to wait, with a warning")
    (warning,) = st.unplaced_warnings
    assert "GPU: 1" in warning and "CPU: 2" in warning
    assert any("waiting for a node: 2" in line for line in _status_lines(_status()))
    with pytest.raises(exc.GetTimeoutError):
        ray.get(second, timeout=0.5)
    # A restart of the global scheduler keeps them (and warns no more).
    _crash_and_wait("global_scheduler")
    st = _status()["scheduler"]
    assert st.unplaced == 2 and st.unplaced_warnings == (warning,)
    ray.cancel(first)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(first, timeout=10)
    ray.cancel(second)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(second, timeout=10)
    assert _status()["scheduler"].unplaced == 0
    log = (Path(cluster["session_dir"]) / "logs" / "node.log").read_text()
    assert log.count(warning) == 1  # once per shape, for both tasks and the restart
    assert ray.get(inc.remote(1), timeout=30) == 2


def test_a_recursive_cancel_interrupts_the_parent_before_its_queued_child_fails():
    # The parent runs; its child waits in the node's queue. A
    # recursive cancel fails the child (its results go to the parent's process) and
    # interrupts the parent (which tells its process to send the parent's later
    # children through the node). Both go on the one link to the parent's worker,
    # and the interrupt must go first: the child's failure going first, the parent
    # woke on it and submitted another child, which its process pushed on a lease
    # before it read the interrupt right behind.
    sent: list[tuple[str, Any]] = []

    class Host(_Host):
        def deliver(self, owner: bytes, results: list) -> None:
            sent.append(("results", owner))

    class Conn:
        def send_nowait(self, message: Any) -> None:
            sent.append(("interrupt", message.task_id))

    state = SchedulerState(directory=ObjectDirectory(), total={"CPU": 1.0}, host=Host())
    w = WorkerInfo(index=0, worker_id=b"w" * 20, conn=Conn(), state="idle", in_idle=True)
    state.idle.append(w)
    parent = _spec(1)
    state.submit(parent)
    state.dispatch()
    child = attrs.evolve(_spec(2), parent_task_id=parent.task_id, owner=w.worker_id)
    state.submit(child)  # (queued: not dispatched)
    assert state.running.get(parent.task_id) is w and child in list(state.ready)
    sent.clear()
    state.cancel(parent.task_id, force=False, recursive=True)
    assert sent == [("interrupt", parent.task_id), ("results", w.worker_id)]
    assert parent.task_id in state.cancelled_trees


def test_a_task_waiting_for_its_argument_is_written_to_the_gcs_once_it_can_run():
    # Kept in the node's lineage at once; its GCS task-table record is written when
    # its argument is ready (a million queued behind one argument wrote a million
    # records before). One cancelled while it waits never ran: never written. A task
    # of no return is marked done as it is kept: written at once (a mark must never
    # reach the GCS before its record).
    calls: list[tuple[str, bytes]] = []

    class Host(_Host):
        def record_lineage(self, spec: TaskSpec) -> None:
            calls.append(("record", spec.task_id))

        def keep_lineage(self, spec: TaskSpec) -> None:
            calls.append(("keep", spec.task_id))

        def write_lineage(self, spec: TaskSpec) -> None:
            calls.append(("write", spec.task_id))

    directory = ObjectDirectory()
    state = SchedulerState(directory=directory, total={"CPU": 1.0}, host=Host())
    gate = b"g" * 20
    waits, cancelled, no_return, free = (
        attrs.evolve(_spec(1), deps=[gate]), attrs.evolve(_spec(2), deps=[gate]),
        attrs.evolve(_spec(3), deps=[gate], num_returns=0), _spec(4))
    for spec in (waits, cancelled, no_return, free):
        state.submit(spec)
    assert calls == [("keep", waits.task_id), ("keep", cancelled.task_id),
                     ("record", no_return.task_id), ("record", free.task_id)]
    state.cancel(cancelled.task_id, force=False)
    directory.put(gate, False, b"v")
    assert calls[4:] == [("write", waits.task_id)]
    # An argument ready when the task comes: written at once, as it is kept.
    ready_now = attrs.evolve(_spec(5), deps=[gate])
    state.submit(ready_now)
    assert calls[5:] == [("keep", ready_now.task_id), ("write", ready_now.task_id)]
