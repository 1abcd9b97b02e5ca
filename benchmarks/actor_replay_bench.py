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
waits for the restore and replay), checked against the exact state. Also the cost of the log in steady state: calls per
second of a plain actor, one with a log (``checkpoint_interval=0``) and one that
checkpoints every 100 calls. A PNG plot needs matplotlib (skipped if missing).
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
    args = p.parse_args()
    ns = [0, 200, 1000] if args.quick else [0, 500, 1000, 2000, 4000]
    rounds = 1 if args.quick else 3
    interval = max(ns) + 2  # (each round also calls pid(): n + 1 calls since)
    ac.init(num_cpus=2, log_to_driver=False)
    rows = []
    for n in ns:
        row = {"n": n}
        for mode in ("checkpoint", "no checkpoint", "restart"):
            row[mode] = recovery(mode, interval, n, rounds, args.call_ms / 1000)
        rows.append(row)
    tp_calls = 3000 if args.quick else 20000
    rates = {
        "plain actor": throughput({}, tp_calls),
        "log (checkpoint_interval=0)": throughput({"checkpoint_interval": 0}, tp_calls),
        "checkpoint every 100": throughput({"checkpoint_interval": 100}, tp_calls),
    }
    ac.shutdown()

    print(f"recovery time after SIGKILL (s, median of {rounds}); history: {interval} calls "
          f"before the checkpoint, then n; {args.call_ms:g} ms of work per call")
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
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"\nplot: {args.png}")
    print("RESULT " + json.dumps({"rows": rows, "rates": rates, "interval": interval}))


if __name__ == "__main__":
    main()
