"""Object store benchmarks, beside Ray's in the same run (``--ray``).

    .venv/bin/python benchmarks/store_bench.py [--ray] [--quick]

Cases: memcpy of 100 MB on this machine (the ceiling); put of a 100 MB numpy array
(cold: arena pages touched for the first time; warm: pages reused, the steady state);
the same put from a thread as a driver's, with its create round trip and into blocks
lent ahead (``StoreClient.lend_for``), beside a memcpy measured between the two;
get of it (round trip + zero-copy rebuild, and with a live view: no round trip) for
1/10/100 MB to show it is constant time; 10,000 small puts and gets; spill and
restore MB/s beside this disk's write and read speed. With ``--ray``, the same cases
run on Ray (``$RAY_PYTHON``, else /work/rayenv/bin/python) and the ratios are printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import store  # noqa: E402

MB = 1 << 20
SIZE = 100 * MB
RAY_PYTHON = os.environ.get("RAY_PYTHON", "/work/rayenv/bin/python")
TOKEN = b"store-bench"


def memcpy_gbps(array: np.ndarray) -> float:
    dst = np.empty_like(array)
    dst[:] = 1
    best = min(_timed(lambda: np.copyto(dst, array)) for _ in range(5))
    return array.nbytes / best / 1e9


def disk_speed(directory: str, nbytes: int) -> tuple[float, float]:
    """Write (no fsync, like spilling) and read-back MB/s of one file."""
    data = np.random.randint(0, 255, nbytes, dtype=np.uint8)
    path = os.path.join(directory, "disk-speed.tmp")
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        f.write(memoryview(data))
    t1 = time.perf_counter()
    dest = bytearray(nbytes)
    with open(path, "rb", buffering=0) as f:
        f.readinto(dest)
    t2 = time.perf_counter()
    os.unlink(path)
    return nbytes / (t1 - t0) / MB, nbytes / (t2 - t1) / MB


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


SERVICE_SCRIPT = r"""
import sys, trio
sys.path.insert(0, sys.argv[4])
import store
async def main():
    service = store.ObjectStoreService(sys.argv[1], b"store-bench", capacity=int(sys.argv[2]), spill_dir=sys.argv[3])
    async with trio.open_nursery() as nursery:
        print(await nursery.start(service.run), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes stdin
        nursery.cancel_scope.cancel()
trio.run(main)
"""


def bench_ours(quick: bool) -> dict[str, float]:
    """The store service runs in its own process (as in a node); the client here."""
    tmp = tempfile.mkdtemp(prefix="store-bench-")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE_SCRIPT, f"unix:{tmp}/store.sock", str(1024 * MB),
         f"{tmp}/spill", repo],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        address = proc.stdout.readline().strip()
        results = trio.run(_bench_client, address, quick)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)
    w, r = disk_speed(tmp, 1024 * MB)
    results["disk_write_MBps"] = w
    results["disk_read_MBps"] = r
    os.rmdir(f"{tmp}/spill")
    os.rmdir(tmp)
    return results


async def _thread_puts(client, array, results: dict[str, float], count: int) -> None:
    blocking = store.BlockingStoreClient(client)
    dst = np.empty_like(array)
    dst[:] = 1

    def puts(label: bytes) -> list[float]:
        times = []
        for i in range(count + 1):
            oid = label + b"%d" % i
            t0 = time.perf_counter()
            blocking.put(oid, array)
            times.append(time.perf_counter() - t0)
            blocking.remove_ref(oid)
        return times[1:]  # the first maps its block in

    created = await trio.to_thread.run_sync(puts, b"created:")
    copies = [_timed(lambda: np.copyto(dst, array)) for _ in range(5)]
    await client.lend_for(b"lent:")
    lent = await trio.to_thread.run_sync(puts, b"lent:")
    results["put_100MB_thread_create_ms"] = statistics.median(created) * 1e3
    results["put_100MB_thread_lent_ms"] = statistics.median(lent) * 1e3
    results["memcpy_100MB_ms"] = statistics.median(copies) * 1e3


async def _bench_client(address: str, quick: bool) -> dict[str, float]:
    results: dict[str, float] = {}
    array = np.random.randint(0, 255, SIZE, dtype=np.uint8)
    client = await store.StoreClient.connect(address, TOKEN)

    # put of 100 MB: the first one faults fresh pages, then they are reused.
    puts = []
    for i in range(3 if quick else 8):
        t0 = time.perf_counter()
        await client.put(b"big%d" % i, array)
        puts.append(time.perf_counter() - t0)
        await client.remove_ref(b"big%d" % i)
    results["put_100MB_cold_GBps"] = SIZE / puts[0] / 1e9
    results["put_100MB_warm_GBps"] = SIZE / statistics.median(puts[1:]) / 1e9

    # put of 100 MB from a thread, as a driver's: a create round trip before the
    # copy, then into blocks the store lent ahead (`StoreClient.lend_for`); a memcpy
    # of 100 MB in between, the floor. Medians, ms.
    await _thread_puts(client, array, results, 3 if quick else 8)

    # get: round trip + zero-copy rebuild; then again while a view lives.
    for size in (MB, 10 * MB, SIZE):
        oid = b"get%d" % size
        await client.put(oid, array[:size])
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            value = await client.get(oid)
            times.append(time.perf_counter() - t0)
            del value
        results[f"get_{size // MB}MB_us"] = statistics.median(times) * 1e6
        held = await client.get(oid)
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            await client.get(oid)
            times.append(time.perf_counter() - t0)
        results[f"get_{size // MB}MB_held_us"] = statistics.median(times) * 1e6
        assert not held.flags.writeable
        other = await store.StoreClient.connect(address, TOKEN)  # another process' view
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            value = await other.get(oid)
            times.append(time.perf_counter() - t0)
            del value
        await other.aclose()
        results[f"get_{size // MB}MB_other_client_us"] = statistics.median(times) * 1e6
        del held
        gc.collect()
        await client.remove_ref(oid)

    # 10,000 small puts and gets (this client's own small objects are cached;
    # a second client measures the get round trip).
    n = 2000 if quick else 10_000
    t0 = time.perf_counter()
    for i in range(n):
        await client.put(b"small%d" % i, i)
    t1 = time.perf_counter()
    for i in range(n):
        await client.get(b"small%d" % i)
    t2 = time.perf_counter()
    other = await store.StoreClient.connect(address, TOKEN)
    for i in range(n):
        await other.get(b"small%d" % i)
    t3 = time.perf_counter()
    await other.aclose()
    results["small_put_us"] = (t1 - t0) / n * 1e6
    results["small_get_us"] = (t2 - t1) / n * 1e6
    results["small_get_other_client_us"] = (t3 - t2) / n * 1e6
    for i in range(n):
        await client.remove_ref(b"small%d" % i)

    # Spill: 16 x 100 MB through a 1 GiB store (refs held, no views); restore all.
    count = 14 if quick else 16
    t0 = time.perf_counter()
    for i in range(count):
        await client.put(b"sp%d" % i, array)
    t1 = time.perf_counter()
    for i in range(count):
        value = await client.get(b"sp%d" % i)
        del value
        gc.collect()
    t2 = time.perf_counter()
    stats = await client.store_statistics()
    results["put_with_spill_total_s"] = t1 - t0
    results["restore_all_s"] = t2 - t1
    results["spilled_MB"] = stats.spill_bytes_written / MB
    results["spill_MBps"] = stats.spill_bytes_written / MB / max(stats.spill_seconds, 1e-9)
    results["restore_MBps"] = stats.restore_bytes_read / MB / max(stats.restore_seconds, 1e-9)
    for i in range(count):
        await client.remove_ref(b"sp%d" % i)
    await client.aclose()
    return results


RAY_SCRIPT = r"""
import gc, json, statistics, sys, time
import numpy as np, ray
quick = sys.argv[1] == "1"
MB = 1 << 20; SIZE = 100 * MB
ray.init(num_cpus=2, object_store_memory=1024 * MB, include_dashboard=False, logging_level="ERROR")
out = {}
array = np.random.randint(0, 255, SIZE, dtype=np.uint8)
puts = []
for i in range(3 if quick else 8):
    t0 = time.perf_counter(); r = ray.put(array); puts.append(time.perf_counter() - t0); del r
out["put_100MB_cold_GBps"] = SIZE / puts[0] / 1e9
out["put_100MB_warm_GBps"] = SIZE / statistics.median(puts[1:]) / 1e9
for size in (MB, 10 * MB, SIZE):
    r = ray.put(array[:size]); times = []
    for _ in range(20):
        t0 = time.perf_counter(); v = ray.get(r); times.append(time.perf_counter() - t0); del v
    out[f"get_{size // MB}MB_us"] = statistics.median(times) * 1e6
    del r
n = 2000 if quick else 10000
t0 = time.perf_counter(); refs = [ray.put(i) for i in range(n)]; t1 = time.perf_counter()
for r in refs: ray.get(r)
t2 = time.perf_counter()
out["small_put_us"] = (t1 - t0) / n * 1e6; out["small_get_us"] = (t2 - t1) / n * 1e6
del refs
count = 14 if quick else 16
t0 = time.perf_counter(); refs = [ray.put(array) for _ in range(count)]; t1 = time.perf_counter()
out["put_with_spill_total_s"] = t1 - t0
t2 = time.perf_counter()
for r in refs:
    v = ray.get(r); del v
t3 = time.perf_counter()
out["restore_all_s"] = t3 - t2
out["small_get_other_client_us"] = float("nan")
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


def bench_ray(quick: bool) -> dict[str, float] | None:
    if not os.path.exists(RAY_PYTHON):
        print(f"(Ray not found at {RAY_PYTHON})")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(RAY_SCRIPT)
    try:
        proc = subprocess.run(
            [RAY_PYTHON, f.name, "1" if quick else "0"], capture_output=True, text=True, timeout=600
        )
    finally:
        os.unlink(f.name)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print("Ray run failed:\n" + proc.stderr[-2000:])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ray", action="store_true", help="run the same cases on Ray")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    array = np.random.randint(0, 255, SIZE, dtype=np.uint8)
    print(f"memcpy 100 MB on this machine: {memcpy_gbps(array):.2f} GB/s")
    ours = bench_ours(args.quick)
    ray = bench_ray(args.quick) if args.ray else None
    higher_better = {"GBps", "MBps"}
    print(f"{'case':28} {'actorcore':>12} {'ray':>12} {'ratio':>8}")
    for key, value in ours.items():
        other = ray.get(key) if ray else None
        ratio = ""
        if other:
            better = value / other if key.rsplit("_", 1)[-1] in higher_better else other / value
            ratio = f"{better:.2f}x"
        print(f"{key:28} {value:12.2f} {other if other is not None else '':>12} {ratio:>8}"
              if other is None else f"{key:28} {value:12.2f} {other:12.2f} {ratio:>8}")
    if ray:
        for key in ray.keys() - ours.keys():
            print(f"{key:28} {'':>12} {ray[key]:12.2f}")
    print("(ratio: how many times better actorcore is; >1 = faster)")


if __name__ == "__main__":
    main()
