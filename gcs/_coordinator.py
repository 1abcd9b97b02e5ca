"""`Coordinator`: the chain master of one GCS (one per GCS, in the head node process).

It holds every shard's chain membership and nothing else (no table data), so it is
small and its state is rebuilt from the replicas' registrations.

Membership protocol
-------------------
* A replica, once listening, dials the coordinator and sends `Register`. If its
  shard has no chain yet, it is told ``"seed"``: it recovers the shard from the
  durable logs (if any) and reports `Seeded`; it becomes a chain of one. Otherwise
  it is told ``"join"`` and queued; the coordinator makes the first queued replica the
  *learner* behind the tail (state transfer, see `_replica.py`), and when the tail
  reports the learner caught up (`Promote`) appends it to the chain.
* Failure detection: the coordinator keeps a never-answered `Watch` request pending
  on each replica's connection, so a process death (the kernel closes its sockets)
  fails it at once; a periodic `Ping` with a timeout catches a hung replica. A dead
  replica is cut out of the chain: predecessor and successor become neighbours, the
  head or tail role moves on; a replica cut out while alive is told `Removed` and
  exits (its supervisor restarts it, and it rejoins as a fresh learner).
* Every change bumps the shard's epoch and is pushed to all its replicas
  (`Reconfigure`) and to all connected clients (`LayoutChanged`). Clients also ask
  for the layout after an error (`GetLayout`), so a lost push costs a round trip,
  never correctness.
* Messages: the coordinator's listener dispatches through one `transport.Dispatcher`
  (`_routes`); a message it does not handle, or with wrong fields, fails with
  `BadRequest` and it serves on.

Restart (recovery from the replicas)
------------------------------------
The coordinator is not on the data path: writes, acks, reads and subscriptions flow
between clients and replicas only, so while it is down every chain keeps serving
under the config it last had. Only *changes* (a dead replica cut out, a replacement
added) wait for it. Its whole state -- the chains -- is recoverable from the
replicas, which stay alive in their own processes (the ``gcs`` supervisor is
``one_for_one``: the shards are not restarted with it):

* A replica whose coordinator link dies redials the same address with retry and
  registers again with a report (`Progress`): its chain view (a `ChainConfig`),
  ``applied``, ``acked``, and whether it seeded its shard. A fresh replica sends the
  same report with epoch 0.
* A restarted coordinator (``recover=True``) holds every shard in *recovery*: it
  answers no registration, decides nothing and makes clients' `Hello`/`GetLayout`
  wait, until it has heard enough. A shard is recovered as soon as (a) all R slots
  registered, or (b) every member (chain and learner) of the highest-epoch view
  reported so far registered or is known to have exited (the node's supervising
  services report every replica process exit to the plan, also while no coordinator
  runs), or (c) ``recovery_grace`` passed.
* Then its chain is the highest-epoch view filtered to registered replicas, *in the
  view's order*; its learner stays if it registered. The new config gets epoch
  ``max(reported) + 1`` and is pushed to everyone. Registrants outside it are told
  ``join`` (fresh) or ``removed`` (they hold state from a chain they were cut out
  of: their log may hold updates numbered differently from the survivors'). Members
  of the view that never registered are declared dead, so their supervising
  service kills them if they are alive but hung.

Why that is safe. Chain replication keeps, within any one view, every replica's
applied state a superset of its successors' -- and views only ever drop members or
append a caught-up learner at the tail, so the order of the surviving members is the
same in every view. A replica accepts ``fw`` only from the predecessor its *own*
view names, so a view delivered to only some replicas before the crash cannot have
moved data between replicas that did not hold it. Hence:

* The highest reported epoch is the latest view anyone acted on; a later view that
  reached no registrant moved no committed data (a tail commits only once it holds
  the view that makes it tail) -- except a promoted learner acking as new tail,
  whose data its predecessors hold anyway.
* Every acknowledged write was applied by every member of the head's view down to
  the acking tail; the recovered chain is a subsequence of that view, so its tail
  holds every acknowledged write and every read any old tail served: no write lost,
  reads monotone. The new tail commits what it applied (as in any repair).
* Rule (b) cannot pick a stale view while a newer one exists among alive replicas:
  the newer view's surviving members were members of the older one, so they must
  have registered too, and would have reported the newer epoch.
* Sequence numbers are the shard's own, so subscribers attached to a tail that
  stays tail see nothing at all; one whose tail died resubscribes from its last
  sequence number, as in any failover: no gap, no duplicate.

Races. A replica that dies while the coordinator is down: its chain stalls (acks
stop) until recovery, which leaves it out; its neighbours resync as in any repair.
A replacement that starts before the coordinator is back registers as fresh: it is
never seeded while a shard is in recovery (rule (a) counts it, but the decision
prefers any view with data), so it joins as a learner by state transfer. A replica
that was cut out while alive (hung) but never learnt it reports an older view and is
told ``removed``. A registrant that dies during recovery is dropped from it. A second
coordinator crash during recovery simply starts recovery again (nothing was decided
that the replicas do not report). The clients keep the same layout ``generation``
across restarts and merge per shard by epoch, so a not-yet-recovered shard never
overrides what they know; the last published epoch per shard is kept by the plan
(``epochs``), so no incarnation publishes an epoch clients already saw -- also after
a restart of the whole ``gcs`` subtree, when no replica is left to report one.
"""

