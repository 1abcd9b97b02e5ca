"""The GCS's wire vocabulary: every message between clients, replicas and the coordinator.

Each message is a frozen attrs class. Every endpoint -- a replica's listener, the
link a replica dials to its successor, its link to the coordinator, the
coordinator's listener, a client's links -- dispatches what it receives through one
`transport.Dispatcher`, which checks a message against the validators below before
its handler runs; a message the endpoint does not handle, or with fields of the
wrong type, is refused with `BadRequest` and the endpoint serves on. The replicas
still never import user classes: user values travel as opaque ``bytes`` pickled by
the client (`_codec.py`).

Client to the shard (head for writes, tail for the rest); answers in brackets:

  `Write`(client_id, seqs, ops)      [`WriteDone` | `Redirect` | `Refused`]
      ops: `Put`, `Delete`, `SetAdd`, `SetRemove`, `MarkCollectable`
  `Read`(min_seq, ops, history)      [`ReadDone` | `Redirect` | `Refused`]
      ops: `Get` [a `Row` or None], `Scan` [a list of `Row`]
  `Subscribe`(sub_id, table, ...)    [`Subscribed` | `Redirect` | `Refused`]
  `Unsubscribe`(sub_id)              one-way
  `Stats`                            [`ReplicaStatistics`]
  the tail to the client, one-way:  `Events`(shard, [`Notice`, ...]), `SubscriptionsLost`

Along a chain (predecessor -> successor on the link the predecessor dials):

  `Sync`(sender, epoch, history)     [`InSync`(applied) | `OutOfSync`(epoch)]
  `Forward`(updates, column by column), `Transfer`(part of a `ShardSnapshot`, its
      number, last or not), `Handoff`(seq)  one-way
  successor -> predecessor: `Ack`(seq) one-way; `Ping` [`Pong`] probes the link

Replica and coordinator (on the link the replica dials):

  `Register`(shard, name, address, pid, `Progress`)  [`Assigned`(role)]
  `Seeded`(shard, name) [None];  `Promote`, `Suspect`  one-way
  coordinator -> replica: `Reconfigure`(`ChainConfig`), `Removed` one-way, `Ping` [`Pong`]

Client and coordinator: `Hello` and `GetLayout` [`Layout`], `Stats`
[`CoordinatorStatistics`]; coordinator -> client: `LayoutChanged`(`Layout`) one-way.

Anyone may hold a `Watch` request of its peer: it is never answered (or answered
None, "ask again"), so it fails at once when the link dies -- the fastest death
notice there is (see `_watch.py`).

Every class here is a `transport.message`: frozen and without slots (its generated
``__init__`` writes the instance dict directly, half the cost of a frozen slotted
one), compared, hashed and printed by shared functions rather than attrs-generated
ones (cheaper to import). Messages and the
records carried by the thousand inside them (`Notice`, `Row`, the write and read
operations) pickle as their class and a tuple of their fields (`transport.compact`);
a message's checks live in its fields' metadata (`transport.check`) and are run
once, by the receiving dispatcher, not by every sender nor while unpickling. The
operations have no checks of their own: the head checks every one itself
(`_protocol.validate_write`, `validate_read`) and answers a bad one with its own
error. Updates along the chain are no records at all but the columns of a
`Forward` (see there, and `_state` on why). The records inside messages
(`ChainConfig`, `Layout`, `Progress`, `ShardSnapshot`) validate when built.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

import transport

__all__ = [
    "Ack",
    "Assigned",
    "ChainConfig",
    "Delete",
    "Events",
    "Forward",
    "Get",
    "GetLayout",
    "Handoff",
    "Hello",
    "InSync",
    "Key",
    "Layout",
    "LayoutChanged",
    "MarkCollectable",
    "Notice",
    "OutOfSync",
    "Ping",
    "Pong",
    "Progress",
    "Promote",
    "Put",
    "Read",
    "ReadDone",
    "ReadOp",
    "Reconfigure",
    "Redirect",
    "Refused",
    "Register",
    "Removed",
    "Row",
    "Scan",
    "Seeded",
    "SetAdd",
    "SetRemove",
    "ShardLayout",
    "ShardSnapshot",
    "Stats",
    "Subscribe",
    "Subscribed",
    "SubscriptionsLost",
    "Suspect",
    "Sync",
    "Transfer",
    "Unsubscribe",
    "Watch",
    "Write",
    "WriteDone",
    "WriteOp",
]

Key = str | bytes

_int = v.instance_of(int)
_seq = v.and_(_int, v.ge(0))
_str = v.instance_of(str)
_opt_key = v.optional(v.instance_of((str, bytes)))
_history = v.optional(_str)


def _ints(instance: Any, attribute: Any, value: Any) -> None:
    """A list of ints (cheaper than ``deep_iterable``: these run per batch, on
    thousands of items)."""
    if type(value) is not list or any(type(item) is not int for item in value):
        raise TypeError(f"'{attribute.name}' must be a list of ints, got {value!r:.100}")


# -- chains and layouts ------------------------------------------------------------------


@transport.message
class ChainConfig:
    """One shard's chain as the coordinator decided it (what replicas obey).

    ``chain`` lists replica names head first; ``addresses`` maps names to addresses;
    ``learner`` is a replica catching up behind the tail (not yet in the chain).
    """

    shard: int = attrs.field(validator=_int)
    epoch: int = attrs.field(validator=_seq)
    chain: tuple[str, ...] = attrs.field(validator=v.deep_iterable(_str, v.instance_of(tuple)))
    addresses: dict[str, str] = attrs.field(hash=False, validator=v.instance_of(dict))
    learner: str | None = attrs.field(default=None, validator=v.optional(_str))

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


@transport.compact
@transport.message
class ShardLayout:
    """What clients need of one shard: where to write (head) and read (tail).

    ``standby``: the replica that becomes head if the head dies (the second member
    of the chain), or None in a chain of one. A client that writes to the shard
    keeps a link to it open, so that a failover's resend needs no dial.
    """

    shard: int
    epoch: int
    head: str | None
    tail: str | None
    standby: str | None = None


@transport.message
class Layout:
    """The whole GCS as clients see it; cached and refreshed on error or on push."""

    shards: tuple[ShardLayout, ...] = attrs.field(
        validator=v.deep_iterable(v.instance_of(ShardLayout), v.instance_of(tuple)))
    max_value_bytes: int = attrs.field(validator=_int)
    #: Identifies the GCS: epochs only compare within one generation.
    generation: str = attrs.field(default="", validator=_str)


# -- operations (inside `Write` and `Read`) -------------------------------------------


@transport.compact
@transport.message
class Put:
    """Store ``value`` (bytes pickled by the client, or a frozenset of members) at
    ``table[key]``; with ``expect`` only if the key is at that version (0: absent)."""

    table: str
    key: Key
    value: bytes | frozenset[Any]
    expect: int | None = None


@transport.compact
@transport.message
class Delete:
    table: str
    key: Key
    expect: int | None = None


@transport.compact
@transport.message
class SetAdd:
    table: str
    key: Key
    member: str | bytes | int


@transport.compact
@transport.message
class SetRemove:
    table: str
    key: Key
    member: str | bytes | int


@transport.compact
@transport.message
class MarkCollectable:
    """The runtime no longer needs ``table[key]``: flushed beyond ``lineage_cap``."""

    table: str
    key: Key


WriteOp = Put | Delete | SetAdd | SetRemove | MarkCollectable


@transport.compact
@transport.message
class Get:
    table: str
    key: Key


@transport.compact
@transport.message
class Scan:
    table: str
    prefix: Key
    limit: int | None = None


ReadOp = Get | Scan


@transport.compact
@transport.message
class Row:
    """A stored entry as a read answers it (``value`` as the client pickled it)."""

    key: Key
    value: Any
    version: int


# -- the replicated log --------------------------------------------------------------


@transport.message
class ShardSnapshot:
    """A replica's whole copy of a shard at ``applied`` (state transfer, durable log).

    ``tables`` and ``collectable`` hold only non-empty tables; ``dedup`` maps
    (client id, client seq) to (seq, result); ``history`` names the shard's history.
    """

    applied: int = attrs.field(validator=_seq)
    acked: int = attrs.field(validator=_seq)
    tables: dict[str, dict[Key, tuple[Any, int]]] = attrs.field(validator=v.instance_of(dict))
    collectable: dict[str, dict[Key, None]] = attrs.field(validator=v.instance_of(dict))
    dedup: dict[tuple[Any, int], tuple[int, Any]] = attrs.field(validator=v.instance_of(dict))
    history: str = attrs.field(validator=_str)


@transport.compact
@transport.message
class Notice:
    """One committed update for subscription ``sub_id`` (``value`` None when deleted)."""

    sub_id: int
    seq: int
    table: str
    key: Key
    value: Any
    deleted: bool


# -- client <-> replica --------------------------------------------------------------


def _same_length(instance: Write, attribute: Any, ops: list[Any]) -> None:
    if len(ops) != len(instance.seqs):
        raise ValueError(f"{len(ops)} operations but {len(instance.seqs)} client sequence numbers")


@transport.compact
@transport.message
class Write:
    """A batch of client writes for the head: ``ops[i]`` is the client's write number
    ``seqs[i]`` (so a retried batch is answered, not applied twice). ``epoch``: of
    the layout the client sent it under; a replica whose config is older waits
    (briefly) for the config the coordinator pushed beside that layout instead of
    redirecting the client."""

    client_id: str | bytes = attrs.field(metadata=transport.check(v.instance_of((str, bytes))))
    seqs: list[int] = attrs.field(metadata=transport.check(_ints))
    ops: list[WriteOp] = attrs.field(metadata=transport.check(v.instance_of(list), _same_length))
    epoch: int = attrs.field(default=0, metadata=transport.check(_seq))


@transport.compact
@transport.message
class WriteDone:
    """Per-op results (a value, or the `GcsError` of that op), released once the tail
    acknowledged ``wait``; ``history`` names the shard's history."""

    results: list[Any]
    wait: int
    history: str


