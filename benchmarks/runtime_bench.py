"""Runtime microbenchmarks: actorcore beside Ray, same machine, same run.

    .venv/bin/python benchmarks/runtime_bench.py [--quick] [--no-ray] [--queue N]

Each backend runs in its own fresh process (``--backend actorcore`` with this
interpreter, ``--backend ray`` with ``/work/rayenv/bin/python`` or ``$RAY_PYTHON``)
and prints one JSON line; this script then prints both and the ratio (>1: actorcore
faster). Cases:

- startup: ``init()`` to the first task's result, in a fresh process;
- sync task: submit one task and ``get`` it, one at a time; the median of 5 rounds'
  means (on a shared machine one stall in a single long round moved its mean 2x
  between runs of the same commit); beside it the floor, a ``multiprocessing.Pool``
  round trip (``apply``) measured the same way in actorcore's benchmark process;
- 10k tasks: submit 10,000 tasks, then ``get`` them all;
- put/get: a small ``put`` followed by its ``get``;
- put 100 MB: a numpy array, right after start-up (after a 1 MB put, so that linking
  to the store is not counted), into pages no object used before; then the steady
  state (median of 5, each freed before the next); beside a memcpy of 100 MB in the
  same process, the floor (median of 5, one before each steady put);
  ``--put-only`` runs start-up, this case and the idle memory alone;
- wait: ``wait`` on 1,000 ready refs (``num_returns=1000``), the median of 5 rounds of
  20;
- nested tree: a task that submits 8 tasks that each submit 8 (73 tasks), blocking in
  ``get`` at each level (the median of 5 rounds of 3 trees, or 10 without --quick);
- memory, measured the same way for both: the RSS of the driver and every process it
  started (for us the node and its workers; for Ray its GCS, raylet, workers and
  helpers) once the cluster is idle, and the growth of that per task when ``--queue``
  tasks are queued behind an unfinished dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import init_backend, run_backends  # noqa: E402


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().split(")")[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(p.name))
    return out


def _tree_rss_kb(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _rss_kb(p)
        stack.extend(_children(p))
    return total


def _settled_rss_kb(timeout: float = 60.0) -> int:
    """The cluster's RSS once it stops growing (two reads 0.5 s apart within 1 %)."""
    return _settled_rss_split_kb(timeout)[0]


def _settled_rss_split_kb(timeout: float = 60.0) -> tuple[int, int]:
    """``(cluster, driver)``: the RSS of the driver and every process it started, and
    of the driver alone, once the total stops growing (two reads 0.5 s apart within
    1 %)."""
    deadline = time.monotonic() + timeout
    last = _tree_rss_kb(os.getpid()), _rss_kb(os.getpid())
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _tree_rss_kb(os.getpid()), _rss_kb(os.getpid())
        if abs(now[0] - last[0]) <= 0.01 * last[0]:
            return now
        last = now
    return last


def _memory(ray, backend: str, noop, queue: int) -> dict:
    """Idle cluster RSS, and bytes per task queued behind an unfinished one."""
    res: dict = {"idle_cluster_mb": _settled_rss_kb() / 1024}
    if not queue:
        return res

    @ray.remote
    def gate():
        time.sleep(3600)

    g = gate.remote()
    before, driver_before = _settled_rss_split_kb()
    queued = [noop.remote(g) for _ in range(queue)]
    ray.wait([queued[-1]], timeout=0.5)  # let the cluster take them in
    if backend == "actorcore":  # the node says when it holds them all
        deadline = time.monotonic() + 120
        while ray._api._call("status")["scheduler"].waiting < queue:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    after, driver_after = _settled_rss_split_kb()
    res["queued_tasks"] = queue
    res["bytes_per_queued_task"] = (after - before) * 1024 / queue
    # Where it is: the driver (its refs and their entries) and the rest (for us the
    # node: specs, lineage, the GCS's task table; for Ray raylet, GCS, workers).
    res["bytes_per_queued_task_driver"] = (driver_after - driver_before) * 1024 / queue
    res["bytes_per_queued_task_cluster"] = res["bytes_per_queued_task"] - \
        res["bytes_per_queued_task_driver"]
    ray.cancel(g, force=True)
    # Every queued task now fails with the gate's cancellation. Wait until all
    # those errors are here (and seen: an error nobody read is reported when its
    # ref dies, one log line each) before the next case starts: it measured this
    # clean-up otherwise (10,000 tasks at 2.8 ms per task right after 100,000
    # queued, against 0.5 ms in a fresh cluster).
    t0 = time.perf_counter()
    ray.wait(queued, num_returns=len(queued), timeout=600, fetch_local=False)
    del queued
    # Then their refs' frees: the node drops the objects and releases their
    # lineage, which the GCS marks collectable. The next case starts once that is
    # done (still 5.2 ms per task for 10,000 tasks after only the wait above, load
    # 15), and once the worker the force-cancel killed is replaced.
    if backend == "actorcore":
        deadline = time.monotonic() + 600
        last = None
        while time.monotonic() < deadline:
            st = ray._api._call("status")
            now = (st["object_store"].objects, st["control"].lineage_pending,
                   st["scheduler"].waiting + st["scheduler"].ready)
            if now == last and now[1:] == (0, 0):
                break
            last = now
            time.sleep(0.5)
    ray.get(noop.remote(1))
    _settled_rss_kb()
    res["queue_drain_s"] = time.perf_counter() - t0
    return res


