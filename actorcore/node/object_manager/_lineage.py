"""Lineage: the specs of the tasks whose returns may have to be rebuilt, and the rebuild.

Paper §4.2.3: a lost object is rebuilt by re-running the task that made it, first
rebuilding any of that task's arguments that are lost too, recursively. The node
where a task was submitted (its owner's node) keeps the task's ``TaskSpec`` here
(it also goes to the GCS task table, through ``control.record_task``; the copy here
is the one that is re-run: it carries every field, retries left included).

How long a spec is kept. A spec is needed while anything may ask for one of its
returns: while one of them lives (the owner has not freed it) or while the spec
of a task that took one of them as an argument is kept (rebuilding that task's
return needs the argument again). So each record counts its *references*: its
live returns, plus one per kept spec that depends on it. At zero the record goes
and hands its task to ``control.lineage_done`` (the GCS may flush it), releasing
its own references on the tasks it depends on, which may go in turn. A chain
``a -> b -> c`` whose driver holds only ``c`` thus keeps all three specs, and
freeing ``c`` releases the whole chain at once.

The cap. At most ``cap`` specs are kept (``init(lineage_cap=...)``, the node's
``--lineage-cap``, else ``ACTORCORE_GCS_LINEAGE_CAP``); past it the oldest is
evicted even though it is referenced. Its task id is remembered (in a bounded
set), so that a later rebuild that needs it fails with
``ObjectReconstructionFailedLineageEvictedError`` saying so, instead of a vaguer
error; its reference count lives on without the spec (``evicted_live``), so its
GCS record is handed to ``lineage_done`` only once its returns are freed, as
before.

The rebuild (``reconstruct``). Called where a loss is found: every node holding a
large value died (``_remote.on_node_dead``), the pull home of a task's result
failed (``_remote``), or a reader found the store no longer has it (a spill file
that vanished: the ``rebuild`` request of a core worker). For the lost object's
task, with its spec kept here and retries left (a rebuild counts against
``max_retries`` like a worker's death):

1. its returns that are lost become *pending* again in the directory
   (``ObjectDirectory.reset``), so every ``get``, ``wait`` and dependent task
   simply waits for them, as for any result not produced yet;
2. each argument that is no longer in the directory (its owner freed it) is
   rebuilt first, the same way, recursively; such an argument is owned by nobody,
   so it is marked freed and pinned only until the task that needs it is done;
3. the spec is submitted again (``sched.submit``: placed like a new task).

Generator tasks (``num_returns="streaming"`` or ``"dynamic"``) are kept too. Their
record counts the stream's end (their one return) and each item the node has seen
(``items_made``: item ids are deterministic, ``stream_item_id(task, index)``, so
the set of counted items says which drops count). A lost item is rebuilt as Ray
does, by re-running the whole generator: the end becomes pending again with the
lost items, the re-run re-yields every item with the same ids, the lost ones are
made ready again (the others are ready already: first writer wins), and a
re-yielded item nobody holds any more is let go at once. When the re-run's end
is ready while a lost item is still pending (the generator yielded fewer items,
or failed first), that item becomes ``ObjectReconstructionFailedError`` saying
so: a generator must yield the same items each run to be rebuilt. Two cases wait
instead of deciding: an item lost while its generator has not ended (its end is
pending: it runs, or is retried after its worker or node died) joins that run,
which may yield it again; and an item the run made on another node may still be
on its way home when the end (a small value) arrives, and its copy decides. An
item that joined a run and was yielded before it was lost gets a run of its own.

One rebuild per task at a time: a task being rebuilt is in ``rebuilding`` until
its first lost return is ready again, and any other request for one of its
returns meanwhile finds the entry pending and waits with the others. When a
rebuild is impossible the caller puts the returned error in the directory in
place of the value, so whoever waits fails at once with it (never a hang).

Everything here is synchronous code on the node's loop, owned by the node, so a
crash of any component loses none of it. On a one-node cluster the cost per task
is a dict insert and a look-up per argument; nothing reads or writes the GCS.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import attrs

from ...exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
)
from ...protocol import _serialization
from ...protocol._ids import STREAM_BASE, is_stream_item, task_id_of
from ...protocol._messages import TaskSpec

__all__ = ["ACTOR_CALL_MEMORY", "EVICTED_MEMORY", "Lineage", "LineageStatistics", "is_put"]

logger = logging.getLogger("actorcore.lineage")

#: Task ids of evicted records remembered, to say "evicted" when one is needed.
EVICTED_MEMORY = 100_000

#: Task ids of actor calls whose results this node recorded, remembered so that a
#: lost one fails saying that its producer is an actor task.
ACTOR_CALL_MEMORY = 100_000

_PUT_TASK_SUFFIX = b"\xff" * 8


def is_put(oid: bytes) -> bool:
    """Whether ``oid`` was made by ``put`` (no task: nothing to re-run)."""
    return oid[8:16] == _PUT_TASK_SUFFIX


@attrs.define(slots=True, eq=False)
class _Record:
    spec: TaskSpec
    refs: int  # live returns + kept specs that depend on this one
    holds: list[bytes]  # task ids of the kept specs this one references


@attrs.frozen(kw_only=True)
class LineageStatistics:
    """Figures of a node's lineage, from ``Lineage.statistics()``.

    Attributes:
      kept: task specs kept for rebuilding (``cap`` at most).
      cap: the most that are kept.
      evicted: records dropped by the cap while still referenced.
      rebuilds: tasks re-run to rebuild a lost return; rebuilding: in progress.
      failed: rebuilds refused (no retries left, lineage evicted, no lineage).
    """

    kept: int
    cap: int
    evicted: int
    rebuilds: int
    rebuilding: int
    failed: int


class Lineage:
    """The node's kept task specs and the rebuild of lost objects (module docstring)."""

    def __init__(self, node: Any, cap: int) -> None:
        self.node = node
        self.cap = cap
        #: task id -> record, oldest first (eviction order). An OrderedDict: the cap
        #: evicts at the front on every record once full, and a plain dict walked
        #: from its start (``next(iter(d))``) steps over the slots of every entry
        #: deleted since its last resize (5 us a task at the default cap).
        self.records: collections.OrderedDict[bytes, _Record] = collections.OrderedDict()
        self.evicted_ids: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        #: evicted task id -> its references still alive (no spec kept).
        self.evicted_live: dict[bytes, int] = {}
        #: tasks being re-run to rebuild a return.
        self.rebuilding: set[bytes] = set()
        #: generator task id -> the items counted in its record's references, and
        #: how many items its runs were seen to yield (the highest index + 1).
        self.items: dict[bytes, set[bytes]] = {}
        self.yielded: dict[bytes, int] = {}
        #: generator task id being re-run -> its lost items, checked at its end,
        #: and those found lost while it ran (they may have been yielded already).
        self.lost_items: dict[bytes, list[bytes]] = {}
        self.joined_items: dict[bytes, list[bytes]] = {}
        #: task ids of actor calls whose results were recorded here (bounded).
        self.actor_calls: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.evicted = 0
        self.rebuilds = 0
        self.failed = 0

    # -- bookkeeping -------------------------------------------------------------

    def record(self, spec: TaskSpec) -> None:
        """``spec`` was submitted here (or retried: the same task id, counted once)."""
        tid = spec.task_id
        records = self.records
        if tid in records:
            records[tid].spec = spec
            return
        if spec.num_returns == 0:
            # No output anyone can ask for: nothing to keep.
            self.node.control.lineage_done(tid)
            return
        holds: list[bytes] = []
        for dep in spec.deps:
            dtid = task_id_of(dep)
            rec = records.get(dtid)
            if rec is not None and dtid != tid and dtid not in holds:
                rec.refs += 1
                holds.append(dtid)
        # A generator's one return is its end; its items count as they come.
        records[tid] = _Record(spec, max(spec.num_returns, 1), holds)
        if len(records) > self.cap:
            self._evict_oldest()

    def live_tasks(self) -> int:
        return len(self.records)

    def kept_specs(self) -> list[TaskSpec]:
        """The specs kept now, oldest first (written again after a GCS reset)."""
        return [rec.spec for rec in self.records.values()]

    def return_dropped(self, oid: bytes) -> None:
        """The owner freed ``oid`` (it left the directory): one reference less."""
        tid = task_id_of(oid)
        if is_stream_item(oid):
            counted = self.items.get(tid)
            if counted is None or oid not in counted:
                return  # an actor's item, or one never counted: no reference
            counted.discard(oid)
            if not counted:
                del self.items[tid]
        self._release(tid)

    def items_made(self, oids: list[bytes], existed: set[bytes]) -> list[bytes]:
        """A generator yielded ``oids`` (in the directory now; ``existed``: those
        that had an entry before, ready or awaited). Each item of a kept task
        counts as a reference of its record, once. Returns the items nobody
        wants: re-yielded by a rebuild's re-run but no longer held (let go)."""
        tid = task_id_of(oids[0])
        if tid not in self.records and tid not in self.evicted_live:
            return []
        counted = self.items.setdefault(tid, set())
        rerun = tid in self.rebuilding
        yielded = self.yielded.get(tid, 0)
        unwanted = []
        for oid in oids:
            index = _item_index(oid)
            if index >= yielded:
                yielded = index + 1
            elif rerun and oid not in counted and oid not in existed:
                # Seen before and let go since: nobody holds it. (One past what an
                # earlier run was seen to yield is new: its owner may still iterate
                # to it.)
                unwanted.append(oid)
                continue
            self._count(oid, counted)
        self.yielded[tid] = yielded
        if not counted:
            del self.items[tid]
        return unwanted

    def _count(self, oid: bytes, counted: set[bytes] | None = None) -> None:
        """``oid`` has a directory entry again (made by a rebuild, or an item seen
        first): one reference more on its task's record, as for a new return."""
        tid = task_id_of(oid)
        if is_stream_item(oid):
            if counted is None:
                counted = self.items.setdefault(tid, set())
            if oid in counted:
                return
            counted.add(oid)
        rec = self.records.get(tid)
        if rec is not None:
            rec.refs += 1
        elif tid in self.evicted_live:
            self.evicted_live[tid] += 1

    def actor_call(self, task_id: bytes) -> None:
        """The results of actor call ``task_id`` are recorded here: if one is lost,
        the error says its producer is an actor task (never re-run)."""
        calls = self.actor_calls
        calls[task_id] = None
        if len(calls) > ACTOR_CALL_MEMORY:
            calls.popitem(last=False)

    def _release(self, tid: bytes) -> None:
        records = self.records
        stack = [tid]
        while stack:
            t = stack.pop()
            rec = records.get(t)
            if rec is None:
                left = self.evicted_live.get(t)
                if left is not None:
                    if left <= 1:
                        del self.evicted_live[t]
                        self.yielded.pop(t, None)
                        self.node.control.lineage_done(t)
                    else:
                        self.evicted_live[t] = left - 1
                continue
            rec.refs -= 1
            if rec.refs > 0:
                continue
            del records[t]
            self.yielded.pop(t, None)
            self.node.control.lineage_done(t)
            stack.extend(rec.holds)

    def _evict_oldest(self) -> None:
        records = self.records
        while len(records) > self.cap:
            tid, rec = records.popitem(last=False)
            self.evicted += 1
            self.evicted_ids[tid] = None
            if len(self.evicted_ids) > EVICTED_MEMORY:
                self.evicted_ids.popitem(last=False)
            # Only the spec goes from here: its GCS record stays until the task's
            # returns are freed (the count goes on without the spec).
            self.evicted_live[tid] = rec.refs
            for held in rec.holds:
                self._release(held)

    def spec_of(self, oid: bytes) -> TaskSpec | None:
        rec = self.records.get(task_id_of(oid))
        return rec.spec if rec is not None else None

    # -- the rebuild ---------------------------------------------------------------

    def reconstruct(self, oid: bytes, why: str) -> BaseException | None:
        """Every copy of ``oid`` is gone (``why`` says how): re-run its task.

        Returns ``None`` when a rebuild runs (started now, or already running); the
        directory entry of ``oid`` is pending until it is done. Otherwise the error
        to put in its place, naming the object, its task and why it cannot be
        rebuilt; nothing was changed.
        """
        try:
            # A dry pass first, so that a rebuild that cannot be done (an argument's
            # lineage evicted, say) re-runs nothing at all.
            self._rebuild(oid, why, set(), dry=True)
        except ObjectLostError as exc:
            self.failed += 1
            logger.warning("object %s cannot be rebuilt: %s", oid.hex(), exc)
            return exc
        self._rebuild(oid, why, set(), dry=False)
        return None

    def _rebuild(self, oid: bytes, why: str, visiting: set[bytes], *, dry: bool) -> None:
        tid = task_id_of(oid)
        node = self.node
        directory = node.directory
        if tid in self.rebuilding or tid in visiting:
            if not dry:
                # Joins the rebuild under way: the re-run puts it.
                self._reset(oid)
                joined = self.joined_items.get(tid)
                if joined is not None and oid not in joined:
                    joined.append(oid)
            return
        if self._join_run(oid, why, dry=dry):
            return
        spec = self._check(oid, why)
        visiting.add(tid)
        # Arguments first: one that left the directory (its owner freed it) is
        # rebuilt too, when it was made here (its spec is kept or was evicted, or
        # its owner is a process of this node: the typed error says why not).
        # One owned by another node is fetched from there as for any argument.
        rebuilt_args: list[bytes] = []
        live: set[bytes] | None = None
        for dep in spec.deps:
            if dep in directory.entries:
                continue
            dtid = task_id_of(dep)
            if dtid not in self.records and dtid not in self.evicted_ids:
                if live is None:
                    live = node.clients.live_id_prefixes()
                if dep[:8] not in live:
                    continue
            self._rebuild(dep, f"it is an argument of task {spec.name}, rebuilt "
                               f"because {why}", visiting, dry=dry)
            rebuilt_args.append(dep)
        if dry:
            return
        # Then the task itself: the lost return pending again, and a new attempt.
        if spec.max_retries > 0:
            spec.max_retries -= 1
        spec.attempt += 1
        self.rebuilds += 1
        self.rebuilding.add(tid)
        self._reset(oid)
        node.remote.forget_locations([oid])
        # The entry whose readiness ends the rebuild: the lost return, or for a
        # generator its end, pending again too, after which any lost item still
        # pending was not yielded again.
        watch = oid
        if spec.num_returns < 0:
            watch = spec.return_ids()[0]
            self.lost_items[tid] = [oid] if oid != watch else []
            self.joined_items[tid] = []
            if watch != oid:
                # (Called from the previous run's `_ended`, this is inside the
                # end's own `put`: the directory keeps an entry that a waiter made
                # pending again, with the waiter this rebuild adds below.)
                absent = watch not in directory.entries
                self._reset(watch)
                if absent:  # its owner freed it: it goes once the re-run is done
                    directory.free([watch])
        # Its arguments stay in the directory until it is done, even if their owner
        # frees them meanwhile: the re-run may read them from another node (a
        # forwarded task is not pinned here). Those rebuilt for it are owned by
        # nobody: marked freed, they go once it is done with them.
        pinned = [d for d in spec.deps if d in directory.entries]
        directory.pin(pinned)
        if rebuilt_args:
            directory.free(rebuilt_args)

        def done(end: Any) -> None:
            self._ended(tid, spec, why, end, pinned)

        directory.when_ready(watch, done)
        logger.info("rebuilding object %s: re-running task %s (attempt %d, %s retries "
                    "left) because %s", oid.hex(), spec.name, spec.attempt + 1,
                    "unlimited" if spec.max_retries < 0 else spec.max_retries, why)
        node.sched.submit(spec)

    def _join_run(self, oid: bytes, why: str, *, dry: bool) -> bool:
        """``oid`` is an item of a generator task that has not ended (its end is
        pending: it runs, or is retried after its worker or node died): no new run;
        the one under way may yield it again, and if it ends without doing so
        (the item came before it was lost) a run of its own rebuilds it then.
        Whether it was so."""
        if not is_stream_item(oid):
            return False
        tid = task_id_of(oid)
        rec = self.records.get(tid)
        if rec is None:
            return False
        directory = self.node.directory
        end = rec.spec.return_ids()[0]
        e = directory.entries.get(end)
        if e is None or e.ready:
            return False
        if dry:
            return True
        self.rebuilding.add(tid)
        self._reset(oid)
        self.node.remote.forget_locations([oid])
        self.lost_items[tid] = []
        self.joined_items[tid] = [oid]
        logger.info("object %s is lost (%s): its generator task %s has not ended, and "
                    "may yield it again", oid.hex(), why, rec.spec.name)
        directory.when_ready(end, lambda end_entry: self._ended(tid, rec.spec, why,
                                                               end_entry, []))
        return True

    def _ended(self, tid: bytes, spec: TaskSpec, why: str, end: Any,
               pinned: list[bytes]) -> None:
        """The run that rebuilds task ``tid``'s returns ended (``end``: its end's
        entry, for a generator; else the lost return's)."""
        directory = self.node.directory
        self.rebuilding.discard(tid)
        directory.unpin(pinned)
        # An item the run made on another node may still be on its way here (its
        # end, a small value, overtakes its copy): that copy makes it ready, or
        # fails and rebuilds it (``_remote``).
        coming = self.node.remote.locations
        lost = [i for i in self.lost_items.pop(tid, ()) if i not in coming]
        joined = [i for i in self.joined_items.pop(tid, ()) if i not in coming]
        for item in lost:
            e = directory.entries.get(item)
            if e is not None and not e.ready:
                self.failed += 1
                directory.put(item, True, _serialization.dumps(
                    ObjectReconstructionFailedError(
                        f"object {item.hex()} is lost ({why}) and cannot be rebuilt: "
                        f"re-running its generator task {spec.name} ({tid.hex()}) "
                        f"{'ended with an error' if end.is_error else 'ended'} "
                        f"without yielding item {_item_index(item)} again (a "
                        f"generator must yield the same items each run to be "
                        f"rebuilt)")))
        # An item lost while the run went on may have been yielded before it was
        # found lost (its put then changed nothing): it needs a run of its own.
        for item in joined:
            e = directory.entries.get(item)
            if e is not None and not e.ready:
                err = self.reconstruct(item, why)
                if err is not None:
                    directory.put(item, True, _serialization.dumps(err))

    def _reset(self, oid: bytes) -> None:
        """``oid`` pending again; counted again if it had left the directory."""
        directory = self.node.directory
        if oid not in directory.entries:
            self._count(oid)
        directory.reset(oid)

    def _check(self, oid: bytes, why: str) -> TaskSpec:
        """The spec to re-run for ``oid``, or the typed error saying why there is none."""
        tid = task_id_of(oid)
        if is_put(oid):
            raise ObjectLostError(
                f"object {oid.hex()} is lost: it was made by put(), so there is no task "
                f"to re-run, and its only copy is gone ({why})")
        rec = self.records.get(tid)
        if rec is None:
            if tid in self.evicted_ids:
                raise ObjectReconstructionFailedLineageEvictedError(
                    f"object {oid.hex()} is lost ({why}) and cannot be rebuilt: the "
                    f"lineage of its task {tid.hex()} was evicted by the lineage cap "
                    f"({self.cap} task specs kept; init(lineage_cap=...) raises it)")
            if tid in self.actor_calls:
                raise ObjectReconstructionFailedError(
                    f"object {oid.hex()} is lost ({why}) and cannot be rebuilt: its "
                    f"producer is an actor task ({tid.hex()}), and actor tasks are not "
                    f"re-run to rebuild their results (the actor's state has moved on)")
            raise ObjectReconstructionFailedError(
                f"object {oid.hex()} is lost ({why}) and cannot be rebuilt: this node "
                f"has no lineage for its task {tid.hex()} (the result of an actor "
                f"call, which is not re-run, or of a task submitted elsewhere)")
        spec = rec.spec
        if spec.max_retries == 0:
            raise ObjectReconstructionFailedMaxAttemptsExceededError(
                f"object {oid.hex()} is lost ({why}) and cannot be rebuilt: task "
                f"{spec.name} ({tid.hex()}) has no retries left after {spec.attempt + 1} "
                f"attempt(s) (max_retries counts every re-run)")
        return spec

    def statistics(self) -> LineageStatistics:
        return LineageStatistics(kept=len(self.records), cap=self.cap, evicted=self.evicted,
                                 rebuilds=self.rebuilds, rebuilding=len(self.rebuilding),
                                 failed=self.failed)


def _item_index(oid: bytes) -> int:
    """The index (from 0) of a generator's item ``oid`` among the values it yielded."""
    return int.from_bytes(oid[16:20], "big") - STREAM_BASE
