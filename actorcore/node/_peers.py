"""Links between nodes: one outgoing TCP connection per peer node, dialled on use.

Nodes share nothing but TCP (no files, sockets or shared memory of another node).
Everything one node asks of another — run a task, take its results, locate or pull
an object, show its tree — goes over the link this module keeps to that node:

- ``send(node_id, message)`` queues a one-way message; messages to one node leave in
  the order they were queued, over one connection, those queued together in one
  frame (a `PeerBatch`, served in order by the receiving node);
- ``await request(node_id, message)`` waits for the peer's answer.

A link is dialled at first use, to the TCP address the node registered in the GCS
(the `ClusterView`), and announces itself with ``Hello("node", ...)``. A link
that fails is dialled again while the view says the peer lives; once the peer is
declared dead the link is dropped, and what was queued for it is discarded (the
node's death listeners redo that work elsewhere: a lost message to a dead node is
never the only record of anything). A node our view does not know yet is not
refused: it joined after our last refresh of the view, and may already have sent
us work whose results must go back to it. Its link waits for the view to learn
its address, for up to ``node_timeout()`` seconds, and is dropped (with what was
queued, logged) if it never appears. The connections and their sender tasks run in
the ``node_links`` component; the queues live here, in state the node owns, so a
restart of that component re-dials and carries on with what was queued.

Delivery survives a broken connection (a reset, a partition that heals, a crash of
``node_links``): every frame of one-way messages is numbered per link,
`PeerBatch(messages, sender, seq)`, and kept until the peer acknowledges it
(`PeerAck(receiver, seq)`, sent back on the same connection once the batch is
handled). The receiver remembers the last number it handled from each node and
returns it in its answer to the hello; on a new connection the sender drops what
that covers and sends the rest again, in order, then carries on. A frame that
arrived just before the link broke (its ack lost) thus comes twice; the receiver
skips a number it has handled. A connection that closes while batches wait for
their acknowledgement wakes its sender, which dials again at once: a batch that
left in full can still die with its connection (a reset discards what the peer had
not read), and nothing else may come to send. So the peer handles each batch
exactly once, in order, whatever happens to the connections, while both nodes live.

Requests (`FetchFromOwner`, `PayloadChunk`, `OwnsPrefix`, ...) are all idempotent reads or
reservations keyed by id: one whose connection breaks is sent again on the next
connection, until it is answered, the peer dies, or its timeout passes.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import attrs
import trio

import transport

from ..protocol._messages import max_frame_size
from ..protocol._wire import Hello, HelloInfo, PeerBatch
from .gcs_client._membership import ClusterView, node_timeout

__all__ = ["NodeLinks", "NodePeers", "PeerUnavailable"]

logger = logging.getLogger("actorcore.peers")

#: Seconds between dials of a peer that does not answer (while it is alive).
REDIAL = 0.2

#: One-way messages sent together at most (as one `PeerBatch`).
BATCH = 256


class PeerUnavailable(ConnectionError):
    """The node asked for is not a live member of the cluster, or cannot be reached."""


@attrs.define(eq=False)
class _Link:
    node_id: str
    send: Any  # trio.MemorySendChannel
    receive: Any  # trio.MemoryReceiveChannel
    conn: Any = None
    connected: trio.Event = attrs.Factory(trio.Event)
    closed: bool = False
    running: bool = False  # a sender task serves it now
    # Numbered batches taken from the queue and not yet acknowledged by the peer:
    # (seq, messages), in order. A crash of ``node_links`` or a lost link leaves
    # them here; the next connection sends again those the peer has not handled.
    unacked: collections.deque = attrs.Factory(collections.deque)
    seq: int = 0
    # The numbered batches the current connection has not been sent yet (resends
    # first, after a dial); None: send from the queue.
    backlog: collections.deque | None = None
    dials: int = 0
    sent: int = 0
    resent: int = 0
    # Until when a peer our view does not know yet is waited for (`_dial`).
    unknown_until: float = 0.0


@attrs.frozen(kw_only=True)
class PeersStatistics:
    """Figures of a node's links to other nodes (``NodePeers.statistics()``)."""

    links: int
    connected: int
    dials: int
    sent: int
    #: batches sent again on a new connection (the old one broke before the ack)
    resent: int
    #: batches sent twice that the receiving side skipped
    duplicates: int
    #: messages waiting for the peer's acknowledgement
    unacked: int
    dropped: int


