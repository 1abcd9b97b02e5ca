"""Data edges that can never resolve: their consumers fail, within a bound.

A task, an actor method call routed through the node, or an actor's constructor
waits at the node until each of its argument refs is ready in the directory; a
``fetch`` (a ``get`` of a ref its process does not own) waits there for the object
itself. Almost every such wait ends by itself: the producing task or actor call
finishes (however long it runs), the owner's ``put`` arrives, the caller of a
direct actor call hands in its result. One kind never does:
the object is not in the directory, no task or actor call queued or running here
will produce it, and its *owner* — the process that created it, the only one that
could still put it or hand its result in — is gone. A ref kept across ``shutdown()``
+ ``init()`` is the common case; a ref whose process exited, or an id made up by
hand, are others. Without a decision, such a consumer would wait for ever (and an
actor call would hold back every later call of its caller to that actor, which are
kept in order behind it).

How the owner is known. Every task and object id begins with the 8-byte id prefix
of the process that created it (``protocol._ids``; a driver takes a fresh one per session),
and every client sends its prefix in ``hello``. The owner is alive while a client
with that prefix is connected, or is a driver still within its reconnect grace
period (``node._runtime.DRIVER_GRACE``). This is Ray's ownership rule: an object outlives
its owner only in the directory.

The sweep. Consumers register the dependencies they start waiting for (``watch``).
While any are registered, a sweep runs every ``SWEEP_PERIOD`` seconds. A dependency
whose entry is ready, gone, or waited on by nobody leaves the watch; one whose owner
is alive, or whose producing task or call is known here, stays; any other is a
suspect, and a suspect still in that state at the next sweep is lost. Two sweeps in
a row, not one, so that no transient state (a client between its connection and its
``hello``) can fail a consumer: a lost argument fails its consumer within
``2 * SWEEP_PERIOD`` seconds (plus the grace period of a driver that just left).

This is the node's one test of "lost": a fetch is watched like an argument, with
no timer of its own, so a ``get`` of the result of an actor call that runs for
minutes waits for it instead of failing once some fixed time has passed.

A lost object becomes an error object in the directory (``ObjectLostError``, the
same error a ``get`` of it raises): its consumers fail through the ordinary error
flow of data edges (a task and an actor call with that error as their result, an
actor whose constructor argument it is dies saying so, a fetch answers it). The entry is marked freed,
so it leaves the directory once no consumer pins it.

On one node the owner is a client of this node. With many nodes the owner may live
elsewhere: a sweep that finds a dependency neither here nor being fetched asks the
nodes for its owner (``RemoteObjects.need``); the fetch ends with the value, or with
an ``OwnerDiedError`` when no live node has that owner.
The sweeper is the ``object_directory`` component of the node's tree (this object,
owned by the node, is the child: ``run`` sweeps while something is watched, and
``snapshot`` shows the directory's figures). A crash of its logic restarts it; what
it watches and suspects is kept here, so a restart delays a decision by at most
one sweep and forgets nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Mapping
from typing import Any, Protocol

import attrs
import trio

from ...exceptions import ObjectLostError
from ...protocol import _serialization
from ...protocol._ids import owner_prefix, short, task_id_of
from .._clients import Clients
from ..local_scheduler._scheduler import SchedulerState
from ._directory import ObjectDirectory

__all__ = ["DependencyWatch", "SWEEP_PERIOD", "WatchingNode"]

logger = logging.getLogger("actorcore.node")

#: Seconds between sweeps; an argument that can never become available fails its
#: consumer within two sweeps.
SWEEP_PERIOD = 1.0


class _Fetching(Protocol):
    @property
    def fetching(self) -> Container[bytes]: ...  # asked from another node
    def need(self, oids: Iterable[bytes]) -> None: ...  # ask the owners' nodes


class _Forwarded(Protocol):
    @property
    def forwarded_out(self) -> Mapping[bytes, Any]: ...  # running on another node


class _Actors(Protocol):
    @property
    def actors(self) -> Mapping[Any, Any]: ...  # records: ``inflight``, ``queues``


class WatchingNode(Protocol):
    """What the watch uses of its node (``_runtime.NodeRuntime``): the directory,
    who is connected, and what is being produced here or fetched from elsewhere."""

    @property
    def directory(self) -> ObjectDirectory: ...
    @property
    def clients(self) -> Clients: ...
    @property
    def sched(self) -> SchedulerState: ...
    @property
    def remote(self) -> _Fetching: ...
    @property
    def cluster(self) -> _Forwarded: ...
    @property
    def actors(self) -> _Actors: ...


class DependencyWatch:
    """The node's watch over pending argument refs (see the module docstring)."""

    def __init__(self, node: WatchingNode) -> None:
        self.node = node
        self.pending: set[bytes] = set()
        self.suspects: set[bytes] = set()
        self.lost_total = 0
        self._watched = trio.Event()  # set while ``pending`` is not empty

    def watch(self, oids: Iterable[bytes]) -> None:
        """A consumer waits for ``oids``: watch those not ready (from a handler)."""
        entries = self.node.directory.entries
        pending = self.pending
        for oid in oids:
            e = entries.get(oid)
            if e is not None and not e.ready:
                pending.add(oid)
        if pending:
            self._watched.set()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """The ``object_directory`` component: sweep while anything is watched."""
        task_status.started()
        while True:
            await self._watched.wait()
            while self.pending:
                await trio.sleep(SWEEP_PERIOD)
                self.sweep()
            self._watched = trio.Event()

    def snapshot(self) -> dict:
        stats = attrs.asdict(self.node.directory.statistics())
        return {"kind": "object_directory", **stats, "watched": len(self.pending),
                "suspects": len(self.suspects), "lost": self.lost_total}

    def sweep(self) -> list[bytes]:
        """One pass (see the module docstring); returns the objects found lost."""
        node = self.node
        entries = node.directory.entries
        live = node.clients.live_id_prefixes()
        known: set[bytes] | None = None
        suspects: set[bytes] = set()
        lost: list[bytes] = []
        for oid in list(self.pending):
            e = entries.get(oid)
            if e is None or e.ready or not e.waiters:
                self.pending.discard(oid)
                continue
            if owner_prefix(oid) in live or oid in node.remote.fetching:
                continue
            if known is None:  # built at most once a sweep, and only when needed
                known = self._producers()
            if task_id_of(oid) in known:
                continue
            # Owned on another node, perhaps: ask there (the first ask can have been
            # skipped, by a node that served before its view held the others). A
            # fetch ends with the value, or with the error that no node has its owner.
            node.remote.need((oid,))
            if oid in node.remote.fetching:
                continue
            if oid in self.suspects:
                lost.append(oid)
            else:
                suspects.add(oid)
        self.suspects = suspects
        for oid in lost:
            self.pending.discard(oid)
            self._fail(oid)
        return lost

    def _producers(self) -> set[bytes]:
        """The ids of the tasks and actor calls queued or running on this node
        (a task waiting for a node that can take it included)."""
        node = self.node
        sched = node.sched
        known = set(sched.running)
        known.update(sched.waiting)
        known.update(sched.infeasible)
        known.update(node.cluster.forwarded_out)
        known.update(spec.task_id for spec in sched.ready)
        for rec in node.actors.actors.values():
            known.update(rec.inflight)
            for q in rec.queues.values():
                known.update(call.spec.task_id for call in q)
        return known

    def _fail(self, oid: bytes) -> None:
        directory = self.node.directory
        err = ObjectLostError(
            f"object {oid.hex()} can never become available: it is not on this node, no "
            f"task or actor call here will produce it, and its owner (the process that "
            f"created it, id prefix {short(owner_prefix(oid), 16)}) is gone — e.g. a ref "
            f"kept from before shutdown()/init(), or one whose process exited"
        )
        self.lost_total += 1
        logger.warning("object %s is lost: its owner is gone and nothing here produces "
                       "it; failing what waits on it", oid.hex())
        directory.free([oid])  # nobody owns it: gone once no consumer pins it
        directory.put(oid, True, _serialization.dumps(err))