@transport.compact
@transport.message
class Read:
    """A batch of reads for the tail, answered once it applied ``min_seq`` (the
    highest sequence number the client saw of ``history``)."""

    min_seq: int = attrs.field(metadata=transport.check(_seq))
    ops: list[ReadOp] = attrs.field(metadata=transport.check(v.instance_of(list)))
    history: str | None = attrs.field(default=None, metadata=transport.check(_history))


@transport.compact
@transport.message
class ReadDone:
    applied: int
    results: list[Any]
    history: str


@transport.compact
@transport.message
class Redirect:
    """Not the head (or tail) any more, as of ``epoch``: wait for a newer layout."""

    epoch: int


@transport.compact
@transport.message
class Refused:
    """The whole request was refused (malformed, or a subscription that cannot be
    served); ``error`` is the `GcsError` the caller raises."""

    error: Exception


@transport.compact
@transport.message
class Subscribe:
    """Committed updates of ``table[key]``, or of every key with ``prefix``, from
    ``from_seq`` (None: from now on)."""

    sub_id: int = attrs.field(metadata=transport.check(_int))
    table: str = attrs.field(metadata=transport.check(_str))
    key: Key | None = attrs.field(metadata=transport.check(_opt_key))
    prefix: Key | None = attrs.field(metadata=transport.check(_opt_key))
    from_seq: int | None = attrs.field(default=None, metadata=transport.check(v.optional(_int)))


