"""Actors recovered by replay (``checkpoint_interval``) and control state that
survives a crash of the whole GCS, on real clusters."""

from __future__ import annotations

import os
import signal
import time

import pytest

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.api._actor_handle import actor_state

from .cluster_support import HANG_GUARD, until

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
class Ledger:
    """A state that only an exact replay rebuilds: the order of the entries counts."""

    def __init__(self, start=0):
        self.entries = [start]
        self.restores = 0

    def add(self, x, delay=0.0):
        if delay:
            time.sleep(delay)
        self.entries.append(x)
        return len(self.entries)

    def boom(self, x):
        self.entries.append(x)
        raise ValueError(f"boom {x}")

    def add_ref(self, value):
        self.entries.append(value)
        return len(self.entries)

    def entries_(self):
        return list(self.entries)

    def pid(self):
        return os.getpid()

    def restored(self):
        return self.restores

    def __actorcore_checkpoint__(self):
        return list(self.entries)

    def __actorcore_restore__(self, state):
        self.entries = list(state)
        self.restores += 1


@ray.remote
class AsyncLedger:
    def __init__(self):
        self.entries = []

    async def add(self, x):
        self.entries.append(x)
        return len(self.entries)

    async def entries_(self):
        return list(self.entries)

    async def pid(self):
        return os.getpid()

    def __actorcore_checkpoint__(self):
        return list(self.entries)

    def __actorcore_restore__(self, state):
        self.entries = list(state)


