"""What the fast paths must keep: a small program starts without loading pyarrow in
the driver or the node (it costs 100-200 ms of CPU per process at start-up), nor
asyncio, zipfile or the node's modules in the driver, and
``wait`` answered from the caller's own entries keeps Ray's semantics. Real clusters,
the import check in a child process of its own so that this process's imports do
not count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import actorcore as ray

from .cluster_support import HANG_GUARD, ROOT, short_root

SMALL_PROGRAM = """
import os, sys
import actorcore as ray
ray.init(num_cpus=1, log_to_driver=False)

@ray.remote
def add(a, b):
    return a + b

ref = add.remote(1, 2)
ready, _ = ray.wait([ref, ray.put(4)], num_returns=2, timeout=60)
assert ray.get(ready) == [3, 4]
node_pid = ray.nodes()[0]["pid"]
with open(f"/proc/{node_pid}/maps") as f:
    node_arrow = "libarrow" in f.read()
print("DRIVER", "pyarrow" in sys.modules, "numpy" in sys.modules, "NODE", node_arrow)
unneeded = ("asyncio", "zipfile", "actorcore.util.queue", "actorcore.node.local_scheduler._scheduler",
            "actorcore.node.placement_groups._manager", "actorcore.node.gcs_client._control")
print("DRIVER LOADED", [m for m in unneeded if m in sys.modules])
# Named, they are there (imported then).
assert ray.SchedulerStatistics.__name__ == "SchedulerStatistics"
from actorcore import ControlStatistics
from actorcore.util.queue import Queue
from actorcore.node.placement_groups import PlacementGroups
assert ray.util.queue.Queue is Queue and ControlStatistics and PlacementGroups

