"""The ``store_link`` component: the node's own connection to its object store.

The node holds a store ref on every large object it knows (``_objects``), through
one ``core_worker._store_link.StoreLink``. The node owns that link — its
connection, and with it the refs, must outlive this component — and this
component runs the link's own tasks: the watcher that reconnects (and re-claims
the refs) the moment the store restarts, and the deferred releases. A crash
cancels them; the restarted component starts them again over the same link, and
releases asked for meanwhile are sent then (``StoreLink.serve_in``).
"""

from __future__ import annotations

from typing import Any

import trio

from ...core_worker._store_link import StoreLink

__all__ = ["StoreLinkService"]


class StoreLinkService:
    """The ``store_link`` child of the node's tree, over the node's ``link``."""

    def __init__(self, link: StoreLink) -> None:
        self.link = link

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        link = self.link
        try:
            async with trio.open_nursery() as nursery:
                link.serve_in(nursery)
                await link.connect()  # at once on the first start; a no-op after
                task_status.started(link.address)
                await trio.sleep_forever()
        finally:
            link.serve_in(None)

    def snapshot(self) -> dict:
        link = self.link
        return {"kind": "store_link", "address": link.address, "connected": link.connected,
                "reconnects": link.generation, "deferred_releases": link.deferred_releases}
