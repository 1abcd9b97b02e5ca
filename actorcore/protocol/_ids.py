"""Identifiers: jobs, nodes, workers, tasks and objects.

Every id is a ``bytes`` value, cheap to hash, compare and pickle. The layout follows
Ray's so that an object id tells which task produced it:

- ``TaskID``: 16 bytes = an 8-byte random prefix chosen once per process (and per
  driver session) plus an 8-byte counter. Unique across the cluster without
  coordination, and generating one costs a counter increment (no ``os.urandom`` per
  task). The prefix also names the owner: every id a process creates starts with it.
- ``ObjectID``: 20 bytes = the producing task's id plus a 4-byte index. Return values
  of a task use indices 1..num_returns; ``put`` objects use a per-process "put task"
  id and a running index.
- ``NodeID``, ``WorkerID``: 16 random bytes. ``JobID``: 4 bytes.
"""

from __future__ import annotations

import itertools
import os
import struct

__all__ = [
    "TASK_ID_SIZE",
    "OBJECT_ID_SIZE",
    "new_task_id",
    "new_put_id",
    "put_id_prefix",
    "new_node_id",
    "new_worker_id",
    "new_job_id",
    "return_ids",
    "task_id_of",
    "short",
    "renew_prefix",
    "id_prefix",
    "owner_prefix",
    "STREAMING",
    "DYNAMIC",
    "stream_item_id",
    "is_stream_item",
]

TASK_ID_SIZE = 16
OBJECT_ID_SIZE = 20
PREFIX_SIZE = 8

_pack_q = struct.Struct(">Q").pack
_pack_i = struct.Struct(">I").pack
_FIRST_RETURN = _pack_i(1)

_prefix = os.urandom(8)
_pid = os.getpid()
_task_counter = itertools.count(1)
_put_counter = itertools.count(1)
_put_task: bytes = _prefix + b"\xff" * 8


def _refresh_after_fork() -> None:
    global _prefix, _pid, _task_counter, _put_counter, _put_task
    _prefix = os.urandom(8)
    _pid = os.getpid()
    _task_counter = itertools.count(1)
    _put_counter = itertools.count(1)
    _put_task = _prefix + b"\xff" * 8


os.register_at_fork(after_in_child=_refresh_after_fork)


def renew_prefix() -> None:
    """Give this process a fresh id prefix: a driver's new session (``init()`` after
    ``shutdown()``). The node tells who owns an object by the prefix of its id (the
    creating process's, sent in ``hello``), so a ref kept from an earlier session
    must not carry the prefix of the live driver: then it is recognised as one whose
    owner is gone, and a task taking it fails instead of waiting (``node.object_manager._dep_watch``)."""
    global _prefix, _put_task
    _prefix = os.urandom(8)
    _put_task = _prefix + b"\xff" * 8


def id_prefix() -> bytes:
    """The 8 bytes every task and object id this process creates begins with."""
    return _prefix


def owner_prefix(object_id: bytes) -> bytes:
    """The id prefix of the process that created ``object_id`` (its owner)."""
    return object_id[:PREFIX_SIZE]


def new_task_id() -> bytes:
    """A fresh, cluster-unique task id."""
    return _prefix + _pack_q(next(_task_counter))


def new_put_id() -> bytes:
    """A fresh object id for ``put``."""
    return _put_task + _pack_i(next(_put_counter))


def put_id_prefix() -> bytes:
    """What every id `new_put_id` makes in this process (and session) begins with."""
    return _put_task


def return_ids(task_id: bytes, num_returns: int) -> list[bytes]:
    """The object ids of a task's return values (index 1..num_returns)."""
    if num_returns == 1:
        return [task_id + _FIRST_RETURN]
    return [task_id + _pack_i(i) for i in range(1, num_returns + 1)]


#: ``num_returns`` of a generator task or call in its spec: ``"streaming"`` (the caller
#: iterates an ``ObjectRefGenerator``) and ``"dynamic"`` (its one return holds the
#: refs). Such a spec has one return of its own, the stream's end: the number of
#: items (an int), or the error that ended the stream before it started.
STREAMING = -1
DYNAMIC = -2

#: Item ``i`` of a stream has the index ``STREAM_BASE + i``: far above any return's.
STREAM_BASE = 1 << 31


def stream_item_id(task_id: bytes, index: int) -> bytes:
    """The object id of the ``index``-th value (from 0) a generator task yields."""
    return task_id + _pack_i(STREAM_BASE + index)


def is_stream_item(object_id: bytes) -> bool:
    """Whether ``object_id`` is a value a generator task yielded."""
    return object_id[TASK_ID_SIZE] >= 0x80


def task_id_of(object_id: bytes) -> bytes:
    """The id of the task that produced ``object_id``."""
    return object_id[:TASK_ID_SIZE]


def new_node_id() -> bytes:
    return os.urandom(16)


def new_worker_id() -> bytes:
    return os.urandom(16)


def new_job_id() -> bytes:
    return os.urandom(4)


def short(id_: bytes | str | None, n: int = 8) -> str:
    """A short hex prefix for logs and prefixes like ``(pid=1, node=ab12cd34)``."""
    if id_ is None:
        return "-"
    if isinstance(id_, str):
        return id_[:n]
    return id_.hex()[:n]
