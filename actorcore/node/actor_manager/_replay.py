"""Actors recovered by replay: the call log and checkpoint of one actor (the paper's
actor reconstruction, §4.2.3).

An actor created with ``checkpoint_interval`` (``None``: Ray's restart, the
constructor again) has a ``CallLog`` in its ``ActorRecord``, here in the node's
actor manager, where its restarts are decided: it outlives the actor's process.

Where a call is ordered. Calls reach the actor on two paths — through the node
(``_calls``) or straight from their caller (``core_worker._direct_calls``) — and
calls of several callers interleave, so neither the node nor any caller sees the
order the actor ran them in. The actor's process does: with one call at a time
(the API refuses ``max_concurrency > 1`` for such actors) the order calls *finish*
in is the order they ran in. So the process reports each call that ran, as it
finishes, on its one ordered queue to the node: a node-routed call in its
``actor_done`` (``ran=True``), a direct call in an ``actor_log`` that carries the
call and its results — and the caller of a direct call is answered only once the
node says ``actor_logged``. Hence:

- a result a caller has seen is in the log (``append``);
- a call whose report never reached the node was answered to nobody: it is still
  in flight (node path) or resent by its caller (direct path), and runs once
  after the recovery;
- a direct call resent after a lost link whose entry *is* in the log (the process
  died between the node's ``actor_logged`` and the caller's answer) is answered
  from the log (``answer``), not run again. A checkpoint right behind it may have
  cleared the log meanwhile (or several: the process runs, reports and
  checkpoints calls faster than their answers come back to it): the results of
  the newest direct calls checkpoints cleared are kept (``answered``, at least
  ``ANSWERED_KEPT`` of them) for that.

Every ``checkpoint_interval`` calls the process sends ``actor_ckpt`` with the
state behind the calls it reported: the node keeps it and clears the log. After a
loss the new process gets ``(checkpoint, logged calls)`` with its creation
(``recovery``): constructor, ``__actorcore_restore__(state)``, the logged calls in
their order with their results discarded, then ``actor_ready``; calls queued or in
flight follow, each run once.

Where the log lives so that it outlives its host node. The node that hosts the
actor orders the log (above), but a restart after that node's death is decided
elsewhere (the actor's authority, ``_remote``) and runs on a third node. So on a
cluster of several nodes the host also writes the log to the GCS, and *before the
caller is answered*: every entry is a key of its own (``CALL_LOG_NAMESPACE``,
``<actor id hex>/<seq>``, a ``LoggedCall``), and the caller of a node-routed call
gets its results, the process of a direct call its ``actor_logged``, only once the
write that holds the entry has landed. ``LogWriter`` batches: the entries of all
the node's actors that arrive while one write is in flight go in the next
``put_many``, so a busy actor pays about one GCS round trip per batch, not per call.
Checkpoints go the same way, in the same queue and so behind the entries they
cover: a ``StoredCheckpoint`` (the state, the sequence number of the last call it
covers, and the answers of the direct calls it covered) replaces the previous one,
then the entries it covers are deleted. The restart on another node reads the
checkpoint and the entries after it (``restore``): the calls whose callers were
answered are all there, in their order. A node that dies between a checkpoint's
write and the deletes leaves entries the checkpoint covers: they are skipped by
their sequence number.

Why the GCS and not the authority's node. The authority dies with the driver's
node in the common case and then the actor dies too (fate sharing), but a detached
or named actor outlives it, and its next authority must find the log; the GCS is
also where the checkpoint already was, so the restart reads one place. The cost
is a GCS round trip on each answer of an actor that replays, and only on a
cluster of several nodes (on one node its death is the cluster's: the log stays
in the node's memory; when a second node joins, the log so far is written).

What a restart elsewhere cannot give back. Values that lived only in the dead
node's store: a logged call's large argument (``STORE``) is read again through
its ref at replay (its owner still holds it unless the caller dropped it), and a
logged call's large *result* that its caller never received is an
``ObjectLostError`` saying so (actor results are not rebuilt from lineage).

Reports from a process the node has given up on (an earlier incarnation, or a
connection that is not the actor's current one) are ignored: that process is dead
or being killed, and nobody was answered on their strength.

The log holds each call's arguments and results until the next checkpoint; the
argument objects of calls routed through the node stay pinned in the directory
until then (the replay reads them again).
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio

import gcs

from ...core_worker._store_link import STORE
from ...exceptions import ObjectReconstructionFailedError
from ...protocol import _serialization
from ...protocol._actors import CallSpec

__all__ = ["CALL_LOG_NAMESPACE", "CHECKPOINT_NAMESPACE", "CallLog", "LogWriter",
           "LoggedCall", "StoredCheckpoint"]

logger = logging.getLogger("actorcore.actors")

#: Direct calls whose answers the log keeps after checkpoints cleared their entries
#: (at least; ``2 * checkpoint_interval`` if more): a caller that lost an answer
#: and resends the call is answered from them instead of the call running again.
ANSWERED_KEPT = 64

#: The GCS kv namespace of the checkpoints (key: the actor id in hex).
CHECKPOINT_NAMESPACE = "actorcore.checkpoints"
#: The GCS kv namespace of the call logs (key: ``<actor id hex>/<seq, 16 digits>``).
CALL_LOG_NAMESPACE = "actorcore.calllog"


def log_prefix(actor_id: bytes) -> str:
    """The kv table prefix of one actor's logged calls (namespace included)."""
    return f"{CALL_LOG_NAMESPACE}\x00{actor_id.hex()}/"


