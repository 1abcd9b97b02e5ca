"""Seeded fault schedules: faults at random times, replayable from the seed.

A schedule draws everything from ``random.Random(seed)`` in one fixed order: the gap
to the next fault (exponential, mean ``1/rate``), its kind (the kinds come in
cycles, each kind once per cycle in a shuffled order, so a short schedule still
injects every kind), and one number per choice it makes. Targets are sorted, nodes
in an order a fresh cluster of the same shape repeats (the head first, the others by
address), so the choice depends neither on the order the tree lists them nor on the
random node ids. A crash picks among every component its patterns match, running or
restarting: one crashed a few milliseconds earlier may or may not be back yet,
depending on the machine's load, and a pick among the running ones only would then
differ from one run to the next. A pick that is restarting is crashed once it runs
again (within ``RESTART_WAIT`` seconds; else the step is recorded as failed). A
kill picks among the processes alive at that moment (they come and go). A run of
the same workload with the same seed therefore replays the same kinds at the same
offsets, and the same picks wherever the cluster looks the same. Each step is
recorded (``faults.record()`` and ``Schedule.record``) with its seed and step number.

A link fault lasts ``hold`` seconds and is healed before the next step is taken;
every link fault is healed when the schedule ends, however it ends.
"""

from __future__ import annotations

import fnmatch
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ._inject import Faults, LinkFault
from ._record import KINDS, Injected, check_kind, note

__all__ = ["DEFAULT_TARGETS", "RESTART_WAIT", "Schedule", "live_targets", "schedule"]

#: Seconds a crash step waits for its pick to run again after an earlier crash.
RESTART_WAIT = 5.0
#: Seconds between looks at a restarting pick.
RESTART_POLL = 0.01

logger = logging.getLogger("actorcore.testing.faults")

#: What each kind aims at unless ``targets=`` says otherwise: tree paths (fnmatch,
#: with their ``node:<id8>/`` selector) for crash and kill, endpoint names for links.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "crash": ("node:*/local_scheduler", "node:*/global_scheduler", "node:*/object_manager",
              "node:*/actor_manager", "node:*/gcs_client", "node:*/object_directory",
              "node:*/store_link", "node:*/node_links", "node:*/worker_pool/worker_*/*"),
    "kill": ("node:*/worker_pool/worker_*",),
    "drop": ("nodes", "worker-node"),
    "delay": ("nodes", "node-gcs", "driver-node", "worker-node"),
    "duplicate": ("nodes",),
    "partition": ("nodes",),
}


