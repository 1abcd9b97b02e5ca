"""Actor death causes, restarts, lifetimes and user supervision on a real cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import actorcore as ray
from actorcore import exceptions as exc

from .cluster_support import HANG_GUARD, tree_entry, until

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
class Worker:
    def __init__(self, tag="w"):
        self.tag = tag
        self.calls = 0

    def pid(self):
        return os.getpid()

    def work(self, t=0.0):
        self.calls += 1
        time.sleep(t)
        return self.calls

    def tag_of(self):
        return self.tag

    def die(self):
        os._exit(3)


@ray.remote
class BadInit:
    def __init__(self):
        self.x = 1 / 0

    def f(self):
        return 1


_until = until


def _state(handle):
    from actorcore.api._actor_handle import actor_state

    return actor_state(handle)


def test_constructor_error_reaches_every_call_with_its_traceback():
    a = BadInit.remote()
    r1, r2 = a.f.remote(), a.f.remote()
    for r in (r1, r2, a.f.remote()):
        with pytest.raises(exc.ActorDiedError) as info:
            ray.get(r, timeout=30)
        text = str(info.value)
        assert "constructor raised" in text and "ZeroDivisionError" in text
        assert "in __init__" in text and "line" in text  # the remote traceback


def test_process_death_without_restarts():
    w = Worker.remote()
    pid = ray.get(w.pid.remote())
    pending = w.work.remote(5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exc.ActorDiedError) as info:
        ray.get(pending, timeout=30)
    text = str(info.value)
    assert f"worker process (pid {pid}) died" in text and "signal 9" in text
    assert "max_restarts=0" in text
    with pytest.raises(exc.ActorDiedError, match="died"):
        ray.get(w.work.remote(), timeout=30)
    w2 = Worker.remote()
    with pytest.raises(exc.ActorDiedError, match="exit code 3"):
        ray.get(w2.die.remote(), timeout=30)


def test_kill_fails_pending_and_later_calls():
    w = Worker.remote()
    ray.get(w.pid.remote())
    running = w.work.remote(10)
    queued = [w.work.remote() for _ in range(5)]
    ray.kill(w)
    for r in [running, *queued, w.work.remote()]:
        with pytest.raises(exc.ActorDiedError, match=r"killed with actorcore.kill\(\)"):
            ray.get(r, timeout=30)
    ray.kill(w)  # killing a dead actor is fine


def test_restart_reruns_constructor_and_resends_in_flight_calls():
    w = Worker.options(max_restarts=1, max_task_retries=1).remote("r")
    pid1 = ray.get(w.pid.remote())
    assert ray.get(w.work.remote()) == 1
    in_flight = [w.work.remote(0.5) for _ in range(3)]
    time.sleep(0.2)
    os.kill(pid1, signal.SIGKILL)
    # Resent in order to the new incarnation, whose constructor ran again (calls=0).
    assert ray.get(in_flight, timeout=60) == [1, 2, 3]
    pid2 = ray.get(w.pid.remote())
    assert pid2 != pid1 and ray.get(w.tag_of.remote()) == "r"
    st = _state(w)
    assert st["restarts"] == 1 and st["state"] == "alive"
    os.kill(pid2, signal.SIGKILL)
    with pytest.raises(exc.ActorDiedError) as info:
        ray.get(w.work.remote(), timeout=30)
    assert "restarted 1 time(s); max_restarts=1 allows no more" in str(info.value)


@ray.remote(max_restarts=1, max_task_retries=1)
class Phoenix:
    def state(self):
        ctx = ray.get_runtime_context()
        return os.getpid(), ctx.was_current_actor_reconstructed, ctx.get_job_id(), ctx.namespace


@ray.remote(max_restarts=1, max_task_retries=1)
class AsyncPhoenix:
    async def state(self):
        ctx = ray.get_runtime_context()
        return os.getpid(), ctx.was_current_actor_reconstructed, ctx.get_job_id(), ctx.namespace


def test_runtime_context_tells_a_restarted_actor_the_truth():
    job = ray.get_runtime_context().get_job_id()
    actors = [Phoenix.remote(), AsyncPhoenix.remote()]
    first = ray.get([a.state.remote() for a in actors], timeout=60)
    assert [s[1:] for s in first] == [(False, job, "default")] * 2
    for pid, *_ in first:
        os.kill(pid, signal.SIGKILL)
    again = ray.get([a.state.remote() for a in actors], timeout=60)
    assert [s[1:] for s in again] == [(True, job, "default")] * 2
    assert all(a[0] != f[0] for a, f in zip(again, first, strict=True))


def test_in_flight_calls_without_task_retries_fail_but_the_actor_restarts():
    w = Worker.options(max_restarts=2).remote()
    pid = ray.get(w.pid.remote())
    lost = w.work.remote(5)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exc.ActorDiedError) as info:
        ray.get(lost, timeout=30)
    assert "max_task_retries=0" in str(info.value) and "restarting" in str(info.value)
    assert ray.get(w.work.remote(), timeout=60) == 1


def test_kill_with_restart_allowed_restarts():
    w = Worker.options(max_restarts=1).remote()
    pid = ray.get(w.pid.remote())
    ray.kill(w, no_restart=False)
    assert ray.get(w.pid.remote(), timeout=60) != pid


_OTHER_DRIVER = textwrap.dedent("""
    import sys
    import actorcore as ray
    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote
    class Keeper:
        def ping(self):
            return "pong"

    d = Keeper.options(name="keeper", namespace="jobs", lifetime="detached").remote()
    t = Keeper.options(name="temp", namespace="jobs").remote()
    assert ray.get([d.ping.remote(), t.ping.remote()]) == ["pong", "pong"]
    print("created", flush=True)