@transport.compact
@transport.message
class Subscribed:
    acked: int


@transport.compact
@transport.message
class Unsubscribe:
    sub_id: int = attrs.field(metadata=transport.check(_int))


@transport.compact
@transport.message
class Events:
    shard: int = attrs.field(metadata=transport.check(_int))
    notices: list[Notice] = attrs.field(metadata=transport.check(v.instance_of(list)))


@transport.compact
@transport.message
class SubscriptionsLost:
    """These subscriptions fell too far behind and were dropped: resubscribe."""

    sub_ids: list[int] = attrs.field(metadata=transport.check(_ints))


@transport.message
class Stats:
    """Ask a replica (`ReplicaStatistics`) or the coordinator (`CoordinatorStatistics`)."""


@transport.message
class Watch:
    """Never answered (or answered None: ask again); fails when the link dies."""


@transport.message
class Ping:
    pass


@transport.compact
@transport.message
class Pong:
    applied: int


# -- along the chain -------------------------------------------------------------------


def _forward_or_none(instance: Any, attribute: Any, value: Any) -> None:
    """None, or a `Forward` whose own fields pass their checks (a message inside a
    message is not checked by the dispatcher)."""
    if value is None:
        return
    if not isinstance(value, Forward):
        raise TypeError(f"'{attribute.name}' must be a Forward or None, got {value!r:.100}")
    for field in attrs.fields(Forward):
        check = field.metadata.get("check")
        if check is not None:
            check(value, field, getattr(value, field.name))


