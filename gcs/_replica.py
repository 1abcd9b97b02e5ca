"""`Replica`: one member of one shard's chain (a Trio service).

Chain replication, as this replica sees it
==========================================

The coordinator tells each replica its shard's `ChainConfig` (pushed on the
replica's registration connection whenever it changes; every config carries a
per-shard epoch, and an older epoch is ignored). From it a replica derives its roles:

* head (first of ``chain``): executes client writes (`ShardState.execute`), which
  numbers them; the reply waits in ``_pending`` until the tail's acknowledgement
  for its sequence number comes back up the chain.
* successor link (`_chain_link.py`): every replica with a successor (the next chain
  member, or the *learner* behind the tail) runs `_forwarder`: it dials the
  successor, asks in a ``sync`` request how far it got (its ``applied``), then
  streams every later update from the log in batches (``fw``). If the successor is further behind than the log
  reaches -- a fresh replacement -- it first sends a snapshot (``snap``): *that is
  state transfer*, and it is the same code path as chain repair. A successor accepts
  ``fw``/``snap`` only on the connection whose ``sync`` it accepted, and accepts that
  only from the predecessor its own config names (waiting briefly for a newer
  config if the dialer's epoch is ahead).
* tail (last of ``chain``): commits what it applies at once and sends a cumulative
  ``ack`` upstream; middle replicas commit on the ack and relay it; the head releases
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
sees the learner caught up it asks the coordinator to promote it; in the next config
the old tail becomes a middle replica and, before anything else, sends a ``mark``
down its stream: the new tail serves reads only after it applied up to that mark,
i.e. everything the old tail had ever acknowledged (linearizable reads across the
switch).

The coordinator link: the coordinator is not on the data path, so when the link
to it dies (it crashed, or is restarting) a replica keeps serving under the config it
has, redials the same address with backoff and registers again, reporting its chain
view, ``applied``, ``acked`` and whether it seeded the shard; the restarted
coordinator rebuilds the chains from those reports (`_coordinator.py`, "Restart").
Notices it sends meanwhile (``suspect``, ``promote``) are lost and repeated later.
Only after ``coordinator_patience`` without a coordinator does it give up and exit.

Pub/sub: updates are published when *committed* (not when applied), by whichever
replica the subscriber is attached to (clients attach to the tail). Every update
has the shard's sequence number, so after a failover a subscriber resubscribes at
another replica "from seq N+1" and gets the rest from the log: no gap, no duplicate.
Events for one connection go through one bounded outbox in commit order; a
subscriber too slow for the outbox is dropped with a ``sublost`` notice and
resubscribes from its last sequence number.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from typing import Any

import attrs
import trio

import transport

from ._chain_link import ChainLinks
from ._config import GcsConfig
from ._durable import ShardLog, ShardLogStatistics, recover_shard
from ._errors import GcsError, SubscriptionLost
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._protocol import ChainConfig, check_key, check_table, validate_read
from ._pubsub import Publisher, PublisherStatistics
from ._state import ShardState, ShardStateStatistics, Update
from ._watch import HeldReplies, aclose_quietly, answer, answer_nowait

__all__ = ["Replica", "ReplicaRemoved", "ReplicaStatistics"]



class ReplicaRemoved(Exception):
    """The coordinator removed this replica from its chain (or is gone): it must exit."""


@attrs.frozen(kw_only=True)
class ReplicaStatistics:
    """Figures of one replica, from `Replica.statistics()`; its ``("stats",)``
    request answers them flattened into one dict (`report`).

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
      pubsub: its subscriptions (served by the tail); state: its copy of the shard;
      log: its durable log (``None`` without ``durable_dir``).
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
    pubsub: PublisherStatistics
    state: ShardStateStatistics
    log: ShardLogStatistics | None

    def report(self) -> dict[str, Any]:
        """One flat dict: the components' figures beside the replica's own, the log's
        under ``"log"`` (the wire shape of the ``stats`` request)."""
        out = attrs.asdict(self, recurse=False, filter=attrs.filters.exclude(
            attrs.fields(ReplicaStatistics).pubsub, attrs.fields(ReplicaStatistics).state,
            attrs.fields(ReplicaStatistics).log))
        out.update(attrs.asdict(self.pubsub))
        out.update(attrs.asdict(self.state))
        if self.log is not None:
            out["log"] = attrs.asdict(self.log)
        return out