class Schedule:
    """A running seeded schedule (see the module docstring); `schedule` starts one."""

    def __init__(self, faults: Faults, seed: int, kinds: Sequence[str], rate: float,
                 duration: float, hold: float, targets: dict[str, Sequence[str]],
                 drop_p: float, delay_s: float) -> None:
        if rate <= 0:
            raise ValueError(f"schedule(): rate must be > 0 faults per second, got {rate!r}")
        if duration <= 0:
            raise ValueError(f"schedule(): duration must be > 0 seconds, got {duration!r}")
        if not kinds:
            raise ValueError("schedule(): kinds must name at least one fault kind")
        self.faults = faults
        self.seed = seed
        self.kinds = tuple(check_kind(k) for k in kinds)
        unknown = set(targets) - set(KINDS)
        if unknown:
            raise ValueError(f"schedule(): targets for unknown fault kinds {sorted(unknown)}")
        self.targets = {k: tuple(targets.get(k, DEFAULT_TARGETS[k])) for k in self.kinds}
        self.rate, self.duration, self.hold = rate, duration, hold
        self.drop_p, self.delay_s = drop_p, delay_s
        self.record: list[Injected] = []
        self.errors: list[BaseException] = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"faults-schedule-{seed}",
                                        daemon=True)
        self.started_at = time.time()
        self._thread.start()

    # ------------------------------------------------------------------ control

    def stop(self, timeout: float = 30.0) -> None:
        """Stop injecting, heal what is held, wait for the thread (at most ``timeout``)."""
        self._stop.set()
        self.join(timeout)

    @property
    def done(self) -> bool:
        """The schedule has ended (its duration passed, or `stop`)."""
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the schedule ends (``duration`` passed, or `stop`)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the fault schedule (seed {self.seed}) did not end within "
                               f"{timeout} s")

    def __enter__(self) -> Schedule:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def counts(self) -> dict[str, int]:
        """Faults injected per kind (the successful ones)."""
        return dict(Counter(e.kind for e in self.record if e.ok and e.kind in KINDS))

    def summary(self) -> str:
        counts = self.counts()
        return ", ".join(f"{k}: {counts.get(k, 0)}" for k in self.kinds)

    # ------------------------------------------------------------------ the run

    def _run(self) -> None:
        rng = self._rng
        deadline = time.monotonic() + self.duration
        step = 0
        bag: list[str] = []
        while not self._stop.is_set():
            gap = rng.expovariate(self.rate)
            if not bag:  # every kind once per cycle, in a seeded order
                bag = list(self.kinds)
                rng.shuffle(bag)
            kind = bag.pop()
            pick = rng.random()
            if self._stop.wait(max(0.0, min(gap, deadline - time.monotonic()))):
                break
            if time.monotonic() >= deadline:
                break
            try:
                held = self._inject(step, kind, pick)
            except Exception as exc:  # recorded (not ok) by the call that failed
                logger.info("fault schedule seed %s step %d (%s) failed: %r",
                            self.seed, step, kind, exc)
                self.errors.append(exc)
                held = None
            if held is not None:
                try:
                    self._stop.wait(min(self.hold, max(0.0, deadline - time.monotonic())))
                finally:
                    self._heal(held)
            step += 1

    def _heal(self, held: LinkFault) -> None:
        try:
            held.heal()
        except Exception as exc:
            logger.warning("healing %r failed (heal_all at the end retries): %r", held, exc)
            try:
                self.faults.heal_all()
            except Exception as again:
                logger.warning("heal_all after a failed heal failed too: %r", again)

    def _keep(self, entry: Injected) -> None:
        self.record.append(entry)

    def _inject(self, step: int, kind: str, pick: float) -> LinkFault | None:
        from . import _record

        before = len(_record.record())
        try:
            return self._inject_one(step, kind, pick)
        finally:
            for entry in _record.record()[before:]:
                if entry.seed == self.seed and entry.step == step:
                    self._keep(entry)

    def _inject_one(self, step: int, kind: str, pick: float) -> LinkFault | None:
        f = self.faults
        if kind in ("crash", "kill"):
            paths = self._paths(kind)
            if not paths:
                note(Injected(time.time(), kind, "-", "no target alive", False,
                              self.seed, step))
                return None
            path = paths[int(pick * len(paths))]
            if kind == "crash":
                if not self._running_again(path):
                    note(Injected(time.time(), kind, path,
                                  f"still restarting after {RESTART_WAIT} s", False,
                                  self.seed, step))
                    return None
                f.crash(path, seed=self.seed, step=step)
            else:
                f.kill(path, seed=self.seed, step=step)
            return None
        pairs = self._pairs(kind)
        if not pairs:
            note(Injected(time.time(), kind, "-", "no link to fault", False, self.seed, step))
            return None
        a, b = pairs[int(pick * len(pairs))]
        if kind == "drop":
            return f.drop(self.drop_p, a, b, seed=self.seed, step=step)
        if kind == "delay":
            return f.delay(self.delay_s, self.delay_s, a, b, seed=self.seed, step=step)
        if kind == "duplicate":
            return f.duplicate(1.0, a, b, seed=self.seed, step=step)
        return f.partition(a, b, seed=self.seed, step=step)

    def _paths(self, kind: str) -> list[str]:
        return live_targets(self.faults, kind, self.targets[kind],
                            restarting=kind == "crash")

    def _running_again(self, path: str) -> bool:
        """Wait until ``path`` runs (it may be restarting from an earlier crash);
        False if it does not within ``RESTART_WAIT`` s, is gone or stopped for good,
        or the schedule stops."""
        deadline = time.monotonic() + RESTART_WAIT
        while True:
            entry = dict(self.faults.paths()).get(path)
            if entry is None:
                return False  # gone from the tree
            state = entry.get("state")
            if state in (None, "running"):
                return True
            if (state not in ("starting", "restarting") or time.monotonic() >= deadline
                    or self._stop.wait(RESTART_POLL)):
                return False

    def _pairs(self, kind: str) -> list[tuple[str, str]]:
        ranks = _node_ranks(self.faults.paths())
        nodes = sorted(ranks, key=lambda p: (ranks[p], p))
        pairs: list[tuple[str, str]] = []
        for group in self.targets[kind]:
            if group == "nodes":
                pairs += [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1:]]
            elif group == "node-gcs":
                pairs += [(n, "gcs") for n in nodes]
            elif group == "driver-node":
                pairs += [("driver", n) for n in nodes]
            elif group == "worker-node":
                pairs += [("worker", n) for n in nodes]
            elif "|" in group:
                a, b = group.split("|", 1)
                pairs.append((a, b))
            else:
                raise ValueError(
                    f"schedule(): link target {group!r} for {kind}: expected nodes, "
                    f"node-gcs, driver-node, worker-node or 'A|B'")
        return pairs