import numpy as np
big = np.arange(1 << 20, dtype=np.int64)  # 8 MB: through shared memory
assert (ray.get(ray.put(big)) == big).all()
assert ray.get(add.remote(ray.put(big), 1))[-1] == (1 << 20)
print("LARGE OK", "pyarrow" in sys.modules)
ray.shutdown()
"""


def test_small_program_loads_no_pyarrow_and_large_objects_still_work():
    with short_root() as root:
        env = dict(os.environ, PYTHONPATH=str(ROOT), ACTORCORE_TMPDIR=root)
        env.pop("ACTORCORE_ADDRESS", None)
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(SMALL_PROGRAM)],
                             env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DRIVER False False NODE False" in out.stdout, out.stdout + out.stderr
    # Nor asyncio, zipfile, the queue utility or the node's own modules, imported
    # when first named (each costs every program start-up CPU for nothing).
    assert "DRIVER LOADED []" in out.stdout, out.stdout + out.stderr
    # The first large object loads it where it is needed, and the values are intact.
    assert "LARGE OK True" in out.stdout, out.stdout + out.stderr


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=1, log_to_driver=False)
    yield
    ray.shutdown()


@ray.remote
def fail(msg):
    raise ValueError(msg)


@ray.remote
def echo(x):
    return x


def test_wait_on_ready_refs_keeps_order_and_counts(cluster):
    refs = [ray.put(i) for i in range(50)]
    ray.get(refs)
    ready, rest = ray.wait(refs, num_returns=50)
    assert ready == refs and rest == []
    ready, rest = ray.wait(refs, num_returns=7)
    assert ready == refs[:7] and rest == refs[7:]
    ready, rest = ray.wait(tuple(refs), num_returns=0, timeout=0)
    assert ready == [] and rest == refs
    # Some ready, some not: the ready ones first in their order, then time runs out.
    gate = ray.put(0)
    never = echo.options(num_cpus=1000).remote(gate)  # infeasible: stays pending
    mixed = [refs[0], never, refs[1]]
    ready, rest = ray.wait(mixed, num_returns=2, timeout=0.2)
    assert ready == [refs[0], refs[1]] and rest == [never]
    ready, rest = ray.wait(mixed, num_returns=3, timeout=0.2)
    assert ready == [refs[0], refs[1]] and rest == [never]
    ray.cancel(never)
    assert ray.get(echo.remote(5), timeout=60) == 5  # the cluster serves on


def test_wait_refuses_duplicates_naming_them(cluster):
    r = ray.put(1)
    with pytest.raises(ValueError, match="duplicate ObjectRefs"):
        ray.wait([r, r], num_returns=1)
    with pytest.raises(ValueError, match=r"num_returns=3\) is more than the 2 refs"):
        ray.wait([r, ray.put(2)], num_returns=3)
    assert ray.get(echo.remote(6), timeout=60) == 6


def test_wait_sees_errors_and_get_raises_them(cluster):
    bad = fail.remote("boom")
    ok = echo.remote(1)
    ready, rest = ray.wait([ok, bad], num_returns=2, timeout=60)
    assert ready == [ok, bad] and rest == []
    with pytest.raises(ValueError, match="boom"):
        ray.get(bad)
    assert ray.get(ok) == 1


@ray.remote(num_cpus=0)
class Pid:
    def pid(self):
        return os.getpid()

    def fail(self, text):
        raise ValueError(text)


def test_get_of_one_ref_keeps_get_s_semantics(cluster):
    # ``get(ref)`` without a timeout takes ``get_one``: ready values, values that
    # come (a direct call's answer read by this thread, a task's through the loop),
    # errors raised as the task's exception, a put's value; with a timeout and
    # inside a task the general path.
    a = Pid.remote()
    me = ray.get(a.pid.remote())
    for _ in range(20):
        assert ray.get(a.pid.remote()) == me
    with pytest.raises(ValueError, match="sync boom"):
        ray.get(a.fail.remote("sync boom"))
    assert ray.get(ray.put([1, 2])) == [1, 2]
    assert ray.get(echo.remote(7)) == 7
    with pytest.raises(ValueError, match="boom"):
        ray.get(fail.remote("boom"))
    ref = a.pid.remote()
    assert ray.get(ref) == ray.get(ref) == me  # ready by the second
    never = echo.options(num_cpus=1000).remote(0)
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(never, timeout=0.1)
    ray.cancel(never)
    ray.kill(a)


def test_a_burst_of_actors_starts_together_not_one_per_core(cluster):
    """Six ``num_cpus=0`` actors created at once start more than one per core at a
    time (the cap is four per core: the starts overlap their waits), on a node that
    offers one CPU. How many overlap depends on how soon the first starts end (a
    forked actor process is ready in a few ms), so the peak is checked against one
    per core, not against six."""
    from actorcore import _api

    hs = [Pid.remote() for _ in range(6)]
    pids = ray.get([h.pid.remote() for h in hs], timeout=120)
    assert len(set(pids)) == 6
    st = _api._call("status")["actors"]
    assert st.max_starting == 4 * (os.cpu_count() or 1), st
    assert st.starting_peak > (os.cpu_count() or 1), st
    for h in hs:
        ray.kill(h)
    assert ray.get(echo.remote(7), timeout=60) == 7


def test_the_store_warmer_runs_idle_and_low_priority():
    """The warmer faults the arena in from a thread that any waking task preempts
    (``SCHED_IDLE``) and that is last among the node's own threads (nice 19), and
    the thread that started it keeps its priority. A client's map-ahead thread is
    nice 19 only (``idle=False``): a driver's busy main thread starved it."""
    from store import _arena

    seen = []

    def record() -> None:
        seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)))

    _arena.run_at_low_priority(record)
    _arena.run_at_low_priority(record, idle=False)
    assert seen == [(os.SCHED_IDLE, _arena.BACKGROUND_NICE),
                    (os.SCHED_OTHER, _arena.BACKGROUND_NICE)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_tasks_run_one_at_a_time_share_lineage_writes(cluster):
    """Tasks run one at a time buffer their lineage as record, mark, record, mark:
    a flush writes them in two GCS writes, not two per task (which cost a third of
    the node's CPU per sync task). The lineage is still all written and marked."""
    from actorcore import _api

    before = _api._call("status")["control"]
    n = 60
    values = [ray.get(echo.remote(i), timeout=60) for i in range(n)]
    assert values == list(range(n))
    deadline = time.monotonic() + 30
    while True:  # records and marks follow within the flush interval (a mark once
        # the driver's lazy free of a result reached the node; the last one or two
        # may wait for more company)
        after = _api._call("status")["control"]
        # (a task whose result was freed before its record left the buffer has
        # neither written: elided)
        elided = after.lineage_elided - before.lineage_elided
        if (after.tasks_recorded - before.tasks_recorded + elided >= n
                and after.lineage_collectable - before.lineage_collectable + elided >= n - 2
                and after.lineage_pending == 0):
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.05)
    flushes = after.lineage_flushes - before.lineage_flushes
    assert flushes < n, (flushes, before, after)


def test_a_burst_s_lineage_waits_for_the_node_s_ready_queue(cluster):
    """The node's lineage flush holds a burst's records back while its tasks wait
    in the ready queue (``gcs_client._control._LineageBuffer``, "A burst"), and the
    lineage is still all accounted for: written, or elided as its refs were freed."""
    from actorcore import _api

    before = _api._call("status")["control"]
    n = 2000  # far more than the cluster's one worker and its pipeline take at once
    assert ray.get([echo.remote(i) for i in range(n)], timeout=120) == list(range(n))
    deadline = time.monotonic() + 60
    while True:
        after = _api._call("status")["control"]
        settled = after.lineage_elided - before.lineage_elided + (
            after.tasks_recorded - before.tasks_recorded)
        if settled >= n and after.lineage_pending == 0:
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.05)
    assert after.lineage_deferrals > before.lineage_deferrals, (before, after)