class NodePeers:
    """This node's links to the other nodes (see the module docstring).

    Args:
      view: the cluster view (addresses, liveness). token: the cluster token.
      node_hex: this node's id. handler: serves what a peer sends back on a link.
    """

    def __init__(self, view: ClusterView, token: bytes, node_hex: str,
                 handler: Callable[..., Any]) -> None:
        self.view = view
        self._token = token
        self._node_hex = node_hex
        self._handler = handler
        self._links: dict[str, _Link] = {}
        self._nursery: trio.Nursery | None = None
        self.dropped = 0
        #: the last batch number handled from each node (receiving side)
        self.handled: dict[str, int] = {}
        self.duplicates = 0
        # The last batch number of each node's link, kept when a link is dropped: a
        # link made again (a node wrongly declared dead, then back) goes on counting,
        # or its peer would skip what it numbers again from 1.
        self._last_seq: dict[str, int] = {}
        view.on_node_dead(self._node_dead)

    # -- what the node's components use --------------------------------------------

    def send(self, node_id: str, message: Any) -> None:
        """Queue ``message`` for ``node_id`` (in order); `PeerUnavailable` if that
        node is not a live member."""
        self._link(node_id).send.send_nowait(message)

    async def request(self, node_id: str, message: Any, timeout: float | None = 30.0) -> Any:  # noqa: ASYNC109
        """``message`` to ``node_id``, and its answer (the peer's error re-raised).

        A request whose connection breaks is sent again on the next one (every
        request between nodes is idempotent), until the peer answers, dies
        (`PeerUnavailable`) or ``timeout`` passes (`trio.TooSlowError`)."""
        link = self._link(node_id, unknown_waits=False)
        with trio.fail_after(timeout if timeout is not None else math.inf):
            while True:
                if link.closed:
                    raise PeerUnavailable(f"node {node_id[:12]} left the cluster")
                conn = link.conn
                if conn is None or conn.closed:
                    self._wake(link)
                    if link.connected.is_set():  # still the old link's: its sender redials
                        await trio.sleep(REDIAL / 10)
                    else:
                        await link.connected.wait()
                    continue
                try:
                    return await conn.request(message)
                except transport.ConnectionLost as exc:
                    logger.info("a %s request to node %s lost its link (%s); sending it "
                                "again", _kind(message), node_id[:12], exc)

    def handled_batch(self, sender: str, seq: int) -> bool:
        """Receiving side: whether ``sender``'s batch ``seq`` is new (handle it) or
        one already handled (sent again after a broken link: skip it)."""
        if seq <= self.handled.get(sender, 0):
            self.duplicates += 1
            return False
        self.handled[sender] = seq
        return True

    def acked(self, node_id: str, seq: int) -> None:
        """``node_id`` handled our batches up to ``seq``: forget them."""
        link = self._links.get(node_id)
        if link is None:
            return
        unacked = link.unacked
        while unacked and unacked[0][0] <= seq:
            unacked.popleft()

    def _node_dead(self, status: Any) -> None:
        self.handled.pop(status.node_id, None)
        self.drop(status.node_id)

    def drop(self, node_id: str) -> int:
        """Forget ``node_id``'s link (it died or left); queued messages are discarded.
        Returns how many."""
        link = self._links.pop(node_id, None)
        if link is None:
            return 0
        link.closed = True
        self._last_seq[node_id] = link.seq
        link.connected.set()  # wake requests: they see ``closed``
        dropped = sum(len(batch) for _seq, batch in link.unacked)
        link.unacked.clear()
        link.backlog = None
        try:
            while True:
                if link.receive.receive_nowait() is not _WAKE:
                    dropped += 1
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            pass
        link.send.close()
        if link.conn is not None:
            _close_soon(link.conn)
        self.dropped += dropped
        return dropped

    def describe(self) -> dict:
        """Each link as it stands (the admin call ``links``, for a test that waited
        in vain): its numbering, what waits for an acknowledgement or to be sent,
        its connection's figures; and what was handled from each node here."""
        links = {}
        for nid, link in self._links.items():
            conn = link.conn
            links[nid] = {
                "seq": link.seq,
                "unacked": [seq for seq, _batch in link.unacked],
                "backlog": len(link.backlog or ()),
                "queued": link.receive.statistics().current_buffer_used,
                "running": link.running,
                "dials": link.dials,
                "connection": None if conn is None else attrs.asdict(conn.statistics()),
            }
        return {"links": links, "handled": dict(self.handled)}

    def connected_to(self) -> list[str]:
        return [nid for nid, link in self._links.items()
                if link.conn is not None and not link.conn.closed]

    def statistics(self) -> PeersStatistics:
        return PeersStatistics(
            links=len(self._links),
            connected=len(self.connected_to()),
            dials=sum(link.dials for link in self._links.values()),
            sent=sum(link.sent for link in self._links.values()),
            resent=sum(link.resent for link in self._links.values()),
            duplicates=self.duplicates,
            unacked=sum(len(b) for link in self._links.values() for _s, b in link.unacked),
            dropped=self.dropped,
        )

    # -- internals -----------------------------------------------------------------

    def _link(self, node_id: str, unknown_waits: bool = True) -> _Link:
        """``node_id``'s link, made on first use. ``unknown_waits``: a node our view
        does not know yet gets a link that waits for it (one-way messages: see the
        module docstring); else `PeerUnavailable` at once (a request, which a caller
        rather sends to another node than wait for one that may not exist)."""
        link = self._links.get(node_id)
        if link is not None:
            return link
        if node_id == self._node_hex:
            raise PeerUnavailable("a node does not link to itself")
        status = self.view.get(node_id)
        if status is None and not unknown_waits:
            raise PeerUnavailable(f"node {node_id[:12]} is not a member of the cluster")
        if status is not None and not status.alive:
            raise PeerUnavailable(f"node {node_id[:12]} is dead ({status.death_reason})")
        if status is not None and status.address is None:
            raise PeerUnavailable(f"node {node_id[:12]} has no TCP address")
        # (Unknown to our view: waited for, see the module docstring.)
        send, receive = trio.open_memory_channel[Any](math.inf)
        link = self._links[node_id] = _Link(node_id, send, receive,
                                            seq=self._last_seq.get(node_id, 0),
                                            unknown_until=trio.current_time() + node_timeout())
        if self._nursery is not None:
            self._start(link)
        return link

    def _start(self, link: _Link) -> None:
        assert self._nursery is not None
        link.running = True
        self._nursery.start_soon(self._serve, link)

    def _wake(self, link: _Link) -> None:
        """Make ``link``'s sender look at its connection (it waits for messages)."""
        if not link.closed:
            try:
                link.send.send_nowait(_WAKE)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass

    async def _serve(self, link: _Link) -> None:
        try:
            while not link.closed:
                conn = link.conn
                if conn is None or conn.closed:
                    conn = await self._dial(link)
                    if conn is None:
                        return
                if not link.backlog:
                    link.backlog = None
                    try:
                        message = await link.receive.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return
                    # Whatever else is queued goes in the same frame (one wake-up of
                    # the peer for a burst of forwards or results, not one per message).
                    batch = [] if message is _WAKE else [message]
                    while len(batch) < BATCH:
                        try:
                            more = link.receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                            break
                        if more is not _WAKE:
                            batch.append(more)
                    if not batch:
                        continue
                    self._number(link, batch)
                try:
                    # (The transport queues a frame or raises before queueing: what a
                    # cancel or a lost link leaves in ``backlog`` was not sent; what
                    # left and was lost with the link is still in ``unacked``.)
                    await self._send_backlog(link, conn)
                except transport.TransportError as exc:
                    logger.warning("link to node %s lost: %s; dialling again to send the "
                                   "%d batch(es) it has not acknowledged", link.node_id[:12],
                                   exc, len(link.unacked))
        finally:
            link.running = False

    def _number(self, link: _Link, batch: list) -> None:
        link.seq += 1
        entry = (link.seq, batch)
        link.unacked.append(entry)
        if link.backlog is None:
            link.backlog = collections.deque()
        link.backlog.append(entry)

    async def _send_backlog(self, link: _Link, conn: Any) -> None:
        """Send ``link.backlog`` in order, one frame per numbered batch. A batch over
        the peer's frame limit is split into numbered batches of one message (a
        single message over it is dropped, logged: it never fits)."""
        backlog = link.backlog
        assert backlog is not None
        me = self._node_hex
        while backlog:
            seq, batch = backlog[0]
            try:
                await conn.send(PeerBatch(batch, me, seq))
            except transport.FrameTooLarge:
                link.unacked.remove(backlog.popleft())
                if len(batch) == 1:
                    logger.error("a %s message to node %s is over its frame limit: dropped",
                                 _kind(batch[0]), link.node_id[:12])
                    self.dropped += 1
                    continue
                singles: collections.deque = collections.deque()
                for message in batch:
                    link.seq += 1
                    link.unacked.append((link.seq, [message]))
                    singles.append(link.unacked[-1])
                singles.extend(backlog)
                link.backlog = backlog = singles
                continue
            except transport.TransportError:
                raise
            except Exception as exc:
                # They cannot be encoded (a bug of their sender): dropped, or they
                # would crash every sender that takes them again.
                logger.error("%d message(s) to node %s (first %s) cannot be sent, "
                             "dropped: %s: %s", len(batch), link.node_id[:12],
                             _kind(batch[0]), type(exc).__name__, exc)
                self.dropped += len(batch)
                link.unacked.remove(backlog.popleft())
                continue
            backlog.popleft()
            link.sent += len(batch)

    async def _dial(self, link: _Link) -> Any:
        """Connect to ``link``'s node (again), until it works or the node is gone."""
        link.connected = trio.Event() if link.connected.is_set() else link.connected
        while not link.closed:
            status = self.view.get(link.node_id)
            if status is None and (left := link.unknown_until - trio.current_time()) > 0:
                # A node that joined after our last look at the cluster: wait for the
                # view to learn its address (see the module docstring).
                with trio.move_on_after(left):
                    await self.view.changed.wait()
                continue
            if status is None or not status.alive or status.address is None:
                dropped = self.drop(link.node_id)
                if status is None:
                    logger.warning("node %s never appeared in the cluster view: dropped "
                                   "the %d message(s) queued for it", link.node_id[:12],
                                   dropped)
                return None
            link.dials += 1
            try:
                conn = await transport.connect(
                    status.address, self._token, name=f"node-{self._node_hex[:8]}",
                    handler=self._handler, max_frame_size=max_frame_size(),
                    connect_timeout=5.0,
                )
                hello = await conn.request(Hello("node", None, os.getpid(),
                                                 HelloInfo(node_id=self._node_hex)), timeout=10.0)
            except (transport.TransportError, OSError, trio.TooSlowError) as exc:
                logger.info("dialling node %s at %s failed: %s", link.node_id[:12],
                            status.address, exc)
                await trio.sleep(REDIAL)
                continue
            # Resume: the peer handled our batches up to ``handled``; the rest go
            # again, in order, before anything new.
            handled = hello.peer_handled
            self.acked(link.node_id, handled)
            resend = collections.deque(entry for entry in link.unacked if entry[0] > handled)
            link.resent += len(resend) - len(link.backlog or ())
            link.backlog = resend or None
            link.conn = conn
            link.connected.set()
            if self._nursery is not None:
                self._nursery.start_soon(self._watch, link, conn)
            return conn
        return None

    async def _watch(self, link: _Link, conn: Any) -> None:
        """Wake ``link``'s sender when ``conn`` closes with batches unacknowledged.

        A batch that left in full can still be lost with its connection (a reset
        discards what the peer had not read yet); the sender would only see the
        closed connection at its next message, and with none coming the batch would
        wait for ever. Woken, it dials again at once and sends it again."""
        await conn.wait_closed()
        if link.conn is conn and link.unacked:
            self._wake(link)

    def _attach(self, nursery: trio.Nursery | None) -> None:
        self._nursery = nursery
        if nursery is None:
            for link in self._links.values():
                link.running = False
                if link.conn is not None:
                    _close_soon(link.conn)
                    link.conn = None
                link.connected = trio.Event()
            return
        for link in self._links.values():
            if not link.running:
                self._start(link)


#: Wakes a link's sender (a request saw its connection closed).
_WAKE = object()


def _kind(message: Any) -> str:
    return type(message).__name__


def _close_soon(conn: Any) -> None:
    async def close() -> None:
        try:
            await conn.aclose(flush_timeout=1.0)
        except Exception as exc:
            logger.debug("closing a peer link: %r", exc)

    try:
        trio.lowlevel.spawn_system_task(close)
    except RuntimeError:
        pass


class NodeLinks:
    """The ``node_links`` component: runs the links of `NodePeers` (its sender tasks
    and connections). A crash closes them; the restarted component dials again and
    sends what was still queued."""

    def __init__(self, peers: NodePeers) -> None:
        self.peers = peers

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.peers._attach(nursery)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.peers._attach(None)

    def snapshot(self) -> dict:
        st = self.peers.statistics()
        return {"kind": "node_links", "links": st.links, "connected": st.connected,
                "dials": st.dials, "resent": st.resent, "duplicates": st.duplicates,
                "unacked": st.unacked}