def log_key(actor_id: bytes, seq: int) -> str:
    return f"{log_prefix(actor_id)}{seq:016d}"


@attrs.frozen
class LoggedCall:
    """One logged call as the GCS keeps it (see the module docstring)."""

    seq: int  # its place in the actor's log, from 1, never reused
    spec: CallSpec
    dep_data: list | None  # as sent (node path); None: the actor reads its refs
    results: list  # [(object_id, is_error, data)]
    node: str  # the node that ran it (where a ``STORE`` result lives)


@attrs.frozen
class StoredCheckpoint:
    """An actor's checkpoint as the GCS keeps it: the state after every logged call
    up to ``seq``, and the results of the direct calls it covered (a caller that
    resends one is answered from them)."""

    seq: int
    state: bytes
    answered: dict[bytes, list]


@attrs.define(eq=False)
class LogEntry:
    spec: CallSpec
    dep_data: list | None  # as sent (node path); None: the actor reads its refs
    results: list  # [(object_id, is_error, data)], to answer a resent call
    pinned: bool  # its argument refs are pinned in the directory until cleared
    seq: int = 0


@attrs.define(eq=False)
class CallLog:
    """The checkpoint and the calls since, of one actor that replays."""

    interval: int
    entries: collections.OrderedDict[bytes, LogEntry] = attrs.Factory(
        collections.OrderedDict)
    checkpoint: bytes | None = None
    checkpoints: int = 0  # checkpoints received
    calls_logged: int = 0  # calls logged in all
    direct_logged: int = 0  # of which came straight from their caller (``actor_log``)
    replayed: int = 0  # calls replayed in all (over every recovery)
    recoveries: int = 0
    fetched: bool = False  # the GCS was asked for it (a restart on another node)
    # task id -> results of the newest direct calls checkpoints covered (``answer``;
    # ``ANSWERED_KEPT``), oldest first
    answered: dict[bytes, list] = attrs.Factory(dict)
    seq: int = 0  # the sequence number of the newest entry
    checkpoint_seq: int = 0  # the newest entry the checkpoint covers
    gcs_floor: int = 1  # every entry below this is gone from the GCS
    in_gcs: bool = False  # something of it was written to the GCS
    restored: int = 0  # entries read back from the GCS (a restart elsewhere)

    def append(self, spec: CallSpec, dep_data: list | None, results: list,
               pinned: bool) -> LogEntry:
        self.seq += 1
        entry = self.entries[spec.task_id] = LogEntry(spec, dep_data, results, pinned,
                                                      self.seq)
        self.calls_logged += 1
        if dep_data is None:
            self.direct_logged += 1
        return entry

    def answer(self, task_id: bytes) -> list | None:
        """The results of a logged call (a caller resent it: it ran already)."""
        e = self.entries.get(task_id)
        return e.results if e is not None else self.answered.get(task_id)

    def take_checkpoint(self, state: bytes) -> list[bytes]:
        """A checkpoint after every call logged so far: keep it, drop the log.
        Returns the argument refs to unpin."""
        self.checkpoint = state
        self.checkpoints += 1
        self.checkpoint_seq = self.seq
        # The answers outlive the entries, for a caller that resends a call whose
        # answer it lost: kept for the newest direct calls, not only those this
        # checkpoint covers. A resend can come after several checkpoints: the
        # process reports and checkpoints calls faster than their answers reach
        # their caller (each waits for its ``actor_logged``), so a link that is slow
        # one way and then lost leaves calls unanswered that two checkpoints cover.
        answered = self.answered
        for tid, e in self.entries.items():
            if e.dep_data is None:
                answered[tid] = e.results
        excess = len(answered) - max(ANSWERED_KEPT, 2 * self.interval)
        for tid in list(itertools.islice(answered, max(0, excess))):
            del answered[tid]
        return self.clear()

    def stored_checkpoint(self) -> StoredCheckpoint | None:
        if self.checkpoint is None:
            return None
        return StoredCheckpoint(self.checkpoint_seq, self.checkpoint, dict(self.answered))

    def logged(self, entry: LogEntry, node: str) -> LoggedCall:
        return LoggedCall(entry.seq, entry.spec, entry.dep_data, entry.results, node)

    def clear(self) -> list[bytes]:
        unpin = [oid for e in self.entries.values() if e.pinned for oid in e.spec.deps]
        self.entries.clear()
        return unpin

    def restore(self, checkpoint: Any, calls: list[Any], here: str) -> None:
        """The log as the GCS had it when the actor's host died (a restart on this
        node, ``here``): its checkpoint, then the calls after it in their order."""
        if isinstance(checkpoint, StoredCheckpoint) and self.checkpoint is None:
            self.checkpoint = checkpoint.state
            self.checkpoint_seq = checkpoint.seq
            self.answered = dict(checkpoint.answered)
        floor = self.checkpoint_seq
        for call in sorted((c for c in calls if isinstance(c, LoggedCall)),
                           key=lambda c: c.seq):
            if call.seq <= floor or call.spec.task_id in self.entries:
                continue
            dep_data = call.dep_data
            if dep_data is not None and any(d == STORE for _err, d in dep_data):
                dep_data = None  # that copy died with its node: read the refs again
            results = call.results
            if call.node != here and any(d == STORE for _o, err, d in results):
                results = [_lost_result(oid, call) if d == STORE else (oid, err, d)
                           for oid, err, d in results]
            self.entries[call.spec.task_id] = LogEntry(call.spec, dep_data, results,
                                                       False, call.seq)
            self.seq = max(self.seq, call.seq)
            self.restored += 1
        self.seq = max(self.seq, floor)
        self.gcs_floor = floor + 1
        self.in_gcs = True

    def recovery(self) -> tuple[bytes | None, list[tuple[CallSpec, list | None]]] | None:
        """What a new incarnation restores and replays (``None``: nothing yet)."""
        if self.checkpoint is None and not self.entries:
            return None
        self.recoveries += 1
        self.replayed += len(self.entries)
        return self.checkpoint, [(e.spec, e.dep_data) for e in self.entries.values()]

    def describe(self) -> dict[str, Any]:
        return {"checkpoint_interval": self.interval, "calls_logged": self.calls_logged,
                "calls_logged_direct": self.direct_logged,
                "log_length": len(self.entries), "checkpoints": self.checkpoints,
                "checkpoint_bytes": len(self.checkpoint or b""),
                "recoveries": self.recoveries, "calls_replayed": self.replayed,
                "calls_restored_from_gcs": self.restored}


