"""The shard state machine and the durable log, without any I/O but files."""

from __future__ import annotations

import pickle

import pytest

from gcs import BadRequest, UnknownTable, ValueTooLarge, VersionMismatch
from gcs._durable import ShardLog, read_log, recover_shard
from gcs._messages import Delete, Get, MarkCollectable, Put, Row, Scan, SetAdd, SetRemove
from gcs._state import ShardState


def put(table: str, key: str, value: object, expect: int | None = None) -> Put:
    return Put(table, key, pickle.dumps(value), expect)


def run(state: ShardState, client_id: str, batch: list[tuple[int, object]]) -> tuple:
    """`ShardState.execute` of ``[(client_seq, op), ...]``."""
    return state.execute(client_id, [seq for seq, _ in batch], [op for _, op in batch])


def test_execute_numbers_updates_and_versions() -> None:
    s = ShardState()
    results, wait, new = run(s, "c", [(1, put("kv", "a", 1)), (2, put("kv", "b", 2))])
    assert results == [1, 2] and wait == 2 and [u[0] for u in new] == [1, 2]
    assert s.read(Get("kv", "a")) == Row("a", pickle.dumps(1), 1)
    results, _, _ = run(s, "c", [(3, put("kv", "a", 3, expect=5))])
    assert isinstance(results[0], VersionMismatch)
    assert results[0].expected == 5 and results[0].actual == 1
    assert "kv['a'] is at version 1, expected 5" in str(results[0])
    results, _, _ = run(s, "c", [(4, put("kv", "new", 0, expect=0)), (5, Delete("kv", "zz"))])
    assert results == [3, False]


def test_retried_write_is_applied_once() -> None:
    s = ShardState()
    run(s, "c", [(1, put("kv", "a", 1))])
    run(s, "d", [(1, put("kv", "a", 2))])
    results, wait, new = run(s, "c", [(1, put("kv", "a", 1))])  # a retry of c/1
    assert results == [1] and wait == 1 and new == []
    assert s.read(Get("kv", "a")).version == 2


def test_followers_reach_the_same_state_and_detect_gaps() -> None:
    head, follower = ShardState(), ShardState()
    _, _, new = run(head, "c", [(i, put("kv", f"k{i}", i)) for i in range(10)])
    for update in new:
        assert follower.apply(update)
    assert not follower.apply(new[3])  # already applied: skipped
    assert follower.tables == head.tables and follower.dedup == head.dedup
    _, _, more = run(head, "c", [(20, put("kv", "x", 1)), (21, put("kv", "y", 1))])
    with pytest.raises(ValueError, match="gap"):
        follower.apply(more[1])


def test_sets_and_bad_operations() -> None:
    s = ShardState()
    results, _, _ = run(s, "c", [
        (1, SetAdd("object_locations", "o", "n1")),
        (2, SetAdd("object_locations", "o", "n1")),
        (3, SetAdd("object_locations", "o", "n2")),
        (4, SetRemove("object_locations", "o", "n1")),
        (5, ("bogus", "kv", "k", None, None)),
        (6, Put("nope", "k", b"x")),
        (7, Put("kv", 5, b"x")),
        (8, Put("kv", "k", "not-bytes")),  # type: ignore[arg-type]
        (9, Put("kv", "k", b"x" * 100)),
        (10, SetAdd("kv", "plain", "m")),
    ])
    assert results[:4] == [True, False, True, True]
    assert s.read(Get("object_locations", "o")).value == frozenset({"n2"})
    assert isinstance(results[4], BadRequest) and "unknown write operation tuple" in str(results[4])
    assert isinstance(results[5], UnknownTable) and "'nope'" in str(results[5])
    assert isinstance(results[6], BadRequest) and "key must be str or bytes" in str(results[6])
    assert isinstance(results[7], BadRequest) and "must be bytes" in str(results[7])
    s2 = ShardState(max_value_bytes=10)
    r, _, _ = run(s2, "c", [(1, Put("kv", "k", b"x" * 100))])
    assert isinstance(r[0], ValueTooLarge) and r[0].size == 100 and r[0].limit == 10


def test_lineage_flushing_keeps_the_newest_marked_entries() -> None:
    s = ShardState(lineage_cap=3)
    run(s, "c", [(i, put("tasks", f"t{i}", i)) for i in range(10)])
    run(s, "c", [(100 + i, MarkCollectable("tasks", f"t{i}")) for i in range(6)])
    assert sorted(s.tables["tasks"]) == ["t3", "t4", "t5", "t6", "t7", "t8", "t9"]
    assert list(s.collectable["tasks"]) == ["t3", "t4", "t5"]
    assert s.evicted == 3
    zero = ShardState(lineage_cap=0)
    run(zero, "c", [(1, put("tasks", "t", 1)), (2, MarkCollectable("tasks", "t"))])
    assert zero.tables["tasks"] == {} and zero.collectable["tasks"] == {}


def test_log_keeps_uncommitted_and_a_bounded_committed_tail() -> None:
    s = ShardState(replay_buffer=5)
    run(s, "c", [(i, put("kv", "k", i)) for i in range(20)])
    assert len(s.log) == 20  # nothing committed yet: everything kept for resending
    done = s.commit(12)
    assert [u[0] for u in done] == list(range(1, 13))
    assert s.oldest_replayable() == 8  # 5 committed kept (8..12) + uncommitted 13..20
    assert [u[0] for u in s.updates_after(10)] == list(range(11, 21))
    assert s.updates_after(3) is None
    assert s.updates_after(20) == []


