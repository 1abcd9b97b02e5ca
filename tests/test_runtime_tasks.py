"""Tasks and objects on a real embedded cluster (one per module): the Ray API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import trio

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.core_worker import _worker_state

from .cluster_support import HANG_GUARD, no_resources_held
from .cluster_support import until as _until

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@pytest.fixture(autouse=True)
def _nothing_held_after():
    """After each test, once the node is idle, its ledger holds nothing: a CPU a
    task or a worker lease kept would hold up the tests after it."""
    yield
    no_resources_held()


@ray.remote
def add(a, b=0):
    return a + b


@ray.remote(num_returns=3)
def three():
    return 1, 2, 3


@ray.remote
def boom(msg):
    raise ValueError(msg)


class MyError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


@ray.remote
def boom_custom():
    raise MyError(7, "custom")


def test_simple_task():
    assert ray.get(add.remote(1, 2)) == 3
    assert ray.get(add.remote(1, b=5)) == 6
    assert ray.get([add.remote(i, i) for i in range(20)]) == [2 * i for i in range(20)]


def test_num_returns():
    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs) == [1, 2, 3]
    assert add.options(num_returns=0).remote(1) is None
    bad = add.options(num_returns=2).remote(1, 2)
    with pytest.raises(ValueError, match="num_returns=2"):
        ray.get(bad[0])


def test_refs_as_args_are_resolved_and_nested_refs_stay_refs():
    x = ray.put(10)
    assert ray.get(add.remote(x, add.remote(1, 2))) == 13

    @ray.remote
    def inspect(container):
        (inner,) = container
        return type(inner).__name__, ray.get(inner)

    assert ray.get(inspect.remote([x])) == ("ObjectRef", 10)


def test_put_get_and_ref_semantics():
    value = {"a": list(range(1000)), "b": b"x" * 200_000}
    ref = ray.put(value)
    assert ray.get(ref) == value
    assert ref == pickle.loads(pickle.dumps(ref))
    assert hash(ref) == hash(pickle.loads(pickle.dumps(ref)))
    assert len(ref.hex()) == 40
    with pytest.raises(TypeError, match="ObjectRef"):
        ray.put(ref)
    with pytest.raises(TypeError, match="list of ObjectRefs"):
        ray.get([ref, 3])


def test_nested_tasks_and_blocked_get_do_not_deadlock():
    @ray.remote
    def tree(depth):
        if depth == 0:
            return 1
        return 1 + sum(ray.get([tree.remote(depth - 1) for _ in range(3)]))

    # 40 tasks, each blocked in get on its children, on a 2-CPU node.
    assert ray.get(tree.remote(3), timeout=60) == 40


@ray.remote
def _pid_of_child():
    return os.getpid()


@ray.remote
def _parent_counting_results_kept(n):
    from actorcore.worker._process import process_statistics

    before = process_statistics().results_kept_here
    pids = ray.get([_pid_of_child.remote() for _ in range(n)])
    return os.getpid(), pids, process_statistics().results_kept_here - before


def test_a_childs_results_stay_in_its_parents_process_when_it_ran_there():
    # A child that ran beside its blocked parent, in the parent's process, hands
    # its results over in that process (worker._process, "Owner here"), not on a
    # link to itself; the values are the same. One parent at a time: the results
    # kept there are its children's. (A child on a lease answers on its lease's
    # link, whichever process it ran in: at most those that ran there count.) The
    # parent takes a ref argument, so it goes through the node: a worker lent to
    # the driver on a lease takes no task from the node's queue.
    n = ray.put(8)
    for _ in range(50):
        pid, pids, kept = ray.get(_parent_counting_results_kept.remote(n), timeout=60)
        assert len(pids) == 8 and kept <= pids.count(pid), (pid, pids, kept)
        if kept:
            break
    else:
        pytest.fail("no child's results stayed in its parent's process in 50 parents")


@ray.remote
def _ends_by_executors():
    from actorcore.worker._process import process_statistics

    return os.getpid(), process_statistics().tasks_ended_by_executors


@ray.remote
def _leaf_value(i):
    return i


@ray.remote
def _mid_sum(n):
    return sum(ray.get([_leaf_value.remote(i) for i in range(n)]))


def _ended_by_executors() -> dict[int, int]:
    seen: dict[int, int] = {}
    for _ in range(10):
        for pid, n in ray.get([_ends_by_executors.remote() for _ in range(3)]):
            seen[pid] = max(seen.get(pid, 0), n)
    return seen


def test_a_child_beside_its_blocked_parent_is_ended_by_its_own_thread():
    # A task that runs beside a blocked one runs in another executor thread of the
    # worker; that thread writes its results to their owner in another process and
    # its `TaskDone` to the node itself (worker._process, ``_finish_here``), with
    # no hop to the worker's loop. The results are exact.
    before = _ended_by_executors()
    for _attempt in range(30):
        assert ray.get([_mid_sum.remote(8) for _ in range(4)], timeout=60) == [28] * 4
        after = _ended_by_executors()
        if any(n > before.get(pid, 0) for pid, n in after.items()):
            break
    else:
        pytest.fail(f"no task was ended by an executor thread: {before} -> {after}")


def test_wait():
    @ray.remote
    def sleepy(t):
        time.sleep(t)
        return t

    fast = [add.remote(i) for i in range(5)]
    slow = sleepy.remote(30)
    ready, not_ready = ray.wait(fast + [slow], num_returns=5, timeout=20)
    assert set(ready) == set(fast) and not_ready == [slow]
    t0 = time.monotonic()
    ready, not_ready = ray.wait([slow], timeout=0.2)
    assert ready == [] and not_ready == [slow]
    assert time.monotonic() - t0 < 2
    with pytest.raises(ValueError, match="duplicate"):
        ray.wait([slow, slow])
    with pytest.raises(ValueError, match="num_returns"):
        ray.wait([slow], num_returns=2)
    ray.cancel(slow, force=True)


def test_get_timeout():
    @ray.remote
    def sleepy():
        time.sleep(30)

    ref = sleepy.remote()
    t0 = time.monotonic()
    with pytest.raises(exc.GetTimeoutError, match="timed out"):
        ray.get(ref, timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert isinstance(exc.GetTimeoutError("x"), TimeoutError)
    ray.cancel(ref, force=True)


def test_task_error_is_instance_of_cause_with_traceback():
    ref = boom.remote("bad input")
    with pytest.raises(ValueError) as info:
        ray.get(ref)
    err = info.value
    assert isinstance(err, exc.TaskError) and isinstance(err, exc.RayTaskError)
    assert "bad input" in str(err)
    assert "Traceback" in err.traceback_str and "boom" in err.traceback_str
    with pytest.raises(MyError) as info2:
        ray.get(boom_custom.remote())
    assert info2.value.cause.code == 7


def test_error_flows_through_dependent_tasks():
    failed = boom.remote("upstream")
    downstream = add.remote(failed, 1)
    with pytest.raises(ValueError, match="upstream"):
        ray.get(downstream)


def test_retry_after_worker_death(tmp_path):
    marker = tmp_path / "died"

    @ray.remote(max_retries=2)
    def die_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "survived"

    assert ray.get(die_once.remote(str(marker)), timeout=60) == "survived"

    @ray.remote(max_retries=0)
    def always_die():
        os._exit(1)

    with pytest.raises(exc.WorkerCrashedError, match="no retries are left"):
        ray.get(always_die.remote(), timeout=60)


def test_retry_exceptions(tmp_path):
    counter = tmp_path / "count"

    @ray.remote(max_retries=3, retry_exceptions=[OSError])
    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        with open(path, "w") as f:
            f.write(str(n + 1))
        if n < 2:
            raise OSError("transient")
        return n

    assert ray.get(flaky.remote(str(counter))) == 2

    @ray.remote(max_retries=3, retry_exceptions=[OSError])
    def not_retried(path):
        with open(path, "a") as f:
            f.write("x")
        raise KeyError("no")

    attempts = tmp_path / "attempts"
    with pytest.raises(KeyError):
        ray.get(not_retried.remote(str(attempts)))
    assert attempts.read_text() == "x"  # a KeyError is not in retry_exceptions: one run


def test_unpicklable_argument_names_type_and_cluster_stays_healthy():
    lock = threading.Lock()
    with pytest.raises(exc.SerializationError, match="lock"):
        add.remote(lock)
    with pytest.raises(TypeError, match="argument 0"):
        add.remote(lock)
    assert ray.get(add.remote(1, 1)) == 2


def test_unpicklable_return_value():
    @ray.remote
    def give_lock():
        return threading.Lock()

    with pytest.raises(exc.TaskError, match="lock"):
        ray.get(give_lock.remote())


def test_cancel_queued_and_running(tmp_path):
    @ray.remote
    def spin(i, d):
        (Path(d) / f"pid{i}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)  # short sleeps: a cancel's exception lands between them
        return "done"

    blockers = [spin.remote(i, str(tmp_path)) for i in range(2)]
    queued = add.remote(1, 1)  # both CPUs are taken: it waits
    try:
        _check_cancel_queued_and_running(tmp_path, blockers, queued)
    finally:  # nothing left spinning for the next test, whatever failed
        for ref in blockers:
            ray.cancel(ref, force=True)
    assert ray.get(add.remote(2, 2), timeout=30) == 4


def _check_cancel_queued_and_running(tmp_path, blockers, queued):
    _until(lambda: (tmp_path / "pid0").exists(), "the first to run")
    ray.cancel(queued)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(queued, timeout=10)
    pid0 = int((tmp_path / "pid0").read_text())
    ray.cancel(blockers[0])  # running: interrupted inside the task, its worker lives
    with pytest.raises(exc.TaskCancelledError) as info:
        ray.get(blockers[0], timeout=10)
    assert "spin was cancelled while it ran" in str(info.value) and not _pid_gone(pid0)
    _until(lambda: (tmp_path / "pid1").exists() and (tmp_path / "pid1").read_text(),
           "the second to run")
    pid1 = int((tmp_path / "pid1").read_text())
    ray.cancel(blockers[1], force=True)  # running: its worker is killed
    with pytest.raises(exc.TaskCancelledError, match=r"\(force\)"):
        ray.get(blockers[1], timeout=10)
    _until(lambda: _pid_gone(pid1), "its worker to die")


def test_infeasible_resources_wait_for_a_node():
    # As in Ray: no node can run it, so it waits (with a warning) until one joins.
    refs = [add.options(num_gpus=1).remote(1), add.options(resources={"TPU": 4}).remote(1)]
    for ref in refs:
        with pytest.raises(exc.GetTimeoutError):
            ray.get(ref, timeout=0.3)
        ray.cancel(ref)
        with pytest.raises(exc.TaskCancelledError):
            ray.get(ref, timeout=120)  # (a hang guard: a loaded machine is slow)
    assert ray.get(add.remote(1), timeout=120) == 1


def test_option_validation():
    with pytest.raises(ValueError, match="num_cpus"):
        add.options(num_cpus=-1)
    with pytest.raises(ValueError, match="unknown option.*bogus"):
        add.options(bogus=1)
    with pytest.raises(TypeError, match="retry_exceptions"):
        add.options(retry_exceptions=[int])
    with pytest.raises(TypeError, match="cannot be called directly"):
        add(1, 2)


def test_runtime_context_and_resources():
    ctx = ray.get_runtime_context()
    assert len(ctx.get_node_id()) == 32 and ctx.get_task_id() is None

    @ray.remote
    def where():
        c = ray.get_runtime_context()
        return c.get_node_id(), c.get_task_id(), c.get_worker_id(), c.get_job_id(), os.getpid()

    node, task, worker, job, pid = ray.get(where.remote())
    assert node == ctx.get_node_id() and task and worker != ctx.get_worker_id()
    assert job == ctx.get_job_id() and pid != os.getpid()
    assert ray.cluster_resources()["CPU"] == 2
    assert ray.available_resources()["CPU"] <= 2
    (n,) = ray.nodes()
    assert n["Alive"] and n["NodeID"] == ctx.get_node_id()


def test_await_ref_in_trio_and_asyncio():
    async def in_trio():
        return await add.remote(20, 1)

    async def in_asyncio():
        return await add.remote(40, 2)

    assert trio.run(in_trio) == 21
    assert asyncio.run(in_asyncio()) == 42
    assert add.remote(1, 1).future().result(timeout=30) == 2


def test_many_tasks():
    refs = [add.remote(i, 1) for i in range(2000)]
    assert sum(ray.get(refs)) == sum(range(1, 2001))


def _store_used():
    return ray._api._call("status")["store"].used


def test_large_objects_live_in_shared_memory_zero_copy():
    np = pytest.importorskip("numpy")
    base = _store_used()
    a = np.arange(2_000_000, dtype=np.float64)  # 16 MB
    ref = ray.put(a)
    b = ray.get(ref)
    assert not b.flags.writeable and (a == b).all()
    assert _store_used() >= base + a.nbytes

    @ray.remote
    def total(x):
        return float(x.sum()), x.flags.writeable

    assert ray.get(total.remote(ref)) == (float(a.sum()), False)

    @ray.remote
    def make(n):
        return np.ones(n)

    r = make.remote(1_000_000)
    assert ray.get(r).sum() == 1_000_000
    assert ray.get(total.remote(r))[0] == 1_000_000
    assert ray.get(total.remote(ray.put(np.ones(300_000))))[0] == 300_000  # temp ref
    del ref, b, r
    deadline = time.monotonic() + 10
    while _store_used() > base + 1_000_000:
        assert time.monotonic() < deadline, f"store still holds {_store_used() - base} bytes"
        time.sleep(0.05)


def test_results_of_fire_and_forget_tasks_are_freed_when_they_come(tmp_path):
    """``f.remote()`` with its ref dropped at once: the owner's free reaches the
    node before the result does. The result, its store copy and its lineage still go
    when it comes (they used to stay forever)."""
    np = pytest.importorskip("numpy")
    gate = tmp_path / "go"

    @ray.remote
    def slow_big(path):
        while not os.path.exists(path):
            time.sleep(0.01)
        return np.ones(500_000)  # 4 MB: in the store

    ray.get(add.remote(1))  # the worker is up: what follows is the tasks' own
    base = _store_used()
    kept = ray._api._call("status")["lineage"].kept
    for _ in range(2):  # half a CPU each: add() below has the other one
        slow_big.options(num_cpus=0.5).remote(str(gate))  # the ref is dropped at once
    ray.get(add.remote(2))  # the frees have reached the node before any result
    gate.touch()
    _until(lambda: ray._api._call("status")["lineage"].kept <= kept + 1
           and _store_used() <= base + 1_000_000,
           what="the fire-and-forget results freed", timeout=120)


def test_pipelined_parents_waiting_on_children_do_not_deadlock():
    @ray.remote
    def child(i):
        return i

    @ray.remote
    def parent(i):
        return ray.get(child.remote(i)) + 1

    # Far more parents than workers: some are queued on busy workers (pipelining)
    # and their children queue behind them; blocking in get must let them run.
    assert ray.get([parent.remote(i) for i in range(60)], timeout=60) == list(range(1, 61))


def _tasks_on_workers():
    """The tasks the node has handed to workers (running or queued behind one)."""
    pool = next(c for c in ray.tree()["children"][0]["children"] if c["name"] == "worker_pool")
    return [t for w in pool["children"] for t in w.get("children", []) if t["kind"] == "task"]


def test_cancel_task_queued_behind_a_running_one(tmp_path):
    @ray.remote
    def held(i, d):
        # Runs until the test lets it go: the queued tasks cannot start before.
        (Path(d) / f"run{i}").touch()
        deadline = time.monotonic() + 60
        while not (Path(d) / "stop").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return i

    # Pipelining is the node's: this driver's tasks go through it, not on leases
    # (a leased worker takes nothing from the node's queue).
    with node_path_only():
        running = [held.remote(i, str(tmp_path)) for i in range(2)]
        queued = [add.remote(i) for i in range(6)]
    try:
        # Both CPUs busy first (one may still be held a moment by an earlier test's
        # idle lease): then no queued task can start before its cancel.
        try:
            _until(lambda: len(list(tmp_path.glob("run*"))) == 2, "both to run")
        except AssertionError as e:
            status = ray._api._call("status")
            raise AssertionError(f"{e}: scheduler {status['scheduler']}, ledger "
                                 f"{status['ledger']}, workers {_tasks_on_workers()}, "
                                 f"tree {ray.tree()}") from None
        # Some of the queued ones wait behind the running ones on their workers
        # (pipelining); the rest in the node's queue. Each is cancelled before it starts.
        _until(lambda: len(_tasks_on_workers()) > 2, "tasks queued on busy workers")
        for ref in queued:
            ray.cancel(ref)
        for ref in queued:
            with pytest.raises(exc.TaskCancelledError):
                ray.get(ref, timeout=10)
    finally:
        (tmp_path / "stop").touch()
    assert ray.get(running, timeout=30) == [0, 1]


@contextlib.contextmanager
def node_path_only():
    """Tasks submitted inside go through the node's queue, not on worker leases
    (``core_worker._leased_tasks``)."""
    leased = _worker_state.current_core().leased
    if leased is None:
        yield
        return
    leased.enabled = False
    try:
        yield
    finally:
        leased.enabled = True


@ray.remote
def _child(d, i):
    d = Path(d)
    (d / f"started-{i}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    try:
        while not (d / "stop").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # short sleeps: a cancel's exception lands between them
    except exc.TaskCancelledError:
        (d / f"cancelled-{i}").touch()
        raise
    (d / f"done-{i}").touch()
    return i


@ray.remote
def _parent(d, n):
    refs = [_child.remote(d, i) for i in range(n)]
    try:
        return ray.get(refs)
    except exc.TaskCancelledError:
        # Submitted after the cancel reached the node: with recursive=True it is
        # cancelled too, before it starts.
        return ray.get(_child.remote(d, 99))


def _pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _started(d):
    return {int(p.name.split("-")[1]): int(p.read_text() or 0)
            for p in d.glob("started-*") if p.read_text()}


@pytest.mark.parametrize("force", [False, True], ids=["interrupt", "force"])
def test_cancel_recursive_cancels_the_tasks_it_submitted(tmp_path, force):
    # The parent lends its CPU while it waits: one or two children run, the rest queue.
    parent = _parent.remote(str(tmp_path), 3)
    try:
        _until(lambda: _started(tmp_path), "a child to run")
        ray.cancel(parent, force=force)  # recursive=True is the default, as in Ray
        with pytest.raises(exc.TaskCancelledError):
            ray.get(parent, timeout=30)
        if force:  # the running children's workers are killed with the parent's
            _until(lambda: all(_pid_gone(p) for p in _started(tmp_path).values()),
                   "the children's workers to die")
        else:  # interrupted inside, like the parent
            _until(lambda: all((tmp_path / f"cancelled-{i}").exists() for i in _started(tmp_path)),
                   "the running children to be interrupted")
        assert 99 not in _started(tmp_path), "a child submitted after the cancel ran"
        assert not list(tmp_path.glob("done-*")), "a child ran to its end"
    finally:
        (tmp_path / "stop").touch()
    assert ray.get(add.remote(2, 2), timeout=30) == 4


def test_cancel_not_recursive_leaves_the_children_running(tmp_path):
    parent = _parent.remote(str(tmp_path), 1)
    try:
        _until(lambda: (tmp_path / "started-0").exists(), "the child to run")
        ray.cancel(parent, recursive=False)
        with pytest.raises(exc.TaskCancelledError):
            ray.get(parent, timeout=30)
        assert not list(tmp_path.glob("cancelled-*"))
    finally:
        (tmp_path / "stop").touch()
    # It runs to its end, and so does the one the parent submitted while being
    # cancelled (queued until then for a CPU).
    _until(lambda: all((tmp_path / f"done-{i}").exists() for i in (0, 99)),
           "the children to finish")
    assert ray.get(add.remote(2, 2), timeout=30) == 4


def test_system_exit_in_a_task_is_an_error_not_a_hang():
    @ray.remote
    def leave():
        import sys

        sys.exit(3)

    with pytest.raises(exc.TaskError, match="SystemExit"):
        ray.get(leave.remote(), timeout=30)
    assert ray.get(add.remote(1, 2), timeout=30) == 3


def test_init_inside_a_task_is_harmless():
    @ray.remote
    def inner():
        info = ray.init()
        return info["node_id"], ray.is_initialized()

    node_id, initialized = ray.get(inner.remote(), timeout=30)
    assert node_id == ray.get_runtime_context().get_node_id() and initialized


def test_get_of_an_object_nobody_will_produce_fails_instead_of_hanging():
    ghost = ray.ObjectRef(b"\x13" * 20)  # never created by anyone
    # A hang would end in GetTimeoutError (120 s: a guard, never a timing check).
    with pytest.raises(exc.ObjectLostError, match="can never become available"):
        ray.get(ghost, timeout=120)


def test_future_of_a_large_value():
    np = pytest.importorskip("numpy")
    ref = ray.put(np.ones(200_000))
    assert ref.future().result(timeout=30).sum() == 200_000


def test_workers_do_not_see_actorcore_folders_as_top_level_modules():
    # The node and its workers get the directory that *holds* the actorcore package
    # on their path, never actorcore/ itself: its folders (api, node, session, ...)
    # would shadow a user's modules of the same names in every task.
    @ray.remote
    def path_and_spec():
        import importlib.util
        import sys

        inside = [p for p in sys.path if os.path.basename(os.path.normpath(p)) == "actorcore"]
        spec = importlib.util.find_spec("session")
        return inside, None if spec is None else spec.origin

    inside, origin = ray.get(path_and_spec.remote(), timeout=60)
    assert inside == []
    assert origin is None or "actorcore" not in origin


def test_a_folder_named_like_our_packages_in_the_working_directory_shadows_nothing(tmp_path):
    # A user's working directory may hold folders named store/, gcs/, actorcore/...:
    # the node and the workers must still import ours, and the user's own modules
    # in that directory must still import in tasks (as with `python -m` before).
    for name in ("store", "gcs", "transport", "actorcore"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('shadowed!')\n")
    (tmp_path / "mymod.py").write_text("VALUE = 42\n")
    code = textwrap.dedent("""
        import actorcore as ray
        ray.init(num_cpus=1, log_to_driver=False)
        @ray.remote
        def f():
            import mymod
            return mymod.VALUE
        print("result", ray.get(f.remote(), timeout=60))
        ray.shutdown()
    """)
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert "result 42" in out.stdout, out.stdout + out.stderr


def test_a_queued_tasks_ref_and_its_entry_share_one_id():
    # The driver's reference table keys a task's entry by the very bytes its ref
    # holds: a million queued tasks kept two copies of each return id before.
    @ray.remote
    def gate():
        time.sleep(60)

    g = gate.remote()
    ref = add.remote(g)
    entries = _worker_state.current_core().references.entries
    key = next(k for k in entries if k == ref.binary())
    assert key is ref.binary()
    ray.cancel(g, force=True)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=60)
