"""The cluster as a whole: tree, fault injection, CLI, logs, cleanup, init errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import actorcore as ray
from actorcore.kernel import check_snapshot
from actorcore.testing import faults

ROOT = Path(__file__).resolve().parent.parent


def _env(tmpdir: str | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    if tmpdir is not None:
        env["ACTORCORE_TMPDIR"] = tmpdir
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pids, timeout=15.0) -> list[int]:
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


def _find(snap, name):
    if snap["name"] == name:
        return snap
    for child in snap.get("children", []):
        found = _find(child, name)
        if found is not None:
            return found
    return None


def test_tree_shape(cluster):
    ray.get([inc.remote(i) for i in range(4)])
    snap = ray.tree()
    check_snapshot(snap)
    node = _find(snap, "node")
    names = [c["name"] for c in node["children"]]
    assert names == ["rpc_server", "gcs", "global_scheduler", "local_scheduler",
                     "object_manager", "worker_pool"]
    assert node["node_id"] == cluster["node_id"]
    workers = _find(snap, "worker_pool")["children"]
    assert len(workers) >= 2
    for w in workers:
        assert w["kind"] == "worker" and isinstance(w["pid"], int) and _alive(w["pid"])
    assert _find(snap, "replica_0")["kind"] == "gcs_replica"


@pytest.mark.parametrize(
    "component",
    ["local_scheduler", "global_scheduler", "object_manager", "worker_pool", "rpc_server"],
)
def test_crash_component_restarts_and_cluster_keeps_serving(cluster, component):
    before = _find(ray.tree(), component)["restarts"]
    pending = [inc.remote(i) for i in range(50)]
    assert "crashed" in faults.crash(component)
    deadline = time.monotonic() + 10
    while _find(ray.tree(), component)["restarts"] != before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert ray.get(pending, timeout=30) == [i + 1 for i in range(50)]
    assert ray.get(inc.remote(1), timeout=30) == 2


def test_crash_worker_and_unknown_component(cluster):
    workers = _find(ray.tree(), "worker_pool")["children"]
    name, pid = workers[0]["name"], workers[0]["pid"]
    assert "killed" in faults.crash(f"worker_pool/{name}")
    assert _wait_dead([pid]) == []
    assert ray.get([inc.remote(i) for i in range(10)], timeout=30) == list(range(1, 11))
    with pytest.raises(ValueError, match="no_such_thing"):
        faults.crash("no_such_thing")


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
                         text=True, timeout=60)
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
        env=_env(tmpdir), capture_output=True, text=True, timeout=90,
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
                           capture_output=True, text=True, timeout=60)
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
        assert _find(snap, "local_scheduler") is not None
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
                           text=True, timeout=60)
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
                           text=True, timeout=60)
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


def test_init_address_errors(tmpdir):
    code = (
        "import actorcore as ray\n"
        "try:\n"
        "    ray.init(address='auto')\n"
        "except ConnectionError as err:\n"
        "    print('ERR', err)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmpdir), capture_output=True,
                       text=True, timeout=60)
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
                         capture_output=True, text=True, timeout=120)
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


def test_extra_workers_are_let_go_when_idle(tmpdir):
    env = _env(tmpdir)
    env["ACTORCORE_IDLE_WORKER_TIMEOUT"] = "0.5"
    out = subprocess.run([sys.executable, "-c", REAP], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("PEAK"))
    assert int(line.split()[1]) > 1 and int(line.split()[3]) == 1
