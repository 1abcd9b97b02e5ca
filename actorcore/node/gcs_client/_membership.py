"""Cluster membership: heartbeats out, every node's status in, dead nodes declared.

Every node of a cluster writes a heartbeat to the GCS (``heartbeats[node_id]``) every
``heartbeat_interval()`` seconds: a counter, its free resources and its queue. In
the same loop it reads the nodes table and the heartbeats back into its
`ClusterView`, the one picture of the cluster its schedulers, object manager and
calls read. Nothing here is kept that a restart loses: the loop runs inside the
``gcs_client`` component and the view is rebuilt from the GCS at its first pass.

Death (paper §4.2.3: the GCS is the truth about membership)
----------------------------------------------------------
The head's loop is also the cluster's monitor. It remembers, per node, when it last
saw that node's heartbeat counter move, by its *own* monotonic clock (so two
machines' clocks never have to agree). A node whose counter has not moved for
``node_timeout()`` seconds is marked ``alive=False`` in the nodes table, with the
reason. Every node sees the change at its next read and runs its ``on_node_dead``
listeners (tasks retried, actors restarted, object locations dropped); a node that
finds itself declared dead (it was partitioned away) stops, as a Ray raylet does:
its work is being redone elsewhere. A monitor that restarts starts its clocks again
at zero, which can only delay a verdict by one timeout, never cause a false one.

A node restarted on the same address is a new node (a new id); the old record stays
dead. A node that stops cleanly marks itself dead with reason ``"stopped"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ...session._config import env_value

__all__ = [
    "ClusterView",
    "Membership",
    "NodeStatus",
    "heartbeat_interval",
    "node_timeout",
]

logger = logging.getLogger("actorcore.membership")


def heartbeat_interval() -> float:
    """Seconds between a node's heartbeats (``ACTORCORE_HEARTBEAT_INTERVAL``)."""
    return float(env_value("ACTORCORE_HEARTBEAT_INTERVAL"))


def node_timeout() -> float:
    """Seconds without a heartbeat after which a node is declared dead
    (``ACTORCORE_NODE_TIMEOUT``, default 10; at least three heartbeats)."""
    return max(float(env_value("ACTORCORE_NODE_TIMEOUT")), 3 * heartbeat_interval())


@attrs.frozen(kw_only=True)
class NodeStatus:
    """One node as the cluster sees it (the nodes table plus its last heartbeat).

    Attributes:
      node_id: hex id. address: its TCP listener (``tcp:host:port``; ``None`` for a
        node that serves only its Unix socket: a single-node cluster).
      resources: its capacity; available: free now (from its last heartbeat);
        queued: tasks waiting there for resources or a worker.
      alive: not declared dead; death_reason: why it was.
    """

    node_id: str
    address: str | None
    resources: dict[str, float]
    available: dict[str, float]
    queued: int = 0
    head: bool = False
    alive: bool = True
    pid: int | None = None
    host: str = "127.0.0.1"
    death_reason: str | None = None
    info: dict = attrs.field(factory=dict, repr=False)
    # load(), computed once: the global scheduler ranks every node by it on every
    # placement (a frozen status never changes; a new heartbeat is a new status).
    _load: float = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        used = 0.0
        for name, total in self.resources.items():
            if total > 0 and name in ("CPU", "GPU"):
                used = max(used, 1.0 - self.available.get(name, total) / total)
        cpus = self.resources.get("CPU", 0.0)
        object.__setattr__(self, "_load", used + (self.queued / cpus if cpus > 0 else 0.0))

    @classmethod
    def from_record(cls, record: dict, heartbeat: dict | None) -> NodeStatus:
        hb = heartbeat or {}
        # A heartbeat names the capacity when placement-group bundles changed it.
        resources = dict(hb.get("resources") or record.get("resources") or {})
        return cls(
            node_id=str(record.get("node_id")),
            address=record.get("tcp_address"),
            resources=resources,
            available=dict(hb.get("available") or resources),
            queued=int(hb.get("queued") or 0),
            head=bool(record.get("head")),
            alive=bool(record.get("alive", True)),
            pid=record.get("pid"),
            host=str(record.get("host") or "127.0.0.1"),
            death_reason=record.get("death_reason"),
            info=record,
        )

    def load(self) -> float:
        """How busy it is: the largest used fraction of a resource it has, plus its
        queue per CPU (0: idle; 1: full; above 1: a backlog)."""
        return self._load


