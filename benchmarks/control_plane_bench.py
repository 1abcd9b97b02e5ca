"""Control-plane scale benchmark: 100 simulated nodes on a real GCS.

    .venv/bin/python benchmarks/control_plane_bench.py [--nodes 100] [--shards 1 4]
        [--procs 4] [--seconds 10] [--profile]

The paper (§5.1) reports 1.8 M tasks/s on 100 nodes: that figure is the bottom-up
scheduler's, where every node's local scheduler keeps most work and the global
scheduler and the GCS see only what spills. This benchmark measures the parts of
our control plane that such a cluster leans on, at 100 nodes, on one machine:

- **heartbeat load**: 100 node stand-ins, each with its own GCS client and the
  real `Membership` loop (``actorcore/node/gcs_client/_membership.py``) at the real
  interval (``ACTORCORE_HEARTBEAT_INTERVAL``, default 0.5 s): a heartbeat put, a
  read of the nodes table and of every heartbeat, and on the head the death
  monitor. Reported: GCS operations/s, records read/s, the CPU of the replica
  processes and of this process (the stand-ins), and whether the loops keep their
  interval (rounds per node per second against 1/interval).
- **placements**: the real placement policy (``choose_node``, ``keep_local`` of
  ``actorcore/node/global_scheduler/_placement.py``) over the head stand-in's real
  `ClusterView`, refreshed from the GCS by its own loop while the placements run;
  each placement is accepted by the chosen stand-in (its next heartbeat reports
  the work), so loads move as in a cluster. DEFAULT without and with argument
  locality, SPREAD, NodeAffinity, and the local scheduler's keep_local.
- **lineage writes**: the GCS write every task costs, as the node's lineage
  flusher (``actorcore/node/gcs_client/_control.py``) makes it: ``tasks.add_many``
  batches of 1,000 real ``TaskSpec.lineage_record()`` dicts, each writer one batch
  at a time (as one node's flusher), 1, 4 and 16 writers (nodes) at once.

Each replica runs in its own process (R=1, so the replica is its shard's head and
tail); the coordinator, the head stand-in and the placement loop share this
process. The other stand-ins are spread over ``--procs`` processes (default 4, this
one included) so that decoding 100 nodes' reads does not starve one event loop;
stand-ins of other processes simulate their own load (a random busy fraction at
each heartbeat) instead of hearing of the placements. ``--profile`` prints where
the placement loop's time goes (cProfile).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import random
import subprocess
import sys
import time
from typing import Any

import trio
import trio.lowlevel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gcs  # noqa: E402
from actorcore.node.gcs_client._membership import (  # noqa: E402
    ClusterView,
    Membership,
    heartbeat_interval,
)
from actorcore.node.global_scheduler._placement import (  # noqa: E402
    SPREAD,
    NodeAffinity,
    SpreadState,
    choose_node,
    keep_local,
)
from actorcore.protocol._messages import TaskSpec  # noqa: E402

TOKEN = b"control-plane-bench"
SCRIPT = os.path.abspath(__file__)
CLK = os.sysconf("SC_CLK_TCK")


def _specs(spec):  # type: ignore[no-untyped-def]
    from actorcore.kernel import ChildSpec, Supervisor

    if spec.factory is not None:
        return ChildSpec(spec.name, spec.factory, kind=spec.kind)
    return Supervisor.spec(spec.name, [_specs(c) for c in spec.children],
                           strategy=spec.strategy, max_restarts=spec.max_restarts,
                           max_seconds=spec.max_seconds)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


class StandIn:
    """One simulated node: registered in the real nodes table, heartbeating through
    the real `Membership` loop with its own GCS client, accepting placements."""

    def __init__(self, index: int, head: bool, simulated: bool = False) -> None:
        self.index = index
        self.simulated = simulated
        self.rng = random.Random(index)
        self.node_id = os.urandom(16).hex()
        self.view = ClusterView(self.node_id)
        cpus = 16.0
        self.resources = {"CPU": cpus, "memory": 64e9, **({"GPU": 4.0} if index % 10 == 0 else {})}
        self.running = 0.0  # CPUs taken by accepted placements (they finish each beat)
        self.accepted = 0
        self.membership = Membership(view=self.view, record=self.record, report=self.report,
                                     monitor=head)

    def record(self) -> dict:
        return {
            "node_id": self.node_id,
            "address": None,
            "tcp_address": f"tcp:127.1.{self.index // 250}.{self.index % 250 + 1}:40000",
            "resources": dict(self.resources),
            "alive": True,
            "head": self.membership.monitor,
            "host": "127.0.0.1",
            "pid": os.getpid(),
            "session_dir": f"/tmp/standin-{self.index}",
            "started_at": time.time(),
        }

    def report(self) -> dict:
        cpus = self.resources["CPU"]
        if self.simulated:  # in another process than the placements: its own work
            self.running = self.rng.uniform(0, 1.2 * cpus)
        busy = min(self.running, cpus)
        queued = int(max(0.0, self.running - cpus))
        self.running = 0.0
        return {"available": {**self.resources, "CPU": cpus - busy}, "queued": queued,
                "running": int(busy)}

    def accept(self, cpus: float) -> None:
        self.running += cpus
        self.accepted += 1

    async def run(self) -> None:
        async with gcs.open_client(self.address, TOKEN, timeout=60) as client:
            await self.membership.run(client)


async def _with_gcs(shards: int, body):  # type: ignore[no-untyped-def]
    from actorcore.kernel import Supervisor

    plan = gcs.plan(gcs.GcsConfig(shards=shards, replicas=1, processes=True), TOKEN)
    root = Supervisor("node", [_specs(plan.tree)])
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        address = await plan.wait_ready(60)
        pids = [root.find(f"gcs/shard_{s}/replica_0").pid for s in range(shards)]
        result = await body(address, pids)
        nursery.cancel_scope.cancel()
    return result


async def heartbeat_load(nodes: list[StandIn], pids: list[int], seconds: float,
                         children: Children, n: int) -> dict:
    interval = heartbeat_interval()
    kids0 = children.totals()
    rounds0 = sum(x.membership.seq for x in nodes) + kids0[0]
    cpu0 = [_cpu_seconds(p) for p in pids]
    me0 = time.process_time()
    t0 = time.perf_counter()
    await trio.sleep(seconds)
    wall = time.perf_counter() - t0
    kids = children.totals()
    rounds = sum(x.membership.seq for x in nodes) + kids[0] - rounds0
    replica_cpu = [(_cpu_seconds(p) - c) / wall for p, c in zip(pids, cpu0, strict=True)]
    return {
        "nodes": n,
        "interval_s": interval,
        "rounds_per_node_per_s": round(rounds / wall / n, 3),
        # a round waits ``interval`` after its calls: 1/interval is the ceiling
        "ceiling_rounds_per_node_per_s": 1 / interval,
        # a round: one heartbeat put, one scan of nodes, one scan of heartbeats
        "gcs_ops_per_s": round(3 * rounds / wall),
        "records_read_per_s": round(2 * n * rounds / wall),
        "replica_cpu_pct": [round(100 * c, 1) for c in replica_cpu],
        "replica_cpu_pct_total": round(100 * sum(replica_cpu), 1),
        "replica_cpu_us_per_record_read": round(1e6 * sum(replica_cpu) * wall
                                                / max(1, 2 * n * rounds), 2),
        "standins_cpu_pct": round(100 * ((time.process_time() - me0) + kids[1] - kids0[1])
                                  / wall, 1),
        "declared_dead": nodes[0].membership.declared_dead,
    }


async def placements(nodes: list[StandIn], seconds: float, profile: bool) -> dict:
    head = nodes[0]
    view = head.view
    by_id = {n.node_id: n for n in nodes}
    rng = random.Random(7)
    ids = [n.node_id for n in nodes]
    spread = SpreadState()
    one = {"CPU": 1.0}
    cases: dict[str, Any] = {
        "choose_node DEFAULT": lambda: choose_node(one, None, view),
        "choose_node DEFAULT + locality": lambda: choose_node(
            one, None, view, locality={rng.choice(ids): 4096, rng.choice(ids): 1 << 20}),
        "choose_node DEFAULT, local live figures": lambda: choose_node(
            one, None, view, local_available={"CPU": 3.0, "memory": 64e9}),
        "choose_node SPREAD": lambda: choose_node(one, SPREAD, view, spread=spread),
        "choose_node GPU (1 node in 10)": lambda: choose_node({"GPU": 1.0}, None, view),
        "choose_node NodeAffinity": lambda: choose_node(
            one, NodeAffinity(rng.choice(ids)), view),
        "keep_local": lambda: keep_local(one, None, view, available={"CPU": 12.0},
                                         total=head.resources, queued=0),
    }
    out: dict[str, Any] = {"view_nodes": len(view.alive())}
    prof = cProfile.Profile() if profile else None
    for name, call in cases.items():
        done = 0
        cpu = 0.0  # this process's CPU inside the placement loops only
        refreshes0 = view.refreshes
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            c0 = time.process_time()
            if prof is not None:
                prof.enable()
            for _ in range(200):
                placement = call()
                if isinstance(placement, bool):
                    continue
                target = by_id.get(placement.node_id) if placement.node_id else None
                if target is not None:
                    target.accept(1.0)
            if prof is not None:
                prof.disable()
            cpu += time.process_time() - c0
            done += 200
            await trio.lowlevel.checkpoint()  # the stand-ins' heartbeats and the view's refresh go on
        wall = time.perf_counter() - t0
        # per CPU second: what one core does (the wall rate also counts the
        # stand-ins of this process and everything else on a shared machine)
        out[name] = {"per_cpu_s": round(done / max(cpu, 1e-9)),
                     "us_cpu_each": round(1e6 * cpu / done, 1),
                     "per_wall_s": round(done / wall),
                     "view_refreshes": view.refreshes - refreshes0}
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
        out["profile"] = buf.getvalue()
    return out


def _lineage_record(i: int) -> dict:
    spec = TaskSpec(
        task_id=os.urandom(24), job_id=b"\x01" * 4, function_id=os.urandom(20),
        name="simulate", args=os.urandom(64), deps=[os.urandom(28)], num_returns=1,
        resources={"CPU": 1.0}, max_retries=3, retry_exceptions=False,
        parent_task_id=None, owner=os.urandom(16))
    return spec.lineage_record()


async def lineage_writes(address: str, pids: list[int], writers: int, seconds: float) -> dict:
    batch = 1000
    template = [_lineage_record(i) for i in range(batch)]
    written = 0
    cpu0 = [_cpu_seconds(p) for p in pids]
    me0 = time.process_time()

    async def writer(w: int, client: gcs.GcsClient, deadline: float) -> None:
        nonlocal written
        k = 0
        while time.perf_counter() < deadline:
            items = [(f"{w:02x}{k:08x}{i:04x}", rec) for i, rec in enumerate(template)]
            await client.tasks.add_many(items)
            written += batch
            k += 1

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(gcs.open_client(address, TOKEN, timeout=60))
                   for _ in range(writers)]
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w, client in enumerate(clients):
                nursery.start_soon(writer, w, client, t0 + seconds)
        wall = time.perf_counter() - t0
    return {"writers": writers, "tasks_per_s": round(written / wall),
            "writers_cpu_pct": round(100 * (time.process_time() - me0) / wall, 1),
            "replica_cpu_pct_total": round(100 * sum(
                _cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)) / wall, 1)}


class Children:
    """The stand-ins run in other processes (``--procs``): each prints its rounds
    so far and its CPU seconds twice a second; the last figures are kept here."""

    def __init__(self) -> None:
        self.latest: dict[int, tuple[int, float]] = {}
        self.pids: list[int] = []
        self.reported = trio.Event()  # set (and replaced) at each report

    async def start(self, nursery: trio.Nursery, address: str, first: int, count: int,
                    index: int) -> None:
        proc = await nursery.start(functools.partial(
            trio.run_process,
            [sys.executable, SCRIPT, "--child", address,
             "--first", str(first), "--count", str(count)],
            stdout=subprocess.PIPE, check=False))
        self.pids.append(proc.pid)
        nursery.start_soon(self._read, proc, index)

    async def _read(self, proc: trio.Process, index: int) -> None:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parts = line.split()
                if parts and parts[0] == b"STAT":
                    self.latest[index] = (int(parts[1]), float(parts[2]))
                    self.reported.set()
                    self.reported = trio.Event()

    def totals(self) -> tuple[int, float]:
        return (sum(r for r, _ in self.latest.values()),
                sum(c for _, c in self.latest.values()))


async def child_main(address: str, first: int, count: int) -> None:
    nodes = [StandIn(i, head=False, simulated=True) for i in range(first, first + count)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            node.address = address  # type: ignore[attr-defined]
            nursery.start_soon(node.run)
        while True:
            print(f"STAT {sum(n.membership.seq for n in nodes)} {time.process_time()}",
                  flush=True)
            await trio.sleep(0.5)


async def run_shards(shards: int, n_nodes: int, procs: int, seconds: float,
                     profile: bool) -> dict:
    async def body(address: str, pids: list[int]) -> dict:
        # This process: the head stand-in (the monitor, whose view the placements
        # use) and its share of the others; the rest in ``procs - 1`` children.
        per = -(-n_nodes // procs)
        nodes = [StandIn(i, head=(i == 0)) for i in range(min(per, n_nodes))]
        children = Children()
        result: dict[str, Any] = {"shards": shards, "processes": procs}
        async with trio.open_nursery() as nursery:
            for node in nodes:
                node.address = address  # type: ignore[attr-defined]
                nursery.start_soon(node.run)
            for k, first in enumerate(range(per, n_nodes, per)):
                await children.start(nursery, address, first, min(per, n_nodes - first), k)
            # Ready: the head sees every node, and every child reports.
            with trio.fail_after(180):
                while len(nodes[0].view.alive()) < n_nodes:
                    await nodes[0].view.changed.wait()
                while len(children.latest) < procs - 1:
                    await children.reported.wait()
            result["heartbeats"] = await heartbeat_load(nodes, pids, seconds, children,
                                                        n_nodes)
            result["placements"] = await placements(nodes, max(1.0, seconds / 5), profile)
            nursery.cancel_scope.cancel()
        result["lineage"] = [await lineage_writes(address, pids, w, max(2.0, seconds / 3))
                             for w in (1, 4, 16)]
        return result

    return await _with_gcs(shards, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=4,
                        help="processes the stand-ins run in (this one included)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        trio.run(child_main, args.child, args.first, args.count)
        return
    for shards in args.shards:
        result = trio.run(run_shards, shards, args.nodes, max(1, args.procs), args.seconds,
                          args.profile)
        profile = result["placements"].pop("profile", None)
        print(json.dumps(result, indent=1))
        if profile:
            print(profile)


if __name__ == "__main__":
    main()
