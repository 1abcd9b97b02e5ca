"""`Coordinator`: the chain master of one GCS (one per GCS, in the head node process).

It holds every shard's chain membership and nothing else (no table data), so it is
small and its state is rebuilt from the replicas' registrations.

Membership protocol
-------------------
* A replica, once listening, dials the coordinator and sends ``register``. If its
  shard has no chain yet, it is told ``"seed"``: it recovers the shard from the
  durable logs (if any) and reports ``seeded``; it becomes a chain of one. Otherwise
  it is told ``"join"`` and queued; the coordinator makes the first queued replica the
  *learner* behind the tail (state transfer, see `_replica.py`), and when the tail
  reports the learner caught up (``promote``) appends it to the chain.
* Failure detection: the coordinator keeps a never-answered ``watch`` request pending
  on each replica's connection, so a process death (the kernel closes its sockets)
  fails it at once; a periodic ``ping`` with a timeout catches a hung replica. A dead
  replica is cut out of the chain: predecessor and successor become neighbours, the
  head or tail role moves on; a replica cut out while alive is told ``removed`` and
  exits (its supervisor restarts it, and it rejoins as a fresh learner).
* Every change bumps the shard's epoch and is pushed to all its replicas (``config``)
  and to all connected clients (``layout``). Clients also ask for the layout after
  an error, so a lost push costs a round trip, never correctness.
"""

from __future__ import annotations

import uuid
from collections import deque
from pathlib import Path
from typing import Any, cast

import attrs
import trio

import transport

from ._config import GcsConfig
from ._protocol import ChainConfig, Layout, ShardLayout
from ._watch import HeldReplies

__all__ = ["Coordinator"]

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


