"""`Replica`: one member of one shard's chain (a Trio service).

Chain replication, as this replica sees it
==========================================

The coordinator tells each replica its shard's `ChainConfig` (pushed on the
replica's registration connection whenever it changes; every config carries a
per-shard epoch, and an older epoch is ignored). From it a replica derives its roles:

* head (first of ``chain``): executes client writes (`ShardState.execute`), which
  numbers them; the reply waits in ``_pending`` until the tail's acknowledgement
  for its sequence number comes back up the chain.
* successor link (`ChainLink`, `_chain_link.py`, a component with its own state):
  every replica with a successor (the next chain member, or the *learner* behind
  the tail) dials it, asks in a `Sync` request how far it got (its ``applied``),
  then streams every later update from the log in batches (`Forward`). If the
  successor is further behind than the log reaches -- a fresh replacement -- it
  first sends a snapshot (`Transfer`): *that is state transfer*, and it is the same
  code path as chain repair. A successor accepts `Forward`/`Transfer` only on the
  connection whose `Sync` it accepted, and accepts that only from the predecessor
  its own config names (waiting briefly for a newer config if the dialer's epoch
  is ahead).
* tail (last of ``chain``): commits what it applies at once and sends a cumulative
  `Ack` upstream; middle replicas commit on the ack and relay it; the head releases
  replies. Reads are served only by the tail, so a read never sees an uncommitted
  write, and since every replica upstream of the tail holds a superset of its state,
  a repaired chain's new tail never goes backwards.

Repair needs no special code: when a replica dies, the coordinator sends new configs;
the predecessor's forwarder sees a new successor and resyncs ("you have N, here is
N+1..."); a new tail commits everything it applied; a new head simply starts
executing (its dedup record tells retried writes apart: they are answered, not
re-applied).

Adding a replacement: the coordinator names it the *learner*; the tail forwards to
it (snapshot, then updates) while still acknowledging by itself. When the forwarder
sees the learner caught up it asks the coordinator to promote it (`Promote`); in the
next config the old tail becomes a middle replica and, before anything else, sends
a `Handoff` mark down its stream: the new tail serves reads only after it applied up to that mark,
i.e. everything the old tail had ever acknowledged (linearizable reads across the
switch).

The coordinator link: the coordinator is not on the data path, so when the link
to it dies (it crashed, or is restarting) a replica keeps serving under the config it
has, redials the same address with backoff and registers again, reporting its
`Progress` (chain view, ``applied``, ``acked``, whether it seeded the shard); the
restarted coordinator rebuilds the chains from those reports (`_coordinator.py`,
"Restart"). Notices it sends meanwhile (`Suspect`, `Promote`) are lost and repeated
later.
Only after ``coordinator_patience`` without a coordinator does it give up and exit.

Pub/sub: updates are published when *committed* (not when applied), by whichever
replica the subscriber is attached to (clients attach to the tail). Every update
has the shard's sequence number, so after a failover a subscriber resubscribes at
another replica "from seq N+1" and gets the rest from the log: no gap, no duplicate.
Events for one connection go through one bounded outbox in commit order; a
subscriber too slow for the outbox is dropped with a `SubscriptionsLost` notice and
resubscribes from its last sequence number.

Messages: each of the replica's three kinds of link has one `transport.Dispatcher`
(`_serving`: clients and the predecessor; `_coordinated`: the coordinator link it
dials; the successor link's is the `ChainLink`'s). A message of a type the link
does not handle, or with wrong fields, is answered `Refused(BadRequest)` and
counted in ``bad_requests``; the replica serves on.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections import deque
from typing import Any

import attrs
import trio

import transport

from ._chain_link import ChainLink
from ._config import GcsConfig
from ._durable import ShardLog, ShardLogStatistics, recover_shard
from ._errors import BadRequest, GcsError, SubscriptionLost
from ._messages import (
    Assigned,
    ChainConfig,
    Forward,
    Handoff,
    Ping,
    Pong,
    Progress,
    Read,
    ReadDone,
    Reconfigure,
    Redirect,
    Refused,
    Register,
    Removed,
    Seeded,
    ShardSnapshot,
    Stats,
    Subscribe,
    Subscribed,
    Sync,
    Transfer,
    Unsubscribe,
    Watch,
    Write,
    WriteDone,
)
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._protocol import check_key, check_table, validate_read
from ._pubsub import Publisher, PublisherStatistics
from ._state import ShardState, ShardStateStatistics, Update, updates_of
from ._watch import HeldReplies, aclose_quietly, answer, answer_nowait

__all__ = ["Replica", "ReplicaRemoved", "ReplicaStatistics"]

#: How long a write that names a newer layout than the replica's config waits for
#: that config before the client is redirected.
_CONFIG_WAIT = 2.0


class ReplicaRemoved(Exception):
    """The coordinator removed this replica from its chain (or is gone): it must exit."""


@attrs.frozen(kw_only=True)
class ReplicaStatistics:
    """Figures of one replica, from `Replica.statistics()` (and its `Stats` request).

    Attributes:
      name, shard: the replica's name and its shard.
      role: ``head``, ``tail``, ``head+tail``, ``middle``, ``learner`` or ``joining``.
      epoch: of the chain configuration it obeys.
      pending_replies: client writes executed here and not yet acknowledged by the tail.
      writes, reads: client operations served; bad_requests: requests refused as
        malformed or unknown.
      coordinator_reconnects: times it redialled the coordinator.
      snapshots_sent, snapshots_received: state transfers to a successor / from a
        predecessor; suspects_reported: neighbours reported to the coordinator.
      standby_links_taken: new successors streamed to over a link dialled ahead;
        backlogs_applied: a new predecessor's first updates applied with its `Sync`;
        standby_link: the replica a standby link is open to (our successor's
        successor), or None.
      pubsub: its subscriptions (served by the tail); state: its copy of the shard;
      log: its durable log (``None`` without ``durable_dir``).
      frozen_objects: objects of its process kept out of the garbage collector's
        full collections (`gc.get_freeze_count`: a replica process freezes its
        imports at its start, ``_replica_main._freeze_imports``).
    """

    name: str
    shard: int
    role: str
    epoch: int
    pending_replies: int
    writes: int
    reads: int
    bad_requests: int
    coordinator_reconnects: int
    snapshots_sent: int
    snapshots_received: int
    suspects_reported: int
    standby_links_taken: int
    backlogs_applied: int
    standby_link: str | None
    pubsub: PublisherStatistics
    state: ShardStateStatistics
    log: ShardLogStatistics | None
    frozen_objects: int


@attrs.define
class _Counters:
    writes: int = 0
    reads: int = 0
    bad_requests: int = 0
    coordinator_reconnects: int = 0
    snapshots_received: int = 0


class Replica:
    """One replica of shard ``shard``; registers with the coordinator at ``coordinator``.

    It is the `ChainHost` of its `ChainLink` (``links``): it lends it the chain
    config, the shard state and `commit`, and calls it when it applied, committed or
    was reconfigured.
    """

    def __init__(
        self,
        config: GcsConfig,
        *,
        shard: int,
        token: bytes,
        coordinator: str,
        name: str | None = None,
    ) -> None:
        self.config = config
        self.shard = shard
        self.token = token
        self.coordinator_address = coordinator
        self.name = name or f"s{shard}-{uuid.uuid4().hex[:10]}"
        self.state = ShardState(
            replay_buffer=config.replay_buffer,
            dedup_entries=config.dedup_entries,
            lineage_cap=config.lineage_cap,
            max_value_bytes=config.max_value_bytes,
        )
        self.chain = ChainConfig(shard=shard, epoch=0, chain=(), addresses={})
        self.address: str | None = None
        self.log: ShardLog | None = None
        self.links = ChainLink(self, config, token)
        self._changed = trio.Event()
        self._pending: deque[tuple[int, Any, list[Any]]] = deque()
        self._readable = False
        self._mark_floor: int | None = None
        # The parts of a snapshot being received, and the link they come on.
        self._transfer_parts: tuple[Any, list[ShardSnapshot]] | None = None
        self._pubsub = Publisher(shard)
        self._coordinator: Any = None
        self._nursery: trio.Nursery | None = None
        self._removed = trio.Event()
        self._held = HeldReplies()
        self._seeded = False
        self._log_opened = False
        self._counts = _Counters()
        self._serving = self._serving_routes()
        self._coordinated = self._coordinator_routes()

    # ------------------------------------------------------------------ service

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "gcs_replica", "pid": os.getpid(), "address": self.address,
                "role": self.role()}

    def role(self) -> str:
        chain = self.chain.chain
        if self.name == self.chain.learner:
            return "learner"
        if self.name not in chain:
            return "joining"
        roles = []
        if chain[0] == self.name:
            roles.append("head")
        if chain[-1] == self.name:
            roles.append("tail")
        return "+".join(roles) or "middle"

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listen = f"tcp:{self.config.host}:0"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                server = transport.Server(listen, self.token, self._serving,
                                          name=f"gcs/{self.name}")
                self.address = await nursery.start(server.run)
                # Started once listening, before the coordinator answers: a recovering
                # coordinator holds the answer until it heard every slot of the shard,
                # and a supervisor starts the slots one after the other.
                task_status.started(self.address)
                await self._register_with_retry()
                nursery.start_soon(self.links.run_forwarder)
                nursery.start_soon(self.links.run_acker)
                nursery.start_soon(self.links.run_standby)
                nursery.start_soon(self._watch_coordinator)
                await self._removed.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self.log is not None:
                self.log.close()
            if self._coordinator is not None:
                with trio.CancelScope(shield=True):
                    await aclose_quietly(self._coordinator)
        raise ReplicaRemoved(
            f"GCS replica {self.name} of shard {self.shard} was removed from its chain "
            "or lost its coordinator"
        )

    # ------------------------------------------------------- the ChainHost interface

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def adopt_history(self, history: str) -> None:
        self.state.history = history
        if self.log is not None:
            self.log.start(self.state)  # the log's snapshot names the history

    def tell_coordinator(self, message: Any) -> None:
        """One-way notice; lost while the coordinator is down (the senders repeat
        theirs: a suspect after another timeout, a promote under the next epoch)."""
        try:
            self._coordinator.send_nowait(message)
        except (transport.TransportError, trio.WouldBlock):
            pass

    def apply_batch(self, updates: list[Update]) -> None:
        self._apply_batch(updates)

    def commit(self, seq: int) -> None:
        """Everything up to ``seq`` is acknowledged by the tail: publish it, release
        the replies waiting for it, acknowledge it upstream."""
        done = self.state.commit(seq)
        if not done:
            return
        self._pubsub.publish(done)
        acked = self.state.acked
        pending = self._pending
        while pending and pending[0][0] <= acked:
            wait, reply, results = pending.popleft()
            answer_nowait(reply, WriteDone(results, wait, self.state.history))
        self.links.send_ack()
        self.notify()

    # ------------------------------------------------------------ the coordinator

    async def _watch_coordinator(self) -> None:
        """Follow the coordinator across its restarts.

        A never-answered `Watch` request fails at once when the link dies. The
        replica keeps serving under the config it has (the coordinator is not on the
        data path), redials, and registers again with its `Progress`, from which a
        restarted coordinator rebuilds the chains (see `_coordinator.py`, "Restart").
        """
        while not self._removed.is_set():
            try:
                while True:  # an answer (None) only means "ask again"
                    await self._coordinator.request(Watch(), timeout=None)
            except transport.TransportError:
                pass
            if self._removed.is_set():
                return
            self._counts.coordinator_reconnects += 1
            await aclose_quietly(self._coordinator)
            await self._register_with_retry()

    async def _register_with_retry(self) -> None:
        """Dial the coordinator and register until it answers (a restarted one may
        take a moment to listen again); give up after ``coordinator_patience``."""
        deadline = trio.current_time() + self.config.coordinator_patience
        delay = 0.01
        while True:
            try:
                await self._register()
                return
            except (transport.TransportError, OSError):
                if trio.current_time() >= deadline:
                    self._removed.set()
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def _register(self) -> None:
        conn = await transport.connect(
            self.coordinator_address, self.token, name=f"gcs/{self.name}",
            handler=self._coordinated, connect_timeout=2.0,
        )
        self._coordinator = conn
        assert self.address is not None
        progress = Progress(self.chain, self.state.applied, self.state.acked, self._seeded)
        try:
            assigned = await conn.request(
                Register(self.shard, self.name, self.address, os.getpid(), progress),
                timeout=60.0,
            )
            if not isinstance(assigned, Assigned):
                raise transport.ProtocolError(
                    f"the GCS coordinator answered a registration with {assigned!r:.200}")
            if assigned.role == "seed":
                if not self._seeded:
                    self._seed()
                    self._seeded = True
                    self._readable = True
                # If the coordinator dies before it hears this, the next registration
                # reports ``seeded`` and it makes us the chain anyway.
                await conn.request(Seeded(self.shard, self.name), timeout=_RPC_TIMEOUT)
        except BaseException:
            with trio.CancelScope(shield=True):
                await aclose_quietly(conn)
            raise
        if assigned.role == "removed":
            self._removed.set()
        # "join": a learner soon; "resume": a member of the (recovered) chain. Either
        # way its config follows.

    def _seed(self) -> None:
        durable = self.config.durable_dir
        if durable is None:
            return
        recover_shard(durable, self.shard, self.state)
        self._log_opened = True
        self._open_log(remove_others=True)

    def _open_log(self, remove_others: bool = False) -> None:
        durable = self.config.durable_dir
        if durable is None:
            return
        if self.log is None:
            self.log = ShardLog(durable, self.shard, self.name, fsync=self.config.fsync,
                                compact_every=self.config.compact_every)
        self.log.start(self.state, remove_others=remove_others)

    def _coordinator_routes(self) -> transport.Dispatcher:
        """What the coordinator sends on the link this replica dials."""
        d = transport.Dispatcher(f"gcs/{self.name} coordinator link", refuse=self._refuse)
        d.register(Reconfigure, self._on_reconfigure, oneway=True)
        d.register(Removed, self._on_removed, oneway=True)
        d.register(Ping, self._on_ping)
        d.register(Watch, self._on_watch)
        return d

    def _on_reconfigure(self, conn: Any, message: Reconfigure) -> None:
        self._set_config(message.config)

    def _on_removed(self, conn: Any, message: Removed) -> None:
        self._removed.set()

    def _on_ping(self, conn: Any, message: Ping, reply: Any) -> None:
        # The coordinator's heartbeat, or a predecessor checking our link.
        answer_nowait(reply, Pong(self.state.applied))

    def _on_watch(self, conn: Any, message: Watch, reply: Any) -> None:
        self._held.hold(conn, reply)  # never answered: fails when we die

    def _is_tail(self, cfg: ChainConfig) -> bool:
        return bool(cfg.chain) and cfg.chain[-1] == self.name

    def _set_config(self, cfg: ChainConfig) -> None:
        old = self.chain
        if cfg.epoch <= old.epoch:
            return
        self.chain = cfg
        if self.name not in cfg.chain and self.name != cfg.learner:
            self.links.reconfigured(cfg, handoff=False)
            if old.epoch:  # we were in the chain and got dropped: die, get replaced
                self._removed.set()
            return
        if not self._log_opened:
            # Opened only now, once the shard has a chain: a seeding replica removes
            # every other log of its shard, which would race with an earlier open.
            self._log_opened = True
            self._open_log()  # rewritten if a snapshot arrives
        was_tail, now_tail = self._is_tail(old), self._is_tail(cfg)
        if now_tail and not was_tail:
            if old.learner != self.name:
                self._readable = True
            self.commit(self.state.applied)
        self.links.reconfigured(cfg, handoff=was_tail and not now_tail)
        self.notify()

    # --------------------------------------------------------------- requests

    def _serving_routes(self) -> transport.Dispatcher:
        """What clients and the predecessor send to this replica's listener."""
        d = transport.Dispatcher(f"gcs/{self.name}", refuse=self._refuse)
        d.register(Write, self._on_write)
        d.register(Read, self._on_read)
        d.register(Subscribe, self._on_subscribe)
        d.register(Unsubscribe, self._on_unsubscribe, oneway=True)
        d.register(Stats, self._on_stats)
        d.register(Ping, self._on_ping)
        d.register(Watch, self._on_watch)
        d.register(Sync, self.links.on_sync)
        d.register(Forward, self._on_forward, oneway=True)
        d.register(Transfer, self._on_transfer, oneway=True)
        d.register(Handoff, self._on_handoff, oneway=True)
        return d

    def _refuse(self, conn: Any, reply: Any, error: transport.BadMessage) -> None:
        self._counts.bad_requests += 1
        answer_nowait(reply, Refused(BadRequest(f"GCS replica: {error}")))

    def _on_stats(self, conn: Any, message: Stats, reply: Any) -> None:
        answer_nowait(reply, self.statistics())

    def _on_unsubscribe(self, conn: Any, message: Unsubscribe) -> None:
        self._pubsub.unsubscribe(conn, message.sub_id)

    def _on_forward(self, conn: Any, message: Forward) -> None:
        if self.links.is_upstream(conn):
            self._apply_batch(updates_of(message))
            if not self.links.is_upstream(conn):  # a gap: make the predecessor resync
                assert self._nursery is not None
                self._nursery.start_soon(aclose_quietly, conn)

    def _on_transfer(self, conn: Any, message: Transfer) -> None:
        """A part of a snapshot from the accepted predecessor: kept until the last
        one, then the whole is installed. Parts come in order on one link; a part 0
        starts a new snapshot, and parts from a link other than the one that sent
        part 0 are dropped (a new predecessor sends its own from its part 0)."""
        if not self.links.is_upstream(conn):
            return
        if message.part == 0:
            self._transfer_parts = (conn, [])
        elif self._transfer_parts is None or self._transfer_parts[0] is not conn:
            return
        parts = self._transfer_parts[1]
        if message.part != len(parts):
            self._transfer_parts = None  # (cannot happen on one ordered link)
            self.links.drop_upstream()
            return
        parts.append(message.snapshot)
        if message.last:
            self._transfer_parts = None
            self._install_snapshot(ShardState.merge_parts(parts))

    def _on_handoff(self, conn: Any, message: Handoff) -> None:
        if self.links.is_upstream(conn):
            self._mark_floor = message.seq
            self._check_mark()

    def _on_write(self, conn: Any, message: Write, reply: Any) -> None:
        if not self.chain.chain or self.chain.chain[0] != self.name:
            if message.epoch > self.chain.epoch:
                # The client already has a newer layout than our config: after a
                # failover the coordinator pushed both at once and ours is on its
                # way. Wait for it rather than send the client off to sleep and
                # resend (a write still executes only here, as the head our own
                # config names).
                assert self._nursery is not None
                self._nursery.start_soon(self._write_later, conn, message, reply)
                return
            answer_nowait(reply, Redirect(self.chain.epoch))
            return
        results, wait, new = self.state.execute(message.client_id, message.seqs, message.ops)
        self._counts.writes += len(message.ops)
        self._after_apply(new)
        if self._is_tail(self.chain):
            self.commit(self.state.applied)
        if wait <= self.state.acked:
            answer_nowait(reply, WriteDone(results, wait, self.state.history))
        else:
            self._pending.append((wait, reply, results))

    async def _write_later(self, conn: Any, message: Write, reply: Any) -> None:
        """`_on_write` once our config reached the client's epoch (or a redirect
        after ``_CONFIG_WAIT``, if it never comes: the client asks the coordinator)."""
        with trio.move_on_after(_CONFIG_WAIT):
            while self.chain.epoch < message.epoch:
                await self._changed.wait()
        if self.chain.epoch < message.epoch:
            await answer(reply, Redirect(self.chain.epoch))
            return
        self._on_write(conn, message, reply)

    def _on_read(self, conn: Any, message: Read, reply: Any) -> None:
        min_seq = message.min_seq
        if message.history not in (None, self.state.history):
            min_seq = 0  # the client saw another history: its seqs mean nothing here
        if not self._is_tail(self.chain):
            answer_nowait(reply, Redirect(self.chain.epoch))
            return
        if self._readable and self.state.applied >= min_seq:
            answer_nowait(reply, self._read(message.ops))
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._read_later, min_seq, message.ops, reply)

    async def _read_later(self, min_seq: int, ops: list[Any], reply: Any) -> None:
        with trio.move_on_after(_RPC_TIMEOUT):
            while not (self._readable and self.state.applied >= min_seq):
                await self._changed.wait()
            if self._is_tail(self.chain):
                await answer(reply, self._read(ops))
                return
        await answer(reply, Redirect(self.chain.epoch))

    def _read(self, ops: list[Any]) -> ReadDone:
        results: list[Any] = []
        for op in ops:
            try:
                results.append(self.state.read(validate_read(op)))
            except GcsError as exc:
                self._counts.bad_requests += 1
                results.append(exc)
        self._counts.reads += len(ops)
        return ReadDone(self.state.applied, results, self.state.history)

    # --------------------------------------------------------- applying, committing

    def _after_apply(self, new: list[Update]) -> None:
        if new:
            if self.log is not None:
                self.log.append(new, self.state)
            self.links.forward_now(new)
            self.notify()

    def _apply_batch(self, updates: list[Update]) -> None:
        applied = []
        try:
            for update in updates:
                if self.state.apply(update):
                    applied.append(update)
        except ValueError:
            # A gap: drop the link so the predecessor resyncs from our `applied`.
            self.links.drop_upstream()
        self._after_apply(applied)
        if self._is_tail(self.chain):
            self.commit(self.state.applied)
        self._check_mark()

    def _check_mark(self) -> None:
        """Readable once we applied everything the old tail had acknowledged."""
        floor = self._mark_floor
        if floor is not None and self.state.applied >= floor:
            self._mark_floor = None
            self._readable = True
            self.notify()

    def _install_snapshot(self, snapshot: ShardSnapshot) -> None:
        self.state.restore(snapshot)
        self._counts.snapshots_received += 1
        self._open_log()
        if self._is_tail(self.chain):
            self.commit(self.state.applied)
        self.notify()

    # ------------------------------------------------------------------ pub/sub

    def _on_subscribe(self, conn: Any, message: Subscribe, reply: Any) -> None:
        try:
            check_table(message.table)
            if message.key is not None:
                check_key(message.key)
            elif message.prefix is not None:
                check_key(message.prefix)
            else:
                raise BadRequest("a subscription needs a key or a prefix")
        except GcsError as exc:
            self._counts.bad_requests += 1
            answer_nowait(reply, Refused(exc))
            return
        if not self._is_tail(self.chain) or not self._readable:
            answer_nowait(reply, Redirect(self.chain.epoch))
            return
        acked = self.state.acked
        from_seq = message.from_seq
        start = acked if from_seq is None else from_seq - 1
        replay = self.state.updates_after(start)
        if replay is None or start > self.state.applied:
            oldest = self.state.oldest_replayable()
            answer_nowait(reply, Refused(SubscriptionLost(
                f"shard {self.shard} can replay from seq {oldest} only; the subscriber "
                f"last saw {start}", shard=self.shard, last_seq=start, oldest=oldest)))
            return
        assert self._nursery is not None
        self._pubsub.subscribe(self._nursery, conn, message.sub_id, message.table, message.key,
                               message.prefix, replay, acked)
        answer_nowait(reply, Subscribed(acked))

    def statistics(self) -> ReplicaStatistics:
        counts = self._counts
        links = self.links.statistics()
        return ReplicaStatistics(
            name=self.name,
            shard=self.shard,
            role=self.role(),
            epoch=self.chain.epoch,
            pending_replies=len(self._pending),
            pubsub=self._pubsub.statistics(),
            state=self.state.statistics(),
            log=self.log.statistics() if self.log else None,
            writes=counts.writes,
            reads=counts.reads,
            bad_requests=counts.bad_requests,
            coordinator_reconnects=counts.coordinator_reconnects,
            snapshots_sent=links.snapshots_sent,
            snapshots_received=counts.snapshots_received,
            suspects_reported=links.suspects_reported,
            standby_links_taken=links.standby_links_taken,
            backlogs_applied=links.backlogs_applied,
            standby_link=links.standby_link,
            frozen_objects=gc.get_freeze_count(),
        )