from __future__ import annotations

import copy
import uuid
from collections import deque
from pathlib import Path
from typing import Any, cast

import attrs
import trio

import transport

from ._config import GcsConfig
from ._errors import BadRequest
from ._messages import (
    Assigned,
    ChainConfig,
    GetLayout,
    Hello,
    Layout,
    LayoutChanged,
    Ping,
    Progress,
    Promote,
    Reconfigure,
    Register,
    Removed,
    Seeded,
    ShardLayout,
    Stats,
    Suspect,
    Watch,
)
from ._watch import HeldReplies

__all__ = ["ChainStatistics", "Coordinator", "CoordinatorStatistics"]

_UNCHANGED = object()


@attrs.define(eq=False)
class _Member:
    name: str
    shard: int
    address: str
    pid: int
    conn: Any
    dead: bool = False


@attrs.define
class _Shard:
    config: ChainConfig
    seeding: str | None = None
    joiners: deque[str] = attrs.Factory(deque)
    failovers: int = 0
    #: While recovering after a restart: name -> (its progress, held register reply).
    registrants: dict[str, tuple[Progress, Any]] | None = None


@attrs.frozen(kw_only=True)
class ChainStatistics:
    """One shard's chain as the coordinator holds it (in `CoordinatorStatistics`).

    Attributes:
      shard, epoch: the shard and its current configuration's epoch.
      chain: replica names, head first; learner: a replica catching up behind the
        tail; joiners: replicas waiting to become the learner.
      failovers: replicas cut out of this chain by this coordinator.
    """

    shard: int
    epoch: int
    chain: tuple[str, ...]
    learner: str | None
    joiners: tuple[str, ...]
    failovers: int


@attrs.frozen(kw_only=True)
class CoordinatorStatistics:
    """Figures of the GCS coordinator, from `Coordinator.statistics()` (and its
    `Stats` request).

    Attributes:
      address: where replicas and clients reach it.
      shards: each shard's chain.
      clients: connected clients (they receive every layout change).
      recovery: after a restart, what was decided for each shard and when
        (``recover``; ``shards``: seconds, registered, chain, learner, epoch;
        ``seconds`` once every shard is done).
      removed_total: replicas cut out of their chains; suspects: neighbours the
        replicas reported; removals: the latest ten removals, (name, why).
    """

    address: str | None
    shards: tuple[ChainStatistics, ...]
    clients: int
    recovery: dict[str, Any]
    removed_total: int
    suspects: int
    removals: tuple[tuple[str, str], ...]


