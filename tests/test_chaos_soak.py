"""The chaos soak: a workload that uses every feature at once, under a seeded schedule
of every fault kind at every target, with exact results, no hang and nothing left
behind.

Workload, in rounds until the schedule ends, spread over both nodes: nested tasks (a
task that gets the results of tasks it submits), a tree reduction over numpy arrays
large enough to live in shared memory (moved between the nodes), a stateful actor
with a known call history restarted by ``max_restarts`` (without replay its history
after a restart must be an ordered suffix of the calls made), an actor recovered by
replay (``checkpoint_interval``: its history must be exactly the calls made), named
actors found by name after their restarts, and ``wait`` with a timeout. Each round
must finish within its timeout with exactly the expected values.

The short version runs in the default suite; ``-m slow`` runs the long one (minutes).
``ACTORCORE_SOAK_SEED`` picks the seed (a failing run prints its seed and every
fault it injected, via the plugin's report), ``ACTORCORE_SOAK_SECONDS`` the length,
``ACTORCORE_SOAK_KINDS`` the kinds (a list, or ``all``), ``ACTORCORE_SOAK_HEAD=1``
keeps the work on the head (the faults still hit both nodes), and
``ACTORCORE_SOAK_TARGETS=survivable`` aims only at ``SURVIVABLE``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import actorcore
import transport
from actorcore.testing import faults

from .cluster_support import tasks_seen

SEED = int(os.environ.get("ACTORCORE_SOAK_SEED", "20261202"))
# Every target of every kind (``faults.DEFAULT_TARGETS``) is survived: crashes of
# every component (object_manager and store_link included), kills of workers and
# actors, link resets, breaks and partitions on node<->node, node<->GCS and
# worker<->node links, and delays anywhere. Not aimed at: the head node itself (it
# runs the GCS coordinator: no cluster outlives it), and a whole node, which
# test_chaos_soak_nodes.py kills (``-m slow``), adding a replacement each time.
# SURVIVABLE is the narrower set the short soak used before links resent what they
# lost; kept to compare.
SURVIVABLE = {
    "crash": [t for t in faults.DEFAULT_TARGETS["crash"]
              if "object_manager" not in t and "store_link" not in t],
    "drop": ["node-gcs"], "duplicate": ["node-gcs"], "partition": ["node-gcs"],
}
TARGETS = SURVIVABLE if os.environ.get("ACTORCORE_SOAK_TARGETS") == "survivable" else {}
_kinds = os.environ.get("ACTORCORE_SOAK_KINDS", "")
KINDS = faults.KINDS if _kinds == "all" else tuple(k for k in _kinds.split(",") if k) or None
ARRAY = 256 * 1024  # float64s: 2 MiB per array, in shared memory
LEAVES = 8


@actorcore.remote(max_retries=-1)
def leaf(i: int) -> int:
    return i * i


@actorcore.remote(max_retries=-1)
def nested(n: int, pin: dict) -> int:
    return sum(actorcore.get([leaf.options(**pin).remote(i) for i in range(n)]))


@actorcore.remote(max_retries=-1)
def make(i: int) -> np.ndarray:
    return np.full(ARRAY, float(i))


@actorcore.remote(max_retries=-1)
def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


@actorcore.remote(max_restarts=-1, max_task_retries=-1)
class Recorder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def call(self, k: int) -> int:
        self.calls.append(k)
        return 2 * k

    def history(self) -> list[int]:
        return list(self.calls)


@actorcore.remote(max_restarts=-1, max_task_retries=-1, checkpoint_interval=7)
class Ledger:
    """Recovered by replay: after any kill its history is exactly the calls made."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def call(self, k: int) -> int:
        self.calls.append(k)
        return 3 * k

    def history(self) -> list[int]:
        return list(self.calls)

    def __actorcore_checkpoint__(self) -> list[int]:
        return list(self.calls)

    def __actorcore_restore__(self, state: list[int]) -> None:
        self.calls = list(state)


def _tree_reduce(refs: list, pin: dict) -> actorcore.ObjectRef:
    while len(refs) > 1:
        refs = [add.options(**pin).remote(refs[i], refs[i + 1]) if i + 1 < len(refs) else refs[i]
                for i in range(0, len(refs), 2)]
    return refs[0]


def _round(cluster, r: int, rec, ledger, calls: list[int], timeout: float, pin: dict) -> int:
    """One round of the workload; returns the number of results checked. ``pin``:
    the options that keep the work on the head (``{}``: anywhere)."""
    sums = [nested.options(**pin).remote(5 + j, pin) for j in range(3)]
    total = _tree_reduce([make.options(**pin).remote(r + i) for i in range(LEAVES)], pin)
    ks = list(range(r * 10, r * 10 + 10))
    calls.extend(ks)
    doubled = [rec.call.remote(k) for k in ks]
    tripled = [ledger.call.remote(k) for k in ks]
    everything = [*sums, total, *doubled, *tripled]
    ready, pending = actorcore.wait(everything, num_returns=len(everything), timeout=timeout)
    assert not pending, (f"round {r}: {len(pending)} of {len(everything)} not done in "
                         f"{timeout} s\n{tasks_seen(cluster, pending)}")
    assert actorcore.get(sums, timeout=timeout) == [
        sum(i * i for i in range(5 + j)) for j in range(3)]
    expected = float(sum(r + i for i in range(LEAVES)))
    value = actorcore.get(total, timeout=timeout)
    assert value.shape == (ARRAY,) and bool(np.all(value == expected)), f"round {r}: tree sum"
    assert actorcore.get(doubled, timeout=timeout) == [2 * k for k in ks]
    assert actorcore.get(tripled, timeout=timeout) == [3 * k for k in ks]
    return len(everything)


