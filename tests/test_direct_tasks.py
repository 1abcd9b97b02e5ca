"""Direct task submission on a real cluster: tasks pushed straight to a worker leased
from the node (``core_worker._leased_tasks``, ``node.local_scheduler._leases``,
``worker._leased``), and every guarantee of the node path kept on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import actorcore as ray
import transport
from actorcore import exceptions as exc
from actorcore.core_worker import _leased_tasks, _worker_state
from actorcore.testing import faults

from .cluster_support import HANG_GUARD, no_resources_held, until

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py: 2 CPUs


@ray.remote
def add(x, y=0):
    return x + y


@ray.remote
def pid_of():
    return os.getpid()


@ray.remote
def wait_for_file(d, name, seconds=60):
    """Write our pid to ``d/started``, then spin until ``d/name`` exists."""
    (Path(d) / "started").write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (Path(d) / name).exists():
        time.sleep(0.01)  # short sleeps: a cancel's exception lands between them
    return "finished"


@pytest.fixture(autouse=True, scope="module")
def _leases_on(cluster):
    """Direct task submission is on by default (``ACTORCORE_DIRECT_TASKS``): this
    module's driver has it on even when the suite runs with ``=0``."""
    leased = _worker_state.current_core().leased
    assert leased is not None, "the test cluster's node listens on a Unix socket"
    was = leased.enabled
    leased.enabled = True
    yield
    leased.enabled = was


@pytest.fixture(autouse=True)
def _nothing_held_after():
    """After each test, once the node is idle, its ledger holds nothing: every CPU a
    lease or a leased task took was given back, whatever path the test took."""
    yield
    no_resources_held()


def _leases():
    return _worker_state.current_core().leased.statistics()


def _scheduler():
    """The local scheduler's entry of ``actorcore.tree()``."""
    node = ray.tree()["children"][0]
    return next(c for c in node["children"] if c["name"] == "local_scheduler")


def _started_pid(d: Path) -> int:
    text = until(lambda: (d / "started").exists() and (d / "started").read_text(),
                 "the task to start")
    return int(text)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _process_state(pid: int) -> str:
    """The state letter of process ``pid`` (``/proc/PID/stat``: R, S, T, Z, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _idle_again():
    """Every lease went back: the node shows no leased worker, all CPUs free."""
    until(lambda: _scheduler()["leased_workers"] == 0, "the leases to go back")
    until(lambda: ray.available_resources().get("CPU") == 2.0, "both CPUs free")


def test_results_are_exact_and_travel_on_a_lease():
    # The module's first test: on a loaded machine the pool's workers may still be
    # starting, and a lease asked for meanwhile is refused ("no idle worker"), the
    # tasks going through the node. Counted from once the workers are up.
    until(lambda: ray._api._call("status")["scheduler"].idle_workers >= 2,
          "the pool's workers to be up")
    before = _leases()
    assert [ray.get(add.remote(i, 1)) for i in range(200)] == list(range(1, 201))
    after = _leases()
    assert after.tasks_pushed - before.tasks_pushed >= 150, (before, after)
    # One at a time, on an idle lease: the calling thread writes them itself.
    assert after.tasks_pushed_from_threads > before.tasks_pushed_from_threads, (before, after)
    assert after.leases_granted > before.leases_granted
    # Errors, several returns and large values take the same path.
    with pytest.raises(ZeroDivisionError):
        ray.get(_div.remote(1, 0))
    a, b = _two.remote(5)
    assert ray.get([a, b]) == [5, 6]
    big = ray.get(_big.remote(3 << 20))
    assert len(big) == 3 << 20 and big[:3] == b"\0\0\0"


@ray.remote
def _task_reads():
    from actorcore.worker._process import process_statistics

    stats = process_statistics()
    return os.getpid(), stats.tasks_read_by_thread, stats.tasks_ended_by_thread


def _reads_by_worker():
    """Each task worker's (tasks its main thread read, tasks it ended) so far."""
    seen: dict[int, tuple[int, int]] = {}
    for _ in range(20):
        for pid, read, ended in ray.get([_task_reads.remote() for _ in range(2)]):
            seen[pid] = max(seen.get(pid, (0, 0)), (read, ended))
        if len(seen) == 2:
            break
    return seen


