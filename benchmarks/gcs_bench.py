"""GCS benchmark: pipelined throughput, latency, shard scaling, failover stall,
coordinator restart stall.

    .venv/bin/python benchmarks/gcs_bench.py [--quick] [--ray]

With ``--ray`` it also times Ray's GCS key-value calls (``internal_kv`` put/get,
sequential, 100-byte values; /work/rayenv/bin/python) beside ours with R=1.

Every replica runs in its own process (as with R >= 2 in a real cluster); the
client and the coordinator share this process. Figures go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import sys
import threading
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gcs  # noqa: E402

TOKEN = b"gcs-bench"


def _specs(spec):  # type: ignore[no-untyped-def]
    """The GCS plan as kernel child specs (what the node does)."""
    from actorcore.kernel import ChildSpec, Supervisor

    if spec.factory is not None:
        return ChildSpec(spec.name, spec.factory, kind=spec.kind)
    return Supervisor.spec(spec.name, [_specs(c) for c in spec.children],
                           strategy=spec.strategy, max_restarts=spec.max_restarts,
                           max_seconds=spec.max_seconds)


class _Gcs:
    """A GCS under a kernel supervisor, as in a node."""

    def __init__(self, plan, root):  # type: ignore[no-untyped-def]
        self.plan = plan
        self.root = root

    @property
    def coordinator(self):  # type: ignore[no-untyped-def]
        return self.plan.coordinator

    def replicas(self):  # type: ignore[no-untyped-def]
        config = self.plan.config
        return [self.root.find(f"gcs/shard_{s}/replica_{j}")
                for s in range(config.shards) for j in range(config.replicas)]


async def _with_gcs(config: gcs.GcsConfig, body):  # type: ignore[no-untyped-def]
    from actorcore.kernel import Supervisor

    plan = gcs.plan(config, TOKEN)
    root = Supervisor("node", [_specs(plan.tree)])
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        address = await plan.wait_ready(30)
        async with gcs.open_client(address, TOKEN, timeout=30) as client:
            result = await body(client, _Gcs(plan, root))
        nursery.cancel_scope.cancel()
    return result


async def _pipelined(client: gcs.GcsClient, n: int, concurrency: int, op: str) -> float:
    value = b"x" * 100
    keys = [f"key-{i}" for i in range(n)]

    async def worker(start: int) -> None:
        for i in range(start, n, concurrency):
            if op == "put":
                await client.put("kv", keys[i], value)
            else:
                await client.get("kv", keys[i])

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(concurrency):
            nursery.start_soon(worker, w)
    return n / (time.perf_counter() - t0)


async def _latency(client: gcs.GcsClient, n: int, op: str) -> tuple[float, float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        if op == "put":
            await client.put("kv", f"lat-{i}", i)
        else:
            await client.get("kv", f"lat-{i}")
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


async def throughput(replicas: int, n: int, concurrency: int) -> None:
    async def body(client, service):  # type: ignore[no-untyped-def]
        await _pipelined(client, 2000, concurrency, "put")  # warm up
        # best of 3: the machine is shared (2 cores), the best run is the least disturbed
        put = max([await _pipelined(client, n, concurrency, "put") for _ in range(3)])
        get = max([await _pipelined(client, n, concurrency, "get") for _ in range(3)])
        put_lat = await _latency(client, 2000, "put")
        get_lat = await _latency(client, 2000, "get")
        print(f"  R={replicas}: pipelined put {put:9,.0f}/s  get {get:9,.0f}/s   "
              f"latency put p50 {put_lat[0]:5.0f} us p99 {put_lat[1]:5.0f} us, "
              f"get p50 {get_lat[0]:5.0f} us p99 {get_lat[1]:5.0f} us")

    await _with_gcs(gcs.GcsConfig(shards=1, replicas=replicas, processes=True), body)


async def shard_scaling(shards: int, replicas: int, n: int, concurrency: int) -> None:
    async def body(client, service):  # type: ignore[no-untyped-def]
        await _pipelined(client, 2000, concurrency, "put")
        put = max([await _pipelined(client, n, concurrency, "put") for _ in range(3)])
        print(f"  S={shards} R={replicas}: pipelined put {put:9,.0f}/s")

    await _with_gcs(gcs.GcsConfig(shards=shards, replicas=replicas, processes=True), body)


def _sigkill_replica(service, position: int,  # type: ignore[no-untyped-def]
                     exited: list[float] | None = None) -> float:
    """SIGKILL the replica at ``position`` of shard 0's chain (0: head); the time.

    With ``exited`` (a list), the time the process was gone -- the kernel ran its
    exit, which closes its sockets -- is appended to it, from a thread that waits on
    the process's pidfd (Linux; the GIL may add up to a switch interval).
    """
    name = service.coordinator.chain(0).chain[position]
    target = next(s for s in service.replicas() if s.name == name)
    watcher = None
    if exited is not None and hasattr(os, "pidfd_open"):
        fd = os.pidfd_open(target.pid)

        def wait_exit() -> None:
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            poll.poll(5000)
            exited.append(time.perf_counter())
            os.close(fd)

        watcher = threading.Thread(target=wait_exit, daemon=True)
        watcher.start()
    killed = time.perf_counter()
    os.kill(target.pid, signal.SIGKILL)
    return killed


async def failover(victim: int, writers: int) -> None:
    names = {0: "head", 1: "middle", 2: "tail"}

    async def body(client, service):  # type: ignore[no-untyped-def]
        samples: list[tuple[float, float]] = []
        writing = True

        async def write(w: int) -> None:
            i = 0
            while writing:
                t0 = time.perf_counter()
                await client.put("kv", f"f{w}", i)
                samples.append((t0, time.perf_counter() - t0))
                i += 1

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(write, w)
            await trio.sleep(1.0)
            coordinator = service.coordinator
            killed = _sigkill_replica(service, victim)
            await trio.sleep(0.05)
            await coordinator.wait_ready(30)
            healed = time.perf_counter()
            await trio.sleep(1.0)
            writing = False
        before = [d for t, d in samples if t < killed - 0.1]
        worst = max(d for t, d in samples if killed - 0.1 <= t <= killed + 0.5)
        # the longest time with no write completing, in the window after the kill
        ends = sorted(t + d for t, d in samples if t + d >= killed)
        gap = max(b - a for a, b in zip([killed, *ends], ends, strict=False))
        print(f"  kill {names[victim]:6}: max write latency {worst * 1e3:6.1f} ms "
              f"(normal p50 {statistics.median(before) * 1e3:.2f} ms), no write completed for "
              f"{gap * 1e3:6.1f} ms after SIGKILL; replacement in chain after "
              f"{(healed - killed) * 1e3:.0f} ms; writes/s during run "
              f"{len(samples) / (samples[-1][0] - samples[0][0]):,.0f}")

    await _with_gcs(gcs.GcsConfig(shards=1, replicas=3), body)


async def failover_series(kills: int, writers: int, timeline: list[str] | None = None,
                          settle: bool = True) -> dict[str, list[float]]:
    """SIGKILL a replica of a 3-replica chain ``kills`` times (head, middle, tail in
    turn) under ``writers`` writers, in one GCS: after each kill, wait until the
    replacement is in the chain again, then 0.3 s more. The stall of a kill is the
    longest time with no write completing from the kill until 0.5 s after it; p50
    and worst are printed per victim and over all kills (the paper: < 30 ms).

    Beside it, per kill: the gap of the failover itself (the one around the moment
    the coordinator cut the victim out: it ends with the first write completed
    through the repaired chain), and the longest gap in the 0.5 s before the kill
    (the machine's own noise, with nothing failing), and the longest gap around the
    moment the replacement became the tail, and the longest gap of the whole join
    (from 50 ms after the cut until 0.25 s after the promotion: state transfer,
    catching up, promotion).

    With ``settle`` each kill also waits until a spare replica process is ready
    again (``GcsConfig.spare_replicas``; the replacement of the previous kill took
    the last one, and its successor imports at idle priority): every kill then
    finds the GCS as the first one did. ``--no-settle`` kills at the old cadence,
    when a spare may still be importing (the replacement is spawned then).

    With ``timeline`` (a list), one line per kill is appended to it: the stall,
    where it lay (ms after the kill), when the coordinator cut the victim out and
    when the chain was whole again."""
    names = {0: "head", 1: "middle", 2: "tail"}
    gaps: dict[str, list[float]] = {n: [] for n in names.values()}
    repairs: dict[str, list[float]] = {n: [] for n in names.values()}
    floors: dict[str, list[float]] = {n: [] for n in names.values()}
    joins: dict[str, list[float]] = {n: [] for n in names.values()}
    joins_all: dict[str, list[float]] = {n: [] for n in names.values()}

    async def body(client, service):  # type: ignore[no-untyped-def]
        ends: list[float] = []
        writing = True

        async def write(w: int) -> None:
            i = 0
            while writing:
                await client.put("kv", f"f{w}", i)
                ends.append(time.perf_counter())
                i += 1

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(write, w)
            await trio.sleep(0.5)
            coordinator = service.coordinator
            taken = 0
            if settle and service.plan.spares.statistics().wanted:
                with trio.fail_after(60):
                    await service.plan.spares.wait_ready()
            for k in range(kills):
                victim = k % 3
                start = len(ends)
                name = coordinator.chain(0).chain[victim]
                cut: list[float] = []

                promoted = trio.Event()

                async def note_cut(name: str = name, cut: list[float] = cut,
                                   promoted: trio.Event = promoted, *,
                                   task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
                    task_status.started()
                    await coordinator.wait_removed(name)
                    cut.append(time.perf_counter())
                    await coordinator.wait_ready(30)  # the replacement promoted
                    cut.append(time.perf_counter())
                    promoted.set()

                await nursery.start(note_cut)
                exited: list[float] = []
                killed = _sigkill_replica(service, victim, exited)
                await trio.sleep(0.5)
                await coordinator.wait_ready(30)
                ready = time.perf_counter()
                await promoted.wait()
                whole = cut[1]
                await trio.sleep(0.3)
                spares = service.plan.spares
                took_spare = spares.statistics().taken > taken
                taken = spares.statistics().taken
                if settle and spares.statistics().wanted:
                    # The next kill finds the GCS as it was before this one: a
                    # spare ready again (it imports at idle priority meanwhile).
                    with trio.fail_after(60):
                        await spares.wait_ready()
                after = [t for t in ends[start:] if killed <= t <= killed + 0.5]
                gap = max(b - a for a, b in zip([killed, *after], [*after, killed + 0.5],
                                                strict=True))
                gaps[names[victim]].append(gap * 1e3)
                done_before_cut = [t for t in after if t <= cut[0]]
                first_after_cut = next((t for t in after if t > cut[0]), killed + 0.5)
                repairs[names[victim]].append(
                    (first_after_cut - max([killed, *done_before_cut])) * 1e3)
                quiet = [t for t in ends[:start] if killed - 0.25 <= t <= killed]
                floors[names[victim]].append(
                    max(b - a for a, b in zip([killed - 0.25, *quiet], [*quiet, killed],
                                              strict=True)) * 1e3)
                # The replacement's join: from 50 ms after the cut (the failover's
                # own gap is over) until 0.25 s after its promotion -- state
                # transfer, catching up, the promotion, wherever they fall.
                joining = [t for t in ends[start:] if cut[0] + 0.05 <= t <= whole + 0.25]
                joins_all[names[victim]].append(
                    max(b - a for a, b in zip([cut[0] + 0.05, *joining],
                                              [*joining, whole + 0.25], strict=True)) * 1e3)
                joined = [t for t in ends[start:] if ready - 0.05 <= t <= ready + 0.25]
                joins[names[victim]].append(
                    max(b - a for a, b in zip([ready - 0.05, *joined], [*joined, ready + 0.25],
                                              strict=True)) * 1e3)
                if timeline is not None:
                    points = [killed, *after, killed + 0.5]
                    where = max(range(len(points) - 1), key=lambda i: points[i + 1] - points[i])
                    timeline.append(
                        f"  kill {k:2} {names[victim]:6}: stall {gap * 1e3:5.1f} ms from "
                        f"+{(points[where] - killed) * 1e3:5.1f} ms; victim gone at "
                        f"{f'+{(exited[0] - killed) * 1e3:5.1f}' if exited else '    ?'} ms; cut at "
                        f"+{(cut[0] - killed) * 1e3:5.1f} ms; chain whole again at "
                        f"+{(whole - killed) * 1e3:5.0f} ms; its join's longest gap "
                        f"{joins_all[names[victim]][-1]:5.1f} ms"
                        f"{'' if took_spare else ' (no spare)'}; t0 {killed:.6f}")
            writing = False

    await _with_gcs(gcs.GcsConfig(shards=1, replicas=3), body)
    everything = sorted(g for v in gaps.values() for g in v)
    for name, values in gaps.items():
        print(f"  kill {name:6} x{len(values)}: no write completed for p50 "
              f"{statistics.median(values):5.1f} ms, worst {max(values):5.1f} ms "
              f"({', '.join(f'{g:.0f}' for g in values)})")
    print(f"  all {len(everything)} kills: p50 {statistics.median(everything):5.1f} ms, "
          f"worst {everything[-1]:5.1f} ms")
    for what, series in (("the failover's own gap", repairs),
                         ("longest gap in the 0.25 s before the kill", floors),
                         ("longest gap around the replacement's promotion to tail "
                          "(0.05 s before to 0.25 s after)", joins),
                         ("longest gap of the replacement's join (0.05 s after the cut "
                          "to 0.25 s after its promotion)", joins_all)):
        print(f"  {what}:")
        for name, values in series.items():
            print(f"    {name:6} p50 {statistics.median(values):5.1f} ms, worst "
                  f"{max(values):5.1f} ms")
        every = sorted(g for v in series.values() for g in v)
        print(f"    all    p50 {statistics.median(every):5.1f} ms, worst {every[-1]:5.1f} ms")
    return gaps


async def coordinator_restart(replicas: int, writers: int, kill_tail: bool) -> None:
    """Crash the coordinator with the kernel's fault hook (as `faults.crash` does)
    under ``writers`` writers and as many readers; with ``kill_tail`` the shard's
    tail is SIGKILLed right after the crash, while the new coordinator recovers."""
    from actorcore.kernel import Supervisor

    plan = gcs.plan(gcs.GcsConfig(shards=1, replicas=replicas), TOKEN)
    root = Supervisor("node", [_specs(plan.tree)])
    async with trio.open_nursery() as outer:
        await outer.start(root.run)
        address = await plan.wait_ready(30)
        async with gcs.open_client(address, TOKEN, timeout=30) as client:
            samples: list[tuple[float, float]] = []
            reads: list[tuple[float, float]] = []
            writing = True

            async def write(w: int) -> None:
                i = 0
                while writing:
                    t0 = time.perf_counter()
                    await client.put("kv", f"c{w}", i)
                    samples.append((t0, time.perf_counter() - t0))
                    i += 1

            async def read(w: int) -> None:
                while writing:
                    t0 = time.perf_counter()
                    await client.get("kv", f"c{w}")
                    reads.append((t0, time.perf_counter() - t0))

            async with trio.open_nursery() as nursery:
                for w in range(writers):
                    nursery.start_soon(write, w)
                    nursery.start_soon(read, w)
                await trio.sleep(1.0)
                gcs_sup = root.find("gcs")
                tail = plan.coordinator.chain(0).chain[-1]
                crashed = time.perf_counter()
                gcs_sup.crash_child("coordinator")
                if kill_tail:
                    victim = next(root.find(f"gcs/shard_0/replica_{j}") for j in range(replicas)
                                  if root.find(f"gcs/shard_0/replica_{j}").name == tail)
                    os.kill(victim.pid, signal.SIGKILL)
                await gcs_sup.wait_running("coordinator", restarts=1, timeout=30)
                await plan.coordinator.wait_recovered(30)
                recovered = time.perf_counter()
                await trio.sleep(1.0)
                writing = False
            before = [d for t, d in samples if t < crashed - 0.1]

            def gap(events: list[tuple[float, float]], since: float = crashed) -> float:
                ends = sorted(t + d for t, d in events if since <= t + d <= since + 0.9)
                return max(b - a for a, b in zip([since, *ends], ends, strict=False))

            worst = max(d for t, d in samples if crashed - 0.1 <= t <= recovered + 0.5)
            what = "crash + SIGKILL tail" if kill_tail else "crash"
            print(f"  R={replicas} {what:20}: recovered after {(recovered - crashed) * 1e3:5.0f} ms; "
                  f"max write latency {worst * 1e3:6.1f} ms (normal p50 "
                  f"{statistics.median(before) * 1e3:.2f} ms); longest time with no write "
                  f"completing {gap(samples) * 1e3:6.1f} ms, no read {gap(reads) * 1e3:6.1f} ms "
                  f"(in the second before: {gap(samples, crashed - 0.95) * 1e3:.1f} / "
                  f"{gap(reads, crashed - 0.95) * 1e3:.1f} ms)")
        outer.cancel_scope.cancel()


RAY_PYTHON = "/work/rayenv/bin/python"
RAY_SCRIPT = """
import json, statistics, time, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
from ray.experimental import internal_kv as kv
def lat(fn, n):
    s = []
    for i in range(n):
        t = time.perf_counter(); fn(i); s.append(time.perf_counter() - t)
    s.sort()
    return statistics.median(s) * 1e6, s[int(len(s) * 0.99)] * 1e6
for i in range(200):
    kv._internal_kv_put(f"w{i}", b"x" * 100)
put = lat(lambda i: kv._internal_kv_put(f"lat-{i}", b"x" * 100), 2000)
get = lat(lambda i: kv._internal_kv_get(f"lat-{i}"), 2000)
print(json.dumps({"put": put, "get": get}))
ray.shutdown()
"""


async def ray_latency() -> None:
    out = await trio.run_process([RAY_PYTHON, "-c", RAY_SCRIPT], capture_stdout=True,
                                 capture_stderr=True)
    ray = json.loads(out.stdout.decode().strip().splitlines()[-1])

    async def body(client, service):  # type: ignore[no-untyped-def]
        await _pipelined(client, 2000, 64, "put")
        return await _latency(client, 2000, "put"), await _latency(client, 2000, "get")

    put, get = await _with_gcs(gcs.GcsConfig(shards=1, replicas=1, processes=True), body)
    print("Beside Ray's GCS (internal_kv, sequential, p50 / p99):")
    for what, ours, theirs in (("put", put, ray["put"]), ("get", get, ray["get"])):
        print(f"  {what}: actorcore R=1 {ours[0]:5.0f} / {ours[1]:5.0f} us   Ray "
              f"{theirs[0]:5.0f} / {theirs[1]:5.0f} us   ratio {theirs[0] / ours[0]:.1f}x")


async def main(quick: bool, with_ray: bool, kills: int, verbose: bool, settle: bool) -> None:
    if kills:
        print(f"Failover: {kills} SIGKILLs of a replica of a 3-replica chain under 16 writers:")
        timeline: list[str] | None = [] if verbose else None
        await failover_series(kills, 16, timeline, settle)
        if timeline:
            print("Per kill:")
            print("\n".join(timeline))
        return
    n = 20_000 if quick else 100_000
    concurrency = 256
    print(f"GCS benchmark ({os.cpu_count()} cores, {concurrency} concurrent callers, 100-byte values)")
    print("One shard, pipelined throughput and sequential latency:")
    for replicas in (1, 3):
        await throughput(replicas, n, concurrency)
    print("Throughput as shards grow (one client process):")
    for shards in (1, 2, 4):
        await shard_scaling(shards, 1, n, concurrency)
    await shard_scaling(2, 3, n, concurrency)
    print("Failover: SIGKILL one replica of a 3-replica chain under 16 writers:")
    for victim in (0, 1, 2):
        await failover(victim, 16)
    print("Coordinator restart under 16 writers and 16 readers (kernel crash_child):")
    for replicas in (2, 3):
        await coordinator_restart(replicas, 16, kill_tail=False)
    await coordinator_restart(3, 16, kill_tail=True)
    if with_ray:
        await ray_latency()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ray", action="store_true")
    parser.add_argument("--kills", type=int, default=0,
                        help="only the failover series: this many SIGKILLs of a replica")
    parser.add_argument("--timeline", action="store_true",
                        help="with --kills: one line per kill (where its stall lay)")
    parser.add_argument("--no-settle", action="store_true",
                        help="with --kills: do not wait for a spare replica between kills")
    args = parser.parse_args()
    trio.run(main, args.quick, args.ray, args.kills, args.timeline, not args.no_settle)
