"""The node's object bookkeeping: puts, fetches, frees, store refs and lineage.

``NodeObjects`` serves the ``put``, ``fetch`` and ``free`` messages over the node's
``ObjectDirectory``, holds the node's own store ref on every large object (so a
producer may drop its ref as soon as the node has one), and counts each task's
live returns so its lineage is handed to ``control.lineage_done`` once the last
of them is freed.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

import trio

import transport

from ...core_worker._store_link import STORE
from ...protocol import _serialization
from ...protocol import _wire as w
from ...protocol._ids import owner_prefix
from ...protocol._messages import TaskSpec
from .._clients import Clients
from ._dep_watch import DependencyWatch
from ._directory import ObjectDirectory
from ._lineage import Lineage

__all__ = ["NodeObjects", "ObjectsHost"]

logger = logging.getLogger("actorcore.node")


class ObjectsHost(Protocol):
    """What ``NodeObjects`` uses of the node (``node._runtime.NodeRuntime``).

    Named here so that this module stays below the node runtime, which creates a
    ``NodeObjects`` with itself, instead of the two importing each other.
    """

    @property
    def directory(self) -> ObjectDirectory: ...
    @property
    def control(self) -> Any: ...
    @property
    def dep_watch(self) -> DependencyWatch: ...
    @property
    def store_link(self) -> Any: ...
    @property
    def transfers(self) -> Any: ...  # _transfer.ObjectTransfers
    @property
    def serving(self) -> bool: ...
    @property
    def sched(self) -> Any: ...
    @property
    def remote(self) -> Any: ...
    @property
    def node_hex(self) -> str: ...
    def spawn(self, fn: Any, *args: Any) -> bool: ...
    @property
    def clients(self) -> Clients: ...


class NodeObjects:
    """The node's objects: directory messages, store refs and live-return counts."""

    def __init__(self, node: ObjectsHost, lineage_cap: int) -> None:
        self.node = node
        #: oid -> "pending" | "held" | "drop": the node's own store ref on the object.
        self.store_refs: dict[bytes, str] = {}
        #: the specs of the tasks submitted here, while a return may need rebuilding.
        self.lineage = Lineage(node, lineage_cap)
        #: Fault hook (`DelayStoreHold`): seconds the node waits before taking its
        #: store ref on a reported large value, so that a test can kill the producer
        #: in that window.
        self.hold_delay = 0.0

    def register(self, dispatcher: transport.Dispatcher) -> None:
        """Route the object messages of the node's processes to this component."""
        dispatcher.register(w.Put, self._h_put, oneway=True)
        dispatcher.register(w.Free, self._h_free, oneway=True)
        dispatcher.register(w.Fetch, self._h_fetch)
        dispatcher.register(w.Rebuild, self._h_rebuild)
        dispatcher.register(w.DelayStoreHold, self._h_fault)


    def record_lineage(self, spec: TaskSpec) -> None:
        # The spec goes to the GCS task table (batched) and is kept here while a
        # return of it may need rebuilding (``_lineage``: counted references,
        # capped). A retry records the spec again (same task id): the count stands.
        self.node.control.record_task(spec)
        self.lineage.record(spec)

    def republish_lineage(self) -> int:
        """The GCS restarted empty: record the lineage of every task still kept
        (a return alive, or a kept spec needing it) again, behind, through the
        lineage buffer. Returns how many."""
        record = self.node.control.record_task
        specs = self.lineage.kept_specs()
        for spec in specs:
            record(spec)
        return len(specs)

    def _h_put(self, conn: Any, m: w.Put) -> None:
        items = m.objects
        owned = self.node.clients.owned_by(conn)
        if owned is not None:
            owned.update(oid for oid, _e, _d in items)
        self.hold_store_objects(items, conn)
        self.node.directory.put_many(items)

    def hold_store_objects(self, items: list, producer: Any) -> None:
        """Take the node's store ref on large objects, then let the producer drop its own.

        ``store_refs[oid]`` is ``"pending"`` until our ``add_ref`` is done, then
        ``"held"``; an object dropped from the directory meanwhile is marked ``"drop"``
        and released as soon as the ``add_ref`` lands (never a release before a hold).
        """
        stored = [oid for oid, _err, data in items if data == STORE]
        if not stored or not self.node.serving or self.node.store_link is None:
            return
        refs = self.store_refs
        # One node ref per object: a value made again while the node holds it (a
        # generator re-run for a lost item re-yields the others, whose producer
        # took a ref on the copy already there) is not held twice; its producer
        # still drops its own ref below.
        oids = [oid for oid in stored if refs.get(oid) not in ("held", "pending")]
        for oid in oids:
            refs[oid] = "pending"

        async def hold() -> None:
            lost = []
            if self.hold_delay:
                await trio.sleep(self.hold_delay)
            for oid in oids:
                held = True
                try:
                    held = await self.node.store_link.add_ref(oid)
                except Exception as exc:
                    logger.warning("store add_ref %s failed: %s", oid.hex(), exc)
                if refs.get(oid) == "drop":
                    refs.pop(oid, None)
                    self.node.store_link.release_soon([oid])
                elif not held:
                    # The producer died (or its store connection broke) before our
                    # ref landed: its ref, the only one, went with it and the store
                    # freed the value. Our ref holds nothing; the entry says STORE
                    # for a value nobody has.
                    refs.pop(oid, None)
                    self.node.store_link.release_soon([oid])
                    lost.append(oid)
                else:
                    refs[oid] = "held"
            for oid in lost:
                self._lost_before_held(oid)
            if producer is not None and not producer.closed:
                try:
                    producer.send_nowait(w.ReleaseObjects(stored))
                except transport.TransportError:
                    pass

        self.node.spawn(hold)

    def _lost_before_held(self, oid: bytes) -> None:
        """A large value reported ready was freed before the node's ref on it landed
        (its producer was killed right after reporting it). Owned here, it is rebuilt
        from its lineage (or becomes the error saying why it cannot be); owned on
        another node (a forwarded task's result, already sent home), that node finds
        it gone when it pulls the value, and rebuilds it from its own lineage."""
        directory = self.node.directory
        e = directory.entries.get(oid)
        if e is None or not e.ready or e.is_error or e.data != STORE:
            return
        logger.warning("object %s was freed from the store of node %s before the node "
                       "held it (its producer died): rebuilding it", oid.hex(),
                       self.node.node_hex[:12])
        if owner_prefix(oid) not in self.node.clients.live_id_prefixes() \
                and self.lineage.spec_of(oid) is None:
            return  # a forwarded task's result: its owner's node rebuilds it
        err = self.lineage.reconstruct(
            oid, f"its producer died before node {self.node.node_hex[:12]} took a ref "
                 f"on it in the object store")
        if err is not None:
            directory.reset(oid)
            directory.put(oid, True, _serialization.dumps(err))

    def on_object_dropped(self, oid: bytes, entry: Any) -> None:
        # Once every return of a task is freed its lineage is no longer needed: the
        # GCS may flush it (marks are batched, see ``node.gcs_client._control``). ``put`` objects
        # (a per-process "put task" id) and actor results have no count here.
        self.lineage.return_dropped(oid)
        remote = self.node.remote
        if remote.holders or remote.locations:
            remote.dropped(oid)
        # A copy pulled from another node goes with its entry (ref and location).
        self.node.transfers.drop_copy(oid)
        state = self.store_refs.get(oid)
        if state == "pending":
            self.store_refs[oid] = "drop"
        elif state == "held":
            del self.store_refs[oid]
            self.node.store_link.release_soon([oid])

    def _h_fetch(self, conn: Any, m: w.Fetch, reply: Any) -> None:
        oids = m.object_ids
        remaining = [len(oids)]
        directory = self.node.directory
        # Errors of the objects that became ready as errors, kept in case their entry
        # is dropped before the last object of this fetch is ready (an object the
        # dependency watch found lost leaves the directory at once).
        errors: dict[bytes, Any] = {}

        def one(ready: bytes, e: Any) -> None:
            if e.is_error:
                errors[ready] = e.data
            remaining[0] -= 1
            if remaining[0] == 0 and not reply.done:
                items = []
                for oid in oids:
                    entry = directory.entries.get(oid)
                    if entry is not None:
                        items.append((oid, entry.is_error, entry.data))
                    elif oid in errors:
                        items.append((oid, True, errors[oid]))
                    else:
                        from ...exceptions import ObjectLostError

                        err = ObjectLostError(f"object {oid.hex()} was freed by its owner")
                        items.append((oid, True, _serialization.dumps(err)))
                reply.send(w.FetchedObjects(items))

        for oid in oids:
            directory.when_ready(oid, functools.partial(one, oid))
        if remaining[0] > 0:
            # A fetch is a consumer like any other: the dependency watch fails an
            # object that can never arrive (not ready, nothing queued or running
            # here produces it — task or actor call —, its owner gone), which
            # answers this fetch through ``one`` like any ready object. A fetch of
            # the result of a long actor call therefore waits for as long as the
            # call runs.
            self.node.remote.need(oids)  # owned on another node: ask there
            self.node.dep_watch.watch(oids)

    def _h_rebuild(self, conn: Any, m: w.Rebuild, reply: Any) -> None:
        """`Rebuild`, a request: a reader found these gone from this
        node's store (a spill file that vanished). Those the store really lost are
        rebuilt from their lineage (or become the error saying why they cannot be);
        the answer is a fetch's, once each is ready again."""
        oids = m.object_ids
        node = self.node
        directory = node.directory

        async def check() -> None:
            for oid in oids:
                e = directory.entries.get(oid)
                if e is None or not e.ready or e.is_error or e.data != STORE:
                    continue
                try:
                    here = node.store_link is None or await node.store_link.contains(oid)
                except Exception as exc:
                    logger.warning("rebuild of %s: asking the store whether it has it "
                                   "failed: %s", oid.hex(), exc)
                    here = True
                if here or directory.entries.get(oid) is not e or not e.ready:
                    continue
                # The node's ref on the lost value went with it.
                self.store_refs.pop(oid, None)
                err = self.lineage.reconstruct(
                    oid, f"its value is no longer in the object store of node "
                         f"{node.node_hex[:12]} (its spill file vanished or could not be "
                         f"read)")
                if err is not None:
                    directory.reset(oid)
                    directory.put(oid, True, _serialization.dumps(err))
            self._h_fetch(conn, w.Fetch(oids), reply)

        if not node.spawn(check):
            reply.fail(RuntimeError("the node is stopping"))

    def _h_free(self, conn: Any, m: w.Free) -> None:
        owned = self.node.clients.owned_by(conn)
        if owned is not None:
            owned.difference_update(m.object_ids)
        self.node.directory.free(m.object_ids)

    def _h_fault(self, conn: Any, m: w.DelayStoreHold, reply: Any) -> None:
        self.hold_delay = float(m.hold_delay)  # checked (0 to 60 s) by the dispatcher
        reply.send(None)
