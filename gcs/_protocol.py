"""Wire vocabulary shared by clients, replicas and the coordinator.

Messages are plain tuples whose first item is a short tag (cheap to pickle, and the
replicas never import user classes: user values travel as opaque ``bytes`` pickled
by the client). This module also holds the table list, the request validation every
replica applies before touching its state, and the key-to-shard hash.
"""

from __future__ import annotations

import zlib
from typing import Any

import attrs

from ._errors import BadRequest, UnknownTable, ValueTooLarge

__all__ = [
    "TABLES",
    "RPC_TIMEOUT",
    "ChainConfig",
    "Layout",
    "ShardLayout",
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

Key = str | bytes

WRITE_OPS = frozenset({"put", "del", "sadd", "srem", "mark"})
READ_OPS = frozenset({"get", "scan"})
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


def validate_write(op: object, max_value_bytes: int) -> tuple[Any, ...]:
    """Check one write ``(op, table, key, arg, expect)``; raise a `BadRequest` naming the fault."""
    if not isinstance(op, tuple) or len(op) != 5:
        raise BadRequest(f"a write must be (op, table, key, arg, expect), got {op!r:.200}")
    kind, table, key, arg, expect = op
    if kind not in WRITE_OPS:
        raise BadRequest(f"unknown write operation {kind!r}; expected one of {sorted(WRITE_OPS)}")
    check_table(table)
    check_key(key)
    if expect is not None and (not isinstance(expect, int) or expect < 0):
        raise BadRequest(f"expected version must be None or an int >= 0, got {expect!r}")
    if kind == "put":
        if not isinstance(arg, bytes | frozenset):
            raise BadRequest(
                f"a put value must be bytes (pickled by the client), got {type(arg).__name__}"
            )
        size = len(arg) if isinstance(arg, bytes) else len(arg) * 16
        if size > max_value_bytes:
            raise ValueTooLarge(
                f"value for {table}[{key!r:.80}] is {size} bytes, over the limit of "
                f"{max_value_bytes} bytes",
                size=size,
                limit=max_value_bytes,
                table=table,
                key=key,
            )
    elif kind in ("sadd", "srem") and not isinstance(arg, _MEMBER_TYPES):
        raise BadRequest(f"a set member must be str, bytes or int, got {type(arg).__name__}")
    return op


def validate_read(op: object) -> tuple[Any, ...]:
    """Check one read ``("get", table, key)`` or ``("scan", table, prefix, limit)``."""
    if not isinstance(op, tuple) or not op or op[0] not in READ_OPS:
        raise BadRequest(f"a read must be ('get', table, key) or ('scan', ...), got {op!r:.200}")
    if op[0] == "get":
        if len(op) != 3:
            raise BadRequest(f"a get must be ('get', table, key), got {op!r:.200}")
        check_table(op[1])
        check_key(op[2])
    else:
        if len(op) != 4:
            raise BadRequest(f"a scan must be ('scan', table, prefix, limit), got {op!r:.200}")
        check_table(op[1])
        check_key(op[2])
        if op[3] is not None and (not isinstance(op[3], int) or op[3] < 0):
            raise BadRequest(f"scan limit must be None or an int >= 0, got {op[3]!r}")
    return op


@attrs.frozen
class ChainConfig:
    """One shard's chain as the coordinator decided it (what replicas obey).

    ``chain`` lists replica names head first; ``addresses`` maps names to addresses;
    ``learner`` is a replica catching up behind the tail (not yet in the chain).
    """

    shard: int
    epoch: int
    chain: tuple[str, ...]
    addresses: dict[str, str] = attrs.field(hash=False)
    learner: str | None = None

    def position(self, name: str) -> int | None:
        try:
            return self.chain.index(name)
        except ValueError:
            return None

    def predecessor(self, name: str) -> str | None:
        if name == self.learner:
            return self.chain[-1] if self.chain else None
        i = self.position(name)
        return self.chain[i - 1] if i else None

    def successor(self, name: str) -> str | None:
        i = self.position(name)
        if i is None:
            return None
        if i + 1 < len(self.chain):
            return self.chain[i + 1]
        return self.learner


@attrs.frozen
class ShardLayout:
    """What clients need of one shard: where to write (head) and read (tail)."""

    shard: int
    epoch: int
    head: str | None
    tail: str | None


@attrs.frozen
class Layout:
    """The whole GCS as clients see it; cached and refreshed on error or on push."""

    shards: tuple[ShardLayout, ...]
    max_value_bytes: int
    #: Identifies the coordinator incarnation: epochs only compare within one.
    generation: str = ""