""")


def test_detached_actor_outlives_its_driver_non_detached_does_not(cluster, tmp_path):
    script = tmp_path / "other.py"
    script.write_text(_OTHER_DRIVER)
    token = (Path(cluster["session_dir"]) / "token").read_text().strip()
    env = dict(os.environ, ACTORCORE_TOKEN=token)
    out = subprocess.run([sys.executable, str(script), cluster["address"]], capture_output=True,
                         text=True, timeout=HANG_GUARD, env=env)
    assert "created" in out.stdout, out.stderr

    def temp_gone():
        try:
            ray.get_actor("temp", namespace="jobs")
        except ValueError:
            return True
        return False

    _until(temp_gone, what="the non-detached actor to die with its driver")
    keeper = ray.get_actor("keeper", namespace="jobs")
    assert ray.get(keeper.ping.remote()) == "pong"
    ray.kill(keeper)
    with pytest.raises(ValueError, match="no live actor named 'keeper'"):
        ray.get_actor("keeper", namespace="jobs")


def _pids(handles):
    return ray.get([h.pid.remote() for h in handles], timeout=60)


def test_supervised_actors_one_for_all_and_tree():
    sup = ray.supervisor("pair", strategy="one_for_all", max_restarts=5, max_seconds=30)
    a = Worker.options(supervisor=sup, name="sup_a", max_task_retries=-1).remote("a")
    b = Worker.options(supervisor=sup, name="sup_b", max_task_retries=-1).remote("b")
    pa, pb = _pids([a, b])
    snap = tree_entry(ray.tree(), "pair")
    assert snap["kind"] == "user_supervisor" and snap["strategy"] == "one_for_all"
    assert [c["name"] for c in snap["children"]] == ["sup_a", "sup_b"]
    assert snap["children"][0]["class"] == "Worker" and snap["children"][0]["pid"] == pa
    os.kill(pa, signal.SIGKILL)
    # one_for_all: both re-created (new processes, constructors ran again).
    qa, qb = _until(lambda: (lambda p: p if p[0] != pa and p[1] != pb else None)(_pids([a, b])),
                    what="both actors restarted")
    assert ray.get([a.tag_of.remote(), b.tag_of.remote()]) == ["a", "b"]
    snap = tree_entry(ray.tree(), "pair")
    assert [c["restarts"] for c in snap["children"]] == [1, 1]
    with pytest.raises(ValueError, match="already exists"):
        ray.supervisor("pair")


def test_supervised_one_for_one_and_intensity_exceeded():
    sup = ray.supervisor("solo", strategy="one_for_one", max_restarts=1, max_seconds=60)
    a = Worker.options(supervisor=sup, max_task_retries=-1).remote("a")
    b = Worker.options(supervisor=sup, max_task_retries=-1).remote("b")
    pa, pb = _pids([a, b])
    os.kill(pa, signal.SIGKILL)
    qa = _until(lambda: (lambda p: p if p != pa else None)(ray.get(a.pid.remote(), timeout=60)),
                what="a restarted")
    assert ray.get(b.pid.remote()) == pb  # one_for_one: b untouched
    os.kill(qa, signal.SIGKILL)  # a second restart within the window: the supervisor gives up
    for h in (a, b):
        with pytest.raises(exc.ActorDiedError, match="supervisor 'solo' gave up"):
            ray.get(h.pid.remote(), timeout=60)
    _until(lambda: tree_entry(ray.tree(), "solo") is None, what="the failed supervisor removed")


def test_supervised_rest_for_one_restarts_the_later_siblings():
    sup = ray.supervisor("chain", strategy="rest_for_one", max_restarts=3, max_seconds=60)
    hs = [Worker.options(supervisor=sup, max_task_retries=-1).remote(t) for t in "abc"]
    pa, pb, pc = _pids(hs)
    os.kill(pb, signal.SIGKILL)
    qa, qb, qc = _until(
        lambda: (lambda p: p if p[1] != pb and p[2] != pc else None)(_pids(hs)),
        what="b and c restarted")
    assert qa == pa  # started before b: untouched
    assert ray.get([h.tag_of.remote() for h in hs]) == ["a", "b", "c"]


def test_supervised_kill_no_restart_removes_the_child():
    sup = ray.supervisor("killer", strategy="one_for_one")
    a = Worker.options(supervisor=sup, name="victim").remote()
    ray.get(a.pid.remote())
    ray.kill(a)
    with pytest.raises(exc.ActorDiedError, match="killed"):
        ray.get(a.pid.remote(), timeout=30)
    _until(lambda: tree_entry(ray.tree(), "victim") is None, what="child removed")
    with pytest.raises(exc.ActorDiedError, match="does not exist"):
        ray.get(Worker.options(supervisor="nobody").remote().pid.remote(), timeout=30)


_NODE_DIES = textwrap.dedent("""
    import os, signal, tempfile, time
    from pathlib import Path
    import actorcore as ray
    from actorcore import exceptions as exc
    ray.init(num_cpus=1, log_to_driver=False)

    @ray.remote
    class Slow:
        def nap(self, started):
            Path(started).touch()
            time.sleep(30)

    s = Slow.remote()
    started = Path(tempfile.mkdtemp(), "started")
    ref = s.nap.remote(str(started))
    deadline = time.monotonic() + 60
    while not started.exists():  # the call is running
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)
    head = ray.nodes()[0]["pid"]
    os.kill(head, signal.SIGKILL)
    try:
        ray.get(ref, timeout=30)
    except exc.ActorDiedError as e:
        print("DIED:", e, flush=True)
    import store
    from actorcore import _api
    session = _api._state["info"]["session_dir"]
    ray.shutdown()
    store.cleanup_stale_sessions()