class Coordinator:
    """The chain master service. ``run`` reports the address clients connect to."""

    def __init__(self, config: GcsConfig, token: bytes, *, address: str | None = None,
                 generation: str | None = None, recover: bool = False,
                 exited: set[str] | None = None, epochs: dict[int, int] | None = None) -> None:
        self.config = config
        self.token = token
        self.listen = address or f"tcp:{config.host}:0"
        self.address: str | None = None
        #: The last epoch published per shard, shared with the plan: an incarnation
        #: never publishes an epoch at or below one clients have already seen (they
        #: merge layouts by epoch), also after a restart of the whole ``gcs`` subtree.
        self.epochs: dict[int, int] = epochs if epochs is not None else {}
        self._shards = [
            _Shard(ChainConfig(shard=i, epoch=self.epochs.get(i, 0), chain=(), addresses={}))
            for i in range(config.shards)
        ]
        self._members: dict[str, _Member] = {}
        #: Per shard, the (head, tail, standby) last pushed to the clients.
        self._routes_published: dict[int, tuple[str | None, str | None, str | None]] = {}
        self._clients: set[Any] = set()
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self.removed_total = 0
        self.suspects = 0
        #: The latest removals: (replica name, why).
        self.removals: deque[tuple[str, str]] = deque(maxlen=100)
        self._held = HeldReplies()
        self.generation = generation or uuid.uuid4().hex
        #: Replicas declared dead by this incarnation (their services kill them).
        self.dead: set[str] = set()
        #: Replicas whose process is known to have exited (told by their supervising
        #: services through the plan, also while no coordinator was running).
        self.exited: set[str] = exited if exited is not None else set()
        self._running = False
        self.recovering = recover
        self._recovered = trio.Event()
        if recover:
            for shard in self._shards:
                shard.registrants = {}
        else:
            self._recovered.set()
        #: Recovery figures (seconds from start to each shard's decision).
        self.recovery: dict[str, Any] = {"recover": recover, "shards": {}}
        self._started_at = 0.0
        self._routes = self._dispatcher()

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "gcs_coordinator", "address": self.address,
                "recovering": not self._recovered.is_set()}

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._serve(task_status)
        finally:
            self._running = False

    async def _serve(self, task_status: trio.TaskStatus[Any]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._running = True
            self._started_at = trio.current_time()
            server = transport.Server(self.listen, self.token, self._routes,
                                      name="gcs/coordinator")
            self.address = await nursery.start(server.run)
            if self.recovering:
                nursery.start_soon(self._recovery_deadline)
            task_status.started(self.address)

    # ----------------------------------------------------------------- queries

    def layout(self) -> Layout:
        shards = []
        for shard in self._shards:
            cfg = shard.config
            head = cfg.addresses[cfg.chain[0]] if cfg.chain else None
            tail = cfg.addresses[cfg.chain[-1]] if cfg.chain else None
            standby = cfg.addresses[cfg.chain[1]] if len(cfg.chain) > 1 else None
            shards.append(ShardLayout(shard=cfg.shard, epoch=cfg.epoch, head=head, tail=tail,
                                      standby=standby))
        return Layout(shards=tuple(shards), max_value_bytes=self.config.max_value_bytes,
                      generation=self.generation)

    def ready(self) -> bool:
        """Every shard has its full chain (``replicas`` members, no learner pending)."""
        return all(len(s.config.chain) == self.config.replicas and s.config.learner is None
                   for s in self._shards)

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (public API, like the transport contract)
        """Wait until every shard has a full chain (tests, benchmarks, the node's start)."""
        with trio.fail_after(timeout):
            while not self.ready():
                await self._changed.wait()

    async def wait_removed(self, name: str) -> None:
        """Return once this coordinator has declared replica ``name`` dead.

        The replica's supervising service uses this to kill a process that is alive
        but unresponsive (it failed its heartbeats), so that it gets replaced.
        """
        while name not in self.dead:
            await self._changed.wait()

    async def wait_until(self, predicate: Any, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (public API)
        """Wait until ``predicate(self)`` holds, re-checked on every membership change."""
        with trio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()

    async def wait_recovered(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (public API)
        """Wait until a restarted coordinator has rebuilt every shard's chain."""
        with trio.fail_after(timeout):
            await self._recovered.wait()

    def statistics(self) -> CoordinatorStatistics:
        return CoordinatorStatistics(
            address=self.address,
            shards=tuple(
                ChainStatistics(shard=s.config.shard, epoch=s.config.epoch,
                                chain=tuple(s.config.chain), learner=s.config.learner,
                                joiners=tuple(s.joiners), failovers=s.failovers)
                for s in self._shards
            ),
            clients=len(self._clients),
            recovery=copy.deepcopy(self.recovery),
            removed_total=self.removed_total,
            suspects=self.suspects,
            removals=tuple(self.removals)[-10:],
        )

    def chain(self, shard: int) -> ChainConfig:
        return self._shards[shard].config

    # ----------------------------------------------------------------- messages

    def _dispatcher(self) -> transport.Dispatcher:
        d = transport.Dispatcher("gcs/coordinator", refuse=_refuse)
        d.register(Register, self._on_register)
        d.register(Seeded, self._on_seeded)
        d.register(Promote, self._on_promote, oneway=True)
        d.register(Suspect, self._on_suspect, oneway=True)
        d.register(Hello, self._on_hello)
        d.register(GetLayout, self._on_get_layout)
        d.register(Watch, self._on_watch)
        d.register(Stats, self._on_stats)
        return d

    def _shard_state(self, shard: int) -> _Shard:
        if not 0 <= shard < len(self._shards):
            raise BadRequest(f"GCS coordinator: no shard {shard!r}; it has "
                             f"{len(self._shards)}", shard=shard)
        return self._shards[shard]

    def _on_seeded(self, conn: Any, message: Seeded, reply: Any) -> None:
        state = self._shard_state(message.shard)
        if state.seeding == message.name and message.name in self._members:
            state.seeding = None
            self._reconfigure(message.shard, chain=(message.name,))
        reply.send(None)

    def _on_promote(self, conn: Any, message: Promote) -> None:
        cfg = self._shard_state(message.shard).config
        if cfg.learner == message.name and message.name in self._members:
            self._reconfigure(message.shard, chain=(*cfg.chain, message.name), learner=None,
                              promoted=message.name)

    def _on_suspect(self, conn: Any, message: Suspect) -> None:
        # A replica's probe of its successor timed out: cut the successor out (if
        # the reporter were the broken one, its own heartbeat would fail too).
        member = self._members.get(message.name)
        if (member is not None and member.shard == message.shard
                and message.reporter in self._members
                and self._shard_state(message.shard).config.successor(message.reporter)
                == message.name):
            self.suspects += 1
            self._declare_dead(member, f"suspected by {message.reporter}")

    def _on_hello(self, conn: Any, message: Hello, reply: Any) -> None:
        assert self._nursery is not None
        self._clients.add(conn)
        self._nursery.start_soon(self._watch_client, conn)
        self._send_layout(reply)

    def _on_get_layout(self, conn: Any, message: GetLayout, reply: Any) -> None:
        self._send_layout(reply)

    def _send_layout(self, reply: Any) -> None:
        if self._recovered.is_set():
            reply.send(self.layout())
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._layout_after_recovery, reply)

    def _on_watch(self, conn: Any, message: Watch, reply: Any) -> None:
        self._held.hold(conn, reply)  # never answered: fails at the replica when we die

    def _on_stats(self, conn: Any, message: Stats, reply: Any) -> None:
        reply.send(self.statistics())

    async def _layout_after_recovery(self, reply: Any) -> None:
        await self._recovered.wait()  # bounded by recovery_grace
        try:
            reply.send(self.layout())
        except transport.TransportError:
            pass

    def _on_register(self, conn: Any, message: Register, reply: Any) -> None:
        name, shard, progress = message.name, message.shard, message.progress
        state = self._shard_state(shard)
        member = _Member(name=name, shard=shard, address=message.address, pid=message.pid,
                         conn=conn)
        self._members[name] = member  # replaces an earlier link of the same replica
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_replica, member)
        if state.registrants is not None:
            state.registrants[name] = (progress, reply)
            self._check_recovered(shard)
            return
        cfg = state.config
        if name in cfg.chain or name == cfg.learner:
            # Its link to us blipped: it carries on with the config it has.
            reply.send(Assigned("resume"))
            self._push(conn, Reconfigure(cfg))
            return
        if progress.has_state:
            # Cut out of its chain (or of a recovered one) while it was away.
            reply.send(Assigned("removed"))
            self._declare_dead(member, "registered with a stale chain view")
            return
        if not state.config.chain and state.seeding is None and state.config.learner is None:
            state.seeding = name
            reply.send(Assigned("seed"))
        else:
            state.joiners.append(name)
            reply.send(Assigned("join"))
            self._advance(shard)

    # ----------------------------------------------------------------- recovery

    def replica_exited(self, name: str) -> None:
        """The process of replica ``name`` is gone (its service saw it exit). During
        recovery that settles at once that it will not re-register."""
        self.exited.add(name)
        if not self._running:
            return
        for shard in range(len(self._shards)):
            if self._shards[shard].registrants is not None:
                self._check_recovered(shard)

    def replica_died(self, name: str) -> None:
        """The process of replica ``name`` died (its service's lifeline fired; its
        sockets may not be closed yet): cut it out as its link's failure would."""
        member = self._members.get(name)
        if member is not None:
            self._declare_dead(member, "process died")

    async def _recovery_deadline(self) -> None:
        await trio.sleep(self.config.recovery_grace)
        for shard in range(len(self._shards)):
            if self._shards[shard].registrants is not None:
                self._check_recovered(shard, force=True)

    def _check_recovered(self, shard: int, *, force: bool = False) -> None:
        """Decide ``shard``'s chain once enough replicas re-registered (see the
        module docstring: rules (a), (b), (c))."""
        state = self._shards[shard]
        regs = state.registrants
        assert regs is not None
        views = [progress.chain for progress, _ in regs.values() if progress.chain.epoch > 0]
        best = max(views, key=lambda v: v.epoch) if views else None
        done = force or len(regs) >= self.config.replicas
        if best is not None and not done:
            needed = {*best.chain, *([best.learner] if best.learner else [])} - self.exited
            done = needed <= regs.keys()
        if done:
            self._finish_recovery(shard, best)

    def _finish_recovery(self, shard: int, best: ChainConfig | None) -> None:
        state = self._shards[shard]
        regs = state.registrants
        assert regs is not None
        state.registrants = None
        epoch = max((progress.chain.epoch for progress, _ in regs.values()), default=0)
        epoch = max(epoch, self.epochs.get(shard, 0))
        chain = tuple(n for n in best.chain if n in regs) if best is not None else ()
        learner = (best.learner if best is not None and chain and best.learner in regs
                   else None)
        answers: dict[str, str] = {}
        if chain:
            keep = {*chain, *([learner] if learner else [])}
        else:
            # No chain member survived. A replica that seeded the shard (its "seeded"
            # was lost in the crash) becomes the chain; else the first one seeds it.
            seeded = [n for n, (progress, _) in regs.items()
                      if progress.seeded and progress.chain.epoch == 0]
            keep = set(seeded[:1])
            chain = tuple(keep)
            if not chain and regs:
                # The most advanced registrant seeds: a surviving learner holds a
                # committed prefix of the history (the best left in memory); with
                # durable logs the seed recovers the longest log anyway.
                state.seeding = max(regs, key=lambda n: regs[n][0].applied)
                answers[state.seeding] = "seed"
        for name, (progress, _) in regs.items():
            if name in keep:
                answers[name] = "resume"
            elif name not in answers:
                answers[name] = "removed" if progress.has_state else "join"
        if best is not None:
            self.dead.update(n for n in (*best.chain, best.learner)
                             if n is not None and n not in regs)
        self.recovery["shards"][shard] = {
            "seconds": trio.current_time() - self._started_at,
            "registered": len(regs), "chain": list(chain), "learner": learner,
            "epoch": epoch + 1}
        for name, (_, reply) in regs.items():
            if answers[name] == "join":
                state.joiners.append(name)
            try:
                reply.send(Assigned(answers[name]))
            except transport.TransportError:
                pass
        state.config = ChainConfig(shard=shard, epoch=epoch, chain=(), addresses={})
        if chain:
            self._reconfigure(shard, chain=chain, learner=learner)
        for name, answer in answers.items():
            member = self._members.get(name)
            if answer == "removed" and member is not None:
                self._declare_dead(member, "stale chain view after a coordinator restart")
        if all(s.registrants is None for s in self._shards):
            self.recovery["seconds"] = trio.current_time() - self._started_at
            self._recovered.set()
        self._changed.set()
        self._changed = trio.Event()

    def _advance(self, shard: int) -> None:
        """Pick the next learner once the chain has a tail and no learner."""
        state = self._shards[shard]
        cfg = state.config
        if not cfg.chain or cfg.learner is not None:
            return
        while state.joiners:
            name = state.joiners.popleft()
            if name in self._members:
                self._reconfigure(shard, learner=name)
                return

    def _reconfigure(
        self,
        shard: int,
        *,
        chain: tuple[str, ...] | None = None,
        learner: object = _UNCHANGED,
        promoted: str | None = None,
    ) -> None:
        """Bump ``shard``'s epoch with a new chain and/or learner, and push it to its
        replicas and the layout to every client (to a ``promoted`` learner first:
        see `_publish_promotion`)."""
        state = self._shards[shard]
        old = state.config
        new_chain = old.chain if chain is None else chain
        new_learner = old.learner if learner is _UNCHANGED else cast("str | None", learner)
        names = [*new_chain, *([new_learner] if new_learner else [])]
        self.epochs[shard] = old.epoch + 1
        state.config = cfg = ChainConfig(
            shard=shard,
            epoch=old.epoch + 1,
            chain=new_chain,
            addresses={n: self._members[n].address for n in names},
            learner=new_learner,
        )
        if promoted is None:
            self._publish(cfg, names)
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._publish_promotion, cfg, names, promoted)
        self._changed.set()
        self._changed = trio.Event()
        if new_learner is None:
            self._advance(shard)

    def _publish(self, cfg: ChainConfig, names: list[str]) -> None:
        """Push ``cfg`` to the replicas ``names`` and, if it moved what clients see
        of the shard (its head, tail or standby), the layout to every client.

        A learner coming or going changes no client's route, only the epoch. Pushed
        anyway, it woke every client, and a client whose layout had the new epoch
        before the head had its config made the head hold its writes until the
        config came (`Write.epoch`): a stall in the middle of a replacement's join.
        A client whose epoch is behind the replicas' loses nothing: a replica waits
        only for epochs newer than its own.
        """
        for name in names:
            member = self._members.get(name)
            if member is not None:
                self._push(member.conn, Reconfigure(cfg))
        layout = self.layout()
        seen = layout.shards[cfg.shard]
        route = (seen.head, seen.tail, seen.standby)
        if self._routes_published.get(cfg.shard) == route:
            return
        self._routes_published[cfg.shard] = route
        changed = LayoutChanged(layout)
        for client in list(self._clients):
            self._push(client, changed)

    async def _publish_promotion(self, cfg: ChainConfig, names: list[str], promoted: str) -> None:
        """Push ``cfg``, which makes the learner ``promoted`` the tail, to it first
        and to the others (and the clients) once it has taken it.

        Until the old tail hears the new config it is still the tail and commits
        by itself; from then on it commits on the new tail's acks. Pushed to all at
        once, a new tail that is slow to read its config (a process that has just
        started, on a loaded machine: 15-30 ms were measured) held every commit of
        the shard for that long. In this order the new tail already acks when the
        old one stops committing. Safe by the argument of the module docstring: a
        replica accepts updates only from the predecessor its own config names,
        and the learner's predecessor (the old tail) is the same in both configs;
        a new tail commits only what it applied, which its predecessors hold. If the
        learner does not answer within a heartbeat timeout (its watch declares it
        dead if it is), the others get the config anyway.
        """
        member = self._members.get(promoted)
        if member is not None:
            with trio.move_on_after(self.config.heartbeat_timeout):
                try:
                    await member.conn.request(Reconfigure(cfg), timeout=None)
                except transport.TransportError:
                    pass
        if self._shards[cfg.shard].config is cfg:
            self._publish(cfg, [name for name in names if name != promoted])
        # else a newer config went to everyone already

    def _push(self, conn: Any, message: Any) -> None:
        try:
            conn.send_nowait(message)
        except transport.TransportError:
            pass  # its watch fails too; that path cleans up

    # ----------------------------------------------------------------- liveness

    async def _watch_replica(self, member: _Member) -> None:
        reason = ["?"]

        async def watch() -> None:
            try:
                while True:  # an answer (None) only means "ask again"
                    await member.conn.request(Watch(), timeout=None)
            except transport.TransportError as exc:
                # Declared here, not after the nursery: the chain stalls until the
                # new config is out, and on a busy loop every task switch on the
                # way costs a scheduler pass.
                self._declare_dead(member, f"link lost: {type(exc).__name__}")
            nursery.cancel_scope.cancel()

        async def ping() -> None:
            while True:
                await trio.sleep(self.config.heartbeat_interval)
                try:
                    await member.conn.request(Ping(), timeout=self.config.heartbeat_timeout)
                except transport.TransportError as exc:
                    reason[0] = f"heartbeat failed: {type(exc).__name__}"
                    nursery.cancel_scope.cancel()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(ping)
        self._declare_dead(member, reason[0])

    async def _watch_client(self, conn: Any) -> None:
        try:
            while True:  # an answer (None) only means "ask again"
                await conn.request(Watch(), timeout=None)
        except transport.TransportError:
            pass
        self._clients.discard(conn)

    def _declare_dead(self, member: _Member, reason: str) -> None:
        if member.dead or self._members.get(member.name) is not member:
            return
        member.dead = True
        self.removals.append((member.name, reason))
        del self._members[member.name]
        state = self._shards[member.shard]
        if state.registrants is not None:
            # Lost during recovery: it does not count. Not marked dead (its service
            # would kill it): a blip of its link, and it registers again; if it is
            # in the latest view and never does, the recovery marks it dead.
            state.registrants.pop(member.name, None)
            self._changed.set()
            self._changed = trio.Event()
            return
        self.dead.add(member.name)
        self.removed_total += 1
        state.joiners = deque(n for n in state.joiners if n != member.name)
        self._push(member.conn, Removed())
        assert self._nursery is not None
        self._nursery.start_soon(_close, member.conn)
        self._changed.set()
        self._changed = trio.Event()
        cfg = state.config
        if self.config.durable_dir is not None and set(cfg.chain) - {member.name}:
            # The survivors hold a superset of its state, so its log can only mislead a
            # later recovery (it may end with updates that were never committed). The
            # last member's log is kept: it is what the next seed recovers from.
            path = Path(self.config.durable_dir) / f"shard_{member.shard}" / f"{member.name}.log"
            path.unlink(missing_ok=True)
        if state.seeding == member.name:
            state.seeding = None
        if member.name in cfg.chain:
            state.failovers += 1
            self._reconfigure(member.shard,
                              chain=tuple(n for n in cfg.chain if n != member.name))
        elif cfg.learner == member.name:
            self._reconfigure(member.shard, learner=None)
        if not state.config.chain and state.seeding is None:
            # The whole chain is gone (R=1, or every member died): the next replica to
            # register seeds the shard again (from the durable log, if any). A learner
            # (possibly half-transferred) or a queued joiner is told to exit; its
            # supervisor restarts it and it registers afresh.
            stragglers = list(state.joiners)
            if state.config.learner is not None:
                stragglers.append(state.config.learner)
                self._reconfigure(member.shard, learner=None)
            state.joiners.clear()
            for name in stragglers:
                if name in self._members:
                    self._push(self._members[name].conn, Removed())


def _refuse(conn: Any, reply: Any, error: transport.BadMessage) -> None:
    reply.fail(BadRequest(f"GCS coordinator: {error}"))


async def _close(conn: Any) -> None:
    with trio.move_on_after(1.0):
        try:
            await conn.aclose()
        except transport.TransportError:
            pass
