"""Actor recovery by replay (the paper's Fig. 11b, scaled to this machine): an actor
with a long call history is killed (SIGKILL of its process) and recovered; the time
to recover against the number of calls since its last checkpoint, with and without
checkpoints.

    .venv/bin/python benchmarks/actor_replay_bench.py [--quick] [--png PATH]

For each ``n`` (calls since the last checkpoint):

- ``checkpoint``: ``checkpoint_interval=I`` (``I`` = the largest ``n`` + 2); ``I``
  calls (a checkpoint of the state after the I-th), then ``n`` more: the recovery
  restores the checkpoint and replays ``n`` calls.
- ``no checkpoint``: ``checkpoint_interval=0``, the same ``I + n`` calls: the
  recovery replays every one of them.
- ``restart``: Ray's restart (no opt-in), same calls: the constructor only, the
  state lost; the floor (a new process and a constructor).

Each call does ``--call-ms`` (default 0.5) of busy work, so that a replay costs
what the calls cost (the paper's methods are not free either).

Recovery time: from the SIGKILL to the answer of the first call after it (which
waits for the restore and replay), checked against the exact state. Also the cost
of the log in steady state: calls per second of a plain actor, one with a log
(``checkpoint_interval=0``) and one that checkpoints every 100 calls. A PNG plot
needs matplotlib (``pip install -e ".[bench]"``; skipped if missing).

``--nodes``: the same on a `testing.Cluster` of three nodes, the actor on node B,
the driver on the head: the whole node B is SIGKILLed (``remove_node``) and the
actor recovers on node C from the checkpoint and the call log in the GCS (the host
writes each entry there before its caller is answered: the steady-state rates show
that cost). The recovery time includes the node timeout (``--node-timeout``)
that declares B dead (default 3 s: shorter ones declared live nodes of the loaded
test machine dead). Plot: ``actor_replay_nodes_bench.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import actorcore as ac  # noqa: E402


@ac.remote
class Log:
    def __init__(self, work_s=0.0):
        self.items = []
        self.work_s = work_s

    def add(self, x):
        if self.work_s:  # a method with some work in it (a busy loop, not a sleep)
            end = time.perf_counter() + self.work_s
            while time.perf_counter() < end:
                pass
        self.items.append(x)
        return len(self.items)

    def size(self):
        return len(self.items)

    def pid(self):
        return os.getpid()

    def __actorcore_checkpoint__(self):
        return self.items

    def __actorcore_restore__(self, state):
        self.items = state


def _calls(actor, count: int, batch: int = 2000) -> None:
    done = 0
    while done < count:
        k = min(batch, count - done)
        ac.get([actor.add.remote(i) for i in range(done, done + k)], timeout=600)
        done += k


def recovery(mode: str, interval: int, n: int, rounds: int, work_s: float) -> float:
    """Median seconds from SIGKILL to the first answer after it."""
    times = []
    for _ in range(rounds):
        opts: dict = {"max_restarts": 1, "max_task_retries": -1}
        if mode != "restart":
            opts["checkpoint_interval"] = interval if mode == "checkpoint" else 0
        a = Log.options(**opts).remote(work_s)
        total = interval + n
        _calls(a, total)
        pid = ac.get(a.pid.remote())
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        size = ac.get(a.size.remote(), timeout=600)
        times.append(time.perf_counter() - t0)
        want = 0 if mode == "restart" else total
        assert size == want, (mode, n, size, want)
        ac.kill(a)
    return statistics.median(times)


class _Affinity:
    """A NodeAffinitySchedulingStrategy (any object with ``node_id``/``soft``)."""

    def __init__(self, node_id: str, soft: bool = True) -> None:
        self.node_id = node_id
        self.soft = soft  # soft: the restart may go elsewhere once that node is dead


def node_recovery(cluster, env: dict, mode: str, interval: int, n: int,
                  work_s: float) -> float:
    """Seconds from the SIGKILL of the actor's node to the first answer after it."""
    b = cluster.add_node(num_cpus=1, resources={"R": 1}, env_vars=env)
    opts: dict = {"max_restarts": 1, "max_task_retries": -1, "resources": {"R": 1},
                  "scheduling_strategy": _Affinity(b.node_id)}
    if mode != "restart":
        opts["checkpoint_interval"] = interval if mode == "checkpoint" else 0
    a = Log.options(**opts).remote(work_s)
    total = interval + n
    _calls(a, total)
    t0 = time.perf_counter()
    cluster.remove_node(b)
    size = ac.get(a.size.remote(), timeout=600)
    took = time.perf_counter() - t0
    want = 0 if mode == "restart" else total
    assert size == want, (mode, n, size, want)
    ac.kill(a)
    return took