class Coordinator:
    """The chain master service. ``run`` reports the address clients connect to."""

    def __init__(self, config: GcsConfig, token: bytes, *, address: str | None = None) -> None:
        self.config = config
        self.token = token
        self.listen = address or f"tcp:{config.host}:0"
        self.address: str | None = None
        self._shards = [
            _Shard(ChainConfig(shard=i, epoch=0, chain=(), addresses={}))
            for i in range(config.shards)
        ]
        self._members: dict[str, _Member] = {}
        self._clients: set[Any] = set()
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self.removed_total = 0
        self.suspects = 0
        #: The latest removals: (replica name, why).
        self.removals: deque[tuple[str, str]] = deque(maxlen=100)
        self._held = HeldReplies()
        self.generation = uuid.uuid4().hex

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "gcs_coordinator", "address": self.address}

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            server = transport.Server(self.listen, self.token, self._on_message,
                                      name="gcs/coordinator")
            self.address = await nursery.start(server.run)
            task_status.started(self.address)

    # ----------------------------------------------------------------- queries

    def layout(self) -> Layout:
        shards = []
        for shard in self._shards:
            cfg = shard.config
            head = cfg.addresses[cfg.chain[0]] if cfg.chain else None
            tail = cfg.addresses[cfg.chain[-1]] if cfg.chain else None
            shards.append(ShardLayout(shard=cfg.shard, epoch=cfg.epoch, head=head, tail=tail))
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

    def is_member(self, name: str) -> bool:
        """Whether replica ``name`` is registered and not declared dead."""
        return name in self._members

    async def wait_removed(self, name: str) -> None:
        """Return once replica ``name`` (registered earlier) has been declared dead.

        The replica's supervising service uses this to kill a process that is alive
        but unresponsive (it failed its heartbeats), so that it gets replaced.
        """
        while name in self._members:
            await self._changed.wait()

    def statistics(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "shards": [
                {"shard": s.config.shard, "epoch": s.config.epoch, "chain": list(s.config.chain),
                 "learner": s.config.learner, "joiners": list(s.joiners),
                 "failovers": s.failovers}
                for s in self._shards
            ],
            "clients": len(self._clients),
            "removed_total": self.removed_total,
            "suspects": self.suspects,
            "removals": list(self.removals)[-10:],
        }

    def chain(self, shard: int) -> ChainConfig:
        return self._shards[shard].config

    # ----------------------------------------------------------------- messages

    async def _on_message(self, conn: Any, message: Any, reply: Any) -> None:
        tag = message[0] if isinstance(message, tuple) and message else None
        if tag == "register":
            self._on_register(conn, message, reply)
        elif tag == "seeded":
            _, shard, name = message
            state = self._shards[shard]
            if state.seeding == name and name in self._members:
                state.seeding = None
                self._reconfigure(shard, chain=(name,))
            if reply is not None:
                reply.send("ok")
        elif tag == "promote":
            _, shard, name, _epoch = message
            cfg = self._shards[shard].config
            if cfg.learner == name and name in self._members:
                self._reconfigure(shard, chain=(*cfg.chain, name), learner=None)
        elif tag == "suspect":
            # A replica's probe of its successor timed out: cut the successor out (if
            # the reporter were the broken one, its own heartbeat would fail too).
            _, shard, name, reporter = message
            member = self._members.get(name)
            if (member is not None and member.shard == shard and reporter in self._members
                    and self._shards[shard].config.successor(reporter) == name):
                self.suspects += 1
                self._declare_dead(member, f"suspected by {reporter}")
        elif tag == "hello":
            self._clients.add(conn)
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_client, conn)
            reply.send(self.layout())
        elif tag == "layout":
            reply.send(self.layout())
        elif tag == "watch":
            self._held.hold(conn, reply)  # never answered: fails at the replica when we die
        elif tag == "stats":
            reply.send(self.statistics())
        elif reply is not None:
            reply.fail(ValueError(f"GCS coordinator: unknown request {message!r:.200}"))

    def _on_register(self, conn: Any, message: Any, reply: Any) -> None:
        _, shard, name, address, pid = message
        if not isinstance(shard, int) or not 0 <= shard < len(self._shards):
            reply.fail(ValueError(f"GCS coordinator: no shard {shard!r}"))
            return
        member = _Member(name=name, shard=shard, address=address, pid=pid, conn=conn)
        self._members[name] = member
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_replica, member)
        state = self._shards[shard]
        if not state.config.chain and state.seeding is None and state.config.learner is None:
            state.seeding = name
            reply.send("seed")
        else:
            state.joiners.append(name)
            reply.send("join")
            self._advance(shard)

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
    ) -> None:
        state = self._shards[shard]
        old = state.config
        new_chain = old.chain if chain is None else chain
        new_learner = old.learner if learner is _UNCHANGED else cast("str | None", learner)
        names = [*new_chain, *([new_learner] if new_learner else [])]
        state.config = cfg = ChainConfig(
            shard=shard,
            epoch=old.epoch + 1,
            chain=new_chain,
            addresses={n: self._members[n].address for n in names},
            learner=new_learner,
        )
        for name in names:
            self._push(self._members[name].conn, ("config", cfg))
        layout = self.layout()
        for client in list(self._clients):
            self._push(client, ("layout", layout))
        self._changed.set()
        self._changed = trio.Event()
        if new_learner is None:
            self._advance(shard)

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
                    await member.conn.request(("watch",), timeout=None)
            except transport.TransportError as exc:
                reason[0] = f"link lost: {type(exc).__name__}"
            nursery.cancel_scope.cancel()

        async def ping() -> None:
            while True:
                await trio.sleep(self.config.heartbeat_interval)
                try:
                    await member.conn.request(("ping",),
                                              timeout=self.config.heartbeat_timeout)
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
                await conn.request(("watch",), timeout=None)
        except transport.TransportError:
            pass
        self._clients.discard(conn)

    def _declare_dead(self, member: _Member, reason: str) -> None:
        if member.dead or self._members.get(member.name) is not member:
            return
        member.dead = True
        self.removals.append((member.name, reason))
        del self._members[member.name]
        self.removed_total += 1
        state = self._shards[member.shard]
        state.joiners = deque(n for n in state.joiners if n != member.name)
        self._push(member.conn, ("removed",))
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
                    self._push(self._members[name].conn, ("removed",))


async def _close(conn: Any) -> None:
    with trio.move_on_after(1.0):
        try:
            await conn.aclose()
        except transport.TransportError:
            pass
