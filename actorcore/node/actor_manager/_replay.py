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
  cleared the log meanwhile: the results of the direct calls of the segment a
  checkpoint cleared are kept until the next one (``answered``) for that.

Every ``checkpoint_interval`` calls the process sends ``actor_ckpt`` with the
state behind the calls it reported: the node keeps it (and writes it behind to the
GCS, where a restart on another node finds it) and clears the log. After a loss
the new process gets ``(checkpoint, logged calls)`` with its creation
(``recovery``): constructor, ``__actorcore_restore__(state)``, the logged calls in
their order with their results discarded, then ``actor_ready``; calls queued or in
flight follow, each run once.

Reports from a process the node has given up on (an earlier incarnation, or a
connection that is not the actor's current one) are ignored: that process is dead
or being killed, and nobody was answered on their strength.

The log holds each call's arguments and results until the next checkpoint; the
argument objects of calls routed through the node stay pinned in the directory
until then (the replay reads them again).
"""

from __future__ import annotations

import collections
from typing import Any

import attrs

from ...protocol._actors import CallSpec

__all__ = ["CallLog", "CHECKPOINT_NAMESPACE"]

#: The GCS kv namespace of the checkpoints (key: the actor id in hex).
CHECKPOINT_NAMESPACE = "actorcore.checkpoints"


@attrs.define(eq=False)
class LogEntry:
    spec: CallSpec
    dep_data: list | None  # as sent (node path); None: the actor reads its refs
    results: list  # [(object_id, is_error, data)], to answer a resent call
    pinned: bool  # its argument refs are pinned in the directory until cleared


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
    persisted: bool = True  # the checkpoint is in the GCS (or there is none)
    fetched: bool = False  # the GCS was asked for it (a restart on another node)
    # task id -> results of the direct calls the last checkpoint covered (``answer``)
    answered: dict[bytes, list] = attrs.Factory(dict)

    def append(self, spec: CallSpec, dep_data: list | None, results: list,
               pinned: bool) -> None:
        self.entries[spec.task_id] = LogEntry(spec, dep_data, results, pinned)
        self.calls_logged += 1
        if dep_data is None:
            self.direct_logged += 1

    def answer(self, task_id: bytes) -> list | None:
        """The results of a logged call (a caller resent it: it ran already)."""
        e = self.entries.get(task_id)
        return e.results if e is not None else self.answered.get(task_id)

    def take_checkpoint(self, state: bytes) -> list[bytes]:
        """A checkpoint after every call logged so far: keep it, drop the log.
        Returns the argument refs to unpin."""
        self.checkpoint = state
        self.checkpoints += 1
        self.persisted = False
        self.answered = {tid: e.results for tid, e in self.entries.items()
                         if e.dep_data is None}
        return self.clear()

    def clear(self) -> list[bytes]:
        unpin = [oid for e in self.entries.values() if e.pinned for oid in e.spec.deps]
        self.entries.clear()
        return unpin

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
                "recoveries": self.recoveries, "calls_replayed": self.replayed}
