"""Component crashes lose nothing: every path of the tree can crash, and afterwards
old objects read, old (restartable) actors answer, and new tasks run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

import actorcore as ray
import store
import transport
from actorcore import exceptions as exc
from actorcore.core_worker import _worker_state
from actorcore.testing import faults

from .cluster_support import HANG_GUARD, tree_entry
from .cluster_support import until as _until

#: The restarted store keeps unclaimed objects this long (30 s by default): the
#: tests below read objects only after it is over, so what they read was claimed.
GRACE = 1.0
MB = 1 << 20


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A cluster of its own: a short store recovery grace, and a store small enough
    (64 MiB) that some objects are spilled."""
    old = os.environ.get("ACTORCORE_STORE_RECOVERY_GRACE")
    os.environ["ACTORCORE_STORE_RECOVERY_GRACE"] = str(GRACE)
    try:
        info = ray.init(num_cpus=2, object_store_memory=64 * MB, log_to_driver=False)
    finally:
        if old is None:
            del os.environ["ACTORCORE_STORE_RECOVERY_GRACE"]
        else:
            os.environ["ACTORCORE_STORE_RECOVERY_GRACE"] = old
    yield info
    ray.shutdown()


pytestmark = pytest.mark.usefixtures("cluster")


@ray.remote
def inc(x):
    return x + 1


@ray.remote
def make(n, fill=1):
    return np.full(n, fill, np.uint8)


@ray.remote
def total(a):
    return int(np.asarray(a).sum())


@ray.remote
def slow():
    time.sleep(300)


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()


@ray.remote
class Holder:
    """An actor holding objects of its own: a large put and a small one."""

    def __init__(self):
        self.large = ray.put(np.full(2 * MB, 3, np.uint8))
        self.small = ray.put("held")

    def read(self):
        return int(ray.get(self.large).sum()), ray.get(self.small)