def test_an_idle_workers_main_thread_reads_and_ends_its_tasks_itself():
    # One at a time on a lease, each task comes while its worker is idle: its main
    # thread reads it off the lease link, runs it and writes its end (worker.
    # _main_inbox), and the results are exact whichever way a task came.
    before = _reads_by_worker()
    assert [ray.get(add.remote(i, 2)) for i in range(100)] == list(range(2, 102))
    # A burst beside them: several frames in one read go back to the loop.
    assert ray.get([add.remote(i) for i in range(300)]) == list(range(300))
    after = _reads_by_worker()
    read = sum(r for r, _e in after.values()) - sum(r for r, _e in before.values())
    ended = sum(e for _r, e in after.values()) - sum(e for _r, e in before.values())
    assert read >= 50, (before, after)
    assert ended >= 50, (before, after)


@ray.remote
def _div(a, b):
    return a / b


@ray.remote(num_returns=2)
def _two(x):
    return x, x + 1


@ray.remote
def _big(n):
    return bytes(n)


def test_a_lease_goes_back_when_its_submitter_is_idle():
    assert ray.get([add.remote(i) for i in range(20)]) == list(range(20))
    _idle_again()
    stats = _leases()
    assert stats.leases_held == 0 and stats.leases_returned >= 1, stats


def test_thousands_of_tiny_tasks():
    n = 3000
    assert sum(ray.get([add.remote(i, 1) for i in range(n)], timeout=120)) == n * (n + 1) // 2
    for i in range(300):
        assert ray.get(add.remote(i, i)) == 2 * i
    _idle_again()


def test_nested_tasks_lend_their_cpu_while_they_wait():
    # Two CPUs, 1 + 8 + 64 tasks each blocking in get on its children: only a
    # blocked task lending its CPU (the lease's) back lets the tree finish.
    assert ray.get(_root.remote(), timeout=120) == 64
    assert ray.get(_chain.remote(12), timeout=120) == 12
    _idle_again()


@ray.remote
def _leaf():
    return 1


@ray.remote
def _mid():
    return sum(ray.get([_leaf.remote() for _ in range(8)]))


@ray.remote
def _root():
    return sum(ray.get([_mid.remote() for _ in range(8)]))


@ray.remote
def _chain(depth):
    return 0 if depth == 0 else 1 + ray.get(_chain.remote(depth - 1))


def test_nested_submissions_return_in_order():
    assert ray.get(_ordered.remote(40), timeout=60) == list(range(40))


@ray.remote
def _ordered(n):
    return ray.get([add.remote(i) for i in range(n)])


def test_an_unpicklable_argument_fails_at_the_call_and_the_lease_keeps_serving():
    with pytest.raises((TypeError, exc.SerializationError), match="lock"):
        add.remote(threading.Lock())
    assert ray.get(add.remote(2, 2)) == 4


def test_a_worker_killed_mid_task_is_retried_or_fails(tmp_path):
    once = tmp_path / "once"
    once.mkdir()
    ref = wait_for_file.options(max_retries=1).remote(str(once), "go")
    pid = _started_pid(once)
    (once / "started").unlink()  # before the kill: the retry may start at once
    os.kill(pid, signal.SIGKILL)
    retried_pid = _started_pid(once)  # the retry, through the node
    assert retried_pid != pid
    (once / "go").write_text("")
    assert ray.get(ref, timeout=60) == "finished"

    never = tmp_path / "never"
    never.mkdir()
    ref = wait_for_file.options(max_retries=0).remote(str(never), "go")
    pid = _started_pid(never)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exc.WorkerCrashedError):
        ray.get(ref, timeout=60)
    until(lambda: _pid_gone(pid), "the killed worker to be reaped")
    assert ray.get(add.remote(1, 1), timeout=60) == 2
    _idle_again()


