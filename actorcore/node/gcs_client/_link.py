"""The ``gcs_client`` component: the node's link to the GCS and the lineage flusher.

The node owns the control state (``_control``): the lineage buffer, the function
cache, and — over the GCS — the client of the moment. This component owns the
link: it waits for the GCS the head runs (or, on a node that joins a cluster, asks
the head where it is), connects, hands the client to the control state, writes the
lineage buffer behind, and runs the node's heartbeats and view of the cluster
(``_membership``) for as long as it runs. An
exception in either crashes the component; the node's supervisor restarts it, it
connects again, and the flusher carries on from the same buffer (a batch leaves
the buffer only once written, so a crash half way through a write loses nothing).
While it is down, GCS calls of the node wait for the next client
(``GcsControlState.wait_client``) instead of failing.

Without a GCS (``--no-gcs``) the tables are in the node's memory
(``MemoryControlState``) and the component only runs the flusher.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ._control import GcsControlState
from ._membership import Membership

__all__ = ["GcsClientLink"]


class GcsClientLink:
    """The ``gcs_client`` child of the node's tree.

    Args:
      control: the node's control state (outlives this component).
      gcs_address: awaited for the GCS coordinator's address (``None``: no GCS).
      token: the cluster token; name: this link's transport name.
    """

    def __init__(
        self,
        control: Any,
        *,
        gcs_address: Callable[[], Awaitable[str]] | None,
        token: bytes,
        name: str,
        membership: Membership | None = None,
    ) -> None:
        self.control = control
        self._gcs_address = gcs_address
        self._token = token
        self._name = name
        self.membership = membership

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        control = self.control
        if not isinstance(control, GcsControlState) or self._gcs_address is None:
            task_status.started()
            await control.flush_forever()
            return
        import gcs

        address = await self._gcs_address()
        async with gcs.open_client(address, self._token, name=self._name) as client:
            control.attach(client, address)
            try:
                task_status.started(address)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(control.flush_forever)
                    if self.membership is not None:
                        nursery.start_soon(self.membership.run, client)
            finally:
                control.detach()

    def snapshot(self) -> dict:
        stats = attrs.asdict(self.control.statistics(), recurse=False,
                             filter=lambda _field, value: value is not None)
        stats.pop("gcs_client", None)
        linked = getattr(self.control, "linked", None)
        if self.membership is not None:
            stats["nodes_alive"] = len(self.membership.view.alive())
            stats["heartbeats"] = self.membership.seq
        return {"kind": "gcs_client", **stats,
                **({"linked": linked} if linked is not None else {})}