def test_a_held_log_keeps_what_a_successor_still_needs_up_to_a_limit() -> None:
    # While a snapshot goes out, the tail commits on: what it applies meanwhile must
    # still be in the log when the stream resumes after the snapshot (else another
    # snapshot follows, and another, while the writers keep up).
    s = ShardState(replay_buffer=5)
    run(s, "c", [(i, put("kv", "k", i)) for i in range(10)])
    s.commit(10)
    s.hold_log(s.applied + 1)  # a snapshot at 10
    run(s, "c", [(i, put("kv", "k", i)) for i in range(10, 40)])
    s.commit(40)
    assert [u[0] for u in s.updates_after(10)] == list(range(11, 41))
    s.hold_log(31)  # streamed up to 30
    assert s.oldest_replayable() == 31
    s.hold_log(None)
    assert s.oldest_replayable() == 36 and s.updates_after(30) is None
    # A hold lapses once the log would grow past the limit beyond the replay buffer.
    s.log_hold_limit = 20
    s.hold_log(s.applied + 1)
    run(s, "c", [(i, put("kv", "k", i)) for i in range(40, 100)])
    s.commit(100)
    assert s.held_from is None and len(s.log) == 5


def test_commit_and_updates_after_return_the_asked_updates_from_either_end() -> None:
    # commit() and updates_after() walk the log from the end nearer to what they
    # return: every range of a long log, both walks, gives the updates in order.
    s = ShardState(replay_buffer=40)
    seq = 0
    for step in range(1, 30):
        run(s, "c", [(seq + i, put("kv", f"k{i % 7}", i)) for i in range(1, step % 5 + 2)])
        seq += step % 5 + 2
        before = s.acked
        target = s.applied - step % 4
        done = s.commit(target)
        assert [u[0] for u in done] == list(range(before + 1, max(before, target) + 1))
        first = s.oldest_replayable()
        for after in range(first - 1, s.applied + 1):
            for limit in (None, 1, 3, 1000):
                got = s.updates_after(after, limit)
                end = s.applied if limit is None else min(s.applied, after + limit)
                assert [u[0] for u in got] == list(range(after + 1, end + 1))


def test_dedup_record_and_marks_stay_bounded_oldest_out_first() -> None:
    s = ShardState(dedup_entries=4, lineage_cap=2)
    run(s, "c", [(i, put("tasks", f"t{i}", i)) for i in range(1, 9)])
    assert list(s.dedup) == [("c", 5), ("c", 6), ("c", 7), ("c", 8)]
    results, _, _ = run(s, "c", [(8, put("tasks", "t8", "again"))])
    assert results == [8] and len(s.dedup) == 4  # a retry answered, nothing added
    # A mark deleted from the middle (the key deleted) leaves the order of the rest.
    run(s, "c", [(10, MarkCollectable("tasks", "t1")), (11, MarkCollectable("tasks", "t2")),
                 (12, Delete("tasks", "t1")), (13, MarkCollectable("tasks", "t3")),
                 (14, MarkCollectable("tasks", "t4"))])
    assert list(s.collectable["tasks"]) == ["t3", "t4"]
    assert sorted(s.tables["tasks"]) == ["t3", "t4", "t5", "t6", "t7", "t8"]
    copy = ShardState(dedup_entries=4)
    copy.restore(s.snapshot())
    run(copy, "c", [(15, put("kv", "x", 1))])
    assert list(copy.dedup) == [("c", 12), ("c", 13), ("c", 14), ("c", 15)]
    assert list(copy.collectable["tasks"]) == ["t3", "t4"]


def test_snapshot_restore_and_scan() -> None:
    s = ShardState()
    run(s, "c", [(1, put("kv", "a/1", 1)), (2, put("kv", "a/2", 2)), (3, put("kv", "b", 3)),
                    (4, put("kv", b"a/bytes", 4))])
    copy = ShardState()
    copy.restore(s.snapshot())
    assert copy.applied == 4 and copy.tables == s.tables
    assert [row.key for row in copy.read(Scan("kv", "a/"))] == ["a/1", "a/2"]
    assert [row.key for row in copy.read(Scan("kv", "", 1))] == ["a/1"]


def test_durable_log_survives_a_torn_tail(tmp_path) -> None:
    s = ShardState()
    log = ShardLog(str(tmp_path), 0, "r1", fsync=False, compact_every=1000)
    log.start(s)
    for i in range(5):
        _, _, new = run(s, "c", [(i, put("kv", f"k{i}", i))])
        log.append(new, s)
    log.close()
    with open(log.path, "ab") as f:
        f.write(b"\x50\x00\x00\x00garbage")  # a crash mid-record
    back = ShardState()
    assert read_log(log.path, back) == 6  # snapshot + 5 batches
    assert back.applied == 5 and back.tables == s.tables
    # recovery picks the longest log of the shard
    short = ShardLog(str(tmp_path), 0, "r2", fsync=False, compact_every=1000)
    short.start(ShardState())
    short.close()
    again = ShardState()
    assert recover_shard(str(tmp_path), 0, again) == log.path
    assert again.applied == 5


def test_durable_log_compacts(tmp_path) -> None:
    s = ShardState()
    log = ShardLog(str(tmp_path), 0, "r", fsync=True, compact_every=4)
    log.start(s)
    for i in range(10):
        _, _, new = run(s, "c", [(i, put("kv", "k", i))])
        log.append(new, s)
    assert log.records < 4
    log.close()
    back = ShardState()
    read_log(log.path, back)
    assert back.applied == 10 and back.read(Get("kv", "k")).value == pickle.dumps(9)