def _put_100mb(ray) -> dict:
    """A 100 MB put, first and steady, beside a memcpy of the same 100 MB.

    The memcpy that is the floor alternates with the steady puts, one each per
    round, and both are the median of their five: the same conditions for both
    (a neighbour's burst, the store's background work after start-up). The floor
    was the fastest of five memcpys taken before the puts, against a median put,
    which read a quiet machine's put at 44-90 % of it. The fastest is kept
    (``memcpy_100MB_min_ms``).

    A second floor copies into shared memory (a ``memfd`` mapping, the kind of
    memory a store's arena is), alternated the same way (``memcpy_shm_100MB_ms``).
    numpy puts a 100 MB array on transparent huge pages (``AnonHugePages`` shows
    it), while shared memory gets them only where the machine's
    ``shmem_enabled`` allows (``never`` by default): a copy between two huge-page
    arrays skips most TLB misses, and on this machine it ran 15-20 % faster than
    the same copy into a ``memfd`` mapping. The first floor is the copy between two
    numpy arrays, which a store in shared memory cannot reach on such a machine."""
    import mmap

    import numpy as np

    size = 100 * 1000 * 1000
    big = np.random.randint(0, 255, size, dtype=np.uint8)
    dst = np.empty_like(big)
    dst[:] = 1
    shm_fd = os.memfd_create("memcpy-floor")
    os.ftruncate(shm_fd, size)
    shm_map = mmap.mmap(shm_fd, size)
    shm_dst = np.frombuffer(shm_map, dtype=np.uint8)
    shm_dst[:] = 1

    def memcpy(to: np.ndarray = dst) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        np.copyto(to, big)
        return time.perf_counter() - t0, time.process_time() - c0

    warm_copies = [memcpy()[0] for _ in range(5)]
    small = ray.put(np.ones(1 << 20, dtype=np.uint8))
    t0, c0 = time.perf_counter(), time.process_time()
    first = ray.put(big)
    res = {"put_100MB_first_ms": (time.perf_counter() - t0) * 1e3,
           "put_100MB_first_cpu_ms": (time.process_time() - c0) * 1e3}
    del first, small
    times, cpu, copies, copy_cpu, shm_copies = [], [], [], [], []
    for _ in range(5):
        wall, cpu_time = memcpy()
        copies.append(wall)
        copy_cpu.append(cpu_time)
        shm_copies.append(memcpy(shm_dst)[0])
        t0, c0 = time.perf_counter(), time.process_time()
        ref = ray.put(big)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del ref
    res["put_100MB_ms"] = sorted(times)[2] * 1e3
    res["memcpy_100MB_ms"] = sorted(copies)[2] * 1e3
    res["memcpy_100MB_min_ms"] = min(warm_copies + copies) * 1e3
    res["memcpy_shm_100MB_ms"] = sorted(shm_copies)[2] * 1e3
    del shm_dst
    shm_map.close()
    os.close(shm_fd)
    # The driver process's CPU time (all its threads), which a loaded machine moves
    # far less than the wall clock: the put's own work beside the copy's.
    res["memcpy_100MB_cpu_ms"] = sorted(copy_cpu)[2] * 1e3
    res["put_100MB_cpu_ms"] = sorted(cpu)[2] * 1e3
    return res


