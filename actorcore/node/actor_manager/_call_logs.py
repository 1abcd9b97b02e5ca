"""The node's side of replay (``_replay``): the call logs and checkpoints of the
actors that replay, as their processes report them.

An actor process reports each call it ran (`ActorLog` for a direct call; an
`ActorDone` with ``ran`` through the node) and, every ``checkpoint_interval``
calls, its state (`ActorCheckpoint`), which replaces the log. Where a host can die
and its actors live on (a cluster of several nodes, with a GCS) each entry is in
the GCS before the call's caller hears (``durable``); an actor restarted on
another node reads its checkpoint and the calls since back from there
(`CallLogs.fetch_checkpoint`). An actor dead for good takes its log with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import trio

from gcs import messages as gcs_messages

from ...protocol import _wire as w
from ...protocol._actors import ActorSpec, CallSpec
from ..worker_pool._actor_processes import ActorWorker
from ._record import ActorRecord
from ._replay import CHECKPOINT_NAMESPACE, LogWriter, StoredCheckpoint, log_prefix

__all__ = ["CallLogs", "LogsHost", "is_current"]

logger = logging.getLogger("actorcore.actors")


class LogsHost(Protocol):
    """What the call logs use of the actor manager (``_manager.ActorManager``)."""

    @property
    def node(self) -> Any: ...  # the ``NodeRuntime``: control, view, directory, spawn
    @property
    def actors(self) -> Mapping[bytes, ActorRecord]: ...
    def send_create(self, rec: ActorRecord) -> None: ...
    def end(self, rec: ActorRecord, cause: str, *, notify: bool = True) -> None: ...


def is_current(rec: ActorRecord, conn: Any) -> bool:
    """Whether ``conn`` is the link of the actor's current process (a report of a
    process the node gave up on is ignored: its calls run again)."""
    return rec.worker is not None and rec.worker.conn is conn


class CallLogs:
    """The call logs and checkpoints of this node's actors (see the module docstring)."""

    def __init__(self, manager: LogsHost) -> None:
        self.manager = manager
        node = manager.node
        self.writer = LogWriter(node.control, node.node_hex, node.spawn)
        node.view.on_node_joined(lambda _status: self._to_gcs())

    def register(self, dispatcher: Any) -> None:
        dispatcher.register(w.ActorLog, self._h_log, oneway=True)
        dispatcher.register(w.ActorCheckpoint, self._h_ckpt, oneway=True)

    @property
    def durable(self) -> bool:
        """Whether call logs go to the GCS before callers hear (``_replay``): on a
        cluster of several nodes, where a host can die and its actors live on."""
        node = self.manager.node
        return bool(node.view.multi and node.control.backend == "gcs")

    def republish(self) -> None:
        """The GCS restarted empty: write the logs and checkpoints held here again."""
        for rec in self.manager.actors.values():
            log = rec.log
            if log is None or rec.state == "dead" or rec.node is not None:
                continue
            if self.durable:
                for entry in log.entries.values():
                    self.writer.entry(rec.spec.actor_id, log, entry)
            self.writer.checkpoint(rec.spec.actor_id, log)

    def forget(self, spec: ActorSpec) -> None:
        """The actor is dead for good: its checkpoint and call log leave the GCS."""
        self.manager.node.spawn(_quietly, self._delete_checkpoint, spec)

    def _to_gcs(self) -> None:
        """A node joined: write the logs and checkpoints held here so far, which
        were in this node's memory only (one node: its death was the cluster's)."""
        if not self.durable:
            return
        for rec in self.manager.actors.values():
            log = rec.log
            if log is None or rec.state == "dead" or rec.node is not None:
                continue  # (entries already there are written again: keyed by seq)
            for entry in log.entries.values():
                self.writer.entry(rec.spec.actor_id, log, entry)
            self.writer.checkpoint(rec.spec.actor_id, log)

    def _h_log(self, conn: Any, m: w.ActorLog) -> None:
        """`ActorLog`: a direct call of an actor that replays ran; it joins the log,
        then its caller is answered (`ActorCallLogged`; see ``_replay``)."""
        actor_id, incarnation, spec, results = m.actor_id, m.incarnation, m.spec, m.results
        rec = self.manager.actors.get(actor_id)
        if (rec is None or rec.log is None or rec.state == "dead"
                or rec.incarnation != incarnation or not is_current(rec, conn)):
            return  # nobody is answered: the caller resends it through the node
        if spec.deps:
            self.manager.node.directory.pin(spec.deps)
        entry = rec.log.append(spec, None, results, pinned=bool(spec.deps))
        rec.calls_done += 1
        if self.durable:
            self.writer.entry(actor_id, rec.log, entry,
                                  lambda: _acknowledge(conn, actor_id, spec))
        else:
            _acknowledge(conn, actor_id, spec)

    def _h_ckpt(self, conn: Any, m: w.ActorCheckpoint) -> None:
        """`ActorCheckpoint`: the actor's state after every call it reported before:
        it replaces the log."""
        actor_id, incarnation, state = m.actor_id, m.incarnation, m.state
        rec = self.manager.actors.get(actor_id)
        if (rec is None or rec.log is None or rec.state == "dead"
                or rec.incarnation != incarnation or not is_current(rec, conn)):
            return
        unpin = rec.log.take_checkpoint(bytes(state))
        if unpin:
            self.manager.node.directory.unpin(unpin)
        if self.manager.node.control.backend == "gcs":
            self.writer.checkpoint(actor_id, rec.log)

    async def fetch_checkpoint(self, rec: ActorRecord, host: ActorWorker) -> None:
        """Read the actor's last checkpoint and the calls logged since from the GCS
        (its host node died, ``_replay``), then create it with them."""
        assert rec.log is not None
        aid = rec.spec.actor_id

        async def read(gcs: Any) -> tuple[Any, list]:
            checkpoint = await gcs.kv.get(aid.hex(), namespace=CHECKPOINT_NAMESPACE)
            calls = await gcs.scan("kv", log_prefix(aid))
            return checkpoint, [v for _k, v in calls]

        try:
            with trio.fail_after(30):
                checkpoint, calls = await self.manager.node.control.call(read)
        except Exception as exc:
            self.manager.end(rec, f"its checkpoint and call log could not be read from the GCS to "
                          f"recover it: {type(exc).__name__}: {exc}")
            return
        if checkpoint is not None and not isinstance(checkpoint, StoredCheckpoint):
            self.manager.end(rec, f"the checkpoint the GCS holds for it is a "
                          f"{type(checkpoint).__name__}, not a StoredCheckpoint")
            return
        if rec.state == "dead":
            return
        rec.log.restore(checkpoint, calls, self.manager.node.node_hex)
        logger.info("actor %s: recovering from %s and %d logged call(s) read from the GCS",
                    rec.spec.describe(),
                    f"the checkpoint after call {checkpoint.seq}" if checkpoint
                    else "its constructor", len(rec.log.entries))
        if rec.worker is host and host.conn is not None:
            self.manager.send_create(rec)

    async def _delete_checkpoint(self, spec: ActorSpec) -> None:
        """The actor is dead for good: its checkpoint and call log go."""
        await self.manager.node.control.call(lambda gcs: gcs.kv.delete(
            spec.actor_id.hex(), namespace=CHECKPOINT_NAMESPACE))
        rows = await self.manager.node.control.call(lambda gcs: gcs.scan("kv", log_prefix(spec.actor_id)))
        if rows:
            ops: list[Any] = [(k, gcs_messages.Delete("kv", k)) for k, _v in rows]
            await self.manager.node.control.call(lambda gcs: gcs.write_many(ops, return_exceptions=True))


def _acknowledge(conn: Any, actor_id: bytes, spec: CallSpec) -> None:
    """Tell an actor's process that the node holds a direct call's log entry (its
    caller may be answered now)."""
    try:
        conn.send_nowait(w.ActorCallLogged(actor_id, spec.task_id))
    except Exception as exc:  # its link died: the caller resends, the log answers
        logger.info("acknowledging the log entry of %s failed: %s", spec.name, exc)


async def _quietly(fn: Any, *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:
        logger.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)