def throughput(opts: dict, calls: int) -> float:
    a = Log.options(**opts).remote()  # no work per call: the runtime's own cost
    ac.get(a.size.remote())
    t0 = time.perf_counter()
    _calls(a, calls)
    rate = calls / (time.perf_counter() - t0)
    ac.kill(a)
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--png", default=str(HERE / "actor_replay_bench.png"))
    p.add_argument("--call-ms", type=float, default=0.5,
                   help="busy work per method call, in ms (default 0.5)")
    p.add_argument("--nodes", action="store_true",
                   help="SIGKILL the actor's whole node on a 3-node cluster instead")
    p.add_argument("--node-timeout", type=float, default=3.0)
    args = p.parse_args()
    ns = [0, 200, 1000] if args.quick else [0, 500, 1000, 2000, 4000]
    rounds = 1 if args.quick else 3
    interval = max(ns) + 2  # (each round also calls pid(): n + 1 calls since)
    rows = []
    tp_calls = 3000 if args.quick else 20000
    cluster = None
    if args.nodes:
        from actorcore.testing import Cluster

        env = {"ACTORCORE_NODE_TIMEOUT": str(args.node_timeout),
               "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 2, "env_vars": env})
        cluster.add_node(num_cpus=1, resources={"R": 1}, env_vars=env)  # node C
        cluster.connect()
        if args.png == str(HERE / "actor_replay_bench.png"):
            args.png = str(HERE / "actor_replay_nodes_bench.png")
    else:
        ac.init(num_cpus=2, log_to_driver=False)
    try:
        for n in ns:
            row: dict = {"n": n}
            for mode in ("checkpoint", "no checkpoint", "restart"):
                if cluster is None:
                    row[mode] = recovery(mode, interval, n, rounds, args.call_ms / 1000)
                else:
                    row[mode] = statistics.median(
                        node_recovery(cluster, env, mode, interval, n, args.call_ms / 1000)
                        for _ in range(rounds))
            rows.append(row)
            print(f"n={n}: " + ", ".join(f"{k} {v:.3f} s" for k, v in row.items()
                                          if k != "n"), flush=True)
        extra: dict = {}
        if cluster is not None:  # calls from the head to an actor on another node
            far = cluster.add_node(num_cpus=1, resources={"F": 1}, env_vars=env)
            extra = {"resources": {"F": 1}, "scheduling_strategy": _Affinity(far.node_id)}
        rates = {
            "plain actor": throughput(dict(extra), tp_calls),
            "log (checkpoint_interval=0)": throughput(
                {"checkpoint_interval": 0, **extra}, tp_calls),
            "checkpoint every 100": throughput({"checkpoint_interval": 100, **extra},
                                               tp_calls),
        }
    finally:
        ac.shutdown()
        if cluster is not None:
            cluster.shutdown()

    what = "its node (whole)" if args.nodes else "its process"
    print(f"recovery time after SIGKILL of {what} (s, median of {rounds}); history: "
          f"{interval} calls before the checkpoint, then n; {args.call_ms:g} ms of work "
          f"per call")
    print(f"{'n since ckpt':>12} {'checkpoint':>11} {'no ckpt':>11} {'(replays)':>10} "
          f"{'restart':>9}")
    for r in rows:
        print(f"{r['n']:>12} {r['checkpoint']:>11.3f} {r['no checkpoint']:>11.3f} "
              f"{interval + r['n']:>10} {r['restart']:>9.3f}")
    print(f"\nsteady-state calls/s ({tp_calls} calls, batches of 2000):")
    for k, v in rates.items():
        print(f"  {k:<30} {v:>9.0f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nmatplotlib is not installed: no plot")
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode in ("checkpoint", "no checkpoint", "restart"):
            ax.plot([r["n"] for r in rows], [r[mode] for r in rows], marker="o", label=mode)
        ax.set_xlabel("calls since the last checkpoint")
        ax.set_ylabel("recovery time (s)")
        ax.set_title("actor recovered after SIGKILL of " + what)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"\nplot: {args.png}")
    print("RESULT " + json.dumps({"rows": rows, "rates": rates, "interval": interval}))


if __name__ == "__main__":
    main()