def _scale(ray, noop, n: int) -> dict:
    """10,000 tasks, then ``n`` (submitted all at once, then fetched), in one cluster:
    the time per task of each, and what the submitting costs alone. The queue of ``n``
    tasks lives in the driver (refs), the node (specs, lineage) and the GCS."""
    res: dict = {}
    for label, count in (("10k", 10_000), ("n", n)):
        t0 = time.perf_counter()
        refs = [noop.remote(i) for i in range(count)]
        t1 = time.perf_counter()
        ray.get(refs)
        t2 = time.perf_counter()
        del refs
        res[f"scale_{label}_submit_us"] = (t1 - t0) / count * 1e6
        res[f"scale_{label}_per_task_us"] = (t2 - t0) / count * 1e6
    res["scale_tasks"] = n
    return res


def _pool_noop(x=None):
    return x


def _pool_floor(quick: bool) -> dict:
    """The floor of a sync task: a ``multiprocessing.Pool`` round trip (``apply``,
    two worker processes, fork), measured as the sync task is (median of 5 rounds'
    means), in the same process and run."""
    import multiprocessing

    n = int(200 * (0.3 if quick else 1.0))
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for _ in range(50):
            pool.apply(_pool_noop, (1,))
        rounds = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                pool.apply(_pool_noop, (1,))
            rounds.append((time.perf_counter() - t0) / n)
    rounds.sort()
    return {"pool_sync_us": rounds[2] * 1e6}


def run_backend(backend: str, quick: bool, queue: int, scale_n: int = 0,
                put_only: bool = False) -> dict:
    t_start = time.perf_counter()
    ray = init_backend(backend)

    @ray.remote
    def noop(x=None):
        return x

    @ray.remote
    def leaf():
        return 1

    @ray.remote
    def mid():
        return sum(ray.get([leaf.remote() for _ in range(8)]))

    @ray.remote
    def root():
        return sum(ray.get([mid.remote() for _ in range(8)]))

    ray.get(noop.remote(1))
    res: dict = {"startup_s": time.perf_counter() - t_start}
    if scale_n:
        # Memory first: measured after the N tasks it would read low, the queue
        # reusing the memory they freed (200,000: 514 B per queued task, against
        # 2,081-2,271 B in a fresh cluster).
        res.update(_memory(ray, backend, noop, queue))
        res.update(_scale(ray, noop, scale_n))
        ray.shutdown()
        return res
    res.update(_put_100mb(ray))
    if put_only:
        res.update(_memory(ray, backend, noop, 0))
        ray.shutdown()
        return res

    def timeit(fn, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    scale = 0.3 if quick else 1.0
    for _ in range(50):
        ray.get(noop.remote(1))
    rounds = sorted(timeit(lambda: ray.get(noop.remote(1)), int(200 * scale)) for _ in range(5))
    res["sync_task_us"] = rounds[2] * 1e6
    res["sync_task_rounds_us"] = [round(r * 1e6) for r in rounds]
    if backend == "actorcore":
        res.update(_pool_floor(quick))
    n_async = 10_000
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n_async)])
    res["tasks_10k_s"] = time.perf_counter() - t0
    res["tasks_per_s"] = n_async / res["tasks_10k_s"]
    res["put_get_us"] = timeit(lambda: ray.get(ray.put(1)), int(2000 * scale)) * 1e6
    refs = [ray.put(i) for i in range(1000)]
    ray.get(refs)
    # The median of 5 rounds, as for the sync task: a single round of 20 waits
    # (8-20 ms in all) mostly measured the tail of the 10,000 tasks' clean-up still
    # running in the driver's other threads.
    wait_rounds = sorted(timeit(lambda: ray.wait(refs, num_returns=1000), 20)
                         for _ in range(5))
    res["wait_1k_ms"] = wait_rounds[2] * 1e3
    res["wait_1k_rounds_ms"] = [round(r * 1e3, 3) for r in wait_rounds]
    ray.get(root.remote())
    # The median of 5 rounds, as for the sync task and the wait: one round of 3
    # trees (--quick) was the mean of 3, which one slow tree (a neighbour's burst,
    # a worker started late) moved by half.
    tree_rounds = sorted(timeit(lambda: ray.get(root.remote()), int(10 * scale) or 3)
                         for _ in range(5))
    res["nested_73_ms"] = tree_rounds[2] * 1e3
    res["nested_73_rounds_ms"] = [round(r * 1e3, 1) for r in tree_rounds]

    res.update(_memory(ray, backend, noop, queue))
    ray.shutdown()
    return res


