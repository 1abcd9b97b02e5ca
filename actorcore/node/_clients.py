"""The processes connected to this node: drivers, workers, CLI links, other nodes.

Who is here, under which id prefix, and what a driver owns. The node adds a client
when it says hello and removes it when its link closes; a driver whose link closed
stays in ``departed`` through its grace period (``DRIVER_GRACE``), because its link
dropping is not its death (``_runtime``'s driver-departure comment).

Components ask the registry, not the node, what they need of it: whether an
object's owner may still be alive (`Clients.live_id_prefixes`: an owner that is
gone will never produce or claim it), which objects a driver owns (freed when it
leaves), where an owner takes direct calls. The registry is a plain table: it
starts no task and sends only the forwarded worker logs.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

import transport

from ..protocol import _wire as w
from ..protocol._ids import owner_prefix
from .local_scheduler._workers import WorkerInfo

__all__ = ["Client", "Clients", "local_peer_pid"]

logger = logging.getLogger("actorcore.node")


@attrs.define(eq=False)
class Client:
    """One connected process, as its hello described it."""

    conn: Any
    role: str
    worker_id: bytes | None = None
    pid: int | None = None
    worker: WorkerInfo | None = None
    log_to_driver: bool = False
    owned: set[bytes] = attrs.Factory(set)
    direct_address: str | None = None
    leaving: bool = False  # a driver that said ``bye``: its link closing is its exit
    id_prefix: bytes | None = None  # the prefix of every id it creates (``protocol._ids``)
    #: messages waiting, in order, for its link to take more (``send_in_order``)
    backlog: collections.deque[Any] | None = None

    # A node may owe one process more than a link queues without waiting: the
    # errors of a million tasks queued behind one argument, failed in one step of
    # the loop when that argument fails. ``send_nowait`` refuses past the link's
    # limit (64 MiB); what it refuses, and everything after it, waits here in
    # order, and one task sends it with ``await send()`` as the process reads.
    # Nothing is dropped, and nothing overtakes what waits.

    def send_in_order(self, message: Any, spawn: Callable[..., Any]) -> None:
        """Send a one-way ``message`` now, or after what waits for the link to drain
        (``spawn`` starts the task that sends it); a closed link drops it."""
        if self.backlog is not None:
            self.backlog.append(message)
            return
        try:
            self.conn.send_nowait(message)
        except trio.WouldBlock:
            self.backlog = collections.deque([message])
            spawn(self._send_backlog)
        except transport.TransportError:
            pass  # its link closed: its departure is handled where links end

    async def _send_backlog(self) -> None:
        backlog = self.backlog
        try:
            while backlog:
                await self.conn.send(backlog[0])
                backlog.popleft()
        except transport.TransportError:
            pass
        finally:
            self.backlog = None


@attrs.define(eq=False)
class Clients:
    """The node's table of connected processes (see the module docstring)."""

    #: worker id (a driver's or worker's) -> its client.
    by_id: dict[bytes, Client] = attrs.Factory(dict)
    #: connection -> its client (every process that said hello).
    by_conn: dict[Any, Client] = attrs.Factory(dict)
    #: worker id -> a driver whose link closed, within its grace period.
    departed: dict[bytes, Client] = attrs.Factory(dict)

    def add(self, client: Client) -> None:
        self.by_conn[client.conn] = client
        if client.worker_id is not None:
            self.by_id[client.worker_id] = client

    def remove(self, conn: Any) -> Client | None:
        """Forget the client of ``conn`` (its link closed); it, or None."""
        client = self.by_conn.pop(conn, None)
        if client is not None and client.worker_id is not None \
                and self.by_id.get(client.worker_id) is client:
            del self.by_id[client.worker_id]
        return client

    def connected(self, owner: bytes) -> Client | None:
        """The client of worker id ``owner`` if its link is open."""
        client = self.by_id.get(owner)
        if client is None or client.conn.closed:
            return None
        return client

    def worker_of(self, conn: Any) -> WorkerInfo | None:
        client = self.by_conn.get(conn)
        return client.worker if client is not None else None

    def live_id_prefixes(self) -> set[bytes]:
        """The id prefixes of the live processes here: the owners whose objects may
        still arrive (a driver within its reconnect grace period counts)."""
        live = {c.id_prefix for c in self.by_conn.values() if c.id_prefix}
        live.update(c.id_prefix for c in self.departed.values() if c.id_prefix)
        return live

    def owned_by(self, conn: Any) -> set[bytes] | None:
        """The objects a driver owns (freed when it disconnects); None for workers."""
        client = self.by_conn.get(conn)
        if client is None or client.role != "driver":
            return None
        return client.owned

    def held_for_drivers(self, oids: Iterable[bytes]) -> None:
        """``oids`` came here by a path that did not pass their owner's submit (the
        large results of a direct actor call): those a driver of this node owns are
        freed when it leaves, as its other objects are."""
        drivers = {c.id_prefix: c for c in self.by_conn.values()
                   if c.role == "driver" and c.id_prefix}
        if drivers:
            for oid in oids:
                client = drivers.get(owner_prefix(oid))
                if client is not None:
                    client.owned.add(oid)

    def owner_address(self, owner: bytes) -> str | None:
        """Where the connected process ``owner`` takes direct calls, or None."""
        client = self.connected(owner)
        return client.direct_address if client is not None else None

    def forward_log(self, prefix: str, stream: str, lines: list[str]) -> None:
        """A worker's output lines, to every driver that asked for them."""
        for client in list(self.by_conn.values()):
            if client.log_to_driver and not client.conn.closed:
                try:
                    client.conn.send_nowait(w.ForwardedLog(prefix, stream, lines))
                except transport.TransportError:
                    pass  # that driver's link is closing: its disconnect handles it


def local_peer_pid(conn: Any) -> int | None:
    """The pid of a peer on the node's Unix socket (from the kernel, ``SO_PEERCRED``,
    as the transport reports it), or ``None`` for a remote peer."""
    match = re.match(r"unix peer pid=(\d+)", str(getattr(conn, "peer_address", "")))
    return int(match.group(1)) if match else None
