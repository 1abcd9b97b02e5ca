"""Durable mode: each replica appends its shard's updates to its own log file.

Layout: ``<durable_dir>/shard_<i>/<replica-incarnation>.log``. A file is a sequence
of records, each ``<u32 length><u32 crc32><pickle>``; a record is either
``("S", snapshot)`` (a full `ShardState.snapshot`) or ``("U", [update, ...])`` (one
applied batch). A file always starts with a snapshot record, so it alone rebuilds
the state. A torn or corrupt tail record (crash mid-write) ends the file: what came
before it is kept.

Recovery (a whole-GCS restart): the first replica of a shard to register with the
coordinator is its *seed*; it reads every log of the shard, keeps the one that
reaches the highest sequence number, rewrites it as its own log (one snapshot
record) and deletes the others. The other replicas then join behind it by state
transfer and start their own logs with the transferred snapshot. The coordinator
deletes the log of a replica it declares dead, so a stale log never wins.

Compaction: after ``compact_every`` records the replica rewrites its log as one
snapshot (write to a temporary file, fsync, rename: a crash leaves the old or the
new file, never neither). Evicted (flushed) lineage stays in older records until the
next compaction -- the paper's "flush to disk" -- and is gone from memory at once.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import attrs

from ._state import ShardState, Update

__all__ = ["ShardLog", "ShardLogStatistics", "read_log", "recover_shard"]

_HEADER = struct.Struct("<II")


def shard_dir(durable_dir: str, shard: int) -> Path:
    path = Path(durable_dir) / f"shard_{shard}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _encode(record: Any) -> bytes:
    payload = pickle.dumps(record, protocol=5)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_log(path: Path, state: ShardState) -> int:
    """Replay the log at ``path`` into ``state``; return the number of good records."""
    count = 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break  # a torn tail: keep what came before
        kind, body = pickle.loads(payload)
        if kind == "S":
            state.restore(body)
        else:
            try:
                for update in body:
                    state.apply(update)
            except ValueError:
                break  # a gap: cannot continue past it
        pos += _HEADER.size + length
        count += 1
    state.commit(state.applied)
    return count


def recover_shard(durable_dir: str, shard: int, state: ShardState) -> Path | None:
    """Load the best log of ``shard`` into ``state``; return its path (None if none)."""
    best: tuple[int, Path, ShardState] | None = None
    for path in sorted(shard_dir(durable_dir, shard).glob("*.log")):
        candidate = ShardState(
            replay_buffer=state.replay_buffer,
            dedup_entries=state.dedup_entries,
            lineage_cap=state.lineage_cap,
            max_value_bytes=state.max_value_bytes,
        )
        try:
            read_log(path, candidate)
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError):
            continue
        if best is None or candidate.applied > best[0]:
            best = (candidate.applied, path, candidate)
    if best is None:
        return None
    state.restore(best[2].snapshot())
    state.commit(state.applied)
    return best[1]


@attrs.frozen(kw_only=True)
class ShardLogStatistics:
    """Figures of one replica's durable log, from `ShardLog.statistics()`.

    Attributes:
      path: the log file; records, bytes: its records (the snapshot that starts
        it counts one) and size since it was last compacted.
    """

    path: str
    records: int
    bytes: int


class ShardLog:
    """The append-only log of one replica incarnation."""

    def __init__(self, durable_dir: str, shard: int, name: str, *, fsync: bool, compact_every: int):
        self.dir = shard_dir(durable_dir, shard)
        self.path = self.dir / f"{name}.log"
        self.fsync = fsync
        self.compact_every = compact_every
        self.records = 0
        self.bytes = 0
        self._file: Any = None

    def start(self, state: ShardState, *, remove_others: bool = False) -> None:
        """Begin (or restart) the log with a snapshot of ``state``."""
        self._rewrite(state)
        if remove_others:
            for path in self.dir.glob("*.log"):
                if path != self.path:
                    path.unlink(missing_ok=True)

    def _rewrite(self, state: ShardState) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(_encode(("S", state.snapshot())))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if self._file is not None:
            self._file.close()
        self._file = open(self.path, "ab")  # noqa: SIM115 -- held open for appends
        self.records = 1
        self.bytes = self.path.stat().st_size

    def append(self, updates: list[Update], state: ShardState) -> None:
        """Append one applied batch; compact when the log grew long."""
        if self._file is None or not updates:
            return
        record = _encode(("U", updates))
        self._file.write(record)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.records += 1
        self.bytes += len(record)
        if self.records >= self.compact_every:
            self._rewrite(state)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def statistics(self) -> ShardLogStatistics:
        return ShardLogStatistics(path=str(self.path), records=self.records, bytes=self.bytes)