def live_targets(faults: Faults, kind: str, patterns: Sequence[str], *,
                 restarting: bool = False) -> list[str]:
    """The tree paths (sorted) matching any of ``patterns`` (fnmatch, with their
    ``node:<id8>/`` selector) that ``kind`` can hit now: running entries (and
    restarting ones too with ``restarting``), and for ``kill`` processes of their
    own (workers, GCS replicas, nodes)."""
    found = []
    paths = faults.paths()
    rank = _node_ranks(paths)
    for path, entry in paths:
        state = entry.get("state")
        if state not in (None, "running") and not (
                restarting and state in ("starting", "restarting")):
            continue  # crash() would refuse it now, kill() has no process
        if kind == "kill" and (not entry.get("pid") or entry.get("kind") not in (
                "worker", "gcs_replica", "node")):
            continue  # a process of its own, not something inside one
        if any(fnmatch.fnmatchcase(path, p) for p in patterns):
            found.append(path)
    return sorted(found, key=lambda p: (rank.get(p.split("/", 1)[0], (2, p)), p))


def _node_ranks(paths: list[tuple[str, dict]]) -> dict[str, tuple]:
    """A node order that a fresh cluster of the same shape repeats (node ids are
    random; the head comes first, the others by their TCP address, which a test
    `Cluster` gives out in order): so a seed picks the same targets again."""
    ranks = {}
    for path, entry in paths:
        if "/" not in path:
            ranks[path] = (0 if entry.get("head") else 1, str(entry.get("tcp_address")))
    return ranks


def schedule(seed: int, kinds: Sequence[str] = KINDS, rate: float = 1.0,
             duration: float = 10.0, *, hold: float = 0.5,
             targets: dict[str, Sequence[str]] | None = None, drop_p: float = 0.2,
             delay_s: float = 0.05, faults: Faults | None = None) -> Schedule:
    """Start a seeded schedule of faults in the background (see the module docstring).

    Args:
      seed: the schedule's seed: the same seed draws the same schedule.
      kinds: the fault kinds to draw from (`KINDS`); an unknown kind is a ValueError.
      rate: faults per second on average. duration: seconds until it stops.
      hold: how long each link fault lasts before it is healed.
      targets: per kind, what to aim at (see `DEFAULT_TARGETS`).
      drop_p: the probability of a drop fault. delay_s: a delay's base and jitter.
      faults: the harness to use (default: bound to the connected cluster).
    """
    return Schedule(faults if faults is not None else Faults(), seed, kinds, rate, duration,
                    hold, dict(targets or {}), drop_p, delay_s)
