"""Who holds handles to which actor: an unnamed, non-detached actor lives while
some process holds a handle to it, as in Ray (``api._actor_handle``).

A process becomes a holder with its first handle (`HoldActor`) and stops being
one with its last (`DropActor`), or when it exits; an actor created with a handle
in its arguments holds that actor while it lives. When the last holder lets go,
the actor ends once its submitted calls have finished. For an actor hosted on
another node the holders are counted there: this node passes each change on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ...protocol import _wire as w
from ._record import ActorRecord, counted

__all__ = ["Holders", "HoldersHost"]


class _Proxies(Protocol):
    def locate(self, actor_id: bytes) -> Any: ...
    def send(self, rec: Any, message: Any) -> None: ...


class HoldersHost(Protocol):
    """What the holders use of the actor manager (``_manager.ActorManager``)."""

    @property
    def node(self) -> Any: ...  # the ``NodeRuntime``: ``clients``, ``view``
    @property
    def actors(self) -> Mapping[bytes, ActorRecord]: ...
    @property
    def remote(self) -> _Proxies: ...
    def end(self, rec: ActorRecord, cause: str, *, notify: bool = True) -> None: ...


class Holders:
    """The holder bookkeeping of this node's actors (in ``ActorRecord.holders``)."""

    def __init__(self, manager: HoldersHost) -> None:
        self.manager = manager

    def register(self, dispatcher: Any) -> None:
        dispatcher.register(w.DropActor, self._h_drop, oneway=True)
        # One-way from a Trio loop; a request (answered once held) from a thread.
        dispatcher.register(w.HoldActor, lambda conn, m: self._h_hold(conn, m.actor_id),
                            oneway=True)

    def _h_drop(self, conn: Any, m: w.DropActor) -> None:
        """The sender holds no handle to it any more."""
        rec = self.manager.actors.get(m.actor_id)
        client = self.manager.node.clients.by_conn.get(conn)
        if rec is not None and client is not None and client.worker_id is not None:
            self.unhold(rec, client.worker_id)

    def _h_hold(self, conn: Any, actor_id: bytes) -> None:
        """The sender's first handle to ``actor_id`` appeared: it holds the actor."""
        client = self.manager.node.clients.by_conn.get(conn)
        if client is not None and client.worker_id is not None:
            self.hold(actor_id, client.worker_id)

    def hold(self, actor_id: bytes, holder: bytes) -> None:
        """``holder`` (a worker id) holds a handle to the actor."""
        manager = self.manager
        rec = manager.actors.get(actor_id)
        if rec is None and manager.node.view.multi:
            rec = manager.remote.locate(actor_id)
        if rec is None or rec.state == "dead":
            return
        if rec.node is not None or rec.stub:  # its host counts the holders
            rec.holders.add(holder)
            if rec.node is not None:
                manager.remote.send(rec, w.RemoteActorHold(actor_id, holder))
            return
        if not counted(rec.spec):
            return
        rec.holders.add(holder)
        rec.drop_when_idle = False

    def unhold(self, rec: ActorRecord, holder: bytes) -> None:
        """``holder`` holds no handle to the actor any more: the last one gone, it
        ends once idle."""
        if rec.node is not None and rec.state != "dead" and holder in rec.holders:
            rec.holders.discard(holder)
            self.manager.remote.send(rec, w.RemoteActorDrop(rec.spec.actor_id, holder))
            return
        if rec.state == "dead" or not counted(rec.spec) or holder not in rec.holders:
            return
        rec.holders.discard(holder)
        if rec.holders:
            return
        rec.drop_when_idle = True
        if rec.idle():
            self.manager.end(rec, "all handles to it were dropped")
