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
never the only record of anything). The connections and their sender tasks run in
the ``node_links`` component; the queues live here, in state the node owns, so a
restart of that component re-dials and carries on with what was queued.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import attrs
import trio

import transport

from ..protocol._messages import max_frame_size
from ..protocol._wire import Hello, PeerBatch
from .gcs_client._membership import ClusterView

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
    # The messages being sent: taken from the queue but not yet handed to the
    # connection. A crash of ``node_links`` (or a link lost) while they are in
    # hand leaves them here, and the next sender sends them first.
    pending: list | None = None
    dials: int = 0
    sent: int = 0


@attrs.frozen(kw_only=True)
class PeersStatistics:
    """Figures of a node's links to other nodes (``NodePeers.statistics()``)."""

    links: int
    connected: int
    dials: int
    sent: int
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
        view.on_node_dead(lambda status: self.drop(status.node_id))

    # -- what the node's components use --------------------------------------------

    def send(self, node_id: str, message: Any) -> None:
        """Queue ``message`` for ``node_id`` (in order); `PeerUnavailable` if that
        node is not a live member."""
        self._link(node_id).send.send_nowait(message)

    async def request(self, node_id: str, message: Any, timeout: float | None = 30.0) -> Any:  # noqa: ASYNC109
        """``message`` to ``node_id``, and its answer (the peer's error re-raised)."""
        link = self._link(node_id)
        with trio.fail_after(timeout if timeout is not None else math.inf):
            while True:
                await link.connected.wait()
                conn = link.conn
                if conn is not None and not conn.closed:
                    break
                if link.closed:
                    raise PeerUnavailable(f"node {node_id[:12]} left the cluster")
                await trio.sleep(REDIAL)
            return await conn.request(message)

    def drop(self, node_id: str) -> None:
        """Forget ``node_id``'s link (it died or left); queued messages are discarded."""
        link = self._links.pop(node_id, None)
        if link is None:
            return
        link.closed = True
        link.connected.set()  # wake requests: they see ``closed``
        if link.pending:
            self.dropped += len(link.pending)
        link.pending = None
        try:
            while True:
                link.receive.receive_nowait()
                self.dropped += 1
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            pass
        link.send.close()
        if link.conn is not None:
            _close_soon(link.conn)

    def connected_to(self) -> list[str]:
        return [nid for nid, link in self._links.items()
                if link.conn is not None and not link.conn.closed]

    def statistics(self) -> PeersStatistics:
        return PeersStatistics(
            links=len(self._links),
            connected=len(self.connected_to()),
            dials=sum(link.dials for link in self._links.values()),
            sent=sum(link.sent for link in self._links.values()),
            dropped=self.dropped,
        )

    # -- internals -----------------------------------------------------------------

    def _link(self, node_id: str) -> _Link:
        link = self._links.get(node_id)
        if link is not None:
            return link
        status = self.view.get(node_id)
        if status is None or not status.alive:
            why = "is not a member of the cluster" if status is None else \
                f"is dead ({status.death_reason})"
            raise PeerUnavailable(f"node {node_id[:12]} {why}")
        if node_id == self._node_hex:
            raise PeerUnavailable("a node does not link to itself")
        if status.address is None:
            raise PeerUnavailable(f"node {node_id[:12]} has no TCP address")
        send, receive = trio.open_memory_channel[Any](math.inf)
        link = self._links[node_id] = _Link(node_id, send, receive)
        if self._nursery is not None:
            self._start(link)
        return link

    def _start(self, link: _Link) -> None:
        assert self._nursery is not None
        link.running = True
        self._nursery.start_soon(self._serve, link)

    async def _serve(self, link: _Link) -> None:
        try:
            while not link.closed:
                conn = link.conn
                if conn is None or conn.closed:
                    conn = await self._dial(link)
                    if conn is None:
                        return
                if not link.pending:
                    try:
                        message = await link.receive.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return
                    # Whatever else is queued goes in the same frame (one wake-up of
                    # the peer for a burst of forwards or results, not one per message).
                    batch = [message]
                    while len(batch) < BATCH:
                        try:
                            batch.append(link.receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                            break
                    link.pending = batch
                try:
                    # (The transport queues a frame or raises before queueing: what a
                    # cancel or a lost link leaves in ``pending`` was not sent.)
                    await self._send_batch(link, conn, link.pending)
                except transport.TransportError as exc:
                    logger.warning("link to node %s lost: %s; dialling again to send the "
                                   "%d message(s) in hand", link.node_id[:12], exc,
                                   len(link.pending))
                except Exception as exc:
                    # They cannot be encoded (a bug of their sender): dropped, or they
                    # would crash every sender that takes them again.
                    logger.error("%d message(s) to node %s (first %s) cannot be sent, "
                                 "dropped: %s: %s", len(link.pending), link.node_id[:12],
                                 _kind(link.pending[0]), type(exc).__name__, exc)
                    self.dropped += len(link.pending)
                    link.pending = None
        finally:
            link.running = False

    async def _send_batch(self, link: _Link, conn: Any, batch: list) -> None:
        """``batch`` in one frame; if together they pass the peer's frame limit, one
        by one (a single message over it is dropped, logged: it never fits). What
        is sent leaves ``batch``: an interruption leaves only what was not."""
        if len(batch) > 1:
            try:
                await conn.send(PeerBatch(batch))
                link.sent += len(batch)
                batch.clear()
                return
            except transport.FrameTooLarge:
                pass
        while batch:
            message = batch[0]
            try:
                await conn.send(message)
                link.sent += 1
            except transport.FrameTooLarge:
                logger.error("a %s message to node %s is over its frame limit: dropped",
                             _kind(message), link.node_id[:12])
                self.dropped += 1
            del batch[0]

    async def _dial(self, link: _Link) -> Any:
        """Connect to ``link``'s node (again), until it works or the node is gone."""
        link.connected = trio.Event() if link.connected.is_set() else link.connected
        while not link.closed:
            status = self.view.get(link.node_id)
            if status is None or not status.alive or status.address is None:
                self.drop(link.node_id)
                return None
            link.dials += 1
            try:
                conn = await transport.connect(
                    status.address, self._token, name=f"node-{self._node_hex[:8]}",
                    handler=self._handler, max_frame_size=max_frame_size(),
                    connect_timeout=5.0,
                )
                await conn.request(Hello("node", None, os.getpid(),
                                         {"node_id": self._node_hex}), timeout=10.0)
            except (transport.TransportError, OSError, trio.TooSlowError) as exc:
                logger.info("dialling node %s at %s failed: %s", link.node_id[:12],
                            status.address, exc)
                await trio.sleep(REDIAL)
                continue
            link.conn = conn
            link.connected.set()
            return conn
        return None

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
        return {"kind": "node_links", "links": st.links, "connected": st.connected}