class ClusterView:
    """What this node knows of every node: refreshed from the GCS by `Membership`.

    Owned by the node (it outlives the ``gcs_client`` component). Readers take
    ``alive()``, ``get()`` and ``multi``; listeners registered with ``on_node_dead``
    and ``on_node_joined`` run on the node's loop, synchronously, once per event.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.nodes: dict[str, NodeStatus] = {}
        self.changed = trio.Event()
        self.refreshes = 0
        self._dead: list[Callable[[NodeStatus], None]] = []
        self._joined: list[Callable[[NodeStatus], None]] = []
        # The live nodes of ``nodes``, and whether one is not this node (``multi``),
        # kept for the dict they were taken from: every placement asks for them (a
        # task queued behind an argument asks ``multi`` twice: 7 % of the node's
        # time while it queued a million), the dict changes only at a refresh (or
        # ``seed``).
        self._alive: list[NodeStatus] = []
        self._multi = False
        self._alive_of: dict[str, NodeStatus] | None = None
        # node id -> when a live node's record was first found missing (not marked
        # dead: gone from the table). The GCS restarted empty and every node writes
        # itself again within a heartbeat or so: until ``vanish_grace`` has passed
        # it is kept as it was, not declared dead (a dead node is marked, not
        # deleted; a node that never comes back is judged by its heartbeats).
        self._vanished: dict[str, float] = {}
        self.vanish_grace = node_timeout()
        # Reads on demand. The loop reads the table every interval; a caller that
        # must see it as the GCS has it *now* (``actorcore status`` right after
        # ``actorcore start --address`` said "joined") calls ``refreshed()``: it
        # wakes the loop and waits for a read that *began* after the call (one
        # begun before may have missed the join). ``followed``: a loop runs.
        self.followed = False
        self._reads_begun = 0
        self._reads_applied = 0
        self._read_wanted = trio.Event()
        self._read_applied = trio.Event()

    def on_node_dead(self, listener: Callable[[NodeStatus], None]) -> None:
        self._dead.append(listener)

    def on_node_joined(self, listener: Callable[[NodeStatus], None]) -> None:
        self._joined.append(listener)

    def begin_read(self) -> int:
        """The membership loop starts reading the table: its ticket for ``apply``."""
        self._reads_begun += 1
        if self._read_wanted.is_set():
            self._read_wanted = trio.Event()
        return self._reads_begun

    async def read_wanted(self) -> None:
        """Return once a caller of ``refreshed()`` waits for a new read."""
        await self._read_wanted.wait()

    async def refreshed(self) -> None:
        """Return once the view holds a read of the GCS begun after this call."""
        wanted = self._reads_begun + 1
        self._read_wanted.set()
        while self._reads_applied < wanted:
            await self._read_applied.wait()

    def apply(self, records: list[dict], heartbeats: dict[str, Any],
              read: int | None = None) -> None:
        """Replace the view with the nodes table ``records`` and ``heartbeats``
        (read under the ticket ``read`` from ``begin_read``, if the loop read them)."""
        if read is not None and read > self._reads_applied:
            self._reads_applied = read
            self._read_applied.set()
            self._read_applied = trio.Event()
        before = self.nodes
        now = {}
        for record in records:
            if not isinstance(record, dict) or "node_id" not in record:
                continue
            status = NodeStatus.from_record(record, heartbeats.get(str(record["node_id"])))
            now[status.node_id] = status
        present = set(now)
        clock = trio.current_time()
        for nid, status in before.items():
            if nid in present or not status.alive:
                continue
            first = self._vanished.setdefault(nid, clock)
            if clock - first < self.vanish_grace:
                now[nid] = status  # not dead: its record is missing (see __init__)
        for nid in list(self._vanished):
            if nid in present or nid not in now:  # back, or judged dead below
                del self._vanished[nid]
        self.nodes = now
        self.refreshes += 1
        joined = [s for nid, s in now.items()
                  if s.alive and (nid not in before or not before[nid].alive)]
        dead = [s for nid, s in now.items()
                if not s.alive and nid in before and before[nid].alive]
        dead += [s for nid, s in before.items() if s.alive and nid not in now]
        if joined or dead or any(before.get(k) != v for k, v in now.items()):
            self.changed.set()
            self.changed = trio.Event()
        for status in joined:
            if status.node_id != self.node_id:
                logger.info("node %s joined (%s)", status.node_id[:12], status.address)
            for listener in self._joined:
                _run_listener(listener, status)
        for status in dead:
            logger.warning("node %s is dead: %s", status.node_id[:12], status.death_reason)
            for listener in self._dead:
                _run_listener(listener, status)

    def seed(self, record: dict) -> None:
        """Know this node itself before the first refresh (and without a GCS)."""
        if self.node_id not in self.nodes:
            self.nodes[self.node_id] = NodeStatus.from_record(record, None)
            self._alive_of = None

    def get(self, node_id: str) -> NodeStatus | None:
        return self.nodes.get(node_id)

    def _take_alive(self) -> None:
        me = self.node_id
        self._alive = [s for s in self.nodes.values() if s.alive]
        self._multi = any(s.node_id != me for s in self._alive)
        self._alive_of = self.nodes

    def alive(self) -> list[NodeStatus]:
        if self._alive_of is not self.nodes:
            self._take_alive()
        return list(self._alive)

    def others(self) -> list[NodeStatus]:
        """The live nodes other than this one."""
        return [s for s in self.nodes.values() if s.alive and s.node_id != self.node_id]

    @property
    def multi(self) -> bool:
        """Another live node exists (work and objects may leave this node)."""
        if self._alive_of is not self.nodes:
            self._take_alive()
        return self._multi

    def address_of(self, node_id: str) -> str | None:
        status = self.nodes.get(node_id)
        return status.address if status is not None else None


def _run_listener(listener: Callable[[NodeStatus], None], status: NodeStatus) -> None:
    try:
        listener(status)
    except Exception:  # one listener's bug must not stop the others or the loop
        logger.exception("membership listener %r failed for node %s", listener, status.node_id)


@attrs.define(eq=False)
class Membership:
    """The heartbeat and membership loop (run by the ``gcs_client`` component).

    ``report()`` gives this node's heartbeat fields (free resources, queue); on the
    head, ``monitor=True`` also declares dead the nodes whose heartbeat stopped.
    ``on_self_dead`` runs if the cluster declared *this* node dead.
    """

    view: ClusterView
    record: Callable[[], dict]
    report: Callable[[], dict]
    monitor: bool = False
    on_self_dead: Callable[[str], None] | None = None
    interval: float = attrs.field(factory=heartbeat_interval)
    timeout: float = attrs.field(factory=node_timeout)
    seq: int = 0
    # node id -> (its last heartbeat counter seen, our monotonic time it moved)
    _progress: dict[str, tuple[Any, float]] = attrs.Factory(dict)
    declared_dead: int = 0

    async def register(self, client: Any) -> None:
        """Register this node (again: the GCS restarted empty)."""
        await client.nodes.register(self.view.node_id, self.record())

    async def run(self, client: Any, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat, refresh the view and (on the head) judge, every interval;
        started once the view holds the nodes table as the first pass read it."""
        # (Re-)register first: a restarted link, or a GCS that failed over, must know us.
        await client.nodes.register(self.view.node_id, self.record())
        self.view.followed = True
        try:
            await self._loop(client, task_status)
        finally:
            self.view.followed = False

    async def _loop(self, client: Any, task_status: trio.TaskStatus[None]) -> None:
        first = True
        while True:
            self.seq += 1
            await client.nodes.heartbeat(self.view.node_id,
                                         {"seq": self.seq, "time": time.time(), **self.report()})
            read = self.view.begin_read()
            records = [v for _k, v in await client.nodes.list()]
            heartbeats = dict(await client.scan("heartbeats"))
            mine = next((r for r in records if isinstance(r, dict)
                         and r.get("node_id") == self.view.node_id), None)
            if mine is not None and not mine.get("alive", True):
                reason = mine.get("death_reason") or "declared dead"
                logger.error("the cluster declared this node dead (%s): stopping", reason)
                if self.on_self_dead is not None:
                    self.on_self_dead(reason)
            if self.monitor:
                records = await self._judge(client, records, heartbeats)
            self.view.apply(records, heartbeats, read)
            if first:
                first = False
                task_status.started()
            with trio.move_on_after(self.interval):
                await self.view.read_wanted()

    async def _judge(self, client: Any, records: list[dict], heartbeats: dict) -> list[dict]:
        now = trio.current_time()
        out = []
        for record in records:
            if not isinstance(record, dict) or not record.get("alive", True):
                out.append(record)
                continue
            nid = str(record.get("node_id"))
            seq = (heartbeats.get(nid) or {}).get("seq")
            last = self._progress.get(nid)
            if last is None or last[0] != seq:
                self._progress[nid] = (seq, now)
                out.append(record)
                continue
            silent = now - last[1]
            if nid == self.view.node_id or silent < self.timeout:
                out.append(record)
                continue
            reason = f"no heartbeat for {silent:.1f} s (timeout {self.timeout:g} s)"
            logger.warning("declaring node %s dead: %s", nid[:12], reason)
            died_at = time.time()

            def declare(current: Any, reason: str = reason, died_at: float = died_at) -> Any:
                # Only a live record: a node that left meanwhile keeps its own reason.
                if not isinstance(current, dict) or not current.get("alive", True):
                    return current
                return {**current, "alive": False, "death_reason": reason,
                        "died_at": died_at}

            changed = await client.nodes.update(nid, declare)
            self.declared_dead += 1
            self._progress.pop(nid, None)
            out.append(changed if isinstance(changed, dict) else
                       {**record, "alive": False, "death_reason": reason})
        return out

    async def leave(self, client: Any) -> None:
        """Mark this node dead with reason ``"stopped"`` (a clean stop)."""
        await client.nodes.set_fields(self.view.node_id, alive=False, death_reason="stopped",
                                      died_at=time.time())
