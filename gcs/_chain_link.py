"""`ChainLink`: a replica's links to its neighbours in the chain.

The part of a replica (`_replica.py`, where the protocol is described) that moves
updates along the chain. It owns the links and everything about them -- which
connection is the accepted upstream, which is the downstream it streams to, how far
it streamed, the pending hand-off mark, what it last acknowledged -- and asks its
replica, through the narrow `ChainHost` interface, only for the chain config, the
shard state, and to commit what the tail acknowledged.

* downstream: `run_forwarder` keeps a link to the successor (the next chain
  member, or the learner behind the tail): it dials it, asks in `Sync` how far it
  got, then streams every later update from the log (`Forward`), or first a
  snapshot (`Transfer`) if the successor is further behind than the log reaches --
  state transfer and chain repair are this one code path. `forward_now` is the
  fast path that streams a just-applied batch without a task switch. A probe
  reports a successor that stops answering to the coordinator.
* upstream: `on_sync` accepts the predecessor its config names (only then does the
  replica take `Forward`, `Transfer` and `Handoff` from that connection: see
  `is_upstream`); `send_ack` (and `run_acker`, for a new upstream link)
  acknowledge committed updates to it.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

import transport

from ._config import GcsConfig
from ._messages import (
    Ack,
    ChainConfig,
    Handoff,
    InSync,
    OutOfSync,
    Ping,
    Promote,
    Suspect,
    Sync,
    Transfer,
)
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._state import ShardState, Update, forward_of, updates_of
from ._watch import aclose_quietly, answer

__all__ = ["ChainHost", "ChainLink", "ChainLinkStatistics"]

_FORWARD_BATCH = 2000
_DIRECT_LIMIT = 1 << 20
#: Entries (table rows, collectable marks, dedup records) per `Transfer` part: a
#: few ms to pickle on a loaded machine.
_TRANSFER_PART = 2000


class ChainHost(Protocol):
    """What a `ChainLink` needs of its replica."""

    @property
    def name(self) -> str: ...

    @property
    def shard(self) -> int: ...

    @property
    def chain(self) -> ChainConfig:
        """The config the replica obeys now."""

    @property
    def state(self) -> ShardState: ...

    async def wait_changed(self) -> None:
        """Return at the replica's next change (config, applied, readable)."""

    def notify(self) -> None:
        """Wake whoever waits for a change of the replica (`wait_changed`)."""

    def commit(self, seq: int) -> None:
        """The tail acknowledged everything up to ``seq``."""

    def apply_batch(self, updates: list[Update]) -> None:
        """Apply consecutive updates from the accepted predecessor (those already
        applied are skipped), as a `Forward` of theirs would."""

    def adopt_history(self, history: str) -> None:
        """The accepted predecessor streams of ``history``: it is the shard's now."""

    def tell_coordinator(self, message: Any) -> None:
        """A one-way notice to the coordinator (lost while it is down)."""


@attrs.frozen(kw_only=True)
class ChainLinkStatistics:
    """snapshots_sent: state transfers to a successor; suspects_reported: successors
    reported to the coordinator as unresponsive; standby_links_taken: new successors
    streamed to over a link dialled ahead (see `run_standby`); backlogs_applied:
    predecessors' `Sync` backlogs applied on acceptance."""

    snapshots_sent: int
    suspects_reported: int
    standby_links_taken: int
    backlogs_applied: int
    #: The replica the standby link goes to, while one is open.
    standby_link: str | None