@ray.remote
def _die_at_once(marker):
    """SIGKILL its own worker at its start the first time (``marker`` absent)."""
    if not os.path.exists(marker):
        Path(marker).write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def test_a_worker_dead_at_its_tasks_start_is_retried_or_fails(tmp_path):
    # Its submitter sees the link break with the task unanswered and hands it back;
    # the node retries it (max_retries) or fails it, once, whichever of the two
    # reports (the worker's death, the hand-back) it reads first.
    # (A lease can be refused, e.g. while the pool replaces the dead worker: that
    # task then goes through the node, whose retry rule is the same. And a pushed
    # task the node settled first, from its `LeasedStart` and the worker's death,
    # is answered before its link's end is seen: it is not handed back.)
    before = _leases()
    assert ray.get(_die_at_once.options(max_retries=1).remote(str(tmp_path / "a")),
                   timeout=60) == "survived"
    with pytest.raises(exc.WorkerCrashedError):
        ray.get(_die_at_once.options(max_retries=0).remote(str(tmp_path / "b")), timeout=60)
    after = _leases()
    # Which side settles a pushed task first is a race, so the count of tasks
    # handed back (`tasks_lost`) is not checked; that at least one went by lease is.
    assert after.tasks_pushed >= before.tasks_pushed + 1, (before, after)
    assert ray.get(add.remote(1, 1), timeout=60) == 2
    _idle_again()


def test_a_retryable_exception_is_retried(tmp_path):
    marker = tmp_path / "tried"
    assert ray.get(_fails_once.options(max_retries=2, retry_exceptions=True)
                   .remote(str(marker)), timeout=60) == "second try"
    _idle_again()


@ray.remote
def _fails_once(marker):
    if not os.path.exists(marker):
        Path(marker).write_text("")
        raise ValueError("first try")
    return "second try"


def test_cancel_a_running_leased_task(tmp_path):
    soft = tmp_path / "soft"
    soft.mkdir()
    ref = wait_for_file.remote(str(soft), "never")
    pid = _started_pid(soft)
    ray.cancel(ref)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=30)
    assert not _pid_gone(pid)  # interrupted inside the task: its worker lives

    hard = tmp_path / "hard"
    hard.mkdir()
    ref = wait_for_file.remote(str(hard), "never")
    pid = _started_pid(hard)
    ray.cancel(ref, force=True)
    with pytest.raises(exc.TaskCancelledError, match=r"\(force\)"):
        ray.get(ref, timeout=30)
    until(lambda: _pid_gone(pid), "the force-cancelled worker to die")
    assert ray.get(add.remote(3, 4), timeout=60) == 7
    _idle_again()


def test_cancel_recursive_reaches_the_tasks_a_leased_task_submitted(tmp_path):
    ref = _spawner.remote(str(tmp_path))
    until(lambda: (tmp_path / "child").exists(), "the child to start")
    ray.cancel(ref, recursive=True)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=30)
    until(lambda: (tmp_path / "child_cancelled").exists(), "the child to be cancelled")
    _idle_again()


def test_a_cancel_lost_with_its_link_still_reaches_the_task(tmp_path):
    # The worker is stopped, so the cancel sent on the link is never read; then it
    # dies. The task goes back to the node as lost (which retries it), and its
    # cancel must follow it there: it used to be lost with the link, and the task
    # ran again.
    ref = wait_for_file.remote(str(tmp_path), "never")
    pid = _started_pid(tmp_path)
    before = _leases()
    os.kill(pid, signal.SIGSTOP)
    try:
        until(lambda: _process_state(pid) == "T", "the worker to stop")
        ray.cancel(ref)
        until(lambda: _leases().cancels_pushed > before.cancels_pushed,
              "the cancel to be written to the worker's link")
    finally:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=30)
    assert _leases().tasks_lost == before.tasks_lost + 1
    _idle_again()


