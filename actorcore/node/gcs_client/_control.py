"""The node's control state, written through one small interface.

Everything durable about the cluster — registered nodes, exported functions, the
task table (lineage), jobs — goes through :class:`ControlState`, so components stay
stateless around it (paper §4.2.3). Two implementations:

- :class:`GcsControlState` over ``gcs.GcsClient`` (the real GCS, the default);
- :class:`MemoryControlState`, the same tables in this process's memory, used only
  when a node runs without a GCS (``--no-gcs``, for debugging the runtime alone).

Task specs are recorded off the critical path: ``record_task`` appends to a buffer
that a background task flushes in batches (every 50 ms, or at once when 1,000 are
waiting; later while the node's CPUs are all taken and tasks wait for them, see
`_LineageBuffer`), so a submit never waits for the GCS. Every message costs a
wake-up of another process; on a small machine those dominate, so fewer, larger
batches.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio

from ...protocol._messages import TaskSpec

if TYPE_CHECKING:
    import gcs

__all__ = ["ControlState", "ControlStatistics", "GcsControlState", "MemoryControlState"]

logger = logging.getLogger("actorcore.control")

T = TypeVar("T")

_FLUSH_INTERVAL = 0.05
_FLUSH_BATCH = 1000
#: A flush leaves a record this much younger in the buffer, for the next one (see
#: `_LineageBuffer`, "Elision"): time for its task's returns to be freed.
_ELISION_AGE = 0.05
#: Longest a flush waits for the node's ready queue to empty (see `_LineageBuffer`,
#: "A burst"), in seconds, and the most items it lets the buffer hold meanwhile.
_BUSY_DEFER = 10.0
_BUSY_HOLD = 50_000
#: Most items per GCS write of a flush (see `_LineageBuffer`, "Chunks").
_WRITE_CHUNK = 32
#: Seconds a GCS call waits for the ``gcs_client`` component to (re)connect.
_LINK_TIMEOUT = 60.0
#: Seconds a function missing from the GCS is looked for again (``get_function``),
#: and the pause between looks.
_FUNCTION_MISS_WAIT = 5.0
_FUNCTION_MISS_POLL = 0.1


class ControlState(Protocol):
    async def put_function(self, function_id: bytes, record: dict) -> None: ...
    async def get_function(self, function_id: bytes) -> dict | None: ...
    def record_task(self, spec: TaskSpec) -> None: ...
    def lineage_done(self, task_id: bytes) -> None: ...
    async def register_node(self, node_id: str, info: dict) -> None: ...
    async def put_job(self, job_id: str, info: dict) -> None: ...
    async def flush_forever(self) -> None: ...
    def defer_lineage_while(self, busy: Callable[[], bool]) -> None: ...
    def statistics(self) -> ControlStatistics: ...


@attrs.frozen(kw_only=True)
class ControlStatistics:
    """Figures of a node's control state, from ``ControlState.statistics()``.

    Attributes:
      backend: ``"gcs"`` (the real GCS) or ``"memory"`` (a node run without one).
      address: the GCS coordinator's address (``None`` for ``memory``).
      tasks_recorded: task specs written to the task table (the lineage);
        lineage_collectable: tasks marked no longer needed (every object they
        produced was freed), which the GCS may flush from memory;
        lineage_flushes: batches written; lineage_pending: items still buffered.
      lineage_elided: tasks whose record was never written, because every object
        they produced was freed before it left the buffer (see `_LineageBuffer`).
      lineage_deferrals: passes of the flusher that waited for the node's ready
        queue to empty (`_LineageBuffer`, "A burst").
      lineage_live_tasks: tasks with a return still alive (their lineage is kept).
        The node's object table counts them: ``None`` unless the node filled it in
        (its ``status`` call does).
      gcs_client: the node's GCS client (``None`` for ``memory``).
    """

    backend: str
    address: str | None
    tasks_recorded: int
    lineage_collectable: int
    lineage_flushes: int
    lineage_pending: int
    lineage_elided: int = 0
    lineage_deferrals: int = 0
    lineage_live_tasks: int | None = None
    gcs_client: gcs.GcsClientStatistics | None = None


class _Record:
    """A task's record in the lineage buffer, and when it came (the Trio clock);
    emptied when it is elided."""

    __slots__ = ("added_at", "spec")

    def __init__(self, spec: TaskSpec | None, added_at: float) -> None:
        self.spec = spec
        self.added_at = added_at


class _LineageBuffer:
    """Batches lineage writes for the task table; flushed by ``run``.

    Items are a ``TaskSpec`` (record it) or a task id (``bytes``: its lineage is no
    longer needed — every object it produced was freed — so the GCS may flush it
    from memory beyond its ``lineage_cap``).

    One flush writes the records of a batch, then its marks: two GCS writes for
    the batch, however the two kinds interleave. (Batches used to end at every
    change of kind, and tasks run one at a time buffer exactly ``record, mark,
    record, mark, ...``: two GCS round trips per task, a third of the node's CPU
    per sync task.) Records before marks is the order that matters: a mark must
    never reach the GCS before the record it marks, or the mark finds nothing and
    the record then stays uncollectable for ever. Within a batch every mark's
    record is either in the same batch, earlier (so it is written first), or
    written by an earlier flush; a record that comes *after* a mark of the same
    task (recorded again, say for a re-run) ends the batch, so that it is written
    after that mark, as it was added.

    Chunks. A batch goes out in writes of at most `_WRITE_CHUNK` items, records
    first. Encoding a write and applying it (the replica shares the node's loop on
    a one-node cluster) are steps of the node's Trio loop that nothing else runs
    during: with tasks run one at a time on a quiet machine a 50 ms batch holds
    about 110 records and 110 marks, and writing each kind in one piece blocked the
    loop for milliseconds at a time (steps of the flusher and of the replica's
    request handler of 2-5 ms and more, measured by CPU time per step). A task that
    arrived then waited for it: on average (sum of the blocks squared) / (2 x 50 ms),
    about 0.1 ms per sync task, the wall-clock loss that the batching showed on a
    quiet machine while it cut the node's CPU per task by 40 %. Chunks of 32 keep
    each block a few tenths of a millisecond for a few more GCS writes per batch
    (about 3 us per task).

    Elision. A task whose returns are all freed before its record leaves the buffer
    needs no lineage: nothing can ask for one of its returns again, which is what a
    mark says. Its record and its mark would reach the GCS only for the mark to let
    the record go, so neither is written (``elided``). That is the common case for
    tasks run one at a time (``get`` of each result, then the ref dropped, all
    within the 50 ms a batch waits), and writing both was a third of the node's
    CPU per such task. A record already taken into a batch being written is
    marked as before.

    A flush takes only records at least ``_ELISION_AGE`` old (and what precedes
    them), unless the buffer holds a full batch: the rest wait for the next flush.
    A sync task's returns are freed a few milliseconds after its end (the driver
    sends its `Free` lazily, within ``core_worker.LAZY_FLUSH``), so a record
    written by the first flush after it arrived was written whenever it came in
    that flush's last ~20 ms: a third of the records of tasks run one at a time,
    each written and then marked, two GCS writes that the node's CPU paid for.
    Held back, it is elided like the others; lineage reaches the GCS within
    ``_ELISION_AGE + _FLUSH_INTERVAL`` instead of ``_FLUSH_INTERVAL``. Records are held in `_Record` boxes: an elided one is
    emptied in place and the flusher skips it, so no search of the buffer is
    needed; ``unwritten`` finds the box of a task's latest record.

    A burst. While tasks wait in the node's ready queue for a worker (``busy``,
    the node's; `defer_while`), every CPU of the node is taken and the node's loop
    is what the queue waits on: it dispatches, reads the ends and answers. Writing
    the burst's records then took a quarter of that loop's time (10,000 no-op tasks
    submitted at once, then fetched: the flusher's encoding and the in-process
    replica's apply, about 30 us of the node's 120-160 us per task), and the
    burst's refs are typically all freed right after it ends, which makes every
    one of those records worthless a second later. So a flush that finds the node
    busy waits, polling every interval, until its ready queue is empty, then one
    interval more and as long as marks keep coming (the ``get`` of the burst's
    last results returns, its refs go, and their frees elide the records), and
    writes what is left. The wait is bounded: at most ``_BUSY_DEFER`` seconds
    from its start (one deadline per pass over the buffer), and at most
    ``_BUSY_HOLD`` items in the buffer, so a node that is never idle still writes
    its lineage, later and in bigger batches (10,000 tasks take 1.5 s on a quiet
    2-core machine and 5-15 s at load 15-35: the bound is set to cover them). What this costs: a record reaches the GCS up to ``_BUSY_DEFER``
    seconds later while the node is saturated, and the buffer holds up to
    ``_BUSY_HOLD`` boxes (each keeps its spec alive, which the node's own lineage
    keeps anyway up to its cap). No rebuild waits for a deferred record: the node
    rebuilds from its own copy of the specs (``object_manager._lineage``), and a
    record lost in a dead node's buffer is of a task submitted on that node, whose
    owner died with it (its objects fail with the owner, as in Ray).
    """

    def __init__(self) -> None:
        self.buffer: collections.deque[_Record | bytes] = collections.deque()
        # task id -> the box of its latest record, until a flush takes it
        self.unwritten: dict[bytes, _Record] = {}
        self.event = trio.Event()
        self.full = trio.Event()
        self.recorded = 0
        self.collected = 0
        self.elided = 0
        self.flushes = 0
        self.deferrals = 0
        self.marks_added = 0  # (how a deferred flush sees a burst's frees end)
        # Whether tasks wait in the node's ready queue (see "A burst"); set by the
        # node through `defer_while`. Never: a buffer with nobody to say.
        self.busy: Callable[[], bool] = lambda: False

    def defer_while(self, busy: Callable[[], bool]) -> None:
        """Hold a flush back while ``busy()`` says the node's CPUs are all taken
        and tasks wait for them (see "A burst"), within the bounds."""
        self.busy = busy

    def statistics(self, *, backend: str, address: str | None,
                   gcs_client: gcs.GcsClientStatistics | None = None) -> ControlStatistics:
        return ControlStatistics(
            backend=backend,
            address=address,
            tasks_recorded=self.recorded,
            lineage_collectable=self.collected,
            lineage_flushes=self.flushes,
            lineage_pending=len(self.buffer),
            lineage_elided=self.elided,
            lineage_deferrals=self.deferrals,
            gcs_client=gcs_client,
        )

    def add(self, item: TaskSpec | bytes) -> None:
        if isinstance(item, bytes):
            self.marks_added += 1
            box = self.unwritten.pop(item, None)
            if box is not None:  # freed before its record was written: neither is
                box.spec = None
                self.elided += 1
                return
            self.buffer.append(item)
        else:
            box = _Record(item, trio.current_time())
            older = self.unwritten.get(item.task_id)
            if older is not None:  # recorded again (a retry): the latest stands
                older.spec = None
            self.unwritten[item.task_id] = box
            self.buffer.append(box)
        n = len(self.buffer)
        if n == 1:
            self.event.set()
        elif n == _FLUSH_BATCH:
            self.full.set()

    async def flush_forever(self, write: Any, collect: Any) -> None:
        # A batch leaves the buffer only once it is written: the flusher runs in the
        # ``gcs_client`` component, and a crash (or restart) of that component
        # cancels a write half way; its successor writes the same batch again (the
        # task table's writes are idempotent by task id), so no lineage is lost.
        buffer = self.buffer
        while True:
            if not buffer:
                await self.event.wait()
                self.event = trio.Event()
            # Also with records held back by the last flush: they age meanwhile.
            with trio.move_on_after(_FLUSH_INTERVAL):
                await self.full.wait()
            self.full = trio.Event()
            # One deadline per pass over the buffer: a burst's records keep it
            # from emptying while it runs, and a deadline per batch would hold the
            # oldest records back for longer than ``_BUSY_DEFER``. Within it, a
            # batch waits again whenever the queue has filled again (a submitter
            # slower than the node empties it for a moment).
            deadline: float | None = None
            while buffer:
                if self.busy():
                    if deadline is None:
                        deadline = trio.current_time() + _BUSY_DEFER
                        self.deferrals += 1
                    await self._wait_until_idle(deadline)
                specs: list[Any] = []
                marks: list[bytes] = []
                marked: set[bytes] = set()
                n = 0
                unwritten = self.unwritten
                # Records added after this wait for the next flush (docstring).
                newest = (trio.current_time() - _ELISION_AGE
                          if len(buffer) < _FLUSH_BATCH else float("inf"))
                for item in buffer:  # (nothing appends while this loop runs)
                    if n == _FLUSH_BATCH:
                        break
                    if isinstance(item, bytes):
                        marks.append(item)
                        marked.add(item)
                    elif (spec := item.spec) is None:
                        pass  # elided (docstring)
                    elif item.added_at > newest:
                        break  # too young: the next flush (docstring)
                    elif marked and spec.task_id in marked:
                        break  # recorded again after its mark: after it (docstring)
                    else:
                        specs.append(spec)
                        # Taken: a mark from now on goes to the GCS after it.
                        if unwritten.get(spec.task_id) is item:
                            del unwritten[spec.task_id]
                    n += 1
                if not n:
                    break  # the oldest record is too young: the next flush
                try:
                    # A retry after a failed mark writes the records again: the
                    # task table's writes are idempotent by task id, and the marks
                    # still follow them.
                    for i in range(0, len(specs), _WRITE_CHUNK):
                        await write(specs[i : i + _WRITE_CHUNK])
                    for i in range(0, len(marks), _WRITE_CHUNK):
                        await collect(marks[i : i + _WRITE_CHUNK])
                except Exception as exc:  # the GCS is failing over: keep the batch
                    logger.warning("lineage: writing %d items failed: %s", n, exc)
                    await trio.sleep(0.1)
                    break
                for _ in range(n):
                    buffer.popleft()
                self.recorded += len(specs)
                self.collected += len(marks)
                self.flushes += 1

    async def _wait_until_idle(self, deadline: float) -> None:
        """Wait for the node's ready queue to empty, then for the frees that follow
        a burst (one interval, and more while marks keep coming), within
        ``deadline`` and ``_BUSY_HOLD`` items (see "A burst")."""
        while self.busy():
            if len(self.buffer) >= _BUSY_HOLD or trio.current_time() >= deadline:
                return
            await trio.sleep(_FLUSH_INTERVAL)
        seen = -1
        while self.marks_added != seen and trio.current_time() < deadline:
            seen = self.marks_added
            await trio.sleep(_FLUSH_INTERVAL)


class MemoryControlState:
    """The control tables in this process (no GCS)."""

    backend = "memory"
    client = None

    def __init__(self) -> None:
        self.functions: dict[bytes, dict] = {}
        self.tasks: dict[bytes, dict] = {}
        self.nodes: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self._lineage = _LineageBuffer()
        self.address: str | None = None

    async def put_function(self, function_id: bytes, record: dict) -> None:
        self.functions[function_id] = record

    async def get_function(self, function_id: bytes) -> dict | None:
        return self.functions.get(function_id)

    def record_task(self, spec: TaskSpec) -> None:
        self._lineage.add(spec)

    def lineage_done(self, task_id: bytes) -> None:
        self._lineage.add(task_id)

    def defer_lineage_while(self, busy: Callable[[], bool]) -> None:
        self._lineage.defer_while(busy)

    async def _write_tasks(self, batch: list[TaskSpec]) -> None:
        for spec in batch:
            self.tasks[spec.task_id] = spec.lineage_record()

    async def _collect(self, task_ids: list[bytes]) -> None:
        for tid in task_ids:
            self.tasks.pop(tid, None)

    async def register_node(self, node_id: str, info: dict) -> None:
        self.nodes[node_id] = info

    async def put_job(self, job_id: str, info: dict) -> None:
        self.jobs[job_id] = info

    async def republish(self) -> tuple[int, int]:
        return 0, 0  # the tables are here: nothing was lost

    async def flush_forever(self) -> None:
        """Write the lineage buffer behind, for ever (run by ``gcs_client``)."""
        await self._lineage.flush_forever(self._write_tasks, self._collect)

    def statistics(self) -> ControlStatistics:
        return self._lineage.statistics(backend="memory", address=None)


class GcsControlState:
    """The control tables in the GCS, through a ``gcs.GcsClient``.

    The node owns this object; the ``gcs_client`` component owns the link. The
    component connects, ``attach``-es its client and runs the lineage flusher; when
    it crashes or restarts its client closes and it ``detach``-es. What must outlive
    a restart — the lineage buffer (unwritten task records), the function cache —
    stays here, so the restarted component carries on where the last one stopped.
    ``client`` is the last attached client (``None`` until the first): a caller
    that must not fail while the link restarts goes through ``call`` instead.
    """

    backend = "gcs"

    def __init__(self) -> None:
        self.client: Any = None
        self.address: str | None = None
        self._lineage = _LineageBuffer()
        self._functions: dict[bytes, dict] = {}
        self._jobs: dict[str, dict] = {}  # the jobs this node wrote (``republish``)
        self._linked = trio.Event()
        self._calls: set[trio.CancelScope] = set()  # ``call``s in flight
        self.links = 0  # clients attached so far (1 + the link's restarts)

    def attach(self, client: Any, address: str) -> None:
        """The ``gcs_client`` component connected ``client`` to the GCS at ``address``."""
        self.client = client
        self.address = address
        self.links += 1
        self._linked.set()

    def detach(self) -> None:
        """The component's client is closing: ``wait_client`` waits for the next one,
        and calls made through ``call`` on this one start again on the next."""
        if self._linked.is_set():
            self._linked = trio.Event()
        for scope in self._calls:
            scope.cancel()

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(client)`` with the live client.

        A client that is being closed (its component crashed) would let the call
        retry inside it until its timeout: instead the call is cancelled when its
        client is detached and made again through the next one. ``fn`` must be
        idempotent (every GCS write of the node is: puts by key, name claims by
        actor id)."""
        while True:
            client = await self.wait_client()
            with trio.CancelScope() as scope:
                self._calls.add(scope)
                try:
                    return await fn(client)
                finally:
                    self._calls.discard(scope)

    @property
    def linked(self) -> bool:
        return self._linked.is_set()

    async def wait_client(self) -> Any:
        """The live GCS client, once the ``gcs_client`` component has one.

        Raises ``gcs.GcsUnavailable`` if the link is not up within
        ``_LINK_TIMEOUT`` seconds (the component failed for good)."""
        if not self._linked.is_set():
            with trio.move_on_after(_LINK_TIMEOUT):
                await self._linked.wait()
            if not self._linked.is_set():
                import gcs

                raise gcs.GcsUnavailable(
                    f"the node's GCS link (gcs_client) was not up within {_LINK_TIMEOUT:g} s "
                    f"(last GCS address {self.address})"
                )
        return self.client

    async def put_function(self, function_id: bytes, record: dict) -> None:
        self._functions[function_id] = record
        await self.call(lambda c: c.functions.export(function_id.hex(), record))

    async def get_function(self, function_id: bytes) -> dict | None:
        """The function's record, ``None`` if it is not in the GCS.

        A function is exported before any task or actor that uses it is submitted,
        so a miss means the GCS restarted empty and the node that exported it has
        not written it again yet (it does within about a heartbeat interval, see
        ``_link``): a miss is asked again for up to ``_FUNCTION_MISS_WAIT`` s before
        it counts. Only misses pay this."""
        record = self._functions.get(function_id)
        if record is None:
            key = function_id.hex()
            with trio.move_on_after(_FUNCTION_MISS_WAIT):
                while True:
                    record = await self.call(lambda c: c.functions.get(key))
                    if record is not None:
                        break
                    await trio.sleep(_FUNCTION_MISS_POLL)
            if record is not None:
                self._functions[function_id] = record
        return record

    def record_task(self, spec: TaskSpec) -> None:
        self._lineage.add(spec)

    def lineage_done(self, task_id: bytes) -> None:
        self._lineage.add(task_id)

    def defer_lineage_while(self, busy: Callable[[], bool]) -> None:
        """Hold the lineage flush back while ``busy()`` (the node's ready queue has
        tasks): see `_LineageBuffer`, "A burst"."""
        self._lineage.defer_while(busy)

    async def _collect(self, task_ids: list[bytes]) -> None:
        # One waiting task per GCS shard for the whole batch, not one per task.
        await (await self.wait_client()).tasks.mark_collectable_many([tid.hex() for tid in task_ids])

    async def _write_tasks(self, batch: list[TaskSpec]) -> None:
        import gcs  # (loaded already: the node runs the GCS)

        items = [(s.task_id.hex(), s.lineage_record()) for s in batch]
        try:
            await (await self.wait_client()).tasks.add_many(items)
        except gcs.BadRequest:
            # A record the GCS refuses (say, over its value limit) must not hold back
            # the rest for ever (the buffer retries a failed batch): write them one by
            # one and drop the refused ones. Unavailability still retries the batch.
            for item in items:
                try:
                    await (await self.wait_client()).tasks.add_many([item])
                except gcs.BadRequest as exc:
                    logger.warning("lineage: the GCS refused task %s: %s", item[0], exc)

    async def register_node(self, node_id: str, info: dict) -> None:
        await self.call(lambda c: c.nodes.register(node_id, info))

    async def put_job(self, job_id: str, info: dict) -> None:
        self._jobs[job_id] = info
        await self.call(lambda c: c.jobs.put(job_id, info))

    async def republish(self) -> tuple[int, int]:
        """The GCS restarted empty: export every function this node knows again
        (first export wins: the same record) and write its jobs again. Returns the
        counts (functions, jobs)."""
        functions = list(self._functions.items())
        jobs = list(self._jobs.items())

        async def write(c: Any) -> None:
            for fid, record in functions:
                await c.functions.export(fid.hex(), record)
            for job_id, info in jobs:
                await c.jobs.put(job_id, info)

        await self.call(write)
        return len(functions), len(jobs)

    async def flush_forever(self) -> None:
        """Write the lineage buffer behind, for ever (run by ``gcs_client``)."""
        await self._lineage.flush_forever(self._write_tasks, self._collect)

    def statistics(self) -> ControlStatistics:
        return self._lineage.statistics(
            backend="gcs", address=self.address,
            gcs_client=self.client.statistics() if self.client is not None else None)
