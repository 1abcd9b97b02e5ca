"""A node's links to other nodes (``actorcore.node._peers``) against a real peer on
a real socket: a peer endpoint that speaks the node-to-node protocol (answers the
hello with what it handled, serves numbered batches once, acknowledges them).

The multi-node tests run these links inside real clusters; what is tested here is a
case a cluster cannot be steered into on demand: a node that sends to a peer its
view of the cluster does not know yet (that peer joined after its last refresh and
sent it work)."""

from __future__ import annotations

import os

import trio
import trio.testing

import transport
from actorcore.node._peers import NodeLinks, NodePeers, PeerUnavailable
from actorcore.node.gcs_client._membership import ClusterView
from actorcore.protocol import _wire as w

TOKEN = os.urandom(16)
ME = "aa" * 14
PEER = "bb" * 14


class Peer:
    """The receiving side of a node: handled batches, in order, each once."""

    def __init__(self) -> None:
        self.handled = 0
        self.messages: list = []
        self.arrived = trio.Event()
        self.lose_next = False
        self.dispatcher = transport.Dispatcher("peer")
        self.dispatcher.register(w.Hello, self._hello)
        self.dispatcher.register(w.PeerBatch, self._batch, oneway=True)

    def _hello(self, conn, m, reply) -> None:
        reply.send(w.HelloReply(node_id=bytes.fromhex(PEER), address="", store_address="",
                                gcs_address=None, session_dir="", log_dir="", pid=os.getpid(),
                                head=False, peer_handled=self.handled))

    def _batch(self, conn, m) -> None:
        if self.lose_next:  # lost with the connection, unread (as a reset does)
            self.lose_next = False
            conn.reset("lost by the test")
            return
        if m.seq > self.handled:
            self.handled = m.seq
            self.messages.extend(m.messages)
            self.arrived.set()
        conn.send_nowait(w.PeerAck(PEER, m.seq))


def _record(node_id: str, address: str | None, alive: bool = True) -> dict:
    return {"node_id": node_id, "tcp_address": address, "resources": {"CPU": 1.0},
            "alive": alive}


async def test_a_message_for_a_node_the_view_does_not_know_yet_waits_for_it():
    peer = Peer()
    server = transport.Server("tcp:127.0.0.1:0", TOKEN, peer.dispatcher, name="node-bb-tcp")
    view = ClusterView(ME)
    view.apply([_record(ME, None)], {})
    peers = NodePeers(view, TOKEN, ME, handler=transport.Dispatcher("me"))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        nursery.start_soon(_run_links, peers)
        # A request is refused at once: its caller would rather try elsewhere.
        try:
            await peers.request(PEER, w.OwnsPrefix(b"x" * 4))
        except PeerUnavailable as exc:
            assert "not a member" in str(exc)
        else:
            raise AssertionError("a request to an unknown node was not refused")
        # A one-way message is queued, not refused (its sender may be waiting for it).
        peers.send(PEER, w.FreeCopies([b"x" * 28]))
        await trio.testing.wait_all_tasks_blocked()
        assert not peer.messages
        view.apply([_record(ME, None), _record(PEER, str(address))], {})  # it appears
        with trio.fail_after(10):
            await peer.arrived.wait()
        assert peer.messages == [w.FreeCopies([b"x" * 28])]
        assert peers.statistics().dropped == 0
        nursery.cancel_scope.cancel()


async def test_a_batch_lost_with_its_connection_is_sent_again_without_new_traffic():
    """A batch that left in full and died with its connection (the peer never read
    it) is sent again on a new connection at once, not at the next message."""
    peer = Peer()
    server = transport.Server("tcp:127.0.0.1:0", TOKEN, peer.dispatcher, name="node-bb-tcp")
    view = ClusterView(ME)
    peers = NodePeers(view, TOKEN, ME, handler=transport.Dispatcher("me"))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        view.apply([_record(ME, None), _record(PEER, str(address))], {})
        nursery.start_soon(_run_links, peers)
        peer.lose_next = True
        peers.send(PEER, w.FreeCopies([b"x" * 28]))
        with trio.fail_after(10):
            await peer.arrived.wait()
        assert peer.messages == [w.FreeCopies([b"x" * 28])] and peer.handled == 1
        assert peers.statistics().dials == 2
        nursery.cancel_scope.cancel()


async def test_a_message_for_a_node_that_never_appears_is_dropped_after_the_timeout(
        monkeypatch, autojump_clock):
    monkeypatch.setenv("ACTORCORE_NODE_TIMEOUT", "0.3")
    monkeypatch.setenv("ACTORCORE_HEARTBEAT_INTERVAL", "0.1")
    view = ClusterView(ME)
    view.apply([_record(ME, None)], {})
    peers = NodePeers(view, TOKEN, ME, handler=transport.Dispatcher("me"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_links, peers)
        peers.send(PEER, w.FreeCopies([b"x" * 28]))
        peers.send(PEER, w.FreeCopies([b"y" * 28]))
        await trio.sleep(0.2)  # (virtual time: the autojump clock)
        assert peers.statistics().links == 1
        await trio.sleep(0.2)
        assert peers.statistics().links == 0
        assert peers.statistics().dropped == 2
        nursery.cancel_scope.cancel()


async def test_a_dead_node_is_refused_at_once():
    view = ClusterView(ME)
    view.apply([_record(ME, None), _record(PEER, "tcp:127.0.0.1:1", alive=False)], {})
    peers = NodePeers(view, TOKEN, ME, handler=transport.Dispatcher("me"))
    try:
        peers.send(PEER, w.FreeCopies([b"x" * 28]))
    except PeerUnavailable as exc:
        assert "dead" in str(exc)
    else:
        raise AssertionError("a message to a dead node was queued")


async def _run_links(peers: NodePeers) -> None:
    await NodeLinks(peers).run()
