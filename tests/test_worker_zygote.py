"""Workers forked from the node's zygote (``node.worker_pool._zygote``), on real
clusters: they are what a spawned worker is (output, environment, exit codes,
runtime_env, death with the node), and the zygote's own death or breakage costs
nothing but speed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.testing import faults

from .cluster_support import HANG_GUARD, until

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.usefixtures("cluster"),  # tests/conftest.py
    pytest.mark.skipif(os.environ.get("ACTORCORE_WORKER_ZYGOTE", "1").strip() == "0",
                       reason="ACTORCORE_WORKER_ZYGOTE=0: workers are spawned"),
]


@ray.remote
class Probe:
    """Says what its process is."""

    def info(self, out: str = "") -> dict:
        if out:
            print(f"{out}-out", flush=True)
            print(f"{out}-err", file=sys.stderr, flush=True)
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        with open("/proc/self/comm") as f:
            comm = f.read().strip()
        return {"pid": os.getpid(), "ppid": os.getppid(), "comm": comm,
                "cmdline": [a.decode() for a in cmdline], "fds": fds, "cwd": os.getcwd(),
                "env": dict(os.environ), "sid": os.getsid(0)}

    def exit(self, code: int) -> None:
        os._exit(code)


def _pool() -> dict:
    node = ray.tree()["children"][0]
    return next(c for c in node["children"] if c["name"] == "worker_pool")


def _zygote() -> dict:
    return next(c for c in _pool()["children"] if c["kind"] == "zygote")


def _ready_zygote() -> dict:
    return until(lambda: (z := _zygote())["state"] == "running" and z, "the zygote to be ready")


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_actors_are_forked_from_the_zygote_as_a_spawned_worker_would_be(cluster):
    z = _ready_zygote()
    assert z["threads_at_fork"] == 1  # it forks a single-threaded process
    zygote_sockets = _socket_inodes(z["pid"])
    a = Probe.remote()
    info = ray.get(a.info.remote("forked-hello"), timeout=60)
    assert info["ppid"] == z["pid"], info
    assert _zygote()["forked"] > z["forked"]
    # Recognisable: its name, and the zygote's command line it kept.
    assert info["comm"].startswith("ac_worker_"), info["comm"]
    assert "actorcore.worker._zygote" in info["cmdline"], info["cmdline"]
    # The environment a spawned worker has: the session, no token left in it.
    env = info["env"]
    assert env["ACTORCORE_SESSION_DIR"] == cluster["session_dir"]
    assert env["PYTHONUNBUFFERED"] == "1" and "ACTORCORE_TOKEN" not in env
    # A session of its own; nothing of the zygote's: its socket to the node, its
    # signal pipe. stdin is /dev/null, stdout and stderr pipes.
    assert info["sid"] == info["pid"]
    assert not zygote_sockets & set(info["fds"].values()), (zygote_sockets, info["fds"])
    assert info["fds"][0] == "/dev/null"
    assert info["fds"][1].startswith("pipe:") and info["fds"][2].startswith("pipe:")
    # Its output reached the node through the pipes it was given: in its log files.
    index = info["comm"].removeprefix("ac_worker_")
    logs = Path(cluster["session_dir"], "logs")
    stem = logs / f"worker-{index}-{info['pid']}"
    until(lambda: "forked-hello-out" in Path(f"{stem}.out").read_text()
          and "forked-hello-err" in Path(f"{stem}.err").read_text(), "its output in its log files")
    ray.kill(a)


def test_exit_codes_of_forked_workers_are_reported_as_before():
    _ready_zygote()
    a = Probe.remote()
    info = ray.get(a.info.remote(), timeout=60)
    assert info["ppid"] == _zygote()["pid"]
    with pytest.raises(exc.ActorDiedError, match=f"pid {info['pid']}.*exit code 3"):
        ray.get(a.exit.remote(3), timeout=60)
    b = Probe.remote()
    pid = ray.get(b.info.remote(), timeout=60)["pid"]
    pending = b.info.remote()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exc.ActorDiedError, match=f"pid {pid}.*signal 9"):
        ray.get(pending, timeout=60)
        ray.get(b.info.remote(), timeout=60)


@ray.remote(max_retries=0)
def exit_task(code: int) -> None:
    os._exit(code)


@ray.remote
def whoami() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def test_task_worker_death_is_reported_as_before():
    # A task worker's death is known first by its link (as for a spawned one).
    with pytest.raises(exc.RayError, match=r"task exit_task \(pid \d+\) died"):
        ray.get(exit_task.remote(7), timeout=60)
    assert ray.get(whoami.remote(), timeout=60)


def test_zygote_sigkill_restarts_it_and_starts_never_wait_for_it():
    z = _ready_zygote()
    old = Probe.remote()
    old_info = ray.get(old.info.remote(), timeout=60)
    assert old_info["ppid"] == z["pid"]
    assert "killed zygote" in faults.crash("worker_pool/zygote")
    # Down or restarting: actors and tasks start anyway (spawned until it is back).
    during = Probe.remote()
    assert ray.get(during.info.remote(), timeout=60)["pid"] > 0
    assert ray.get([whoami.remote() for _ in range(4)], timeout=60)
    back = until(lambda: (n := _zygote())["state"] == "running" and n["pid"] != z["pid"] and n,
                 "the zygote to restart")
    assert back["restarts"] == z["restarts"] + 1
    # The old zygote's child lives on (an orphan now) and serves.
    assert ray.get(old.info.remote(), timeout=60)["pid"] == old_info["pid"]
    after = Probe.remote()
    assert ray.get(after.info.remote(), timeout=60)["ppid"] == back["pid"]
    # The orphan's end: seen at once; its code went to init with its parent gone.
    pending = old.info.remote()
    os.kill(old_info["pid"], signal.SIGKILL)
    with pytest.raises(exc.ActorDiedError, match="exit status unknown"):
        # The call sent just before the kill may have been answered first (a call
        # leaves from the caller's thread at once): then the next one sees the death.
        ray.get(pending, timeout=60)
        ray.get(old.info.remote(), timeout=60)
    for h in (during, after):
        ray.kill(h)


def test_a_stuck_zygote_is_replaced_after_one_late_start(cluster):
    z = _ready_zygote()
    os.kill(z["pid"], signal.SIGSTOP)  # alive, holding its socket, answering nothing
    try:
        a = Probe.remote()
        info = ray.get(a.info.remote(), timeout=60)  # spawned once the fork timed out
        assert info["ppid"] != z["pid"]
        back = until(lambda: (n := _zygote())["state"] == "running" and n["pid"] != z["pid"] and n,
                     "the zygote to be replaced")
        log = Path(cluster["session_dir"], "logs", "node.log").read_text()
        assert "no answer within" in log, log[-2000:]
        b = Probe.remote()
        assert ray.get(b.info.remote(), timeout=60)["ppid"] == back["pid"]
        for h in (a, b):
            ray.kill(h)
    finally:
        try:
            os.kill(z["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_runtime_env_worker_is_forked_and_gets_its_env(tmp_path):
    z = _ready_zygote()
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "zyg_mod.py").write_text("VALUE = 42\n")

    @ray.remote
    def in_env():
        import zyg_mod

        return zyg_mod.VALUE, os.environ.get("ZYG_VAR"), os.getcwd(), os.getppid()

    env = {"env_vars": {"ZYG_VAR": "set"}, "working_dir": str(wd)}
    value, var, cwd, _ppid = ray.get(in_env.options(runtime_env=env).remote(), timeout=60)
    assert (value, var) == (42, "set") and "runtime_resources" in cwd
    a = Probe.options(runtime_env=env).remote()
    info = ray.get(a.info.remote(), timeout=60)
    assert info["ppid"] == z["pid"] and info["env"]["ZYG_VAR"] == "set"
    assert "runtime_resources" in info["cwd"]
    ray.kill(a)
    # The zygote itself never ran any of it: the next worker starts clean.
    b = Probe.remote()
    info = ray.get(b.info.remote(), timeout=60)
    assert "ZYG_VAR" not in info["env"] and "runtime_resources" not in info["cwd"]
    ray.kill(b)


# ------------------------------------------------------------- own clusters


def _env() -> dict[str, str]:
    """A driver's environment (its sessions beside this process's)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _env_with_site(tmpdir: str | Path, script: str) -> dict[str, str]:
    """``_env()`` with ``script`` as the ``sitecustomize`` of every process it starts."""
    site = Path(tmpdir) / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(script)
    env = _env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    return env


