"""Objects across nodes: finding an object's owner node, asking it, freeing copies.

Each node's directory is the authority for the objects its processes own (an
object id begins with the id prefix of the process that made it, ``protocol._ids``).
A node that needs an object it does not have — a task's argument owned elsewhere,
a driver's or worker's ``get`` of a ref made on another node, the arguments of a
task forwarded here — asks the owner's node::

    FetchFromOwner(requester, [oid, ...])  request: answered once every object is
                                        ready there: [(oid, is_error, data, locations)]
                                        (``data`` the inline value or error;
                                        ``locations`` instead, the nodes whose store
                                        holds a large value)
    OwnsPrefix(prefix)                   request: is a process with that id prefix here?
    FreeCopies([oid, ...])               the owner freed these: drop your copies
    ReportLost(requester, oid, why)      request: every copy the owner named failed
                                        to copy here; the owner rebuilds the object
                                        if its store lost it too, and answers as
                                        `FetchFromOwner` does, once it is ready again

A large value is pulled into this node's store (``node.transfers.pull``) before the
directory entry becomes ready, so local workers and drivers read it as any other
stored object. The owner remembers which nodes took a copy (``holders``) and tells
them when it frees the object.

The owner's node is found by asking the other live nodes once per id prefix (there
are a handful of nodes and one answer per process, cached); nothing of this runs
on a one-node cluster, where every object's owner is local.

Node death: a fetch from a dead node fails its objects with ``OwnerDiedError``
(their owner lived there). A large value of this node's owners whose every
location died, or whose pull home failed, is rebuilt from its lineage
(``_lineage``: its task re-run, arguments first); only when that cannot be done
does it become the error saying why (``ObjectLostError`` for a ``put``,
``ObjectReconstructionFailed*Error`` for a task's return). A node that is not the
owner and whose pull of every named copy failed does not decide that itself: it
tells the owner's node (`ReportLost`), which alone holds the lineage, and pulls once
more from what the owner answers (the error, if the owner cannot rebuild it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ...core_worker._store_link import STORE, StoreLink
from ...exceptions import ObjectLostError, ObjectStoreFullError, OwnerDiedError
from ...protocol import _serialization
from ...protocol import _wire as w
from ...protocol._ids import is_stream_item, owner_prefix, short, task_id_of
from .._clients import Clients
from .._peers import NodePeers, PeerUnavailable
from ..gcs_client._membership import ClusterView, NodeStatus
from ._dep_watch import DependencyWatch
from ._directory import ObjectDirectory
from ._objects import NodeObjects
from ._transfer import ObjectTransfers

__all__ = ["RemoteObjects", "RemoteObjectsNode"]

logger = logging.getLogger("actorcore.node")

#: Bytes assumed for a stored (large) argument whose size is not known here.
STORED_SIZE_GUESS = 1 << 20

#: Seconds to wait for each node's answer to "is this process yours?".
OWNER_QUERY_TIMEOUT = 5.0


class _Forwarded(Protocol):
    @property
    def forwarded_out(self) -> Mapping[bytes, Any]: ...  # running on another node


class RemoteObjectsNode(Protocol):
    """What the cross-node side of the object manager uses of its node
    (``_runtime.NodeRuntime``)."""

    @property
    def node_hex(self) -> str: ...
    @property
    def view(self) -> ClusterView: ...
    @property
    def peers(self) -> NodePeers: ...
    @property
    def directory(self) -> ObjectDirectory: ...
    @property
    def objects(self) -> NodeObjects: ...
    @property
    def transfers(self) -> ObjectTransfers: ...
    @property
    def dep_watch(self) -> DependencyWatch: ...
    @property
    def store_link(self) -> StoreLink | None: ...
    @property
    def clients(self) -> Clients: ...
    @property
    def cluster(self) -> _Forwarded: ...
    def spawn(self, fn: Any, *args: Any) -> bool: ...
    def deliver(self, owner: bytes, results: list) -> None: ...


class RemoteObjects:
    """This node's side of objects shared between nodes (see the module docstring)."""

    def __init__(self, node: RemoteObjectsNode) -> None:
        self.node = node
        #: objects asked from another node, not arrived yet
        self.fetching: dict[bytes, str] = {}
        #: large objects of this node's owners: the nodes whose store holds them
        self.locations: dict[bytes, list[str]] = {}
        #: objects of this node's owners copied to other nodes: who to tell on free
        self.holders: dict[bytes, set[str]] = {}
        #: id prefix -> node id of that process (answers of ``n_owner``)
        self.owner_nodes: dict[bytes, str] = {}
        self.fetched = 0
        node.view.on_node_dead(self.on_node_dead)

    def register(self, dispatcher: Any) -> None:
        """Route the object requests of other nodes to this component."""
        dispatcher.register(w.FetchFromOwner, self._h_fetch)
        dispatcher.register(w.OwnsPrefix, self._h_owner)
        dispatcher.register(w.FreeCopies, self._h_free, oneway=True)
        dispatcher.register(w.ReportLost, self._h_lost)

    # -- what the node and its schedulers use ------------------------------------

    def need(self, oids: Iterable[bytes], hint: str | None = None) -> None:
        """Local consumers wait for ``oids``: ask their owners' nodes for those that
        are not here and whose owner is not a process of this node. ``hint``: the
        node to ask (the origin of a forwarded task), else found by id prefix."""
        node = self.node
        if not node.view.multi:
            return
        entries = node.directory.entries
        forwarded = node.cluster.forwarded_out
        live: set[bytes] | None = None
        groups: dict[str | None, list[bytes]] = {}
        for oid in oids:
            e = entries.get(oid)
            if (e is not None and e.ready) or oid in self.fetching \
                    or oid in self.locations or task_id_of(oid) in forwarded:
                continue
            if live is None:
                live = node.clients.live_id_prefixes()
            if owner_prefix(oid) in live:
                continue
            self.fetching[oid] = hint or ""
            groups.setdefault(hint, []).append(oid)
        for target, group in groups.items():
            node.spawn(self._fetch, target, group)

    def locality(self, deps: list[bytes]) -> dict[str, int]:
        """Bytes of ``deps`` held per node, as far as this node knows."""
        if not deps:
            return {}
        out: dict[str, int] = {}
        me = self.node.node_hex
        entries = self.node.directory.entries
        for oid in deps:
            e = entries.get(oid)
            if e is not None and e.ready:
                size = STORED_SIZE_GUESS if e.data == STORE else len(e.data or b"")
                out[me] = out.get(me, 0) + size
            for nid in self.locations.get(oid, ()):
                if nid != me:
                    out[nid] = out.get(nid, 0) + STORED_SIZE_GUESS
        return out

    def results_arrived(self, owner: bytes, sender: str, results: list,
                        deliver: bool = True) -> None:
        """A forwarded task's ``results`` came back from ``sender``: into the
        directory (after a pull, for the large ones), then to their owner (not
        with ``deliver`` False: the items of a ``num_returns="dynamic"`` task,
        which its owner fetches through the refs in the task's value)."""
        node = self.node
        if results and is_stream_item(results[0][0]):
            # A generator's items: counted in its lineage here; those a rebuild's
            # re-run yields again but nobody holds are let go (their copies too).
            entries = node.directory.entries
            ids = [r[0] for r in results]
            unwanted = node.objects.lineage.items_made(ids, {o for o in ids if o in entries})
            if unwanted:
                gone = set(unwanted)
                results = [r for r in results if r[0] not in gone]
                try:
                    node.peers.send(sender, w.FreeCopies(unwanted))
                except PeerUnavailable:
                    pass
        inline = []
        stored = []
        for item in results:
            self.holders.setdefault(item[0], set()).add(sender)
            if item[2] == STORE and not item[1]:
                stored.append(item[0])
                self.locations[item[0]] = [sender]
            else:
                inline.append(item)
        if not deliver:
            node.clients.held_for_drivers(r[0] for r in results)  # freed when the driver leaves
        if inline:
            node.directory.put_many(inline)
            if deliver:
                node.deliver(owner, inline)
        for oid in stored:
            node.spawn(self._pull_and_deliver, oid, owner if deliver else None)

    def copied_to(self, oid: bytes, node_id: str) -> None:
        """``node_id`` pulls ``oid`` from this node (an actor's argument sent there):
        it drops its copy when this node lets the object go (``dropped``)."""
        self.holders.setdefault(oid, set()).add(node_id)

    def dropped(self, oid: bytes) -> None:
        """The owner here freed ``oid``: the other nodes drop their copies."""
        self.locations.pop(oid, None)
        holders = self.holders.pop(oid, None)
        if holders:
            for nid in holders:
                try:
                    self.node.peers.send(nid, w.FreeCopies([oid]))
                except PeerUnavailable:
                    pass  # it died: nothing to free there

    def on_node_dead(self, status: NodeStatus) -> None:
        dead = status.node_id
        for prefix in [p for p, n in self.owner_nodes.items() if n == dead]:
            del self.owner_nodes[prefix]
        for holders in self.holders.values():
            holders.discard(dead)
        lost = []
        for oid, locs in self.locations.items():
            if dead in locs:
                locs.remove(dead)
                if not locs:
                    lost.append(oid)
        for oid in lost:
            del self.locations[oid]
            if self._let_go_if_unwanted(oid):
                continue
            self._rebuild_or_fail(oid, f"its only copy was in the store of node {dead[:12]}, "
                                       f"which died ({status.death_reason or 'unreachable'})")

    def forget_locations(self, oids: Iterable[bytes]) -> None:
        """``oids`` are rebuilt: where their lost copies were no longer counts."""
        if self.locations:
            for oid in oids:
                self.locations.pop(oid, None)

    def _let_go_if_unwanted(self, oid: bytes) -> bool:
        """Whether nobody wants ``oid`` any more: its owner freed it while it was
        pending (a result on its way home), nothing here is pinned on it and nobody
        waits for it. Then it is let go (its entry dropped, its lineage reference
        and the other nodes' copies with it) instead of being copied home, or rebuilt
        when its copy is lost: a task that needs it later rebuilds it then."""
        directory = self.node.directory
        if not directory.unwanted(oid):
            return False
        self.fetching.pop(oid, None)
        directory.put(oid, True, _serialization.dumps(ObjectLostError(
            f"object {oid.hex()} was freed by its owner")))  # dropped at once
        return True

    def _rebuild_or_fail(self, oid: bytes, why: str) -> None:
        """Every copy of ``oid`` (owned here) is gone: rebuild it from its lineage,
        or put the error saying why it cannot be."""
        self.fetching.pop(oid, None)
        err = self.node.objects.lineage.reconstruct(oid, why)
        if err is not None:
            directory = self.node.directory
            directory.reset(oid)
            directory.put(oid, True, _serialization.dumps(err))

    def statistics(self) -> dict:
        return {"fetching": len(self.fetching), "remote_located": len(self.locations),
                "copied_out": len(self.holders), "fetched": self.fetched}

    # -- asking another node -----------------------------------------------------

    async def _owner_node(self, oid: bytes) -> str | None:
        prefix = owner_prefix(oid)
        known = self.owner_nodes.get(prefix)
        if known is not None:
            return known
        # Every live node answers "no", or one says "mine". A node that did not
        # answer (its link broke, a partition) is asked again while it lives: its
        # silence is no proof that the owner is gone.
        asked: set[str] = set()
        while True:
            unanswered = 0
            for status in self.node.view.others():
                if status.node_id in asked:
                    continue
                try:
                    mine = await self.node.peers.request(status.node_id, w.OwnsPrefix(prefix),
                                                         timeout=OWNER_QUERY_TIMEOUT)
                except PeerUnavailable:
                    continue  # it died: not the owner's node any more
                except Exception as exc:
                    logger.info("asking node %s for the owner of %s failed: %s",
                                status.node_id[:12], short(prefix, 16), exc)
                    unanswered += 1
                    continue
                asked.add(status.node_id)
                if mine:
                    self.owner_nodes[prefix] = status.node_id
                    return status.node_id
            if not unanswered:
                return None

    async def _fetch(self, target: str | None, oids: list[bytes]) -> None:
        node = self.node
        if target is None:
            by_node: dict[str | None, list[bytes]] = {}
            for oid in oids:
                by_node.setdefault(await self._owner_node(oid), []).append(oid)
            for nid, group in by_node.items():
                if nid is None:
                    for oid in group:
                        self._put_error(oid, OwnerDiedError(
                            f"object {oid.hex()} cannot be fetched: no live node has its "
                            f"owner (the process with id prefix "
                            f"{short(owner_prefix(oid), 16)}); it exited or its node died"))
                else:
                    node.spawn(self._fetch, nid, group)
            return
        try:
            items = await node.peers.request(target, w.FetchFromOwner(node.node_hex, oids),
                                             timeout=None)
        except Exception as exc:  # its node died or left while we waited
            logger.info("fetching %d objects from node %s failed: %s", len(oids),
                        target[:12], exc)
            for oid in oids:
                self._put_error(oid, OwnerDiedError(
                    f"object {oid.hex()} is lost: the node holding it for its owner "
                    f"({target[:12]}) died or left before it could be fetched ({exc})"))
            return
        self._take_answers(items, target)

    async def _pull(self, oid: bytes, locations: list[str], home: bool = False,
                    owner: str | None = None) -> bool:
        """Copy the large ``oid`` into this node's store, then make it ready here.
        ``home``: a result of this node's owners on its way home (a failed pull is
        rebuilt from lineage). ``owner``: the owner's node, told if every copy
        fails (`ReportLost`)."""
        node = self.node
        transfers = getattr(node, "transfers", None)
        try:
            if transfers is None:
                raise ObjectLostError(
                    f"object {oid.hex()} is in the store of node(s) "
                    f"{', '.join(n[:12] for n in locations)}; this node cannot pull "
                    f"objects from other nodes")
            await transfers.pull(oid, locations)
        except Exception as exc:
            logger.warning("pulling object %s from %s failed: %s", oid.hex(),
                           [n[:12] for n in locations], exc)
            if home:
                if oid in self.node.objects.lineage.rebuilding:
                    return False  # the node's death started its rebuild already
                self.locations.pop(oid, None)
                if self._let_go_if_unwanted(oid):
                    return False
                self._rebuild_or_fail(oid, f"copying it home from node(s) "
                                           f"{', '.join(n[:12] for n in locations)} "
                                           f"failed: {exc}")
                return False
            if owner is not None and not isinstance(exc, ObjectStoreFullError) \
                    and self.node.view.get(owner) is not None:
                node.spawn(self._ask_owner, oid, owner, f"{type(exc).__name__}: {exc}")
                return False
            self._put_error(oid, exc if isinstance(exc, ObjectLostError | ObjectStoreFullError)
                            else ObjectLostError(
                f"object {oid.hex()} could not be copied from node(s) "
                f"{', '.join(n[:12] for n in locations)}: {exc}"))
            return False
        self.fetching.pop(oid, None)
        self.fetched += 1
        locs = self.locations.get(oid)
        if locs is not None and node.node_hex not in locs:
            locs.append(node.node_hex)
        # The copy's store ref is the transfers' (``drop_copy`` lets it go with the entry).
        node.directory.put(oid, False, STORE)
        return True

    async def _pull_and_deliver(self, oid: bytes, owner: bytes | None) -> None:
        if self._let_go_if_unwanted(oid):
            return  # freed while its task ran: not worth the copy
        await self._pull(oid, list(self.locations.get(oid, ())), home=True)
        e = self.node.directory.entries.get(oid)
        if owner is not None and e is not None and e.ready:
            self.node.deliver(owner, [(oid, e.is_error, e.data)])

    async def _ask_owner(self, oid: bytes, owner: str, why: str) -> None:
        """Every copy of ``oid`` failed to come here: its owner's node decides
        (`ReportLost`), and the answer is pulled once more (no third time)."""
        node = self.node
        try:
            items = await node.peers.request(owner, w.ReportLost(node.node_hex, oid, why),
                                             timeout=None)
        except Exception as exc:
            self._put_error(oid, OwnerDiedError(
                f"object {oid.hex()} could not be copied here ({why}), and its owner's "
                f"node {owner[:12]} could not be asked to rebuild it: {exc}"))
            return
        self._take_answers(items, None)  # no third time: a failed pull is the error

    def _take_answers(self, items: list, owner: str | None) -> None:
        """The owner's node answered a `FetchFromOwner` or a `ReportLost` with
        ``items``: a value or error goes into the directory; a large value is
        pulled from the nodes named (``owner``: the node to tell if every copy
        fails, `ReportLost`; None: the pull's failure is the object's error)."""
        node = self.node
        for entry in items:
            oid = entry.object_id
            if entry.locations is None:
                self.fetching.pop(oid, None)
                self.fetched += 1
                node.directory.put(oid, entry.is_error, entry.data)
            else:
                node.spawn(self._pull, oid, list(entry.locations), False, owner)

    def _put_error(self, oid: bytes, error: BaseException) -> None:
        self.fetching.pop(oid, None)
        self.node.directory.put(oid, True, _serialization.dumps(error))

    # -- answering another node --------------------------------------------------

    def _h_owner(self, conn: Any, m: w.OwnsPrefix, reply: Any) -> None:
        reply.send(m.prefix in self.node.clients.live_id_prefixes())

    def _h_free(self, conn: Any, m: w.FreeCopies) -> None:
        self.node.directory.free(m.object_ids)

    def _h_lost(self, conn: Any, m: w.ReportLost, reply: Any) -> None:
        """`ReportLost`: the requester could copy none of the copies named for
        ``oid`` (owned here). If this node's store lost it too, it is rebuilt from its
        lineage (or becomes the error saying why not); the answer is
        `FetchFromOwner`'s, once it is ready again."""
        requester, oid, why = m.requester, m.object_id, m.why
        node = self.node

        async def check() -> None:
            e = node.directory.entries.get(oid)
            if (e is not None and e.ready and not e.is_error and e.data == STORE
                    and oid not in node.objects.lineage.rebuilding):
                try:
                    here = node.store_link is None or await node.store_link.contains(oid)
                except Exception as exc:
                    logger.warning("ReportLost of %s: asking the store whether it has it "
                                   "failed: %s", oid.hex(), exc)
                    here = True
                if not here and node.directory.entries.get(oid) is e:
                    node.objects.store_refs.pop(oid, None)
                    self.locations.pop(oid, None)
                    self._rebuild_or_fail(oid, f"no copy of it could be copied to node "
                                               f"{str(requester)[:12]} ({why}), and the "
                                               f"store of its owner's node "
                                               f"{node.node_hex[:12]} no longer has it")
            self._h_fetch(conn, w.FetchFromOwner(requester, [oid]), reply)

        if not node.spawn(check):
            reply.fail(RuntimeError("the node is stopping"))

    def _h_fetch(self, conn: Any, m: w.FetchFromOwner, reply: Any) -> None:
        requester, oids = m.requester, m.object_ids
        node = self.node
        directory = node.directory
        remaining = [len(oids)]
        answers: dict[bytes, w.OwnerEntry] = {}

        def one(oid: bytes, e: Any) -> None:
            if e.is_error or e.data != STORE:
                answers[oid] = w.OwnerEntry(oid, e.is_error, e.data, None)
            else:
                locs = list(self.locations.get(oid, ()))
                if node.node_hex not in locs:
                    locs.insert(0, node.node_hex)
                answers[oid] = w.OwnerEntry(oid, False, None, locs)
            if not e.is_error:
                self.holders.setdefault(oid, set()).add(requester)
            remaining[0] -= 1
            if remaining[0] == 0 and not reply.done:
                reply.send([answers[o] for o in oids])

        for oid in oids:
            directory.when_ready(oid, functools.partial(one, oid))
        if remaining[0] > 0:
            self.need(oids)  # owned elsewhere still (a ref that travelled): ask on
            node.dep_watch.watch(oids)