def test_a_task_cancelled_while_it_waits_for_a_lease_never_runs(tmp_path):
    # The lease request is held up on its way, so both tasks wait in the driver, the
    # second behind the first. Cancelled there, the second fails at once and never
    # reaches the node or a worker (it used to go to the node with its cancel behind
    # it, where it could start before the cancel came, ahead of the first).
    @ray.remote
    def mark(d, name):
        (Path(d) / name).write_text("")
        return name

    before, node_before = _leases(), _node_scheduler()
    rule = transport.faults.add(transport.faults.delay(
        1.0, src=f"driver-{os.getpid()}", dst=None, kind="request"))
    try:
        first = mark.remote(str(tmp_path), "first")
        second = mark.remote(str(tmp_path), "second")
        ray.cancel(second)
        with pytest.raises(exc.TaskCancelledError, match="mark was cancelled"):
            ray.get(second, timeout=0.5)  # failed here, long before the lease comes
    finally:
        transport.faults.remove(rule)
    assert ray.get(first, timeout=60) == "first"
    after, node_after = _leases(), _node_scheduler()
    assert after.tasks_cancelled_here == before.tasks_cancelled_here + 1
    # The node never heard of it: it neither failed nor ran it.
    assert node_after.failed == node_before.failed, (node_before, node_after)
    assert not (tmp_path / "second").exists()
    # A ref to it passed on resolves to the same error at the node.
    with pytest.raises(exc.TaskCancelledError, match="mark was cancelled"):
        ray.get(add.remote(second), timeout=30)


def test_a_burst_past_the_lease_queue_goes_to_the_node_at_once(monkeypatch):
    # A burst of a class with no lease fills the queue here (QUEUE_PER_LEASE) while
    # its lease request is held up on its way. The one that overflows it sends the
    # queue to the node, and the rest of the burst follows it there at once: none
    # waits here for the answer of a request the node's own queue of that shape
    # would refuse (a nested task's children used to wait a round trip for it).
    monkeypatch.setattr(_leased_tasks, "REFUSAL_BACKOFF", 30.0)
    leased = _worker_state.current_core().leased

    @ray.remote
    def one(i):
        return i

    burst = 3 * _leased_tasks.QUEUE_PER_LEASE
    rule = transport.faults.add(transport.faults.delay(
        1.0, src=f"driver-{os.getpid()}", dst=None, kind="request"))
    try:
        refs = [one.remote(i) for i in range(burst)]
        assert not leased._waiting, [spec.name for spec in leased._waiting]
    finally:
        transport.faults.remove(rule)
    assert ray.get(refs, timeout=60) == list(range(burst))


def test_a_lease_granted_with_nothing_waiting_for_it_goes_back_at_once(monkeypatch):
    # The task that asked for the lease was cancelled while the request was held up
    # on its way: the grant finds nothing of its class waiting here. Kept for its
    # linger (30 s here), it would hold a CPU the node's queue may wait for; it goes
    # back at once.
    monkeypatch.setattr(_leased_tasks, "LEASE_LINGER", 30.0)

    @ray.remote
    def lone():
        return 1

    before = _leases()
    rule = transport.faults.add(transport.faults.delay(
        1.0, src=f"driver-{os.getpid()}", dst=None, kind="request"))
    leased = _worker_state.current_core().leased
    try:
        ref = lone.remote()
        until(lambda: any(k.requesting for k in leased._classes.values()),
              "the lease request to leave")
        ray.cancel(ref)
        with pytest.raises(exc.TaskCancelledError):
            ray.get(ref, timeout=0.5)
    finally:
        transport.faults.remove(rule)
    until(lambda: _leases().leases_granted > before.leases_granted, "the late grant")
    until(lambda: _leases().leases_returned > before.leases_returned,
          "the unused lease to go back", timeout=120)
    assert _leases().leases_held == before.leases_held


@ray.remote
def _child(d):
    (Path(d) / "child").write_text("")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException:
        (Path(d) / "child_cancelled").write_text("")
        raise
    return "child finished"


@ray.remote
def _spawner(d):
    return ray.get(_child.remote(d))


