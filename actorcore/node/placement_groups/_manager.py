"""The node's placement groups: gang reservation of bundles, their records, removal.

A placement group is created by the node its creator is connected to (the
group's *coordinator*). The coordinator keeps the group pending until a placement
of every bundle (``_policy.place_bundles``, over the cluster view's free resources
and this node's live ledger) can be reserved, and then reserves it node by node:
on this node directly in the ledger, on the others with a `PrepareBundles`
request over ``node.peers``. A node takes its share of bundles all at once or
not at all (``prepare_here``); if any node refuses (its resources went meanwhile:
the view is a heartbeat old) or cannot be reached, the coordinator releases what
the others prepared and tries again at the next change. Only when every node has
prepared does it commit on each (``commit_here``: the renamed resources appear, so
work can use the bundles). So a group is reserved whole or not at all, and two
groups (or a group and tasks) racing for the same resources both stay consistent:
each node's ledger is the arbiter of its own.

Reserving a bundle takes its resources from the node's ledger and adds the
renamed resources (``_resources.bundle_resources``) that tasks and actors of the
group ask for; the node's total grows by them, so the local scheduler places them
as any other work, and its heartbeats tell the cluster.

Why the retry loop waits on three things
----------------------------------------
A pending group can become placeable when this node frees resources (a ledger
release), when another node does (a new heartbeat in the view), when a node joins
(the view again), or when another group is removed (``wakeup``). The loop waits
for the first of these rather than polling, with ``RETRY`` seconds as the bound in
case a remote release shows in no heartbeat we saw.

Records
-------
Each group's record (Ray's ``placement_group_table`` entry plus the coordinator's
node id) is written to the GCS kv under the ``__placement_groups`` namespace on
every state change, and the name registry beside it, so any driver reads them
through its own node. A node without a GCS keeps them only here.

Removal kills the group's tasks and actors on every node that holds a bundle
(``TaskPlacementGroupRemoved``, ``ActorPlacementGroupRemoved``) and gives the
bundles back. A non-detached group goes with the driver that created it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from ...exceptions import ActorPlacementGroupRemoved, TaskPlacementGroupRemoved
from ...protocol import _wire as w
from ...protocol._messages import TaskSpec
from ...protocol._placement import STRATEGIES, bundle_resources, check_bundles, group_of
from ._policy import place_bundles

__all__ = ["RETRY", "GroupRecord", "PlacementGroups", "PlacementGroupsService"]

logger = logging.getLogger("actorcore.placement_groups")

#: Longest wait between placement attempts of a pending group.
RETRY = 1.0
#: The GCS kv namespace of the records and names.
KV_NAMESPACE = "__placement_groups"
#: How long a node trusts its cached state of a group another node coordinates.
LOOKUP_TTL = 2.0


@attrs.define(eq=False)
class GroupRecord:
    """A group as its coordinator knows it."""

    pg_id: str
    bundles: list[dict[str, float]]
    strategy: str
    name: str
    namespace: str
    detached: bool
    job_id: str
    creator: bytes | None  # the driver it fate-shares with (None: detached or unknown)
    coordinator: str
    state: str = "PENDING"  # PENDING -> CREATED -> REMOVED (or PENDING -> REMOVED)
    bundle_nodes: dict[int, str] = attrs.Factory(dict)
    created_at: float = attrs.Factory(time.time)
    warned: bool = False

    def entry(self) -> dict:
        """Ray's ``placement_group_table`` entry (plus ``coordinator``)."""
        return {
            "placement_group_id": self.pg_id,
            "name": self.name,
            "bundles": {i: dict(b) for i, b in enumerate(self.bundles)},
            "bundles_to_node_id": dict(self.bundle_nodes),
            "strategy": self.strategy,
            "state": self.state,
            "is_detached": self.detached,
            "namespace": self.namespace,
            "creator_job_id": self.job_id,
            "stats": {"created_at": self.created_at},
            "coordinator": self.coordinator,
        }