class ChainLink:
    """Forwarding to the successor and acknowledging to the predecessor."""

    def __init__(self, host: ChainHost, config: GcsConfig, token: bytes) -> None:
        self._host = host
        self._config = config
        self._token = token
        self._synced = False  # the current downstream link answered our Sync
        self._wake = trio.Event()
        self._upstream: Any = None  # the accepted predecessor's connection
        self._downstream: Any = None  # our link to the successor, while streaming
        self._next_fw: int | None = None  # the next update the stream sends
        self._handoff_mark: int | None = None  # to send down once a member follows
        self._has_successor = False
        self._ack_to: Any = None
        # (name, link): dialled ahead to the replica that becomes our successor if
        # the successor dies (see `run_standby`).
        self._standby: tuple[str, Any] | None = None
        self._ack_sent = 0
        self._snapshots_sent = 0
        self._suspects_reported = 0
        self._standby_links_taken = 0
        self._backlogs_applied = 0
        # What the successor may send back on the link we dialed.
        self._routes = transport.Dispatcher(f"gcs/{host.name} downstream link")
        self._routes.register(Ack, self._on_ack, oneway=True)

    def statistics(self) -> ChainLinkStatistics:
        return ChainLinkStatistics(snapshots_sent=self._snapshots_sent,
                                   suspects_reported=self._suspects_reported,
                                   standby_links_taken=self._standby_links_taken,
                                   backlogs_applied=self._backlogs_applied,
                                   standby_link=(self._standby[0]
                                                 if self._standby is not None else None))

    # ------------------------------------------------------------ the replica's calls

    def reconfigured(self, cfg: ChainConfig, *, handoff: bool) -> None:
        """The replica obeys ``cfg`` now; ``handoff``: it stopped being the tail, so
        the next member successor serves reads only after all it applied."""
        self._has_successor = cfg.successor(self._host.name) is not None
        if handoff:
            self._handoff_mark = self._host.state.applied
        self._wake_background()

    def is_upstream(self, conn: Any) -> bool:
        """``conn`` is the accepted predecessor's: its updates may be applied."""
        return conn is self._upstream

    def drop_upstream(self) -> None:
        """A gap in what the predecessor sent: forget its link (it resyncs)."""
        self._upstream = None

    def _wake_background(self) -> None:
        """Wake the forwarder and the acker: config, link or backlog changed.

        (Not on every applied update: the fast paths in `forward_now` and
        `send_ack` handle those without a task switch.)
        """
        self._wake.set()
        self._wake = trio.Event()

    async def _wait_wake(self, timeout: float) -> None:  # noqa: ASYNC109
        with trio.move_on_after(timeout):
            await self._wake.wait()

    def forward_now(self, new: list[Update]) -> None:
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
            conn.send_nowait(forward_of(new))
        except transport.TransportError:
            self._wake_background()
            return
        self._next_fw = new[-1][0] + 1
        state = self._host.state
        if state.held_from is not None:
            state.hold_log(self._next_fw)

    def send_ack(self) -> None:
        """Send the cumulative ack upstream if it grew (from the committing task)."""
        upstream = self._upstream
        host = self._host
        if upstream is None or host.name == host.chain.learner:
            return
        if upstream is not self._ack_to:
            self._ack_to, self._ack_sent = upstream, 0
        acked = host.state.acked
        if acked > self._ack_sent:
            try:
                upstream.send_nowait(Ack(acked))
            except transport.TransportError:
                if self._upstream is upstream:
                    self._upstream = None
                return
            self._ack_sent = acked

    async def run_acker(self) -> None:
        """Acks normally go out from the replica's commit; this catches the other
        changes (a new upstream link, a learner promoted to tail) that need one resent."""
        while True:
            self.send_ack()
            await self._wait_wake(1.0)

    # ------------------------------------------------------------------ upstream

    async def on_sync(self, conn: Any, message: Sync, reply: Any) -> None:
        """A predecessor's first message on its link: accept it if our config names
        it (waiting briefly for a newer config if its epoch is ahead of ours)."""
        host = self._host
        with trio.move_on_after(2.0):
            while host.chain.epoch < message.epoch:
                await host.wait_changed()
        if host.chain.predecessor(host.name) != message.sender:
            await answer(reply, OutOfSync(host.chain.epoch))
            return
        self._upstream = conn
        backlog = message.backlog
        if message.history != host.state.history:
            host.adopt_history(message.history)  # what it streams is of its history
        elif backlog is not None and backlog.seqs and backlog.seqs[0] <= host.state.applied + 1:
            host.apply_batch(updates_of(backlog))
            self._backlogs_applied += 1
        host.notify()
        self._wake_background()
        await answer(reply, InSync(host.state.applied))

    def _on_ack(self, conn: Any, message: Ack) -> None:
        if conn is self._downstream:
            self._host.commit(message.seq)

    # ---------------------------------------------------------------- downstream

    async def run_forwarder(self) -> None:
        host = self._host
        failing: tuple[str, float] | None = None  # (successor, since when)
        while True:
            cfg = host.chain
            succ = cfg.successor(host.name)
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
                elif now - failing[1] > self._config.heartbeat_timeout:
                    failing = (succ, now)
                    self._suspect(succ)
            else:
                failing = None
            if host.chain is cfg:
                await self._wait_wake(0.05)  # link broke, same config: retry shortly

    async def run_standby(self) -> None:
        """Keep a link dialled to our successor's successor, the replica that becomes
        our successor when the successor dies (the head's to the tail in a chain of
        three); `_forward_to` takes it instead of dialling.

        A middle replica's death used to stall the chain for a dial from its
        predecessor to its successor after the coordinator's new config arrived:
        TCP connect and the token handshake, two round trips between two busy
        processes, before the `Sync` could even go out. The standby link is dialled
        while the chain is healthy, so the repair starts with the `Sync`. It carries
        nothing until it is taken (the successor accepts only a `Sync` from the
        predecessor its own config names, so holding it open grants nothing). A
        link to a replica that is no longer the one, or that broke, is closed and
        the right one dialled; a failed dial waits for the next change (or a second).
        """
        host = self._host
        while True:
            cfg = host.chain
            succ = cfg.successor(host.name)
            target = cfg.successor(succ) if succ is not None else None
            held = self._standby
            # (One to our successor itself is the forwarder's to take: the new
            # config that made it our successor woke us both.)
            if (held is not None and (held[0] != target or held[1].closed)
                    and not (held[0] == succ and not held[1].closed)):
                self._standby = None
                await aclose_quietly(held[1])
                continue
            if target is not None and self._standby is None:
                try:
                    conn = await transport.connect(
                        cfg.addresses[target], self._token, name=f"gcs/{host.name}",
                        handler=self._routes, connect_timeout=2.0)
                except (transport.TransportError, OSError):
                    pass
                else:
                    self._standby = (target, conn)
                    continue  # the config may have moved on while we dialled
            await self._wait_wake(1.0)

    def _take_standby(self, succ: str) -> Any:
        """The standby link if it goes to ``succ`` (and lives), else None."""
        held = self._standby
        if held is None or held[0] != succ or held[1].closed:
            return None
        self._standby = None
        self._standby_links_taken += 1
        self._wake_background()  # the keeper dials the next one
        return held[1]

    def _suspect(self, succ: str) -> None:
        self._suspects_reported += 1
        self._host.tell_coordinator(Suspect(self._host.shard, succ, self._host.name))

    async def _forward_to(self, cfg: ChainConfig, succ: str) -> None:
        conn = self._take_standby(succ)
        if conn is None:
            conn = await transport.connect(cfg.addresses[succ], self._token,
                                           name=f"gcs/{self._host.name}", handler=self._routes)
        # A link that breaks before the successor even answers our Sync is as good
        # as no link (a path that resets every connection): raised, so that
        # ``run_forwarder`` reports it once it has lasted. One that broke after
        # working is a fresh failure: we just dial again.
        self._synced = False
        broke: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe_successor, conn, succ, nursery.cancel_scope)
                try:
                    await self._stream_to(cfg, succ, conn)
                except (transport.TransportError, OSError) as exc:
                    broke = exc  # (caught here: out of the nursery it would be a group)
                nursery.cancel_scope.cancel()
        finally:
            if self._downstream is conn:
                self._downstream = None
                self._next_fw = None
                self._host.state.hold_log(None)
            await aclose_quietly(conn)
        if broke is not None and not self._synced:
            raise broke

    async def _probe_successor(self, conn: Any, succ: str, scope: trio.CancelScope) -> None:
        """Ping the successor over our link; if it stops answering (a partition, a
        hung peer) tell the coordinator, which decides, and drop the link.

        The probe is per link, so only the replica next to a broken link reports it
        (a failure further down merely stalls acks, which is not reported).
        """
        while True:
            await trio.sleep(self._config.heartbeat_interval)
            try:
                await conn.request(Ping(), timeout=self._config.heartbeat_timeout)
            except transport.RequestTimeout:
                self._suspect(succ)
                scope.cancel()
                return
            except transport.TransportError:
                scope.cancel()
                return

    async def _transfer(self, conn: Any) -> None:
        """Send the successor a snapshot, in parts (`Transfer`), and stream on from it.

        Pickling a part happens on our loop, in ``conn.send``; between parts the
        other tasks run (a checkpoint), so as the tail we go on committing and
        acknowledging while a replacement is brought up: a snapshot in one message
        held every commit of the shard for as long as it took to pickle (40-160 ms
        with 22,000-52,000 dedup entries on a loaded machine). The parts are cut
        from one copy taken first, so they make one consistent snapshot at its
        ``applied``, whatever we apply meanwhile; the stream resumes after it.
        """
        # No `forward_now` meanwhile: an update must not overtake the snapshot.
        self._next_fw = None
        state = self._host.state
        # What we apply while the parts go out is streamed after them: the log
        # keeps it (`hold_log`), or the successor would be sent another snapshot.
        state.hold_log(state.applied + 1)
        parts = state.snapshot_parts(_TRANSFER_PART)
        part = next(parts)
        number = 0
        while True:
            following = next(parts, None)
            await conn.send(Transfer(part, number, following is None))
            if following is None:
                break
            await trio.lowlevel.checkpoint()
            part, number = following, number + 1
        self._next_fw = part.applied + 1

    async def _stream_to(self, cfg: ChainConfig, succ: str, conn: Any) -> None:
        host = self._host
        state = host.state
        self._downstream, self._next_fw = conn, None
        # A member successor holds at least what we count as acknowledged (the tail
        # acknowledged it, and every member holds what its successors hold), so
        # what we applied since is what it most likely lacks: it rides in the
        # `Sync` and is applied on acceptance. After a middle replica's death the
        # writes waiting for the tail are then committed and acknowledged right
        # away, without a round trip for `InSync` first. (If it does not follow
        # what the successor has, it is ignored and streamed after `InSync`.)
        backlog = None
        if succ != cfg.learner:
            pending = state.updates_after(state.acked, _FORWARD_BATCH)
            if pending:
                backlog = forward_of(pending)
        answered = await conn.request(Sync(host.name, cfg.epoch, state.history, backlog),
                                      timeout=_RPC_TIMEOUT)
        self._synced = True
        if not isinstance(answered, InSync):
            with trio.move_on_after(0.5):
                while host.chain is cfg:
                    await host.wait_changed()
            return
        learner = succ == cfg.learner
        if not learner:
            # A (new) member successor may become or be the tail: it serves reads
            # once it applied all we have now, a superset of everything acked.
            self._handoff_mark = None
            conn.send_nowait(Handoff(state.applied))
        self._next_fw = answered.applied + 1
        asked_epoch = -1
        while host.chain.successor(host.name) == succ and self._downstream is conn:
            if host.chain is not cfg and host.chain.learner != succ:
                learner = False
            if self._handoff_mark is not None and not learner:
                mark, self._handoff_mark = self._handoff_mark, None
                await conn.send(Handoff(mark))
                continue
            assert self._next_fw is not None
            updates = state.updates_after(self._next_fw - 1, _FORWARD_BATCH)
            if updates is None:
                self._snapshots_sent += 1
                await self._transfer(conn)
                continue
            if updates:
                self._next_fw = updates[-1][0] + 1
                state.hold_log(self._next_fw)  # the rest of the catch-up stays in the log
                await conn.send(forward_of(updates))
                if len(updates) == _FORWARD_BATCH:
                    # Catching a successor up (a learner: up to the whole replay
                    # buffer, 20,000 updates): let the other tasks run between
                    # batches, or as the tail we commit nothing until it is sent
                    # (a `send` yields only once frames pile up; 30-70 ms stalls
                    # were measured on a loaded machine).
                    await trio.lowlevel.checkpoint()
                continue
            state.hold_log(None)  # caught up
            if learner and asked_epoch != host.chain.epoch:
                # Asked again under every new epoch: a restarted coordinator may
                # never have heard the earlier request.
                asked_epoch = host.chain.epoch
                # Sent is not applied: a fresh learner may still have thousands of
                # updates to work through, and as the tail it would hold every
                # commit of the shard until it has (70-130 ms were measured on a
                # loaded machine). Its answer to a ping comes after it applied all
                # we sent before it (one link, handled in order); meanwhile we
                # are still the tail and commit by ourselves.
                await conn.request(Ping(), timeout=_RPC_TIMEOUT)
                host.tell_coordinator(Promote(host.shard, succ, cfg.epoch))
            await self._wait_wake(1.0)