@pytest.mark.parametrize("switch", [None, "0", "1"])
def test_the_switch_turns_direct_submission_on(cluster, switch):
    # On by default and with 1: pushed on leases; 0: every task goes through the node.
    code = textwrap.dedent("""
        import sys
        import actorcore as ray
        from actorcore.core_worker import _worker_state
        ray.init(address=sys.argv[1], log_to_driver=False)

        @ray.remote
        def f(x):
            return x * 2

        assert [ray.get(f.remote(i)) for i in range(20)] == [2 * i for i in range(20)]
        leased = _worker_state.current_core().leased
        print("PUSHED", leased.enabled, leased.statistics().tasks_pushed)
    """)
    env = dict(os.environ)
    env.pop("ACTORCORE_DIRECT_TASKS", None)
    if switch is not None:
        env["ACTORCORE_DIRECT_TASKS"] = switch
    out = subprocess.run([sys.executable, "-c", code, cluster["address"]],
                         capture_output=True, text=True, timeout=HANG_GUARD, env=env)
    assert out.returncode == 0, out.stderr
    _, enabled, pushed = out.stdout.split()
    if switch != "0":
        assert enabled == "True" and int(pushed) > 0, out.stdout
    else:
        assert (enabled, pushed) == ("False", "0"), out.stdout


def _node_scheduler():
    return ray._api._call("status")["scheduler"]


def test_a_lent_worker_is_busy_before_its_first_task():
    # The push to the worker is held up on the way: the node has lent the worker
    # and must not count it idle (its idle reaper would let it go) meanwhile.
    rule = transport.faults.add(transport.faults.delay(
        1.5, src=f"driver-{os.getpid()}-leased", dst="worker_*-leased", kind="oneway"))
    try:
        ref = add.remote(20, 22)
        st = until(lambda: (s := _node_scheduler()).leases and s, "a lease to be granted")
        lent = f"worker_{st.leases[0].worker}"
        pool = next(c for c in ray.tree()["children"][0]["children"]
                    if c["name"] == "worker_pool")
        worker = next(w for w in pool["children"] if w["name"] == lent)
        assert worker["activity"] == "busy", worker
    finally:
        transport.faults.remove(rule)
    assert ray.get(ref, timeout=60) == 42


def test_a_lease_whose_grant_times_out_goes_back(monkeypatch):
    # The driver's lease request is answered after the driver gave up on it: the
    # node granted a lease that nobody would use. The driver gives it back, by the
    # id it chose, behind the request (the autouse check: nothing stays held).
    monkeypatch.setattr(_leased_tasks, "LEASE_REQUEST_TIMEOUT", 0.2)
    before = _leases()
    granted = _node_scheduler().leases_granted
    rule = transport.faults.add(transport.faults.delay(
        1.0, src=f"driver-{os.getpid()}", dst=None, kind="request"))
    try:
        ref = add.remote(1, 2)  # through the node, once the request timed out
        until(lambda: _leases().leases_refused > before.leases_refused,
              "the lease request to time out")
    finally:
        transport.faults.remove(rule)
    assert ray.get(ref, timeout=60) == 3
    until(lambda: _node_scheduler().leases_granted > granted, "the late grant")


def _hold_an_idle_lease_of_add():
    """Run add() until one ran on a lease, which is then held idle. The first may
    not: the node refuses a lease while it has no idle worker (on a cold cluster,
    or once its pool let the idle ones go) and starts one, and the task goes
    through the node meanwhile."""
    def leased() -> bool:
        assert ray.get(add.remote(1, 1)) == 2
        return _leases().leases_held == 1

    until(leased, "add() to run on a lease")


