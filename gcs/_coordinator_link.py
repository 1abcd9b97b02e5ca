"""`CoordinatorLink`: a client's link to the coordinator and its view of the layout.

The coordinator is off the data path: clients talk to the replicas directly. The
link carries the layout -- which replica is head and tail of each shard -- pushed on
every change (`LayoutChanged`), or fetched by `refresh` when a batch failed and no
newer layout arrived in time. Layouts of one GCS generation are merged shard by
shard, newest epoch wins.

A component of `GcsClient` (`_client.py`) with its own state: the link, the layout
and the event that says it changed. The client asks it for the ``layout`` and to
``refresh`` one shard's; so do the client's subscriptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

import transport

from ._errors import BadRequest, GcsUnavailable
from ._messages import GetLayout, Hello, Layout, LayoutChanged, Watch
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._watch import HeldReplies, aclose_quietly

__all__ = ["CoordinatorLink"]


class CoordinatorLink:
    """The link of one client to the coordinator at ``address``, and the layout."""

    def __init__(self, address: str, token: bytes | str, *, name: str, timeout: float,
                 on_layout: Callable[[Layout], None] | None = None) -> None:
        self.address = address
        #: Called (synchronously) with every new layout.
        self._on_layout = on_layout
        self._token = token
        self._name = name
        self._timeout = timeout
        self._conn: Any = None
        self._layout: Layout | None = None
        self._layout_changed = trio.Event()
        self._held = HeldReplies()
        #: Times the link was re-established after it was lost.
        self.reconnects = 0
        self._routes = transport.Dispatcher(f"{name} coordinator link", refuse=_refuse)
        self._routes.register(LayoutChanged, self._on_layout_changed, oneway=True)
        self._routes.register(Watch, self._on_watch)

    def _on_layout_changed(self, conn: Any, message: LayoutChanged) -> None:
        self._set_layout(message.layout)

    def _on_watch(self, conn: Any, message: Watch, reply: Any) -> None:
        self._held.hold(conn, reply)  # the coordinator's probe of us: never answered

    async def connect(self) -> None:
        """Dial and say `Hello` until the coordinator answers with the layout
        (`GcsUnavailable` after the client's timeout)."""
        deadline = trio.current_time() + self._timeout
        while True:
            try:
                self._conn = await transport.connect(
                    self.address, self._token, name=self._name, handler=self._routes)
                self._set_layout(await self._conn.request(Hello(), timeout=_RPC_TIMEOUT))
                return
            except (transport.ConnectError, transport.ConnectionLost,
                    transport.RequestTimeout) as exc:
                if trio.current_time() >= deadline:
                    raise GcsUnavailable(
                        f"cannot reach the GCS coordinator at {self.address}: {exc}") from exc
                await trio.sleep(0.05)

    async def keep(self) -> None:
        """Keep the link, redialing the coordinator after a restart.

        The data path does not need it (clients talk to the replicas directly); it
        carries the layout pushes, so after a restart we register again with
        `Hello` and the new coordinator pushes its rebuilt chains to us. Its
        layouts have the same generation and higher epochs, so they merge shard by
        shard.
        """
        while True:
            conn = self._conn
            if conn is not None and not conn.closed:
                try:
                    while True:  # an answer (None) only means "ask again"
                        await conn.request(Watch(), timeout=None)
                except transport.TransportError:
                    pass
                with trio.CancelScope(shield=True):
                    await aclose_quietly(conn, 0.5)
            delay = 0.01
            while True:
                conn = None
                try:
                    conn = await transport.connect(self.address, self._token, name=self._name,
                                                   handler=self._routes, connect_timeout=2.0)
                    layout = await conn.request(Hello(), timeout=_RPC_TIMEOUT)
                except BaseException as exc:
                    if conn is not None:
                        with trio.CancelScope(shield=True):
                            await aclose_quietly(conn, 0.5)
                    if not isinstance(exc, transport.TransportError):
                        raise
                    await trio.sleep(delay)
                    delay = min(delay * 2, 0.2)
                    continue
                self._conn = conn
                self.reconnects += 1
                self._set_layout(layout)
                break

    async def aclose(self) -> None:
        if self._conn is not None:
            with trio.move_on_after(1.0):
                await self._conn.aclose(flush_timeout=0.5)

    @property
    def layout(self) -> Layout:
        assert self._layout is not None, "use `async with open_client(...)`"
        return self._layout

    @property
    def known_layout(self) -> Layout | None:
        """The layout, or None before the first one arrived."""
        return self._layout

    async def wait_layout_changed(self, since: Layout) -> None:
        """Return once the layout is no longer ``since`` (pushed or fetched)."""
        while self._layout is since:
            await self._layout_changed.wait()

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
        if self._on_layout is not None:
            self._on_layout(layout)

    async def refresh(self, shard: int, epoch: int, deadline: float) -> None:
        """Wait (bounded) for a newer layout of ``shard`` than ``epoch``."""
        with trio.move_on_after(max(0.0, min(0.25, deadline - trio.current_time()))):
            while self.layout.shards[shard].epoch <= epoch:
                await self._layout_changed.wait()
            return
        try:
            conn = self._conn
            if conn is None or conn.closed:
                # `keep` is redialing; its `Hello` brings the layout.
                raise transport.ConnectionLost("the GCS coordinator link is down")
            # (A recovering coordinator answers only once it rebuilt the chains.)
            timeout = max(0.05, min(_RPC_TIMEOUT, deadline - trio.current_time()))
            self._set_layout(await conn.request(GetLayout(), timeout=timeout))
        except transport.TransportError:
            await trio.sleep(0.05)


def _refuse(conn: Any, reply: Any, error: transport.BadMessage) -> None:
    reply.fail(BadRequest(f"GCS client: {error}"))