# A sitecustomize's start: ``argv``, the process's command line as the kernel has it.
_SITE_ARGV = """
import os
try:
    argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
except OSError:
    argv = []
"""

BROKEN_ZYGOTE_SITE = _SITE_ARGV + """
if b"actorcore.worker._zygote" in argv:
    os._exit(3)  # only the zygote cannot start
"""

BROKEN_ZYGOTE = """
import os, time
from pathlib import Path
import actorcore as ray
info = ray.init(num_cpus=1, log_to_driver=False)
def zygote():
    node = ray.tree()["children"][0]
    pool = next(c for c in node["children"] if c["name"] == "worker_pool")
    return next(c for c in pool["children"] if c["kind"] == "zygote")
@ray.remote
def f(x):
    return x + 1
@ray.remote
class A:
    def pid(self):
        return os.getpid(), os.getppid()
log = Path(info["session_dir"]) / "logs" / "node.log"
deadline = time.monotonic() + 60
while "the zygote died before it was ready" not in log.read_text():
    assert time.monotonic() < deadline, log.read_text()
    time.sleep(0.05)
a = A.remote()
print("RESULT", ray.get([f.remote(i) for i in range(3)], timeout=60), ray.get(a.pid.remote(), timeout=60)[0] > 0)
z = zygote()
print("ZYGOTE", z["state"], z["forked"], z["spawned"] > 0, z["last_error"])
ray.shutdown()
"""