def test_a_task_sent_to_the_node_is_not_overtaken_on_an_idle_lease(tmp_path, monkeypatch):
    # An idle lease of add()'s class holds a CPU (kept 5 s here). Two tasks taking
    # a ref go through the node's queue and need both CPUs: the lease goes back for
    # them, and an add() submitted after them waits for a CPU too instead of
    # running at once on the lease.
    monkeypatch.setattr(_leased_tasks, "LEASE_LINGER", 5.0)
    _hold_an_idle_lease_of_add()
    d = ray.put(str(tmp_path))
    blockers = [wait_for_file.remote(d, "go") for _ in range(2)]
    late = add.remote(2, 2)
    try:
        ready, _ = ray.wait([late], timeout=2.0)
        assert not ready, "a task submitted later ran first, on an idle lease"
    finally:
        (tmp_path / "go").write_text("")
    assert ray.get(blockers + [late], timeout=60) == ["finished", "finished", 4]


# -- nested tasks on leases: a recursive cancel of their parent -----------------------


@ray.remote
def _late_child(d, seconds):
    """Spin ``seconds``, then write ``d/child_done``; ``d/child_cancelled`` if the
    cancel lands inside it."""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (Path(d) / "stop").exists():
            time.sleep(0.01)
    except BaseException:
        (Path(d) / "child_cancelled").write_text("")
        raise
    (Path(d) / "child_done").write_text("")
    return "done"


@ray.remote
def _parent_of_a_late_child(d, hold):
    """Submit a `_late_child` whose push to its leased worker is held back ``hold``
    seconds on the way, and end at once, without waiting for it. Returns whether it
    went on a lease (else it went through the node: the crossing was not made)."""
    leased = _worker_state.current_core().leased
    before = leased.statistics().tasks_pushed
    rule = transport.faults.add(transport.faults.delay(
        hold, src=f"worker-{os.getpid()}-leased", dst=None, kind="oneway"))
    try:
        _late_child.remote(d, 10.0)
        deadline = time.monotonic() + 5
        while leased.statistics().tasks_pushed == before and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        transport.faults.remove(rule)
    return leased.statistics().tasks_pushed > before


def test_a_recursive_cancel_after_its_end_reaches_a_child_reported_later(tmp_path):
    # The parent ends while its leased child's push is still on its way to the
    # worker, so the node hears of the child (its LeasedStart) only after the
    # parent's end and after the recursive cancel; on the node path the child's
    # Submit comes before its parent's end and the cancel finds it. The node marks
    # the cancelled tree whether the parent runs or not, and cancels the child at
    # its report (before: it ran to its end).
    for attempt in range(6):
        d = tmp_path / str(attempt)
        d.mkdir()
        parent = _parent_of_a_late_child.remote(str(d), 3.0)
        if ray.get(parent, timeout=60):
            break
        (d / "stop").write_text("")  # it went through the node: no crossing; again
        _idle_again()
    else:
        pytest.fail("no child of a task went on a lease in 6 tries")
    before = until(lambda: (s := _node_scheduler()).running == 0 and s,
                   "the parent's end to reach the node")
    ray.cancel(parent, recursive=True)
    try:
        assert _node_scheduler().finished == before.finished, "the child came early"
        until(lambda: _node_scheduler().finished > before.finished, "the child's end",
              timeout=60)
        assert not (d / "child_done").exists(), "the cancel missed a child reported late"
    finally:
        (d / "stop").write_text("")
    _idle_again()


@ray.remote
def _mark_file(d, name):
    (Path(d) / name).write_text("")
    return name


@ray.remote
def _parent_holding_an_idle_lease(d):
    """Run a first `_mark_file` on a lease kept idle here (a long linger), then wait
    for a cancel; once cancelled, submit a second one of the same class (the idle
    lease would take it at once) and wait for it."""
    leased = _worker_state.current_core().leased
    linger = _leased_tasks.LEASE_LINGER
    _leased_tasks.LEASE_LINGER = 10.0
    try:
        before = leased.statistics().tasks_pushed
        ray.get(_mark_file.remote(d, "first"))
        if leased.statistics().tasks_pushed == before:
            return "not leased"
        (Path(d) / "waiting").write_text("")
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(0.01)
        except exc.TaskCancelledError:
            (Path(d) / "submitting").write_text("")
            pushed = leased.statistics().tasks_pushed
            ref = _mark_file.remote(d, "after")
            # The task goes on (its gets fail at once now): the idle lease would
            # take the child meanwhile.
            deadline = time.monotonic() + 0.5
            while leased.statistics().tasks_pushed == pushed and time.monotonic() < deadline:
                time.sleep(0.005)
            try:
                return ray.get(ref, timeout=30)
            except exc.TaskCancelledError:
                return "child cancelled"
        return "never cancelled"
    finally:
        _leased_tasks.LEASE_LINGER = linger