def _segments(sessions: set[str]) -> set[str]:
    """The /dev/shm segments of the nodes with these session directory names."""
    return {f for f in os.listdir("/dev/shm")
            if any(f.startswith(f"actorcore-{name}") for name in sessions)}


def _nothing_left(pids: set[int], sessions: set[str], segments_seen: set[str]) -> None:
    """After the cluster's shutdown: every process the tree showed (``pids``) is
    gone, and every shared-memory segment of its nodes (``sessions``); the segments
    were seen while it ran (``segments_seen``), so the check looked at the right ones."""
    assert segments_seen, "the cluster's shared memory was not seen"
    deadline = time.monotonic() + 10
    while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {sorted(left)}"
    assert not _segments(sessions), f"/dev/shm segments left: {_segments(sessions)}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _soak(seconds: float, rate: float, kinds: tuple[str, ...] = faults.KINDS,
          spread: bool = True) -> None:
    from actorcore.testing import Cluster

    # Node deaths are injected (kill), not inferred from a node slowed by the load.
    fast = {"ACTORCORE_NODE_TIMEOUT": "10", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "env_vars": fast, "resources": {"soak_head": 1000}})
    pin = {} if spread else {"resources": {"soak_head": 1}}
    pids: set[int] = set()
    segments: set[str] = set()
    sessions: set[str] = set()
    started = time.monotonic()
    try:
        cluster.add_node(num_cpus=1, env_vars=fast)
        cluster.connect()
        rec = Recorder.options(name="recorder", **pin).remote()
        ledger = Ledger.options(name="ledger", **pin).remote()
        calls: list[int] = []
        # A warm-up round before the faults: every function exported, the actors up.
        checked = _round(cluster, 0, rec, ledger, calls, timeout=60.0, pin=pin)
        rounds = 1
        # Every kind at every target (faults.DEFAULT_TARGETS: components, workers,
        # tasks and actors, every kind of link; not the head node itself).
        sched = faults.schedule(
            seed=SEED, kinds=KINDS or kinds, rate=rate, duration=seconds, hold=0.3,
            targets=TARGETS)
        try:
            while True:
                done_before = sched.done
                for _p, e in faults.Faults().paths():
                    if e.get("pid"):
                        pids.add(int(e["pid"]))
                checked += _round(cluster, rounds, rec, ledger, calls, timeout=60.0, pin=pin)
                rounds += 1
                if done_before:
                    break
        finally:
            sched.stop()
        sessions = {n.session_dir.name for n in cluster.list_all_nodes()}
        segments = _segments(sessions)
        # The named actor, found by name after its restarts; its history since its
        # last restart is a suffix of the calls, in order (no replay yet).
        named = actorcore.get_actor("recorder")
        history = actorcore.get(named.history.remote(), timeout=60)
        assert history and history == calls[-len(history):], (len(history), len(calls))
        # The replayed one: exactly the calls made, whatever was killed meanwhile.
        replayed = actorcore.get(actorcore.get_actor("ledger").history.remote(), timeout=60)
        assert replayed == calls, (len(replayed), len(calls))
        checked += 2
        assert transport.faults.rules() == {}
        counts = sched.counts()
        wall = time.monotonic() - started
        print(f"\nchaos soak seed {SEED} ({'spread' if spread else 'on the head'}, "
              f"{','.join(KINDS or kinds)}): {rounds} rounds, {checked} results checked, "
              f"{wall:.1f} s; faults survived: "
              + ", ".join(f"{k} {counts.get(k, 0)}" for k in faults.KINDS)
              + f"; failed injections {len([e for e in sched.record if not e.ok])}")
        if os.environ.get("ACTORCORE_SOAK_VERBOSE"):
            print("\n".join(e.line(sched.started_at) for e in sched.record))
        assert set(counts) == set(KINDS or kinds), counts  # every kind was injected
    finally:
        actorcore.shutdown()
        cluster.shutdown()
    _nothing_left(pids, sessions, segments)


def test_chaos_soak_short():
    """Every fault kind at every target, the work spread over both nodes."""
    _soak(float(os.environ.get("ACTORCORE_SOAK_SECONDS", "8")), rate=2.0,
          spread=not os.environ.get("ACTORCORE_SOAK_HEAD"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_soak_long():
    """The same for minutes (``ACTORCORE_SOAK_SECONDS``, default 300)."""
    _soak(float(os.environ.get("ACTORCORE_SOAK_SECONDS", "300")), rate=1.0, spread=True)