CASES = [
    ("startup (init to first result)", "startup_s", "s", False),
    ("sync task (submit + get)", "sync_task_us", "us", False),
    ("10,000 tasks submitted then fetched", "tasks_10k_s", "s", False),
    ("small put + get", "put_get_us", "us", False),
    ("put 100 MB, first (fresh pages)", "put_100MB_first_ms", "ms", False),
    ("put 100 MB, steady", "put_100MB_ms", "ms", False),
    ("wait on 1,000 ready refs", "wait_1k_ms", "ms", False),
    ("nested tree of 73 tasks", "nested_73_ms", "ms", False),
]

MEMORY_CASES = [
    ("idle cluster memory (RSS)", "idle_cluster_mb", "MB", False),
    ("bytes per queued task", "bytes_per_queued_task", "B", False),
    ("  of which in the driver", "bytes_per_queued_task_driver", "B", False),
    ("  of which in the other processes", "bytes_per_queued_task_cluster", "B", False),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["actorcore", "ray"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--queue", type=int, default=100_000)
    p.add_argument("--scale", type=int, default=0, metavar="N",
                   help="only: startup, 10,000 tasks then N tasks (time per task of "
                        "each), and memory with --queue tasks queued")
    p.add_argument("--put-only", action="store_true",
                   help="only: startup, the 100 MB puts beside a memcpy, idle memory")
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="run both backends N times, alternating, and print each case's "
                        "median, range and the range of the per-run ratios")
    args = p.parse_args()
    if args.runs > 1 and not args.backend:
        _many_runs(args)
        return
    if args.backend:
        print("RESULT " + json.dumps(run_backend(args.backend, args.quick, args.queue,
                                                 args.scale, args.put_only)), flush=True)
        return
    extra = ["--queue", str(args.queue)] + (["--scale", str(args.scale)] if args.scale else [])
    extra += ["--put-only"] if args.put_only else []
    results = run_backends(
        __file__, extra, quick=args.quick, no_ray=args.no_ray,
        timeout=900 + args.scale / 100 + args.queue / 100,  # 1M: hours on a loaded machine
    )
    ac, ry = results.get("actorcore", {}), results.get("ray", {})
    if args.scale:
        for name, res in (("actorcore", ac), ("ray", ry)):
            if "scale_n_per_task_us" not in res:
                continue
            n = res["scale_tasks"]
            print(f"{name}: 10,000 tasks {res['scale_10k_per_task_us']:.0f} us per task "
                  f"(submit {res['scale_10k_submit_us']:.0f} us); {n:,} tasks "
                  f"{res['scale_n_per_task_us']:.0f} us per task (submit "
                  f"{res['scale_n_submit_us']:.0f} us): "
                  f"{res['scale_n_per_task_us'] / res['scale_10k_per_task_us']:.2f}x the "
                  f"time per task of 10,000")
    print(f"{'case':<40} {'actorcore':>12} {'ray':>12} {'ratio':>8}")
    for label, key, unit, _ in CASES:
        a, r = ac.get(key), ry.get(key)
        ratio = f"{r / a:.2f}x" if a and r else "-"
        fa = f"{a:.3g} {unit}" if a is not None else "-"
        fr = f"{r:.3g} {unit}" if r is not None else "-"
        print(f"{label:<40} {fa:>12} {fr:>12} {ratio:>8}")
    if ac.get("pool_sync_us") and ac.get("sync_task_us"):
        floor = ac["pool_sync_us"]
        print(f"  floor: multiprocessing.Pool sync round trip {floor:.0f} us (in actorcore's "
              f"process); actorcore's sync task at {floor / ac['sync_task_us']:.0%} of its speed"
              + (f", Ray's at {floor / ry['sync_task_us']:.0%}" if ry.get("sync_task_us") else ""))
    for name, res in (("actorcore", ac), ("ray", ry)):
        if res.get("sync_task_rounds_us"):
            print(f"  {name}: sync task rounds (us, sorted) {res['sync_task_rounds_us']}")
        if res.get("memcpy_100MB_ms"):
            floor = res["memcpy_100MB_ms"]
            print(f"  {name}: memcpy of 100 MB {floor:.1f} ms (median of 5 alternated with "
                  f"the steady puts; fastest {res.get('memcpy_100MB_min_ms', floor):.1f} ms); put 100 MB at "
                  f"{floor / res['put_100MB_first_ms']:.0%} (first) and "
                  f"{floor / res['put_100MB_ms']:.0%} (steady) of memcpy speed")
            if res.get("memcpy_100MB_cpu_ms"):
                print(f"  {name}: the driver's CPU time (median of 5): memcpy "
                      f"{res['memcpy_100MB_cpu_ms']:.1f} ms, put first "
                      f"{res['put_100MB_first_cpu_ms']:.1f} ms, steady "
                      f"{res['put_100MB_cpu_ms']:.1f} ms")
    for label, key, unit, _ in MEMORY_CASES:
        a, r = ac.get(key), ry.get(key)
        if a is None and r is None:
            continue
        if key == "bytes_per_queued_task":
            for name, res in (("actorcore", ac), ("ray", ry)):
                if "queue_drain_s" in res:
                    print(f"  {name}: the queued tasks failed (gate cancelled), were seen "
                          f"and freed in {res['queue_drain_s']:.1f} s")
            label = f"{label} ({(ac or ry).get('queued_tasks', 0):,} queued)"
        ratio = f"{r / a:.2f}x" if a and r else "-"
        fa = f"{a:,.0f} {unit}" if a is not None else "-"
        fr = f"{r:,.0f} {unit}" if r is not None else "-"
        print(f"{label:<40} {fa:>12} {fr:>12} {ratio:>8}")
    print("ratio = ray / actorcore, of time or of memory (higher is better for actorcore)")


def _many_runs(args: argparse.Namespace) -> None:
    """``--runs N``: the cases of N alternated runs of both backends, as medians with
    their range, and the ratio of the medians with the range of each run's ratio."""
    import statistics

    extra = ["--queue", str(args.queue)] + (["--put-only"] if args.put_only else [])
    runs = []
    for i in range(args.runs):
        runs.append(run_backends(__file__, extra, quick=args.quick, no_ray=args.no_ray,
                                 timeout=900 + args.queue / 100))
        print(f"run {i + 1} of {args.runs} done (load average "
              f"{os.getloadavg()[0]:.1f})", flush=True)

    def fmt(values: list[float], unit: str) -> str:
        if not values:
            return "-"
        med = statistics.median(values)
        return f"{med:.3g} {unit} [{min(values):.3g}-{max(values):.3g}]"

    print(f"{'case':<40} {'actorcore median [range]':>28} {'ray median [range]':>28} "
          f"{'ratio':>7} {'per run':>12}")
    for label, key, unit, _ in CASES + MEMORY_CASES:
        a = [r["actorcore"][key] for r in runs if key in r.get("actorcore", {})]
        y = [r["ray"][key] for r in runs if key in r.get("ray", {})]
        per_run = [r["ray"][key] / r["actorcore"][key] for r in runs
                   if r.get("actorcore", {}).get(key) and r.get("ray", {}).get(key)]
        ratio = (f"{statistics.median(y) / statistics.median(a):.2f}x"
                 if a and y and statistics.median(a) else "-")
        spread = f"{min(per_run):.2f}-{max(per_run):.2f}x" if per_run else "-"
        print(f"{label:<40} {fmt(a, unit):>28} {fmt(y, unit):>28} {ratio:>7} {spread:>12}")
    floors = [(r["actorcore"]["pool_sync_us"], r["actorcore"]["sync_task_us"])
              for r in runs if r.get("actorcore", {}).get("pool_sync_us")]
    if floors:
        print("  floor: multiprocessing.Pool sync round trip "
              + ", ".join(f"{f:.0f} us (ours at {f / t:.0%})" for f, t in floors))
    for key, what in (("memcpy_100MB_ms", "memcpy of 100 MB"),
                      ("memcpy_shm_100MB_ms", "memcpy of 100 MB into shared memory "
                                              "(a memfd, as the store's arena)")):
        copies = [(r["actorcore"][key], r["actorcore"]["put_100MB_first_ms"],
                   r["actorcore"]["put_100MB_ms"]) for r in runs
                  if r.get("actorcore", {}).get(key)]
        if copies:
            print(f"  floor: {what} "
                  + ", ".join(f"{c:.1f} ms (put at {c / a:.0%} first, {c / b:.0%} steady)"
                              for c, a, b in copies))
    print("ratio = ray / actorcore, of time or of memory (higher is better for actorcore)")


if __name__ == "__main__":
    main()
