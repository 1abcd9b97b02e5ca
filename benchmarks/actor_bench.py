"""Actor microbenchmarks: actorcore beside Ray, same machine, same run.

    .venv/bin/python benchmarks/actor_bench.py [--quick] [--no-ray] [--light N]

Each backend runs in its own fresh process (``--backend actorcore`` with this
interpreter, ``--backend ray`` with ``/work/rayenv/bin/python`` or ``$RAY_PYTHON``) and
prints one JSON line; this script prints both and the ratio (>1: actorcore faster).
The cases follow Ray's own ``ray microbenchmark`` names:

- 1:1 actor calls sync: one caller, one actor, ``get`` after each call;
- 1:1 actor calls async: submit a batch of calls, then ``get`` them all;
- 1:n actor calls async: the driver calls n actors round-robin;
- n:n actor calls async: n caller actors each call their own actor;
- 1:1 async-actor calls async: calls to an actor with ``async def`` methods;
- actor creation: create actors (a process each) and wait for one call each;
- (actorcore) lightweight actors: ``--light`` actors in one shared process
  (``placement="shared"``), creation rate and memory per actor; beside it the
  memory per (process-backed) actor of both systems.
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
from runtime_bench import _rss_kb, _tree_rss_kb  # noqa: E402


def _cluster_rss_kb(ray, backend: str) -> int:
    if backend == "ray":
        # Ray's raylet, GCS, workers: every process of this session (children of us).
        return _tree_rss_kb(os.getpid())
    node_pid = ray.nodes()[0]["pid"]
    return _tree_rss_kb(node_pid) + _rss_kb(os.getpid())


def run_backend(backend: str, quick: bool, light: int) -> dict:
    ray = init_backend(backend)

    @ray.remote(num_cpus=0)
    class Echo:
        def f(self, x=None):
            return x

    @ray.remote(num_cpus=0)
    class AsyncEcho:
        async def f(self, x=None):
            return x

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, server):
            self.server = server

        def run(self, n):
            ray.get([self.server.f.remote(i) for i in range(n)])
            return n

    scale = 0.3 if quick else 1.0
    res: dict = {}

    def rate(fn, n: int) -> float:
        t0 = time.perf_counter()
        fn(n)
        return n / (time.perf_counter() - t0)

    a = Echo.remote()
    ray.get([a.f.remote() for _ in range(200)])

    def sync_calls(n: int) -> None:
        for _ in range(n):
            ray.get(a.f.remote())

    res["sync_1_1"] = max(rate(sync_calls, int(2000 * scale)) for _ in range(2))
    res["async_1_1"] = max(
        rate(lambda n: ray.get([a.f.remote() for _ in range(n)]), int(10000 * scale))
        for _ in range(2)
    )
    n_act = 4
    many = [Echo.remote() for _ in range(n_act)]
    ray.get([m.f.remote() for m in many])

    def one_to_n(n: int) -> None:
        ray.get([many[i % n_act].f.remote() for i in range(n)])

    res["async_1_n"] = max(rate(one_to_n, int(10000 * scale)) for _ in range(2))
    servers = [Echo.remote() for _ in range(2)]
    clients = [Client.remote(s) for s in servers]
    ray.get([c.run.remote(10) for c in clients])

    def n_to_n(n: int) -> None:
        ray.get([c.run.remote(n // len(clients)) for c in clients])

    res["async_n_n"] = max(rate(n_to_n, int(10000 * scale)) for _ in range(2))
    aa = AsyncEcho.remote()
    ray.get([aa.f.remote() for _ in range(200)])
    res["async_actor"] = max(
        rate(lambda n: ray.get([aa.f.remote() for _ in range(n)]), int(10000 * scale))
        for _ in range(2)
    )
    for h in [a, aa, *many, *servers, *clients]:
        ray.kill(h)
    a = aa = h = None
    many, servers, clients = [], [], []
    time.sleep(1.0)

    n_create = int(20 * scale) or 4
    before = _cluster_rss_kb(ray, backend)
    t0 = time.perf_counter()
    created = [Echo.remote() for _ in range(n_create)]
    ray.get([c.f.remote() for c in created])
    res["create_rate"] = n_create / (time.perf_counter() - t0)
    time.sleep(0.5)
    res["mb_per_actor"] = (_cluster_rss_kb(ray, backend) - before) / 1024 / n_create
    for c in created:
        ray.kill(c)
    del created
    if backend == "actorcore" and light:
        time.sleep(1.0)
        first = Echo.options(placement="shared").remote()
        ray.get(first.f.remote())  # the shared process is up
        before = _cluster_rss_kb(ray, backend)
        t0 = time.perf_counter()
        lights = [Echo.options(placement="shared").remote() for _ in range(light - 1)]
        ray.get([x.f.remote() for x in lights])
        res["light_create_rate"] = light / (time.perf_counter() - t0)
        time.sleep(0.5)
        res["light_kb_per_actor"] = (_cluster_rss_kb(ray, backend) - before) / (light - 1)
        res["light_n"] = light
        t0 = time.perf_counter()
        ray.get([x.f.remote() for x in lights])
        res["light_calls_per_s"] = len(lights) / (time.perf_counter() - t0)
    ray.shutdown()
    return res


CASES = [
    ("1:1 actor calls sync", "sync_1_1"),
    ("1:1 actor calls async", "async_1_1"),
    ("1:n actor calls async (n=4)", "async_1_n"),
    ("n:n actor calls async (n=2)", "async_n_n"),
    ("1:1 async-actor calls async", "async_actor"),
    ("actor creation (process each)", "create_rate"),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["actorcore", "ray"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--light", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="run both backends N times, alternating: each rate's median and "
                        "range, and the range of the per-run ratios")
    args = p.parse_args()
    if args.backend:
        print("RESULT " + json.dumps(run_backend(args.backend, args.quick, args.light)),
              flush=True)
        return
    if args.runs > 1:
        _many_runs(args)
        return
    results = run_backends(
        __file__, ["--light", str(args.light)], quick=args.quick, no_ray=args.no_ray, timeout=1200
    )
    ac, ry = results.get("actorcore", {}), results.get("ray", {})
    print(f"{'case (per second)':<34} {'actorcore':>12} {'ray':>12} {'ratio':>8}")
    for label, key in CASES:
        a, r = ac.get(key), ry.get(key)
        ratio = f"{a / r:.2f}x" if a and r else "-"
        fa = f"{a:,.0f}" if a is not None else "-"
        fr = f"{r:,.0f}" if r is not None else "-"
        print(f"{label:<34} {fa:>12} {fr:>12} {ratio:>8}")
    a, r = ac.get("mb_per_actor"), ry.get("mb_per_actor")
    if a is not None:
        print(f"memory per process-backed actor: actorcore {a:.1f} MB, "
              f"ray {r:.1f} MB" if r is not None else f"memory per actor: {a:.1f} MB")
    if "light_kb_per_actor" in ac:
        print(f"lightweight actors ({ac['light_n']:,} in one shared process): "
              f"{ac['light_create_rate']:,.0f} created/s, "
              f"{ac['light_kb_per_actor']:.0f} KB per actor, "
              f"{ac['light_calls_per_s']:,.0f} calls/s (one call to each)")
    print("ratio = actorcore rate / ray rate (higher is better for actorcore)")


def _many_runs(args: argparse.Namespace) -> None:
    import os
    import statistics

    runs = []
    for i in range(args.runs):
        runs.append(run_backends(__file__, ["--light", str(args.light)], quick=args.quick,
                                 no_ray=args.no_ray, timeout=1200))
        print(f"run {i + 1} of {args.runs} done (load average {os.getloadavg()[0]:.1f})",
              flush=True)
    print(f"{'case (per second)':<34} {'actorcore median [range]':>26} "
          f"{'ray median [range]':>24} {'ratio':>7} {'per run':>12}")
    for label, key in CASES:
        a = [r["actorcore"][key] for r in runs if key in r.get("actorcore", {})]
        y = [r["ray"][key] for r in runs if key in r.get("ray", {})]
        per_run = [r["actorcore"][key] / r["ray"][key] for r in runs
                   if r.get("actorcore", {}).get(key) and r.get("ray", {}).get(key)]

        def fmt(v: list[float]) -> str:
            return f"{statistics.median(v):,.0f} [{min(v):,.0f}-{max(v):,.0f}]" if v else "-"

        ratio = f"{statistics.median(a) / statistics.median(y):.2f}x" if a and y else "-"
        spread = f"{min(per_run):.2f}-{max(per_run):.2f}x" if per_run else "-"
        print(f"{label:<34} {fmt(a):>26} {fmt(y):>24} {ratio:>7} {spread:>12}")
    print("ratio = actorcore rate / ray rate (higher is better for actorcore)")


if __name__ == "__main__":
    main()
