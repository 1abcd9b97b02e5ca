"""Worker leases and the tasks pushed on them (``core_worker._leased_tasks``,
``node.local_scheduler._leases``, ``worker._leased``): a submitter asks its node for
a worker of one scheduling class, then pushes that class's tasks straight to the
worker; the index of all vocabularies is ``_wire``'s docstring."""

from __future__ import annotations

from typing import Any

import attrs

import transport

from ._wire_checks import DICT, FLAG, ID, INT, OPT_ID, OPT_STR, SEQ, STR, spec_named

__all__ = [
    "CancelLeasedTask",
    "LeaseReply",
    "LeasedStart",
    "LeasedTask",
    "LeasedTaskDone",
    "LeasedTasksLost",
    "RequestLease",
    "ReturnLease",
]


# -- submitter <-> node --------------------------------------------------------------


@transport.compact
@transport.message
class RequestLease:
    """*Request*: a worker for tasks of ``function_id`` that each take ``resources``
    (the scheduling class); answered with a `LeaseReply`. The submitter names the
    lease (``lease_id``): when it cannot tell whether the request was granted (its
    answer timed out, the link broke), a `ReturnLease` of that id behind it on the
    same link gives back whatever was granted. A request sent again is granted once."""

    function_id: bytes = attrs.field(metadata=ID)
    resources: dict = attrs.field(metadata=DICT)
    lease_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class LeaseReply:
    """A granted lease (``lease_id``, the worker and where it listens), or a refusal
    (``lease_id`` None) and why: the task then goes through the node's queue."""

    lease_id: bytes | None = attrs.field(metadata=OPT_ID)
    worker_id: bytes | None = attrs.field(default=None, metadata=OPT_ID)
    address: str | None = attrs.field(default=None, metadata=OPT_STR)
    reason: str = attrs.field(default="", metadata=STR)


@transport.compact
@transport.message
class ReturnLease:
    """The submitter has no more tasks of the lease's class: the worker and its
    resources go back to the node."""

    lease_id: bytes = attrs.field(metadata=ID)
    #: Tasks pushed on it: the node ends the lease once the worker reported as many.
    pushed: int = attrs.field(metadata=INT)


@transport.compact
@transport.message
class LeasedTasksLost:
    """The link to the lease's worker broke with these tasks (``TaskSpec``) pushed
    and unanswered: the node retries or fails each one it never heard of from the
    worker (the others it handles as its own running tasks)."""

    lease_id: bytes = attrs.field(metadata=ID)
    specs: list = attrs.field(metadata=SEQ)


# -- submitter -> leased worker (its direct socket) ------------------------------------


@transport.compact
@transport.message
class LeasedTask:
    """Run ``spec`` (it has no ref arguments) on lease ``lease_id``; its end comes
    back on this link as a `LeasedTaskDone`."""

    lease_id: bytes = attrs.field(metadata=ID)
    spec: Any = attrs.field(metadata=spec_named("TaskSpec"))


@transport.compact
@transport.message
class CancelLeasedTask:
    """``cancel(ref)`` of a task pushed on this link: the worker passes it on to its
    node behind the task's `LeasedStart`, so the node cancels it as its own."""

    task_id: bytes = attrs.field(metadata=ID)
    force: bool = attrs.field(metadata=FLAG)
    recursive: bool = attrs.field(metadata=FLAG)


@transport.compact
@transport.message
class LeasedTaskDone:
    """The leased worker ended ``task_id``: its results (empty when they go through
    the node instead: a retry, or too large for this link). Every task pushed on a
    lease gets exactly one, so the submitter knows when its lease is idle."""

    task_id: bytes = attrs.field(metadata=ID)
    results: list = attrs.field(metadata=SEQ)


# -- leased worker -> node --------------------------------------------------------------


@transport.compact
@transport.message
class LeasedStart:
    """The worker took ``spec`` on lease ``lease_id``: from here on the node tracks
    it as a task running there (lineage, cancel, blocked ``get``, worker death)."""

    lease_id: bytes = attrs.field(metadata=ID)
    spec: Any = attrs.field(metadata=spec_named("TaskSpec"))


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