def test_a_child_submitted_after_its_parent_saw_a_recursive_cancel_never_starts(tmp_path):
    # The parent's process holds an idle lease of the child's class. The node's
    # interrupt says the cancel is recursive, and the parent's process sends what
    # the task submits from then on through the node (which fails it) instead of
    # pushing it on that lease (before: it ran on the lease, its report reaching
    # the node only after it had started).
    for attempt in range(6):
        d = tmp_path / str(attempt)
        d.mkdir()
        parent = _parent_holding_an_idle_lease.remote(str(d))
        until(lambda d=d, parent=parent: (d / "waiting").exists()
              or ray.wait([parent], timeout=0)[0],
              "the parent to wait for its cancel", timeout=60)
        if (d / "waiting").exists():
            break
        assert ray.get(parent) == "not leased"
        _idle_again()
    else:
        pytest.fail("no child of a task went on a lease in 6 tries")
    # The workers' reports to the node are held back: a child pushed on the lease
    # would start long before the node could cancel it at its report.
    # (The parent itself may be killed after the cancel's grace, its end held back.)
    with faults.delay(2.0, a="worker", b="node-*", both=False):
        ray.cancel(parent, recursive=True)
        until(lambda: (d / "submitting").exists(), "the parent to submit its child")
        try:
            result = ray.get(parent, timeout=60)
        except exc.TaskCancelledError:
            result = "parent cancelled"
        assert result in ("child cancelled", "parent cancelled"), result
    _idle_again()
    assert not (d / "after").exists(), "a child submitted after the cancel ran"


@ray.remote
def _spinning_child(d, name):
    """Write ``d/<name>_started``, spin until ``d/stop``; ``d/<name>_cancelled`` if
    the cancel lands inside it."""
    from actorcore.worker import _process

    assert _process._worker is not None
    (Path(d) / f"{name}_started").write_text(str(_process._worker.index))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (Path(d) / "stop").exists():
            time.sleep(0.01)
    except BaseException:
        (Path(d) / f"{name}_cancelled").write_text("")
        raise
    return f"{name} finished"


@ray.remote
def _parent_of_a_leased_child(d):
    """Run a `_spinning_child` on a lease and wait for it; when its cancel comes
    back, submit another one (``after``: the lease, kept idle here, would take it at
    once) and wait for that."""
    from actorcore.worker import _process

    leased = _worker_state.current_core().leased
    linger = _leased_tasks.LEASE_LINGER
    _leased_tasks.LEASE_LINGER = 10.0
    try:
        before = leased.statistics().tasks_pushed
        child = _spinning_child.remote(d, "child")
        deadline = time.monotonic() + 5
        while leased.statistics().tasks_pushed == before and time.monotonic() < deadline:
            time.sleep(0.005)
        if leased.statistics().tasks_pushed == before:
            (Path(d) / "stop").write_text("")
            ray.get(child)
            return "not leased"
        assert _process._worker is not None
        (Path(d) / "parent_worker").write_text(str(_process._worker.index))
        try:
            return ray.get(child)
        except exc.TaskCancelledError:
            ref = _spinning_child.remote(d, "after")
            try:
                return ray.get(ref, timeout=30)
            except exc.TaskCancelledError:
                return "after cancelled"
    finally:
        _leased_tasks.LEASE_LINGER = linger


