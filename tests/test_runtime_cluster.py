"""The cluster as a whole: tree, fault injection, CLI, logs, cleanup, init errors."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

import actorcore as ray
import store
from actorcore.kernel import check_snapshot
from actorcore.testing import faults

from .cluster_support import HANG_GUARD, tree_entry
from .cluster_support import alive as _alive
from .cluster_support import until as _until

ROOT = Path(__file__).resolve().parent.parent


def _env(tmpdir: str | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    if tmpdir is not None:
        env["ACTORCORE_TMPDIR"] = tmpdir
    return env


def _wait_dead(pids, timeout=120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@ray.remote
def inc(x):
    return x + 1


@pytest.fixture
def tmpdir() -> Iterator[str]:
    """A short session root (Unix socket paths must stay under 108 bytes, which
    pytest's own tmp_path can exceed), removed after the test."""
    path = tempfile.mkdtemp(prefix="ac")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_tree_shape(cluster):
    ray.get([inc.remote(i) for i in range(4)])
    snap = ray.tree()
    check_snapshot(snap)
    node = tree_entry(snap, "node")
    names = [c["name"] for c in node["children"]]
    assert names == ["rpc_server", "gcs", "gcs_client", "node_links", "global_scheduler", "local_scheduler",
                     "object_manager", "store_link", "object_directory", "worker_pool",
                     "actor_manager", "placement_groups"]
    assert node["node_id"] == cluster["node_id"]
    workers = _pool_workers(snap)
    assert len(workers) >= 2
    for w in workers:
        assert w["kind"] == "worker" and isinstance(w["pid"], int) and _alive(w["pid"])
    assert tree_entry(snap, "replica_0")["kind"] == "gcs_replica"


@pytest.mark.parametrize(
    "component",
    ["local_scheduler", "global_scheduler", "object_manager", "worker_pool", "rpc_server",
     "gcs_client", "store_link", "object_directory", "actor_manager"],
)
def test_crash_component_restarts_and_cluster_keeps_serving(cluster, component):
    before = tree_entry(ray.tree(), component)["restarts"]
    pending = [inc.remote(i) for i in range(50)]
    assert "crashed" in faults.crash(component)
    deadline = time.monotonic() + 10
    while tree_entry(ray.tree(), component)["restarts"] != before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert ray.get(pending, timeout=30) == [i + 1 for i in range(50)]
    assert ray.get(inc.remote(1), timeout=30) == 2


def test_crash_worker_and_unknown_component(cluster):
    workers = _pool_workers()
    name, pid = workers[0]["name"], workers[0]["pid"]
    assert "killed" in faults.crash(f"worker_pool/{name}")
    assert _wait_dead([pid]) == []
    assert ray.get([inc.remote(i) for i in range(10)], timeout=30) == list(range(1, 11))
    with pytest.raises(ValueError, match="no_such_thing"):
        faults.crash("no_such_thing")


@ray.remote
def meet(d, me, other):
    """Runs until the task named ``other`` has started too, or 20 s passed: True only
    if both ran at the same time (no timing is asserted, only their overlap)."""
    Path(d, me).touch()
    deadline = time.monotonic() + 20
    while not Path(d, other).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _pool_workers(snap=None):
    """The worker processes under ``worker_pool`` (not its zygote)."""
    return [w for w in tree_entry(snap or ray.tree(), "worker_pool")["children"] if w["kind"] == "worker"]


def test_pool_refills_after_a_worker_is_killed_and_cpu_tasks_run_side_by_side(cluster):
    # Both workers registered and idle: the kill leaves one, which alone would have
    # taken both tasks one after the other (the second queued behind the first).
    ray.get([inc.remote(i) for i in range(4)], timeout=30)
    _until(lambda: [w["state"] for w in _pool_workers()] == ["running", "running"],
           "both workers to register")
    victim = _pool_workers()[0]
    assert "killed" in faults.crash(f"worker_pool/{victim['name']}")
    assert _wait_dead([victim["pid"]]) == []
    # With no work waiting, the pool is back at one registered worker per CPU.
    _until(lambda: sorted((w["state"], w["pid"] == victim["pid"]) for w in _pool_workers())
           == [("running", False), ("running", False)], "the pool to refill")
    d = tempfile.mkdtemp(prefix="meet")
    try:
        assert ray.get([meet.remote(d, "a", "b"), meet.remote(d, "b", "a")], timeout=60) \
            == [True, True]
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert ray.get(inc.remote(1), timeout=30) == 2


FEWER_WORKERS = """
import tempfile, time
from pathlib import Path
import actorcore as ray
@ray.remote
def meet(d, me, other):
    Path(d, me).touch()
    deadline = time.monotonic() + 20
    while not Path(d, other).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
ray.init(num_cpus=2, num_workers=1, log_to_driver=False)
d = tempfile.mkdtemp()
assert ray.get(meet.remote(d, "w", "w"), timeout=30)  # the one worker is up and idle
print("MET", ray.get([meet.remote(d, "a", "b"), meet.remote(d, "b", "a")], timeout=60))
print("NEXT", ray.get(meet.remote(d, "c", "a"), timeout=30))
ray.shutdown()
"""


def test_task_with_free_cpu_gets_a_new_worker_instead_of_queueing_behind_a_busy_one(tmpdir):
    # One pre-started worker on two CPUs: the second task's CPU is free, so the pool
    # starts a worker for it rather than queueing it behind the first.
    out = subprocess.run(
        [sys.executable, "-c", FEWER_WORKERS],
        env=_env(tmpdir), capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MET [True, True]" in out.stdout and "NEXT True" in out.stdout, out.stdout


BROKEN_SITE = """
import os
try:
    argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
except OSError:
    argv = []
# Every interpreter that would become a worker: ``-m actorcore.worker`` (a spawned
# task worker), ``-m actorcore.worker._zygote`` (the zygote, whose forks never run
# this file again: it breaks, so workers are spawned, and break).
if any(a.startswith(b"actorcore.worker") for a in argv) and os.path.exists(
        os.environ["BREAK_WORKERS_FLAG"]):
    os._exit(3)  # a worker that cannot start (a broken environment)
"""

BROKEN_WORKERS = """
import os, time
from pathlib import Path
import actorcore as ray
flag = Path(os.environ["BREAK_WORKERS_FLAG"])
info = ray.init(num_cpus=2, log_to_driver=False)
@ray.remote
def f():
    return 1
ref = f.remote()
log = Path(info["session_dir"]) / "logs" / "node.log"
deadline = time.monotonic() + 60
while "3 in a row: the next worker starts in" not in log.read_text():
    assert time.monotonic() < deadline, log.read_text()
    time.sleep(0.05)
starts = len(list(log.parent.glob("worker-*.out")))
flag.unlink()  # the environment is fixed: the next start succeeds
print("RESULT", ray.get(ref, timeout=60), ray.get(f.remote(), timeout=30), "STARTS", starts)
ray.shutdown()
"""


def test_workers_that_cannot_start_are_restarted_with_backoff_not_in_a_loop(tmpdir):
    site = Path(tmpdir) / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BROKEN_SITE)
    flag = Path(tmpdir) / "broken"
    flag.touch()
    env = _env(tmpdir)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    env["BREAK_WORKERS_FLAG"] = str(flag)
    # A zygote forked from the node would not run the broken site file: spawned.
    env["ACTORCORE_WORKER_ZYGOTE_AT_START"] = "0"
    out = subprocess.run([sys.executable, "-c", BROKEN_WORKERS], env=env,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    # Started at once: the two pre-started workers and their first replacements;
    # then one per backoff step (a tight loop starts a hundred in these seconds).
    assert line.split()[1:3] == ["1", "1"] and int(line.split()[4]) <= 8, out.stdout


def test_store_arena_is_faulted_in_ahead_of_use_by_default(cluster):
    # 256 MiB above the arena's header, in the background after the node started.
    _until(lambda: tree_entry(ray.tree(), "object_manager").get("prefaulted", 0) >= (256 << 20) + 4096,
           "the store to fault in its first 256 MiB")


PREFAULT = """
import sys, time
import numpy as np
import actorcore as ray
ray.init(num_cpus=1, log_to_driver=False, object_store_memory=64 << 20)
def prefaulted():
    node = ray.tree()["children"][0]
    return next(c for c in node["children"] if c["name"] == "object_manager")["prefaulted"]
ref = ray.put(np.ones(1 << 20, dtype=np.uint8))
assert ray.get(ref).sum() == 1 << 20
low, high = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 30
while not low <= prefaulted() <= high:
    assert time.monotonic() < deadline, prefaulted()
    time.sleep(0.02)
print("PREFAULTED", prefaulted())
ray.shutdown()
"""


@pytest.mark.parametrize("setting", ["0", "all", "1048576"])
def test_store_prefault_setting(tmpdir, setting):
    # 0: nothing faulted in ahead; all: the whole arena (its capacity is the cap);
    # a number: that many bytes above the highest allocated byte: the 1 MiB put's,
    # or that of the block the store lent the driver for its next put, as large as
    # the put (`store._core`, "Lending"), placed above it.
    mib = 1 << 20
    low, high = {"0": (0, 0), "all": (64 * mib + 4096,) * 2,
                 "1048576": (2 * mib + 4096, 4 * mib + 16384)}[setting]
    env = _env(tmpdir)
    env["ACTORCORE_OBJECT_STORE_PREFAULT"] = setting
    out = subprocess.run([sys.executable, "-c", PREFAULT, str(low), str(high)], env=env,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PREFAULTED" in out.stdout, out.stdout


def test_init_twice_and_bad_args(cluster):
    with pytest.raises(RuntimeError, match="already"):
        ray.init()
    assert ray.init(ignore_reinit_error=True)["node_id"] == cluster["node_id"]
    assert ray.is_initialized()


def test_calls_before_init_fail_clearly():
    code = (
        "import actorcore as ray\n"
        "from actorcore import exceptions as e\n"
        "@ray.remote\n"
        "def f(): pass\n"
        "for call in (lambda: f.remote(), lambda: ray.put(1), lambda: ray.nodes()):\n"
        "    try:\n"
        "        call()\n"
        "    except e.NotInitializedError as err:\n"
        "        assert 'init()' in str(err), err\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
        "assert not ray.is_initialized()\n"
        "try:\n"
        "    ray.init(num_cpus=-1)\n"
        "except ValueError as err:\n"
        "    assert 'num_cpus' in str(err)\n"
        "print('ok')\n"
    )
    # Without the implicit init() of the first call (tests/test_ray_semantics.py).
    env = dict(_env(), ACTORCORE_ENABLE_AUTO_CONNECT="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=HANG_GUARD)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


DRIVER = """
import os, sys, time
import actorcore as ray
ray.init(num_cpus=2, log_to_driver={log})
@ray.remote
def shout(i):
    print("hello from task", i)
    print("to stderr", i, file=sys.stderr)
    return os.getpid()
pids = set(ray.get([shout.remote(i) for i in range(4)]))
info = ray.nodes()[0]
snap = ray.tree()
workers = [w["pid"] for w in snap["children"][0]["children"][-1]["children"]]
print("PIDS", info["pid"], *workers, flush=True)
print("SESSION", ray._api._state["info"]["session_dir"], flush=True)
time.sleep(0.5)
if {kill}:
    os.kill(os.getpid(), 9)
ray.shutdown()
print("clean exit")
"""


def _run_driver(tmpdir: str, *, log: bool, kill: bool):
    out = subprocess.run(
        [sys.executable, "-c", DRIVER.format(log=log, kill=kill)],
        env=_env(tmpdir), capture_output=True, text=True, timeout=HANG_GUARD,
    )
    pids = session = None
    for line in out.stdout.splitlines():
        if line.startswith("PIDS"):
            pids = [int(p) for p in line.split()[1:]]
        if line.startswith("SESSION"):
            session = Path(line.split()[1])
    assert pids and session, out.stdout + out.stderr
    return out, pids, session


def _shm_segments() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


@pytest.mark.parametrize("kill", [False, True], ids=["shutdown", "sigkill"])
def test_driver_exit_leaves_nothing_behind(kill, tmpdir):
    shm_before = _shm_segments()
    out, pids, session = _run_driver(tmpdir, log=True, kill=kill)
    if kill:
        assert out.returncode == -signal.SIGKILL
    else:
        assert out.returncode == 0 and "clean exit" in out.stdout, out.stderr
    assert _wait_dead(pids) == [], f"left running: {pids}"
    assert list((session / "sockets").iterdir()) == []
    assert not (Path(tmpdir) / "session_latest").exists()
    leaked = {s for s in _shm_segments() - shm_before if session.name in s}
    assert not leaked
    # Worker output reached the driver, prefixed with where it ran.
    assert "hello from task" in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if "hello from task" in ln)
    assert line.startswith("(pid=") and "node=" in line
    assert "to stderr" in out.stderr
    # ... and the session's log directory.
    logs = "".join(p.read_text() for p in (session / "logs").glob("worker-*.out"))
    assert "hello from task" in logs


def test_log_to_driver_off(tmpdir):
    out, pids, _ = _run_driver(tmpdir, log=False, kill=False)
    assert "hello from task" not in out.stdout
    assert _wait_dead(pids) == []


def test_cli_start_status_tree_stop(tmpdir):
    env = _env(tmpdir)

    def cli(*args, check=True):
        r = subprocess.run([sys.executable, "-m", "actorcore", *args], env=env,
                           capture_output=True, text=True, timeout=HANG_GUARD)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    assert "no running" in cli("stop").stdout
    r = cli("status", check=False)
    assert r.returncode == 1 and "no running actorcore cluster" in r.stderr
    started = cli("start", "--head", "--num-cpus", "1", "--resources", '{"widget": 2}')
    assert "head node started" in started.stdout
    try:
        assert "a cluster is already running" in cli("start", "--head", check=False).stderr
        status = cli("status").stdout
        assert "CPU" in status and "widget" in status and "logs:" in status
        snap = json.loads(cli("tree", "--json").stdout)
        check_snapshot(snap)
        assert tree_entry(snap, "local_scheduler") is not None
        text = cli("tree").stdout
        assert "worker_pool" in text and "gcs_replica" in text
        code = (
            "import actorcore as ray\n"
            "ray.init(address='auto')\n"
            "@ray.remote(resources={'widget': 1})\n"
            "def f(x): return x * 2\n"
            "print(ray.get(f.remote(21)))\n"
        )
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=HANG_GUARD)
        assert r.stdout.strip().endswith("42"), r.stderr
        pid = json.loads(cli("status", "--json").stdout)["pid"]
        # A driver that leaves takes its objects and queued tasks with it.
        before = json.loads(cli("status", "--json").stdout)["object_store"]["objects"]
        code = (
            "import time, actorcore as ray\n"
            "ray.init(address='auto')\n"
            "@ray.remote\n"
            "def gate(): time.sleep(60)\n"
            "@ray.remote\n"
            "def f(x): return x\n"
            "keep = [ray.put(b'x' * 1000) for _ in range(50)]\n"
            "g = gate.remote()\n"
            "queued = [f.remote(g) for _ in range(20)]\n"
            "ray.wait(queued, timeout=0.5)\n"
            "print('leaving')\n"
        )
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=HANG_GUARD)
        assert "leaving" in r.stdout, r.stderr
        deadline = time.monotonic() + 20  # the node keeps them 5 s for a rejoin
        while True:
            st = json.loads(cli("status", "--json").stdout)
            if st["object_store"]["objects"] <= before + 1 and st["scheduler"]["waiting"] == 0:
                break
            assert time.monotonic() < deadline, st["object_store"]
            time.sleep(0.1)
    finally:
        stopped = cli("stop")
    assert "stopped" in stopped.stdout
    assert _wait_dead([pid]) == []


@ray.remote
class _Tally:
    def __init__(self) -> None:
        self.total = 0

    def add(self, n: int) -> int:
        self.total += n
        return self.total


def test_status_shows_the_components_typed_statistics(cluster):
    tally = _Tally.remote()
    assert ray.get(tally.add.remote(1)) == 1
    assert ray.get([inc.remote(i) for i in range(10)]) == list(range(1, 11))
    big = ray.put(b"x" * (3 << 20))  # in shared memory (above the inline threshold)

    # The node's status call carries each component's statistics as its typed class.
    st = ray._api._call("status")
    sched, actors, objects, control = st["scheduler"], st["actors"], st["object_store"], st["control"]
    assert isinstance(sched, ray.SchedulerStatistics) and sched.finished >= 10
    assert sched.queued == sched.waiting + sched.ready and set(sched.used) == set(sched.total)
    assert isinstance(actors, ray.ActorManagerStatistics)
    assert actors.alive >= 1 and actors.created >= actors.alive and actors.processes >= 1
    assert isinstance(objects, ray.DirectoryStatistics) and objects.created >= 10
    assert isinstance(control, ray.ControlStatistics) and control.backend == "gcs"
    assert control.lineage_live_tasks is not None and control.gcs_client is not None
    assert control.gcs_client.writes > 0
    assert isinstance(st["store"], store.StoreStatistics)
    assert st["store"].count >= 1 and st["store"].used >= 3 << 20
    # `status_plain` (what the CLI asks for) is the same answer in plain data: its
    # reader imports none of the classes (their fields and properties by name).
    plain = ray._api._call("status_plain")
    assert not [op for op, _arg, _pos in pickletools.genops(pickle.dumps(plain))
                if "GLOBAL" in op.name]
    for key, typed in st.items():
        if attrs.has(type(typed)):
            assert set(plain[key]) >= {f.name for f in attrs.fields(type(typed))}, key
    assert plain["scheduler"]["queued"] == plain["scheduler"]["waiting"] + plain["scheduler"]["ready"]
    assert isinstance(plain["control"]["gcs_client"]["writes"], int)
    assert plain["store"]["capacity"] == st["store"].capacity

    # `actorcore status` (another process) shows them ...
    env = _env()
    env["ACTORCORE_TOKEN"] = (Path(cluster["session_dir"]) / "token").read_text().strip()

    def cli(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "actorcore", "status", "--address",
                            cluster["address"], *args], env=env, capture_output=True,
                           text=True, timeout=HANG_GUARD)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    text = cli()
    assert re.search(r"^tasks: \d+ running, \d+ queued .*, (\d+) finished", text, re.M), text
    finished = int(re.search(r", (\d+) finished", text).group(1))
    assert finished >= 10, text
    assert re.search(r"^actors: [1-9]\d* alive, .* created", text, re.M), text
    assert re.search(r"^objects: \d+ known \(.*; [1-9]\d+ created", text, re.M), text
    assert re.search(r"^object store: \d+\.\d MiB of \d+\.\d [MG]iB shared memory, "
                     r"[1-9]\d* objects?", text, re.M), text
    assert re.search(r"^lineage: \d+ tasks? recorded, \d+ with live results", text, re.M), text
    assert re.search(r"^gcs: tcp:\S+, [1-9]\d* writes?", text, re.M), text
    # ... and `--json` stays plain JSON: the same figures as objects, under the same keys.
    js = json.loads(cli("--json"))
    assert js["scheduler"]["finished"] >= 10 and js["scheduler"]["total"]["CPU"] == 2
    assert js["actors"]["alive"] >= 1 and js["object_store"]["created"] >= 10
    assert js["store"]["used"] >= 3 << 20 and js["store"]["capacity"] > 0
    assert js["control"]["backend"] == "gcs" and js["control"]["gcs_client"]["writes"] > 0
    assert isinstance(js["control"]["lineage_live_tasks"], int)
    # The cluster keeps serving.
    assert ray.get(tally.add.remote(2)) == 3 and ray.get(big) == b"x" * (3 << 20)
    ray.kill(tally)