@transport.compact
@transport.message
class Sync:
    """A predecessor's first message on its link: who it is, under which epoch, and
    of which history it streams. ``backlog``: updates the successor most likely
    lacks (see `ChainLink._stream_to`), applied on acceptance if they follow what it
    has, so that a repair's first updates need not wait for the answer."""

    sender: str = attrs.field(metadata=transport.check(_str))
    epoch: int = attrs.field(metadata=transport.check(_seq))
    history: str = attrs.field(metadata=transport.check(_str))
    backlog: Forward | None = attrs.field(default=None,
                                          metadata=transport.check(_forward_or_none))


@transport.compact
@transport.message
class InSync:
    """Accepted: stream from ``applied + 1``."""

    applied: int


@transport.compact
@transport.message
class OutOfSync:
    """Refused: my config (``epoch``) names another predecessor."""

    epoch: int


def _same_length_as_seqs(instance: Forward, attribute: Any, column: list[Any]) -> None:
    if type(column) is not list or len(column) != len(instance.seqs):
        raise ValueError(f"'{attribute.name}' must be a list as long as 'seqs' "
                         f"({len(instance.seqs)}), got {column!r:.100}")


_column = _same_length_as_seqs  # (a list, as long as the seqs)


@transport.compact
@transport.message
class Forward:
    """Consecutive updates of the shard (see `_state`), down the chain column by
    column: one list per field of an update. It is the cheapest form to pickle and
    builds no object per update on either end -- the successor keeps them as the
    plain tuples its log holds (`_state.updates_of`)."""

    seqs: list[int] = attrs.field(metadata=transport.check(_ints))
    kinds: list[str] = attrs.field(metadata=transport.check(_column))
    tables: list[str] = attrs.field(metadata=transport.check(_column))
    keys: list[Key] = attrs.field(metadata=transport.check(_column))
    values: list[Any] = attrs.field(metadata=transport.check(_column))
    client_ids: list[Any] = attrs.field(metadata=transport.check(_column))
    client_seqs: list[int] = attrs.field(metadata=transport.check(_column))
    results: list[Any] = attrs.field(metadata=transport.check(_column))


