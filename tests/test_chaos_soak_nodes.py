"""The chaos soak with whole nodes killed (``-m slow``): the soak's workload
(test_chaos_soak) while ``faults.kill("node:<id>")`` takes a non-head node down
outright, its worker processes with it, as a machine failure, and a replacement node
joins so the cluster keeps its capacity.

What must survive: tasks whose node died are retried (``max_retries=-1``), objects
that lived only there are rebuilt from their lineage, and the two actors, placed on
the non-head nodes, restart on the replacement: the ``Recorder`` (no replay) with a
history that is an ordered suffix of its calls, the ``Ledger`` recovered by replay
(``checkpoint_interval``; its call log lives in the GCS, so the calls logged since its
last checkpoint outlive the node that logged them) with a history of exactly the
calls made. Results must be exact, no round may hang, and nothing is left behind.

``ACTORCORE_SOAK_SEED`` seeds the kill times, ``ACTORCORE_SOAK_SECONDS`` the
length (default 120), ``ACTORCORE_SOAK_NODE_KILLS`` the least number of node kills
(default 4; the soak goes on until both are reached), ``ACTORCORE_SOAK_KINDS`` (a
list, or ``all``) runs the soak's seeded schedule of those kinds beside the node
kills, ``ACTORCORE_SOAK_KILL_GAP`` the longest gap between kills (default 8 s).
"""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest

import actorcore
import transport
from actorcore.testing import Cluster, faults

from .test_chaos_soak import (
    ARRAY,
    KINDS,
    LEAVES,
    SEED,
    Ledger,
    Recorder,
    _nothing_left,
    _segments,
    _tree_reduce,
    make,
    nested,
)

#: Node deaths are injected: a killed node is declared dead within 5 s, and a node
#: slowed by the load (a 2-core machine running a dozen processes) is not.
ENV = {"ACTORCORE_NODE_TIMEOUT": "5", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}
#: The actors live on the non-head nodes (this resource), so a node kill restarts
#: them elsewhere.
FAR = "soak_far"


def _submit(r: int, rec, ledger, calls: list[int]):
    """Submit round ``r`` (tasks anywhere, the actors on a far node); returns the
    check to run once the faults of the round are in."""
    sums = [nested.remote(5 + j, {}) for j in range(3)]
    total = _tree_reduce([make.remote(r + i) for i in range(LEAVES)], {})
    ks = list(range(r * 10, r * 10 + 10))
    calls.extend(ks)
    doubled = [rec.call.remote(k) for k in ks]
    tripled = [ledger.call.remote(k) for k in ks]

    def check(timeout: float) -> int:
        everything = [*sums, total, *doubled, *tripled]
        ready, pending = actorcore.wait(everything, num_returns=len(everything),
                                        timeout=timeout)
        assert not pending, (f"round {r}: {len(pending)} of {len(everything)} not done "
                             f"in {timeout} s")
        assert actorcore.get(sums, timeout=timeout) == [
            sum(i * i for i in range(5 + j)) for j in range(3)]
        value = actorcore.get(total, timeout=timeout)
        expected = float(sum(r + i for i in range(LEAVES)))
        assert value.shape == (ARRAY,) and bool(np.all(value == expected)), f"round {r}"
        assert actorcore.get(doubled, timeout=timeout) == [2 * k for k in ks]
        assert actorcore.get(tripled, timeout=timeout) == [3 * k for k in ks]
        return len(everything)

    return check


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_soak_node_kills():
    seconds = float(os.environ.get("ACTORCORE_SOAK_SECONDS", "120"))
    least = int(os.environ.get("ACTORCORE_SOAK_NODE_KILLS", "4"))
    gap = float(os.environ.get("ACTORCORE_SOAK_KILL_GAP", "8"))
    rng = random.Random(SEED)
    sched = None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "env_vars": ENV})
    pids: set[int] = set()
    segments: set[str] = set()
    started = time.monotonic()
    kills: list[str] = []
    sessions: set[str] = set()  # of every node, the killed ones too
    try:
        far = cluster.add_node(num_cpus=1, resources={FAR: 1000}, env_vars=ENV)
        sessions |= {n.session_dir.name for n in cluster.list_all_nodes()}
        cluster.connect()
        rec = Recorder.options(name="recorder", resources={FAR: 1}).remote()
        ledger = Ledger.options(name="ledger", resources={FAR: 1}).remote()
        calls: list[int] = []
        checked = _submit(0, rec, ledger, calls)(timeout=120.0)  # warm: exported, placed
        rounds = 1
        if KINDS:
            sched = faults.schedule(seed=SEED, kinds=KINDS, rate=1.0, duration=seconds,
                                    hold=0.3)
        next_kill = time.monotonic() + rng.uniform(gap / 8, gap / 2)
        while time.monotonic() - started < seconds or len(kills) < least:
            for _p, e in faults.Faults().paths():
                if e.get("pid"):
                    pids.add(int(e["pid"]))
            check = _submit(rounds, rec, ledger, calls)
            if time.monotonic() >= next_kill:
                # Mid-round: its tasks, objects and actor calls are in flight there.
                time.sleep(rng.uniform(0.0, 0.5))
                done = faults.kill(f"node:{far.node_id[:8]}")
                kills.append(f"{far.node_id[:8]} ({len(done['processes'])} processes) "
                             f"in round {rounds}")
                segments |= _segments(sessions)
                cluster.remove_node(far)  # reaped, its shared memory freed
                far = cluster.add_node(num_cpus=1, resources={FAR: 1000}, env_vars=ENV)
                sessions.add(far.session_dir.name)
                next_kill = time.monotonic() + rng.uniform(gap / 4, gap)
            checked += check(timeout=120.0)
            rounds += 1
        if sched is not None:
            sched.stop()
        # A last round on the replacement, without a kill: the Recorder has a
        # history since its last restart (a restart after its last call empties it).
        checked += _submit(rounds, rec, ledger, calls)(timeout=120.0)
        rounds += 1
        segments |= _segments(sessions)
        history = actorcore.get(actorcore.get_actor("recorder").history.remote(), timeout=60)
        assert history and history == calls[-len(history):], (len(history), len(calls))
        replayed = actorcore.get(actorcore.get_actor("ledger").history.remote(), timeout=60)
        assert replayed == calls, (len(replayed), len(calls))
        checked += 2
        assert transport.faults.rules() == {}
        print(f"\nnode-kill soak seed {SEED}: {rounds} rounds, {checked} results checked, "
              f"{time.monotonic() - started:.1f} s; nodes killed {len(kills)}: "
              + "; ".join(kills))
        if sched is not None:
            print(f"beside them, seed {SEED}: {sched.summary()}; failed injections "
                  f"{len([e for e in sched.record if not e.ok])}")
    finally:
        if sched is not None:
            sched.stop()
        actorcore.shutdown()
        cluster.shutdown()
    _nothing_left(pids, sessions, segments)
