"""What every part of the GCS agrees on besides the messages (`_messages.py`): the
table list, the key-to-shard hash, and the checks the head applies to every write
and the tail to every read before they touch the shard's state.
"""

from __future__ import annotations

import reprlib
import zlib

from ._errors import BadRequest, UnknownTable, ValueTooLarge
from ._messages import (
    Delete,
    Get,
    Key,
    MarkCollectable,
    Put,
    ReadOp,
    Scan,
    SetAdd,
    SetRemove,
    WriteOp,
)

__all__ = [
    "TABLES",
    "RPC_TIMEOUT",
    "Key",
    "check_key",
    "check_table",
    "shard_of",
    "validate_read",
    "validate_write",
]

#: The default bound of one client request attempt (clients retry after it).
RPC_TIMEOUT = 5.0

#: Every table of the GCS. The runtime's typed tables map onto these; ``kv`` is the
#: user key-value space. A request naming any other table gets `UnknownTable`.
TABLES: frozenset[str] = frozenset(
    {
        "nodes",
        "heartbeats",
        "actors",
        "actor_names",
        "objects",
        "object_locations",
        "tasks",
        "functions",
        "jobs",
        "kv",
    }
)

WRITE_OPS = (Put, Delete, SetAdd, SetRemove, MarkCollectable)
READ_OPS = (Get, Scan)
_MEMBER_TYPES = (str, bytes, int)


def shard_of(key: Key, shards: int) -> int:
    """The shard owning ``key`` (stable across processes and restarts: CRC-32)."""
    raw = key.encode() if isinstance(key, str) else key
    return zlib.crc32(raw) % shards


def check_table(table: object) -> str:
    if not isinstance(table, str):
        raise BadRequest(f"table name must be a str, got {table!r}", table=table)
    if table not in TABLES:
        raise UnknownTable(
            f"unknown table {table!r}; the GCS has {sorted(TABLES)}", table=table
        )
    return table


def check_key(key: object) -> Key:
    if not isinstance(key, str | bytes):
        raise BadRequest(
            f"key must be str or bytes, got {type(key).__name__} {key!r:.80}", key=key
        )
    return key


def _check_expect(expect: object) -> None:
    if expect is not None and (type(expect) is not int or expect < 0):
        raise BadRequest(f"expected version must be None or an int >= 0, got {expect!r}")


# Exact types (``type(op) is``): a subclass is not one of our messages, and the
# check is a third of the cost of ``isinstance`` on the per-operation path.


def validate_write(op: object, max_value_bytes: int) -> WriteOp:
    """Check one write operation; raise a `BadRequest` naming the fault."""
    if type(op) is Put:
        assert isinstance(op, Put)
        check_table(op.table)
        check_key(op.key)
        _check_expect(op.expect)
        value = op.value
        if not isinstance(value, bytes | frozenset):
            raise BadRequest(
                f"a put value must be bytes (pickled by the client), got {type(value).__name__}"
            )
        size = len(value) if isinstance(value, bytes) else len(value) * 16
        if size > max_value_bytes:
            raise ValueTooLarge(
                f"value for {op.table}[{op.key!r:.80}] is {size} bytes, over the limit of "
                f"{max_value_bytes} bytes",
                size=size,
                limit=max_value_bytes,
                table=op.table,
                key=op.key,
            )
        return op
    if type(op) is Delete:
        assert isinstance(op, Delete)
        check_table(op.table)
        check_key(op.key)
        _check_expect(op.expect)
        return op
    if type(op) is SetAdd or type(op) is SetRemove:
        assert isinstance(op, SetAdd | SetRemove)
        check_table(op.table)
        check_key(op.key)
        if not isinstance(op.member, _MEMBER_TYPES):
            raise BadRequest(
                f"a set member must be str, bytes or int, got {type(op.member).__name__}")
        return op
    if type(op) is MarkCollectable:
        assert isinstance(op, MarkCollectable)
        check_table(op.table)
        check_key(op.key)
        return op
    raise BadRequest(
        f"unknown write operation {_describe(op)}; expected one of "
        f"{', '.join(c.__name__ for c in WRITE_OPS)}")


def validate_read(op: object) -> ReadOp:
    """Check one read operation (`Get` or `Scan`); raise a `BadRequest` naming the fault."""
    if type(op) is Get:
        assert isinstance(op, Get)
        check_table(op.table)
        check_key(op.key)
        return op
    if type(op) is Scan:
        assert isinstance(op, Scan)
        check_table(op.table)
        check_key(op.prefix)
        if op.limit is not None and (type(op.limit) is not int or op.limit < 0):
            raise BadRequest(f"scan limit must be None or an int >= 0, got {op.limit!r}")
        return op
    raise BadRequest(f"unknown read operation {_describe(op)}; expected Get or Scan")


def _describe(op: object) -> str:
    return f"{type(op).__name__} {reprlib.repr(op)}"
