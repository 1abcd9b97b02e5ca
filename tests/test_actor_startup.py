"""Actor processes start through a bounded queue: many ``num_cpus=0`` actors created
at once all come up, at most ``max_starting`` processes start at a time, and one
killed while queued is never started. Real clusters in child processes."""

from __future__ import annotations

import pytest

from .cluster_support import run_program

_QUEUE = """
    import os, time
    import actorcore as ray
    from actorcore import _api
    from actorcore import exceptions as exc
    ray.init(num_cpus=1, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class A:
        def pid(self):
            return os.getpid()

    hs = [A.remote() for _ in range(8)]
    doomed = [A.remote() for _ in range(3)]
    for h in doomed:  # still queued behind the 8: never started
        ray.kill(h)
    pids = ray.get([h.pid.remote() for h in hs], timeout=120)
    assert len(set(pids)) == 8, pids
    for h in doomed:
        try:
            ray.get(h.pid.remote(), timeout=30)
        except exc.ActorDiedError as e:
            assert "killed" in str(e), e
        else:
            raise AssertionError("a killed actor answered")
    st = _api._call("status")["actors"]
    print("STATS", st, flush=True)
    assert st.max_starting == 1, st
    assert st.starting_peak == 1, st  # never two processes starting at once
    assert st.queued_peak >= 4, st  # the rest waited in the queue
    assert st.processes_starting == 0 and st.processes_queued == 0, st
    assert st.processes == 8, st  # the killed ones never got a process
    # The node keeps serving: a task, and a new actor behind the (now empty) queue.
    assert ray.get(ray.remote(lambda: 3).remote(), timeout=60) == 3
    assert ray.get(A.remote().pid.remote(), timeout=60) > 0
    ray.shutdown()
    print("OK")
"""


def test_actor_processes_start_through_a_bounded_queue(root):
    run_program(root, _QUEUE, timeout=180, ACTORCORE_MAX_STARTING_WORKERS="1")


def test_bad_start_cap_is_refused_with_its_value(root):
    code = """
        import actorcore as ray
        try:
            ray.init(num_cpus=1, log_to_driver=False)
        except Exception as e:
            assert "ACTORCORE_MAX_STARTING_WORKERS='0'" in str(e), e
            print("OK")
    """
    run_program(root, code, timeout=90, ACTORCORE_MAX_STARTING_WORKERS="0")


_MANY = """
    import os, time
    import actorcore as ray
    from actorcore import _api
    ray.init(num_cpus=2, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class A:
        def pid(self):
            return os.getpid()

    t0 = time.monotonic()
    hs = [A.remote() for _ in range({n})]
    pids = ray.get([h.pid.remote() for h in hs], timeout=900)
    took = time.monotonic() - t0
    assert len(set(pids)) == {n}
    st = _api._call("status")["actors"]
    print("STATS", st, flush=True)
    print(f"TIME {n} actors up in {{took:.1f}} s", flush=True)
    assert st.starting_peak <= st.max_starting, st
    assert ray.get(ray.remote(lambda: 3).remote(), timeout=60) == 3
    ray.shutdown()
    print("OK")
"""

#: Memory one idle actor process costs here (measured: 1,000 took ~21 GB; mostly the
#: interpreter and its ~330 imported modules).
_PER_ACTOR = 21 << 20


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_thousand_process_backed_actors_all_come_up(root):
    need = 1000 * _PER_ACTOR + (1 << 30)
    if _mem_available() < need:
        pytest.skip(f"1000 actor processes need about {need >> 20} MB; "
                    f"{_mem_available() >> 20} MB available")
    out = run_program(root, _MANY.format(n=1000), timeout=1200)
    print(next(ln for ln in out.splitlines() if ln.startswith("TIME")))