class Replica(ChainLinks):
    """One replica of shard ``shard``; registers with the coordinator at ``coordinator``."""

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
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._pending: deque[tuple[int, Any, list[Any]]] = deque()
        self._upstream: Any = None
        self._readable = False
        self._handoff_mark: int | None = None
        self._next_fw: int | None = None
        self._has_successor = False
        self._ack_to: Any = None
        self._ack_sent = 0
        self._mark_floor: int | None = None
        self._pubsub = Publisher(shard)
        self._coordinator: Any = None
        self._nursery: trio.Nursery | None = None
        self._removed = trio.Event()
        self._held = HeldReplies()
        self._seeded = False
        self._log_opened = False
        self._stats = {"coordinator_reconnects": 0, "writes": 0, "reads": 0, "bad_requests": 0, "snapshots_sent": 0,
                       "snapshots_received": 0,
                       "suspects_reported": 0}

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
                server = transport.Server(listen, self.token, self._on_peer,
                                          name=f"gcs/{self.name}")
                self.address = await nursery.start(server.run)
                # Started once listening, before the coordinator answers: a recovering
                # coordinator holds the answer until it heard every slot of the shard,
                # and a supervisor starts the slots one after the other.
                task_status.started(self.address)
                await self._register_with_retry()
                nursery.start_soon(self._forwarder)
                nursery.start_soon(self._acker)
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

    async def _watch_coordinator(self) -> None:
        """Follow the coordinator across its restarts.

        A never-answered ``watch`` request fails at once when the link dies. The
        replica keeps serving under the config it has (the coordinator is not on the
        data path), redials, and registers again with a report of its chain view and
        progress, from which a restarted coordinator rebuilds the chains (see
        `_coordinator.py`, "Restart").
        """
        while not self._removed.is_set():
            try:
                while True:  # an answer (None) only means "ask again"
                    await self._coordinator.request(("watch",), timeout=None)
            except transport.TransportError:
                pass
            if self._removed.is_set():
                return
            self._stats["coordinator_reconnects"] += 1
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
            handler=self._on_coordinator, connect_timeout=2.0,
        )
        self._coordinator = conn
        report = (self.chain, self.state.applied, self.state.acked, self._seeded)
        try:
            role = await conn.request(
                ("register", self.shard, self.name, self.address, os.getpid(), report),
                timeout=60.0,
            )
            if role == "seed":
                if not self._seeded:
                    self._seed()
                    self._seeded = True
                    self._readable = True
                # If the coordinator dies before it hears this, the next registration
                # reports ``seeded`` and it makes us the chain anyway.
                await conn.request(("seeded", self.shard, self.name), timeout=_RPC_TIMEOUT)
        except BaseException:
            with trio.CancelScope(shield=True):
                await aclose_quietly(conn)
            raise
        if role == "seed":
            pass
        elif role == "removed":
            self._removed.set()
        # "resume": a member of the (recovered) chain; its config follows.

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

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------- coordinator

    async def _on_coordinator(self, conn: Any, message: Any, reply: Any) -> None:
        tag = message[0]
        if tag == "config":
            self._set_config(message[1])
        elif tag == "ping":
            await answer(reply, ("pong", self.state.applied))
        elif tag == "removed":
            self._removed.set()
        elif tag == "watch":
            self._held.hold(conn, reply)  # never answered: fails when we die

    def _tell_coordinator(self, message: Any) -> None:
        """One-way notice; lost while the coordinator is down (the senders repeat
        theirs: a suspect after another timeout, a promote under the next epoch)."""
        try:
            self._coordinator.send_nowait(message)
        except (transport.TransportError, trio.WouldBlock):
            pass

    def _is_tail(self, cfg: ChainConfig) -> bool:
        return bool(cfg.chain) and cfg.chain[-1] == self.name

    def _set_config(self, cfg: ChainConfig) -> None:
        old = self.chain
        if cfg.epoch <= old.epoch:
            return
        self.chain = cfg
        self._has_successor = cfg.successor(self.name) is not None
        if self.name not in cfg.chain and self.name != cfg.learner:
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
            self._commit(self.state.applied)
        elif was_tail and not now_tail:
            self._handoff_mark = self.state.applied
        self._notify()
        self._wake_background()

    # --------------------------------------------------------------- requests

    async def _on_peer(self, conn: Any, message: Any, reply: Any) -> None:
        try:
            tag = message[0]
        except (TypeError, IndexError, KeyError):
            tag = None
        if tag == "w":
            await self._on_write(message, reply)
        elif tag == "r":
            await self._on_read(message, reply)
        elif tag == "fw":
            if conn is self._upstream:
                self._apply_batch(message[1])
                if self._upstream is None:  # a gap: make the predecessor resync
                    await aclose_quietly(conn)
        elif tag == "ack":
            pass  # acks arrive on connections we dialed (see _on_downstream)
        elif tag == "sync":
            await self._on_sync(conn, message, reply)
        elif tag == "snap":
            if conn is self._upstream:
                self._install_snapshot(message[1])
        elif tag == "mark":
            if conn is self._upstream:
                self._mark_floor = message[1]
                self._check_mark()
        elif tag == "sub":
            await self._on_subscribe(conn, message, reply)
        elif tag == "unsub":
            self._pubsub.unsubscribe(conn, message[1])
            await answer(reply, ("ok",))
        elif tag == "stats":
            await answer(reply, self.statistics().report())
        elif tag == "ping":  # a predecessor checking our link (see _probe_successor)
            await answer(reply, ("pong", self.state.applied))
        elif tag == "watch":
            self._held.hold(conn, reply)  # never answered: fails when we die
        else:
            self._stats["bad_requests"] += 1
            from ._errors import BadRequest

            await answer(reply, ("err", BadRequest(
                f"GCS replica got an unknown request {message!r:.200}")))

    async def _on_write(self, message: Any, reply: Any) -> None:
        if not self.chain.chain or self.chain.chain[0] != self.name:
            await answer(reply, ("redirect", self.chain.epoch))
            return
        try:
            _, client_id, batch = message
            if not isinstance(batch, list):
                raise TypeError
            batch = [(int(cseq), op) for cseq, op in batch]
        except (TypeError, ValueError):
            from ._errors import BadRequest

            self._stats["bad_requests"] += 1
            await answer(reply, ("err", BadRequest(
                f"a write request must be ('w', client_id, [(seq, op), ...]), got {message!r:.200}"
            )))
            return
        results, wait, new = self.state.execute(client_id, batch)
        self._stats["writes"] += len(batch)
        self._after_apply(new)
        if self._is_tail(self.chain):
            self._commit(self.state.applied)
        if wait <= self.state.acked:
            await answer(reply, ("ok", results, wait, self.state.history))
        else:
            self._pending.append((wait, reply, results))

    async def _on_read(self, message: Any, reply: Any) -> None:
        try:
            _, min_seq, ops, *history = message
            min_seq = int(min_seq)
            if history and history[0] not in (None, self.state.history):
                min_seq = 0  # the client saw another history: its seqs mean nothing here
            if not isinstance(ops, list):
                raise TypeError
        except (TypeError, ValueError):
            from ._errors import BadRequest

            await answer(reply, ("err", BadRequest(
                f"a read request must be ('r', min_seq, [op, ...]), got {message!r:.200}")))
            return
        if not self._is_tail(self.chain):
            await answer(reply, ("redirect", self.chain.epoch))
            return
        if self._readable and self.state.applied >= min_seq:
            await answer(reply, self._read(ops))
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._read_later, min_seq, ops, reply)

    async def _read_later(self, min_seq: int, ops: list[Any], reply: Any) -> None:
        with trio.move_on_after(_RPC_TIMEOUT):
            while not (self._readable and self.state.applied >= min_seq):
                await self._changed.wait()
            if self._is_tail(self.chain):
                await answer(reply, self._read(ops))
                return
        await answer(reply, ("redirect", self.chain.epoch))

    def _read(self, ops: list[Any]) -> tuple[Any, ...]:
        results: list[Any] = []
        for op in ops:
            try:
                results.append(self.state.read(validate_read(op)))
            except GcsError as exc:
                self._stats["bad_requests"] += 1
                results.append(exc)
        self._stats["reads"] += len(ops)
        return ("ok", self.state.applied, results, self.state.history)

    # --------------------------------------------------------- applying, committing

    def _after_apply(self, new: list[Update]) -> None:
        if new:
            if self.log is not None:
                self.log.append(new, self.state)
            self._forward_now(new)
            self._notify()

    def _apply_batch(self, updates: list[Update]) -> None:
        applied = []
        try:
            for update in updates:
                if self.state.apply(update):
                    applied.append(update)
        except ValueError:
            # A gap: drop the link so the predecessor resyncs from our `applied`.
            self._upstream = None
        self._after_apply(applied)
        if self._is_tail(self.chain):
            self._commit(self.state.applied)
        self._check_mark()

    def _check_mark(self) -> None:
        """Readable once we applied everything the old tail had acknowledged."""
        floor = self._mark_floor
        if floor is not None and self.state.applied >= floor:
            self._mark_floor = None
            self._readable = True
            self._notify()

    def _install_snapshot(self, snap: tuple[Any, ...]) -> None:
        self.state.restore(snap)
        self._stats["snapshots_received"] += 1
        self._open_log()
        if self._is_tail(self.chain):
            self._commit(self.state.applied)
        self._notify()

    def _commit(self, seq: int) -> None:
        done = self.state.commit(seq)
        if not done:
            return
        self._pubsub.publish(done)
        acked = self.state.acked
        pending = self._pending
        while pending and pending[0][0] <= acked:
            wait, reply, results = pending.popleft()
            answer_nowait(reply, ("ok", results, wait, self.state.history))
        self._send_ack()
        self._notify()

    # ------------------------------------------------------------------ pub/sub

    async def _on_subscribe(self, conn: Any, message: Any, reply: Any) -> None:
        try:
            _, sub_id, table, key, prefix, from_seq = message
            check_table(table)
            if key is not None:
                check_key(key)
            else:
                check_key(prefix)
        except (ValueError, TypeError, GcsError) as exc:
            err = exc if isinstance(exc, GcsError) else None
            from ._errors import BadRequest

            await answer(reply, ("err", err or BadRequest(
                f"a subscribe request must be ('sub', id, table, key, prefix, from_seq), "
                f"got {message!r:.200}")))
            return
        if not self._is_tail(self.chain) or not self._readable:
            await answer(reply, ("redirect", self.chain.epoch))
            return
        acked = self.state.acked
        start = acked if from_seq is None else from_seq - 1
        replay = self.state.updates_after(start)
        if replay is None or start > self.state.applied:
            oldest = self.state.oldest_replayable()
            await answer(reply, ("err", SubscriptionLost(
                f"shard {self.shard} can replay from seq {oldest} only; the subscriber "
                f"last saw {start}", shard=self.shard, last_seq=start, oldest=oldest)))
            return
        assert self._nursery is not None
        self._pubsub.subscribe(self._nursery, conn, sub_id, table, key, prefix, replay, acked)
        await answer(reply, ("ok", acked))

    def statistics(self) -> ReplicaStatistics:
        stats = self._stats
        return ReplicaStatistics(
            name=self.name,
            shard=self.shard,
            role=self.role(),
            epoch=self.chain.epoch,
            pending_replies=len(self._pending),
            pubsub=self._pubsub.statistics(),
            state=self.state.statistics(),
            log=self.log.statistics() if self.log else None,
            writes=stats["writes"],
            reads=stats["reads"],
            bad_requests=stats["bad_requests"],
            coordinator_reconnects=stats["coordinator_reconnects"],
            snapshots_sent=stats["snapshots_sent"],
            snapshots_received=stats["snapshots_received"],
            suspects_reported=stats["suspects_reported"],
        )