def test_a_zygote_that_cannot_start_costs_nothing_but_speed(tmpdir):
    env = _env_with_site(tmpdir, BROKEN_ZYGOTE_SITE)
    # A zygote forked from the node would not run the broken site file: spawned.
    env["ACTORCORE_WORKER_ZYGOTE_AT_START"] = "0"
    out = subprocess.run([sys.executable, "-c", BROKEN_ZYGOTE], env=env,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RESULT [1, 2, 3] True" in out.stdout, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ZYGOTE"))
    state, forked, spawned = line.split()[1:4]
    assert state in ("restarting", "starting") and forked == "0" and spawned == "True", line
    assert "exit code 3" in line, line


FIRST_TASK = """
import os
import actorcore as ray
ray.init(num_cpus=2, log_to_driver=False)
@ray.remote
def where():
    with open("/proc/self/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    return os.getpid(), ppid
pid, ppid = ray.get(where.remote(), timeout=60)
node = ray.tree()["children"][0]
pool = next(c for c in node["children"] if c["name"] == "worker_pool")
z = next(c for c in pool["children"] if c["kind"] == "zygote")
with open(f"/proc/{z['pid']}/stat") as f:
    zygote_ppid = int(f.read().rsplit(")", 1)[1].split()[1])
with open(f"/proc/{z['pid']}/cmdline", "rb") as f:
    cmdline = f.read()
print("NODE", node["pid"], "ZYGOTE", z["pid"], zygote_ppid, z["forked_at_start"], z["restarts"],
      z["spawned"], z["waited"], "TASK", ppid, b"actorcore.worker._zygote" in cmdline,
      b"actorcore.node" in cmdline, z["waited_ready"], flush=True)
ray.shutdown()
"""


def test_the_first_zygote_is_forked_at_the_node_start_and_forks_the_first_worker():
    # The node forks its first zygote before its own imports (node.__main__); the
    # pool's first workers wait for it rather than being spawned beside it.
    out = subprocess.run([sys.executable, "-c", FIRST_TASK], env=_env(),
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("NODE")).split()
    node, zygote, zygote_ppid = int(line[1]), int(line[3]), int(line[4])
    assert zygote_ppid == node, line
    # Forked at the start, never restarted, no worker spawned. (Whether the pool's
    # first starts had to wait for it, ``waited``, depends on the machine.)
    assert line[5:8] == ["True", "0", "0"], line
    assert int(line[10]) == zygote, line  # the task ran in a worker the zygote forked
    # Its command line is a zygote's, not the node's it was forked from.
    assert line[11:13] == ["True", "False"], line


def test_worker_starts_wait_for_a_starting_zygote_instead_of_spawning():
    # The zygote spawned after the node's start (as before the fork at the start):
    # the pool's first workers wait for it rather than being spawned beside it.
    env = _env()
    env["ACTORCORE_WORKER_ZYGOTE_AT_START"] = "0"
    out = subprocess.run([sys.executable, "-c", FIRST_TASK], env=env,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("NODE")).split()
    node, zygote, zygote_ppid = int(line[1]), int(line[3]), int(line[4])
    assert zygote_ppid == node and line[5] == "False" and line[6] == "0", line
    waited, waited_ready, spawned = int(line[8]), int(line[13]), int(line[7])
    assert waited >= 1, line
    # Each start that waited got a fork, unless the zygote took longer than
    # START_PATIENCE (a machine too loaded for it): then that start spawned.
    assert spawned == waited - waited_ready, line
    if spawned == 0:
        assert int(line[10]) == zygote, line
    assert line[11:13] == ["True", "False"], line


EARLY_ZYGOTE_DIES_SITE = _SITE_ARGV + """
if b"actorcore.node" in argv:
    # Whatever the node forks in Python dies at once: the zygote it forks at its start.
    os.register_at_fork(after_in_child=lambda: os._exit(3))
"""


