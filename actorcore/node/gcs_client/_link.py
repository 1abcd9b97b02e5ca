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

A GCS that restarts empty (the embedded default: one in-memory replica, its whole
``gcs`` subtree crashed) keeps its address; the client notices the new history at
its next request to each shard (``GcsClient.wait_reset``; the heartbeats make one
every interval). This component then registers the node again and has the node
write again everything it holds that the GCS must know (``republish``: its actors
and their names, functions, jobs, the lineage of live tasks, object locations,
checkpoints). Until then a reader of the GCS may miss them: a window of about one
heartbeat interval.

Without a GCS (``--no-gcs``) the tables are in the node's memory
(``MemoryControlState``) and the component only runs the flusher.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ._control import GcsControlState
from ._membership import Membership

__all__ = ["GcsClientLink"]

logger = logging.getLogger("actorcore.control")

#: Seconds to gather the resets of the other shards before writing everything again.
_RESET_GATHER = 0.05


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
        republish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.control = control
        self._republish = republish
        self.republished = 0  # rounds of ``republish`` after GCS resets
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

        # A restart is ready at once, before the GCS answers. The node's supervisor
        # starts the children it restarts one at a time, each once the one before
        # is ready: a restart of this link that waited here for the GCS would hold
        # up the restart of a crashed ``gcs`` queued behind it, and the two would
        # wait for each other until the address wait timed out, and again at every
        # restart after (seen with ``faults.crash`` of every node component in a
        # row). The node's GCS calls wait for the next client meanwhile
        # (``GcsControlState.wait_client``), as they do while this link is down.
        # The first start still waits: the node is up only once its GCS link is.
        restart = control.links > 0
        if restart:
            task_status.started()
        address = await self._gcs_address()
        async with gcs.open_client(address, self._token, name=self._name) as client:
            control.attach(client, address)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(control.flush_forever)
                    if self.membership is not None:
                        # A node is up once its view holds the cluster: a node that
                        # joined and served before its first read of the nodes
                        # table would take the head's first forwarded task for a
                        # one-node cluster's (no fetch of its arguments from their
                        # owners' node; seen as an "owner is gone" under load).
                        await nursery.start(self.membership.run, client)
                    if not restart:
                        task_status.started(address)
                    nursery.start_soon(self._watch_resets, client)
                    if control.links > 1:
                        # A new link (this component restarted): the GCS may have
                        # restarted empty meanwhile (say, with the whole node tree),
                        # which a new client cannot tell. Writing again is harmless.
                        nursery.start_soon(self._write_again, client)
            finally:
                control.detach()

    async def _watch_resets(self, client: Any) -> None:
        """Write the node's state again whenever the GCS is found reset (empty)."""
        seen = client.statistics().shard_resets
        while True:
            seen = await client.wait_reset(seen)
            # A whole-GCS restart resets every shard, noticed one by one as requests
            # reach them (the writes below reach them all): gather a moment, write
            # once; resets noticed meanwhile make one more round.
            await trio.sleep(_RESET_GATHER)
            seen = client.statistics().shard_resets
            logger.warning("the GCS lost its state (restarted empty): writing this node's "
                           "state to it again")
            await self._write_again(client)

    async def _write_again(self, client: Any) -> None:
        try:
            if self.membership is not None:
                await self.membership.register(client)
            if self._republish is not None:
                await self._republish()
        except Exception as exc:  # the next reset, or a restart of this link, retries
            logger.error("writing the node's state to the restarted GCS failed: %s: %s",
                         type(exc).__name__, exc)
        self.republished += 1

    def snapshot(self) -> dict:
        stats = attrs.asdict(self.control.statistics(), recurse=False,
                             filter=lambda _field, value: value is not None)
        stats.pop("gcs_client", None)
        linked = getattr(self.control, "linked", None)
        if self.membership is not None:
            stats["nodes_alive"] = len(self.membership.view.alive())
            stats["heartbeats"] = self.membership.seq
        stats["republished"] = self.republished
        return {"kind": "gcs_client", **stats,
                **({"linked": linked} if linked is not None else {})}
