"""`LayoutTracking`: a client's link to the coordinator and its view of the layout.

The coordinator is off the data path: clients talk to the replicas directly. The
link carries the layout -- which replica is head and tail of each shard -- pushed on
every change (``layout`` messages, routed here by `GcsClient._on_message`), or
fetched by `_refresh` when a batch failed and no newer layout arrived in time.
Layouts of one GCS generation are merged shard by shard, newest epoch wins.

A mixin of `GcsClient` (`_client.py`): the state it uses is the client's own,
declared below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

import transport

from ._errors import GcsUnavailable
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._protocol import Layout

__all__ = ["LayoutTracking"]


class LayoutTracking:
    """The coordinator link and the layout of a `GcsClient` (a mixin)."""

    # The client's state these methods use (set by `GcsClient.__init__`).
    address: str
    token: bytes | str
    name: str
    timeout: float
    _layout: Layout | None
    _layout_changed: trio.Event
    _coordinator: Any
    _stats: dict[str, int]

    if TYPE_CHECKING:
        async def _on_message(self, conn: Any, message: Any, reply: Any) -> None: ...

    async def _connect(self) -> None:
        deadline = trio.current_time() + self.timeout
        while True:
            try:
                self._coordinator = await transport.connect(
                    self.address, self.token, name=self.name, handler=self._on_message)
                self._set_layout(await self._coordinator.request(("hello",),
                                                                 timeout=_RPC_TIMEOUT))
                return
            except (transport.ConnectError, transport.ConnectionLost,
                    transport.RequestTimeout) as exc:
                if trio.current_time() >= deadline:
                    raise GcsUnavailable(
                        f"cannot reach the GCS coordinator at {self.address}: {exc}") from exc
                await trio.sleep(0.05)

    async def _keep_coordinator(self) -> None:
        """Keep a link to the coordinator, redialing it after a restart.

        The data path does not need it (clients talk to the replicas directly); it
        carries the layout pushes, so after a restart we register again with
        ``hello`` and the new coordinator pushes its rebuilt chains to us. Its
        layouts have the same generation and higher epochs, so `_set_layout` merges
        them shard by shard.
        """
        while True:
            conn = self._coordinator
            if conn is not None and not conn.closed:
                try:
                    while True:  # an answer (None) only means "ask again"
                        await conn.request(("watch",), timeout=None)
                except transport.TransportError:
                    pass
                with trio.CancelScope(shield=True):
                    await _aclose(conn)
            delay = 0.01
            while True:
                conn = None
                try:
                    conn = await transport.connect(self.address, self.token, name=self.name,
                                                   handler=self._on_message,
                                                   connect_timeout=2.0)
                    layout = await conn.request(("hello",), timeout=_RPC_TIMEOUT)
                except BaseException as exc:
                    if conn is not None:
                        with trio.CancelScope(shield=True):
                            await _aclose(conn)
                    if not isinstance(exc, transport.TransportError):
                        raise
                    await trio.sleep(delay)
                    delay = min(delay * 2, 0.2)
                    continue
                self._coordinator = conn
                self._stats["coordinator_reconnects"] += 1
                self._set_layout(layout)
                break

    @property
    def layout(self) -> Layout:
        assert self._layout is not None, "use `async with open_client(...)`"
        return self._layout

    def _set_layout(self, layout: Layout) -> None:
        current = self._layout
        if (current is not None and current.generation == layout.generation
                and len(current.shards) == len(layout.shards)):
            shards = tuple(new if new.epoch > old.epoch else old
                           for old, new in zip(current.shards, layout.shards, strict=True))
            if shards == current.shards:
                return
            layout = attrs.evolve(layout, shards=shards)
        self._layout = layout
        self._layout_changed.set()
        self._layout_changed = trio.Event()

    async def _refresh(self, shard: int, epoch: int, deadline: float) -> None:
        """Wait (bounded) for a newer layout of ``shard`` than ``epoch``."""
        with trio.move_on_after(max(0.0, min(0.25, deadline - trio.current_time()))):
            while self.layout.shards[shard].epoch <= epoch:
                await self._layout_changed.wait()
            return
        try:
            coordinator = self._coordinator
            if coordinator is None or coordinator.closed:
                # `_keep_coordinator` is redialing; its ``hello`` brings the layout.
                raise transport.ConnectionLost("the GCS coordinator link is down")
            # (A recovering coordinator answers only once it rebuilt the chains.)
            timeout = max(0.05, min(_RPC_TIMEOUT, deadline - trio.current_time()))
            self._set_layout(await coordinator.request(("layout",), timeout=timeout))
        except transport.TransportError:
            await trio.sleep(0.05)


async def _aclose(conn: Any) -> None:
    with trio.move_on_after(0.5):
        try:
            await conn.aclose()
        except transport.TransportError:
            pass
