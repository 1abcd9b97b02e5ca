"""One shard's replicated state machine (pure, synchronous, no I/O).

Every replica of a shard holds a `ShardState`. Only the head *executes* client
operations (`execute`): it checks conditions (expected versions, set membership),
turns each operation into zero or more *updates* -- physical effects such as "key k
of table t now holds value v" -- numbers them with the shard's next sequence numbers
and applies them. Every other replica only *applies* updates (`apply`), in sequence
order, so all replicas pass through the same states and a sequence number names the
same state everywhere. That is what makes chain repair, resubscription and state
transfer simple: "send me everything after seq N" has one answer.

An update is an `Update`: the tuple ``(seq, kind, table, key, value, client_id,
client_seq, result)`` with kind

  ``"P"`` put ``value``;  ``"D"`` delete;  ``"E"`` evict (flush a collectable entry
  from memory: not a user-visible delete, not published);  ``"M"`` mark the key
  collectable;  ``"N"`` no state change (still carries the dedup record).

The last update of each successful client operation is its dedup record: it names
the write (``client_id``, ``client_seq``) and what it returned (``result``);
``client_id`` is None on the others. Replicating it means a *new* head, after the old one
died, still knows which retried writes it already applied and what they returned.

Sequence numbers: ``applied`` is the last update applied here; ``acked`` the last
one the tail acknowledged (committed). The log (`log`) keeps every update after
``acked`` -- a predecessor must be able to resend them to a new successor -- plus the
last ``replay_buffer`` committed ones, from which subscribers resume after a
failover. A key's *version* is the sequence number of the update that last wrote it
(0 means absent), which gives compare-and-set (``expect``) for free.

Why an update is a plain tuple, when every message is a typed class: the log keeps
up to ``replay_buffer`` committed updates (20,000) per replica, and a tuple of
atoms is the one record the garbage collector stops tracking. As attrs instances
they stayed tracked, every full collection walked them all, and a replica spent
about twice the CPU per write (measured: 4.7 -> 9.7 us per put at R=1, 14 -> 23 us
at R=3, most of the difference in the collector). So updates stay tuples inside
this module and the replica, and cross the chain as the columns of a `Forward`
(`forward_of`, `updates_of`): typed on the wire, no object per update at either
end.
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

import attrs

from ._errors import BadRequest, GcsError, VersionMismatch
from ._messages import (
    Delete,
    Forward,
    Get,
    Key,
    Put,
    ReadOp,
    Row,
    SetAdd,
    SetRemove,
    ShardSnapshot,
    WriteOp,
)
from ._protocol import TABLES, validate_write

__all__ = ["ShardState", "ShardStateStatistics", "Update", "forward_of", "updates_of"]

#: ``(seq, kind, table, key, value, client_id, client_seq, result)``: see above.
Update = tuple[int, str, str, Key, Any, Any, int, Any]


def forward_of(updates: list[Update]) -> Forward:
    """The `Forward` message of consecutive ``updates`` (at least one)."""
    columns = map(list, zip(*updates, strict=True))
    seqs, kinds, tables, keys, values, client_ids, client_seqs, results = columns
    return Forward(seqs, kinds, tables, keys, values, client_ids, client_seqs, results)


def updates_of(message: Forward) -> list[Update]:
    """The updates a `Forward` carries, as the log keeps them."""
    return list(zip(message.seqs, message.kinds, message.tables, message.keys, message.values,
                    message.client_ids, message.client_seqs, message.results, strict=True))

#: Updates beyond the replay buffer the log may keep for a held successor (`hold_log`).
_LOG_HOLD_LIMIT = 100_000

#: An effect of one client operation: (kind, table, key, value), numbered when applied.
_Effect = tuple[str, str, Key, Any]


@attrs.frozen(kw_only=True)
class ShardStateStatistics:
    """Figures of one replica's copy of a shard, from `ShardState.statistics()`.

    Attributes:
      applied: the sequence number of the last update applied here; acked: of the
        last one the tail acknowledged (committed).
      keys: entries in all tables; table_keys: entries per table (tables with any).
      log_length: updates kept for resending, state transfer and replay.
      dedup_entries: recent write results kept so that a retried write is answered,
        not applied twice.
      collectable: lineage entries marked no longer needed, still in memory;
        evicted: such entries flushed from memory beyond ``lineage_cap``.
    """

    applied: int
    acked: int
    keys: int
    table_keys: dict[str, int]
    log_length: int
    dedup_entries: int
    collectable: int
    evicted: int


class ShardState:
    """Tables, sequence numbers, the recent-update log and the dedup record of one shard."""

    def __init__(
        self,
        *,
        replay_buffer: int = 20_000,
        dedup_entries: int = 200_000,
        lineage_cap: int = 10_000,
        max_value_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.replay_buffer = replay_buffer
        self.dedup_entries = dedup_entries
        self.lineage_cap = lineage_cap
        self.max_value_bytes = max_value_bytes
        self.tables: dict[str, dict[Key, tuple[Any, int]]] = {t: {} for t in TABLES}
        # Oldest first. Both are trimmed at the front once per write, so neither may
        # be a plain dict walked from its start (``next(iter(d))``, ``islice(d, n)``):
        # a dict keeps the slots of its deleted entries until it is resized, and the
        # walk steps over every one of them. Trimmed that way the dedup record cost
        # 20 us per write once it was full (200,000 entries, after about 100,000
        # tasks' lineage writes) and 60 us after 200,000 more, growing with every
        # write until the dict happened to be resized: a million queued tasks never
        # finished. `collectable` loses entries from the middle too (a delete), so
        # it is an OrderedDict (O(1) both ways); the dedup record loses them only at
        # the front, so it is a dict beside a deque of its keys in order (8 bytes
        # an entry, where an OrderedDict costs 50 more).
        self.collectable: dict[str, OrderedDict[Key, None]] = {
            t: OrderedDict() for t in TABLES}
        self.dedup: dict[tuple[Any, int], tuple[int, Any]] = {}
        self._dedup_order: deque[tuple[Any, int]] = deque()
        self.log: deque[Update] = deque()
        #: While set, the log keeps every update from this sequence number on (see
        #: `hold_log`), up to ``log_hold_limit`` updates beyond the replay buffer.
        self.held_from: int | None = None
        self.log_hold_limit = max(replay_buffer, _LOG_HOLD_LIMIT)
        self.applied = 0
        self.acked = 0
        self.evicted = 0
        #: Names this shard's history (set by its seed, carried by state transfer and
        #: the durable log): sequence numbers compare only within one history. A
        #: shard that lost its state (an in-memory GCS restarted as a whole) starts a
        #: new one, which tells clients to drop their "seen" sequence numbers.
        self.history = uuid.uuid4().hex

    # ------------------------------------------------------------------ head side

    def execute(
        self, client_id: Any, seqs: list[int], ops: list[WriteOp]
    ) -> tuple[list[Any], int, list[Update]]:
        """Run a batch of client writes at the head: ``ops[i]`` is the client's write
        number ``seqs[i]``.

        Returns ``(results, wait_seq, updates)``: per-op results (a value or a
        `GcsError` instance), the sequence number that must be committed before the
        results may be released, and the new updates (already applied here).
        """
        results: list[Any] = []
        new: list[Update] = []
        wait = self.acked
        for client_seq, op in zip(seqs, ops, strict=True):
            known = self.dedup.get((client_id, client_seq))
            if known is not None:
                seq, result = known
                results.append(result)
                wait = max(wait, seq)
                continue
            try:
                validate_write(op, self.max_value_bytes)
                result, effects = self._plan(op)
            except GcsError as exc:
                results.append(exc)
                wait = max(wait, self.applied)
                continue
            last = len(effects) - 1
            for i, (kind, table, key, value) in enumerate(effects):
                update: Update
                if i == last:  # the dedup record
                    update = (self.applied + 1, kind, table, key, value,
                              client_id, client_seq, result)
                else:
                    update = (self.applied + 1, kind, table, key, value, None, 0, None)
                self.apply(update)
                new.append(update)
            results.append(result)
            wait = max(wait, self.applied)
        return results, wait, new

    def _plan(self, op: WriteOp) -> tuple[Any, list[_Effect]]:
        table, key = op.table, op.key
        current = self.tables[table].get(key)
        version = current[1] if current is not None else 0
        kind = type(op)  # (exact types: `validate_write` let nothing else through)
        expect = op.expect if kind is Put or kind is Delete else None  # type: ignore[union-attr]
        if expect is not None and expect != version:
            raise VersionMismatch(
                f"{table}[{key!r:.80}] is at version {version}, expected {expect}",
                table=table,
                key=key,
                expected=expect,
                actual=version,
            )
        if kind is Put:
            assert isinstance(op, Put)
            return self.applied + 1, [("P", table, key, op.value)]
        if isinstance(op, Delete):
            if current is None:
                return False, [("N", table, key, None)]
            return True, [("D", table, key, None)]
        if isinstance(op, SetAdd | SetRemove):
            adding = isinstance(op, SetAdd)
            members = current[0] if current is not None else frozenset()
            if not isinstance(members, frozenset):
                raise BadRequest(
                    f"{table}[{key!r:.80}] holds a plain value, not a set; "
                    f"cannot {'add to' if adding else 'remove from'} it",
                    table=table,
                    key=key,
                )
            if (op.member in members) == adding:
                return False, [("N", table, key, None)]
            if adding:
                return True, [("P", table, key, members | {op.member})]
            rest = members - {op.member}
            return True, [("P", table, key, rest) if rest else ("D", table, key, None)]
        # MarkCollectable: the runtime no longer needs this entry (e.g. lineage of a
        # task whose outputs are all released); keep the newest `lineage_cap` marked
        # entries per table and flush the rest.
        if current is None:
            return False, [("N", table, key, None)]
        effects: list[_Effect] = [("M", table, key, None)]
        marked = self.collectable[table]
        excess = len(marked) + (key not in marked) - self.lineage_cap
        if excess > 0:
            for old in itertools.islice(marked, excess):
                effects.append(("E", table, old, None))
            if len(effects) <= excess:  # the new key itself is over the cap
                effects.append(("E", table, key, None))
        return True, effects

    # ------------------------------------------------------------- every replica

    def apply(self, update: Update) -> bool:
        """Apply ``update`` if it is the next one; False if already applied.

        Raises `ValueError` on a gap (a missing update): the caller must resync.
        """
        seq, kind, table, key, value, client_id, client_seq, result = update
        if seq <= self.applied:
            return False
        if seq != self.applied + 1:
            raise ValueError(f"update {seq} does not follow {self.applied}: gap in the chain")
        if kind == "P":
            self.tables[table][key] = (value, seq)
        elif kind in ("D", "E"):
            self.tables[table].pop(key, None)
            self.collectable[table].pop(key, None)
            if kind == "E":
                self.evicted += 1
        elif kind == "M":
            self.collectable[table][key] = None
        if client_id is not None:
            dedup = self.dedup
            name = (client_id, client_seq)
            if name not in dedup:
                self._dedup_order.append(name)
            dedup[name] = (seq, result)
            if len(dedup) > self.dedup_entries:
                del dedup[self._dedup_order.popleft()]
        self.applied = seq
        self.log.append(update)
        self._trim()
        return True

    def commit(self, seq: int) -> list[Update]:
        """Record that the tail acknowledged up to ``seq``; return the newly committed updates."""
        seq = min(seq, self.applied)
        if seq <= self.acked:
            return []
        old, self.acked = self.acked, seq
        # The newly committed updates lie just before the uncommitted ones at the
        # log's end: read them from the right, in O(new updates). (``islice`` from
        # the left stepped over the whole replay buffer, 20,000 updates, on every
        # commit.)
        log = self.log
        first = log[0][0] if log else self.applied + 1
        start = max(old + 1, first)
        tail = self.applied - seq  # uncommitted updates after the new ones
        count = seq - start + 1
        if count <= 0:
            done: list[Update] = []
        else:
            from_right = itertools.islice(reversed(log), tail, tail + count)
            done = list(from_right)
            done.reverse()
        self._trim()
        return done

    def _trim(self) -> None:
        log = self.log
        held = self.held_from
        if held is not None and len(log) > self.replay_buffer + self.log_hold_limit:
            held = self.held_from = None  # held too long: the successor starts over
        while (log and log[0][0] <= self.acked and self.acked - log[0][0] >= self.replay_buffer
               and (held is None or log[0][0] < held)):
            log.popleft()

    def hold_log(self, seq: int | None) -> None:
        """Keep every update from ``seq`` on in the log (None: release the hold).

        For a successor that is sent a snapshot, or is caught up from the log, while
        we go on committing: the tail's log keeps only ``replay_buffer`` committed
        updates, and what it applies meanwhile must still be there when the stream
        resumes where the snapshot ended. Without the hold a snapshot that took
        longer than the replay buffer's worth of writes was followed by another,
        again and again while the writers kept up (with a buffer of 10 and four
        writers, a learner received 3-6 snapshots). The hold lapses once the log
        holds ``log_hold_limit`` updates beyond the replay buffer (a successor that
        slow is sent a fresh snapshot, as before, rather than let the log grow
        without bound).
        """
        self.held_from = seq
        self._trim()

    def updates_after(self, seq: int, limit: int | None = None) -> list[Update] | None:
        """Updates with sequence number > ``seq`` (at most ``limit``), or None if trimmed."""
        if seq >= self.applied:
            return []
        if not self.log or self.log[0][0] > seq + 1:
            return None
        log = self.log
        n = len(log)
        start = seq + 1 - log[0][0]
        stop = n if limit is None else min(n, start + limit)
        if start > n - start:
            # Nearer the end (a successor that keeps up reads the last few updates
            # of a log holding the whole replay buffer): walk from the right.
            out = list(itertools.islice(reversed(log), n - stop, n - start))
            out.reverse()
            return out
        return list(itertools.islice(log, start, stop))

    def oldest_replayable(self) -> int:
        return self.log[0][0] if self.log else self.applied + 1

    # ------------------------------------------------------------------- reading

    def read(self, op: ReadOp) -> Row | None | list[Row]:
        """`Get` -> its `Row`, or None if absent; `Scan` -> the matching rows, by key."""
        if isinstance(op, Get):
            found = self.tables[op.table].get(op.key)
            return None if found is None else Row(op.key, found[0], found[1])
        prefix: Any = op.prefix
        kind = type(prefix)
        keys = sorted(k for k in self.tables[op.table] if type(k) is kind and k.startswith(prefix))
        if op.limit is not None:
            keys = keys[:op.limit]
        table = self.tables[op.table]
        return [Row(k, table[k][0], table[k][1]) for k in keys]

    # ------------------------------------------------------------ state transfer

    def snapshot(self) -> ShardSnapshot:
        """A consistent copy at ``applied`` (shallow: stored values are immutable)."""
        return ShardSnapshot(
            applied=self.applied,
            acked=self.acked,
            tables={t: dict(d) for t, d in self.tables.items() if d},
            collectable={t: dict(d) for t, d in self.collectable.items() if d},
            dedup=dict(self.dedup),
            history=self.history,
        )

    def snapshot_parts(self, entries: int) -> Iterator[ShardSnapshot]:
        """`snapshot` in parts of at most ``entries`` table rows, collectable marks
        and dedup records together (at least one part): what `merge_parts` puts
        together again. The copy is taken at the call, so the state may change
        while the parts are sent."""
        snap = self.snapshot()
        sources: list[tuple[str, str, dict[Key, Any]]] = [
            ("tables", t, d) for t, d in snap.tables.items()]
        sources += [("collectable", t, d) for t, d in snap.collectable.items()]
        part: dict[str, Any] = {"tables": {}, "collectable": {}, "dedup": {}}
        room = entries

        def cut() -> ShardSnapshot:
            nonlocal part, room
            done = ShardSnapshot(applied=snap.applied, acked=snap.acked, history=snap.history,
                                 **part)
            part, room = {"tables": {}, "collectable": {}, "dedup": {}}, entries
            return done

        for field, table, rows in sources:
            rows_left = iter(rows.items())
            while chunk := dict(itertools.islice(rows_left, room)):
                part[field].setdefault(table, {}).update(chunk)
                room -= len(chunk)
                if room == 0:
                    yield cut()
        dedup_left = iter(snap.dedup.items())
        while records := dict(itertools.islice(dedup_left, room)):
            part["dedup"].update(records)
            room -= len(records)
            if room == 0:
                yield cut()
        if room < entries or not (snap.tables or snap.collectable or snap.dedup):
            yield cut()

    @staticmethod
    def merge_parts(parts: list[ShardSnapshot]) -> ShardSnapshot:
        """The snapshot whose `snapshot_parts` ``parts`` are (in order)."""
        first = parts[0]
        tables: dict[str, dict[Key, tuple[Any, int]]] = {}
        collectable: dict[str, dict[Key, None]] = {}
        dedup: dict[tuple[Any, int], tuple[int, Any]] = {}
        for part in parts:
            for table, rows in part.tables.items():
                tables.setdefault(table, {}).update(rows)
            for table, marks in part.collectable.items():
                collectable.setdefault(table, {}).update(marks)
            dedup.update(part.dedup)
        return ShardSnapshot(applied=first.applied, acked=first.acked, tables=tables,
                             collectable=collectable, dedup=dedup, history=first.history)

    def restore(self, snap: ShardSnapshot) -> None:
        """Replace everything by ``snap`` (from `snapshot`, possibly of another replica)."""
        self.history = snap.history
        self.tables = {t: dict(snap.tables.get(t, {})) for t in TABLES}
        self.collectable = {t: OrderedDict(snap.collectable.get(t, {})) for t in TABLES}
        self.dedup = dict(snap.dedup)
        self._dedup_order = deque(self.dedup)
        self.applied = snap.applied
        self.acked = min(snap.acked, snap.applied)
        self.log.clear()
        self.held_from = None

    def statistics(self) -> ShardStateStatistics:
        return ShardStateStatistics(
            applied=self.applied,
            acked=self.acked,
            keys=sum(len(d) for d in self.tables.values()),
            table_keys={t: len(d) for t, d in self.tables.items() if d},
            log_length=len(self.log),
            dedup_entries=len(self.dedup),
            collectable=sum(len(d) for d in self.collectable.values()),
            evicted=self.evicted,
        )
