"""A task taking a 100 MB numpy array by ref, on actorcore and on Ray in the same run.

    .venv/bin/python benchmarks/large_arg_bench.py [--no-ray] [--quick]

Cases (median of N rounds, after one warm-up round):
- ``put``: ``put`` of a 100 MB float64 array;
- ``task(ref)``: a task that takes that ref as its argument and reads one element
  (on one node the worker maps the object zero-copy: no 100 MB copy);
- ``task(ref) sum``: the same task summing the whole array (touches every byte);
- ``task returns 100 MB``: a task that returns a new 100 MB array, then ``get``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _common import init_backend, run_backends

MB = 1 << 20


def measure(backend: str, rounds: int) -> dict[str, float]:
    import numpy as np

    ray = init_backend(backend)

    @ray.remote
    def first(a):
        return float(a[0])

    @ray.remote
    def total(a):
        return float(a.sum())

    @ray.remote
    def make(n):
        return np.ones(n // 8)

    array = np.ones(100 * MB // 8)
    out: dict[str, list[float]] = {"put": [], "task(ref)": [], "task(ref) sum": [],
                                   "task returns 100 MB": []}
    for i in range(rounds + 1):
        t = time.perf_counter()
        ref = ray.put(array)
        put = time.perf_counter() - t
        t = time.perf_counter()
        assert ray.get(first.remote(ref)) == 1.0
        one = time.perf_counter() - t
        t = time.perf_counter()
        ray.get(total.remote(ref))
        summed = time.perf_counter() - t
        t = time.perf_counter()
        made = ray.get(make.remote(100 * MB))
        returned = time.perf_counter() - t
        del ref, made
        if i:  # the first round warms up workers and pages
            out["put"].append(put)
            out["task(ref)"].append(one)
            out["task(ref) sum"].append(summed)
            out["task returns 100 MB"].append(returned)
    ray.shutdown()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["actorcore", "ray"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    if args.backend:
        print("RESULT " + json.dumps(measure(args.backend, rounds)))
        return
    results = run_backends(__file__, [], quick=args.quick, no_ray=args.no_ray, timeout=600)
    ours, theirs = results.get("actorcore", {}), results.get("ray", {})
    print(f"{'case (100 MB float64)':<24}{'actorcore':>12}{'Ray':>12}{'ratio':>9}")
    for case, t in ours.items():
        r = theirs.get(case)
        ratio = f"{r / t:8.1f}x" if r else ""
        ray_ms = f"{r * 1e3:9.1f} ms" if r else ""
        print(f"{case:<24}{t * 1e3:9.1f} ms{ray_ms:>12}{ratio}")
    print("ratio = Ray's time / ours (>1: actorcore is faster)")


if __name__ == "__main__":
    main()
