"""`ChainLinks`: a replica's links to its neighbours in the chain.

The part of `Replica` (`_replica.py`, where the protocol is described) that moves
updates along the chain:

* downstream: `_forwarder` keeps a link to the successor (the next chain member, or
  the learner behind the tail): it dials it, asks in ``sync`` how far it got, then
  streams every later update from the log (``fw``), or first a snapshot (``snap``)
  if the successor is further behind than the log reaches -- state transfer and
  chain repair are this one code path. `_forward_now` is the fast path that streams
  a just-applied batch without a task switch. `_probe_successor` reports a
  successor that stops answering to the coordinator.
* upstream: `_on_sync` accepts the predecessor its config names; `_send_ack` (and
  `_acker`, for a new upstream link) acknowledge committed updates to it.

A mixin of `Replica`: the state it uses is the replica's own, declared below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

import transport

from ._config import GcsConfig
from ._durable import ShardLog
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._protocol import ChainConfig
from ._state import ShardState, Update
from ._watch import aclose_quietly, answer

__all__ = ["ChainLinks"]

_FORWARD_BATCH = 2000
_DIRECT_LIMIT = 1 << 20


class ChainLinks:
    """Forwarding to the successor and acknowledging to the predecessor (a mixin)."""

    # The replica's state these methods use (set by `Replica.__init__`).
    config: GcsConfig
    shard: int
    token: bytes
    name: str
    state: ShardState
    chain: ChainConfig
    log: ShardLog | None
    _stats: dict[str, int]
    _changed: trio.Event
    _wake: trio.Event
    _upstream: Any
    _handoff_mark: int | None
    _next_fw: int | None
    _has_successor: bool
    _ack_to: Any
    _ack_sent: int

    if TYPE_CHECKING:
        def _notify(self) -> None: ...
        def _commit(self, seq: int) -> None: ...
        def _tell_coordinator(self, message: Any) -> None: ...

    def _wake_background(self) -> None:
        """Wake the forwarder and the acker: config, link or backlog changed.

        (Not on every applied update: the fast paths in `_forward_now` and
        `_send_ack` handle those without a task switch.)
        """
        self._wake.set()
        self._wake = trio.Event()

    async def _wait_wake(self, timeout: float) -> None:  # noqa: ASYNC109
        with trio.move_on_after(timeout):
            await self._wake.wait()

    def _forward_now(self, new: list[Update]) -> None:
        """Fast path: stream a just-applied batch to the successor from this task.

        Only while the forwarder is streaming (``_next_fw`` set) and this batch is
        exactly the next one it would send; otherwise the forwarder task sends it
        (after a snapshot, a resync, or when the link is backed up). Both paths
        enqueue synchronously and advance ``_next_fw`` together, so the stream stays
        in order without a task switch per hop.
        """
        conn = self._downstream
        if self._next_fw != new[0][0] or conn is None:
            if self._has_successor:
                self._wake_background()
            return
        try:
            if conn.statistics().queued_bytes > _DIRECT_LIMIT:
                self._wake_background()
                return
            conn.send_nowait(("fw", new))
        except transport.TransportError:
            self._wake_background()
            return
        self._next_fw = new[-1][0] + 1

    def _send_ack(self) -> None:
        """Send the cumulative ack upstream if it grew (from the committing task)."""
        upstream = self._upstream
        if upstream is None or self.name == self.chain.learner:
            return
        if upstream is not self._ack_to:
            self._ack_to, self._ack_sent = upstream, 0
        acked = self.state.acked
        if acked > self._ack_sent:
            try:
                upstream.send_nowait(("ack", acked))
            except transport.TransportError:
                if self._upstream is upstream:
                    self._upstream = None
                return
            self._ack_sent = acked

    async def _acker(self) -> None:
        """Acks normally go out from `_commit`; this catches the other changes (a new
        upstream link, a learner promoted to tail) that need one resent."""
        while True:
            self._send_ack()
            await self._wait_wake(1.0)

    async def _on_sync(self, conn: Any, message: Any, reply: Any) -> None:
        _, sender, epoch, *history = message
        with trio.move_on_after(2.0):
            while self.chain.epoch < epoch:
                await self._changed.wait()
        if self.chain.predecessor(self.name) != sender:
            await answer(reply, ("no", self.chain.epoch))
            return
        self._upstream = conn
        if history and history[0] != self.state.history:
            self.state.history = history[0]  # what it streams is of its history
            if self.log is not None:
                self.log.start(self.state)  # the log's snapshot names the history
        self._notify()
        self._wake_background()
        await answer(reply, ("ok", self.state.applied))

    async def _on_downstream(self, conn: Any, message: Any, reply: Any) -> None:
        if message[0] == "ack" and conn is self._downstream:
            self._commit(message[1])

    _downstream: Any = None

    async def _forwarder(self) -> None:
        failing: tuple[str, float] | None = None  # (successor, since when)
        while True:
            cfg = self.chain
            succ = cfg.successor(self.name)
            if succ is None:
                await self._wait_wake(1.0)
                continue
            try:
                await self._forward_to(cfg, succ)
            except (transport.TransportError, OSError):
                # Cannot even reach it: a process death is reported to the coordinator
                # by the kernel closing its sockets, a partition is not -- report it
                # ourselves once it has lasted a heartbeat timeout.
                now = trio.current_time()
                if failing is None or failing[0] != succ:
                    failing = (succ, now)
                elif now - failing[1] > self.config.heartbeat_timeout:
                    failing = (succ, now)
                    self._stats["suspects_reported"] += 1
                    self._tell_coordinator(("suspect", self.shard, succ, self.name))
            else:
                failing = None
            if self.chain is cfg:
                await self._wait_wake(0.05)  # link broke, same config: retry shortly

    async def _forward_to(self, cfg: ChainConfig, succ: str) -> None:
        conn = await transport.connect(cfg.addresses[succ], self.token,
                                       name=f"gcs/{self.name}", handler=self._on_downstream)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe_successor, conn, succ, nursery.cancel_scope)
                try:
                    await self._stream_to(cfg, succ, conn)
                except (transport.TransportError, OSError):
                    pass  # (caught here: out of the nursery it would be a group)
                nursery.cancel_scope.cancel()
        finally:
            if self._downstream is conn:
                self._downstream = None
                self._next_fw = None
            await aclose_quietly(conn)

    async def _probe_successor(self, conn: Any, succ: str, scope: trio.CancelScope) -> None:
        """Ping the successor over our link; if it stops answering (a partition, a
        hung peer) tell the coordinator, which decides, and drop the link.

        The probe is per link, so only the replica next to a broken link reports it
        (a failure further down merely stalls acks, which is not reported).
        """
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            try:
                await conn.request(("ping",), timeout=self.config.heartbeat_timeout)
            except transport.RequestTimeout:
                self._stats["suspects_reported"] += 1
                self._tell_coordinator(("suspect", self.shard, succ, self.name))
                scope.cancel()
                return
            except transport.TransportError:
                scope.cancel()
                return

    async def _stream_to(self, cfg: ChainConfig, succ: str, conn: Any) -> None:
        self._downstream, self._next_fw = conn, None
        answer = await conn.request(("sync", self.name, cfg.epoch, self.state.history),
                                    timeout=_RPC_TIMEOUT)
        if answer[0] != "ok":
            with trio.move_on_after(0.5):
                while self.chain is cfg:
                    await self._changed.wait()
            return
        learner = succ == cfg.learner
        if not learner:
            # A (new) member successor may become or be the tail: it serves reads
            # once it applied all we have now, a superset of everything acked.
            self._handoff_mark = None
            conn.send_nowait(("mark", self.state.applied))
        self._next_fw = answer[1] + 1
        asked_epoch = -1
        while self.chain.successor(self.name) == succ and self._downstream is conn:
            if self.chain is not cfg and self.chain.learner != succ:
                learner = False
            if self._handoff_mark is not None and not learner:
                mark, self._handoff_mark = self._handoff_mark, None
                await conn.send(("mark", mark))
                continue
            assert self._next_fw is not None
            updates = self.state.updates_after(self._next_fw - 1, _FORWARD_BATCH)
            if updates is None:
                snap = self.state.snapshot()
                self._stats["snapshots_sent"] += 1
                self._next_fw = snap[0] + 1
                await conn.send(("snap", snap))  # enqueued before any other task runs
                continue
            if updates:
                self._next_fw = updates[-1][0] + 1
                await conn.send(("fw", updates))
                continue
            if learner and asked_epoch != self.chain.epoch:
                # Asked again under every new epoch: a restarted coordinator may
                # never have heard the earlier request.
                asked_epoch = self.chain.epoch
                self._tell_coordinator(("promote", self.shard, succ, cfg.epoch))
            await self._wait_wake(1.0)
