"""The messages between a node and its zygote (``actorcore.worker._zygote``).

They travel as pickles over a ``SOCK_SEQPACKET`` socket pair the node made for that
one zygote: one message per packet, no other process holds either end, so nothing
unauthenticated is ever decoded. A `ForkWorker` packet carries two descriptors
(SCM_RIGHTS): the write ends of the new worker's stdout and stderr pipes.

Zygote -> node:
  `ZygoteReady`   imports done: it forks from now on
  `Forked`        the answer to a `ForkWorker`: the new worker's pid
  `ForkRefused`   the answer to a `ForkWorker` it did not fork (the node spawns)
  `WorkerExited`  a worker it forked ended (it reaped it): its exit status
Node -> zygote:
  `ForkWorker`    fork a worker process
"""

from __future__ import annotations

import attrs

__all__ = ["ForkRefused", "ForkWorker", "Forked", "WorkerExited", "ZygoteReady"]


@attrs.frozen
class ForkWorker:
    """Fork a worker that runs ``module``'s ``main(args)`` with exactly ``env`` as
    its environment and ``cwd`` as its working directory; ``title`` names it in
    ``/proc/<pid>/comm`` (``ps``, ``top``)."""

    request_id: int
    module: str
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    title: str


@attrs.frozen
class ZygoteReady:
    """The zygote imported the worker's modules and forks from now on. ``threads``:
    the threads it had then (1: a fork copies a consistent process);
    ``preload_cpu``: the CPU seconds its imports took, the cost each fork saves."""

    pid: int
    threads: int
    preload_cpu: float


@attrs.frozen
class Forked:
    request_id: int
    pid: int


@attrs.frozen
class ForkRefused:
    """``reason`` names why (the fork failed, a worker module it does not know)."""

    request_id: int
    reason: str


@attrs.frozen
class WorkerExited:
    """``returncode`` as `subprocess.Popen` has it: the exit code, or minus the
    signal that killed the worker."""

    pid: int
    returncode: int