def test_a_child_submitted_when_a_cancelled_child_came_back_never_starts(tmp_path):
    # A recursive cancel interrupts the parent's running children as well as the
    # parent. A leased child's end came back to the parent's process on the link it
    # was pushed on, which nothing orders with the parent's own interrupt on its node
    # link: the parent could see its child cancelled, submit another child, and push
    # it on the idle lease (its process had not yet heard that its tree was
    # cancelled), where it started before the node cancelled it at its report. Here
    # the node's messages to the parent's worker are held back to widen that window.
    for attempt in range(6):
        d = tmp_path / str(attempt)
        d.mkdir()
        parent = _parent_of_a_leased_child.remote(str(d))
        until(lambda d=d, parent=parent: (d / "child_started").exists()
              and (d / "parent_worker").exists() or ray.wait([parent], timeout=0)[0],
              "the child to start on a lease", timeout=60)
        if (d / "parent_worker").exists():
            break
        assert ray.get(parent, timeout=60) == "not leased"
        _idle_again()
    else:
        pytest.fail("no child of a task went on a lease in 6 tries")

    def only(index):  # the endpoint pattern of this one worker
        return "worker_" + "".join(f"[{c}]" for c in index)

    parent_worker = only((d / "parent_worker").read_text())
    child_worker = only((d / "child_started").read_text())
    try:
        # The node's messages to the parent's worker (its interrupt) are held back a
        # little (less than the cancel's grace), and the child's worker's to the
        # node (the report of the next task pushed on its lease) longer.
        with faults.delay(0.5, a="node-*", b=parent_worker, both=False), \
                faults.delay(2.0, a=child_worker, b="node-*", both=False):
            ray.cancel(parent, recursive=True)
            until(lambda: (d / "child_cancelled").exists(), "the child to be cancelled")
            try:
                result = ray.get(parent, timeout=60)
            except exc.TaskCancelledError:  # (killed after the cancel's grace)
                result = "parent cancelled"
        assert result in ("after cancelled", "parent cancelled"), result
        assert not (d / "after_started").exists(), "a child submitted after the cancel ran"
    finally:
        (d / "stop").write_text("")
    _idle_again()


_children_left: list = []  # (in the parent's worker: the refs it leaves behind)


@ray.remote
def _parent_leaving_a_child(d):
    """Start a `_spinning_child` ("child"), then end once ``d/go`` exists, leaving
    the child running."""
    _children_left.append(_spinning_child.remote(d, "child"))
    deadline = time.monotonic() + 60
    while not (Path(d) / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "left"


def test_a_recursive_cancel_crossing_its_tasks_end_still_reaches_its_children(
        tmp_path, monkeypatch):
    # `ray.cancel` of a pushed task records the cancel, and the core loop writes it
    # on the task's link. The task's end could come back in between: the cancel was
    # then dropped, and a recursive one never reached the children the task left
    # running (on the node path the node cancels the tree of a task that has
    # ended). Here the loop writes the cancel only once the end is in.
    leased = _worker_state.current_core().leased
    send_cancel = leased._send_cancel
    held: list[bytes] = []
    monkeypatch.setattr(leased, "_send_cancel", held.append)
    for attempt in range(6):
        d = tmp_path / str(attempt)
        d.mkdir()
        parent = _parent_leaving_a_child.remote(str(d))
        until(lambda d=d: (d / "child_started").exists(), "the child to start", timeout=60)
        if parent.task_id() in leased._in_flight:
            break
        (d / "go").write_text("")  # it went through the node: no crossing; again
        assert ray.get(parent, timeout=60) == "left"
        (d / "stop").write_text("")
        _idle_again()
    else:
        pytest.fail("no task went on a lease in 6 tries")
    try:
        ray.cancel(parent, recursive=True)
        until(lambda: held, "the cancel to be handed to the core loop")
        (d / "go").write_text("")
        assert ray.get(parent, timeout=60) == "left"  # its end is in
        _worker_state.current_core().trio_token.run_sync_soon(send_cancel, held[0])
        until(lambda: (d / "child_cancelled").exists(), "the child to be cancelled")
    finally:
        (d / "stop").write_text("")
    _idle_again()