def test_status_reads_the_store_again_after_it_restarts(cluster):
    before = tree_entry(ray.tree(), "object_manager")["restarts"]
    assert "crashed" in faults.crash("object_manager")
    deadline = time.monotonic() + 10
    while tree_entry(ray.tree(), "object_manager")["restarts"] != before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    st = ray._api._call("status")
    assert "store_error" not in st, st["store_error"]
    assert isinstance(st["store"], store.StoreStatistics) and st["store"].capacity > 0
    assert ray.get(inc.remote(1), timeout=30) == 2


def test_init_address_errors(tmpdir):
    code = (
        "import actorcore as ray\n"
        "try:\n"
        "    ray.init(address='auto')\n"
        "except ConnectionError as err:\n"
        "    print('ERR', err)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmpdir), capture_output=True,
                       text=True, timeout=HANG_GUARD)
    assert "no running actorcore cluster" in r.stdout, r.stderr


REPLICATED = """
import json
import shutil
import actorcore as ray
from actorcore.testing import faults
ray.init(num_cpus=1, gcs_shards=2, gcs_replicas=2, log_to_driver=False)
@ray.remote
def f(x):
    return x + 1
assert ray.get([f.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]
def walk(s):
    yield s
    for c in s.get("children", []):
        yield from walk(c)
snap = ray.tree()
replicas = [s["pid"] for s in walk(snap) if s["kind"] == "gcs_replica"]
faults.crash("gcs/shard_0/replica_0")
assert ray.get([f.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]
import time
deadline = time.monotonic() + 30
while True:
    after = [s for s in walk(ray.tree()) if s["kind"] == "gcs_replica"]
    if sum(s["restarts"] for s in after) >= 1 and all(s["state"] == "running" for s in after):
        break
    assert time.monotonic() < deadline, after
    time.sleep(0.05)
assert ray.get([f.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]
pids = replicas + [s["pid"] for s in after] + [ray.nodes()[0]["pid"]]
print("PIDS", json.dumps(pids, separators=(",", ":")), json.dumps([s["restarts"] for s in after], separators=(",", ":")))
ray.shutdown()
"""


