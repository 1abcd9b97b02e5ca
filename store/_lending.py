"""The client side of blocks lent ahead of a writer's puts (``store._core``,
"Lending"): asking for blocks, taking one for a put, giving it back when recalled,
and the adopts sent and not answered. Mixed into `StoreClient`, whose state it
uses (its connection, loop token, lock, mapping and leases); the puts themselves
are `BlockingStoreClient`'s."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import outcome
import trio

import transport

from . import _messages as m

if TYPE_CHECKING:
    import threading

    from ._arena import Mapping

__all__ = ["LendingClient"]

logger = logging.getLogger("store.client")


class LendingClient:
    """`StoreClient`'s lending half (see the module docstring)."""

    _conn: transport.Connection
    _token: trio.lowlevel.TrioToken
    _lock: threading.Lock
    _mapping: Mapping
    _warm: int
    _lend_prefix: bytes | None
    _lend_size: int
    _lent: m.Lent | None
    _lend_asked: bool
    _recalled: set[bytes]
    _taken: set[bytes]
    _unanswered_adopts: dict[bytes, m.Adopt]

    def _abort(self, object_id: bytes) -> None:
        raise NotImplementedError

    async def _call(self, message: Any, timeout: float | None) -> Any:  # noqa: ASYNC109
        raise NotImplementedError

    def _lease(self, object_id: bytes, view_id: int, location: m.Location,
               mapping: Mapping) -> Any:
        raise NotImplementedError

    async def lend_for(self, prefix: bytes, size: int | None = None) -> None:
        """From now on, a large put from a thread (`BlockingStoreClient.put`) of an
        id starting with ``prefix`` copies into a block the store lent this client
        ahead, without asking (the ``create`` round trip leaves the put's path),
        and asks for the next block as it starts, as large as itself (see
        `_lend_soon`). The first block is lent now if ``size`` (bytes) is given,
        else after the first such put, which asks for its own (a client that never
        puts a large value holds no block). The ids under ``prefix`` must be this
        client's alone (its fresh put ids): a lookup of one that finds nothing asks
        this client first. Costs one block of the store while the client lives
        (``lent`` in the store's statistics), given back when an allocation needs
        the room."""
        if not prefix:
            raise ValueError("lend_for needs a prefix of the ids to put, not b''")
        if size is not None and size <= 0:
            raise ValueError(f"lend_for's size is a number of bytes > 0, got {size!r}")
        self._lend_prefix = bytes(prefix)
        if size is None:
            return
        self._lend_size = size
        with self._lock:
            if self._lent is not None or self._lend_asked:
                return
            self._lend_asked = True
        try:
            lent = await self._call(m.Lend(self._lend_size, self._lend_prefix), None)
        finally:
            with self._lock:
                self._lend_asked = False
        if lent is not None:
            self._install_lent(lent)

    def _take_lent(self, object_id: bytes, need: int) -> m.Lent | None:
        """The block lent, taken for ``object_id`` if it fits ``need`` bytes (any
        thread); a block too small is given back, to be lent again larger."""
        prefix = self._lend_prefix
        if prefix is None or not object_id.startswith(prefix):
            return None
        with self._lock:
            lent = self._lent
            if lent is None:
                return None
            self._lent = None
            if lent.size >= need:
                self._taken.add(lent.lend_id)
                return lent
        self._give_back(lent.lend_id)
        return None

    def _adopting(self, adopt: m.Adopt) -> None:
        """A put wrote its object into the block it took: its adopt is about to go."""
        with self._lock:
            self._unanswered_adopts[adopt.object_id] = adopt
            self._taken.discard(adopt.lend_id)

    def _untake(self, lend_id: bytes) -> None:
        """A put gave up the block it took (it failed), or its adopt was not sent."""
        with self._lock:
            self._taken.discard(lend_id)
        self._give_back(lend_id)

    def _give_back(self, lend_id: bytes) -> None:
        """Return a lent block (a putting thread: ahead of what it sends next; the
        block goes with the connection otherwise)."""
        try:
            if not self._conn.send_from_thread(m.Abort(lend_id)):
                trio.from_thread.run_sync(self._abort, lend_id, trio_token=self._token)
        except (RuntimeError, trio.RunFinishedError, transport.TransportError):
            pass

    # The next block is as large as the last put (``need``), not the largest yet.
    # A writer's blocks take turns over two places: the one lent for the next put
    # is placed while this put's block is still in use. With 100 MB puts and a
    # block of the largest size seen (128 MiB, the old first block of half the
    # warm margin) the two places reached 257 MiB, past the 256 MiB the driver
    # mapped ahead and the service keeps warm above what it allocated: the first
    # puts then took 1,526 read faults each (8-12 ms of CPU per 100 MB), and every
    # rise of the arena's high water set the service's warmer zeroing 32 MiB steps
    # on the other core as the put copied, for memory bandwidth the copy needs.
    # Blocks cut to the put keep the two places in the bottom 200 MB. A put larger
    # than the block gives it back and asks (`_take_lent`); the next is its size.

    def _lend_soon(self, object_id: bytes, need: int) -> None:
        """Ask for a block for the next put, as large as this one (``need`` bytes),
        unless one is lent or asked for (a putting thread, before its copy; the
        answer comes on the loop)."""
        if self._lend_prefix is None or not object_id.startswith(self._lend_prefix):
            return
        self._lend_size = need
        with self._lock:
            if self._lent is not None or self._lend_asked:
                return
            self._lend_asked = True
        try:
            self._conn.request_soon_from_thread(m.Lend(self._lend_size, self._lend_prefix),
                                                self._on_lent)
        except (RuntimeError, transport.TransportError):
            with self._lock:
                self._lend_asked = False

    def _on_lent(self, answer: outcome.Outcome[Any]) -> None:
        """`Lend`'s answer (on the loop)."""
        with self._lock:
            self._lend_asked = False
        try:
            lent = answer.unwrap()
        except Exception as exc:
            logger.debug("the store lent no block: %r", exc)
            return
        if lent is not None:
            self._install_lent(lent)

    def _install_lent(self, lent: m.Lent) -> None:
        with self._lock:
            if lent.lend_id in self._recalled:
                self._recalled.discard(lent.lend_id)
                return
            if self._lent is None:
                self._lent = lent
                return
        self._abort(lent.lend_id)  # one is enough

    def _on_recall(self, conn: transport.Connection, message: m.Recall,
                   reply: transport.Reply) -> None:
        """The store wants a lent block back: given unless a put is writing into it
        (then its `Adopt` follows)."""
        lend_id = message.lend_id
        with self._lock:
            if lend_id in self._taken or any(
                    a.lend_id == lend_id for a in self._unanswered_adopts.values()):
                given = False
            elif self._lent is not None and self._lent.lend_id == lend_id:
                self._lent, given = None, True
            else:  # lent, its answer not read yet (dropped when it is), or given back
                self._recalled.add(lend_id)
                given = True
        reply.send(given)

    def _on_adopted(self, object_id: bytes, take_ref: bool, location: m.Location,
                    answer: outcome.Outcome[Any]) -> None:
        """`Adopt`'s answer (on the loop): the writer's view of its object."""
        try:
            view_id = answer.unwrap()
        except transport.ConnectionLost:
            return  # the service may not have read it: the reconnect's claim adopts it
        except Exception as exc:
            adopt = self._unanswered_adopts.pop(object_id, None)
            logger.error("the store refused to adopt object %s: %s", object_id.hex(), exc)
            if adopt is not None:
                self._abort(adopt.lend_id)
            return
        self._unanswered_adopts.pop(object_id, None)
        if take_ref and view_id is not None:
            self._lease(object_id, view_id, location, self._mapping)
