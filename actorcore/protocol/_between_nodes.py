"""What nodes say to one another over ``node._peers``: forwarded tasks, objects
between owners' nodes, payload transfers, actors hosted on another node, placement
group reservations, and their typed answers.

Node ids are hex strings. One-way messages queued together travel as one
`PeerBatch`, served in order by the receiving node and acknowledged by a
`PeerAck`. The index of all vocabularies is ``_wire``'s docstring."""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

import transport
from transport import check

from ._wire_checks import (
    DICT,
    FLAG,
    ID,
    INT,
    SEQ,
    STR,
    non_negative,
    seconds_up_to_a_minute,
    spec_named,
)

__all__ = [
    "BundlesPrepared",
    "CancelForwarded",
    "CommitBundles",
    "DelayStoreHold",
    "DropCopy",
    "FetchFromOwner",
    "ForwardTasks",
    "ForwardedResults",
    "FreeCopies",
    "GetTransferStatistics",
    "HostedActor",
    "LocateObject",
    "OwnerEntry",
    "OwnsPrefix",
    "PayloadChunk",
    "PayloadInfo",
    "PayloadLayout",
    "PeerAck",
    "PeerBatch",
    "PrepareBundles",
    "PullObject",
    "ReleaseBundles",
    "RemoteActorCall",
    "RemoteActorCancel",
    "RemoteActorCreate",
    "RemoteActorDied",
    "RemoteActorDone",
    "RemoteActorDrop",
    "RemoteActorEnd",
    "RemoteActorHold",
    "RemoteActorKill",
    "RemoteActorSpec",
    "RemoveGroup",
    "ReportLost",
    "SlowChunks",
]


# -- node <-> node ------------------------------------------------------------------------------
#
# Over ``node._peers`` (node ids are hex strings). One-way messages queued together
# travel as one `PeerBatch`, served in order by the receiving node and acknowledged
# by a `PeerAck`.


@transport.compact
@transport.message
class PeerBatch:
    """One-way messages to one node, queued together, in order: the ``seq``-th batch
    of ``sender``'s link (the receiver handles each number once, see ``node._peers``)."""

    messages: list = attrs.field(metadata=SEQ)
    sender: str = attrs.field(metadata=STR)
    seq: int = attrs.field(metadata=INT)


@transport.compact
@transport.message
class PeerAck:
    """receiver -> sender, on the link the batch came by: batches up to ``seq`` are
    handled (``receiver`` is the acknowledging node's id)."""

    receiver: str = attrs.field(metadata=STR)
    seq: int = attrs.field(metadata=INT)


@transport.compact
@transport.message
class ForwardTasks:
    """origin -> target: run these tasks (with the export records of their functions:
    the target must not depend on the GCS having them yet)."""

    origin: str = attrs.field(metadata=STR)
    specs: list = attrs.field(metadata=SEQ)
    functions: dict = attrs.field(metadata=DICT)


@transport.compact
@transport.message
class ForwardedResults:
    """target -> origin: results of forwarded tasks (``STORE``: the value stays in the
    target's store)."""

    target: str = attrs.field(metadata=STR)
    results: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class CancelForwarded:
    """origin -> target: cancel a forwarded task."""

    task_id: bytes = attrs.field(metadata=ID)
    force: bool = attrs.field(metadata=FLAG)
    recursive: bool = attrs.field(metadata=FLAG)


@transport.compact
@transport.message
class FetchFromOwner:
    """*Request* to the owner's node: each object's `OwnerEntry` once it is ready."""

    requester: str = attrs.field(metadata=STR)
    object_ids: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class OwnsPrefix:
    """*Request*: is a live process with this id prefix on that node?"""

    prefix: bytes = attrs.field(metadata=ID)


@transport.message
class ReportLost:
    """*Request* to the owner's node: every copy it named for the object failed to
    copy to ``requester`` (``why``); the owner rebuilds it if its store lost it too,
    and answers as `FetchFromOwner` does once it is ready again."""

    requester: str = attrs.field(metadata=STR)
    object_id: bytes = attrs.field(metadata=ID)
    why: str = attrs.field(metadata=STR)


@transport.compact
@transport.message
class FreeCopies:
    """The owner freed these objects: drop your copies."""

    object_ids: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class PayloadInfo:
    """*Request* (a pull's first step): the object's `PayloadLayout` in the source's
    store, or None."""

    object_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class PayloadChunk:
    """*Request*: ``length`` bytes of the object's payload at ``offset`` (out of band)."""

    object_id: bytes = attrs.field(metadata=ID)
    offset: int = attrs.field(metadata=check(non_negative))
    length: int = attrs.field(metadata=check(non_negative))


@transport.message
class PullObject:
    """*Request* (tests, benchmarks): copy the object here from one of
    ``locations`` (node ids, tried in order)."""

    object_id: bytes = attrs.field(metadata=ID)
    locations: list = attrs.field(metadata=SEQ)


@transport.message
class DropCopy:
    """*Request*: drop this node's copy of a pulled object."""

    object_id: bytes = attrs.field(metadata=ID)


@transport.message
class LocateObject:
    """*Request*: the nodes holding the object, as this node knows them."""

    object_id: bytes = attrs.field(metadata=ID)