def _walk(snap: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    path = f"{prefix}/{snap['name']}" if prefix else snap["name"]
    yield path, snap
    for child in snap.get("children", []):
        yield from _walk(child, path)


def _restarts(name: str) -> int:
    entry = tree_entry(ray.tree(), name)
    assert entry is not None, name
    return entry["restarts"]


def _back(name: str, before: int) -> dict:
    """Wait until component ``name`` restarted (and, for the store, its grace is over)."""

    def done() -> dict | None:
        entry = tree_entry(ray.tree(), name)
        if entry is None or entry["restarts"] <= before or entry["state"] != "running":
            return None
        return None if entry.get("recovering") else entry

    return _until(done, f"{name} to restart")


def _worker_pids() -> set[int]:
    pool = tree_entry(ray.tree(), "worker_pool")
    assert pool is not None
    return {w["pid"] for w in pool["children"] if w["kind"] == "worker"}


# -------------------------------------------------------------- object_manager


def test_object_manager_crash_keeps_every_object():
    small = ray.put({"small": [1, 2, 3]})
    large = ray.put(np.arange(MB // 4, dtype=np.int64))  # 2 MiB in shared memory
    chunks = [ray.put(np.full(20 * MB, i, np.uint8)) for i in range(4)]  # 80 MiB into 64
    returned = make.remote(3 * MB, 5)
    holder = Holder.remote()
    assert ray.get(holder.read.remote(), timeout=60) == (6 * MB, "held")
    assert ray.get(returned, timeout=60).nbytes == 3 * MB
    view = ray.get(large)  # a zero-copy array held over the crash
    assert tree_entry(ray.tree(), "object_manager")["spilled"] >= 1

    before = _restarts("object_manager")
    assert "crashed" in faults.crash("object_manager")
    _back("object_manager", before)  # restarted, and its grace period is over

    started = time.monotonic()
    assert ray.get(small, timeout=5) == {"small": [1, 2, 3]}
    np.testing.assert_array_equal(ray.get(large, timeout=5), np.arange(MB // 4, dtype=np.int64))
    for i, ref in enumerate(chunks):  # in memory or spilled before the crash
        value = ray.get(ref, timeout=5)
        assert value.nbytes == 20 * MB and int(value[0]) == int(value[-1]) == i
        del value
    assert int(ray.get(returned, timeout=5)[-1]) == 5
    # Old refs as task arguments; an actor's own objects.
    assert ray.get(total.remote(large), timeout=30) == sum(range(MB // 4))
    assert ray.get(total.remote(chunks[3]), timeout=30) == 3 * 20 * MB
    assert ray.get(holder.read.remote(), timeout=30) == (6 * MB, "held")
    assert time.monotonic() - started < 30
    # The view was claimed too: with its ref gone, its memory is not reused under it.
    del large
    fillers = [ray.put(np.full(8 * MB, 7, np.uint8)) for _ in range(4)]
    np.testing.assert_array_equal(view, np.arange(MB // 4, dtype=np.int64))
    assert ray.get(total.remote(fillers[0]), timeout=30) == 7 * 8 * MB
    assert ray.get(inc.remote(1), timeout=30) == 2


async def _delete_from_store(address: str, token: bytes, object_id: bytes) -> bool:
    client = await store.StoreClient.connect(address, token)
    try:
        return await client.delete(object_id)
    finally:
        await client.aclose()


def test_an_object_gone_from_the_store_fails_at_once(cluster):
    # No retries: it cannot be rebuilt from its lineage (that path is
    # tests/test_lineage_objects.py), so its loss is the error.
    ref = make.options(max_retries=0).remote(2 * MB)
    ready, _ = ray.wait([ref], timeout=60)
    assert ready
    # Lost behind the node's back (as with an arena that did not survive).
    session = Path(cluster["session_dir"])
    token = (session / "token").read_text().strip()
    address = f"unix:{session / 'sockets' / 'store.sock'}"
    assert trio.run(_delete_from_store, address, bytes.fromhex(token), ref.binary())
    started = time.monotonic()
    with pytest.raises(exc.ObjectLostError, match=ref.hex()):
        ray.get(ref, timeout=30)
    with pytest.raises(exc.ObjectLostError, match=ref.hex()):
        ray.get(total.remote(ref), timeout=30)
    assert time.monotonic() - started < 10  # typed, and at once: no 60 s wait
    assert ray.get(inc.remote(1), timeout=30) == 2


# ------------------------------------------------------------------ rpc_server


def test_rpc_server_crash_keeps_links_actors_and_objects():
    owned = Counter.remote()
    shared = Counter.options(placement="shared").remote()
    detached = Counter.options(name="keeper", lifetime="detached").remote()
    big = ray.put(np.ones(MB, np.uint8))
    assert ray.get([owned.add.remote(), shared.add.remote(), detached.add.remote()],
                   timeout=60) == [1, 1, 1]
    pids = _worker_pids()
    before = _restarts("rpc_server")
    assert "crashed" in faults.crash("rpc_server")
    _back("rpc_server", before)
    # Nothing died: the same actors (state kept), the same worker processes.
    assert ray.get([owned.add.remote(), shared.add.remote(), detached.add.remote()],
                   timeout=30) == [2, 2, 2]
    assert ray.get(ray.get_actor("keeper").add.remote(), timeout=30) == 3
    assert int(ray.get(big, timeout=5).sum()) == MB
    assert ray.get(inc.remote(1), timeout=30) == 2
    assert pids <= _worker_pids()
    ray.kill(detached)


# ------------------------------------------------- gcs_client, actor_manager


def _gcs_read(cluster: dict[str, Any], table: str, keys: list[str]) -> list[Any]:
    """Read ``keys`` of a GCS ``table`` with a client of the test's own."""
    import gcs
    from actorcore.api import _api

    token = _api._state["head"].token

    async def read() -> list[Any]:
        async with gcs.open_client(cluster["gcs_address"], token, timeout=10) as client:
            return [await getattr(client, table).get(k) for k in keys]

    return trio.run(read)


def test_tree_shows_gcs_client_and_actor_manager():
    node = tree_entry(ray.tree(), "node")
    assert node is not None
    names = [c["name"] for c in node["children"]]
    assert {"gcs_client", "store_link", "object_directory", "actor_manager"} <= set(names)
    link = tree_entry(ray.tree(), "gcs_client")
    assert link is not None and link["kind"] == "gcs_client" and link["state"] == "running"
    assert link["backend"] == "gcs" and link["linked"] is True, link
    manager = tree_entry(ray.tree(), "actor_manager")
    assert manager is not None and manager["kind"] == "actor_manager", manager
    assert manager["state"] == "running" and "alive" in manager, manager
    cli = subprocess.run([sys.executable, "-m", "actorcore", "tree"], capture_output=True,
                         text=True, timeout=HANG_GUARD, check=True)
    for name in ("gcs_client", "store_link", "object_directory", "actor_manager"):
        assert name in cli.stdout, cli.stdout


def test_gcs_client_crash_loses_no_lineage_function_or_task(cluster):
    # Tasks in flight while the node's GCS link crashes: every result is exact, a
    # function first exported while the link is down runs, and the lineage of every
    # task reaches the GCS (the flusher carries on from the same buffer).
    _until(lambda: tree_entry(ray.tree(), "gcs_client")["lineage_pending"] == 0,
           "earlier lineage to be written")
    before = tree_entry(ray.tree(), "gcs_client")
    refs = [inc.remote(i) for i in range(400)]
    assert "crashed" in faults.crash("gcs_client")
    # A named actor claims its name in the GCS: through the new link, at once (the
    # closing one would have held the creation for the client's 60 s timeout).
    start = time.monotonic()
    named = Counter.options(name="during_gcs_client_restart").remote()
    assert ray.get(ray.get_actor("during_gcs_client_restart").add.remote(), timeout=30) == 1
    assert time.monotonic() - start < 10

    @ray.remote
    def born_during_the_restart(x):
        return x * 3

    more = [inc.remote(i) for i in range(400, 600)]
    tripled = born_during_the_restart.remote(7)
    assert ray.get(refs + more, timeout=60) == list(range(1, 601))
    assert ray.get(tripled, timeout=60) == 21
    after = _back("gcs_client", before["restarts"])
    assert after["linked"] is True
    done = _until(lambda: (lambda e: e if e["lineage_pending"] == 0 else None)(
        tree_entry(ray.tree(), "gcs_client")), "the lineage to be written")
    assert done["tasks_recorded"] - before["tasks_recorded"] >= 601
    entries = _gcs_read(cluster, "tasks", [r.task_id().hex() for r in refs + more + [tripled]])
    missing = [i for i, e in enumerate(entries) if e is None]
    assert not missing, f"{len(missing)} tasks have no lineage in the GCS: {missing[:10]}"
    assert ray.get(inc.remote(1), timeout=30) == 2
    ray.kill(named)


def test_actor_manager_crash_keeps_actors_calls_and_records(cluster):
    # Calls in flight on three kinds of actor while the actor manager crashes:
    # each answers every call, in order, and creation after the crash works; the
    # records of the actors reach the GCS actors table.
    actors = [Counter.remote(), Counter.options(placement="shared").remote(),
              Counter.options(name="am_named").remote()]
    assert ray.get([a.add.remote() for a in actors], timeout=60) == [1, 1, 1]
    before = _restarts("actor_manager")
    calls = [[a.add.remote() for _ in range(200)] for a in actors]
    assert "crashed" in faults.crash("actor_manager")
    later = [[a.add.remote() for _ in range(50)] for a in actors]
    fresh = Counter.remote()
    for first, second in zip(calls, later, strict=True):
        assert ray.get(first + second, timeout=60) == list(range(2, 252))
    assert ray.get(fresh.add.remote(), timeout=60) == 1
    assert ray.get(ray.get_actor("am_named").add.remote(), timeout=30) == 252
    _back("actor_manager", before)
    ids = [a._actor_id.hex() for a in [*actors, fresh]]
    _until(lambda: all(r is not None and r.get("state") == "alive"
                       for r in _gcs_read(cluster, "actors", ids)),
           "the actors' records in the GCS")
    assert tree_entry(ray.tree(), "actor_manager")["records_unwritten"] == 0
    assert ray.get(inc.remote(1), timeout=30) == 2
    for a in [*actors, fresh]:
        ray.kill(a)


def test_store_link_crash_keeps_refs_and_sends_later_releases():
    # Large objects put and returned while the node's store link crashes: every value
    # reads back exact (the node's refs survived), and once freed they leave the
    # store (releases asked for while the link's tasks were down still go out).
    _until(lambda: tree_entry(ray.tree(), "object_manager")["state"] == "running", "the store")
    base = tree_entry(ray.tree(), "object_manager")["count"]
    before = _restarts("store_link")
    puts = [ray.put(np.full(MB, i, np.uint8)) for i in range(6)]
    returned = [make.remote(MB, 10 + i) for i in range(6)]
    assert "crashed" in faults.crash("store_link")
    more = [ray.put(np.full(MB, 20 + i, np.uint8)) for i in range(6)]
    values = ray.get(puts + returned + more, timeout=60)
    expected = list(range(6)) + list(range(10, 16)) + list(range(20, 26))
    assert [(int(v[0]), int(v.sum())) for v in values] == [(f, f * MB) for f in expected]
    del values
    link = _back("store_link", before)
    assert link["connected"] is True
    assert tree_entry(ray.tree(), "object_manager")["count"] >= base + 18
    del puts, returned, more
    import gc

    gc.collect()
    _until(lambda: tree_entry(ray.tree(), "object_manager")["count"] <= base,
           "the freed objects to leave the store")
    assert tree_entry(ray.tree(), "store_link")["deferred_releases"] == 0
    assert ray.get(total.remote(ray.put(np.ones(MB, np.uint8))), timeout=30) == MB


def test_object_directory_crash_still_fails_lost_arguments_and_runs_the_rest():
    # A task waits on an argument nobody will ever produce while the directory's
    # watch crashes: it still fails with ObjectLostError, within seconds; tasks with
    # real arguments in flight meanwhile return exact results.
    before = _restarts("object_directory")
    ghost = ray.ObjectRef(b"\x17" * 20)  # made up: no owner, no producer
    doomed = inc.remote(ghost)
    _until(lambda: tree_entry(ray.tree(), "object_directory")["watched"] >= 1, "the watch")
    refs = [inc.remote(ray.put(i)) for i in range(100)]
    assert "crashed" in faults.crash("object_directory")
    start = time.monotonic()
    with pytest.raises(exc.ObjectLostError, match="can never become available"):
        ray.get(doomed, timeout=30)
    assert time.monotonic() - start < 10
    assert ray.get(refs, timeout=60) == list(range(1, 101))
    entry = _back("object_directory", before)
    assert entry["lost"] >= 1
    assert ray.get(inc.remote(1), timeout=30) == 2


def test_a_dropped_driver_link_is_not_the_drivers_exit():
    owned = Counter.remote()
    assert ray.get(owned.add.remote(), timeout=60) == 1
    core = _worker_state.core
    assert core is not None
    old = core.conn
    # The link drops under the driver (as a network fault would); the driver lives.
    trio.from_thread.run_sync(lambda: old._sock.shutdown(socket.SHUT_RDWR),
                              trio_token=core.trio_token)
    _until(lambda: core.conn is not old, "the driver to reconnect")
    assert ray.get(owned.add.remote(), timeout=30) == 2
    assert ray.get(inc.remote(1), timeout=30) == 2


@ray.remote(max_retries=1)
def pid_into(path: str) -> int:
    Path(path).write_text(str(os.getpid()))
    return os.getpid()


def test_a_result_pushed_to_its_owner_is_not_lost_with_its_worker(cluster, tmp_path):
    """A worker pushes a task's results straight to the driver that owns them and
    tells its node "done, pushed". While the push is not yet written (here: held
    back by a delay on the worker -> driver link), the node must not hear "done":
    a worker killed then would leave the driver waiting for ever for a result the
    node believes delivered. The node sees the worker die with the task still
    running, and runs it again."""
    from actorcore.session._admin import admin_call

    with faults.delay(5.0, a="worker", b="driver"):
        for attempt in range(20):
            flag = tmp_path / f"pid{attempt}"
            ref = pid_into.remote(str(flag))
            pid = int(_until(lambda f=flag: f.exists() and f.read_text(), "the task's pid"))
            # Let the function return (nothing outside its worker can see that: a
            # pushed result held back is exactly what shows no sign), then ask the
            # node: still running means it was not told "done" before the push left.
            time.sleep(0.5)
            if "running" in admin_call(cluster["address"], "task", ref.task_id().hex()):
                break  # pushed, and the push is held back: the node waits for it
            # A worker's first result for this driver goes through the node (it
            # dials the driver meanwhile): the next task on it pushes.
            assert ray.get(ref, timeout=30) == pid
        else:
            raise AssertionError("no result was pushed to the driver in 20 tasks")
        os.kill(pid, signal.SIGKILL)
    again = ray.get(ref, timeout=30)
    assert again != pid  # run again on another worker, and its result came


def test_the_nodes_driver_grace_covers_the_drivers_reconnect_window():
    # One constant on both ends: the node keeps a departed driver's state for as
    # long as the driver may still rejoin (its window, then its last dial's rejoin).
    from actorcore.core_worker import _driver
    from actorcore.node import _runtime
    from actorcore.protocol import _messages

    assert _driver.RECONNECT_WINDOW is _messages.RECONNECT_WINDOW
    assert _runtime.DRIVER_GRACE >= _driver.RECONNECT_WINDOW + _driver.REJOIN_TIMEOUT


@pytest.mark.slow  # (seconds of waiting; run with -m slow)
def test_a_driver_back_after_6_s_without_its_node_keeps_its_actors_and_objects():
    # The driver cannot reach its node for 6.5 s (past the 5 s the node once kept a
    # departed driver's state, within the driver's 10 s reconnect window): it
    # rejoins, and its actor and the objects it put are all still there.
    owned = Counter.remote()
    assert ray.get(owned.add.remote(), timeout=60) == 1
    small, large = ray.put(41), ray.put(np.ones(2 * MB, np.uint8))
    core = _worker_state.core
    assert core is not None
    old = core.conn
    rule = transport.faults.add(transport.faults.refuse(f"driver-{os.getpid()}", "node-*"))
    try:
        trio.from_thread.run_sync(lambda: old._sock.shutdown(socket.SHUT_RDWR),
                                  trio_token=core.trio_token)
        # Not a wait for an event: the outage's length is what is tested. The
        # driver dials all along and is refused.
        time.sleep(6.5)
        assert core.conn is old, "the driver rejoined through the refusal"
    finally:
        transport.faults.remove(rule)
    _until(lambda: core.conn is not old, "the driver to rejoin")
    assert ray.get(owned.add.remote(), timeout=30) == 2
    assert ray.get([inc.remote(small), total.remote(large)], timeout=30) == [42, 2 * MB]


_KILLED_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import actorcore as ray
    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote
    class Keeper:
        def ping(self):
            return "pong"

    d = Keeper.options(name="kd_detached", lifetime="detached").remote()
    t = Keeper.options(name="kd_owned").remote()
    assert ray.get([d.ping.remote(), t.ping.remote()]) == ["pong", "pong"]
    print("created", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_drivers_actors_die_but_not_its_detached_ones(cluster, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_DRIVER)
    token = (Path(cluster["session_dir"]) / "token").read_text().strip()
    out = subprocess.run([sys.executable, str(script), cluster["address"]], capture_output=True,
                         text=True, timeout=HANG_GUARD, env=dict(os.environ, ACTORCORE_TOKEN=token))
    assert out.returncode == -signal.SIGKILL and "created" in out.stdout, out.stderr
    started = time.monotonic()

    def owned_gone() -> bool:
        try:
            ray.get_actor("kd_owned")
        except ValueError:
            return True
        return False

    _until(owned_gone, "the killed driver's actor to die")
    assert time.monotonic() - started < 4  # its process is gone: no grace period
    keeper = ray.get_actor("kd_detached")
    assert ray.get(keeper.ping.remote(), timeout=30) == "pong"
    ray.kill(keeper)


# ------------------------------------------------------------- actor paths


def _path_of(pred: Any) -> str:
    """The tree path (below ``cluster/``) of the first entry ``pred`` accepts."""
    for path, snap in _walk(ray.tree()):
        if pred(snap):
            return path
    raise AssertionError("no such entry in the tree")


def _actor_path(handle: Any, under: str = "worker_pool") -> str:
    aid = handle._actor_id.hex()
    return _until(lambda: next((p for p, s in _walk(ray.tree())
                                if s.get("actor_id") == aid and s["state"] == "running"
                                and f"/{under}/" in p), None),
                  f"actor {aid} running")


def test_crash_actor_paths_apply_the_restart_policy():
    once = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    fragile = Counter.options(placement="shared", max_restarts=0).remote()
    neighbour = Counter.options(placement="shared").remote()
    sup = ray.supervisor("recovery_sup", max_restarts=5, max_seconds=30)
    supervised = Counter.options(supervisor=sup, name="rs_child", max_task_retries=-1).remote()
    assert ray.get([h.add.remote() for h in (once, fragile, neighbour, supervised)],
                   timeout=60) == [1, 1, 1, 1]

    # An actor's process (its worker path): restarted once, then it is dead.
    first = ray.get(once.pid.remote(), timeout=30)
    worker = _actor_path(once).rsplit("/", 1)[0]
    assert "killed" in faults.crash(worker)
    assert _until(lambda: ray.get(once.pid.remote(), timeout=60) != first, "a restart")
    assert "killed" in faults.crash(_actor_path(once))
    with pytest.raises(exc.ActorDiedError, match="max_restarts=1"):
        ray.get(once.add.remote(), timeout=60)

    # An actor in a shared process: only it fails; max_restarts=0, so it is dead.
    assert "crashed actor" in faults.crash(_actor_path(fragile))
    with pytest.raises(exc.ActorDiedError, match="crash was injected"):
        ray.get(fragile.add.remote(), timeout=60)
    assert ray.get(neighbour.add.remote(), timeout=30) == 2

    # An actor under a user supervisor, by either of its paths: re-created.
    for under in ("recovery_sup", "worker_pool"):
        pid = ray.get(supervised.pid.remote(), timeout=30)
        assert "killed" in faults.crash(_actor_path(supervised, under))
        assert _until(lambda p=pid: ray.get(supervised.pid.remote(), timeout=60) != p,
                      "the supervisor to re-create it")
    # The supervisor itself: restarted, and its actor with it.
    before = _restarts("recovery_sup")
    assert "crashed" in faults.crash(_path_of(lambda s: s["name"] == "recovery_sup"))
    _back("recovery_sup", before)
    assert ray.get(supervised.add.remote(), timeout=60) == 1  # a fresh incarnation

    # A running task's path: its process dies, the task is retried.
    running = slow.options(max_retries=1).remote()
    task = _until(lambda: next((p for p, s in _walk(ray.tree()) if s["name"] == "task:slow"),
                               None), "the task to run")
    assert "killed" in faults.crash(task)
    _until(lambda: any(s["name"] == "task:slow" and s["restarts"] == 1
                       for _p, s in _walk(ray.tree())), "the task to be retried")
    ray.cancel(running, force=True)

    def refused_below_a_live_worker() -> ValueError | None:
        # A worker the tree still showed may have exited since (the one killed
        # above): then choose again.
        task_worker = _path_of(lambda s: s["kind"] == "worker" and "tasks_done" in s)
        try:
            faults.crash(task_worker + "/task:nothing")
        except ValueError as error:
            return None if "no live worker" in str(error) else error
        raise AssertionError("crash of a task that does not run was accepted")

    refused = _until(refused_below_a_live_worker, "a live worker's refusal")
    assert "runs no 'task:nothing'" in str(refused)
    with pytest.raises(ValueError, match="no live worker named 'worker_999'"):
        faults.crash("worker_pool/worker_999")
    with pytest.raises(ValueError, match="no live actor 'nobody'"):
        faults.crash(_actor_path(neighbour).rsplit("/", 1)[0] + "/nobody")
    assert ray.get(inc.remote(1), timeout=30) == 2


# ----------------------------------------------------------------- the walk


def _identity(path: str, snap: dict) -> str:
    """What a tree entry is, across restarts that rename it (a replaced worker
    process has a new index; an actor keeps its id)."""
    if snap["kind"] == "actor":
        return f"{'host' if '/worker_pool/' in path else 'supervisor'} of {snap['actor_id']}"
    if snap["kind"] == "worker":
        actors = [c["actor_id"] for c in snap.get("children", []) if c.get("actor_id")]
        return f"process of {actors[0]}" if actors else "task worker"
    if snap["kind"] == "task":
        return snap["name"]
    return path


def test_every_tree_path_can_crash_and_nothing_is_lost():
    small = ray.put("small")
    big = ray.put(np.arange(MB // 8, dtype=np.int64))
    returned = make.remote(MB, 9)
    restartable = {
        "plain": Counter.options(max_restarts=-1, max_task_retries=-1).remote(),
        "shared": Counter.options(placement="shared", max_restarts=-1,
                                  max_task_retries=-1).remote(),
        "detached": Counter.options(name="walk_detached", lifetime="detached", max_restarts=-1,
                                    max_task_retries=-1).remote(),
    }
    sup = ray.supervisor("walk_sup", max_restarts=50, max_seconds=1)
    restartable["supervised"] = Counter.options(supervisor=sup, name="walk_child",
                                                max_task_retries=-1).remote()
    assert ray.get([h.add.remote() for h in restartable.values()], timeout=60) == [1] * 4
    # A task in the tree (no CPU: nothing of the checks below waits behind it).
    running = slow.options(max_retries=-1, num_cpus=0).remote()
    _until(lambda: tree_entry(ray.tree(), "task:slow"), "a running task in the tree")
    ours = {h._actor_id.hex() for h in restartable.values()}

    def counted(path: str, snap: dict) -> bool:
        # Every path of the tree, except what earlier tests of this module left.
        if snap["kind"] == "user_supervisor":
            return snap["name"] == "walk_sup"
        identity = _identity(path, snap)
        return not identity.startswith(("host of", "supervisor of", "process of")) or (
            identity.split(" of ")[1] in ours)

    expected = {_identity(p, s) for p, s in _walk(ray.tree()) if counted(p, s)}
    crashed: set[str] = set()

    def next_target() -> tuple[str, dict] | None:
        # The tree changes as processes are replaced: look again before each crash.
        return next(((p, s) for p, s in _walk(ray.tree())
                     if _identity(p, s) in expected - crashed and s["state"] == "running"),
                    None)

    def settled(path: str, snap: dict) -> bool:
        """The crashed component is back (processes: the checks below wait for them)."""
        tree = ray.tree()
        if path in ("cluster", "cluster/node"):
            node = tree_entry(tree, "node")
            assert node is not None
            return all(c["state"] == "running" for c in node["children"])
        if snap["kind"] in ("worker", "actor", "task"):
            return True
        now = dict(_walk(tree)).get(path)
        return now is not None and now["state"] == "running" and (
            now["restarts"] > snap["restarts"])

    while crashed != expected:
        path, snap = _until(next_target, f"one of {expected - crashed} running again")
        try:
            assert faults.crash(path), path
        except ValueError as error:
            # A task worker beyond the pre-started ones that idled past the pool's
            # IDLE_TIMEOUT exits: it may go between the listing and the crash (a
            # loaded machine stretches that). Another one is taken.
            if snap["kind"] != "worker" or "no live worker named" not in str(error):
                raise
            continue
        crashed.add(_identity(path, snap))
        _until(lambda p=path, s=snap: settled(p, s), f"{path} to restart")
        # Afterwards: old objects read, old actors answer, new tasks run.
        assert ray.get(small, timeout=30) == "small", path
        np.testing.assert_array_equal(ray.get(big, timeout=30),
                                      np.arange(MB // 8, dtype=np.int64))
        assert int(ray.get(returned, timeout=30)[0]) == 9, path
        assert ray.get(total.remote(big), timeout=60) == sum(range(MB // 8)), path
        assert all(n >= 1 for n in ray.get([h.add.remote() for h in restartable.values()],
                                           timeout=90)), path
        assert ray.get(ray.get_actor("walk_detached").add.remote(), timeout=30) >= 1, path
        assert ray.get(inc.remote(1), timeout=30) == 2, path
    assert {"cluster", "cluster/node", "cluster/node/object_manager", "cluster/node/rpc_server",
            "cluster/node/gcs/shard_0/replica_0", "task:slow", "task worker"} <= crashed
    assert len(crashed) >= 20
    ray.cancel(running, force=True)
    ray.kill(restartable["detached"])