def test_replicated_gcs_survives_a_replica_crash_and_cleans_up(tmpdir):
    out = subprocess.run([sys.executable, "-c", REPLICATED], env=_env(tmpdir),
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("PIDS"))
    pids = json.loads(line.split()[1])
    restarts = json.loads(line.split()[2])
    assert len(set(pids)) >= 5 and sum(restarts) >= 1
    assert _wait_dead(pids) == []


REAP = """
import time
import actorcore as ray
ray.init(num_cpus=1, log_to_driver=False)
@ray.remote(num_cpus=0)
def sleeper(i):
    time.sleep(1.0)  # needs no CPU: several run at once, each in its own worker
    return i
def workers():
    node = ray.tree()["children"][0]
    pool = [c for c in node["children"] if c["name"] == "worker_pool"][0]
    return [w for w in pool["children"] if w["kind"] == "worker" and w["state"] == "running"]
assert ray.get([sleeper.remote(i) for i in range(4)], timeout=60) == [0, 1, 2, 3]
peak = len(workers())
deadline = time.monotonic() + 30
while len(workers()) > 1:
    assert time.monotonic() < deadline, workers()
    time.sleep(0.1)
assert ray.get(sleeper.remote(5), timeout=30) == 5
print("PEAK", peak, "AFTER", len(workers()))
"""


@pytest.mark.slow  # (seconds of waiting; run with -m slow)
def test_extra_workers_are_let_go_when_idle(tmpdir):
    env = _env(tmpdir)
    env["ACTORCORE_IDLE_WORKER_TIMEOUT"] = "0.5"
    out = subprocess.run([sys.executable, "-c", REAP], env=env, capture_output=True,
                         text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("PEAK"))
    assert int(line.split()[1]) > 1 and int(line.split()[3]) == 1