@transport.message
class GetTransferStatistics:
    """*Request*: the node's ``TransferStatistics``."""


@transport.message
class SlowChunks:
    """*Request*, a fault hook: the node waits ``chunk_delay`` seconds before
    serving each chunk it is asked for (0: none)."""

    chunk_delay: float = attrs.field(metadata=check(seconds_up_to_a_minute))


@transport.message
class DelayStoreHold:
    """*Request*, a fault hook: the node waits ``hold_delay`` seconds before taking
    its store ref on a reported large value (0: none)."""

    hold_delay: float = attrs.field(metadata=check(seconds_up_to_a_minute))


@transport.message
class RemoteActorCreate:
    """creating node -> host: create the actor there (``origin``: the creating node)."""

    spec: Any = attrs.field(metadata=spec_named("ActorSpec"))
    restarts: int = attrs.field(metadata=INT)
    origin: str = attrs.field(metadata=STR)
    dep_data: list = attrs.field(metadata=SEQ)
    class_record: dict | None = attrs.field(metadata=check(v.optional(v.instance_of(dict))))


@transport.compact
@transport.message
class RemoteActorCall:
    """calling node -> host: one method call."""

    spec: Any = attrs.field(metadata=spec_named("CallSpec"))
    dep_data: list = attrs.field(metadata=SEQ)
    origin: str = attrs.field(metadata=STR)


@transport.compact
@transport.message
class RemoteActorDone:
    """host -> calling node: a call's results."""

    actor_id: bytes = attrs.field(metadata=ID)
    task_id: bytes = attrs.field(metadata=ID)
    results: list = attrs.field(metadata=SEQ)
    host: str = attrs.field(metadata=STR)


@transport.message
class RemoteActorDied:
    """host -> creating node: the actor is dead, of ``cause``."""

    actor_id: bytes = attrs.field(metadata=ID)
    cause: str = attrs.field(metadata=STR)


@transport.message
class RemoteActorEnd:
    """creating node -> host: end the actor, of ``cause``."""

    actor_id: bytes = attrs.field(metadata=ID)
    cause: str = attrs.field(metadata=STR)


@transport.message
class RemoteActorKill:
    """-> host: ``kill(actor, no_restart=)``."""

    actor_id: bytes = attrs.field(metadata=ID)
    no_restart: bool = attrs.field(metadata=FLAG)


@transport.message
class RemoteActorHold:
    """-> host: the process ``holder`` (a worker id) holds a handle to the actor."""

    actor_id: bytes = attrs.field(metadata=ID)
    holder: bytes = attrs.field(metadata=ID)


@transport.message
class RemoteActorDrop:
    """-> host: ``holder`` holds no handle to the actor any more."""

    actor_id: bytes = attrs.field(metadata=ID)
    holder: bytes = attrs.field(metadata=ID)


@transport.message
class RemoteActorCancel:
    """-> host: ``cancel(ref)`` of a call forwarded there."""

    actor_id: bytes = attrs.field(metadata=ID)
    task_id: bytes = attrs.field(metadata=ID)


@transport.message
class RemoteActorSpec:
    """*Request* -> host: the actor it hosts, as a `HostedActor`."""

    actor_id: bytes = attrs.field(metadata=ID)


@transport.message
class PrepareBundles:
    """*Request*, coordinator -> node: phase one, take bundles ``items`` (``[(index,
    {resource: amount}), ...]``) of the group, all or none (`BundlesPrepared`)."""

    pg_id: str = attrs.field(metadata=STR)
    items: list = attrs.field(metadata=SEQ)


@transport.message
class CommitBundles:
    """*Request*, coordinator -> node: phase two, the prepared bundles' resources
    join the node."""

    pg_id: str = attrs.field(metadata=STR)


@transport.message
class ReleaseBundles:
    """Coordinator -> node (a request or not): give back what the group holds there."""

    pg_id: str = attrs.field(metadata=STR)


@transport.message
class RemoveGroup:
    """*Request* -> the group's coordinator: remove it."""

    pg_id: str = attrs.field(metadata=STR)


@transport.compact
@transport.message
class OwnerEntry:
    """One object of the answer to `FetchFromOwner` and `ReportLost` (a list of
    these, in the order asked): its value or error inline (``locations`` None), or
    the nodes whose stores hold its large value, to pull it from."""

    object_id: bytes
    is_error: bool
    data: Any
    locations: list[str] | None


@transport.compact
@transport.message
class PayloadLayout:
    """The answer to `PayloadInfo` when the source's store holds the object (else
    None): the layout the puller creates its copy with, and the payload bytes that
    its `PayloadChunk` requests add up to."""

    meta_len: int
    data_len: int
    buffer_sizes: Any  # a sequence of ints, one per out-of-band buffer
    payload_len: int


@transport.message
class HostedActor:
    """The answer to `RemoteActorSpec`: the actor as its host knows it, its
    ``ActorSpec``, its state and why it died (None while it lives)."""

    spec: Any
    state: str
    cause: str | None


@transport.message
class BundlesPrepared:
    """The answer to `PrepareBundles`: whether the node took the bundles and, if
    not, ``why`` (the group was removed there, or its free resources fall short)."""

    taken: bool
    why: str = ""


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