def _sum(bundles: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _in_group(pg: str) -> Any:
    def match(spec: Any) -> bool:
        return group_of(spec.resources) == pg
    return match


class PlacementGroups:
    """The node's placement groups: those it coordinates, the bundles it holds."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.groups: dict[str, GroupRecord] = {}  # coordinated here
        self.held: dict[str, dict[int, dict[str, float]]] = {}  # bundles reserved here
        self.added: dict[str, dict[str, float]] = {}  # their renamed resources
        self.removed: set[str] = set()
        self.names: dict[tuple[str, str], str] = {}  # (namespace, name) -> pg, here
        self._cached: dict[str, tuple[str, float]] = {}  # pg -> (state, when looked up)
        self._looking: set[str] = set()
        self.wakeup = trio.Event()
        self.reserved_total = 0
        self.placement_failures = 0
        node.sched.group_verdict = self.verdict

    def register(self, dispatcher: Any) -> None:
        """Route the placement-group requests of processes and of other nodes here."""
        d = dispatcher
        d.register(w.CreatePlacementGroup,
                   lambda conn, m, reply: self._create(conn, m.request, reply))
        d.register(w.RemovePlacementGroup,
                   lambda conn, m, reply: self._spawn(self._remove_anywhere, m.pg_id, reply))
        d.register(w.GetPlacementGroup, lambda conn, m, reply: self._spawn(
            self._get_by_name, m.name, m.namespace, reply))
        d.register(w.PlacementGroupTable,
                   lambda conn, m, reply: self._spawn(self._table, m.pg_id, reply))
        d.register(w.PrepareBundles,
                   lambda conn, m, reply: reply.send(self._prepare(m.pg_id, m.items)))
        d.register(w.CommitBundles, self._h_commit)
        d.register(w.ReleaseBundles, lambda conn, m: self.release_here(m.pg_id), oneway=True)
        d.register(w.RemoveGroup, self._h_remove)

    @property
    def _gcs(self) -> bool:
        return bool(self.node.control.backend == "gcs")

    # ------------------------------------------------------- requests of a process

    def _spawn(self, fn: Any, *args: Any) -> None:
        reply = args[-1]

        async def run() -> None:
            try:
                await fn(*args)
            except Exception as exc:
                if not reply.done:
                    reply.fail(exc)
                else:
                    logger.warning("placement group request %s failed: %s",
                                   getattr(fn, "__name__", fn), exc)

        if not self.node.spawn(run):
            reply.fail(RuntimeError("the node is stopping"))

    def _create(self, conn: Any, req: Mapping[str, Any], reply: Any) -> None:
        bundles = check_bundles(req.get("bundles"))
        strategy = req.get("strategy")
        if strategy not in STRATEGIES:
            raise ValueError(f"placement_group: strategy={strategy!r} must be one of "
                             f"{', '.join(STRATEGIES)}")
        pg = str(req["pg_id"])
        client = self.node.clients.by_conn.get(conn)
        detached = req.get("lifetime") == "detached"
        creator = None
        if not detached and client is not None:
            creator = (client.worker_id if client.role == "driver" else
                       self.node.actors.job_drivers.get(bytes.fromhex(req["job_id"])))
        rec = GroupRecord(
            pg_id=pg, bundles=bundles, strategy=strategy, name=req.get("name") or "",
            namespace=req.get("namespace") or "", detached=detached,
            job_id=req["job_id"], creator=creator, coordinator=self.node.node_hex)
        self._spawn(self._register, rec, reply)

    async def _register(self, rec: GroupRecord, reply: Any) -> None:
        if rec.name:
            key = (rec.namespace, rec.name)
            taken = self.names.get(key)
            if taken is None and self._gcs:
                pg = rec.pg_id
                claimed = await self.node.control.call(lambda g: g.kv.put(
                    f"name\x00{rec.namespace}\x00{rec.name}", pg, namespace=KV_NAMESPACE,
                    overwrite=False))
                if not claimed:
                    taken = await self.node.control.call(lambda g: g.kv.get(
                        f"name\x00{rec.namespace}\x00{rec.name}", namespace=KV_NAMESPACE))
            if taken is not None and taken != rec.pg_id:
                raise ValueError(
                    f"placement_group: name {rec.name!r} is already taken in namespace "
                    f"{rec.namespace!r} (by placement group {taken})")
            self.names[key] = rec.pg_id
        self.groups[rec.pg_id] = rec
        await self._write(rec)
        reply.send(None)
        self.wakeup.set()

    async def _write(self, rec: GroupRecord) -> None:
        if not self._gcs:
            return
        entry = rec.entry()
        try:
            await self.node.control.call(lambda g: g.kv.put(
                f"pg\x00{rec.pg_id}", entry, namespace=KV_NAMESPACE))
        except Exception as exc:
            logger.warning("writing placement group %s to the GCS failed: %s", rec.pg_id, exc)

    async def _read(self, pg: str) -> dict | None:
        rec = self.groups.get(pg)
        if rec is not None or not self._gcs:
            return rec.entry() if rec is not None else None
        found = await self.node.control.call(lambda g: g.kv.get(
            f"pg\x00{pg}", namespace=KV_NAMESPACE))
        return found if isinstance(found, dict) else None

    async def _get_by_name(self, name: str, namespace: str, reply: Any) -> None:
        pg = self.names.get((namespace, name))
        if pg is None and self._gcs:
            pg = await self.node.control.call(lambda g: g.kv.get(
                f"name\x00{namespace}\x00{name}", namespace=KV_NAMESPACE))
        entry = await self._read(pg) if pg is not None else None
        if entry is None or entry.get("state") == "REMOVED":
            raise ValueError(f"there is no placement group named {name!r} in namespace "
                             f"{namespace!r}")
        reply.send(entry)

    async def _table(self, pg: str | None, reply: Any) -> None:
        if pg is not None:
            reply.send(await self._read(pg) or {})
            return
        if not self._gcs:
            reply.send({p: r.entry() for p, r in self.groups.items()})
            return
        rows = await self.node.control.call(lambda g: g.scan(
            "kv", f"{KV_NAMESPACE}\x00pg\x00"))
        out = {}
        for _key, entry in rows:
            if isinstance(entry, dict):
                out[entry["placement_group_id"]] = entry
        for p, r in self.groups.items():  # this node's are the freshest
            out[p] = r.entry()
        reply.send(out)

    async def _remove_anywhere(self, pg: str, reply: Any) -> None:
        rec = self.groups.get(pg)
        if rec is not None:
            await self.remove(rec)
            reply.send(None)
            return
        entry = await self._read(pg)
        if entry is None:
            raise ValueError(f"remove_placement_group: unknown placement group {pg}")
        coordinator = entry.get("coordinator")
        status = self.node.view.get(coordinator) if coordinator else None
        if status is not None and status.alive and coordinator != self.node.node_hex:
            await self.node.peers.request(coordinator, w.RemoveGroup(pg), timeout=30)
        else:
            # Its coordinator is gone: release what its record says is reserved.
            for nid in set(entry.get("bundles_to_node_id", {}).values()):
                await self._release_on(nid, pg)
            entry = {**entry, "state": "REMOVED"}
            await self.node.control.call(lambda g: g.kv.put(
                f"pg\x00{pg}", entry, namespace=KV_NAMESPACE))
        self.removed.add(pg)
        reply.send(None)

    async def remove(self, rec: GroupRecord) -> None:
        """Remove a group coordinated here: its work dies, its bundles go back."""
        if rec.state == "REMOVED":
            return
        rec.state = "REMOVED"
        self.removed.add(rec.pg_id)
        nodes = set(rec.bundle_nodes.values())
        rec.bundle_nodes = {}
        for nid in nodes:
            await self._release_on(nid, rec.pg_id)
        if rec.name and self.names.get((rec.namespace, rec.name)) == rec.pg_id:
            del self.names[(rec.namespace, rec.name)]
            if self._gcs:
                try:
                    await self.node.control.call(lambda g: g.kv.delete(
                        f"name\x00{rec.namespace}\x00{rec.name}", namespace=KV_NAMESPACE))
                except Exception as exc:
                    logger.warning("freeing placement group name %r failed: %s", rec.name, exc)
        await self._write(rec)
        # Tasks here waiting for the group fail now (not at the next recheck).
        self.node.sched.fail_where(_in_group(rec.pg_id), self._task_error(rec.pg_id))
        self.wakeup.set()

    def driver_gone(self, worker_id: bytes) -> None:
        """The groups a departed driver created (not detached) go with it."""
        for rec in [r for r in self.groups.values()
                    if r.creator == worker_id and r.state != "REMOVED"]:
            logger.info("removing placement group %s: its driver is gone", rec.pg_id)
            self.node.spawn(self.remove, rec)

    # ------------------------------------------------------- node to node

    def _h_commit(self, conn: Any, m: w.CommitBundles, reply: Any) -> None:
        self.commit_here(m.pg_id)
        reply.send(None)

    def _h_remove(self, conn: Any, m: w.RemoveGroup, reply: Any) -> None:
        rec = self.groups.get(m.pg_id)
        if rec is None:
            raise ValueError(f"placement group {m.pg_id} is not coordinated by this node")
        self._spawn(self._remove_reply, rec, reply)

    async def _remove_reply(self, rec: GroupRecord, reply: Any) -> None:
        await self.remove(rec)
        reply.send(None)

    def prepare_here(self, pg: str, items: list[tuple[int, dict[str, float]]]) -> bool:
        """Phase one: take bundles ``items`` of ``pg`` from this node's ledger, all or
        none. Nothing can use them yet: their renamed resources appear at commit,
        once every node of the group has prepared (so ``ready()`` never resolves
        on a group that is only partly reserved)."""
        return self._prepare(pg, items).taken

    def _prepare(self, pg: str, items: list[tuple[int, dict[str, float]]]) -> w.BundlesPrepared:
        if pg in self.removed:
            return w.BundlesPrepared(False, f"placement group {pg} was removed here")
        need = _sum(b for _i, b in items)
        if not self.node.sched.ledger.try_acquire(need):
            return w.BundlesPrepared(False, f"node {self.node.node_hex[:12]} cannot take "
                                            f"{need} now")
        held = self.held.setdefault(pg, {})
        for i, b in items:
            held[i] = dict(b)
        return w.BundlesPrepared(True)

    def commit_here(self, pg: str) -> None:
        """Phase two: the prepared bundles' renamed resources join the node."""
        held = self.held.get(pg)
        if held is None or pg in self.added:
            return
        extra: dict[str, float] = {}
        for i, b in held.items():
            for k, v in bundle_resources(pg, i, b).items():
                extra[k] = extra.get(k, 0.0) + v
        self.added[pg] = extra
        self.node.sched.ledger.add_resources(extra)
        self.reserved_total += len(held)
        self.node.sched.resources_added()

    def release_here(self, pg: str) -> None:
        """Give back what ``pg`` holds here; its tasks and actors here die first."""
        held = self.held.pop(pg, None)
        added = self.added.pop(pg, None)
        if held is None:
            return
        self.node.sched.fail_where(_in_group(pg), self._task_error(pg))
        self.node.actors.end_where(
            lambda spec: group_of(spec.resources) == pg, ActorPlacementGroupRemoved,
            f"its placement group {pg} was removed")
        ledger = self.node.sched.ledger
        ledger.remove_resources(added or ())
        ledger.release(_sum(held.values()))

    async def _release_on(self, nid: str, pg: str) -> None:
        if nid == self.node.node_hex:
            self.release_here(pg)
            return
        try:
            await self.node.peers.request(nid, w.ReleaseBundles(pg), timeout=10)
        except Exception as exc:  # a dead node's bundles died with it
            logger.warning("releasing placement group %s on node %s failed: %s",
                           pg, nid[:12], exc)

    # ------------------------------------------------------- placement

    def pending(self) -> list[GroupRecord]:
        return [r for r in self.groups.values() if r.state == "PENDING"]

    def _free(self) -> dict[str, dict[str, float]]:
        me = self.node.node_hex
        free = {s.node_id: dict(s.available) for s in self.node.view.alive()}
        free[me] = dict(self.node.sched.available)
        return free

    async def try_place(self, rec: GroupRecord) -> bool:
        """One attempt to reserve ``rec`` whole; True once it is created."""
        me = self.node.node_hex
        plan = place_bundles(rec.bundles, rec.strategy, self._free(), local=me)
        if plan is None:
            if not rec.warned:
                rec.warned = True
                capacity = {s.node_id: s.resources for s in self.node.view.alive()}
                capacity[me] = dict(self.node.sched.total)
                ever = place_bundles(rec.bundles, rec.strategy, capacity, local=me)
                logger.warning(
                    "placement group %s (%s, bundles %s) is pending: %s", rec.pg_id,
                    rec.strategy, rec.bundles,
                    "the cluster has the resources but they are in use" if ever else
                    "no set of nodes in the cluster can hold it; it waits for nodes "
                    "that can to join")
            return False
        by_node: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for i, nid in sorted(plan.items()):
            by_node.setdefault(nid, []).append((i, rec.bundles[i]))
        done: list[str] = []
        ok = True
        for nid, items in by_node.items():
            try:
                if nid == me:
                    got = self.prepare_here(rec.pg_id, items)
                else:
                    answer = await self.node.peers.request(
                        nid, w.PrepareBundles(rec.pg_id, items), timeout=10)
                    got = answer.taken
                    if not got:
                        logger.info("placement group %s: node %s refused its bundles: %s",
                                    rec.pg_id, nid[:12], answer.why)
            except Exception as exc:
                logger.info("reserving placement group %s on node %s failed: %s",
                            rec.pg_id, nid[:12], exc)
                got = False
            if not got:
                ok = False
                break
            done.append(nid)
        if not ok or rec.state != "PENDING":  # refused, or removed meanwhile
            self.placement_failures += not ok
            for nid in done:
                await self._release_on(nid, rec.pg_id)
            return False
        rec.state = "CREATED"
        rec.bundle_nodes = dict(plan)
        for nid in done:
            if nid == me:
                self.commit_here(rec.pg_id)
                continue
            try:
                await self.node.peers.request(nid, w.CommitBundles(rec.pg_id), timeout=10)
            except Exception as exc:
                # Prepared there, so its bundles are held: a node that died since
                # took them with it (groups are not rescheduled off dead nodes).
                logger.warning("committing placement group %s on node %s failed: %s",
                               rec.pg_id, nid[:12], exc)
        await self._write(rec)
        logger.info("placement group %s created: bundles on %s", rec.pg_id,
                    {i: n[:12] for i, n in plan.items()})
        return True

    # ------------------------------------------------------- what schedulers ask

    def _task_error(self, pg: str) -> TaskPlacementGroupRemoved:
        return TaskPlacementGroupRemoved(
            f"the task's placement group {pg} was removed")

    def verdict(self, spec: TaskSpec) -> BaseException | bool | None:
        """For the global scheduler, of a task this node cannot run: None if it is
        in no placement group; True to let it wait (its group is pending); False
        to place it (its group is reserved); the error it fails with if its group
        was removed or never existed."""
        pg = group_of(spec.resources)
        if pg is None:
            return None
        state = self.group_state(pg, _task_error=self._task_error)
        if isinstance(state, BaseException):
            return state
        # Reserved: placed like any task, by the bundle resources the nodes holding
        # its bundles report (forwarded there); pending: it waits for the group.
        return not self._created(pg)

    def _created(self, pg: str) -> bool:
        rec = self.groups.get(pg)
        if rec is not None:
            return bool(rec.state == "CREATED")
        cached = self._cached.get(pg)
        return cached is not None and cached[0] == "CREATED"

    def group_state(self, pg: str, _task_error: Any) -> BaseException | bool:
        if pg in self.removed:
            return _task_error(pg)
        rec = self.groups.get(pg)
        if rec is not None:
            return True if rec.state != "REMOVED" else _task_error(pg)
        cached = self._cached.get(pg)
        if cached is not None:
            state, when = cached
            if state == "MISSING":
                return ValueError(f"placement group {pg} does not exist")
            if time.monotonic() - when < LOOKUP_TTL:
                return True
        if self._gcs and pg not in self._looking:
            self._looking.add(pg)
            self.node.spawn(self._lookup, pg)
        return True

    async def _lookup(self, pg: str) -> None:
        try:
            entry = await self._read(pg)
        except Exception as exc:
            logger.info("looking up placement group %s failed: %s", pg, exc)
            return
        finally:
            self._looking.discard(pg)
        state = "MISSING" if entry is None else str(entry.get("state"))
        if state == "REMOVED":
            self.removed.add(pg)
        self._cached[pg] = (state, time.monotonic())
        if state in ("REMOVED", "MISSING"):
            self.node.sched.infeasible_added.set()  # the global scheduler decides again

    def actor_verdict(self, resources: Mapping[str, float]) -> str | None:
        """For the actor manager, of an actor this node cannot hold: None if it may
        wait here (its group is pending or unknown yet); else why it cannot."""
        pg = group_of(resources)
        if pg is None:
            return "not in a placement group"
        state = self.group_state(pg, _task_error=self._task_error)
        if isinstance(state, BaseException):
            return str(state)
        return None

    def statistics(self) -> dict:
        return {
            "coordinated": len(self.groups),
            "pending": len(self.pending()),
            "held_here": len(self.held),
            "bundles_reserved": self.reserved_total,
            "placement_failures": self.placement_failures,
        }


class PlacementGroupsService:
    """The ``placement_groups`` child of the node's tree: the retry loop of the
    pending groups this node coordinates (the groups are the node's: a restart of
    this child loses none)."""

    def __init__(self, groups: PlacementGroups) -> None:
        self._groups = groups

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        groups = self._groups
        node = groups.node
        task_status.started()
        while True:
            groups.wakeup = trio.Event()
            for rec in groups.pending():
                await groups.try_place(rec)
            if not groups.pending():
                await groups.wakeup.wait()
                continue
            wake = groups.wakeup
            view_changed = node.view.changed
            with trio.move_on_after(RETRY):
                async with trio.open_nursery() as nursery:
                    async def first(fn: Any) -> None:
                        await fn()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(first, wake.wait)
                    nursery.start_soon(first, view_changed.wait)
                    nursery.start_soon(first, node.sched.ledger.wait_release)

    def snapshot(self) -> dict:
        return {"kind": "placement_groups", **self._groups.statistics()}