@transport.compact
@transport.message
class Transfer:
    """State transfer: the successor was further behind than the log reaches.

    A snapshot goes in parts (``part`` 0, 1, ...; ``last`` on the final one), each a
    `ShardSnapshot` with the whole snapshot's ``applied``, ``acked`` and ``history``
    and a share of its tables, collectable marks and dedup record; the successor
    merges them and installs the whole at the last part. In one message, a shard's
    dedup record (up to ``dedup_entries``, 200,000) was pickled in one go on the
    sender's loop, which held every commit of the tail meanwhile (40-160 ms
    measured with 22,000-52,000 entries on a loaded machine).
    """

    snapshot: ShardSnapshot = attrs.field(metadata=transport.check(v.instance_of(ShardSnapshot)))
    part: int = attrs.field(default=0, metadata=transport.check(_seq))
    last: bool = attrs.field(default=True, metadata=transport.check(v.instance_of(bool)))


@transport.compact
@transport.message
class Handoff:
    """A new tail serves reads only once it applied up to ``seq`` (everything the old
    tail had acknowledged)."""

    seq: int = attrs.field(metadata=transport.check(_seq))


@transport.compact
@transport.message
class Ack:
    """The tail committed everything up to ``seq`` (cumulative)."""

    seq: int = attrs.field(metadata=transport.check(_seq))


# -- replica <-> coordinator -----------------------------------------------------------


@transport.message
class Progress:
    """What a (re-)registering replica reports: its chain view, how far it applied
    and committed, and whether it seeded its shard (a restarted coordinator rebuilds
    the chains from these)."""

    chain: ChainConfig = attrs.field(validator=v.instance_of(ChainConfig))
    applied: int = attrs.field(validator=_seq)
    acked: int = attrs.field(validator=_seq)
    seeded: bool = attrs.field(validator=v.instance_of(bool))

    @property
    def has_state(self) -> bool:
        """It holds the shard's state (it was in a chain, or seeded it)."""
        return self.chain.epoch > 0 or self.seeded


@transport.compact
@transport.message
class Register:
    shard: int = attrs.field(metadata=transport.check(_int))
    name: str = attrs.field(metadata=transport.check(_str))
    address: str = attrs.field(metadata=transport.check(_str))
    pid: int = attrs.field(metadata=transport.check(_int))
    progress: Progress = attrs.field(metadata=transport.check(v.instance_of(Progress)))


@transport.message
class Assigned:
    """The coordinator's answer to `Register`: ``seed`` the shard (a chain of one),
    ``join`` it (learner, by state transfer), ``resume`` (a member: its config
    follows) or ``removed`` (exit: the supervisor restarts a fresh replica)."""

    role: str = attrs.field(validator=v.in_(("seed", "join", "resume", "removed")))


@transport.compact
@transport.message
class Seeded:
    shard: int = attrs.field(metadata=transport.check(_int))
    name: str = attrs.field(metadata=transport.check(_str))


@transport.compact
@transport.message
class Promote:
    """The tail's learner caught up: append it to the chain (asked per epoch)."""

    shard: int = attrs.field(metadata=transport.check(_int))
    name: str = attrs.field(metadata=transport.check(_str))
    epoch: int = attrs.field(metadata=transport.check(_int))


@transport.compact
@transport.message
class Suspect:
    """``reporter``'s link to its successor ``name`` stopped answering."""

    shard: int = attrs.field(metadata=transport.check(_int))
    name: str = attrs.field(metadata=transport.check(_str))
    reporter: str = attrs.field(metadata=transport.check(_str))


@transport.compact
@transport.message
class Reconfigure:
    config: ChainConfig = attrs.field(metadata=transport.check(v.instance_of(ChainConfig)))


@transport.message
class Removed:
    """Cut out of the chain: exit."""


# -- client <-> coordinator -----------------------------------------------------------


@transport.message
class Hello:
    """A client registers for layout pushes; answered with the current `Layout`."""


@transport.message
class GetLayout:
    pass


@transport.compact
@transport.message
class LayoutChanged:
    layout: Layout = attrs.field(metadata=transport.check(v.instance_of(Layout)))


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