def test_a_zygote_forked_at_the_node_start_that_dies_is_replaced_by_a_spawned_one(tmpdir):
    env = _env_with_site(tmpdir, EARLY_ZYGOTE_DIES_SITE)
    out = subprocess.run([sys.executable, "-c", FIRST_TASK], env=env,
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("NODE")).split()
    node, zygote, zygote_ppid = int(line[1]), int(line[3]), int(line[4])
    # The first task did not hang on the dead zygote: it ran (forked by the spawned
    # zygote if that was ready in time, else in a spawned worker).
    assert line[5] == "True" and int(line[6]) >= 1, line
    assert zygote_ppid == node and line[11:13] == ["True", "False"], line
    assert int(line[10]) in (zygote, node), line


NODE_DIES = """
import os, signal, sys, time
import actorcore as ray
seen = []
class Tee:
    def __init__(self, real):
        self.real = real
    def write(self, s):
        seen.append(s)
        return self.real.write(s)
    def flush(self):
        self.real.flush()
sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
info = ray.init(num_cpus=1, log_to_driver=True)
def pool():
    node = ray.tree()["children"][0]
    return next(c for c in node["children"] if c["name"] == "worker_pool")
deadline = time.monotonic() + 60
while (z := next(c for c in pool()["children"] if c["kind"] == "zygote"))["state"] != "running":
    assert time.monotonic() < deadline
    time.sleep(0.05)
@ray.remote
class A:
    def hello(self):
        print("HELLO-FORKED-OUT")
        print("HELLO-FORKED-ERR", file=sys.stderr)
        return os.getpid(), os.getppid()
actors = [A.remote() for _ in range(2)]
pids = [ray.get(a.hello.remote(), timeout=60) for a in actors]
assert all(ppid == z["pid"] for _pid, ppid in pids), (pids, z)
while not ("HELLO-FORKED-OUT" in "".join(seen) and "HELLO-FORKED-ERR" in "".join(seen)):
    assert time.monotonic() < deadline, seen
    time.sleep(0.05)
procs = [z["pid"]] + [w["pid"] for w in pool()["children"] if w["kind"] == "worker"]
print("PROCS", " ".join(map(str, procs)), flush=True)
os.kill(ray.tree()["children"][0]["pid"], signal.SIGKILL)
def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
deadline = time.monotonic() + 60
while not all(gone(p) for p in procs):
    assert time.monotonic() < deadline, [p for p in procs if not gone(p)]
    time.sleep(0.05)
print("ALL GONE", flush=True)
os._exit(0)
"""


def test_node_sigkill_takes_its_zygote_and_forked_workers_with_it():
    out = subprocess.run([sys.executable, "-c", NODE_DIES], env=_env(),
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0 and "ALL GONE" in out.stdout, out.stdout + out.stderr
    # Forked workers' output went to the driver with the usual prefix.
    assert any(ln.startswith("(pid=") and ln.endswith("HELLO-FORKED-OUT")
               for ln in out.stdout.splitlines()), out.stdout
    assert any(ln.startswith("(pid=") and ln.endswith("HELLO-FORKED-ERR")
               for ln in out.stderr.splitlines()), out.stderr


def test_remove_node_kills_the_workers_a_dead_zygote_left_behind():
    # A node of its own (no driver): its pool's workers, one forked and orphaned.
    from actorcore.protocol._wire import AdminCall
    from actorcore.testing import Cluster
    from actorcore.testing._cluster import _descendants, _session_processes

    from .cluster_support import alive, node_call

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        node = c.head_node

        def pool() -> dict:
            tree = node_call(c, node, AdminCall("local_tree"))
            return next(ch for ch in tree["children"] if ch["name"] == "worker_pool")

        def running(kind: str) -> list[dict]:
            return [ch for ch in pool()["children"] if ch["kind"] == kind and ch["state"] == "running"]

        z = until(lambda: running("zygote"), "the zygote to be ready", timeout=60)[0]
        spawned = until(lambda: running("worker"), "the pool's worker", timeout=60)[0]
        os.kill(spawned["pid"], signal.SIGKILL)  # its replacement is forked
        forked = until(lambda: [w for w in running("worker") if w["pid"] != spawned["pid"]],
                       "the pool to refill", timeout=60)[0]
        with open(f"/proc/{forked['pid']}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == z["pid"]
        os.kill(z["pid"], signal.SIGKILL)
        until(lambda: not alive(z["pid"]), "the zygote to die")
        # An orphan now, no longer below the node: found by its session.
        assert alive(forked["pid"])
        assert forked["pid"] not in _descendants(node.pid)
        assert forked["pid"] in _session_processes(node.session_dir)
        c.remove_node(node)
        until(lambda: not alive(forked["pid"]), "the orphaned worker to be killed", timeout=120)
    finally:
        c.shutdown()