""")


def test_node_death_reaches_pending_calls(tmp_path):
    script = tmp_path / "node_dies.py"
    script.write_text(_NODE_DIES)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=HANG_GUARD, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "DIED:" in out.stdout and "its node died" in out.stdout, out.stdout + out.stderr


_NODE_PATH_ONLY = textwrap.dedent("""
    import os, signal
    import actorcore as ray
    ray.init(num_cpus=1, log_to_driver=False)

    @ray.remote
    class C:
        def __init__(self):
            self.items = []
        def add(self, i):
            self.items.append(i)
            return len(self.items)
        def pid(self):
            return os.getpid()

    c = C.options(max_restarts=1, max_task_retries=1).remote()
    out = ray.get([c.add.remote(i) for i in range(2000)])
    assert out == list(range(1, 2001)), out[:10]
    from actorcore.core_worker._worker_state import current_core
    assert not current_core().actor_routes, "direct path was used"
    os.kill(ray.get(c.pid.remote()), signal.SIGKILL)
    assert ray.get(c.add.remote(0), timeout=60) == 1
    print("OK", flush=True)
    ray.shutdown()
""")


def test_node_path_only_mode(tmp_path):
    # ACTORCORE_DIRECT_CALLS=0: every call through the node (the fallback path).
    script = tmp_path / "node_path.py"
    script.write_text(_NODE_PATH_ONLY)
    env = dict(os.environ, ACTORCORE_DIRECT_CALLS="0")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=HANG_GUARD, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "OK" in out.stdout, out.stdout + out.stderr