def _lost_result(oid: bytes, call: LoggedCall) -> tuple[bytes, bool, bytes]:
    error = ObjectReconstructionFailedError(
        f"object {oid.hex()}, the result of actor call {call.spec.name} (task "
        f"{call.spec.task_id.hex()}), was in the store of node {call.node[:12]}, which "
        f"died before its caller received it; the producer is an actor task, which is "
        f"not re-run to rebuild it (the call itself is in the actor's replayed log)")
    return oid, True, _serialization.dumps(error)


@attrs.define(eq=False)
class _Pending:
    actor_id: bytes
    log: CallLog
    entry: LogEntry | None  # a call to write, or
    checkpoint: StoredCheckpoint | None  # a checkpoint to write (then its entries go)
    then: Callable[[], None] | None  # runs once the write landed (or failed)


class LogWriter:
    """Writes the call logs and checkpoints of this node's actors that replay to
    the GCS, in arrival order, batched (see the module docstring).

    ``control`` is the node's ``ControlPlane`` (``call``), ``node_hex`` this node's
    id, ``spawn`` starts a task in the node's nursery. One writer task runs while
    there is something to write; each round takes everything queued.
    """

    def __init__(self, control: Any, node_hex: str, spawn: Callable[..., None]) -> None:
        self.control = control
        self.node_hex = node_hex
        self.spawn = spawn
        self.pending: list[_Pending] = []
        self.running = False
        self.writes = 0  # GCS write rounds
        self.entries_written = 0
        self.checkpoints_written = 0
        self.failures = 0

    def entry(self, actor_id: bytes, log: CallLog, entry: LogEntry,
              then: Callable[[], None] | None = None) -> None:
        """Write ``entry``; ``then`` runs once it is in the GCS."""
        log.in_gcs = True
        self._add(_Pending(actor_id, log, entry, None, then))

    def checkpoint(self, actor_id: bytes, log: CallLog) -> None:
        """Write the log's checkpoint (behind the entries queued before it)."""
        stored = log.stored_checkpoint()
        if stored is not None:
            self._add(_Pending(actor_id, log, None, stored, None))

    def _add(self, item: _Pending) -> None:
        self.pending.append(item)
        if not self.running:
            self.running = True
            self.spawn(self._run)

    async def _run(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self._write(batch)
        finally:
            self.running = False

    async def _write(self, batch: list[_Pending]) -> None:
        # Entries first, then the callers are answered, then the newest checkpoint
        # of each actor replaces the previous one and the entries it covers go.
        items = [(log_key(p.actor_id, p.entry.seq), p.log.logged(p.entry, self.node_hex))
                 for p in batch if p.entry is not None]
        if items:
            await self._put(items, "the call log")
            self.entries_written += len(items)
        for p in batch:
            if p.then is not None:
                try:
                    p.then()
                except Exception:
                    logger.exception("answering a logged call failed")
        newest: dict[bytes, _Pending] = {}
        for p in batch:
            if p.checkpoint is not None:
                newest[p.actor_id] = p
        if not newest:
            return
        keys = {aid: f"{CHECKPOINT_NAMESPACE}\x00{aid.hex()}" for aid in newest}
        failed = await self._put([(keys[aid], p.checkpoint) for aid, p in newest.items()],
                                 "a checkpoint")
        self.checkpoints_written += len(newest) - len(failed)
        deletes: list[tuple[Any, Any]] = []
        for aid, p in newest.items():
            assert p.checkpoint is not None
            log = p.log
            if not log.in_gcs or keys[aid] in failed:
                continue  # the entries stay: the GCS's checkpoint is an older one
            upto = p.checkpoint.seq
            for seq in range(log.gcs_floor, upto + 1):
                key = log_key(aid, seq)
                deletes.append((key, gcs.messages.Delete("kv", key)))
            log.gcs_floor = max(log.gcs_floor, upto + 1)
        if deletes:
            try:
                await self.control.call(lambda c: c.write_many(deletes, return_exceptions=True))
            except Exception as exc:  # left behind: a restart skips them by seq
                logger.warning("deleting %d call-log entries a checkpoint covers failed: %s",
                               len(deletes), exc)

    async def _put(self, items: list[tuple[str, Any]], what: str) -> set[str]:
        """Write ``items``; returns the keys that could not be written."""
        self.writes += 1
        try:
            with trio.fail_after(60):
                await self.control.call(lambda c: c.put_many("kv", items))
            return set()
        except gcs.ValueTooLarge:
            pass  # one of them: write the others one by one, name the one refused
        except Exception as exc:
            self.failures += 1
            logger.warning("writing %s to the GCS (%d keys) failed: %s; a restart of its "
                           "actors on another node would replay less", what, len(items), exc)
            return {key for key, _v in items}
        failed = set()
        for key, value in items:
            try:
                with trio.fail_after(60):
                    await self.control.call(lambda c, k=key, v=value: c.put("kv", k, v))
            except Exception as exc:
                self.failures += 1
                failed.add(key)
                logger.warning("writing %s to the GCS (key %r) failed: %s; a restart of its "
                               "actor on another node would replay less", what, key, exc)
        return failed

    def statistics(self) -> dict[str, int]:
        return {"write_rounds": self.writes, "entries_written": self.entries_written,
                "checkpoints_written": self.checkpoints_written, "failures": self.failures}
