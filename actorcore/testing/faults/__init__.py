"""Fault injection against a live cluster: ``actorcore.testing.faults``.

Every fault the design names, from any driver of a running cluster (the functions
here act on the cluster this process is connected to; `Faults` binds them to any
other, by address)::

    from actorcore.testing import faults

    faults.crash("node:3fa2/local_scheduler")       # a component restarts
    faults.crash("worker_pool/worker_1/Counter")    # an actor, by its restart policy
    faults.kill("node:3fa2/worker_pool/worker_2")   # SIGKILL of a process; or a pid
    faults.kill("node:3fa2")                        # a whole node
    with faults.partition("node:3fa2", "node:77c1"):
        ...                                         # healed on exit
    with faults.delay(0.05, jitter=0.05, a="worker", b="node:3fa2"):
        ...
    faults.heal_all()
    sched = faults.schedule(seed=7, kinds=["crash", "kill", "partition"],
                            rate=2.0, duration=10)
    sched.join(); print(sched.summary())
    for entry in faults.record(): print(entry.line())

Paths are those ``actorcore.tree()`` shows; ``node:<id prefix>/`` in front names the
node (without it: the node this process is connected to; ``cluster/node/...`` as the
tree prints it still works). Crashes: ``node`` (the node's whole tree restarts), any
component (``local_scheduler``, ``gcs/shard_0/replica_0``, a user supervisor), a
worker (``worker_pool/worker_3``: killed), an actor below a worker or a user
supervisor (``worker_pool/worker_3/<actor>``, ``<supervisor>/<actor>``: it crashes,
its restart policy applies), a task (``worker_pool/worker_3/task:<name>``: its
process dies). A component still restarting from an earlier crash cannot crash
again yet (``ValueError``).

Link faults (`drop`, `delay`, `duplicate`, `partition`) are `transport.faults` rules
installed in every process of the cluster: each node applies them and forwards them
to its workers, actor processes and drivers (and to processes that connect later),
and the head to its GCS replica processes when the GCS runs them (``gcs_replicas``
>= 2; a replica started later gets them at its launch). Endpoint names are listed
in `_inject` (``"node:<prefix>"``, ``"gcs"``, ``"gcs/shard_0/replica_1"``,
``"driver"``, ``"worker"``, ``"worker_3"``, or a transport name pattern).

Bad use is a ``ValueError`` naming the bad thing: an unknown path (and what exists
there), a pid that no node of the cluster has, an unknown fault kind.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Sequence
from typing import Any

from ._inject import Faults, LinkFault, endpoint
from ._record import KINDS, Injected, check_kind, clear_record, counts, record
from ._schedule import DEFAULT_TARGETS, RESTART_WAIT, Schedule, live_targets
from ._schedule import schedule as _schedule

__all__ = [
    "DEFAULT_TARGETS",
    "KINDS",
    "Faults",
    "Injected",
    "LinkFault",
    "RESTART_WAIT",
    "Schedule",
    "check_kind",
    "clear_record",
    "counts",
    "crash",
    "delay",
    "drop",
    "duplicate",
    "endpoint",
    "heal_all",
    "kill",
    "live_targets",
    "partition",
    "record",
    "schedule",
]


def _harness(address: str | None) -> Faults:
    return Faults(address)


def crash(component: str, node_id: str | None = None, *, address: str | None = None) -> str:
    """Crash the component at tree path ``component`` (see the module docstring).

    ``node_id`` (a hex id or prefix) names the node, as ``node:<prefix>/`` in the
    path does. Returns what the node did.
    """
    if not isinstance(component, str) or not component.strip("/"):
        raise ValueError(f"crash(): component must be a non-empty tree path, got {component!r}")
    if node_id is not None:
        component = f"node:{node_id}/{component}"
    return _harness(address).crash(component)


def kill(path_or_pid: str | int, signal: int = _signal.SIGKILL, *,
         address: str | None = None) -> dict:
    """Send ``signal`` to a process of the cluster (a pid or a tree path)."""
    return _harness(address).kill(path_or_pid, signal)


def drop(p: float = 1.0, a: str | None = None, b: str | None = None, *, both: bool = True,
         address: str | None = None) -> LinkFault:
    """Drop messages between endpoints ``a`` and ``b`` with probability ``p``."""
    return _harness(address).drop(p, a, b, both=both)


def delay(seconds: float, jitter: float = 0.0, a: str | None = None, b: str | None = None,
          *, both: bool = True, address: str | None = None) -> LinkFault:
    """Delay messages between ``a`` and ``b`` by ``seconds`` (+ up to ``jitter``)."""
    return _harness(address).delay(seconds, jitter, a, b, both=both)


def duplicate(p: float = 1.0, a: str | None = None, b: str | None = None, *,
              both: bool = True, address: str | None = None) -> LinkFault:
    """Send messages between ``a`` and ``b`` twice with probability ``p``."""
    return _harness(address).duplicate(p, a, b, both=both)


def partition(a: str, b: str, *, address: str | None = None) -> LinkFault:
    """Cut endpoint ``a`` from ``b`` (both ways; new connections refused)."""
    return _harness(address).partition(a, b)


def heal_all(*, address: str | None = None) -> dict:
    """Remove every link fault from every process of the cluster. Returns what each
    answered: node ids, and ``gcs/<replica>`` for GCS replica processes."""
    return _harness(address).heal_all()


def schedule(seed: int, kinds: Sequence[str] = KINDS, rate: float = 1.0,
             duration: float = 10.0, *, address: str | None = None, **kw: Any) -> Schedule:
    """Start a seeded fault schedule in the background (`_schedule.schedule`)."""
    return _schedule(seed, kinds, rate, duration, faults=_harness(address), **kw)