def _kill(actor):
    pid = ray.get(actor.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    return pid


def _replay(actor):
    return actor_state(actor)["replay"]


def _expected(n, start=0):
    return [start, *range(n)]


@pytest.mark.parametrize("interval", [0, 1, 7])
def test_replay_restores_exact_state(interval):
    a = Ledger.options(max_restarts=2, checkpoint_interval=interval).remote(100)
    assert ray.get([a.add.remote(i) for i in range(20)], timeout=60) == list(range(2, 22))
    pid = _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == [100, *range(20)]
    assert ray.get(a.pid.remote()) != pid
    rep = _replay(a)
    assert rep["recoveries"] == 1
    # 21 calls ran before the loss (20 adds and the pid() that found the process):
    # every call is logged, read-only or not.
    if interval == 0:
        assert rep["checkpoints"] == 0 and rep["calls_replayed"] == 21
        assert ray.get(a.restored.remote()) == 0
    else:
        # Checkpoints every `interval` calls: only the calls since the last replayed.
        # The last one (taken behind the 21st call, the pid() whose answer came
        # before the kill) may not have reached the node yet: then one interval more.
        assert rep["checkpoints"] >= 21 // interval - 1
        assert rep["calls_replayed"] in (21 % interval, 21 % interval + interval)
        assert ray.get(a.restored.remote()) == 1
    # It keeps working, and a second loss recovers the same way.
    assert ray.get(a.add.remote("x")) == 22
    _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == [100, *range(20), "x"]


def test_without_opt_in_the_constructor_runs_again():
    a = Ledger.options(max_restarts=1, max_task_retries=1).remote(5)
    ray.get([a.add.remote(i) for i in range(3)])
    _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == [5]
    assert actor_state(a)["replay"] is None


def test_in_flight_calls_run_once_after_recovery():
    """Calls in flight when the process dies see results (not errors), and each
    call's effect is in the state exactly once."""
    a = Ledger.options(max_restarts=1, checkpoint_interval=4).remote()
    assert ray.get([a.add.remote(i) for i in range(10)]) == list(range(2, 12))
    pid = ray.get(a.pid.remote())
    slow = [a.add.remote(f"s{i}", 0.2) for i in range(4)]
    time.sleep(0.3)  # the first one is running
    os.kill(pid, signal.SIGKILL)
    assert ray.get(slow, timeout=60) == [12, 13, 14, 15]
    assert ray.get(a.entries_.remote()) == [0, *range(10), "s0", "s1", "s2", "s3"]


def test_replay_keeps_order_across_callers_and_paths():
    """Calls of the driver (direct path once discovered) and of tasks (other
    processes) interleave; the replayed order is the order they ran in."""

    @ray.remote
    def writer(actor, tag, n):
        return ray.get([actor.add.remote(f"{tag}{i}") for i in range(n)])

    a = Ledger.options(max_restarts=1, checkpoint_interval=0).remote()
    ray.get(a.pid.remote())
    refs = [writer.remote(a, t, 15) for t in "ab"]
    mine = [a.add.remote(f"d{i}") for i in range(15)]
    ray.get(refs + mine, timeout=60)
    before = ray.get(a.entries_.remote())
    assert sorted(map(str, before[1:])) == sorted(f"{t}{i}" for t in "abd" for i in range(15))
    _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == before


_NODE_PATH_ONLY = """
import os, signal
import actorcore as ray
from actorcore.api._actor_handle import actor_state


@ray.remote
class Ledger:
    def __init__(self):
        self.entries = [0]

    def add(self, x):
        self.entries.append(x)
        return len(self.entries)

    def entries_(self):
        return list(self.entries)

    def pid(self):
        return os.getpid()

    def __actorcore_checkpoint__(self):
        return list(self.entries)

    def __actorcore_restore__(self, state):
        self.entries = list(state)


ray.init(num_cpus=1, log_to_driver=False)
a = Ledger.options(max_restarts=1, checkpoint_interval=4).remote()
assert ray.get([a.add.remote(i) for i in range(10)]) == list(range(2, 12))
before = ray.get(a.entries_.remote())
os.kill(ray.get(a.pid.remote()), signal.SIGKILL)
assert ray.get(a.entries_.remote(), timeout=60) == before
rep = actor_state(a)["replay"]
assert rep["calls_logged_direct"] == 0 and rep["recoveries"] == 1, rep
ray.shutdown()
print("OK")
"""


def test_replay_through_the_node_only(tmp_path):
    """ACTORCORE_DIRECT_CALLS=0: every call goes through the node; the log is the
    same (here the driver's own cluster, in a process of its own)."""
    import subprocess
    import sys

    script = tmp_path / "node_path.py"
    script.write_text(_NODE_PATH_ONLY)
    env = dict(os.environ, ACTORCORE_DIRECT_CALLS="0")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=HANG_GUARD, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "OK" in out.stdout, out.stdout + out.stderr


def test_direct_calls_are_logged():
    """Once the driver calls the actor straight (the direct path), its calls reach
    the log through the actor's process, and replay the same."""
    a = Ledger.options(max_restarts=1, checkpoint_interval=0).remote()
    ray.get(a.pid.remote())
    until(lambda: [ray.get(a.add.remote("probe"))] and _replay(a)["calls_logged_direct"] > 0,
          "a call on the direct path")
    ray.get([a.add.remote(i) for i in range(20)])
    before = ray.get(a.entries_.remote())
    assert _replay(a)["calls_logged_direct"] >= 20
    _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == before


def test_raising_calls_and_ref_arguments_replay():
    a = Ledger.options(max_restarts=1, checkpoint_interval=0).remote()
    big = ray.put(b"x" * 300_000)  # in the store: read again by the replay
    small = ray.put("small")
    assert ray.get(a.add_ref.remote(small)) == 2
    with pytest.raises(exc.RayTaskError):
        ray.get(a.boom.remote("b"))
    assert ray.get(a.add_ref.remote(big)) == 4
    before = ray.get(a.entries_.remote())
    _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == before


def test_async_actor_replays():
    a = AsyncLedger.options(max_restarts=1, checkpoint_interval=3, max_concurrency=1).remote()
    ray.get([a.add.remote(i) for i in range(8)])
    _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == list(range(8))


def test_replay_uses_max_restarts():
    a = Ledger.options(max_restarts=1, checkpoint_interval=2).remote()
    ray.get([a.add.remote(i) for i in range(3)])
    _kill(a)
    assert ray.get(a.entries_.remote(), timeout=60) == _expected(3)
    _kill(a)
    with pytest.raises(exc.ActorDiedError) as info:
        ray.get(a.add.remote(9), timeout=60)
    assert "max_restarts=1" in str(info.value)
    # The cluster is fine.
    b = Ledger.options(checkpoint_interval=1).remote()
    assert ray.get(b.add.remote(1), timeout=60) == 2


def test_bad_options_are_refused_naming_them():
    with pytest.raises(ValueError, match="checkpoint_interval=-1"):
        Ledger.options(checkpoint_interval=-1)

    @ray.remote
    class NoMethods:
        def f(self):
            return 1

    with pytest.raises(TypeError, match="__actorcore_checkpoint__"):
        NoMethods.options(checkpoint_interval=5).remote()
    with pytest.raises(ValueError, match="max_concurrency=4"):
        Ledger.options(checkpoint_interval=0, max_concurrency=4).remote()
    # Without checkpoints the methods are not needed.
    n = NoMethods.options(checkpoint_interval=0).remote()
    assert ray.get(n.f.remote(), timeout=60) == 1


def test_failing_checkpoint_keeps_the_log():
    @ray.remote
    class Flaky:
        def __init__(self):
            self.xs = []

        def add(self, x):
            self.xs.append(x)

        def get(self):
            return self.xs

        def pid(self):
            return os.getpid()

        def __actorcore_checkpoint__(self):
            raise RuntimeError("cannot save")

        def __actorcore_restore__(self, state):
            raise AssertionError("never called")

    f = Flaky.options(max_restarts=1, checkpoint_interval=2).remote()
    ray.get([f.add.remote(i) for i in range(5)])
    _kill(f)
    assert ray.get(f.get.remote(), timeout=60) == list(range(5))


def test_failing_restore_ends_the_actor_with_the_reason():
    @ray.remote
    class BadRestore:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

        def pid(self):
            return os.getpid()

        def __actorcore_checkpoint__(self):
            return self.n

        def __actorcore_restore__(self, state):
            raise RuntimeError(f"cannot restore {state}")

    b = BadRestore.options(max_restarts=1, checkpoint_interval=1).remote()
    ray.get([b.inc.remote() for _ in range(3)])
    _kill(b)
    with pytest.raises(exc.ActorDiedError) as info:
        ray.get(b.inc.remote(), timeout=60)
    assert "recovery failed" in str(info.value) and "cannot restore 3" in str(info.value)
    until(lambda: actor_state(b)["state"] == "dead", "the actor to be dead")


# ------------------------------------------------ control state that survives the GCS


@ray.remote
def square(x):
    return x * x


@ray.remote
def slow_inc(x):
    time.sleep(0.01)
    return x + 1


def _gcs_scan(cluster, reads):
    """Run ``reads(client)`` with a GCS client of the test's own."""
    import trio

    import gcs
    from actorcore.api import _api

    token = _api._state["head"].token

    async def run():
        async with gcs.open_client(cluster["gcs_address"], token, timeout=10) as client:
            return await reads(client)

    return trio.run(run)


def test_gcs_crash_under_load_loses_nothing(cluster):
    """The embedded GCS (one in-memory replica) crashes as a whole under load and
    restarts empty: results stay exact, named actors are still found (and their
    names still theirs), and the nodes write their state to it again."""
    from actorcore.testing import faults

    keeper = Ledger.options(name="keeper", max_restarts=1, checkpoint_interval=5).remote()
    ray.get([keeper.add.remote(i) for i in range(12)], timeout=60)
    refs = [square.remote(i) for i in range(150)]
    chain = ray.put(0)
    for _ in range(20):
        chain = slow_inc.remote(chain)
    calls = [keeper.add.remote(f"c{i}") for i in range(10)]

    assert "gcs" in str(faults.crash("gcs"))

    refs += [square.remote(i) for i in range(150, 300)]
    for _ in range(20):
        chain = slow_inc.remote(chain)
    calls += [keeper.add.remote(f"c{i}") for i in range(10, 20)]
    assert ray.get(refs, timeout=60) == [i * i for i in range(300)]
    assert ray.get(chain, timeout=60) == 40
    assert ray.get(calls, timeout=60) == list(range(14, 34))

    found = ray.get_actor("keeper")
    assert ray.get(found.entries_.remote(), timeout=60) == [
        0, *range(12), *(f"c{i}" for i in range(20))]
    with pytest.raises(ValueError, match="keeper"):
        Ledger.options(name="keeper").remote()

    node_id = ray.get_runtime_context().get_node_id()
    fid = square._get_export().function_id.hex()
    live_task = refs[-1].task_id().hex()

    async def state(client):
        nodes = [k for k, _v in await client.nodes.list()]
        names = dict(await client.actors.list_names())
        record = await client.actors.get(keeper._actor_id.hex())
        task = await client.tasks.get(live_task)
        function = await client.functions.get(fid)
        ckpt = await client.kv.get(keeper._actor_id.hex(), namespace="actorcore.checkpoints")
        return nodes, names, record, task, function, ckpt

    def republished():
        nodes, names, record, task, function, ckpt = _gcs_scan(cluster, state)
        return (node_id in nodes and names.get("keeper") == keeper._actor_id.hex()
                and record is not None and record.get("state") == "alive"
                and task is not None and function is not None and ckpt is not None)

    until(republished, "the node to write its state to the restarted GCS", timeout=120)
    # Still healthy: a new task, a new named actor, a recovery of the named one.
    assert ray.get(square.remote(12), timeout=60) == 144
    other = Ledger.options(name="keeper2").remote(7)
    assert ray.get(other.add.remote(1), timeout=60) == 2
    before = ray.get(keeper.entries_.remote())
    _kill(keeper)
    assert ray.get(keeper.entries_.remote(), timeout=60) == before
    ray.kill(other)


def _component(name):
    def walk(n):
        if n.get("name") == name:
            return n
        for c in n.get("children", []):
            found = walk(c)
            if found is not None:
                return found
        return None

    return walk(ray.tree())


def test_a_new_gcs_link_writes_the_node_state_again(cluster):
    """A restarted ``gcs_client`` cannot tell whether the GCS restarted empty while
    it was down (its new client never saw the old history), so it writes the node's
    state again; the GCS still has it, the names are still the actors'."""
    from actorcore.testing import faults

    named = Ledger.options(name="survivor").remote(3)
    assert ray.get(named.add.remote(1), timeout=60) == 2
    faults.crash("gcs_client")
    until(lambda: (c := _component("gcs_client")) is not None and c["state"] == "running"
          and c.get("republished") == 1, "the new gcs_client to write the state again")

    async def names(client):
        return dict(await client.actors.list_names()).get("survivor")

    assert _gcs_scan(cluster, names) == named._actor_id.hex()
    with pytest.raises(ValueError, match="survivor"):
        Ledger.options(name="survivor").remote()
    assert ray.get(square.remote(3), timeout=60) == 9
    ray.kill(named)


def test_a_logged_call_whose_answer_was_lost_is_not_run_again():
    """The actor's process dies after the node logged a direct call but before its
    caller heard: the caller resends it and gets the logged results; it does not
    run a second time (the state holds it once)."""
    from actorcore.testing import faults

    a = Ledger.options(max_restarts=1, checkpoint_interval=0).remote()
    ray.get(a.pid.remote())
    until(lambda: [ray.get(a.add.remote("probe"))] and _replay(a)["calls_logged_direct"] > 0,
          "a call on the direct path")
    pid = ray.get(a.pid.remote())
    logged = _replay(a)["calls_logged"]
    # Answers from actor processes to callers on their direct links are lost (each
    # with its link, reset: the caller cannot tell whether the call ran).
    with faults.drop(1.0, a="worker_*-direct", b="driver-*-direct", both=False):
        ref = a.add.remote("once")
        until(lambda: _replay(a)["calls_logged"] > logged, "the call in the log")
        os.kill(pid, signal.SIGKILL)
        n = ray.get(ref, timeout=60)
    entries = ray.get(a.entries_.remote(), timeout=60)
    assert entries.count("once") == 1 and entries[-1] == "once" and n == len(entries)


def test_a_resent_direct_call_is_answered_from_the_log_after_several_checkpoints():
    """A caller whose answers were held up (each waits for the node's
    ``actor_logged``) while its actor ran, reported and checkpointed more calls
    resends the unanswered ones: the log answers them even when two checkpoints
    have cleared their entries, instead of the node running them again."""
    from actorcore.node.actor_manager._replay import ANSWERED_KEPT, CallLog
    from actorcore.protocol._actors import CallSpec

    log = CallLog(interval=7)

    def call(k: int) -> CallSpec:
        return CallSpec(task_id=k.to_bytes(16, "big"), actor_id=b"a" * 16, method="call",
                        name="Ledger.call", args=b"", deps=[], num_returns=1, owner=b"o")

    for k in range(21):  # three segments of 7 direct calls, a checkpoint after each
        log.append(call(k), None, [(b"r%d" % k, False, b"%d" % (3 * k))], pinned=False)
        if (k + 1) % 7 == 0:
            log.take_checkpoint(b"state")
    assert not log.entries
    assert log.answer(call(1).task_id) == [(b"r1", False, b"3")]  # two checkpoints back
    assert log.answer(call(20).task_id) == [(b"r20", False, b"60")]
    for k in range(21, 21 + ANSWERED_KEPT):  # the oldest answers go, the newest stay
        log.append(call(k), None, [(b"r", False, b"")], pinned=False)
        log.take_checkpoint(b"state")
    assert log.answer(call(1).task_id) is None
    assert len(log.answered) == ANSWERED_KEPT
